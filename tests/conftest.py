from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcmd.store import open_store
from fleetcmd.store.base import SqlStore
from support import store_url_for

TRACE: dict[str, dict[str, str]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): requirement ids this test proves")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("req"):
            for rid in mark.args:
                TRACE.setdefault(rid, {})[item.nodeid] = "not run"


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for tests in TRACE.values():
        counts = report.when == "call" or report.outcome != "passed"
        if report.nodeid in tests and counts and tests[report.nodeid] != "failed":
            tests[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Record which requirement ids were proven by this run (read by tools/trace.py).

    Under pytest-xdist each worker runs part of the tests and merges what it ran into the
    file (under a lock); "not run" is written only by a whole, single-process run."""
    if not TRACE or session.config.option.collectonly:
        return
    worker = hasattr(session.config, "workerinput")
    out = Path(str(session.config.rootpath)) / "build" / "trace-results.json"
    out.parent.mkdir(exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = json.loads(out.read_text()) if out.exists() else {}
        for rid, tests in TRACE.items():
            ran = {t: o for t, o in tests.items() if not (worker and o == "not run")}
            previous.setdefault(rid, {}).update(ran)
        out.write_text(json.dumps(previous, indent=1, sort_keys=True))


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path) -> Iterator[str]:
    with store_url_for(store_kind, tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
