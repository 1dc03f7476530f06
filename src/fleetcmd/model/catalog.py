"""The one catalog of the 15 commands (SPEC §4).

The task manager, the command manager, the server, the agent, the dashboard, the rollouts
and the docs all read this table. An entry links a task type to its parts: its params
(model/params.py: what it names, reaches and selects), the arguments of the action its receiver
runs (model/actions.py), whether a rollout can reverse it. The roles register the rest under
the entry's names (the receiver's handler, the indexer's steps in indexer/parts.py, the
dashboard's form); tests/unit/test_catalog_complete.py names any part an entry lacks.
docs/architecture.md, "adding a command", walks through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from fleetcmd.errors import InvalidParams, RemovedCommand, TooDeep, UnknownTaskType
from fleetcmd.model import actions as a
from fleetcmd.model import params as p
from fleetcmd.model.nesting import MAX_DEPTH, value_too_deep


class Target(StrEnum):
    INDEXER = "indexer"
    SERVER = "server"
    AGENT = "agent"


class Expansion(StrEnum):
    NONE = "none"  # one command, no children
    BY_COMMAND_MANAGER = (
        "command-manager"  # indexer command: index change, then one child per agent
    )
    BY_TASK_MANAGER = "task-manager"  # agent-bound: the task manager writes one command per agent
    PER_SERVER_NODE = "per-server-node"  # every registered server node applies it


@dataclass(frozen=True)
class CommandSpec:
    number: int
    task_type: str
    target: Target
    params: type[p.Params]
    index_change: str  # which index changes, for docs and audit
    expansion: Expansion
    args: type[a.ActionArgs]  # the action that reaches the server or agent, and its arguments
    timeout: float  # default execution timeout, seconds
    summary: str
    attended: bool = True  # may be filed by people (dashboard / management API)
    unattended: bool = False  # may be filed by the content manager or engine
    reversible: bool = False  # a rollout can send it back (indexer/reversals.py)

    @property
    def action(self) -> str:
        """The name the receiver dispatches on."""
        return self.args.action

    @property
    def receiver(self) -> Target:
        """Who finally executes it: indexer commands end at agents."""
        return Target.AGENT if self.target is Target.INDEXER else self.target


DAY = 86_400.0

CATALOG: dict[str, CommandSpec] = {
    s.task_type: s
    for s in [
        CommandSpec(
            1,
            "group-assignment-change",
            Target.INDEXER,
            p.GroupAssignmentChange,
            "agents (groups); groups on deletion",
            Expansion.BY_COMMAND_MANAGER,
            a.SetGroups,
            60,
            "Set, add or remove groups of agents, or delete a group",
        ),
        CommandSpec(
            2,
            "group-configuration-change",
            Target.INDEXER,
            p.GroupConfigurationChange,
            "groups (configuration, version)",
            Expansion.BY_COMMAND_MANAGER,
            a.ApplyGroupConfig,
            60,
            "Replace a group's configuration",
            reversible=True,
        ),
        CommandSpec(
            3,
            "agent-upgrade",
            Target.AGENT,
            p.AgentUpgrade,
            "-",
            Expansion.BY_TASK_MANAGER,
            a.Upgrade,
            600,
            "Upgrade agents to a version",
            reversible=True,
        ),
        CommandSpec(
            4,
            "agent-package-new",
            Target.SERVER,
            p.AgentPackageNew,
            "-",
            Expansion.PER_SERVER_NODE,
            a.FetchPackage,
            300,
            "Servers fetch a new agent package to serve it",
            attended=False,
            unattended=True,
        ),
        CommandSpec(
            5,
            "agent-rename",
            Target.INDEXER,
            p.AgentRename,
            "agents (name, unique)",
            Expansion.BY_COMMAND_MANAGER,
            a.Rename,
            60,
            "Rename an agent",
        ),
        CommandSpec(
            6,
            "sca-policy-change",
            Target.INDEXER,
            p.ScaPolicyChange,
            "sca",
            Expansion.BY_COMMAND_MANAGER,
            a.ScaPolicy,
            120,
            "Set or delete an SCA policy for a group",
            unattended=True,
            reversible=True,
        ),
        CommandSpec(
            7,
            "sca-content-update",
            Target.AGENT,
            p.ScaContentUpdate,
            "sca (by content manager)",
            Expansion.BY_TASK_MANAGER,
            a.ScaContent,
            120,
            "Agents using a policy replace its content",
            attended=False,
            unattended=True,
        ),
        CommandSpec(
            8,
            "vulnerability-rescan",
            Target.AGENT,
            p.VulnerabilityRescan,
            "cve (by content manager)",
            Expansion.BY_TASK_MANAGER,
            a.VulnerabilityRescan,
            300,
            "Agents re-send their package inventory",
            unattended=True,
        ),
        CommandSpec(
            9,
            "cve-content-update",
            Target.SERVER,
            p.CveContentUpdate,
            "cve (by content manager)",
            Expansion.PER_SERVER_NODE,
            a.CveReload,
            300,
            "Servers reload CVE data into the engine",
            attended=False,
            unattended=True,
        ),
        CommandSpec(
            10,
            "active-response-configuration",
            Target.AGENT,
            p.ActiveResponseConfiguration,
            "active-response",
            Expansion.BY_TASK_MANAGER,
            a.ArConfig,
            60,
            "Set or remove an active response for a group",
            unattended=True,
            reversible=True,
        ),
        CommandSpec(
            11,
            "active-response-execution",
            Target.INDEXER,
            p.ActiveResponseExecution,
            "- (reads agents and groups)",
            Expansion.BY_COMMAND_MANAGER,
            a.ArExecute,
            120,
            "Run an allow-listed active response on agents",
            unattended=True,
        ),
        CommandSpec(
            12,
            "ruleset-update",
            Target.SERVER,
            p.RulesetUpdate,
            "ruleset",
            Expansion.PER_SERVER_NODE,
            a.RulesetReload,
            120,
            "Servers reload the engine's rules",
            unattended=True,
        ),
        CommandSpec(
            13,
            "server-config-change",
            Target.SERVER,
            p.ServerConfigChange,
            "server-configuration",
            Expansion.PER_SERVER_NODE,
            a.ServerConfig,
            60,
            "Servers apply a configuration change without restarting",
        ),
        CommandSpec(
            14,
            "agent-deletion",
            Target.INDEXER,
            p.AgentDeletion,
            "agents (removed)",
            Expansion.BY_COMMAND_MANAGER,
            a.Delete,
            60,
            "Delete an agent: it stops connecting and forgets its credentials",
        ),
        CommandSpec(
            15,
            "rbac-change",
            Target.SERVER,
            p.RbacChange,
            "rbac",
            Expansion.PER_SERVER_NODE,
            a.RbacRefresh,
            60,
            "Servers refresh their RBAC cache",
        ),
    ]
}

# The reboot command was removed from the platform (R4). Asking for it gets a named refusal.
REMOVED: dict[str, str] = {
    name: "the agent reboot/restart command was removed; configuration is hot-applied (R2)"
    for name in ("agent-reboot", "agent-restart", "reboot", "restart", "agent-reboot-request")
}


def spec_for(task_type: str) -> CommandSpec:
    if task_type in REMOVED:
        raise RemovedCommand(
            f"'{task_type}' has been removed: {REMOVED[task_type]}", task_type=task_type
        )
    try:
        return CATALOG[task_type]
    except KeyError:
        raise UnknownTaskType(
            f"unknown task type '{task_type}'", known=sorted(CATALOG), task_type=task_type
        ) from None


def validate(task_type: str, params: Any) -> tuple[CommandSpec, p.Params]:
    """Check a task request against the catalog; return its spec and parsed parameters."""
    spec = spec_for(task_type)
    if not isinstance(params, dict):
        raise InvalidParams(f"{task_type}: 'params' must be an object")
    # What is stored is read back inside replies, which must serialize (model/nesting.py).
    if value_too_deep(params):
        raise TooDeep(
            f"{task_type}: 'params' nested deeper than {MAX_DEPTH} levels", limit=MAX_DEPTH
        )
    try:
        parsed = spec.params.model_validate(params)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(x) for x in e["loc"]) or "params",
                "error": e["msg"],
                # A selector that does not parse says where (line, column, expected).
                **(e.get("ctx", {}) if e["type"] == "selector" else {}),
            }
            for e in exc.errors()
        ]
        raise InvalidParams(
            f"{task_type}: invalid parameters: "
            + "; ".join(f"{e['field']}: {e['error']}" for e in errors),
            errors=errors,
        ) from None
    return spec, parsed


# Task types whose change has an inverse the rollout can send back (docs/rollouts.md).
REVERSIBLE = frozenset(t for t, s in CATALOG.items() if s.reversible)
# Receiver-side action name -> spec (the server and agent dispatch on these).
BY_ACTION: dict[str, CommandSpec] = {s.action: s for s in CATALOG.values()}
# Fields of a successful result that update the agents index (indexer/results.py).
AGENT_FIELDS = tuple(dict.fromkeys(f for s in CATALOG.values() for f in s.args.reports))
