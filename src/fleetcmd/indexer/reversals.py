"""How a rollout sends a reversible change back (docs/rollouts.md, "rollback"): for each task
type the catalog marks `reversible`, what to remember before the index changes (`capture`)
and how to put the index back and what each agent that applied the change then gets (`undo`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetcmd.model import actions as a
from fleetcmd.model import params as p
from fleetcmd.store import rollouts as sql
from fleetcmd.store.base import SqlTx


@dataclass(frozen=True)
class Reversal:
    capture: Callable[[SqlTx, Any], dict[str, Any]]
    # (tx, what capture remembered, rollback task id) -> (the inverse's args, with groups)
    undo: Callable[[SqlTx, dict[str, Any], int], tuple[a.ActionArgs, bool]]


def _capture_group_config(tx: SqlTx, prm: p.GroupConfigurationChange) -> dict[str, Any]:
    group = tx.group(prm.group)
    return {"group": prm.group, "config_hash": group.config_hash if group else None}


def _undo_group_config(tx: SqlTx, inverse: dict[str, Any], rb: int) -> tuple[a.ActionArgs, bool]:
    previous = (
        sql.config_content(tx, inverse["config_hash"]) if inverse.get("config_hash") else None
    ) or {}
    h, version = tx.put_group_config(inverse["group"], previous, rb)
    return a.ApplyGroupConfig(group=inverse["group"], version=version, group_config_hash=h), True


def _capture_sca_policy(tx: SqlTx, prm: p.ScaPolicyChange) -> dict[str, Any]:
    doc = f"{prm.group}/{prm.policy_id}"
    return {"group": prm.group, "policy_id": prm.policy_id, "policy": tx.document("sca", doc)}


def _undo_sca_policy(tx: SqlTx, inverse: dict[str, Any], rb: int) -> tuple[a.ActionArgs, bool]:
    doc = f"{inverse['group']}/{inverse['policy_id']}"
    policy = inverse.get("policy")
    if policy is None:
        tx.delete_document("sca", doc)
    else:
        tx.put_document("sca", doc, policy)
    return a.ScaPolicy(policy_id=inverse["policy_id"], policy=policy, delete=policy is None), False


def _capture_ar_config(tx: SqlTx, prm: p.ActiveResponseConfiguration) -> dict[str, Any]:
    doc = f"{prm.group}/{prm.name}"
    return {
        "group": prm.group,
        "name": prm.name,
        "definition": tx.document("active-response", doc),
    }


def _undo_ar_config(tx: SqlTx, inverse: dict[str, Any], rb: int) -> tuple[a.ActionArgs, bool]:
    doc = f"{inverse['group']}/{inverse['name']}"
    definition = inverse.get("definition")
    if definition is None:
        tx.delete_document("active-response", doc)
    else:
        tx.put_document("active-response", doc, definition)
    args = a.ArConfig(
        group=inverse["group"],
        name=inverse["name"],
        definition=definition,
        enabled=definition is not None,
    )
    return args, False


def _capture_upgrade(tx: SqlTx, prm: p.AgentUpgrade) -> dict[str, Any]:
    # Each agent's version before the upgrade travels in its command (`from_version`); the
    # inverse sends each agent back to its own (`to_previous_version` in the rollback plan).
    return {"package": prm.package}


def _undo_upgrade(tx: SqlTx, inverse: dict[str, Any], rb: int) -> tuple[a.ActionArgs, bool]:
    # The version is each agent's own, filled in per agent when the inverse is sent.
    return a.Upgrade(version="", package=inverse.get("package")), False


REVERSALS: dict[str, Reversal] = {
    "group-configuration-change": Reversal(_capture_group_config, _undo_group_config),
    "sca-policy-change": Reversal(_capture_sca_policy, _undo_sca_policy),
    "active-response-configuration": Reversal(_capture_ar_config, _undo_ar_config),
    "agent-upgrade": Reversal(_capture_upgrade, _undo_upgrade),
}
