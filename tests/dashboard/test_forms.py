"""The create-task forms without a browser: every attended type has one, fields become the
catalog's params, and the API's 422 answers land on the fields that caused them."""

from __future__ import annotations

import pytest

from fleetcmd.errors import InvalidParams
from fleetcmd.model.catalog import CATALOG, validate
from fleetcmd.server.dashboard.forms import FORMS, FieldErrors, map_api_errors
from fleetcmd.server.dashboard.pager import Pager


def test_every_attended_type_has_a_form() -> None:
    attended = {t for t, spec in CATALOG.items() if spec.attended}
    assert set(FORMS) == attended


FILLED = {
    "group-assignment-change": {"operation": "set", "agents": "a1, a2\na3", "groups": "web,db"},
    "group-configuration-change": {"group": "web", "configuration": '{"x": 1}'},
    "agent-rename": {"agent": "a1", "name": "host-1"},
    "agent-deletion": {"agent": "a1", "confirm": "a1"},
    "agent-upgrade": {"selector": "group", "group": "web", "version": "1.2.0"},
    "sca-policy-change": {"operation": "delete", "group": "web", "policy_id": "cis"},
    "vulnerability-rescan": {"selector": "all", "reason": "new feed"},
    "active-response-configuration": {
        "operation": "set",
        "group": "web",
        "name": "block",
        "definition": '{"command": "block"}',
    },
    "active-response-execution": {
        "name": "block",
        "arguments": "10.0.0.1\n--fast",
        "selector": "agents",
        "agents": "a1",
    },
    "ruleset-update": {"version": "7", "rules": '[{"id": 1}]'},
    "server-config-change": {"settings": '{"log_level": "debug"}'},
    "rbac-change": {"reason": "new user"},
}


@pytest.mark.parametrize("task_type", sorted(FILLED))
def test_filled_forms_are_valid_params(task_type: str) -> None:
    params = FORMS[task_type].build(FILLED[task_type])
    validate(task_type, params)  # the catalog accepts what the form builds


def test_form_specific_checks() -> None:
    with pytest.raises(FieldErrors) as exc:
        FORMS["agent-deletion"].build({"agent": "a1", "confirm": "a2"})
    assert "confirm" in exc.value.errors
    with pytest.raises(FieldErrors) as exc:
        FORMS["group-assignment-change"].build({"operation": "delete", "delete_group": "web"})
    assert "confirm" in exc.value.errors
    with pytest.raises(FieldErrors) as exc:
        FORMS["group-configuration-change"].build({"group": "web", "configuration": "{\n  x"})
    assert exc.value.errors["configuration"].startswith("invalid JSON at line 2")
    with pytest.raises(FieldErrors) as exc:
        FORMS["ruleset-update"].build({"version": "1", "rules": "{}"})
    assert exc.value.errors == {"rules": "must be a JSON array"}
    assert FORMS["group-assignment-change"].build(
        {"operation": "delete", "delete_group": "old", "confirm": "yes"}
    ) == {"delete_group": "old"}


def _api_error(task_type: str, params: dict[str, object]) -> dict[str, object]:
    with pytest.raises(InvalidParams) as exc:
        validate(task_type, params)
    return exc.value.to_json()


@pytest.mark.parametrize(
    ("task_type", "values", "field"),
    [
        ("group-configuration-change", {"group": "bad name", "configuration": "{}"}, "group"),
        ("agent-upgrade", {"selector": "agents", "agents": "", "version": "1"}, "selector"),
        ("agent-upgrade", {"selector": "all", "version": ""}, "version"),
        (
            "active-response-execution",
            {"name": "x", "selector": "group", "group": "bad name"},
            "group",
        ),
        (
            "active-response-configuration",
            {"operation": "set", "group": "web", "name": "bad name", "definition": "{}"},
            "name",
        ),
        ("group-assignment-change", {"operation": "set", "groups": "web"}, "agents"),
        ("agent-rename", {"agent": "a1", "name": "no/slash"}, "name"),
    ],
)
def test_api_errors_land_on_fields(task_type: str, values: dict[str, str], field: str) -> None:
    form = FORMS[task_type]
    body = _api_error(task_type, form.build(values))
    fields, general = map_api_errors(form, body, values)
    assert field in fields, (body, fields, general)


def test_unknown_agents_and_groups_and_other_refusals() -> None:
    form = FORMS["group-assignment-change"]
    values = {"operation": "set", "agents": "a1", "groups": "web, nope"}
    body = {"error": "invalid_params", "message": "...", "details": {"unknown_group": "nope"}}
    assert map_api_errors(form, body, values) == ({"groups": "group 'nope' does not exist"}, [])
    body = {"error": "invalid_params", "message": "...", "details": {"unknown_agents": ["a1"]}}
    assert map_api_errors(form, body, values)[0] == {"agents": "unknown agent(s): a1"}
    conflict = {"error": "conflict", "message": "name 'x' is taken"}
    assert map_api_errors(FORMS["agent-rename"], conflict, {}) == ({}, ["name 'x' is taken"])
    taken = {
        "error": "conflict",
        "message": "...",
        "details": {"name_taken": "web-2", "agent": "a2"},
    }
    assert map_api_errors(FORMS["agent-rename"], taken, {}) == (
        {"name": "name 'web-2' is already used by agent a2"},
        [],
    )


def test_pager_walks_forward_and_back() -> None:
    class Req:
        def __init__(self, **q: str) -> None:
            self.query_params = q

    first = Pager.of(Req())  # type: ignore[arg-type]
    assert first.previous() is None and first.number == 1
    nxt = first.next("50")
    assert nxt == {"cursor": "50", "trail": "~"}
    second = Pager.of(Req(**nxt))  # type: ignore[arg-type]
    assert second.number == 2 and second.offset == 50
    assert second.previous() == {"cursor": "", "trail": ""}
    third = Pager.of(Req(**second.next("100")))  # type: ignore[arg-type]
    assert third.previous() == {"cursor": "50", "trail": "~"}
    assert first.next(None) is None
