"""The chaos checker's own invariants judged on a store made by real operations, without a
run: each one must report what it exists to catch (a check that cannot fail proves nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store.base import SqlStore
from fleetcmd.store.types import Result
from fleetcmd_lab.chaos.invariants import Checker, Evidence

CHECK = "every final command and audit entry delivered"


def finished_task(store: SqlStore, agents: int) -> list[int]:
    """A group change fanned out to `agents` agents, every result recorded, one audit record:
    returns the ids of the store's events."""
    store.register_agents(
        [{"id": f"a{i}", "name": f"host-{i}", "groups": ["web"]} for i in range(agents)]
    )
    TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": 1}})
    )
    CommandManager(store).run_once()
    children = [c.id for c in store.list_commands(target_type="agent").items]
    store.complete([Result(i, "success") for i in children])
    store.append_audit([{"actor": "ops", "action": "task.create", "outcome": "success"}])
    with store.reading() as tx:
        return [int(r[0]) for r in tx.all("SELECT id FROM events ORDER BY tx, id")]


def judged(store: SqlStore, tmp_path: Path, accepted: list[int]) -> tuple[list[str], dict]:
    record = tmp_path / "webhook.jsonl"
    record.write_text(json.dumps({"t": 0, "ids": accepted}) + "\n")
    checker = Checker(Evidence(store.url, webhook=record))
    report = checker.run()
    return report.checks[CHECK], report.figures["subscriber"]


def test_delivery_of_every_final_command_and_audit_record_is_checked(
    store: SqlStore, tmp_path: Path
) -> None:
    ids = finished_task(store, 3)
    with store.reading() as tx:
        rows = tx.all("SELECT id, kind, subject FROM events ORDER BY tx, id")
    violations, figures = judged(store, tmp_path, ids + ids[:2])  # repeats are fine
    assert violations == []
    assert figures["events_unique"] == len(ids) and figures["events_received"] == len(ids) + 2
    assert figures["final_commands"] == 4 and figures["audit_records"] == 1  # 3 + the parent
    assert figures["first_arrivals_in_store_order"]

    command = next(int(r[0]) for r in rows if r[1] == "command")
    audit = next(int(r[0]) for r in rows if r[1] == "audit")
    violations, figures = judged(store, tmp_path, [i for i in ids if i not in (command, audit)])
    subject = next(r[2] for r in rows if int(r[0]) == command)
    assert len(violations) == 2, violations
    assert "1 of 4 final command(s) never delivered" in violations[0] and subject in violations[0]
    assert "1 of 1 audit record(s) never delivered" in violations[1]
    violations, figures = judged(store, tmp_path, list(reversed(ids)))
    assert violations == [] and not figures["first_arrivals_in_store_order"]
