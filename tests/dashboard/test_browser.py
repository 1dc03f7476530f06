"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real
indexer, server, `fleetcmd agent` processes and an httpx-played agent whose pace the test
controls. Each test leaves a screenshot in docs/img for docs/dashboard.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard.harness import DashFleet
from support import wait_until

Shot = Callable[..., Path]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_login_refuses_bad_password_and_sets_strict_cookies(
    browser: Any, fleet: DashFleet, shot: Shot
) -> None:
    context = browser.new_context(base_url=fleet.url, viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.goto("/app/tasks")
    assert "/app/login?next=/app/tasks" in page.url
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".alert-error")).to_contain_text("Bad user name or password")
    shot(page, "login", full_page=False)
    page.fill("input[name=password]", fleet.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url("**/app/tasks")  # back where the operator was going
    cookies = {c["name"]: c for c in context.cookies()}
    token = cookies["fleetcmd_token"]
    assert token["httpOnly"] and token["sameSite"] == "Strict" and token["path"] == "/app"
    # The cookie holds the Management API's own JWT: it opens the API as a bearer token.
    r = httpx.get(f"{fleet.url}/tasks", headers={"Authorization": f"Bearer {token['value']}"})
    assert r.status_code == 200
    # Log out: cookies gone, pages lead back to the login form.
    page.click("#logout-form button")
    page.wait_for_url("**/app/login")
    page.goto("/app/")
    assert "/app/login" in page.url
    context.close()


def test_overview_shows_the_fleet(admin: Any, fleet: DashFleet, shot: Shot) -> None:
    fleet.register(
        [
            {"id": f"ghost{i:07d}", "name": f"ghost-{i}", "groups": ["linux"], "version": "0.9.0"}
            for i in range(3)
        ]
    )
    admin.goto("/app/")
    expect(admin.get_by_test_id("agents-total")).to_have_text("5")
    expect(admin.get_by_test_id("agents-active")).to_have_text("2")
    expect(admin.get_by_test_id("agents-never_connected")).to_have_text("3")
    shot(admin, "overview")


def test_group_assignment_from_the_form_reaches_100_percent_live(
    admin: Any, fleet: DashFleet, shot: Shot
) -> None:
    """One real agent answers at once; an httpx-played one answers when the test says so,
    while the page is open: the bar must reach 100% without a reload."""
    real = fleet.agents["edge-1"]
    slow = fleet.fake_agent("slow-1")
    slow.poll(wait=0)
    admin.goto("/app/tasks/new")
    shot(admin, "new-task", full_page=False)
    admin.get_by_test_id("form-group-assignment-change").click()
    admin.select_option("select[name=operation]", "set")
    admin.fill("textarea[name=agents]", f"{real}\n{slow.id}")
    admin.fill("input[name=groups]", "web, linux")
    admin.get_by_test_id("submit-task").click()
    admin.wait_for_url(re.compile(r"/app/tasks/\d+\?created=1"))
    task_id = int(re.search(r"/app/tasks/(\d+)", admin.url).group(1))  # type: ignore[union-attr]
    admin.evaluate("window.__sameDocument = true")
    pct = admin.get_by_test_id("progress-pct")
    expect(pct).to_have_text("50%")  # the real agent; the played one has not answered
    expect(admin.locator("[data-count=success]")).to_have_text("1")
    wait_until(lambda: slow.run_once(wait=2), timeout=30, what="the played agent's command")
    expect(pct).to_have_text("100%")
    expect(admin.locator("[data-count=success]")).to_have_text("2")
    expect(admin.locator("[data-live-status] .badge")).to_have_text("success")
    badges = admin.get_by_test_id("commands-table").locator("tbody tr .badge")
    expect(badges).to_have_text(["success", "success", "success"])  # rows refreshed in place
    assert admin.evaluate("window.__sameDocument") is True  # no reload happened
    shot(admin, "task")
    task = fleet.api.get(f"/tasks/{task_id}").json()["data"]
    assert task["source"] == "dashboard" and task["user"] == "admin"
    assert {k: task["params"][k] for k in ("mode", "groups", "agents")} == {
        "mode": "set",
        "groups": ["web", "linux"],
        "agents": [real, slow.id],
    }
    agent = fleet.api.get(f"/agents/{real}").json()["data"]
    assert agent["groups"] == ["web", "linux"]


def test_a_commands_result_opens(admin: Any, fleet: DashFleet, shot: Shot) -> None:
    tasks = fleet.api.get(
        "/tasks", params={"type": "group-assignment-change", "status": "success"}
    ).json()["data"]["items"]
    admin.goto(f"/app/tasks/{tasks[0]['id']}")
    admin.fill("input[name=target_id]", fleet.agents["edge-1"])
    admin.select_option("select[name=status]", "success")
    admin.get_by_test_id("command-filters").locator("button").click()
    rows = admin.get_by_test_id("commands-table").locator("tbody tr")
    expect(rows).to_have_count(1)
    rows.first.locator("a.result-link").click()
    admin.wait_for_url(re.compile(r"/app/commands/\d+"))
    result = admin.get_by_test_id("command-result")
    expect(result).to_contain_text("config_hash")
    expect(result.locator(".code")).to_have_text("0")
    shot(admin, "command")
    # Up the tree: the parent shows its children's counts.
    admin.locator("dl.facts a[href^='/app/commands/']").click()
    expect(admin.get_by_test_id("command-result")).to_contain_text("Expanded into 2 child")


def test_cancel_a_task_stuck_on_an_offline_agent(admin: Any, fleet: DashFleet, shot: Shot) -> None:
    admin.goto("/app/tasks/new/group-assignment-change")
    admin.select_option("select[name=operation]", "add")
    admin.fill("textarea[name=agents]", "ghost0000001")
    admin.fill("input[name=groups]", "web")
    admin.locator("details.advanced summary").click()
    admin.fill("input[name=expires_in]", "3600")
    admin.get_by_test_id("submit-task").click()
    admin.wait_for_url(re.compile(r"/app/tasks/\d+\?created=1"))
    expect(admin.locator("[data-count=pending]")).to_have_text("1")  # never reached, waiting
    admin.once("dialog", lambda d: d.accept())
    admin.get_by_test_id("cancel-task").click()
    admin.wait_for_url(re.compile(r"cancelled=1"))
    expect(admin.locator("[data-live-status] .badge")).to_have_text("cancelled")
    expect(admin.locator("[data-count=cancelled]")).to_have_text("1")
    expect(admin.get_by_test_id("cancel-task")).to_have_count(0)
    shot(admin, "cancelled")


def test_validation_errors_next_to_their_fields(admin: Any, fleet: DashFleet, shot: Shot) -> None:
    admin.goto("/app/tasks/new/group-configuration-change")
    # In the browser: the JSON editor refuses to post broken JSON.
    admin.fill("input[name=group]", "web")
    admin.fill("textarea[name=configuration]", '{"log_level": "debug",')
    expect(admin.locator("[data-json-status-for=configuration]")).to_contain_text("invalid JSON")
    admin.get_by_test_id("submit-task").click()
    expect(admin.locator("[data-error-for=configuration]")).to_contain_text("invalid JSON")
    assert admin.url.endswith("/app/tasks/new/group-configuration-change")
    # On the server: the API's 422 lands next to the field that caused it.
    admin.fill("input[name=group]", "no spaces allowed")
    admin.fill("textarea[name=configuration]", '{"log_level": "debug"}')
    admin.get_by_test_id("submit-task").click()
    error = admin.locator("[data-error-for=group]")
    expect(error).to_be_visible()
    expect(error).to_contain_text("must be 1-128 characters")
    expect(admin.locator("[data-field=group]")).to_have_class(re.compile("invalid"))
    expect(admin.locator("[data-error-for=configuration]")).to_be_hidden()
    shot(admin, "form-errors")
    # The same mapping for a nested selector: an unknown agent is named next to the ids.
    admin.goto("/app/tasks/new/active-response-execution")
    admin.fill("input[name=name]", "block-ip")
    admin.fill("textarea[name=agents]", "nosuchagent1")
    admin.get_by_test_id("submit-task").click()
    expect(admin.locator("[data-error-for=agents]")).to_contain_text("nosuchagent1")
    # A malformed server configuration is refused without filing anything.
    before = fleet.api.get("/tasks", params={"type": "server-config-change"}).json()
    admin.goto("/app/tasks/new/server-config-change")
    admin.evaluate("document.querySelector('form[data-task-form]').noValidate = true")
    admin.fill("textarea[name=settings]", "[1, 2]")
    admin.get_by_test_id("submit-task").click()
    expect(admin.locator("[data-error-for=settings]")).to_contain_text("JSON object")
    after = fleet.api.get("/tasks", params={"type": "server-config-change"}).json()
    assert before["data"]["items"] == after["data"]["items"]


def test_every_attended_form_renders(admin: Any) -> None:
    from fleetcmd.server.dashboard.forms import FORMS

    for task_type in FORMS:
        response = admin.goto(f"/app/tasks/new/{task_type}")
        assert response.status == 200, task_type
        expect(admin.get_by_test_id("submit-task")).to_be_visible()


def test_agents_and_groups(admin: Any, fleet: DashFleet, shot: Shot) -> None:
    admin.goto("/app/agents")
    expect(admin.get_by_test_id("agents-table").locator("tbody tr")).to_have_count(6)
    shot(admin, "agents")
    admin.goto("/app/agents?size=4")  # keyset pages, forward and back
    admin.locator("a[rel=next]").click()
    expect(admin.get_by_test_id("agents-table").locator("tbody tr")).to_have_count(2)
    expect(admin.locator(".pager")).to_contain_text("of 6 \u00b7 page 2")
    admin.locator("a[rel=prev]").click()
    expect(admin.get_by_test_id("agents-table").locator("tbody tr")).to_have_count(4)
    admin.fill("input[name=search]", "edge-1")
    admin.press("input[name=search]", "Enter")
    rows = admin.get_by_test_id("agents-table").locator("tbody tr")
    expect(rows).to_have_count(1)
    rows.first.locator("a").first.click()
    facts = admin.get_by_test_id("agent-facts")
    expect(facts).to_contain_text("Config hash")
    expect(admin.locator(".status-pill")).to_contain_text("active")
    expect(admin.get_by_test_id("agent-commands")).to_contain_text("set-groups")
    expect(facts).to_contain_text("web")
    shot(admin, "agent")
    admin.goto("/app/groups")
    expect(admin.get_by_test_id("groups-table")).to_contain_text("web")
    shot(admin, "groups")
    admin.get_by_test_id("groups-table").get_by_role("link", name="web", exact=True).click()
    expect(admin.get_by_test_id("group-history").locator("tr")).not_to_have_count(1)
    expect(admin.get_by_test_id("group-config")).to_contain_text("log_level")
    expect(admin.get_by_test_id("group-members")).to_contain_text("edge-1")
    shot(admin, "group")
    admin.goto("/app/tasks?type=group-assignment-change")
    expect(admin.get_by_test_id("tasks-table").locator("tbody tr")).to_have_count(2)
    shot(admin, "tasks")


def test_readonly_sees_no_create_buttons_and_is_refused(
    reader: Any, fleet: DashFleet, shot: Shot
) -> None:
    reader.goto("/app/")
    expect(reader.get_by_test_id("user")).to_have_text("reader")
    expect(reader.get_by_test_id("new-task")).to_have_count(0)
    running = fleet.api.post(
        "/tasks",
        json={
            "type": "group-assignment-change",
            "params": {"agents": ["ghost0000002"], "groups": ["web"], "mode": "add"},
        },
    ).json()["data"]
    reader.goto(f"/app/tasks/{running['id']}")
    expect(reader.get_by_test_id("counts")).to_be_visible()
    expect(reader.get_by_test_id("cancel-task")).to_have_count(0)
    shot(reader, "readonly", full_page=False)
    assert reader.goto("/app/tasks/new/rbac-change").status == 403
    # Posting anyway, with a valid CSRF token of the reader's own session: 403 from RBAC.
    reader.goto("/app/")
    csrf = reader.locator("#logout-form input[name=csrf_token]").input_value()
    refused = reader.request.post(
        "/app/tasks/new/rbac-change", form={"csrf_token": csrf, "reason": "sneaky"}
    )
    assert refused.status == 403 and "may not task:create" in refused.text()
    refused = reader.request.post(f"/app/tasks/{running['id']}/cancel", form={"csrf_token": csrf})
    assert refused.status == 403 and "may not task:cancel" in refused.text()
    assert fleet.api.get(f"/tasks/{running['id']}").json()["data"]["status"] != "cancelled"
    fleet.api.post(f"/tasks/{running['id']}/cancel")


def test_posts_need_the_sessions_csrf_token(admin: Any, fleet: DashFleet, shot: Shot) -> None:
    running = fleet.api.post(
        "/tasks",
        json={
            "type": "group-assignment-change",
            "params": {"agents": ["ghost0000000"], "groups": ["web"], "mode": "add"},
        },
    ).json()["data"]
    admin.goto("/app/")
    expect(admin.get_by_test_id("running-tasks")).to_contain_text(f"#{running['id']}")
    shot(admin, "overview")  # after the other tests: tasks running, groups with members
    for form in ({}, {"csrf_token": "0" * 64}):
        r = admin.request.post(f"/app/tasks/{running['id']}/cancel", form=form)
        assert r.status == 403 and "did not come from this dashboard" in r.text()
    r = admin.request.post(
        f"/app/tasks/{running['id']}/cancel",
        headers={"Origin": "http://evil.example"},
        form={"csrf_token": admin.locator("#logout-form input[name=csrf_token]").input_value()},
    )
    assert r.status == 403 and "cross-site" in r.text()
    fleet.api.post(f"/tasks/{running['id']}/cancel")


def test_task_events_on_the_management_api(fleet: DashFleet) -> None:
    """The SSE stream the pages use is also an API endpoint, with the API's bearer token."""
    task = fleet.api.post("/tasks", json={"type": "rbac-change", "params": {}}).json()["data"]
    headers = dict(fleet.api.headers)
    events: list[str] = []
    with httpx.stream(
        "GET", f"{fleet.url}/tasks/{task['id']}/events", headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if events and events[-1] == "done":
                break
    assert events[0] == "progress" and events[-1] == "done"
    summary = fleet.api.get("/agents/summary").json()["data"]
    assert summary["total"] >= 2 and summary["by_status"]["active"] >= 2
    assert httpx.get(f"{fleet.url}/tasks/{task['id']}/events").status_code == 401


@pytest.mark.parametrize("path", ["/app/tasks/999999", "/app/agents/nosuch", "/app/groups/nope"])
def test_missing_things_are_404_pages(admin: Any, path: str) -> None:
    response = admin.goto(path)
    assert response.status == 404
    expect(admin.get_by_test_id("error-message")).to_be_visible()
