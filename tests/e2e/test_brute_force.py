"""The headline flow end to end (issue 18, item 5), all real: an indexer and a server on
loopback, a `fleetcmd agent` started under `ip netns exec` in a network namespace of the
test's own (it reaches the Comms API through a unix-socket bridge, tests/support/bridge.py),
and an attacker's address in a second namespace. The agent follows a log file; six sshd
failures from one address are appended (the agent is killed with SIGKILL after three and
started again); the engine's rule fires; it files an active-response task; the agent blocks
the address with nftables in its namespace, and the block lifts after its timeout. The alert,
the task, the command and its result are read back through the Management API, seen on the
dashboard's pages, and pushed to a webhook receiver on loopback (signatures checked) and to
Debian's rsyslogd over TCP (event subscriptions)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.agent.cli import status_of
from fleetcmd.content.sample import SAMPLE_SOURCE
from fleetcmd.launch import Process, clean_env, fleetcmd_argv
from server.harness import ENROLLMENT_KEY, dashboard_page, file_task, fleet, task_final
from support import wait_until
from support.hostnet import Namespaces, ensure_program, namespaces
from support.receivers import WebhookReceiver, rsyslog, syslog_events

BRIDGE = str(Path(__file__).resolve().parent.parent / "support" / "bridge.py")
ATTEMPT = {
    "id": 100100,
    "level": 5,
    "description": "sshd: authentication failure",
    "groups": ["sshd", "authentication_failed"],
    "match": {"program": "sshd", "message": {"regex": "(Failed password|Invalid user)"}},
}
BRUTE_FORCE = {
    **ATTEMPT,
    "id": 100101,
    "level": 10,
    "description": "sshd: brute force from one address",
    "threshold": {"count": 6, "window": 120, "group_by": ["srcip"]},
    "active_response": {
        "name": "firewall-drop",
        "target": "agent",
        "arguments": ["add", "{srcip}"],
    },
}
BLOCK_SECONDS = 12


def failed_login(ip: str, n: int) -> str:
    stamp = time.strftime("%b %e %H:%M:%S")
    return (
        f"{stamp} web-01 sshd[{4000 + n}]: Failed password for root from {ip} port {50000 + n} ssh2"
    )


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def alerts(api: httpx.Client, agent: str) -> list[dict[str, Any]]:
    r = api.get("/alerts", params={"agent": agent, "limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json()["data"]["items"])


@pytest.fixture
def net() -> Iterator[Namespaces]:
    ensure_program("nft", "nftables")
    with namespaces() as ns:
        yield ns


class Bridge:
    """The agent's namespace's 127.0.0.1:port carried to the machine's 127.0.0.1:port."""

    def __init__(self, net: Namespaces, port: int, sock: Path) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, BRIDGE, "unix", str(sock), "127.0.0.1", str(port)],
                stdout=subprocess.PIPE,
                text=True,
            ),
            subprocess.Popen(
                net.argv(
                    net.host, sys.executable, BRIDGE, "tcp", "127.0.0.1", str(port), str(sock)
                ),
                stdout=subprocess.PIPE,
                text=True,
            ),
        ]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.mark.req("C10", "C11", "C12")
def test_ssh_brute_force_in_a_log_is_blocked_on_the_host_until_its_timeout(
    store_url: str, tmp_path: Path, net: Namespaces
) -> None:
    hook = WebhookReceiver()
    with (
        rsyslog(tmp_path) as (syslog_port, syslog_file),
        fleet(store_url, tmp_path) as (_, [srv]),
    ):
        api = srv.admin()
        for body in (
            {"name": "soc-hook", "kind": "webhook", "url": hook.url},
            {"name": "soc-siem", "kind": "syslog", "url": f"tcp://127.0.0.1:{syslog_port}"},
        ):
            r = api.post(
                "/subscribers", json={**body, "filters": {"kinds": ["alert", "task", "command"]}}
            )
            assert r.status_code == 201, r.text
            if body["kind"] == "webhook":
                hook.secret = r.json()["data"]["secret"]
        port = srv.comms_port
        bridge = Bridge(net, port, tmp_path / "comms.sock")
        auth = tmp_path / "auth.log"
        # history from before the collector follows the file: not events
        append(auth, *(failed_login(net.client_ip, 90 + i) for i in range(8)))
        state = tmp_path / "web-1"
        agent = Process(
            "agent-web-1",
            net.argv(
                net.host,
                *fleetcmd_argv(
                    "agent",
                    "--server",
                    f"http://127.0.0.1:{port}",
                    "--enrollment-key",
                    ENROLLMENT_KEY,
                    "--name",
                    "web-1",
                    "--state-dir",
                    str(state),
                    "--groups",
                    "web",
                ),
            ),
            tmp_path / "agent-web-1.log",
            clean_env(),
        )
        listener = net.listen(8022)
        try:
            # the content: rules, the group's configuration (the log to follow), the response
            loaded = file_task(
                api, "ruleset-update", {"version": "e2e", "rules": [ATTEMPT, BRUTE_FORCE]}
            )
            assert task_final(api, loaded["id"])["status"] == "success"
            config = {"logcollector": {"files": [{"path": str(auth)}], "interval": 0.5}}
            made = file_task(
                api, "group-configuration-change", {"group": "web", "configuration": config}
            )
            assert task_final(api, made["id"])["status"] == "success"
            agent.start()
            aid = wait_until(lambda: state.is_dir() and status_of(state)["id"], 60, what="enrolled")
            wait_until(
                lambda: status_of(state)["config"].get("logcollector") == config["logcollector"],
                60,
                what="the agent runs the group's configuration",
            )
            definition = json.loads(
                (SAMPLE_SOURCE / "active-response" / "firewall-drop.json").read_text()
            )
            definition["arguments"] = ["{0}", "{1}", "--timeout", str(BLOCK_SECONDS)]
            ar = file_task(
                api,
                "active-response-configuration",
                {"group": "web", "name": "firewall-drop", "definition": definition},
            )
            assert task_final(api, ar["id"], 60)["counts"] == {"success": 1}
            assert net.reachable(8022), "the attacker reaches the host before anything fired"

            # three failures, read and posted; the agent dies (SIGKILL) and comes back; three more
            append(auth, *(failed_login(net.client_ip, i) for i in range(3)))
            wait_until(lambda: len(alerts(api, aid)) == 3, 60, what="three plain alerts")
            agent.kill()
            append(auth, *(failed_login(net.client_ip, i) for i in range(3, 6)))
            appended = time.monotonic()
            agent.start()

            def fired() -> dict[str, Any] | None:
                for a in alerts(api, aid):
                    if a["rule"]["id"] == 100101 and a.get("active_response", {}).get("task_id"):
                        return a
                return None

            alert = wait_until(fired, 60, what="the brute-force alert with its task")
            alerted = time.monotonic()
            assert alert["threshold"]["events"] == 6
            assert alert["threshold"]["group"] == {"srcip": net.client_ip}
            event = alert["event"]
            assert (event["module"], event["location"], event["program"]) == (
                "logcollector",
                str(auth),
                "sshd",
            )
            assert event["srcip"] == net.client_ip and event["category"] == "authentication_failed"
            response = alert["active_response"]
            assert response["status"] == "filed" and response["arguments"] == ["add", net.client_ip]

            task = api.get(f"/tasks/{response['task_id']}").json()["data"]
            assert task["type"] == "active-response-execution"
            assert (task["source"], task["user"]) == ("engine", "engine")
            assert task["params"]["target"]["agents"] == [aid]
            final = task_final(api, task["id"], 60)
            assert final["status"] == "success" and final["counts"] == {"success": 1}, final
            [cmd] = [
                c
                for c in api.get("/commands", params={"task_id": task["id"]}).json()["data"][
                    "items"
                ]
                if c["target"]["type"] == "agent"
            ]
            assert cmd["target"]["id"] == aid and cmd["status"] == "success"
            assert cmd["action"]["name"] == "ar-execute"
            assert cmd["action"]["args"]["arguments"] == ["add", net.client_ip]
            result = cmd["result"]
            assert result["data"]["exit_code"] == 0
            assert f"blocked: {net.client_ip} for {BLOCK_SECONDS}s" in result["data"]["stdout"]
            blocked_at = time.monotonic()

            # blocked on the host, in its namespace only; lifted by the kernel after the timeout
            assert not net.reachable(8022, timeout=1.0), "blocked, yet the attacker got through"
            wait_until(lambda: net.reachable(8022, timeout=0.5), 60, what="the block lifted")
            lifted = time.monotonic()
            assert lifted - blocked_at >= BLOCK_SECONDS / 2
            print(
                f"measured: lines appended (agent down) -> alert {alerted - appended:.2f}s, "
                f"-> blocked {blocked_at - appended:.2f}s; blocked for {lifted - blocked_at:.2f}s "
                f"(element timeout {BLOCK_SECONDS}s)"
            )
            # each failure counted once across the crash: six plain alerts, one brute force
            rules = sorted(a["rule"]["id"] for a in alerts(api, aid))
            assert rules == [100100] * 6 + [100101], rules

            # what the operator sees on the dashboard
            page = dashboard_page(api, f"/app/tasks/{task['id']}")
            assert page.status_code == 200 and "active-response-execution" in page.text
            assert str(cmd["id"]) in page.text
            page = dashboard_page(api, "/app/alerts")
            assert page.status_code == 200 and "100101" in page.text
            assert dashboard_page(api, f"/app/commands/{cmd['id']}").status_code == 200

            # and what the SOC's webhook and syslog collector received
            def flow(events: list[dict[str, Any]]) -> set[str]:
                seen = set()
                for e in events:
                    if e["kind"] == "alert" and e["data"].get("rule", {}).get("id") == 100101:
                        seen.add("alert")
                    if e["kind"] == "task" and e["subject"] == str(task["id"]):
                        seen.add(f"task {e['type']}")
                    if e["kind"] == "command" and e["subject"] == str(cmd["id"]):
                        seen.add(f"command {e['type']}")
                return seen

            everything = {"alert", "task success", "command success"}
            wait_until(lambda: flow(hook.events()) >= everything, 30, what="the webhook")
            assert hook.all_signed()
            wait_until(lambda: flow(syslog_events(syslog_file)) >= everything, 30, what="rsyslog")
        finally:
            listener.kill()
            listener.wait()
            agent.stop()
            bridge.stop()
            hook.close()
            print(f"----- agent log (tail) -----\n{agent.log_path.read_text()[-6000:]}")
