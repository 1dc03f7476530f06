"""Plain typed records read from the store, and their JSON shapes for the APIs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetcmd.model.nesting import Unreadable, text_too_deep


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def loads(text: str | None) -> Any:
    """A stored JSON value; one nested too deep for a reply to carry (written before the
    limit) comes back as an `Unreadable` marker, so that no reader of it fails."""
    if text is None:
        return None
    if text_too_deep(text):
        return Unreadable()
    return json.loads(text)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass
class Task:
    id: int
    type: str
    params: dict[str, Any]
    source: str
    user: str
    status: str
    created_at: float
    updated_at: float
    completed_at: float | None = None
    idempotency_key: str | None = None
    cancelled: bool = False
    rerun_of: int | None = None
    target_set: int | None = None  # the frozen set of agents it reaches (store/targets.py)
    approval: dict[str, Any] | None = None  # what its approval policy asked (store/approvals.py)
    schedule_id: int | None = None  # the schedule that filed it (indexer/scheduler.py)
    occurrence_at: float | None = None  # and for which of its occurrences
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        total = sum(self.counts.values())
        done = sum(n for s, n in self.counts.items() if s in _FINAL_NAMES)
        return {
            "id": self.id,
            "type": self.type,
            "params": self.params,
            "source": self.source,
            "user": self.user,
            "status": self.status,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "completed_at": iso(self.completed_at),
            "counts": self.counts,
            "total": total,
            "done": done,
            "progress": (done / total) if total else (1.0 if self.completed_at else 0.0),
            "rerun_of": self.rerun_of,
            "frozen_targets": self.target_set is not None,
            "approval": _public_approval(self.approval),
            "schedule_id": self.schedule_id,
            "occurrence_at": iso(self.occurrence_at),
        }


def _public_approval(approval: dict[str, Any] | None) -> dict[str, Any] | None:
    """The approval as readers see it (the request kept to write it later stays inside)."""
    if approval is None:
        return None
    out = {k: v for k, v in approval.items() if k != "request"}
    if isinstance(out.get("deadline"), int | float):
        out["deadline"] = iso(out["deadline"])
    return out


_FINAL_NAMES = {"success", "failure", "expired", "timeout", "cancelled"}


@dataclass
class Command:
    id: int
    task_id: int
    parent_id: int | None
    source: str
    user: str
    target_type: str
    target_id: str
    action_name: str
    action_args: dict[str, Any]
    action_version: int
    timeout: float
    expires_at: float
    status: str
    result_code: int | None
    result_message: str | None
    result_data: Any
    created_at: float
    updated_at: float
    sent_at: float | None
    delivered_at: float | None
    completed_at: float | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: float | None
    expanded: bool
    # What the agent last reported while running it (issue 17.3), and its output so far.
    progress_percent: float | None = None
    progress_message: str | None = None
    progress_at: float | None = None
    output_chunks: int = 0
    output_bytes: int = 0

    COLUMNS = (
        "id, task_id, parent_id, source, username, target_type, target_id, action_name, "
        "action_args, action_version, timeout, expires_at, status, result_code, result_message, "
        "result_data, created_at, updated_at, sent_at, delivered_at, completed_at, attempts, "
        "lease_owner, lease_expires_at, expanded, progress_percent, progress_message, "
        "progress_at, output_chunks, output_bytes"
    )

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Command:
        return cls(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            loads(r[8]) or {},
            r[9],
            r[10],
            r[11],
            r[12],
            r[13],
            r[14],
            loads(r[15]),
            r[16],
            r[17],
            r[18],
            r[19],
            r[20],
            r[21],
            r[22],
            r[23],
            bool(r[24]),
            r[25],
            r[26],
            r[27],
            int(r[28] or 0),
            int(r[29] or 0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "parent_id": self.parent_id,
            "source": self.source,
            "user": self.user,
            "target": {"type": self.target_type, "id": self.target_id},
            "action": {
                "name": self.action_name,
                "args": self.action_args,
                "version": self.action_version,
            },
            "timeout": self.timeout,
            "expires_at": iso(self.expires_at),
            "status": self.status,
            "result": {
                "code": self.result_code,
                "message": self.result_message,
                "data": self.result_data,
            }
            if self.result_code is not None or self.result_message is not None
            else None,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "sent_at": iso(self.sent_at),
            "delivered_at": iso(self.delivered_at),
            "completed_at": iso(self.completed_at),
            "attempts": self.attempts,
            "lease": {"owner": self.lease_owner, "expires_at": iso(self.lease_expires_at)}
            if self.lease_owner
            else None,
            "expanded": self.expanded,
            "progress": {
                "percent": self.progress_percent,
                "message": self.progress_message,
                "at": iso(self.progress_at),
            }
            if self.progress_at is not None
            else None,
            "output": {"chunks": self.output_chunks, "bytes": self.output_bytes},
        }


@dataclass
class Agent:
    id: str
    name: str
    groups: list[str]
    status: str
    version: str | None
    node: str | None
    last_seen: float | None
    config_hash: str | None
    created_at: float
    updated_at: float
    info: dict[str, Any] = field(default_factory=dict)

    COLUMNS = (
        "id, name, groups, status, version, node, last_seen, config_hash, created_at, "
        "updated_at, info"
    )

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Agent:
        return cls(
            r[0],
            r[1],
            loads(r[2]) or [],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            loads(r[10]) or {},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "groups": self.groups,
            "status": self.status,
            "version": self.version,
            "node": self.node,
            "last_seen": iso(self.last_seen),
            "config_hash": self.config_hash,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "info": self.info,
        }


@dataclass
class Group:
    name: str
    config_hash: str | None
    version: int
    created_at: float
    updated_at: float
    members: int = 0
    configuration: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config_hash": self.config_hash,
            "version": self.version,
            "members": self.members,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "configuration": self.configuration,
        }


@dataclass
class Page:
    items: list[Any]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [i.to_json() if hasattr(i, "to_json") else i for i in self.items],
            "next_cursor": self.next_cursor,
        }
