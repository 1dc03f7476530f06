"""The task manager: a task in, its first command(s) written to the stream, in one transaction.

Attended tasks come from people (dashboard, Management API); unattended ones from the content
manager and the engine. Agent-bound tasks are expanded here, one command per agent; server-bound
ones once per registered server node (seed: "2- Write command" / "3- Write N(agents) command").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from fleetcmd.errors import Conflict, Forbidden, InvalidParams
from fleetcmd.indexer import freezes, rollouts, windows
from fleetcmd.indexer.parts import NOTHING, PARTS
from fleetcmd.model import params as p
from fleetcmd.model import selectors
from fleetcmd.model.approvals import POLICY_DOC, POLICY_INDEX, ApprovalPolicy
from fleetcmd.model.catalog import CommandSpec, Expansion, Target, validate
from fleetcmd.model.records import Task, dumps
from fleetcmd.model.targets import AgentScope, AgentSelection
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
    # Where a scoped user may file it: a selector's matches are narrowed to it.
    scope: AgentScope | None = None
    # The frozen set a preview made (`preview`): the task reaches exactly those agents.
    preview_token: str | None = None
    # A re-run (`rerun`): the original task and the set of its agents to run on again.
    rerun_of: int | None = None
    rerun_statuses: tuple[str, ...] = ()
    # The filer holds `freeze:override` and asks to file through a freeze (audited).
    override_freeze: bool = False
    # Its agent commands run only inside their agents' maintenance windows; one not
    # delivered before its window closes waits for the "next" or ends ("expire").
    window: str | None = None
    # Set by the freeze check: a holding freeze covers some of its agents (indexer/freezes.py).
    freeze_hold: bool = False


class TaskManager:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def submit(self, req: TaskRequest) -> tuple[Task, bool]:
        """Validate and write a task. Returns the task and whether it was created now (False:
        the idempotency key had been seen, nothing was written)."""
        spec, parsed = self._validate(req)
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

    def _validate(self, req: TaskRequest) -> tuple[CommandSpec, p.Params]:
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
        windows.check_request(req.window, spec.expansion is Expansion.BY_TASK_MANAGER, req.rollout)
        return spec, parsed

    def check(self, req: TaskRequest) -> None:
        """What `submit` refuses before it opens a transaction (a schedule checks its task so
        when it is created)."""
        self._validate(req)

    def write_in(self, tx: SqlTx, req: TaskRequest) -> int:
        """Validate and write a task inside the caller's transaction (the scheduler files an
        occurrence and records it in one), without the idempotency replay of `submit`."""
        spec, parsed = self._validate(req)
        return self._write(tx, spec, parsed, req)

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
        selection = self._selection(tx, spec, parsed)
        target_set = self._target_set(tx, spec, parsed, params, req, selection)
        if freezes.check(
            tx,
            spec,
            parsed,
            req.user,
            req.override_freeze,
            selection,
            target_set,
            can_hold=spec.expansion is Expansion.BY_TASK_MANAGER
            and req.window is None
            and req.rollout is None,
        ):
            req = replace(req, freeze_hold=True)
        approval = self._approval(tx, spec, parsed, req, selection, target_set)
        if approval is not None and target_set is None and selection is not None:
            # Approvers approve the agents it reaches now, not whatever matches later.
            target_set = tx.freeze(
                selection, user=req.user, task_type=spec.task_type, params=params, ttl=0.0
            )[0]
        task_id = tx.insert_task(
            spec.task_type,
            params,
            req.source,
            req.user,
            req.idempotency_key,
            rerun_of=req.rerun_of,
            target_set=target_set,
            approval=approval,
        )
        if target_set is not None:
            tx.bind_target_set(target_set, task_id)
        if req.audit is not None:
            tx.append_audit({**req.audit, "target": f"task:{task_id}"})
        if approval is None:
            self.write_commands(tx, task_id, spec, parsed, req, target_set)
        return task_id

    def write_commands(
        self,
        tx: SqlTx,
        task_id: int,
        spec: CommandSpec,
        parsed: p.Params,
        req: TaskRequest,
        target_set: int | None,
    ) -> None:
        """The task's index change and first commands: when it is filed, or, for a task an
        approval policy holds, when its last approval comes in (indexer/approvals.py)."""
        params = parsed.stored()
        timeout = req.timeout or spec.timeout
        default = DEFAULT_DELIVERY_WINDOW if req.window is None else windows.DEFAULT_HELD_DEADLINE
        expires_at = tx.now + (req.expires_in or default)
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
            selection = (
                AgentSelection(frozen=target_set)
                if target_set is not None
                else parsed.selection(tx)
            )
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
            if req.window is not None:
                tx.hold_for_windows(task_id, req.window)
            elif req.freeze_hold:
                tx.hold_for_windows(task_id, windows.FREEZE)
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

    # -- targets and approvals ----------------------------------------------------------------
    @staticmethod
    def _selection(tx: SqlTx, spec: CommandSpec, parsed: p.Params) -> AgentSelection | None:
        """The agents a type reaches through its selection (agent-bound types)."""
        return parsed.selection(tx)

    def _target_set(
        self,
        tx: SqlTx,
        spec: CommandSpec,
        parsed: p.Params,
        params: dict[str, Any],
        req: TaskRequest,
        selection: AgentSelection | None,
    ) -> int | None:
        if req.rerun_of is not None:
            set_id, size = tx.freeze_rerun(
                req.rerun_of,
                list(req.rerun_statuses),
                req.scope,
                user=req.user,
                task_type=spec.task_type,
                params=params,
            )
            if size == 0:
                raise InvalidParams(
                    f"no agent of task {req.rerun_of} ended in "
                    f"{', '.join(req.rerun_statuses)}: nothing to re-run"
                )
            return set_id
        if req.preview_token is not None:
            if selection is None:
                raise InvalidParams(f"{spec.task_type} reaches no agents by a selection")
            return tx.claim_target_set(
                req.preview_token, user=req.user, task_type=spec.task_type, params=params
            )
        if selection is not None and selection.selector is not None:
            # A selector is evaluated once, when the task is filed, within the user's scope.
            scoped = AgentSelection(selector=selection.selector, scope=req.scope)
            return tx.freeze(
                scoped, user=req.user, task_type=spec.task_type, params=params, ttl=0.0
            )[0]
        return None

    def _approval(
        self,
        tx: SqlTx,
        spec: CommandSpec,
        parsed: p.Params,
        req: TaskRequest,
        selection: AgentSelection | None,
        target_set: int | None,
    ) -> dict[str, Any] | None:
        """What the approval policy asks of this task (None: nothing, write it now)."""
        if req.source not in ATTENDED_SOURCES:
            return None
        doc = tx.document(POLICY_INDEX, POLICY_DOC)
        if not doc:
            return None
        policy = ApprovalPolicy.model_validate(doc)
        agents: int | None = None
        if target_set is not None:
            agents = tx.target_set_size(target_set)
        elif selection is not None:
            agents = tx.count_agents(selection)
        required = policy.required(spec.task_type, agents, _targets_all(parsed))
        if required is None:
            return None
        return {
            "required": required.approvals,
            "deadline": tx.now + required.within,
            "rules": required.rules,
            "agents": agents,
            "approved_by": [],
            "request": {
                "timeout": req.timeout,
                "expires_in": req.expires_in,
                "rollout": req.rollout,
                "window": req.window,
                "freeze_hold": req.freeze_hold,
            },
        }

    def preview(self, req: TaskRequest, ttl: float) -> dict[str, Any]:
        """Freeze what the task would reach now, without writing it: the summary and the
        token a task filed with the same type and params reaches exactly that set with."""
        spec, parsed = validate(req.type, req.params)
        with self.store.transaction() as tx:
            self._check_references(tx, spec, parsed)
            selection = parsed.selection(tx)
            if selection is None:
                raise InvalidParams(
                    f"{spec.task_type} reaches no agents by a selection: nothing to preview"
                )
            excluded = 0
            if selection.selector is not None and req.scope is not None:
                selection = AgentSelection(selector=selection.selector, scope=req.scope)
                excluded = tx.count_agents(AgentSelection(selector=selection.selector))
            set_id, token, size = tx.freeze(
                selection,
                user=req.user,
                task_type=spec.task_type,
                params=parsed.stored(),
                ttl=ttl,
            )
            summary = tx.frozen_summary(set_id, size, selection)
            approval = self._approval(tx, spec, parsed, req, selection, set_id)
        return {
            **summary,
            "excluded_by_rbac": max(0, excluded - size),
            "preview_token": token,
            "expires_at": tx.now + ttl,
            "needs_approval": None
            if approval is None
            else {"required": approval["required"], "within": approval["deadline"] - tx.now},
        }

    def rerun(self, task_id: int, statuses: list[str], req: TaskRequest) -> tuple[Task, bool]:
        """A new task of the same type and params as `task_id`, reaching exactly the agents
        whose commands of it ended in `statuses` (within the re-runner's scope)."""
        original = self.store.get_task(task_id)
        _, parsed = validate(original.type, original.params)
        if type(parsed).selection is p.Params.selection:
            raise InvalidParams(f"{original.type} reaches no agents by a selection: no re-run")
        return self.submit(
            TaskRequest(
                original.type,
                original.params,
                req.source,
                req.user,
                req.idempotency_key,
                req.timeout,
                req.expires_in,
                None,
                req.audit,
                req.scope,
                rerun_of=task_id,
                rerun_statuses=tuple(statuses),
            )
        )

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


def _targets_all(parsed: p.Params) -> bool:
    """The task reaches every agent: `all`, or the selector `all`."""
    target = parsed.target if isinstance(parsed, p.ActiveResponseExecution) else parsed
    if not isinstance(target, p.AgentSelector):
        return parsed.reach().everything
    if target.all:
        return True
    return target.selector is not None and isinstance(
        selectors.parse(target.selector), selectors.Every
    )
