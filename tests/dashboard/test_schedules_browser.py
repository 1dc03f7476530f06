"""Schedules in a real browser (issue 17): create one from the dashboard's form and see its
next occurrences in its zone, a bad zone refused on the form, pause it; and a one-shot
schedule a few seconds ahead, filed on time by the indexer's wall clock."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard.harness import DashFleet
from support import wait_until


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def fill(page: Any, **values: str) -> None:
    page.goto("/app/schedules")
    for name, value in values.items():
        if name in ("type", "missed"):
            page.select_option(f"select[name={name}]", value)
        elif name == "params":
            page.fill(f"textarea[name={name}]", value)
        else:
            page.fill(f"input[name={name}]", value)
    page.get_by_test_id("create-schedule").click()


def test_create_a_schedule_in_the_dashboard(admin: Any, fleet: DashFleet, shot: Any) -> None:
    fill(
        admin,
        name="nightly web rescan",
        type="vulnerability-rescan",
        params='{"group": "web"}',
        start="2026-10-23T02:30",
        rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=30",
        tz="Europe/Paris",
        missed="skip",
    )
    admin.wait_for_url(re.compile(r".*/app/schedules\?created=\d+"))
    sid = int(admin.url.rsplit("=", 1)[1])
    row = admin.get_by_test_id(f"schedule-{sid}")
    expect(row).to_contain_text("nightly web rescan")
    expect(row).to_contain_text("FREQ=DAILY;BYHOUR=2;BYMINUTE=30")
    nxt = admin.get_by_test_id(f"next-{sid}").locator("li")
    expect(nxt).to_have_count(5)
    first = nxt.first.inner_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT02:30:00\+0[12]:00", first), first
    shot(admin, "schedules")
    api = fleet.api.get(f"/schedules/{sid}").json()["data"]
    assert api["user"] == "admin" and api["missed"] == "skip" and api["tz"] == "Europe/Paris"
    audit = fleet.api.get("/audit", params={"action": "schedule.create"}).json()["data"]
    assert any(r["target"] == f"schedule:{sid}" for r in audit["items"])
    # refused on the form, nothing created
    fill(admin, name="bad", tz="Atlantis/Capital")
    expect(admin.get_by_test_id("form-error")).to_contain_text("time zone")
    assert len(fleet.api.get("/schedules").json()["data"]["items"]) == 1
    admin.get_by_test_id(f"pause-{sid}").click()
    expect(admin.get_by_test_id(f"schedule-{sid}")).to_contain_text("paused")
    admin.get_by_test_id(f"delete-{sid}").click()
    expect(admin.get_by_test_id(f"schedule-{sid}")).to_have_count(0)


def test_a_one_shot_schedule_is_filed_on_time(admin: Any, fleet: DashFleet) -> None:
    due = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    fill(
        admin,
        name="soon",
        params='{"group": "web"}',
        start=due.strftime("%Y-%m-%dT%H:%M:%S"),
        rrule="",
        tz="UTC",
    )
    admin.wait_for_url(re.compile(r".*/app/schedules\?created=\d+"))
    sid = int(admin.url.rsplit("=", 1)[1])

    def filed() -> Any:
        occ = fleet.api.get(f"/schedules/{sid}").json()["data"]["occurrences"]
        return occ[0] if occ else None

    occ = wait_until(filed, 20, 0.05, "the occurrence")
    late = time.time() - due.timestamp()
    assert occ["outcome"] == "filed" and occ["task_id"]
    assert late < 5, late
    task = fleet.api.get(f"/tasks/{occ['task_id']}").json()["data"]
    assert task["user"] == "admin" and task["source"] == "dashboard"
    admin.goto("/app/schedules")
    expect(admin.get_by_test_id(f"schedule-{sid}")).to_contain_text("done")
    admin.goto(f"/app/tasks/{occ['task_id']}")
    expect(admin.get_by_test_id("schedule-of")).to_contain_text(f"schedule #{sid}")


def test_create_a_window_in_the_dashboard(admin: Any, fleet: DashFleet, shot: Any) -> None:
    admin.goto("/app/schedules")
    form = admin.get_by_test_id("window-form")
    form.locator("input[name=name]").fill("web sundays")
    form.locator("input[name=selector]").fill("group = web")
    form.locator("input[name=rrule]").fill("FREQ=WEEKLY;BYDAY=SU;BYHOUR=2")
    form.locator("input[name=tz]").fill("Europe/Paris")
    form.locator("input[name=duration]").fill("7200")
    admin.get_by_test_id("create-window").click()
    admin.wait_for_url(re.compile(r".*/app/schedules(#windows)?$"))
    (w,) = fleet.api.get("/windows").json()["data"]["items"]
    nxt = admin.get_by_test_id(f"window-next-{w['id']}").locator("li")
    expect(nxt).to_have_count(5)
    assert re.match(r"\d{4}-\d\d-\d\dT02:00:00\+0[12]:00 \u2013 ", nxt.first.inner_text())
    shot(admin, "windows")
    audit = fleet.api.get("/audit", params={"action": "window.create"}).json()["data"]
    assert [r["actor"] for r in audit["items"]] == ["admin"]
    # refused on the form: a selector that does not parse
    form = admin.get_by_test_id("window-form")
    form.locator("input[name=name]").fill("bad")
    form.locator("input[name=selector]").fill("group =")
    admin.get_by_test_id("create-window").click()
    expect(admin.get_by_test_id("window-error")).to_contain_text("selector")
    assert len(fleet.api.get("/windows").json()["data"]["items"]) == 1
    admin.goto("/app/schedules")
    admin.get_by_test_id(f"delete-window-{w['id']}").click()
    expect(admin.get_by_test_id(f"window-{w['id']}")).to_have_count(0)
