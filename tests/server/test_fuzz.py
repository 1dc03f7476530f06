"""schemathesis against the Management API's and the Comms API's own OpenAPI documents:
a bounded number of generated requests per operation, valid and invalid, with real
credentials; no answer may be a 5xx and no process may crash."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.harness import FakeAgent, Server, file_task, fleet, task_final
from support import store_url_for

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

EXAMPLES = 6  # per operation and mode: bounded, the whole test stays well under a minute
# Long-polls and event streams hold a request open by design; fuzzing them only waits.
SKIP = {("GET", "/agents/commands"), ("GET", "/tasks/{task_id}/events")}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with store_url_for(request.param, tmp) as url, fleet(url, tmp) as (_, [server]):
        api = server.admin()
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "web", "configuration": {"x": 1}}
            )["id"],
        )
        yield server


def _fuzz(base: str, headers: dict[str, str], srv: Server) -> list[str]:
    doc = httpx.get(f"{base}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(mode))
            def run(case: Any) -> None:
                nonlocal ran
                ran += 1
                resp = case.call(base_url=base, headers=headers, timeout=20)
                if resp.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} "
                        f"{case.query} {str(case.body)[:200]} -> "
                        f"{resp.status_code} {resp.text[:300]}"
                    )

            try:
                run()
            except Unsatisfiable:  # nothing invalid to make (an operation without inputs)
                continue
    assert ran > 0
    assert srv.proc is not None and srv.proc.poll() is None, "the server died"
    return failures


def test_management_api_has_no_5xx(srv: Server) -> None:
    token = srv.admin().headers["Authorization"]
    assert _fuzz(srv.api, {"Authorization": token}, srv) == []


def test_comms_api_has_no_5xx(srv: Server) -> None:
    agent = FakeAgent(srv.comms, "fuzzed", ["web"])
    assert _fuzz(srv.comms, {"Authorization": agent.http.headers["Authorization"]}, srv) == []
