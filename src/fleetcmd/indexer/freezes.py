"""Freezes (blackout periods): a task that would reach an agent a current freeze covers is
refused when it is filed (mode `refuse`), or filed with its commands held until no freeze
covers their agents any more (mode `hold`: the window gate releases them, indexer/windows.py),
unless its filer holds `freeze:override` and asks for it; an override is audited in the
task's own transaction. Server-bound types reach no agent and pass.

The check runs where the task's agents are known, inside the task manager's transaction, so
a scheduled occurrence and an approval-held task meet it exactly as a task filed by hand."""

from __future__ import annotations

from typing import Any

from fleetcmd.errors import Forbidden, InvalidParams, NotFound
from fleetcmd.model import params as p
from fleetcmd.model import selectors
from fleetcmd.model.catalog import CommandSpec, Expansion
from fleetcmd.model.schedules import FreezeIn, iso_utc
from fleetcmd.model.targets import AgentSelection
from fleetcmd.store.base import SqlStore, SqlTx

OVERRIDE = "freeze:override"


class Frozen(Forbidden):
    """The task would reach agents a freeze covers."""


def reached(
    spec: CommandSpec,
    parsed: p.Params,
    selection: AgentSelection | None,
    target_set: int | None,
) -> list[AgentSelection]:
    """The agents a task reaches, as selections (none for server-bound types)."""
    if spec.expansion in (Expansion.NONE, Expansion.PER_SERVER_NODE):
        return []
    if target_set is not None:
        return [AgentSelection(frozen=target_set)]
    if selection is not None:
        return [selection]
    reach = parsed.reach()
    if reach.everything:
        return [AgentSelection(all=True)]
    out = []
    if reach.agents:
        out.append(AgentSelection(ids=reach.agents))
    groups = tuple(dict.fromkeys((*reach.groups, *reach.changes_groups)))
    if groups:
        out.append(AgentSelection(groups=groups))
    return out


def check(
    tx: SqlTx,
    spec: CommandSpec,
    parsed: p.Params,
    user: str,
    override: bool,
    selection: AgentSelection | None,
    target_set: int | None,
    can_hold: bool = True,
) -> bool:
    """Raises `Frozen` for a refusing freeze; True: hold the task's commands (a holding one).
    A task whose commands cannot be held (written later by the command manager, in rollout
    waves, or already waiting for windows) is refused by a holding freeze too."""
    current = tx.freezes_at(tx.now)
    if not current:
        return False
    hits: list[dict[str, Any]] = []
    for freeze in current:
        expr = selectors.parse(freeze["selector"])
        n, sample = 0, []
        for sel in reached(spec, parsed, selection, target_set):
            k, some = tx.frozen_among(sel, expr)
            n += k
            sample += some
        if n:
            hits.append(
                {
                    "freeze": freeze["id"],
                    "name": freeze["name"],
                    "until": iso_utc(freeze["ends_at"]),
                    "agents": n,
                    "sample": sorted(set(sample))[:5],
                    "mode": freeze["mode"],
                }
            )
    if not hits:
        return False
    refusing = [h for h in hits if h["mode"] == "refuse" or not can_hold]
    if not override and not refusing:
        return True
    if not override:
        first = refusing[0]
        raise Frozen(
            f"freeze '{first['name']}' (until {first['until']}) covers {first['agents']} "
            f"agent(s) this {spec.task_type} would reach, e.g. {', '.join(first['sample'])}; "
            f"a user holding '{OVERRIDE}' may file it with override_freeze",
            freezes=hits,
        )
    tx.append_audit(
        {
            "actor": user,
            "action": "freeze.override",
            "outcome": "success",
            "details": {"type": spec.task_type, "freezes": hits},
        }
    )
    return False


def create(store: SqlStore, body: FreezeIn, user: str) -> dict[str, Any]:
    try:
        selectors.parse(body.selector)
    except selectors.SelectorError as exc:
        raise InvalidParams(f"freeze selector: {exc}") from None
    with store.transaction() as tx:
        fid = tx.insert_freeze(
            {
                "name": body.name,
                "selector": body.selector,
                "starts": body.starts_at.timestamp(),
                "ends": body.ends_at.timestamp(),
                "reason": body.reason,
                "user": user,
                "mode": body.mode,
            }
        )
    return next(view(f) for f in store.list_freezes() if f["id"] == fid)


def delete(store: SqlStore, freeze_id: int) -> None:
    with store.transaction() as tx:
        if not tx.delete_freeze(freeze_id):
            raise NotFound(f"freeze {freeze_id} not found")


def view(freeze: dict[str, Any]) -> dict[str, Any]:
    return {
        **freeze,
        "starts_at": iso_utc(freeze["starts_at"]),
        "ends_at": iso_utc(freeze["ends_at"]),
        "created_at": iso_utc(freeze["created_at"]),
    }
