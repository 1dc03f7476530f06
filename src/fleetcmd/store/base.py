"""The SQL store shared by both backends: the concept modules composed into one transaction
class (`SqlTx`) and one store class (`SqlStore`), which the backends subclass and the rest
of fleetcmd imports.

Where each part lives: `core.py` (transactions, status moves, counts, roll-up),
`stream.py` (leases, marks, results, sweep, command reads), `tasks.py`, `agents.py`,
`groups.py` (groups and configurations), `documents.py` (documents and blobs), `audit.py`,
`nodes.py`, `schedules.py` (schedules, occurrences, freezes), `windows.py` (maintenance
windows and held commands), `events.py` (the outbox's readers: subscribers and their
cursors); `rollouts.py` and `retention.py` are functions over a `SqlTx`/`SqlStore`.
"""

from __future__ import annotations

from fleetcmd.store.agents import AgentsStore, AgentsTx
from fleetcmd.store.approvals import ApprovalsStore, ApprovalsTx
from fleetcmd.store.audit import AuditStore, AuditTx
from fleetcmd.store.core import (
    ACTIVE_SQL,
    COLS,
    UNDELIVERED_SQL,
    Moved,
    SchemaTooNew,
    StoreCore,
    TxCore,
    check_schema,
    migrations,
    schema_version,
)
from fleetcmd.store.documents import DocumentsStore, DocumentsTx
from fleetcmd.store.events import EventsStore
from fleetcmd.store.groups import GroupsStore, GroupsTx
from fleetcmd.store.nodes import NodesStore, NodesTx
from fleetcmd.store.schedules import FreezesTx, SchedulesStore, SchedulesTx
from fleetcmd.store.stream import REMOVED_OFFLINE, REMOVED_UNDELIVERED, StreamStore, StreamTx
from fleetcmd.store.targets import TargetsStore, TargetsTx
from fleetcmd.store.tasks import TASK_COLS, TasksStore, TasksTx, task_from_row
from fleetcmd.store.windows import WindowsStore, WindowsTx


class SqlTx(
    StreamTx,
    TasksTx,
    TargetsTx,
    ApprovalsTx,
    AgentsTx,
    GroupsTx,
    DocumentsTx,
    AuditTx,
    NodesTx,
    SchedulesTx,
    FreezesTx,
    WindowsTx,
):
    """One open transaction with the domain operations the task and command managers use."""


class SqlStore(
    StreamStore,
    TasksStore,
    TargetsStore,
    ApprovalsStore,
    AgentsStore,
    GroupsStore,
    DocumentsStore,
    AuditStore,
    NodesStore,
    SchedulesStore,
    WindowsStore,
    EventsStore,
):
    """The store, as every consumer sees it (both backends subclass it)."""


__all__ = [
    "ACTIVE_SQL",
    "COLS",
    "REMOVED_OFFLINE",
    "REMOVED_UNDELIVERED",
    "TASK_COLS",
    "UNDELIVERED_SQL",
    "Moved",
    "SchemaTooNew",
    "SqlStore",
    "SqlTx",
    "StoreCore",
    "TxCore",
    "check_schema",
    "migrations",
    "schema_version",
    "task_from_row",
]
