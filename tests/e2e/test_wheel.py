"""The product as an operator installs it (issue 19.1): `python -m build` makes the sdist and,
from it, the wheel; the wheel goes into an empty virtualenv; `fleetcmd up` from there serves the
dashboard, the sample feed (built from the installed package, not from a checkout) and runs a
task on its local agents; SIGTERM stops it all.

Needs: `build` (dev dependency) and pip's configured index for the build's own setuptools and
for the product's dependencies (this machine's local mirror: no network). About a minute on an
idle machine, most of it the build's and the install's isolated environments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.launch import Process, free_port, wait_url
from support import wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.wheel


@dataclass
class Installed:
    wheel: Path
    sdist: Path
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def fleetcmd(self) -> str:
        return str(self.venv / "bin" / "fleetcmd")


def _outside_env() -> dict[str, str]:
    """This environment without anything that would let the checkout or a secret in."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "FLEETCMD_TOKEN", "FLEETCMD_ENROLLMENT_KEY")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONUNBUFFERED": "1"}


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        argv, cwd=cwd, env=_outside_env(), capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"{argv[:4]} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    # sdist first, then the wheel from the sdist: the sdist is proven complete too
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], tmp, 300)
    [wheel] = dist.glob("fleetcmd-*.whl")
    [sdist] = dist.glob("fleetcmd-*.tar.gz")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # empty: this venv's pip installs into it
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "constraints.txt"),
            str(wheel),
        ],
        tmp,
        300,
    )
    return Installed(wheel, sdist, env_dir)


def test_the_wheel_carries_the_data_and_not_the_lab(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    for wanted in (
        "fleetcmd/store/sql/schema_sqlite.sql",
        "fleetcmd/store/sql/schema_postgres.sql",
        "fleetcmd/server/dashboard/templates/base.html",
        "fleetcmd/server/dashboard/static/app.css",
        "fleetcmd/content/sample_feed/feed.yaml",
        "fleetcmd/content/sample_feed/sca/debian12-baseline.yaml",
        "fleetcmd/launch.py",
    ):
        assert wanted in names, f"{wanted} missing from {installed.wheel.name}"
    assert not [n for n in names if n.startswith(("fleetcmd_lab", "fleetcmd/bench"))]
    # installed from the wheel, not found in the checkout
    where = _run([installed.python, "-c", "import fleetcmd; print(fleetcmd.__file__)"], REPO, 60)
    assert where.stdout.strip().startswith(str(installed.venv)), where.stdout
    bench = subprocess.run(
        [installed.fleetcmd, "bench", "delivery"],
        env=_outside_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bench.returncode == 2 and "install fleetcmd-lab" in bench.stderr, bench


@dataclass
class Up:
    process: Process
    data: Path
    indexer: str
    api: str

    def node(self) -> httpx.Client:
        token = (self.data / "node.token").read_text().strip()
        return httpx.Client(
            base_url=self.indexer, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def up(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("wheel-up")
    data = tmp / "data"
    ports = [free_port() for _ in range(3)]
    process = Process(
        "fleetcmd-up",
        [
            installed.fleetcmd,
            "up",
            "--agents",
            "2",
            "--data-dir",
            str(data),
            "--indexer-port",
            str(ports[0]),
            "--management-port",
            str(ports[1]),
            "--comms-port",
            str(ports[2]),
        ],
        tmp / "up.log",
        _outside_env(),
    )
    system = Up(process, data, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    try:
        process.start()
        wait_until(
            lambda: "fleetcmd is up." in process.log() or not process.alive(),
            90,
            interval=0.2,
            what="fleetcmd up from the wheel",
        )
        assert process.alive(), process.log()
        yield system
    finally:
        ended = process.stop(60)
        print(f"----- fleetcmd up (from the wheel) -----\n{process.log()[-4000:]}")
        for log in sorted((data / "logs").glob("*.log")):
            print(f"----- {log.name} (tail) -----\n{log.read_text(errors='replace')[-1500:]}")
        assert ended, "fleetcmd up did not stop on SIGTERM in 60 s"


def test_up_from_the_wheel_serves_the_dashboard_and_runs_a_task(up: Up) -> None:
    wait_url(f"{up.api}/health", 30, up.process)
    wait_url(f"{up.api}/app/login", 30, up.process)
    assert "app.css" in httpx.get(f"{up.api}/app/login", timeout=10).text
    with up.node() as c:
        # the sample feed, with its agent package made from the installed package
        package = wait_until(
            lambda: c.get("/indexes/agent-packages/fleetcmd-0.1.0").status_code == 200,
            60,
            interval=0.5,
            what="the sample feed's agent package in the indexer",
        )
        assert package

        def connected() -> list[dict[str, Any]]:
            return [a for a in c.get("/agents").json()["data"]["items"] if a["node"]]

        agents = wait_until(lambda: len(a := connected()) == 2 and a, 60, what="2 agents connected")
        r = c.post(
            "/tasks",
            json={
                "type": "group-configuration-change",
                "params": {"group": "default", "configuration": {"log_level": "debug"}},
                "user": "test-wheel",
            },
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["data"]["id"]
        task = wait_until(
            lambda: (t := c.get(f"/tasks/{task_id}").json()["data"])["completed_at"] and t,
            60,
            what="the task final",
        )
        assert task["status"] == "success", task
        done = c.get("/commands", params={"task_id": task_id, "target_type": "agent"})
        assert done.status_code == 200, done.text
        items = done.json()["data"]["items"]
        reached = {cmd["target"]["id"] for cmd in items if cmd["status"] == "success"}
        assert reached == {a["id"] for a in agents}, (reached, agents)


def test_sigterm_stops_every_process(up: Up) -> None:
    """Last: SIGTERM to `fleetcmd up` ends it with 0 and leaves none of its roles running."""
    up.process.send(signal.SIGTERM)
    assert up.process.proc is not None
    assert up.process.proc.wait(60) == 0, up.process.log()[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{up.indexer}/health", timeout=2)
