"""Operators' control in a real browser (issue 16): preview a selector's targets from the
create form and file the task on exactly them; file a task the approval policy holds and
approve it as a second user from the "waiting for me" queue; re-run from the task page."""

from __future__ import annotations

import re
from typing import Any

from dashboard.harness import DashFleet, log_in
from server.harness import task_final

APPROVER, APPROVER_PASSWORD = "approver-2", "pw-approver-dashboard"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def task_id_of(page: Any) -> int:
    m = re.search(r"/app/tasks/(\d+)", page.url)
    assert m, page.url
    return int(m.group(1))


def fill_rescan(page: Any, selector: str) -> None:
    page.goto("/app/tasks/new/vulnerability-rescan")
    page.select_option("select[name=selector]", "expression")
    page.fill("textarea[name=expression]", selector)


def test_preview_then_file_from_the_dashboard(admin: Any, fleet: DashFleet, shot: Any) -> None:
    fill_rescan(admin, "name = edge-* and status = active")
    admin.get_by_test_id("preview-task").click()
    expect(admin.get_by_test_id("preview-total")).to_have_text("2")
    expect(admin.get_by_test_id("preview-page")).to_contain_text("edge-1")
    shot(admin, "preview")
    fleet.fake_agent("edge-late")  # enrolled after the preview: not in the frozen set
    admin.get_by_test_id("submit-task").click()
    admin.wait_for_url(re.compile(r".*/app/tasks/\d+\?created=1"))
    task = task_final(fleet.api, task_id_of(admin))
    assert task["total"] == 2 and task["frozen_targets"] is True
    targets = {
        c["target"]["id"]
        for c in fleet.api.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
    }
    assert targets == set(fleet.agents.values())
    # A bad selector is refused next to its field, with the position.
    fill_rescan(admin, "name = edge-* and (")
    admin.get_by_test_id("preview-task").click()
    expect(admin.locator("#err-expression")).to_contain_text("column")


def test_a_held_task_is_approved_by_a_second_user(
    admin: Any, browser: Any, fleet: DashFleet, shot: Any
) -> None:
    r = fleet.api.put(
        "/approval-policy",
        json={"rules": [{"task_types": ["vulnerability-rescan"], "min_agents": 2}]},
    )
    assert r.status_code == 200, r.text
    r = fleet.api.post(
        "/security/users",
        json={"name": APPROVER, "password": APPROVER_PASSWORD, "roles": ["approver"]},
    )
    assert r.status_code == 201, r.text
    try:
        fill_rescan(admin, "name = edge-?")
        admin.get_by_test_id("preview-task").click()
        expect(admin.get_by_test_id("preview-approval")).to_be_visible()
        admin.get_by_test_id("submit-task").click()
        admin.wait_for_url(re.compile(r".*/app/tasks/\d+\?created=1"))
        held = task_id_of(admin)
        expect(admin.locator("[data-live-status]")).to_contain_text("awaiting approval")
        assert fleet.api.get("/commands", params={"task_id": held}).json()["data"]["items"] == []

        second = log_in(browser, fleet, APPROVER, APPROVER_PASSWORD)
        try:
            second.goto("/app/approvals")
            expect(second.get_by_test_id(f"approval-total-{held}")).to_have_text("2")
            shot(second, "approvals")
            second.get_by_test_id(f"approve-{held}").click()
            second.wait_for_url(re.compile(rf".*/app/tasks/{held}\?approved=1"))
            expect(second.get_by_test_id("approval-state")).to_contain_text(APPROVER)
        finally:
            second.context.close()
        done = task_final(fleet.api, held)
        assert done["status"] == "success" and done["total"] == 2

        # Re-run from the task page, on the agents where it succeeded (linked to it).
        admin.goto(f"/app/tasks/{held}")
        admin.locator("input[name=status_success]").check()
        admin.get_by_test_id("rerun-task").click()
        admin.wait_for_url(re.compile(r".*/app/tasks/\d+\?created=1"))
        again = task_id_of(admin)
        assert again != held
        expect(admin.get_by_test_id("rerun-of")).to_have_text(f"#{held}")
    finally:
        fleet.api.put("/approval-policy", json={"rules": []})
