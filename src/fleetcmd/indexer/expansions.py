"""What the command manager does for each indexer-bound command: the seed's steps
"4- Change index" and "5- Write child commands". One function per catalog entry (listed in
`indexer/parts.py`); each runs inside the expansion's transaction, builds its children's
arguments with their action's model (model/actions.py) and returns (children written, summary
for the parent)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetcmd.errors import InvalidParams, NotFound
from fleetcmd.model import actions as a
from fleetcmd.model import params as p
from fleetcmd.model.catalog import CommandSpec
from fleetcmd.model.records import Command
from fleetcmd.store import AgentSelection, Fanout
from fleetcmd.store.base import SqlTx

Expansion = Callable[[SqlTx, Command, CommandSpec, Any], tuple[int, dict[str, Any]]]


def _fanout(
    cmd: Command, spec: CommandSpec, args: a.ActionArgs, with_groups: bool = False
) -> Fanout:
    assert args.action == spec.action, (args.action, spec.action)
    return Fanout(
        task_id=cmd.task_id,
        parent_id=cmd.id,
        source="command-manager",
        user=cmd.user,
        action_name=spec.action,
        action_args=args.dump(),
        timeout=cmd.timeout,
        expires_at=cmd.expires_at,
        with_groups=with_groups,
    )


def group_assignment(
    tx: SqlTx, cmd: Command, spec: CommandSpec, prm: p.GroupAssignmentChange
) -> tuple[int, dict[str, Any]]:
    if prm.delete_group is not None:
        current = tx.agents_groups(None, prm.delete_group)
        changed = {a: [g for g in gs if g != prm.delete_group] for a, gs in current.items()}
        tx.delete_group(prm.delete_group)
        summary: dict[str, Any] = {"deleted_group": prm.delete_group}
    else:
        for g in prm.groups:
            if tx.group(g) is None:
                raise InvalidParams(f"group '{g}' no longer exists")
        current = tx.agents_groups(list(prm.agents) if prm.agents else None, prm.from_group)
        if prm.agents and len(current) < len(set(prm.agents)):
            gone = sorted(set(prm.agents) - set(current))
            raise NotFound(f"{len(gone)} agent(s) no longer exist: {', '.join(gone[:20])}")
        changed = {}
        for agent, old in current.items():
            if prm.mode == "set":
                new = list(prm.groups)
            elif prm.mode == "add":
                new = old + [g for g in prm.groups if g not in old]
            else:
                new = [g for g in old if g not in prm.groups]
            if new != old:
                changed[agent] = new
        summary = {
            "mode": prm.mode,
            "groups": list(prm.groups),
            "unchanged": len(current) - len(changed),
        }
    tx.set_agents_groups(changed)
    n = tx.fan_out(
        _fanout(cmd, spec, a.SetGroups(), with_groups=True), AgentSelection(ids=tuple(changed))
    )
    summary["changed"] = len(changed)
    return n, summary


def group_configuration(
    tx: SqlTx, cmd: Command, spec: CommandSpec, prm: p.GroupConfigurationChange
) -> tuple[int, dict[str, Any]]:
    h, version = tx.put_group_config(prm.group, prm.configuration, cmd.task_id)
    n = tx.fan_out(
        _fanout(
            cmd,
            spec,
            a.ApplyGroupConfig(group=prm.group, version=version, group_config_hash=h),
            with_groups=True,
        ),
        AgentSelection(groups=(prm.group,)),
    )
    return n, {"group": prm.group, "version": version, "config_hash": h}


def agent_rename(
    tx: SqlTx, cmd: Command, spec: CommandSpec, prm: p.AgentRename
) -> tuple[int, dict[str, Any]]:
    agent = tx.agent(prm.agent)
    if agent is None or agent.status == "removed":
        raise NotFound(f"agent {prm.agent} not found")
    tx.rename_agent(prm.agent, prm.name)
    n = tx.fan_out(
        _fanout(cmd, spec, a.Rename(name=prm.name, previous=agent.name)),
        AgentSelection(ids=(prm.agent,)),
    )
    return n, {"agent": prm.agent, "name": prm.name, "previous": agent.name}


def sca_policy(
    tx: SqlTx, cmd: Command, spec: CommandSpec, prm: p.ScaPolicyChange
) -> tuple[int, dict[str, Any]]:
    doc = f"{prm.group}/{prm.policy_id}"
    if prm.delete:
        tx.delete_document("sca", doc)
    else:
        tx.put_document("sca", doc, prm.policy)
    args = a.ScaPolicy(policy_id=prm.policy_id, policy=prm.policy, delete=prm.delete)
    n = tx.fan_out(_fanout(cmd, spec, args), AgentSelection(groups=(prm.group,)))
    return n, {"policy_id": prm.policy_id, "group": prm.group, "deleted": prm.delete}


def active_response_execution(
    tx: SqlTx, cmd: Command, spec: CommandSpec, prm: p.ActiveResponseExecution
) -> tuple[int, dict[str, Any]]:
    frozen = tx.task_target_set(cmd.task_id)  # a selector, a preview, a re-run, an approval
    n = tx.fan_out(
        _fanout(cmd, spec, a.ArExecute(name=prm.name, arguments=prm.arguments, reason=prm.reason)),
        AgentSelection(frozen=frozen) if frozen is not None else prm.selection(),
    )
    return n, {"name": prm.name, "targets": n}


def agent_deletion(
    tx: SqlTx, cmd: Command, spec: CommandSpec, prm: p.AgentDeletion
) -> tuple[int, dict[str, Any]]:
    agent = tx.agent(prm.agent)
    if agent is None or agent.status == "removed":
        raise NotFound(f"agent {prm.agent} not found")
    n = tx.fan_out(_fanout(cmd, spec, a.Delete()), AgentSelection(ids=(prm.agent,)))
    tx.remove_agent(prm.agent)
    # What waits for it ends now; its `delete` waits only if a node can hand it over.
    tx.settle_removed(agent_id=prm.agent, connected=agent.status == "active" and bool(agent.node))
    return n, {"agent": prm.agent, "name": agent.name}
