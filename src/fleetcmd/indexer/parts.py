"""The indexer's part of each command, in one table: what the task manager checks and changes
in the task's own transaction, and what the command manager does when it expands the command
(how a rollout reverses it is `REVERSALS`, indexer/reversals.py). Rows are keyed by the
catalog's task types; a type the indexer has nothing to add for (it only fans out) has no row.
tests/unit/test_catalog_complete.py checks that every entry that needs a part here has it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetcmd.indexer import expansions as e
from fleetcmd.indexer import index_changes as ic
from fleetcmd.indexer.reversals import REVERSALS
from fleetcmd.store.base import SqlTx


@dataclass(frozen=True)
class IndexerPart:
    # A refusal the names check cannot express, before anything is written.
    check: Callable[[SqlTx, Any], None] | None = None
    # The index change made in the task's transaction, before its first command.
    index_first: Callable[[SqlTx, Any], None] | None = None
    # The command manager's step for an indexer-bound command (expansion "command-manager").
    expand: e.Expansion | None = None


PARTS: dict[str, IndexerPart] = {
    "group-assignment-change": IndexerPart(expand=e.group_assignment),
    "group-configuration-change": IndexerPart(expand=e.group_configuration),
    "agent-rename": IndexerPart(check=ic.rename_check, expand=e.agent_rename),
    "sca-policy-change": IndexerPart(expand=e.sca_policy),
    "active-response-configuration": IndexerPart(index_first=ic.active_response_configuration),
    "active-response-execution": IndexerPart(expand=e.active_response_execution),
    "ruleset-update": IndexerPart(index_first=ic.ruleset),
    "server-config-change": IndexerPart(index_first=ic.server_config),
    "agent-deletion": IndexerPart(expand=e.agent_deletion),
    "rbac-change": IndexerPart(index_first=ic.rbac),
}
NOTHING = IndexerPart()

__all__ = ["NOTHING", "PARTS", "REVERSALS", "IndexerPart"]
