"""Heartbeats through the Comms API to the stream, with real processes on both stores (issue
17.3): a fake agent that heartbeats a command makes it `running`, counted in its task; once it
stops, the indexer's sweeper ends it `timeout` "agent stopped reporting" within two
intervals. Another agent's heartbeat on it changes nothing; a bad body is a 422 saying why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from server.harness import FakeAgent, file_task, fleet, login, task_final
from support import wait_until

PW = "Operator-pass-1!"


def beat(agent: FakeAgent, beats: list[dict[str, Any]]) -> httpx.Response:
    return agent.http.post("/agents/commands/progress", json={"progress": beats})


def test_heartbeats_make_a_command_running_until_they_stop(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        agent, other = FakeAgent(srv.comms, "long-1"), FakeAgent(srv.comms, "long-2")
        task = file_task(api, "vulnerability-rescan", {"agents": [agent.id]})
        (cmd,) = agent.poll()
        assert agent.ack([cmd["id"]]) == [cmd["id"]]

        def counts() -> dict[str, int]:
            return dict(api.get(f"/tasks/{task['id']}").json()["data"]["counts"])

        assert counts() == {"delivered": 1}
        r = beat(other, [{"id": cmd["id"], "interval": 1}])
        assert r.status_code == 200 and r.json()["data"] == {
            "running": [],
            "stopped": [cmd["id"]],
            "next": {},
        }
        assert counts() == {"delivered": 1}  # not its command: nothing moved

        interval = 1.0
        for _ in range(3):
            r = beat(agent, [{"id": cmd["id"], "interval": interval}])
            assert r.status_code == 200, r.text
            assert r.json()["data"] == {
                "running": [cmd["id"]],
                "stopped": [],
                "next": {str(cmd["id"]): 0},
            }
            assert counts() == {"running": 1}
            time.sleep(interval / 2)
        last = time.monotonic()
        wait_until(lambda: counts() == {"timeout": 1}, 10, what="timed out")
        took = time.monotonic() - last
        assert took <= 2 * interval + 1.5, took  # two intervals, the sweeper's second, slack
        c = api.get(f"/commands/{cmd['id']}").json()["data"]
        assert c["status"] == "timeout" and c["result"]["message"] == "agent stopped reporting"
        r = beat(agent, [{"id": cmd["id"], "interval": interval}])
        assert r.json()["data"] == {"running": [], "stopped": [cmd["id"]], "next": {}}
        late = agent.report([{"id": cmd["id"], "status": "success", "data": {}}])
        assert late[0]["outcome"] == "ignored: already timeout"

        for bad, why in (
            ({"progress": []}, "progress"),
            ({"progress": [{"id": cmd["id"], "interval": 0.01}]}, "interval"),
            ({"progress": [{"id": "x"}]}, "id"),
            ({"beats": []}, "progress"),
        ):
            r = agent.http.post("/agents/commands/progress", json=bad)
            assert r.status_code == 422 and why in r.text, (bad, r.text)


def test_progress_and_output_are_read_as_the_command_is(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        for g in ("web", "db"):
            task_final(
                api,
                file_task(api, "group-configuration-change", {"group": g, "configuration": {}})[
                    "id"
                ],
            )
        web, db = FakeAgent(srv.comms, "out-web", ["web"]), FakeAgent(srv.comms, "out-db", ["db"])
        ids = {}
        for agent in (web, db):
            file_task(api, "vulnerability-rescan", {"agents": [agent.id]})
            (cmd,) = agent.poll()
            agent.ack([cmd["id"]])
            ids[agent.name] = cmd["id"]
        cid = ids["out-web"]
        chunks = [{"seq": i, "data": f"line {i}\n"} for i in range(5)]
        r = beat(
            web,
            [
                {
                    "id": cid,
                    "interval": 30,
                    "percent": 40,
                    "message": "scanning",
                    "output": chunks[:3],
                }
            ],
        )
        assert r.json()["data"]["next"] == {str(cid): 3}
        r = beat(web, [{"id": cid, "interval": 30, "output": chunks[2:]}])  # 2 again: ignored
        assert r.json()["data"]["next"] == {str(cid): 5}
        beat(db, [{"id": ids["out-db"], "interval": 30, "output": chunks[:1]}])

        c = api.get(f"/commands/{cid}").json()["data"]
        assert c["status"] == "running" and c["progress"]["percent"] == 40
        assert c["progress"]["message"] == "scanning" and c["output"] == {"chunks": 5, "bytes": 35}
        page = api.get(f"/commands/{cid}/output", params={"after": 1, "limit": 2}).json()["data"]
        assert [x["seq"] for x in page["chunks"]] == [2, 3] and page["next"] == 3
        assert page["done"] is False
        rest = api.get(f"/commands/{cid}/output", params={"after": page["next"]}).json()["data"]
        assert [x["data"] for x in rest["chunks"]] == ["line 4\n"]
        web.report([{"id": cid, "status": "success", "data": {}}])
        end = api.get(f"/commands/{cid}/output", params={"after": 4}).json()["data"]
        assert end["chunks"] == [] and end["done"] is True and end["status"] == "success"
        assert api.get("/commands/999999/output").status_code == 404
        assert api.get(f"/commands/{cid}/output", params={"after": -5}).status_code == 422

        # read as the command is: a web operator reads web's output, not db's
        role = {
            "actions": ["command:read", "task:read", "agent:read"],
            "resources": ["agent:group:web"],
        }
        assert api.put("/security/roles/web-read", json={"policies": [role]}).status_code == 200
        made = api.post(
            "/security/users", json={"name": "webop", "password": PW, "roles": ["web-read"]}
        )
        assert made.status_code == 201, made.text
        op = login(srv.api, "webop", PW)
        assert op.get(f"/commands/{cid}/output").status_code == 200
        denied = op.get(f"/commands/{ids['out-db']}/output")
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"


def test_execution_timeouts_are_capped_by_the_administrator_s_setting(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        agent = FakeAgent(srv.comms, "cap-1")

        def file(timeout: float, path: str = "/tasks") -> httpx.Response:
            return api.post(
                path,
                json={
                    "type": "vulnerability-rescan",
                    "params": {"agents": [agent.id]},
                    "timeout": timeout,
                },
            )

        hours = 3600.0
        r = file(12 * hours)  # many hours: under the default cap (24 h)
        assert r.status_code == 202, r.text
        (cmd,) = agent.poll()
        assert cmd["timeout"] == 12 * hours
        r = file(48 * hours)
        assert r.status_code == 422, r.text
        assert "commands.max_timeout" in r.json()["message"] and "86400" in r.json()["message"]
        assert file(31 * 86400).status_code == 422  # past MAX_WINDOW whatever the setting

        def configure(cap: float) -> None:
            t = file_task(api, "server-config-change", {"settings": {"commands.max_timeout": cap}})
            assert task_final(api, t["id"])["status"] == "success"

        configure(3 * 86400)
        assert file(48 * hours).status_code == 202
        configure(hours)
        r = file(2 * hours)
        assert r.status_code == 422 and "3600 s" in r.json()["message"], r.text
        r = api.post("/tasks/1/rerun", json={"timeout": 2 * hours})
        assert r.status_code == 422 and "commands.max_timeout" in r.text, r.text


def test_task_watch_shows_running_commands_with_their_progress(
    store_url: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import threading

    from support import FLEETCMD

    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        agent = FakeAgent(srv.comms, "watched-1")
        task = file_task(api, "vulnerability-rescan", {"agents": [agent.id]})
        (cmd,) = agent.poll()
        agent.ack([cmd["id"]])
        r = beat(agent, [{"id": cmd["id"], "interval": 60, "percent": 45, "message": "hashing"}])
        assert r.status_code == 200, r.text
        # a terminal as far as rich is concerned, so the live rows are drawn
        env = dict(os.environ, TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", COLUMNS="160")
        watch = subprocess.Popen(
            [
                *FLEETCMD,
                "task",
                "watch",
                str(task["id"]),
                "--interval",
                "0.2",
                "--api",
                srv.api,
                "--data-dir",
                str(srv.data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(iter(watch.stdout.readline, "")))  # type: ignore[union-attr]
        reader.start()
        try:
            row = f"#{cmd['id']} {agent.id}"
            wait_until(
                lambda: any(row in s and "hashing" in s and "45/100" in s for s in seen),
                30,
                what="the running command's row: agent, percent, message",
            )
            agent.report([{"id": cmd["id"], "status": "success", "data": {}}])
            assert watch.wait(30) == 0, watch.stderr.read()  # type: ignore[union-attr]
        finally:
            if watch.poll() is None:
                watch.kill()
            reader.join(10)
        assert any(f"task {task['id']}: success" in s for s in seen)
