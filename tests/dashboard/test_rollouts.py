"""The rollout card of the task page in a real browser: per-wave progress and the buttons
(pause, resume, abort, rollback), each audited, against a real indexer and server."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboard.harness import DashFleet

Shot = Callable[..., Path]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_rollout_card_shows_waves_and_its_buttons_steer_it(
    admin: Any, fleet: DashFleet, shot: Shot
) -> None:
    # Six agents that never connect: their commands wait (offline) without holding a wave.
    fleet.register(
        [
            {"id": f"roll{i:07d}", "name": f"roll-{i}", "groups": ["rollouts"], "version": "1.0.0"}
            for i in range(6)
        ]
    )
    r = fleet.api.post(
        "/tasks",
        json={
            "type": "agent-upgrade",
            "params": {"group": "rollouts", "version": "2.0.0"},
            "rollout": {
                "canary": {"count": 1},
                "waves": {"size": "40%", "pause": 600},
                "error_threshold": {"percent": 10},
            },
        },
    )
    assert r.status_code == 202, r.text
    task_id = r.json()["data"]["id"]

    admin.goto(f"/app/tasks/{task_id}")
    card = admin.get_by_test_id("rollout")
    expect(card.get_by_test_id("rollout-state")).to_have_text("running")
    waves = card.get_by_test_id("waves")
    expect(waves.locator("tbody tr")).to_have_count(3)  # canary 1, then 3 and 2 (40% of 6)
    expect(waves.locator("tr[data-wave='0'] td").first).to_contain_text("canary")
    for _ in range(20):  # the scheduler releases the canary; its agent is offline
        admin.reload()
        cell = admin.locator("tr[data-wave='0'] td[data-col='offline_waiting']")
        if cell.inner_text() == "1":
            break
        admin.wait_for_timeout(250)
    expect(admin.locator("tr[data-wave='0'] td[data-col='offline_waiting']")).to_have_text("1")
    expect(admin.locator("tr[data-wave='1'] td[data-col='pending']")).to_have_text("3")

    admin.get_by_test_id("rollout-pause").click()
    admin.wait_for_url(re.compile(r"rollout=pause"))
    expect(admin.get_by_test_id("rollout-state")).to_have_text("paused")
    # Paused: the canary's released command is taken back, nothing waits in the stream.
    expect(admin.locator("tr[data-wave='0'] td[data-col='pending']")).to_have_text("1")
    expect(admin.get_by_test_id("rollout-pause")).to_have_count(0)
    shot(admin, "rollout-paused")

    admin.get_by_test_id("rollout-resume").click()
    admin.wait_for_url(re.compile(r"rollout=resume"))
    expect(admin.get_by_test_id("rollout-state")).to_have_text("running")

    admin.once("dialog", lambda d: d.accept())
    admin.get_by_test_id("rollout-abort").click()
    admin.wait_for_url(re.compile(r"rollout=abort"))
    expect(admin.get_by_test_id("rollout-state")).to_have_text("aborted")
    expect(admin.locator("tr[data-wave='2'] td[data-col='cancelled']")).to_have_text("2")
    expect(admin.locator("[data-live-status] .badge")).to_have_text("cancelled")

    with fleet.indexer.client() as c:
        audit = c.get("/audit", params={"target": f"task:{task_id}", "action": "rollout.*"}).json()[
            "data"
        ]["items"]
    assert [(a["action"], a["actor"], a["details"]["source"]) for a in reversed(audit)] == [
        ("rollout.pause", "admin", "dashboard"),
        ("rollout.resume", "admin", "dashboard"),
        ("rollout.abort", "admin", "dashboard"),
    ]


def test_a_reader_sees_the_rollout_but_no_buttons(reader: Any, fleet: DashFleet) -> None:
    fleet.register([{"id": "readr0000001", "name": "readr-1", "groups": ["readers"]}])
    r = fleet.api.post(
        "/tasks",
        json={
            "type": "agent-upgrade",
            "params": {"group": "readers", "version": "2.0.0"},
            "rollout": {"waves": {"size": 1}},
        },
    )
    assert r.status_code == 202, r.text
    reader.goto(f"/app/tasks/{r.json()['data']['id']}")
    expect(reader.get_by_test_id("rollout-state")).to_have_text("running")
    expect(reader.get_by_test_id("rollout-pause")).to_have_count(0)
    expect(reader.get_by_test_id("rollout-abort")).to_have_count(0)
