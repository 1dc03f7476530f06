"""Rollouts end to end: a real indexer and server, agents speaking the Comms API (some made to
fail, some stopped mid-rollout), control through the Management API and the CLI, and a
restart of the indexer in the middle of a rollout."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fleetcmd.model.config import config_hash
from server.harness import FakeAgent, Server, file_task, fleet, task_final
from support import FLEETCMD, Indexer, wait_until


class Agent(FakeAgent):
    """A fake agent on its own thread: polls, answers success (or failure when told to), and
    can be stopped and started again (it is then offline for the server)."""

    def __init__(self, comms: str, name: str, groups: list[str]) -> None:
        super().__init__(comms, name, groups)
        self.fail = False
        self.running = threading.Event()
        self.got: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.running.wait(0.2):
                continue
            try:
                commands = self.poll(wait=2.0)
            except (httpx.HTTPError, AssertionError):
                time.sleep(0.3)
                continue
            if not commands:
                continue
            self.ack([c["id"] for c in commands])
            self.got.extend(commands)
            self.report(
                [
                    {
                        "id": c["id"],
                        "status": "failure" if self.fail else "success",
                        "code": 1 if self.fail else 0,
                        "message": "refused on purpose" if self.fail else "ok",
                        "data": {"config_hash": c["action"]["args"].get("config_hash")},
                    }
                    for c in commands
                ]
            )

    def stop(self) -> None:
        self._stop.set()
        self.running.clear()

    def close(self) -> None:
        self.stop()
        self._thread.join(6)


@contextmanager
def agents(comms: str, n: int, group: str = "web") -> Iterator[list[Agent]]:
    made = [Agent(comms, f"{group}-{i:02d}", [group]) for i in range(n)]
    for a in made:
        a.running.set()
    try:
        yield sorted(made, key=lambda a: a.id)  # a rollout takes its targets in id order
    finally:
        for a in made:  # all told first: each may be inside a 2 s poll
            a.stop()
        for a in made:
            a.close()


def rollout(api: httpx.Client, task_id: int) -> dict[str, Any]:
    r = api.get(f"/tasks/{task_id}/rollout")
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def wait_rollout(
    api: httpx.Client, task_id: int, what: str, check: Any, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        r = rollout(api, task_id)
        return r if r["waves"] and check(r) else None  # no waves until the task is expanded

    return dict(wait_until(probe, timeout=timeout, interval=0.1, what=what))


def cli(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETCMD_PASSWORD": (srv.data_dir / "admin.password").read_text().strip()}
    return subprocess.run(
        [*FLEETCMD, "rollout", *args, "--api", srv.api],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_canary_waves_threshold_offline_resume_and_rollback(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        old = {"log": {"level": "info"}}
        old_hash = config_hash(old)
        task_final(
            api,
            file_task(api, "group-configuration-change", {"group": "web", "configuration": old})[
                "id"
            ],
        )
        with agents(srv.comms, 30) as fleet_:
            run_first_rollout(api, srv, fleet_, old, old_hash)


def run_first_rollout(
    api: httpx.Client, srv: Server, fleet_: list[Agent], old: dict[str, Any], old_hash: str
) -> None:
    canary, wave1, wave2, wave3 = fleet_[:3], fleet_[3:12], fleet_[12:21], fleet_[21:]
    for a in wave2[:3]:
        a.fail = True  # 3 failures among at most 21 delivered: above 10% whatever the order

    new = {"log": {"level": "debug"}}
    r = api.post(
        "/tasks",
        json={
            "type": "group-configuration-change",
            "params": {"group": "web", "configuration": new},
            "rollout": {
                "canary": {"count": 3},
                "waves": {"size": 9},
                "error_threshold": {"percent": 10},
                "on_trip": "pause",
            },
        },
    )
    assert r.status_code == 202, r.text
    task_id = r.json()["data"]["id"]

    # The canary runs first, alone.
    wait_rollout(api, task_id, "canary done", lambda r: r["waves"][0]["succeeded"] == 3)
    first_wave1 = min(
        c["delivered_at"] or "z"
        for a in wave1
        for c in api.get("/commands", params={"task_id": task_id, "target_id": a.id}).json()[
            "data"
        ]["items"]
    )
    last_canary = max(
        c["completed_at"]
        for a in canary
        for c in api.get("/commands", params={"task_id": task_id, "target_id": a.id}).json()[
            "data"
        ]["items"]
    )
    assert last_canary <= first_wave1

    # Two agents of the last wave stop during the rollout.
    for a in wave3[:2]:
        a.running.clear()
    wait_until(
        lambda: all(
            api.get(f"/agents/{a.id}").json()["data"]["status"] == "disconnected" for a in wave3[:2]
        ),
        timeout=30,
        what="stopped agents seen as disconnected",
    )

    # The threshold trips in wave 2: paused, and the last wave does not start.
    tripped = wait_rollout(api, task_id, "tripped", lambda r: r["state"] == "paused")
    assert tripped["reason"].startswith("error threshold tripped")
    time.sleep(1.0)
    held = rollout(api, task_id)
    assert held["state"] == "paused"
    assert held["waves"][3]["pending"] == 9 and held["waves"][3]["started_at"] is None
    assert not any(a.got for a in wave3)

    # Resume from the CLI: the last wave runs; the stopped agents neither block it nor
    # count as errors, and wait for their command.
    out = cli(srv, "resume", str(task_id), "--reason", "known bad hosts")
    assert out.returncode == 0, out.stderr
    waiting = wait_rollout(
        api,
        task_id,
        "last wave done but for the offline agents",
        lambda r: r["waves"][3]["succeeded"] == 7 and r["waves"][3]["offline_waiting"] == 2,
    )
    assert waiting["state"] == "running"
    assert waiting["waves"][3]["offline_waiting"] == 2
    assert waiting["waves"][3]["failed"] == 0
    status = cli(srv, "status", str(task_id), "--json")
    assert '"offline_waiting": 2' in status.stdout

    # They come back and get their command; the rollout completes.
    for a in wave3[:2]:
        a.running.set()
    done = wait_rollout(api, task_id, "completed", lambda r: r["state"] == "completed")
    assert done["totals"]["succeeded"] == 27 and done["totals"]["failed"] == 3
    assert all(a.got and a.got[-1]["task_id"] == task_id for a in wave3[:2])

    # Roll back on demand: every agent that applied the change gets the old configuration.
    r = api.post(f"/tasks/{task_id}/rollout/rollback", json={"reason": "undo"})
    assert r.status_code == 200, r.text
    rb = r.json()["data"]["rollback_task_id"]
    final = task_final(api, rb)
    assert final["counts"] == {"success": 27}, final
    assert rollout(api, rb) == {"task_id": rb, "rollback_of": task_id}
    for a in fleet_:
        last = a.got[-1]
        if a in wave2[:3]:
            assert last["task_id"] == task_id  # never applied: nothing to undo
        else:
            assert last["task_id"] == rb
            assert last["action"]["args"]["config_hash"] == old_hash
    assert api.get("/groups/web").json()["data"]["configuration"] == old
    assert api.post(f"/tasks/{task_id}/rollout/resume").status_code == 409


def test_pause_abort_and_a_restart_of_the_indexer_mid_rollout(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        api = srv.admin()
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "web", "configuration": {"v": 1}}
            )["id"],
        )
        with agents(srv.comms, 12):
            restart_mid_rollout(api, srv, idx, store_url, tmp_path)


def restart_mid_rollout(
    api: httpx.Client, srv: Server, idx: Indexer, store_url: str, tmp_path: Path
) -> None:
    task = api.post(
        "/tasks",
        json={
            "type": "group-configuration-change",
            "params": {"group": "web", "configuration": {"v": 2}},
            "rollout": {"waves": {"size": 4, "pause": 2.0}},
        },
    ).json()["data"]
    wait_rollout(
        api, task["id"], "wave 0 settled", lambda r: r["waves"][0]["settled_at"] is not None
    )

    # Killed during the pause between waves; started again on the same store and port.
    idx.kill()
    again = Indexer(store_url, tmp_path / "indexer", port=idx.port).start()
    try:
        done = wait_rollout(
            api,
            task["id"],
            "completed after the restart",
            lambda r: r["state"] == "completed",
            timeout=90,
        )
        assert [w["succeeded"] for w in done["waves"]] == [4, 4, 4]
        starts = [w["started_at"] for w in done["waves"]]
        settles = [w["settled_at"] for w in done["waves"]]
        for i in (1, 2):
            assert starts[i] >= settles[i - 1] + 2.0  # the pause held across the restart
        assert task_final(api, task["id"])["counts"] == {"success": 12}

        # Pause and abort from the API (and the CLI), each audited.
        t2 = api.post(
            "/tasks",
            json={
                "type": "group-configuration-change",
                "params": {"group": "web", "configuration": {"v": 3}},
                "rollout": {"waves": {"size": 4, "pause": 30}},
            },
        ).json()["data"]
        wait_rollout(
            api, t2["id"], "wave 0 settled", lambda r: r["waves"][0]["settled_at"] is not None
        )
        out = cli(srv, "pause", str(t2["id"]))
        assert out.returncode == 0 and "paused" in out.stdout, out.stderr
        assert api.post(f"/tasks/{t2['id']}/rollout/pause").status_code == 409
        r = api.post(f"/tasks/{t2['id']}/rollout/abort", json={"reason": "stop"})
        assert r.status_code == 200 and r.json()["data"]["state"] == "aborted"
        final = task_final(api, t2["id"])
        assert final["counts"] == {"success": 4, "cancelled": 8}
        with again.client() as c:
            audit = c.get(
                "/audit", params={"target": f"task:{t2['id']}", "action": "rollout.*"}
            ).json()["data"]
        actions = [(a["action"], a["outcome"], a["actor"]) for a in audit["items"]]
        assert actions[::-1] == [
            ("rollout.pause", "success", "admin"),
            ("rollout.pause", "failure", "admin"),
            ("rollout.abort", "success", "admin"),
        ]
    finally:
        again.stop()
        print(f"----- {again.name} log (tail) -----\n{again.log()[-4000:]}")


def test_bad_rollout_requests_get_a_4xx_that_says_why(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        r = api.post(
            "/tasks",
            json={
                "type": "agent-upgrade",
                "params": {"all": True, "version": "2"},
                "rollout": {"waves": {"size": "0%"}},
            },
        )
        assert r.status_code == 422, r.text
        assert "waves.size" in r.json()["message"]
        assert api.get("/tasks/999/rollout").status_code == 404
        assert api.post("/tasks/999/rollout/explode").status_code == 422


def test_real_agents_apply_the_rollout_and_its_rollback(store_url: str, tmp_path: Path) -> None:
    """Real `fleetcmd agent` processes: the new configuration reaches them wave by wave, and
    the rollback puts every one of them back on the configuration they ran before."""
    from fleetcmd.agent.cli import status_of
    from support import Role

    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        old, new = {"log": {"level": "info"}}, {"log": {"level": "debug"}}
        task_final(
            api,
            file_task(api, "group-configuration-change", {"group": "web", "configuration": old})[
                "id"
            ],
        )
        roles: list[Role] = []
        states = [tmp_path / f"real-{i}" for i in range(4)]
        try:
            for i, state in enumerate(states):
                roles.append(
                    Role(
                        f"real-{i}",
                        [
                            "agent",
                            "--server",
                            srv.comms,
                            "--enrollment-key",
                            "test-enrollment-key",
                            "--name",
                            f"real-{i}",
                            "--state-dir",
                            str(state),
                            "--groups",
                            "web",
                            "--log-level",
                            "warning",
                        ],
                        tmp_path,
                    ).start()
                )
            ids = [
                wait_until(
                    lambda s=s: s.is_dir() and status_of(s).get("id"), 30, what="agent enrolled"
                )
                for s in states
            ]
            wait_until(
                lambda: all(
                    api.get(f"/agents/{a}").json()["data"]["status"] == "active" for a in ids
                ),
                30,
                what="agents active",
            )
            wait_until(
                lambda: all(status_of(s).get("config_hash") == config_hash(old) for s in states),
                30,
                what="agents on the old config",
            )
            r = api.post(
                "/tasks",
                json={
                    "type": "group-configuration-change",
                    "params": {"group": "web", "configuration": new},
                    "rollout": {"canary": {"count": 1}, "waves": {"size": 2}},
                },
            )
            assert r.status_code == 202, r.text
            task_id = r.json()["data"]["id"]
            done = wait_rollout(api, task_id, "completed", lambda r: r["state"] == "completed")
            assert [w["succeeded"] for w in done["waves"]] == [1, 2, 1]
            assert all(status_of(s)["config_hash"] == config_hash(new) for s in states)
            rb = api.post(f"/tasks/{task_id}/rollout/rollback").json()["data"]
            final = task_final(api, rb["rollback_task_id"])
            assert final["counts"] == {"success": 4}, final
            wait_until(
                lambda: all(status_of(s)["config_hash"] == config_hash(old) for s in states),
                30,
                what="agents back on the old config",
            )
        finally:
            for role in roles:
                role.stop()
                print(f"----- {role.name} log (tail) -----\n{role.log()[-1500:]}")
