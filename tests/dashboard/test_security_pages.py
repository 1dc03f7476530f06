"""The dashboard under RBAC: a user scoped to one group sees only that group's agents and
cannot file outside it; the audit page shows who did what, with filters."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.conftest import log_in
from dashboard.harness import DashFleet

PW = "scoped-user-password"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


@pytest.fixture(scope="module")
def scoped(browser: Any, fleet: DashFleet) -> Any:
    fleet.register(
        [
            {"id": "webonly0001", "name": "web-only-1", "groups": ["web"]},
            {"id": "linuxonly01", "name": "linux-only-1", "groups": ["linux"]},
        ]
    )
    r = fleet.api.put(
        "/security/roles/web-ops",
        json={
            "policies": [
                {
                    "actions": [
                        "task:create",
                        "task:read",
                        "agent:read",
                        "group:read",
                        "group:update",
                        "command:read",
                    ],
                    "resources": ["agent:group:web", "group:id:web"],
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    r = fleet.api.post(
        "/security/users", json={"name": "webop", "password": PW, "roles": ["web-ops"]}
    )
    assert r.status_code == 201, r.text
    page = log_in(browser, fleet, "webop", PW)
    yield page
    page.context.close()


def test_scoped_user_sees_and_files_only_inside_its_group(
    scoped: Any, fleet: DashFleet, shot: Any
) -> None:
    scoped.goto("/app/agents")
    table = scoped.get_by_test_id("agents-table")
    expect(table).to_contain_text("web-only-1")
    expect(table).not_to_contain_text("linux-only-1")
    expect(table).not_to_contain_text("edge-1")  # real agents with no group
    assert scoped.goto("/app/agents/linuxonly01").status == 403
    scoped.goto("/app/groups")
    expect(scoped.locator("main")).not_to_contain_text("linux")
    assert scoped.goto("/app/groups/linux").status == 403
    expect(scoped.get_by_role("link", name="Audit")).to_have_count(0)
    assert scoped.goto("/app/audit").status == 403
    # Filing on the other group's agent is refused on the form itself.
    scoped.goto("/app/tasks/new/agent-rename?agent=linuxonly01")
    scoped.fill("input[name=name]", "stolen")
    scoped.click("form.task-form button[type=submit]")
    expect(scoped.locator(".alert-error")).to_contain_text("may not task:create")
    shot(scoped, "scoped-refused", full_page=False)
    # Inside its group it works.
    scoped.goto("/app/tasks/new/agent-rename?agent=webonly0001")
    scoped.fill("input[name=name]", "web-only-renamed")
    scoped.click("form.task-form button[type=submit]")
    scoped.wait_for_url("**/app/tasks/*?created=1")


def test_audit_page_filters_the_trail(admin: Any, fleet: DashFleet, shot: Any) -> None:
    admin.goto("/app/")
    admin.get_by_role("link", name="Audit").click()
    admin.wait_for_url("**/app/audit")
    table = admin.get_by_test_id("audit-table")
    expect(table).to_contain_text("user.login")
    admin.fill("input[name=actor]", "admin")
    admin.fill("input[name=action]", "role.*")
    admin.get_by_test_id("audit-filters").get_by_role("button", name="Filter").click()
    admin.wait_for_url("**/app/audit?*actor=admin*")
    expect(table).to_contain_text("role.create")
    expect(table).not_to_contain_text("user.login")
    shot(admin, "audit")
    admin.select_option("select[name=outcome]", "denied")
    admin.fill("input[name=actor]", "")
    admin.fill("input[name=action]", "")
    admin.get_by_test_id("audit-filters").get_by_role("button", name="Filter").click()
    admin.wait_for_url("**/app/audit?*outcome=denied*")
    rows = table.locator("tbody tr")
    expect(rows.first).to_contain_text("denied")
