"""The task manager: a task in, its first command(s) written to the stream, in one transaction.

Attended tasks come from people (dashboard, Management API); unattended ones from the content
manager and the engine. Agent-bound tasks are expanded here, one command per agent; server-bound
ones once per registered server node (seed: "2- Write command" / "3- Write N(agents) command").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fleetcmd.errors import Conflict, Forbidden, InvalidParams
from fleetcmd.indexer import rollouts
from fleetcmd.indexer.parts import NOTHING, PARTS
from fleetcmd.model import params as p
from fleetcmd.model.catalog import CommandSpec, Expansion, Target, validate
from fleetcmd.model.records import Task, dumps
from fleetcmd.store import Fanout, NewCommand
from fleetcmd.store.base import SqlStore, SqlTx

log = logging.getLogger("fleetcmd.task_manager")

ATTENDED_SOURCES = frozenset({"dashboard", "management-api"})
UNATTENDED_SOURCES = frozenset({"content-manager", "engine"})
SOURCES = ATTENDED_SOURCES | UNATTENDED_SOURCES
DEFAULT_DELIVERY_WINDOW = 24 * 3600.0
NODE_MAX_AGE = 30.0


@dataclass(frozen=True)
class TaskRequest:
    type: str
    params: dict[str, Any]
    source: str = "management-api"
    user: str = "system"
    idempotency_key: str | None = None
    timeout: float | None = None  # execution timeout per command, seconds
    expires_in: float | None = None  # delivery window, seconds
    rollout: dict[str, Any] | None = None  # a rollout policy (docs/rollouts.md)
    # Written with the task (tasks a node files in its own name: `user_proofs`).
    audit: dict[str, Any] | None = None


class TaskManager:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def submit(self, req: TaskRequest) -> tuple[Task, bool]:
        """Validate and write a task. Returns the task and whether it was created now (False:
        the idempotency key had been seen, nothing was written)."""
        spec, parsed = validate(req.type, req.params)
        if req.source not in SOURCES:
            raise InvalidParams(f"unknown source '{req.source}'", known=sorted(SOURCES))
        if req.source in ATTENDED_SOURCES and not spec.attended:
            raise Forbidden(f"'{spec.task_type}' is filed by the content manager only")
        if req.source in UNATTENDED_SOURCES and not spec.unattended:
            raise Forbidden(f"'{spec.task_type}' cannot be filed by the {req.source}")
        for name, value in (("timeout", req.timeout), ("expires_in", req.expires_in)):
            if value is not None and not 0 < value <= 30 * 86400:
                raise InvalidParams(f"'{name}' must be between 0 and 30 days, in seconds")
        if req.idempotency_key is not None and not 0 < len(req.idempotency_key) <= 200:
            raise InvalidParams("'idempotency_key' must be 1-200 characters")
        if req.rollout is not None:
            rollouts.validate_request(spec.task_type, req.rollout)
        existing: int | None = None
        try:
            with self.store.transaction() as tx:
                if req.idempotency_key is not None:
                    existing = tx.task_by_key(req.idempotency_key)
                if existing is None:
                    task_id = self._write(tx, spec, parsed, req)
        except Exception:
            # Two submissions raced on one key: the loser reads the winner's task.
            if req.idempotency_key is not None:
                with self.store.reading() as rtx:
                    existing = rtx.task_by_key(req.idempotency_key)
                if existing is not None:
                    return self._replay(existing, req), False
            raise
        if existing is not None:
            return self._replay(existing, req), False
        log.info("task %s accepted: %s by %s/%s", task_id, spec.task_type, req.source, req.user)
        return self.store.get_task(task_id), True

    def _replay(self, task_id: int, req: TaskRequest) -> Task:
        task = self.store.get_task(task_id)
        _, parsed = validate(req.type, req.params)
        if task.type != req.type or dumps(task.params) != dumps(parsed.stored()):
            raise Conflict(
                f"idempotency key already used by task {task_id} with another request",
                task_id=task_id,
            )
        return task

    def _write(self, tx: SqlTx, spec: CommandSpec, parsed: p.Params, req: TaskRequest) -> int:
        self._check_references(tx, spec, parsed)
        params = parsed.stored()
        task_id = tx.insert_task(spec.task_type, params, req.source, req.user, req.idempotency_key)
        if req.audit is not None:
            tx.append_audit({**req.audit, "target": f"task:{task_id}"})
        timeout = req.timeout or spec.timeout
        expires_at = tx.now + (req.expires_in or DEFAULT_DELIVERY_WINDOW)
        if req.rollout is not None:
            policy = rollouts.validate_request(spec.task_type, req.rollout)
            rollouts.begin(tx, task_id, spec.task_type, policy, parsed)
        index_first = PARTS.get(spec.task_type, NOTHING).index_first
        if index_first is not None:
            index_first(tx, parsed)
        if spec.expansion is Expansion.BY_COMMAND_MANAGER:
            tx.insert_commands(
                task_id,
                req.source,
                req.user,
                timeout,
                expires_at,
                [NewCommand(Target.INDEXER, "command-manager", spec.task_type, params)],
            )
        elif spec.expansion is Expansion.BY_TASK_MANAGER:
            selection = parsed.selection(tx)
            if selection is None:
                raise InvalidParams(f"{spec.task_type}: no agent selection")
            tx.fan_out(
                Fanout(
                    task_id,
                    None,
                    req.source,
                    req.user,
                    spec.action,
                    parsed.agent_args(),
                    timeout,
                    expires_at,
                ),
                selection,
            )
        else:
            nodes = tx.active_nodes(NODE_MAX_AGE) or ["*"]
            tx.insert_commands(
                task_id,
                req.source,
                req.user,
                timeout,
                expires_at,
                [NewCommand(Target.SERVER, node, spec.action, params) for node in nodes],
            )
        return task_id

    # -- checks before anything is written ------------------------------------------------------
    def _check_references(self, tx: SqlTx, spec: CommandSpec, parsed: p.Params) -> None:
        named = parsed.names()
        if named.agents:
            agents = list(dict.fromkeys(named.agents))
            missing = sorted(set(agents) - tx.known_agents(agents))
            if missing:
                raise InvalidParams(
                    f"{spec.task_type}: {len(missing)} unknown agent(s): "
                    + ", ".join(missing[:20]),
                    unknown_agents=missing[:100],
                )
        for g in dict.fromkeys(named.groups):
            if tx.group(g) is None:
                raise InvalidParams(
                    f"{spec.task_type}: group '{g}' does not exist (a group-configuration-change "
                    "creates it)",
                    unknown_group=g,
                )
        check = PARTS.get(spec.task_type, NOTHING).check
        if check is not None:
            check(tx, parsed)
