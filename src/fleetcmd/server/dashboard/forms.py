"""The create-task forms: one `TaskForm` per attended task type of the catalog.

A form turns posted fields into the task's `params` (checking only what the browser cannot
send well: JSON text, confirmations), and maps the API's 422 answers back onto the fields
that caused them, so the operator sees each error next to its input.

Over 500 lines because most of it is data: the table of twelve forms, a field per parameter."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetcmd.model.catalog import CATALOG
from fleetcmd.model.nesting import MAX_DEPTH, text_too_deep
from fleetcmd.server.config import DEFAULTS as SERVER_SETTINGS

Values = dict[str, str]
Params = dict[str, Any]


class FieldErrors(Exception):
    """Errors found before calling the API: field name -> message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "text"  # text, textarea, json, ids, list, select, checkbox, number, selector
    help: str = ""
    required: bool = False
    choices: tuple[tuple[str, str], ...] = ()
    placeholder: str = ""
    json_type: str = "object"  # for kind == "json": object or array
    default: str = ""
    show_when: tuple[str, tuple[str, ...]] | None = None  # (field, values) that reveal it
    datalist: str | None = None  # "groups" or "agents": suggestions


@dataclass(frozen=True)
class TaskForm:
    type: str
    title: str
    fields: tuple[Field, ...]
    build: Callable[[Values], Params]
    danger: str = ""  # a warning shown above the submit button
    example: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return CATALOG[self.type].summary

    @property
    def number(self) -> int:
        return CATALOG[self.type].number

    def names(self) -> set[str]:
        return {f.name for f in self.fields} | {"timeout", "expires_in"}


# -- reading fields ------------------------------------------------------------------------------

_SPLIT = re.compile(r"[\s,]+")


def ids(values: Values, name: str) -> list[str]:
    return [x for x in _SPLIT.split(values.get(name, "")) if x]


def text(values: Values, name: str) -> str:
    return values.get(name, "").strip()


def parse_json(values: Values, name: str, kind: str = "object", required: bool = True) -> Any:
    raw = values.get(name, "").strip()
    if not raw:
        if required:
            raise FieldErrors({name: "required"})
        return None
    # Refused before parsing: the parser recurses, and params deeper than this are refused
    # by the catalog anyway (model/nesting.py).
    if text_too_deep(raw, MAX_DEPTH - 1):
        raise FieldErrors({name: f"nested deeper than {MAX_DEPTH - 1} levels"})
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FieldErrors(
            {name: f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"}
        ) from None
    want = dict if kind == "object" else list
    if not isinstance(value, want):
        raise FieldErrors({name: f"must be a JSON {kind}"})
    return value


def selector(values: Values) -> Params:
    """Agents by id, a group, every agent, or a selector expression."""
    by = values.get("selector", "agents")
    if by == "all":
        return {"all": True}
    if by == "expression":
        return {"selector": text(values, "expression")}
    if by == "group":
        return {"group": text(values, "group")}
    return {"agents": ids(values, "agents")}


SELECTOR = (
    Field(
        "selector",
        "Target",
        "select",
        required=True,
        choices=(
            ("agents", "These agents"),
            ("group", "Every agent of a group"),
            ("all", "Every agent"),
            ("expression", "Agents matching a selector"),
        ),
    ),
    Field(
        "expression",
        "Selector",
        "textarea",
        "e.g. group = web and version < 2.4 and not label.env = prod (docs/commands.md)",
        placeholder="group = web and last_seen < 1h",
        show_when=("selector", ("expression",)),
    ),
    Field(
        "agents",
        "Agent ids",
        "ids",
        "One per line, or separated by commas or spaces.",
        placeholder="a1b2c3d4e5f6",
        show_when=("selector", ("agents",)),
        datalist="agents",
    ),
    Field("group", "Group", show_when=("selector", ("group",)), datalist="groups"),
)


def _only(**kv: Any) -> Params:
    return {k: v for k, v in kv.items() if v not in (None, "")}


# -- builders, one per task type -----------------------------------------------------------------


def _group_assignment(v: Values) -> Params:
    op = v.get("operation", "set")
    if op == "delete":
        if v.get("confirm") != "yes":
            raise FieldErrors({"confirm": "confirm that the group leaves every agent"})
        return {"delete_group": text(v, "delete_group")}
    params: Params = {"mode": op, "groups": ids(v, "groups")}
    if text(v, "from_group"):
        params["from_group"] = text(v, "from_group")
    if ids(v, "agents") or not text(v, "from_group"):
        params["agents"] = ids(v, "agents")
    return params


def _group_configuration(v: Values) -> Params:
    return {"group": text(v, "group"), "configuration": parse_json(v, "configuration")}


def _upgrade(v: Values) -> Params:
    return {**selector(v), **_only(version=text(v, "version"), package=text(v, "package"))}


def _rename(v: Values) -> Params:
    return {"agent": text(v, "agent"), "name": text(v, "name")}


def _deletion(v: Values) -> Params:
    agent = text(v, "agent")
    if not agent:
        raise FieldErrors({"agent": "required"})
    if text(v, "confirm") != agent:
        raise FieldErrors({"confirm": "type the agent id exactly to confirm the deletion"})
    return {"agent": agent}


def _sca_policy(v: Values) -> Params:
    params: Params = {"group": text(v, "group"), "policy_id": text(v, "policy_id")}
    if v.get("operation") == "delete":
        params["delete"] = True
    else:
        params["policy"] = parse_json(v, "policy")
    return params


def _rescan(v: Values) -> Params:
    return {**selector(v), **_only(reason=text(v, "reason"))}


def _ar_configuration(v: Values) -> Params:
    params: Params = {"group": text(v, "group"), "name": text(v, "name")}
    if v.get("operation") == "remove":
        params["enabled"] = False
    else:
        params["definition"] = parse_json(v, "definition")
    return params


def _ar_execution(v: Values) -> Params:
    args = [line.strip() for line in v.get("arguments", "").splitlines() if line.strip()]
    return {
        "name": text(v, "name"),
        "arguments": args,
        "target": selector(v),
        **_only(reason=text(v, "reason")),
    }


def _ruleset(v: Values) -> Params:
    rules = parse_json(v, "rules", "array", required=False)
    return {"version": text(v, "version"), **({"rules": rules} if rules is not None else {})}


def _server_config(v: Values) -> Params:
    return {"settings": parse_json(v, "settings")}


def _rbac(v: Values) -> Params:
    return _only(reason=text(v, "reason"))


FORMS: dict[str, TaskForm] = {
    f.type: f
    for f in (
        TaskForm(
            "group-assignment-change",
            "Group assignment",
            (
                Field(
                    "operation",
                    "Operation",
                    "select",
                    required=True,
                    choices=(
                        ("set", "Set the agents' groups (replace)"),
                        ("add", "Add groups to agents"),
                        ("remove", "Remove groups from agents"),
                        ("delete", "Delete a group from every agent"),
                    ),
                ),
                Field(
                    "agents",
                    "Agent ids",
                    "ids",
                    "One per line, or separated by commas or spaces.",
                    show_when=("operation", ("set", "add", "remove")),
                    datalist="agents",
                ),
                Field(
                    "from_group",
                    "…or every agent of group",
                    help="Instead of agent ids: every current member of this group.",
                    show_when=("operation", ("set", "add", "remove")),
                    datalist="groups",
                ),
                Field(
                    "groups",
                    "Groups",
                    "list",
                    "Comma-separated, in merge order.",
                    placeholder="web, linux",
                    show_when=("operation", ("set", "add", "remove")),
                    datalist="groups",
                ),
                Field(
                    "delete_group",
                    "Group to delete",
                    show_when=("operation", ("delete",)),
                    datalist="groups",
                ),
                Field(
                    "confirm",
                    "I understand that this group is removed from every agent that has "
                    "it, and its configuration stops applying to them",
                    "checkbox",
                    show_when=("operation", ("delete",)),
                ),
            ),
            _group_assignment,
        ),
        TaskForm(
            "group-configuration-change",
            "Group configuration",
            (
                Field(
                    "group",
                    "Group",
                    required=True,
                    help="Created if it does not exist yet.",
                    datalist="groups",
                ),
                Field(
                    "configuration",
                    "Configuration",
                    "json",
                    "A JSON object; it replaces the "
                    "group's configuration and reaches every member, hot-applied.",
                    required=True,
                    placeholder='{\n  "sca": {"enabled": true},\n  "logging": {"level": "info"}\n}',
                ),
            ),
            _group_configuration,
        ),
        TaskForm(
            "agent-rename",
            "Rename an agent",
            (
                Field("agent", "Agent id", required=True, datalist="agents"),
                Field(
                    "name",
                    "New name",
                    required=True,
                    help="Letters, digits, '.', '_' or '-'; unique in the fleet.",
                ),
            ),
            _rename,
        ),
        TaskForm(
            "agent-deletion",
            "Delete an agent",
            (
                Field("agent", "Agent id", required=True, datalist="agents"),
                Field("confirm", "Type the agent id again to confirm", required=True),
            ),
            _deletion,
            danger="The agent stops connecting and forgets its credentials. It must "
            "enroll again to come back.",
        ),
        TaskForm(
            "agent-upgrade",
            "Upgrade agents",
            (
                *SELECTOR,
                Field("version", "Version", required=True, placeholder="1.2.0"),
                Field(
                    "package",
                    "Package",
                    help="Optional: a package name from the agent-packages "
                    "index; by default the one for the version.",
                ),
            ),
            _upgrade,
        ),
        TaskForm(
            "sca-policy-change",
            "SCA policy",
            (
                Field(
                    "operation",
                    "Operation",
                    "select",
                    required=True,
                    choices=(("set", "Set the policy"), ("delete", "Delete the policy")),
                ),
                Field("group", "Group", required=True, datalist="groups"),
                Field("policy_id", "Policy id", required=True, placeholder="cis_debian12"),
                Field(
                    "policy",
                    "Policy",
                    "json",
                    "A JSON object: the policy's checks.",
                    show_when=("operation", ("set",)),
                ),
            ),
            _sca_policy,
        ),
        TaskForm(
            "vulnerability-rescan",
            "Vulnerability rescan",
            (
                *SELECTOR,
                Field("reason", "Reason"),
            ),
            _rescan,
        ),
        TaskForm(
            "active-response-configuration",
            "Active response configuration",
            (
                Field(
                    "operation",
                    "Operation",
                    "select",
                    required=True,
                    choices=(("set", "Set (enable) the response"), ("remove", "Remove (disable)")),
                ),
                Field("group", "Group", required=True, datalist="groups"),
                Field("name", "Response name", required=True, placeholder="block-ip"),
                Field(
                    "definition",
                    "Definition",
                    "json",
                    "A JSON object: command, allowed arguments, timeout.",
                    show_when=("operation", ("set",)),
                    placeholder='{\n  "command": "block-ip",\n  "timeout": 60\n}',
                ),
            ),
            _ar_configuration,
        ),
        TaskForm(
            "active-response-execution",
            "Run an active response",
            (
                Field("name", "Response name", required=True, placeholder="block-ip"),
                Field("arguments", "Arguments", "textarea", "One argument per line."),
                *SELECTOR,
                Field("reason", "Reason", help="Recorded with the task."),
            ),
            _ar_execution,
        ),
        TaskForm(
            "ruleset-update",
            "Ruleset update",
            (
                Field("version", "Version", required=True),
                Field(
                    "rules",
                    "Rules",
                    "json",
                    "Optional JSON array of rules; without it servers reload the stored ruleset.",
                    json_type="array",
                ),
            ),
            _ruleset,
        ),
        TaskForm(
            "server-config-change",
            "Server configuration",
            (
                Field(
                    "settings",
                    "Settings",
                    "json",
                    "A JSON object of settings to change; applied "
                    "live by every server node. Known: " + ", ".join(sorted(SERVER_SETTINGS)) + ".",
                    required=True,
                    placeholder='{\n  "log_level": "info"\n}',
                ),
            ),
            _server_config,
        ),
        TaskForm(
            "rbac-change",
            "RBAC refresh",
            (
                Field(
                    "reason", "Reason", help="Servers reload users and roles from the rbac index."
                ),
            ),
            _rbac,
        ),
    )
}


# -- API errors back onto fields -----------------------------------------------------------------

_QUOTED = re.compile(r"'([^']{1,200})'")


def field_for(form: TaskForm, path: str, message: str, values: Values) -> str | None:
    """The form field an API error path (`configuration`, `target.agents`, `groups.0`,
    `params`…) belongs to, or None for an error about the whole form."""
    names = form.names()
    parts = [x for x in path.split(".") if x and not x.isdigit()]
    if parts and parts[0] in ("params", "body"):
        parts = parts[1:]
    if parts and parts[0] == "target" and len(parts) > 1:
        parts = parts[1:]
    if parts and parts[-1] == "selector" and "expression" in names:
        return "expression"  # the params' selector is the form's expression
    for candidate in (".".join(parts), parts[-1] if parts else ""):
        if candidate in names:
            return candidate
    quoted = _QUOTED.findall(message)
    for name in quoted:  # model-level: "choose exactly one of 'agents', 'group' or 'all'"
        if name in ("agents", "group", "all") and "selector" in names:
            return "selector"
        if name in names:
            return name
    for value in quoted:  # "group 'bad name' must be ...": the field holding that value
        owner = next(
            (f.name for f in form.fields if value and values.get(f.name, "").strip() == value), None
        )
        if owner is not None:
            return owner
    return None


def map_api_errors(
    form: TaskForm, body: dict[str, Any], values: Values
) -> tuple[dict[str, str], list[str]]:
    """(field -> message, form-level messages) from a 4xx body of the Management API."""
    fields: dict[str, str] = {}
    general: list[str] = []
    details = body.get("details") or {}

    def put(name: str | None, message: str) -> None:
        if name is None:
            general.append(message)
        else:
            fields[name] = f"{fields[name]}; {message}" if name in fields else message

    for err in details.get("errors") or []:
        msg = str(err.get("error", "invalid")).removeprefix("Value error, ")
        put(field_for(form, str(err.get("field", "")), msg, values), msg)
    if details.get("unknown_agents"):
        names = form.names()
        target = "agents" if "agents" in names else ("agent" if "agent" in names else None)
        put(target, "unknown agent(s): " + ", ".join(details["unknown_agents"][:20]))
    if details.get("unknown_group"):
        group = str(details["unknown_group"])
        owner = next(
            (
                f.name
                for f in form.fields
                if f.kind in ("text", "list") and group in ids(values, f.name)
            ),
            None,
        )
        put(owner, f"group '{group}' does not exist")
    if details.get("name_taken") and "name" in form.names():
        put(
            "name",
            f"name '{details['name_taken']}' is already used by agent {details.get('agent', '?')}",
        )
    if not fields and not general:
        general.append(str(body.get("message") or body.get("error") or "the request failed"))
    return fields, general
