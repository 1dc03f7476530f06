"""Schedules and freezes over real HTTP, on both stores (issue 17): a schedule is checked as
its task would be (RBAC reach, a scoped user's groups), every change is audited, each
occurrence is filed as its creator on a test clock the test moves; a freeze refuses tasks
that reach its agents, and only a holder of `freeze:override` passes it, audited."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.harness import FakeAgent, Server, fleet, login, task_final
from support import FLEETCMD, Indexer, store_url_for, wait_until

PW = "correct-horse-battery"
START = datetime(2026, 11, 2, 9, tzinfo=UTC)


class Env:
    def __init__(self, idx: Indexer, srv: Server, clock: Path) -> None:
        self.idx, self.srv, self.clock = idx, srv, clock
        self.admin = srv.admin()
        for g in ("web", "db"):
            r = self.admin.post(
                "/tasks",
                json={
                    "type": "group-configuration-change",
                    "params": {"group": g, "configuration": {"g": g}},
                },
            )
            task_final(self.admin, r.json()["data"]["id"])
        self.agents = [FakeAgent(srv.comms, n, [g]) for n, g in (("w1", "web"), ("d1", "db"))]
        r = self.admin.put(
            "/security/roles/db-ops",
            json={
                "policies": [
                    {
                        "actions": ["task:create", "task:read", "task:cancel", "agent:read"],
                        "resources": ["agent:group:db"],
                    }
                ]
            },
        )
        assert r.status_code == 200, r.text
        self.users: dict[str, httpx.Client] = {}

    def user(self, name: str, roles: list[str]) -> httpx.Client:
        if name not in self.users:
            r = self.admin.post(
                "/security/users", json={"name": name, "password": PW, "roles": roles}
            )
            assert r.status_code == 201, r.text
            self.users[name] = login(self.srv.api, name, PW)
        return self.users[name]

    def at(self, when: datetime) -> None:
        self.clock.write_text(str(when.timestamp()))

    def audit(self, action: str) -> list[dict[str, Any]]:
        r = self.admin.get("/audit", params={"action": action, "limit": 100})
        assert r.status_code == 200, r.text
        return list(r.json()["data"]["items"])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"sched-{request.param}")
    clock = tmp / "clock"
    clock.write_text(str(START.timestamp()))
    mp = pytest.MonkeyPatch()
    mp.setenv("FLEETCMD_SCHEDULER_CLOCK", str(clock))
    try:
        with store_url_for(request.param, tmp) as url, fleet(url, tmp) as (idx, [srv]):
            yield Env(idx, srv, clock)
    finally:
        mp.undo()


def schedule(group: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": f"rescan {group}",
        "task": {"type": "vulnerability-rescan", "params": {"group": group}},
        "rrule": "FREQ=HOURLY;BYMINUTE=30",
        "tz": "Europe/Paris",
        **kw,
    }


def test_schedule_checked_filed_as_creator_and_audited(env: Env) -> None:
    db = env.user("dora", ["db-ops"])
    ro = env.user("rita", ["readonly"])
    # checked as the task would be: a readonly user files nothing, a db operator not on web
    assert ro.post("/schedules", json=schedule("db")).status_code == 403
    refused = db.post("/schedules", json=schedule("web"))
    assert refused.status_code == 403, refused.text
    bad = db.post("/schedules", json=schedule("db", rrule="FREQ=NEVER"))
    assert bad.status_code == 422 and "RRULE" in bad.text
    r = db.post("/schedules", json=schedule("db"))
    assert r.status_code == 201, r.text
    sched = r.json()["data"]
    assert sched["user"] == "dora" and [n["at"] for n in sched["next"][:2]] == [
        "2026-11-02T09:30:00Z",
        "2026-11-02T10:30:00Z",
    ]
    assert sched["next"][0]["local"] == "2026-11-02T10:30:00+01:00"
    creates = env.audit("schedule.create")
    assert {(a["actor"], a["outcome"]) for a in creates} >= {
        ("dora", "success"),
        ("dora", "denied"),
    }
    env.at(START + timedelta(minutes=30, seconds=1))
    wait_until(
        lambda: db.get(f"/schedules/{sched['id']}").json()["data"]["occurrences"],
        20,
        what="the first occurrence",
    )
    (occ,) = db.get(f"/schedules/{sched['id']}").json()["data"]["occurrences"]
    assert occ["outcome"] == "filed" and occ["occurrence_at"] == "2026-11-02T09:30:00Z"
    task = env.admin.get(f"/tasks/{occ['task_id']}").json()["data"]
    assert task["user"] == "dora" and task["type"] == "vulnerability-rescan"
    assert task["schedule_id"] == sched["id"]
    assert task["occurrence_at"].startswith("2026-11-02T09:30:00")
    # the web operator's list leaves out what they may not read; admin sees it
    assert [s["id"] for s in db.get("/schedules").json()["data"]["items"]] == [sched["id"]]
    for verb in ("pause", "resume"):
        r = db.post(f"/schedules/{sched['id']}/{verb}")
        assert r.status_code == 200, r.text
    assert db.post(f"/schedules/{sched['id']}/resume").status_code == 409
    assert ro.post(f"/schedules/{sched['id']}/pause").status_code == 403
    assert db.delete(f"/schedules/{sched['id']}").status_code == 204
    assert env.admin.get(f"/schedules/{sched['id']}").status_code == 404
    done = {(a["action"], a["actor"]) for a in env.audit("schedule.delete")}
    assert ("schedule.delete", "dora") in done
    assert [a["outcome"] for a in env.audit("task.cancel") if a["actor"] == "rita"] == ["denied"]


def test_freeze_refuses_override_needs_permission_and_is_audited(env: Env) -> None:
    op = env.user("otto", ["operator"])
    now = datetime.now(UTC)
    body = {
        "name": "db freeze",
        "selector": "group = db",
        "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "reason": "quarter end",
    }
    assert op.post("/freezes", json=body).status_code == 403  # the system's, not an operator's
    bad = env.admin.post("/freezes", json={**body, "selector": "group ="})
    assert bad.status_code == 422, bad.text
    r = env.admin.post("/freezes", json=body)
    assert r.status_code == 201, r.text
    freeze = r.json()["data"]
    task = {"type": "vulnerability-rescan", "params": {"group": "db"}}
    refused = op.post("/tasks", json=task)
    assert refused.status_code == 403 and "db freeze" in refused.text, refused.text
    assert op.post("/tasks", json={**task, "override_freeze": True}).status_code == 403
    web = op.post("/tasks", json={"type": "vulnerability-rescan", "params": {"group": "web"}})
    assert web.status_code == 202, web.text  # agents outside the freeze are not held back
    passed = env.admin.post("/tasks", json={**task, "override_freeze": True})
    assert passed.status_code == 202, passed.text
    records = env.audit("freeze.override")
    assert sorted((r["actor"], r["outcome"]) for r in records) == [
        ("admin", "success"),
        ("otto", "denied"),
    ]
    (used,) = [r for r in records if r["outcome"] == "success"]
    assert used["details"]["freezes"][0]["agents"] == 1
    assert [f["id"] for f in env.admin.get("/freezes").json()["data"]["items"]] == [freeze["id"]]
    assert env.admin.delete(f"/freezes/{freeze['id']}").status_code == 204
    assert op.post("/tasks", json=task).status_code == 202


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    password = (env.srv.data_dir / "admin.password").read_text().strip()
    return subprocess.run(
        [*FLEETCMD, *args, "--api", env.srv.api, "--password", password],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_schedule_cli(env: Env) -> None:
    r = cli(
        env,
        "schedule",
        "create",
        "nightly web",
        "vulnerability-rescan",
        "-p",
        "group=web",
        "--rrule",
        "FREQ=DAILY;BYHOUR=2;BYMINUTE=30",
        "--tz",
        "Europe/Paris",
        "--start",
        "2026-11-03T02:30",
    )
    assert r.returncode == 0, r.stderr
    assert "next: 2026-11-03T02:30:00+01:00, 2026-11-04T02:30:00+01:00" in r.stdout
    sid = r.stdout.split()[1]
    listed = cli(env, "schedule", "list")
    assert "nightly web" in listed.stdout and "FREQ=DAILY" in listed.stdout, listed.stderr
    assert "paused" in cli(env, "schedule", "pause", sid).stdout
    assert "active" in cli(env, "schedule", "resume", sid).stdout
    shown = json.loads(cli(env, "schedule", "show", sid).stdout)
    assert shown["name"] == "nightly web" and len(shown["next"]) == 5
    bad = cli(env, "schedule", "create", "x", "vulnerability-rescan", "--tz", "Nowhere/At_All")
    assert bad.returncode == 1 and "time zone" in bad.stderr
    assert "deleted" in cli(env, "schedule", "delete", sid).stdout
    gone = cli(env, "schedule", "show", sid)
    assert gone.returncode == 1 and "404" in gone.stderr


def test_a_window_opens_and_closes_around_a_held_command(env: Env) -> None:
    """Over real HTTP and a real server: the command waits `held` (the agent's long-poll gets
    nothing) until the web window opens on the test clock, then reaches the agent; the
    offline db agent's command stays held, and with the `next` policy it counts a missed
    window when the window closes; windows are the system's (an operator is refused)."""
    op = env.user("otto", ["operator"])
    env.at(datetime(2026, 11, 7, 12, tzinfo=UTC))  # a Saturday
    window = {
        "name": "weekend",
        "selector": "group = web or group = db",
        "rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=3",
        "tz": "Europe/Paris",
        "duration": 3600,
    }
    assert op.post("/windows", json=window).status_code == 403
    r = env.admin.post("/windows", json=window)
    assert r.status_code == 201, r.text
    w = r.json()["data"]
    assert w["open"] is False and w["next"][0]["opens"] == "2026-11-08T03:00:00+01:00"
    web, db = env.agents
    while web.run_once(wait=0.2) or db.run_once(wait=0.2):
        pass
    r = op.post(
        "/tasks",
        json={"type": "vulnerability-rescan", "params": {"all": True}, "window": "next"},
    )
    assert r.status_code == 202, r.text
    task_id = r.json()["data"]["id"]
    report = op.get(f"/tasks/{task_id}/windows").json()["data"]
    assert (report["held"], report["pending"], report["policy"]) == (2, 0, "next")
    assert web.poll(wait=1.0) == []  # held: nothing reaches the agent
    env.at(datetime(2026, 11, 8, 2, 0, 5, tzinfo=UTC))  # 03:00:05 CET: open
    got = wait_until(lambda: web.poll(wait=1.0), 20, what="the command in the window")
    assert [c["task_id"] for c in got] == [task_id]
    web.ack([c["id"] for c in got])
    web.report([{"id": c["id"], "status": "success", "data": {}} for c in got])
    # db-1 never polls in this window; the window closes
    env.at(datetime(2026, 11, 8, 3, 0, 1, tzinfo=UTC))

    def missed() -> Any:
        rep = op.get(f"/tasks/{task_id}/windows").json()["data"]
        return rep if rep["missed_window"] == 1 else None

    rep = wait_until(missed, 20, what="the missed window")
    assert rep["held"] == 1 and rep["counts"].get("success") == 1
    assert "failure" not in rep["counts"]
    assert db.poll(wait=0.5) == []  # between windows
    env.at(datetime(2026, 11, 15, 2, 0, 5, tzinfo=UTC))  # the next Sunday
    got = wait_until(lambda: db.poll(wait=1.0), 20, what="the next window")
    db.ack([c["id"] for c in got])
    db.report([{"id": c["id"], "status": "success", "data": {}} for c in got])
    done = task_final(op, task_id)
    assert done["status"] == "success" and done["counts"] == {"success": 2}
    assert op.get(f"/tasks/{task_id}/windows").json()["data"]["missed_window"] == 1
    assert env.admin.delete(f"/windows/{w['id']}").status_code == 204
    assert {a["actor"] for a in env.audit("window.create")} == {"admin", "otto"}


def test_window_and_freeze_cli(env: Env) -> None:
    r = cli(
        env,
        "window",
        "create",
        "db nights",
        "group = db",
        "--rrule",
        "FREQ=DAILY;BYHOUR=1",
        "--duration",
        "1800",
        "--tz",
        "Europe/Paris",
    )
    assert r.returncode == 0, r.stderr
    assert "next 2026-" in r.stdout and "+01:00 to " in r.stdout
    wid = r.stdout.split()[1]
    listed = json.loads(cli(env, "window", "list").stdout)
    assert [w["name"] for w in listed] == ["db nights"]
    r = cli(env, "task", "create", "vulnerability-rescan", "-p", "group=db", "--window", "next")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"] == {"held": 1}
    assert "deleted" in cli(env, "window", "delete", wid).stdout
    r = cli(
        env,
        "freeze",
        "create",
        "now",
        "group = db",
        "--starts-at",
        datetime.now(UTC).isoformat(),
        "--ends-at",
        (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )
    assert r.returncode == 0, r.stderr
    fid = r.stdout.split()[1]
    refused = cli(env, "task", "create", "vulnerability-rescan", "-p", "group=db")
    assert refused.returncode == 1 and "freeze 'now'" in refused.stderr
    passed = cli(
        env, "task", "create", "vulnerability-rescan", "-p", "group=db", "--override-freeze"
    )
    assert passed.returncode == 0, passed.stderr
    assert "deleted" in cli(env, "freeze", "delete", fid).stdout
