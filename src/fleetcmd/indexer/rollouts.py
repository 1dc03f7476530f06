"""Rollouts: staged delivery of an agent-bound task, its wave scheduler and its controls
(docs/rollouts.md).

The task manager (agent-bound tasks) or the command manager (indexer tasks, at expansion)
writes every agent command of a rollout at once, held, under one parent command per wave.
The scheduler then releases them wave by wave: it runs in the indexer, wakes on results and
on a short timer, and each step of one rollout is one transaction under the rollout's row
lock, computed from what the store holds, so a restart of any process, or two indexers on
one PostgreSQL, neither lose nor repeat a step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fleetcmd.errors import Conflict, InvalidParams, NotFound
from fleetcmd.indexer.reversals import REVERSALS
from fleetcmd.model.catalog import CATALOG, REVERSIBLE, Target
from fleetcmd.model.rollout import (
    CONTROLS,
    Rollout,
    RolloutPolicy,
    State,
    WaveProgress,
    parse_policy,
    plan_waves,
)
from fleetcmd.store import AgentSelection, Fanout
from fleetcmd.store import rollouts as sql
from fleetcmd.store.base import SqlStore, SqlTx

log = logging.getLogger("fleetcmd.rollouts")

ROLLBACK_WINDOW = 24 * 3600.0


# -- when a task with a rollout is written or expanded --------------------------------------------
def validate_request(task_type: str, raw: Any) -> RolloutPolicy:
    spec = CATALOG[task_type]
    if spec.receiver is not Target.AGENT:
        raise InvalidParams(
            f"invalid rollout: '{task_type}' is applied by server nodes, not agents; "
            "only agent-bound tasks can be rolled out"
        )
    return parse_policy(task_type, raw)


def begin(tx: SqlTx, task_id: int, task_type: str, policy: RolloutPolicy, parsed: Any) -> None:
    """Inside the task's first transaction: the rollout row, and the staging of its fan-out."""
    sql.insert(tx, task_id, policy.model_dump(mode="json"), capture(tx, task_type, parsed))
    tx.stage = stager(policy, task_type)


def prepare_expansion(tx: SqlTx, task_id: int, task_type: str, parsed: Any) -> None:
    """Before the command manager changes the index: remember the state the change replaces
    (the inverse a rollback sends) and stage the fan-out into waves."""
    r = sql.row(tx, task_id)
    if r is None or r["planned"]:
        return
    sql.update(tx, task_id, inverse=capture(tx, task_type, parsed))
    tx.stage = stager(RolloutPolicy.model_validate(r["policy"]), task_type)


def capture(tx: SqlTx, task_type: str, parsed: Any) -> dict[str, Any] | None:
    """What the change replaces, read before the index changes (None: not reversible)."""
    reverse = REVERSALS.get(task_type)
    return None if reverse is None else reverse.capture(tx, parsed)


def stager(policy: RolloutPolicy, task_type: str) -> Callable[[SqlTx, Fanout, AgentSelection], int]:
    def stage(tx: SqlTx, fanout: Fanout, selection: AgentSelection) -> int:
        first = len(sql.waves(tx, fanout.task_id))
        planned = plan_waves(policy, sql.targets(tx, selection))
        n = sum(
            sql.write_wave(tx, fanout, first + i, agents, task_type == "agent-upgrade")
            for i, agents in enumerate(planned)
        )
        sql.update(tx, fanout.task_id, planned=1, next_at=tx.now)
        log.info("task %s: rollout of %d commands in %d wave(s)", fanout.task_id, n, len(planned))
        return n

    return stage


# -- reading --------------------------------------------------------------------------------------
def _progress(ws: list[dict[str, Any]], policy: RolloutPolicy) -> list[WaveProgress]:
    return [
        WaveProgress(
            wave=int(w["wave"]),
            size=int(w["size"]),
            released=int(w["released"]),
            offline=int(w["offline"]),
            counts=w["counts"],
            started_at=w["started_at"],
            settled_at=w["settled_at"],
            canary=policy.canary is not None and int(w["wave"]) == 0,
        )
        for w in ws
    ]


def _rollout(tx: SqlTx, r: dict[str, Any]) -> Rollout:
    policy = RolloutPolicy.model_validate(r["policy"])
    return Rollout(
        task_id=int(r["task_id"]),
        policy=policy,
        state=State(r["state"]),
        current_wave=int(r["current_wave"]),
        reason=r["reason"],
        inverse=r["inverse"],
        rollback_task_id=r["rollback_task_id"],
        baseline_errors=int(r["baseline_errors"]),
        baseline_delivered=int(r["baseline_delivered"]),
        next_at=r["next_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        waves=_progress(sql.waves(tx, int(r["task_id"])), policy),
    )


def progress(store: SqlStore, task_id: int) -> dict[str, Any]:
    """A rollout's state and per-wave numbers, read from kept counts (no stream scan)."""
    with store.reading() as tx:
        r = sql.row(tx, task_id)
        if r is None:
            of = sql.rollback_of(tx, task_id)
            if of is not None:
                return {"task_id": task_id, "rollback_of": of}
            raise NotFound(f"task {task_id} has no rollout")
        return _rollout(tx, r).to_json()


# -- control --------------------------------------------------------------------------------------
def audit(tx: SqlTx, task_id: int, action: str, actor: str, **details: Any) -> None:
    """One audit record per control action (and per automatic trip), written in the action's
    own transaction: the record exists if and only if the action happened."""
    origin = details.pop("origin", None) or {}
    tx.append_audit(
        {
            "actor": actor,
            "action": f"rollout.{action}",
            "outcome": "success",
            "address": origin.get("address"),
            "node": origin.get("node"),
            "target": f"task:{task_id}",
            "details": {"source": origin.get("source", "command-manager"), **details},
        }
    )


def control(
    store: SqlStore,
    task_id: int,
    action: str,
    user: str,
    source: str,
    reason: str = "",
    address: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """pause | resume | abort | rollback, audited; 409 when the state does not allow it."""
    if action not in CONTROLS:
        raise InvalidParams(f"unknown rollout action '{action}'", known=sorted(CONTROLS))
    with store.transaction() as tx:
        r = sql.row(tx, task_id, lock="wait")
        if r is None:
            raise NotFound(f"task {task_id} has no rollout")
        ro = _rollout(tx, r)
        if ro.state not in CONTROLS[action]:
            raise Conflict(
                f"rollout of task {task_id} is {ro.state}: it cannot {action}",
                state=str(ro.state),
                allowed_from=sorted(CONTROLS[action]),
            )
        why = reason or f"{action} by {user}"
        detail: dict[str, Any] = {"from_state": str(ro.state), "reason": why}
        if action == "pause":
            detail["held_back"] = _pause(tx, ro, why)
        elif action == "resume":
            sql.update(
                tx,
                task_id,
                state=State.RUNNING.value,
                reason=None,
                baseline_errors=ro.errors,
                baseline_delivered=ro.delivered,
                next_at=tx.now,
            )
        elif action == "abort":
            waves = [_wave_command(tx, task_id, w.wave) for w in ro.waves]
            detail["cancelled"] = sql.cancel_undelivered(tx, waves, f"rollout aborted: {why}")
            sql.update(tx, task_id, state=State.ABORTED.value, reason=why)
        else:
            task_type = _task_type(tx, task_id)
            if task_type not in REVERSIBLE:
                raise Conflict(f"'{task_type}' has no inverse to roll back to")
            detail.update(_rollback(tx, ro, task_type, user, source, why))
        origin = {"source": source, "address": address, "node": node}
        audit(tx, task_id, action, user, origin=origin, **detail)
    log.info("task %s: rollout %s by %s/%s (%s)", task_id, action, source, user, why)
    return progress(store, task_id)


def _task_type(tx: SqlTx, task_id: int) -> str:
    r = sql.task_fields(tx, task_id, "type")
    if r is None:
        raise NotFound(f"task {task_id} not found")
    return str(r[0])


def _wave_command(tx: SqlTx, task_id: int, wave: int) -> int:
    r = sql.wave_command(tx, task_id, wave)
    assert r is not None
    return r


def _pause(tx: SqlTx, ro: Rollout, why: str) -> int:
    """Stop releasing, and take back released commands that no agent has claimed yet."""
    held = 0
    for w in ro.waves:
        if w.released:
            n = sql.hold(tx, _wave_command(tx, ro.task_id, w.wave))
            if n:
                sql.update_wave(tx, ro.task_id, w.wave, released=w.released - n)
                held += n
    sql.update(tx, ro.task_id, state=State.PAUSED.value, reason=why)
    return held


def _rollback(
    tx: SqlTx, ro: Rollout, task_type: str, user: str, source: str, why: str
) -> dict[str, Any]:
    """Stop the rollout and send the inverse to every agent that applied the change, as a new
    task linked to the rollout (`rollback_task_id`). Commands already delivered keep running;
    an agent whose result comes in as a success later gets the inverse then (`follow_up`)."""
    waves = [_wave_command(tx, ro.task_id, w.wave) for w in ro.waves]
    cancelled = sql.cancel_undelivered(tx, waves, f"rollout rolled back: {why}")
    applied = sql.applied(tx, waves)
    inverse = ro.inverse or {}
    params = {"rollback_of": ro.task_id, "agents": len(applied), "inverse": inverse}
    rb = tx.insert_task(task_type, params, source, user, None)
    plan = _undo_index(tx, task_type, inverse, rb)
    sent = _send_inverse(tx, rb, plan, applied, source, user)
    tx.touched_tasks.add(rb)
    sql.update(
        tx,
        ro.task_id,
        state=State.ROLLED_BACK.value,
        reason=why,
        rollback_task_id=rb,
        inverse={**inverse, "plan": plan},
    )
    log.warning(
        "task %s: rolled back (%s); rollback task %s sends the inverse to %d agent(s)",
        ro.task_id,
        why,
        rb,
        sent,
    )
    return {"rollback_task_id": rb, "cancelled": cancelled, "inverse_sent": sent}


def _undo_index(tx: SqlTx, task_type: str, inverse: dict[str, Any], rb: int) -> dict[str, Any]:
    """Put the index back as it was; returns what each agent that applied the change gets."""
    spec = CATALOG[task_type]
    args, with_groups = REVERSALS[task_type].undo(tx, inverse, rb)
    assert args.action == spec.action, (args.action, spec.action)
    return {
        "action": spec.action,
        "timeout": spec.timeout,
        "with_groups": with_groups,
        "args": args.dump(),
        # agent-upgrade: each agent goes back to the version it ran before (per agent)
        "to_previous_version": task_type == "agent-upgrade",
    }


def _send_inverse(
    tx: SqlTx,
    rb: int,
    plan: dict[str, Any],
    applied: list[tuple[str, dict[str, Any]]],
    source: str,
    user: str,
) -> int:
    groups: dict[str, list[str]] = {}
    for agent, done in applied:
        if plan.get("to_previous_version"):
            before = done.get("from_version")
            if isinstance(before, str) and before:
                groups.setdefault(before, []).append(agent)
        else:
            groups.setdefault("", []).append(agent)
    sent = 0
    for version, ids in sorted(groups.items()):
        args = dict(plan["args"], **({"version": version} if version else {}))
        fan = Fanout(
            rb,
            None,
            source,
            user,
            plan["action"],
            args,
            plan["timeout"],
            tx.now + ROLLBACK_WINDOW,
            plan["with_groups"],
        )
        sent += tx.fan_out(fan, AgentSelection(ids=tuple(ids)))
    return sent


def follow_up(tx: SqlTx, task_id: int) -> int:
    """A rolled-back rollout whose delivered commands were still running: agents that
    report success afterwards get the inverse too, in the same rollback task."""
    r = sql.row(tx, task_id, lock="skip")
    if r is None or r["state"] != State.ROLLED_BACK or not r["rollback_task_id"]:
        return 0
    plan = (r["inverse"] or {}).get("plan")
    rb = int(r["rollback_task_id"])
    if plan is None:
        return 0
    waves = [int(w["command_id"]) for w in sql.waves(tx, task_id)]
    late = sql.applied_not_undone(tx, waves, rb)
    sent = 0
    if late:
        task = sql.task_fields(tx, rb, "source", "username")
        assert task is not None
        sent = _send_inverse(tx, rb, plan, late, str(task[0]), str(task[1]))
        log.info("task %s: %d late success(es) get the inverse in task %s", task_id, sent, rb)
    done = sql.task_fields(tx, task_id, "completed_at")
    if done is not None and done[0] is not None:
        sql.update(tx, task_id, next_at=None)  # its last look: nothing can succeed any more
    return sent


# -- the scheduler --------------------------------------------------------------------------------
class RolloutScheduler:
    """Steps every running rollout; `run_once` returns how long it may sleep."""

    IDLE = 1.0
    BUSY = 0.25

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def run_once(self) -> float:
        with self.store.reading() as tx:
            due = sql.running(tx)
            undoing = sql.rolled_back_unsettled(tx)
        for task_id in due:
            try:
                self.step(task_id)
            except Exception:
                log.exception("task %s: rollout step failed", task_id)
        for task_id in undoing:
            try:
                with self.store.transaction() as tx:
                    follow_up(tx, task_id)
            except Exception:
                log.exception("task %s: rollback follow-up failed", task_id)
        return self.BUSY if due or undoing else self.IDLE

    def step(self, task_id: int) -> None:
        with self.store.transaction() as tx:
            r = sql.row(tx, task_id, lock="skip")
            if r is None or r["state"] != State.RUNNING or not r["planned"]:
                return
            ro = _rollout(tx, r)
            task = sql.task_fields(tx, task_id, "cancelled", "completed_at", "username", "type")
            if task is None:
                return
            if task[0]:
                sql.update(tx, task_id, state=State.ABORTED.value, reason="task cancelled")
                return
            self._count_offline(tx, ro)
            if self._tripped(tx, ro, user=str(task[2]), task_type=str(task[3])):
                return
            self._advance(tx, ro)
            if task[1] is not None and all(w.held == 0 for w in ro.waves):
                sql.update(tx, task_id, state=State.COMPLETED.value, next_at=None)
                log.info("task %s: rollout completed", task_id)

    def _count_offline(self, tx: SqlTx, ro: Rollout) -> None:
        for w in ro.waves[: ro.current_wave + 1]:
            if w.waiting or w.offline:
                n = sql.offline(tx, _wave_command(tx, ro.task_id, w.wave)) if w.waiting else 0
                if n != w.offline:
                    sql.update_wave(tx, ro.task_id, w.wave, offline=n)
                    w.offline = n

    def _tripped(self, tx: SqlTx, ro: Rollout, user: str, task_type: str) -> bool:
        th = ro.policy.error_threshold
        errors, delivered = ro.errors - ro.baseline_errors, ro.delivered - ro.baseline_delivered
        if th is None or not th.tripped(errors, delivered):
            return False
        why = (
            f"error threshold tripped: {errors} of {delivered} delivered command(s) failed "
            "or timed out"
        )
        detail: dict[str, Any] = {"from_state": str(ro.state), "reason": why}
        detail["held_back"] = _pause(tx, ro, why)
        audit(tx, ro.task_id, "trip", "fleetcmd", **detail)
        if ro.policy.on_trip == "rollback" and task_type in REVERSIBLE:
            ro.state = State.PAUSED
            out = _rollback(tx, ro, task_type, user, "command-manager", why)
            audit(tx, ro.task_id, "rollback", "fleetcmd", reason=why, **out)
        log.warning("task %s: %s; rollout %s", ro.task_id, why, ro.policy.on_trip)
        return True

    def _advance(self, tx: SqlTx, ro: Rollout) -> None:
        """Release what the current wave may release now; start the next wave once this one
        has settled (nothing in flight: offline agents do not hold it) and its pause is over."""
        policy = ro.policy
        now = tx.now
        cur = ro.current_wave
        while cur < len(ro.waves):
            w = ro.waves[cur]
            if w.started_at is None:
                w.started_at = now
                sql.update_wave(tx, ro.task_id, cur, started_at=now)
            if w.released < w.size:
                allowed = w.size
                if policy.waves.spread > 0:
                    share = (now - w.started_at) / policy.waves.spread
                    allowed = min(w.size, max(1, math.ceil(w.size * share)))
                budget = w.size
                if policy.max_in_flight is not None:
                    budget = policy.max_in_flight - sum(x.in_flight for x in ro.waves)
                n = min(allowed - w.released, budget)
                if n > 0:
                    grace = policy.offline_grace or ROLLBACK_WINDOW
                    got = sql.release(tx, _wave_command(tx, ro.task_id, cur), n, now + grace)
                    sql.update_wave(tx, ro.task_id, cur, released=w.released + got)
                return
            if w.in_flight:
                return
            if w.settled_at is None:
                w.settled_at = now
                sql.update_wave(tx, ro.task_id, cur, settled_at=now)
            if cur + 1 >= len(ro.waves) or now < w.settled_at + policy.waves.pause:
                return
            cur += 1
            sql.update(tx, ro.task_id, current_wave=cur, next_at=now)
            ro.current_wave = cur
