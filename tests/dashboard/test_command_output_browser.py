"""A long command watched in a real browser (Debian's Chromium through Playwright; issue
17.3): an httpx-played agent, whose pace the test controls, reports progress and output
through the Comms API while the command's page is open; the page shows both without a
reload, in order, and stops when the command ends. A real indexer and server behind it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboard.harness import DashFleet

Shot = Callable[..., Path]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_a_long_command_s_output_streams_to_its_page(
    admin: Any, fleet: DashFleet, shot: Shot
) -> None:
    agent = fleet.fake_agent("long-runner")
    r = fleet.api.post(
        "/tasks",
        json={
            "type": "vulnerability-rescan",
            "params": {"agents": [agent.id]},
            "timeout": 6 * 3600,
        },
    )
    assert r.status_code == 202, r.text
    (cmd,) = agent.poll()
    cid = cmd["id"]
    assert agent.ack([cid]) == [cid]
    seq = 0

    def report(percent: float, message: str, *lines: str) -> None:
        nonlocal seq
        chunks = [{"seq": seq + i, "data": line} for i, line in enumerate(lines)]
        seq += len(lines)
        r = agent.http.post(
            "/agents/commands/progress",
            json={
                "progress": [
                    {
                        "id": cid,
                        "interval": 60,
                        "percent": percent,
                        "message": message,
                        "output": chunks,
                    }
                ]
            },
        )
        assert r.status_code == 200 and r.json()["data"]["running"] == [cid], r.text

    report(10, "listing packages", "dpkg: 1200 packages\n")
    admin.goto(f"/app/commands/{cid}")
    admin.evaluate("window.__sameDocument = true")
    expect(admin.get_by_test_id("command-percent")).to_have_text("10%")
    expect(admin.get_by_test_id("command-message")).to_have_text("listing packages")
    expect(admin.get_by_test_id("command-status").locator(".badge")).to_have_text("running")
    out = admin.get_by_test_id("command-output")
    expect(out).to_have_text("dpkg: 1200 packages\n")

    # while the page is open: more output, in order, and progress
    report(45, "hashing", *[f"hash {i}\n" for i in range(30)])
    expect(admin.get_by_test_id("command-percent")).to_have_text("45%")
    expect(out).to_contain_text("hash 29")
    report(90, "sending", "sent 1200 packages\n")
    expect(admin.get_by_test_id("command-message")).to_have_text("sending")
    text = out.inner_text()
    assert text == "dpkg: 1200 packages\n" + "".join(f"hash {i}\n" for i in range(30)) + (
        "sent 1200 packages\n"
    )
    shot(admin, "command-output")

    # the result ends the stream: the status turns final, the live dot goes
    agent.report([{"id": cid, "status": "success", "data": {"sent": 1200}}])
    expect(admin.get_by_test_id("command-status").locator(".badge")).to_have_text("success")
    expect(admin.locator("[data-live-command] .live-dot")).to_have_count(0)
    assert admin.evaluate("window.__sameDocument") is True  # no reload happened
    assert out.inner_text() == text
