"""Event subscriptions end to end (issue 18.1), on both stores: an administrator registers a
webhook (a real HTTP receiver on loopback that checks every signature) and a syslog
subscriber (Debian's rsyslogd, started by the test on a loopback TCP port, writing to a file
the test reads); a task runs on an agent; the task, command, audit and agent-status events
arrive at both, signed, in order, each id once at least. A receiver that fails is retried,
then paused and reported (API, metrics), while the live path and the other subscriber go on;
resumed, it gets everything it missed, across an indexer restart; a replay delivers again
from an event id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from dashboard.harness import dashboard_session
from fleetcmd.tls import make_dev_certs
from server.harness import FakeAgent, file_task, fleet, login, task_final
from support import store_url_for, wait_until
from support.receivers import WebhookReceiver, rsyslog, syslog_events


def run_task(admin: httpx.Client, agent: FakeAgent, group: str, value: int) -> dict[str, Any]:
    task = file_task(
        admin, "group-configuration-change", {"group": group, "configuration": {"v": value}}
    )
    wait_until(lambda: agent.run_once(wait=2), timeout=30, what="the agent ran it")
    return task_final(admin, task["id"])


def finals_of(events: list[dict[str, Any]], task_id: int) -> set[str]:
    return {e["subject"] for e in events if e["kind"] == "command" and e["task_id"] == task_id}


def test_webhook_and_syslog_subscribers(store_url: str, tmp_path: Path) -> None:
    hook = WebhookReceiver()
    try:
        with (
            rsyslog(tmp_path) as (syslog_port, syslog_file),
            fleet(store_url, tmp_path) as (
                idx,
                [srv],
            ),
        ):
            admin = srv.admin()
            r = admin.post(
                "/subscribers",
                json={
                    "name": "hook",
                    "kind": "webhook",
                    "url": hook.url,
                    "filters": {"kinds": ["task", "command", "audit", "agent"]},
                    "options": {
                        "batch": 50,
                        "retry_base": 0.1,
                        "retry_max": 0.3,
                        "pause_after": 3,
                        "timeout": 1.0,
                    },
                },
            )
            assert r.status_code == 201, r.text
            sub = r.json()["data"]
            hook.secret = sub["secret"]
            assert sub["state"] == "active" and len(hook.secret) >= 32
            r = admin.post(
                "/subscribers",
                json={
                    "name": "siem",
                    "kind": "syslog",
                    "url": f"tcp://127.0.0.1:{syslog_port}",
                    "filters": {"kinds": ["command", "task"], "statuses": ["success", "failure"]},
                },
            )
            assert r.status_code == 201, r.text
            assert r.json()["data"].get("secret") is None
            # bad input is a 4xx saying what is wrong
            bad = admin.post(
                "/subscribers", json={"name": "x", "kind": "syslog", "url": "http://nope"}
            )
            assert bad.status_code == 422 and "tcp://host:port" in bad.text
            assert (
                admin.post(
                    "/subscribers", json={"name": "hook", "kind": "webhook", "url": hook.url}
                ).status_code
                == 409
            )
            listed = admin.get("/subscribers").json()["data"]["items"]
            assert all("secret" not in s for s in listed)

            made = file_task(  # the group, so that the agent can enroll in it
                admin, "group-configuration-change", {"group": "web", "configuration": {}}
            )
            task_final(admin, made["id"])
            agent = FakeAgent(srv.comms, "sub-agent", groups=["web"])
            task = run_task(admin, agent, "web", 1)
            tid = task["id"]
            wait_until(
                lambda: any(
                    e["kind"] == "task" and e["subject"] == str(tid) and e["type"] == "success"
                    for e in hook.events()
                ),
                timeout=30,
                what="the task's final event at the webhook",
            )
            events = hook.events()
            assert hook.all_signed()
            kinds = {e["kind"] for e in events}
            assert {"task", "command", "audit", "agent"} <= kinds
            assert any(
                e["kind"] == "audit" and e["data"]["action"] == "subscriber.create" for e in events
            )
            assert any(
                e["kind"] == "agent" and e["subject"] == agent.id and e["type"] == "active"
                for e in events
            )
            commands = [e for e in events if e["kind"] == "command" and e["task_id"] == tid]
            assert commands and all(e["type"] == "success" for e in commands)
            child = next(e for e in commands if e["data"]["target"]["id"] == agent.id)
            assert child["data"]["result"]["code"] == 0
            # ordered: the task's final event after the final events of its commands
            position = {e["id"]: i for i, e in enumerate(events)}
            task_final_at = next(
                position[e["id"]]
                for e in events
                if e["kind"] == "task" and e["subject"] == str(tid) and e["type"] == "success"
            )
            assert all(position[e["id"]] < task_final_at for e in commands)
            if store_url.startswith("sqlite"):
                ids = [e["id"] for e in events]
                assert ids == sorted(ids)

            wait_until(
                lambda: finals_of(syslog_events(syslog_file), tid) == finals_of(events, tid),
                timeout=30,
                what="the command events in rsyslog's file",
            )
            assert all(
                e["kind"] in ("command", "task") and e["type"] in ("success", "failure")
                for e in syslog_events(syslog_file)
            )

            # The webhook stops answering: its lane waits out its timeout; the live path
            # does not wait with it.
            hook.hang = 3.0
            started = time.monotonic()
            hung = run_task(admin, agent, "web", 5)
            assert hung["status"] == "success" and time.monotonic() - started < 2.5

            def paused() -> dict[str, Any] | None:
                s = admin.get(f"/subscribers/{sub['id']}").json()["data"]
                return s if s["state"] == "paused" else None

            state = wait_until(paused, timeout=30, what="paused after three timeouts")
            assert "no answer within 1s" in state["last_error"]
            hook.hang = 0.0

            # The webhook fails: retried with backoff, then paused and reported; the live
            # path and the syslog subscriber go on meanwhile.
            hook.status = 500
            assert admin.post(f"/subscribers/{sub['id']}/resume").status_code == 200
            down = run_task(admin, agent, "web", 2)
            state = wait_until(paused, timeout=30, what="the webhook subscriber paused")
            assert state["failures"] == 3 and "HTTP 500" in state["last_error"]
            assert state["lag"] > 0
            assert hook.refused >= 3
            during = run_task(admin, agent, "web", 3)
            assert during["status"] == "success"
            wait_until(
                lambda: finals_of(syslog_events(syslog_file), during["id"]),
                timeout=30,
                what="syslog goes on while the webhook is paused",
            )
            with idx.client() as ic:
                text = ic.get("/metrics").text
            assert 'fleetcmd_subscriber_failures_total{subscriber="hook"} 6.0' in text
            assert 'fleetcmd_subscriber_paused{subscriber="hook"} 1.0' in text
            assert re.search(r'fleetcmd_subscriber_lag_events\{subscriber="siem"\} \d', text)

            # The indexer restarts while the subscriber is behind: its cursor is in the store.
            idx.stop()
            idx.start()
            hook.status = 200
            assert admin.post(f"/subscribers/{sub['id']}/resume").status_code == 200
            after = run_task(admin, agent, "web", 4)
            wait_until(
                lambda: all(finals_of(hook.events(), t["id"]) for t in (hung, down, during, after)),
                timeout=60,
                what="everything missed delivered after resume",
            )
            events = hook.events()
            assert hook.all_signed()
            seen = {e["id"] for e in events}
            for t in (hung, down, during, after):
                expected = {
                    str(c["id"])
                    for c in admin.get("/commands", params={"task_id": t["id"]}).json()["data"][
                        "items"
                    ]
                }
                assert finals_of(events, t["id"]) == expected
            state = admin.get(f"/subscribers/{sub['id']}").json()["data"]
            assert state["state"] == "active" and state["failures"] == 0

            # Replay from an event id: delivered again (receivers de-duplicate by id).
            first = min(e["id"] for e in events if e["kind"] == "command")
            before = len(hook.events())
            r = admin.post(f"/subscribers/{sub['id']}/replay", json={"from_event": first})
            assert r.status_code == 200, r.text
            wait_until(
                lambda: first in {e["id"] for e in hook.events()[before:]},
                timeout=30,
                what="the replay from the first command event",
            )
            assert seen <= {e["id"] for e in hook.events()}
            assert admin.post(f"/subscribers/{sub['id']}/replay", json={}).status_code == 422

            audit = admin.get("/audit", params={"action": "subscriber.*"}).json()["data"]
            assert {"subscriber.create", "subscriber.resume", "subscriber.replay"} <= {
                a["action"] for a in audit["items"]
            }
            assert admin.delete(f"/subscribers/{sub['id']}").status_code == 200
            assert admin.get(f"/subscribers/{sub['id']}").status_code == 404
    finally:
        hook.close()


def test_only_administrators_manage_subscribers(tmp_path: Path) -> None:
    with store_url_for("sqlite", tmp_path) as url, fleet(url, tmp_path) as (_, [srv]):
        admin = srv.admin()
        assert admin.post(
            "/security/users",
            json={"name": "operator1", "password": "operator-password", "roles": ["operator"]},
        ).is_success
        op = login(srv.api, "operator1", "operator-password")
        r = op.post("/subscribers", json={"name": "x", "kind": "webhook", "url": "http://h/x"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert op.get("/subscribers").status_code == 403
        # the CLI registers one and lists it
        cli = [str(Path(sys.executable).parent / "fleetcmd"), "subscriber"]
        common = ["--api", srv.api, "--data-dir", str(srv.data_dir)]
        done = subprocess.run(
            [
                *cli,
                "add",
                "cli-hook",
                "--webhook",
                "https://siem.example/in",
                "--kind",
                "command",
                "--status",
                "failure",
                "--options",
                '{"batch": 10}',
                *common,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        made = json.loads(done.stdout)
        assert made["secret"] and made["filters"]["statuses"] == ["failure"]
        assert made["options"]["batch"] == 10
        wide = {**os.environ, "COLUMNS": "250"}
        listed = subprocess.run(
            [*cli, "list", *common], capture_output=True, text=True, timeout=60, env=wide
        )
        assert listed.returncode == 0 and "cli-hook" in listed.stdout
        bad = subprocess.run(
            [*cli, "add", "x", *common], capture_output=True, text=True, timeout=60
        )
        assert bad.returncode == 1 and "--webhook URL or --syslog" in bad.stderr

        # the dashboard page: listed, registered with its secret shown once, paused
        browser = dashboard_session(
            srv.api, "admin", (srv.data_dir / "admin.password").read_text().strip()
        )
        listing = browser.get("/app/subscribers")
        assert listing.status_code == 200 and 'data-subscriber="cli-hook"' in listing.text
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', listing.text)
        assert csrf
        made = browser.post(
            "/app/subscribers",
            data={
                "csrf_token": csrf[1],
                "name": "dash-hook",
                "kind": "webhook",
                "url": "https://siem.example/dash",
                "kind_command": "yes",
                "statuses": "failure, timeout",
            },
        )
        assert made.status_code == 200 and 'data-testid="subscriber-secret"' in made.text
        dash = next(
            s for s in admin.get("/subscribers").json()["data"]["items"] if s["name"] == "dash-hook"
        )
        assert dash["filters"]["kinds"] == ["command"]
        assert dash["filters"]["statuses"] == ["failure", "timeout"]
        r = browser.post(f"/app/subscribers/{dash['id']}/pause", data={"csrf_token": csrf[1]})
        assert r.status_code == 303
        assert admin.get(f"/subscribers/{dash['id']}").json()["data"]["state"] == "paused"
        refused = browser.post(
            "/app/subscribers",
            data={"csrf_token": csrf[1], "name": "x", "kind": "syslog", "url": "http://no"},
        )
        assert refused.status_code == 422 and "tcp://host:port" in refused.text
        assert (
            dashboard_session(srv.api, "operator1", "operator-password")
            .get("/app/subscribers")
            .status_code
            == 403
        )


def test_syslog_over_tls(store_url: str, tmp_path: Path) -> None:
    """rsyslogd with its OpenSSL driver and a certificate of a CA the subscriber trusts
    (`options.ca_file`); the name checked is the address in the URL. Alerts too: one written
    as the engine writes it (PUT to the indexer's alerts index) arrives with its body, at
    syslog severity warning."""
    certs = make_dev_certs(tmp_path / "certs", ["127.0.0.1"])
    tls = {"ca": certs["CA"], "cert": certs["certificate"], "key": certs["key"]}
    with rsyslog(tmp_path, tls=tls) as (port, out), fleet(store_url, tmp_path) as (idx, [srv]):
        admin = srv.admin()
        r = admin.post(
            "/subscribers",
            json={
                "name": "siem-tls",
                "kind": "syslog",
                "url": f"tcp://127.0.0.1:{port}",
                "filters": {"kinds": ["audit", "alert"]},
                "options": {"tls": True, "ca_file": str(certs["CA"])},
                "from_time": 0,
            },
        )
        assert r.status_code == 201, r.text
        wait_until(
            lambda: any(e["data"]["action"] == "subscriber.create" for e in syslog_events(out)),
            timeout=30,
            what="the audit record of the registration, over TLS",
        )
        alert = {"id": "agent1/1765100000000-100101-ab", "rule": {"id": 100101, "level": 10}}
        with idx.client() as ic:
            assert ic.put(f"/indexes/alerts/{alert['id']}", json=alert).is_success
            assert ic.put(f"/indexes/alerts/{alert['id']}", json=alert).is_success  # rewrite
        wait_until(
            lambda: any(e["kind"] == "alert" for e in syslog_events(out)),
            timeout=30,
            what="the alert over TLS",
        )
        alerts = [e for e in syslog_events(out) if e["kind"] == "alert"]
        assert len(alerts) == 1 and alerts[0]["data"]["rule"]["level"] == 10
        assert alerts[0]["subject"] == alert["id"]
        line = next(x for x in out.read_text().splitlines() if '"kind":"alert"' in x)
        assert line.startswith(f"<{16 * 8 + 4}>1 ")  # local0.warning
        assert {e["kind"] for e in syslog_events(out)} == {"audit", "alert"}
