"""What the task manager checks and changes in the indexes inside the task's own transaction,
before its first command is written (the catalog's "index change" for the types whose change
is not the command manager's step). One function per task type; `indexer/parts.py` lists them.
"""

from __future__ import annotations

from fleetcmd.errors import Conflict
from fleetcmd.indexer.rbac import apply_changes
from fleetcmd.model import params as p
from fleetcmd.store.base import SqlTx


def rename_check(tx: SqlTx, prm: p.AgentRename) -> None:
    """Refused now rather than failing later; the rename's own transaction checks again, for
    two renames to one name filed before either ran."""
    holder = tx.agent_named(prm.name, other_than=prm.agent)
    if holder is not None:
        raise Conflict(
            f"agent-rename: agent name '{prm.name}' is already used by agent {holder}",
            name_taken=prm.name,
            agent=holder,
        )


def active_response_configuration(tx: SqlTx, prm: p.ActiveResponseConfiguration) -> None:
    doc = f"{prm.group}/{prm.name}"
    if prm.enabled:
        tx.put_document("active-response", doc, prm.definition)
    else:
        tx.delete_document("active-response", doc)


def server_config(tx: SqlTx, prm: p.ServerConfigChange) -> None:
    current = tx.document("server-configuration", "settings") or {}
    current.update(prm.settings)
    tx.put_document("server-configuration", "settings", current)


def ruleset(tx: SqlTx, prm: p.RulesetUpdate) -> None:
    if prm.rules is not None:
        tx.put_document("ruleset", "rules", {"version": prm.version, "rules": prm.rules})


def rbac(tx: SqlTx, prm: p.RbacChange) -> None:
    apply_changes(tx, prm.changes)
