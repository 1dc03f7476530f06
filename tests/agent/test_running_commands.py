"""Long-running commands on the agent (issue 17.3): a handler that runs past
`heartbeat_after` is heartbeated every `heartbeat_interval` from the waiting thread; a short
one sends nothing. End to end with real processes (indexer, server, `fleetcmd agent`): the
stream shows the command `running`, counted in its task, and once the agent is stopped
(SIGSTOP) the command ends `timeout` "agent stopped reporting" within two intervals (plus
the sweeper's second), hours before its execution timeout; its output arrived while it ran."""

from __future__ import annotations

import itertools
import os
import signal
import time
from typing import Any

import pytest

from fleetcmd.agent import handlers
from fleetcmd.agent.handlers import Context, execute
from fleetcmd.agent.reporting import TRUNCATED, Reporter
from fleetcmd.model.progress import OUTPUT_CHUNK, OUTPUT_MAX
from fleetcmd.store.stream import STOPPED_REPORTING
from support import wait_until

from .test_e2e import Fleet, commands_of, fleet, status
from .test_e2e_modules import join

__all__ = ["fleet"]


def command(timeout: float = 30) -> dict[str, Any]:
    return {
        "id": 7,
        "action": {"name": "rename", "version": 1, "args": {"name": "x"}},
        "timeout": timeout,
    }


def slow(ctx: Context, monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    beats: list[float] = []
    ctx.heartbeat = lambda body: beats.append(time.monotonic()) or {}
    monkeypatch.setitem(
        handlers.HANDLERS, "rename", (handlers.a.Rename, lambda c, a: time.sleep(seconds) or {})
    )
    return beats


def test_a_long_handler_is_heartbeated_and_a_short_one_is_not(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx.heartbeat_after, ctx.heartbeat_interval = 0.3, 0.2
    beats = slow(ctx, monkeypatch, 0.2)
    assert execute(ctx, command()).status == "success"
    assert beats == []  # finished before heartbeat_after: nothing extra sent

    beats = slow(ctx, monkeypatch, 1.2)
    start = time.monotonic()
    assert execute(ctx, command()).status == "success"
    offsets = [b - start for b in beats]
    assert 3 <= len(offsets) <= 6, offsets
    assert 0.25 <= offsets[0] <= 0.6, offsets
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert all(0.15 <= g <= 0.45 for g in gaps), gaps


def test_progress_and_output_travel_with_the_heartbeats_in_order(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx.heartbeat_after, ctx.heartbeat_interval = 0.1, 0.1
    bodies: list[dict[str, Any]] = []
    held: list[str] = []

    def server(body: dict[str, Any]) -> dict[str, Any]:
        """The stream's side: takes chunks only as the next one; loses every other answer."""
        bodies.append(body)
        for chunk in body.get("output", []):
            if chunk["seq"] == len(held):
                held.append(chunk["data"])
        if len(bodies) % 2:
            raise OSError("answer lost")
        return {"running": [body["id"]], "next": {str(body["id"]): len(held)}}

    def work(c: Context, _a: Any) -> dict[str, Any]:
        for i in range(5):
            c.report(percent=i * 20, message=f"step {i}")
            c.output(f"line {i}\n" * 1000)  # 7 KB a step: chunks of 8,192 characters
            time.sleep(0.1)
        return {}

    ctx.heartbeat = server
    monkeypatch.setitem(handlers.HANDLERS, "rename", (handlers.a.Rename, work))
    assert execute(ctx, command()).status == "success"
    assert "".join(held) == "".join(f"line {i}\n" * 1000 for i in range(5))
    assert all(len(c["data"]) <= OUTPUT_CHUNK for b in bodies for c in b.get("output", []))
    percents = [b["percent"] for b in bodies if "percent" in b]
    assert percents == sorted(percents) and percents[-1] == 80
    assert bodies[-1]["message"] == "step 4"


def test_a_command_s_output_is_bounded_and_says_so() -> None:
    r = Reporter(9)
    for _ in range(300):
        r.write("x" * 4000)
    sent = []
    while r.unsent():
        body = r.beat(10)
        sent.extend(c["data"] for c in body["output"])
        r.taken(body["output"][-1]["seq"] + 1)
    text = "".join(sent)
    assert len(text.encode()) <= OUTPUT_MAX and text.endswith(TRUNCATED)
    assert r.truncated


def test_a_failing_heartbeat_does_not_fail_the_command(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx.heartbeat_after, ctx.heartbeat_interval = 0.1, 0.1
    slow(ctx, monkeypatch, 0.5)
    tries: list[int] = []

    def down(body: dict[str, Any]) -> dict[str, Any]:
        tries.append(body["id"])
        raise OSError("server unreachable")

    ctx.heartbeat = down
    assert execute(ctx, command()).status == "success"
    assert len(tries) >= 2


def test_a_stopped_agent_s_running_command_ends_timeout_within_two_intervals(
    fleet: Fleet,
) -> None:
    interval = 1.0
    with fleet.client() as c:
        aid, state = join(
            fleet,
            c,
            "agent-long-1",
            "long",
            "--heartbeat-after",
            "0.5",
            "--heartbeat-interval",
            str(interval),
        )
        bin_dir = state / "active-response" / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / "sleeper").write_text("#!/bin/sh\necho started\necho step 1\nsleep 30\n")
        (bin_dir / "sleeper").chmod(0o700)
        definition = {
            "name": "sleeper",
            "version": "1",
            "executable": "sleeper",
            "arguments": [],
            "allowed_arguments": [],
            "timeout": 600,
        }
        r = c.post(
            "/tasks",
            json={
                "type": "active-response-configuration",
                "params": {"group": "long", "name": "sleeper", "definition": definition},
            },
        )
        assert r.status_code == 202, r.text
        wait_until(lambda: "sleeper" in status(state)["active_responses"], 60, what="configured")
        r = c.post(
            "/tasks",
            json={
                "type": "active-response-execution",
                "params": {"name": "sleeper", "arguments": [], "target": {"agents": [aid]}},
                "timeout": 4 * 3600,
            },
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["data"]["id"]

        def task() -> dict[str, Any]:
            return dict(c.get(f"/tasks/{task_id}").json()["data"])

        wait_until(lambda: task()["counts"].get("running") == 1, 30, what="running")
        assert task()["status"] == "in_progress"
        (cmd,) = commands_of(c, task())
        assert cmd["status"] == "running"
        # the script's output arrives while it runs (the response's live output)

        def output() -> str:
            page = c.get(f"/commands/{cmd['id']}/output").json()["data"]
            return "".join(x["data"] for x in page["chunks"])

        wait_until(lambda: output() == "started\nstep 1\n", 15, what="the script's output")

        pid = int(status(state)["pid"])
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_until(lambda: task()["counts"].get("timeout") == 1, 15, what="timeout")
            took = time.monotonic() - stopped
            (cmd,) = commands_of(c, task())
            assert cmd["status"] == "timeout"
            assert cmd["result"]["message"] == STOPPED_REPORTING
            # two intervals without a beat, the sweeper's period (1 s) and the last beat's age
            assert took <= 2 * interval + 1.0 + interval + 1.0, took
        finally:
            os.kill(pid, signal.SIGCONT)
        assert task()["status"] == "failure"
