"""The SQL of rollouts, kept together (docs/rollouts.md). Every function runs inside a caller's
transaction (`SqlTx`), so a control action or a scheduler step commits whole or not at all.

Layout in the stream: each wave is a parent command (`rollout-wave`, target indexer, handed on
from the start) and its agents' commands are its children, so the per-wave counts are the
parent counts the store already keeps in `progress`. A child of a wave not yet released has
target type `agent-held`: no claimer asks for it, and releasing it changes its target type,
not its status, so no count moves.
"""

from __future__ import annotations

from typing import Any, Literal

from fleetcmd.model.records import dumps, loads
from fleetcmd.model.rollout import HELD, HELD_EXPIRY, WAVE_ACTION
from fleetcmd.model.status import Status
from fleetcmd.model.targets import AgentSelection
from fleetcmd.store.base import SqlTx
from fleetcmd.store.types import Fanout, chunks

ROLLOUT_COLS = (
    "task_id, policy, state, planned, current_wave, reason, inverse, rollback_task_id, "
    "baseline_errors, baseline_delivered, next_at, created_at, updated_at"
)
WAVE_COLS = "wave, command_id, size, released, offline, started_at, settled_at"


def _sqlite(tx: SqlTx) -> bool:
    return tx.store.url.startswith("sqlite")


# -- the rollout row ------------------------------------------------------------------------------
def insert(tx: SqlTx, task_id: int, policy: dict[str, Any], inverse: Any) -> None:
    tx.ex(
        "INSERT INTO rollouts (task_id, policy, state, inverse, created_at, updated_at) "
        "VALUES (:t, :p, 'running', :inv, :now, :now)",
        {"t": task_id, "p": dumps(policy), "inv": dumps(inverse), "now": tx.now},
    )


def row(tx: SqlTx, task_id: int, lock: Literal["", "wait", "skip"] = "") -> dict[str, Any] | None:
    """The rollout of a task. `lock` takes its row lock, waiting for it (control actions) or
    skipping the row when another process holds it (the scheduler: two indexers never step
    one rollout at once). SQLite's transactions already hold its one write lock."""
    suffix = tx.store.for_update if lock else ""
    if lock == "skip" and suffix:
        suffix += " SKIP LOCKED"
    r = tx.one(f"SELECT {ROLLOUT_COLS} FROM rollouts WHERE task_id = :t{suffix}", {"t": task_id})
    if r is None:
        return None
    keys = [c.strip() for c in ROLLOUT_COLS.split(",")]
    doc = dict(zip(keys, r, strict=True))
    doc["policy"] = loads(doc["policy"])
    doc["inverse"] = loads(doc["inverse"])
    return doc


def update(tx: SqlTx, task_id: int, **fields: Any) -> None:
    if "inverse" in fields:
        fields["inverse"] = dumps(fields["inverse"])
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    tx.ex(
        f"UPDATE rollouts SET {sets}, updated_at = :_now WHERE task_id = :_t",
        {**fields, "_now": tx.now, "_t": task_id},
    )


def running(tx: SqlTx) -> list[int]:
    """Rollouts the scheduler steps."""
    return [
        int(r[0])
        for r in tx.all(
            "SELECT task_id FROM rollouts WHERE state = 'running' AND planned = 1 ORDER BY task_id"
        )
    ]


def rolled_back_unsettled(tx: SqlTx) -> list[int]:
    """Rolled-back rollouts whose own task had commands running on agents when it was rolled
    back, until a look after the task became final (which touches `updated_at`)."""
    return [
        int(r[0])
        for r in tx.all(
            "SELECT r.task_id FROM rollouts r JOIN tasks t ON t.id = r.task_id "
            "WHERE r.state = 'rolled_back' AND (t.completed_at IS NULL "
            "OR t.completed_at >= r.updated_at) ORDER BY r.task_id"
        )
    ]


def rollback_of(tx: SqlTx, task_id: int) -> int | None:
    r = tx.one("SELECT task_id FROM rollouts WHERE rollback_task_id = :t", {"t": task_id})
    return None if r is None else int(r[0])


# -- planning: waves written held -----------------------------------------------------------------
def targets(tx: SqlTx, selection: AgentSelection) -> list[str]:
    params: dict[str, Any] = {}
    return [
        r[0]
        for r in tx.all(f"SELECT a.id {tx.selection_sql(selection, params)} ORDER BY a.id", params)
    ]


def _child_args_sql(tx: SqlTx, with_groups: bool, with_version: bool) -> str:
    """The child's args: the fan-out's, plus the agent's groups and its version before the
    change (what a rollback of an upgrade goes back to), taken from the agent row `a`."""
    if _sqlite(tx):
        expr = ":args"
        if with_groups:
            expr = f"json_set({expr}, '$.groups', json(a.groups))"
        if with_version:
            expr = f"json_set({expr}, '$.from_version', a.version)"
        return expr
    expr = "CAST(:args AS jsonb)"
    if with_groups:
        expr += " || jsonb_build_object('groups', CAST(a.groups AS jsonb))"
    if with_version:
        expr += " || jsonb_build_object('from_version', a.version)"
    return f"({expr})::text"


def write_wave(tx: SqlTx, fanout: Fanout, wave: int, agents: list[str], with_version: bool) -> int:
    """One wave: its parent command, its agents' commands (held) and its row. Returns the
    number of agent commands written."""
    parent = tx.one(
        "INSERT INTO commands (task_id, parent_id, source, username, target_type, target_id, "
        "action_name, action_args, timeout, expires_at, status, created_at, updated_at, "
        "sent_at, expanded) VALUES (:task, :parent, :source, :user, 'indexer', 'rollout', "
        ":action, :args, :timeout, :expires, 'sent', :now, :now, :now, 1) RETURNING id",
        {
            "task": fanout.task_id,
            "parent": fanout.parent_id,
            "source": fanout.source,
            "user": fanout.user,
            "action": WAVE_ACTION,
            "args": dumps({"wave": wave, "size": len(agents)}),
            "timeout": fanout.timeout,
            "expires": tx.now + HELD_EXPIRY,
            "now": tx.now,
        },
    )
    assert parent is not None
    wave_id = int(parent[0])
    tx.count(fanout.parent_id, fanout.task_id, True, "sent", +1)
    n = 0
    for part in chunks(agents, 20_000):
        params: dict[str, Any] = {
            "task": fanout.task_id,
            "parent": wave_id,
            "source": fanout.source,
            "user": fanout.user,
            "held": HELD,
            "action": fanout.action_name,
            "args": dumps(fanout.action_args),
            "timeout": fanout.timeout,
            "expires": tx.now + HELD_EXPIRY,
            "now": tx.now,
        }
        source = tx.selection_sql(AgentSelection(ids=tuple(part)), params)
        args = _child_args_sql(tx, fanout.with_groups, with_version)
        cur = tx.ex(
            "INSERT INTO commands (task_id, parent_id, source, username, target_type, "
            "target_id, action_name, action_args, timeout, expires_at, status, created_at, "
            f"updated_at) SELECT :task, :parent, :source, :user, :held, a.id, :action, {args}, "
            f":timeout, :expires, 'pending', :now, :now {source} ORDER BY a.id",
            params,
        )
        n += int(cur.rowcount)
    tx.count(wave_id, fanout.task_id, False, "pending", n)
    tx.touched_tasks.add(fanout.task_id)
    tx.ex(
        "INSERT INTO rollout_waves (task_id, wave, command_id, size) VALUES (:t, :w, :c, :n)",
        {"t": fanout.task_id, "w": wave, "c": wave_id, "n": n},
    )
    return n


# -- waves ----------------------------------------------------------------------------------------
def waves(tx: SqlTx, task_id: int) -> list[dict[str, Any]]:
    """The waves of a rollout with their kept per-status counts (no scan of the stream)."""
    keys = [c.strip() for c in WAVE_COLS.split(",")]
    rows = [
        dict(zip(keys, r, strict=True))
        for r in tx.all(
            f"SELECT {WAVE_COLS} FROM rollout_waves WHERE task_id = :t ORDER BY wave",
            {"t": task_id},
        )
    ]
    if not rows:
        return rows
    counts: dict[int, dict[str, int]] = {int(r["command_id"]): {} for r in rows}
    for scope_id, status, n in tx.all(
        "SELECT scope_id, status, n FROM progress WHERE scope = 'parent' AND "
        + tx.in_list("scope_id", "ids"),
        {"ids": tx.list_param(list(counts))},
    ):
        if n:
            counts[int(scope_id)][status] = int(n)
    for r in rows:
        r["counts"] = counts[int(r["command_id"])]
    return rows


def update_wave(tx: SqlTx, task_id: int, wave: int, **fields: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    tx.ex(
        f"UPDATE rollout_waves SET {sets} WHERE task_id = :_t AND wave = :_w",
        {**fields, "_t": task_id, "_w": wave},
    )


def release(tx: SqlTx, wave_command: int, n: int, expires_at: float) -> int:
    """Make up to `n` held commands of a wave claimable, each with its delivery deadline."""
    if n <= 0:
        return 0
    cur = tx.ex(
        "UPDATE commands SET target_type = 'agent', expires_at = :exp, updated_at = :now "
        "WHERE id IN (SELECT id FROM commands WHERE parent_id = :w AND target_type = :held "
        "AND status = 'pending' ORDER BY id LIMIT :n)",
        {"exp": expires_at, "now": tx.now, "w": wave_command, "held": HELD, "n": n},
    )
    moved = int(cur.rowcount)
    if moved:
        tx.notify("agent")
    return moved


def hold(tx: SqlTx, wave_command: int) -> int:
    """Take a wave's released but unclaimed commands back (pause): nobody claims them now."""
    cur = tx.ex(
        "UPDATE commands SET target_type = :held, expires_at = :exp, updated_at = :now "
        "WHERE parent_id = :w AND target_type = 'agent' AND status = 'pending'",
        {"held": HELD, "exp": tx.now + HELD_EXPIRY, "now": tx.now, "w": wave_command},
    )
    return int(cur.rowcount)


def offline(tx: SqlTx, wave_command: int) -> int:
    """Released commands of a wave waiting for an agent that is not connected (bounded by
    the wave's size: only the scheduler calls this, never a progress read)."""
    r = tx.one(
        "SELECT count(*) FROM commands c JOIN agents a ON a.id = c.target_id "
        "WHERE c.parent_id = :w AND c.target_type = 'agent' AND c.status = 'pending' "
        "AND a.status <> 'active'",
        {"w": wave_command},
    )
    return int(r[0]) if r else 0


def applied(tx: SqlTx, wave_commands: list[int]) -> list[tuple[str, dict[str, Any]]]:
    """Agents that applied the change (their command succeeded), with the command's args."""
    if not wave_commands:
        return []
    return [
        (r[0], loads(r[1]) or {})
        for r in tx.all(
            "SELECT target_id, action_args FROM commands WHERE status = 'success' AND "
            + tx.in_list("parent_id", "ids")
            + " ORDER BY target_id",
            {"ids": tx.list_param(wave_commands)},
        )
    ]


def applied_not_undone(
    tx: SqlTx, wave_commands: list[int], rollback_task: int
) -> list[tuple[str, dict[str, Any]]]:
    """Agents whose command succeeded and that the rollback task does not reach yet."""
    if not wave_commands:
        return []
    return [
        (r[0], loads(r[1]) or {})
        for r in tx.all(
            "SELECT c.target_id, c.action_args FROM commands c WHERE c.status = 'success' AND "
            + tx.in_list("c.parent_id", "ids")
            + " AND NOT EXISTS (SELECT 1 FROM commands u WHERE u.task_id = :rb "
            "AND u.target_id = c.target_id) ORDER BY c.target_id",
            {"ids": tx.list_param(wave_commands), "rb": rollback_task},
        )
    ]


def config_content(tx: SqlTx, config_hash: str) -> dict[str, Any] | None:
    r = tx.one("SELECT content FROM configs WHERE hash = :h", {"h": config_hash})
    return None if r is None else dict(loads(r[0]))


def cancel_undelivered(tx: SqlTx, wave_commands: list[int], why: str) -> int:
    """End every command of the waves that has not reached its agent (held ones included)."""
    if not wave_commands:
        return 0
    rows, _ = tx.move(
        f"{tx.in_list('parent_id', '_waves')} AND status IN ('pending', 'processing', 'sent')",
        {"_waves": tx.list_param(wave_commands), "_msg": why[:2000]},
        Status.CANCELLED,
        sets=", completed_at = :_now, result_message = :_msg, lease_owner = NULL, "
        "lease_expires_at = NULL",
    )
    return len(rows)


def task_fields(tx: SqlTx, task_id: int, *columns: str) -> tuple[Any, ...] | None:
    """Some columns of a task's row (`type`, `source`, `username`, `cancelled`,
    `completed_at`), or None when there is no such task."""
    allowed = {"type", "source", "username", "cancelled", "completed_at"}
    if not columns or not set(columns) <= allowed:
        raise ValueError(f"task columns must be among {sorted(allowed)}")
    row = tx.one(f"SELECT {', '.join(columns)} FROM tasks WHERE id = :t", {"t": task_id})
    return None if row is None else tuple(row)


def wave_command(tx: SqlTx, task_id: int, wave: int) -> int | None:
    """The id of the command that stands for one wave of a rollout."""
    r = tx.one(
        "SELECT command_id FROM rollout_waves WHERE task_id = :t AND wave = :w",
        {"t": task_id, "w": wave},
    )
    return None if r is None else int(r[0])
