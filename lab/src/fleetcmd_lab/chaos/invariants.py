"""What must hold after any run, however it was broken. Each check returns violations (plain
sentences naming the ids involved); an empty list means the invariant held.

Read once the system is stopped: the store (every task and command), each real agent's state
folder (journal, outbox) and log (one `command N: <action>` line per execution, across
restarts), and each simulator's execution record and summary."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcmd.model.catalog import CATALOG
from fleetcmd.model.status import FINAL
from fleetcmd.store import open_store
from fleetcmd.store.base import SqlStore

FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINAL)) + ")"
SHOW = 10  # ids shown per violation


def _ids(items: Any) -> str:
    items = list(items)
    more = f" … and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(str(i) for i in items[:SHOW]) + more


def _action_names() -> set[str]:
    return {spec.action for spec in CATALOG.values()}


@dataclass
class RealAgent:
    name: str
    state_dir: Path
    log: Path


@dataclass
class Evidence:
    """Where the checker looks."""

    store_url: str
    agents: list[RealAgent] = field(default_factory=list)
    sim_dirs: list[Path] = field(default_factory=list)
    rss_peaks: dict[str, float] = field(default_factory=dict)  # process name -> MB
    rss_limits: dict[str, float] = field(default_factory=dict)  # role prefix -> MB
    webhook: Path | None = None  # the subscriber's receiver: one line per accepted batch


@dataclass
class Report:
    checks: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        return [f"{name}: {v}" for name, vs in self.checks.items() for v in vs]

    def to_json(self) -> dict[str, Any]:
        return {"checks": self.checks, "figures": self.figures, "violations": len(self.violations)}


class Checker:
    def __init__(self, evidence: Evidence) -> None:
        self.ev = evidence
        self.store: SqlStore = open_store(evidence.store_url, migrate=False)
        self.report = Report()
        self.commands: dict[int, tuple[Any, ...]] = {}
        self.executions: dict[str, Counter[int]] = {}  # agent id -> command id -> runs
        self.journals: dict[str, dict[int, tuple[str, str | None, float | None]]] = {}
        self.outboxes: dict[str, list[str]] = {}
        self.sim_times: dict[tuple[str, int], float] = {}

    def run(self) -> Report:
        try:
            self._load()
            for name, check in (
                ("every task final", self.tasks_final),
                ("every command final", self.commands_final),
                ("at most once per agent and command id", self.at_most_once),
                ("exactly once where the result is success", self.exactly_once_success),
                ("nothing runs after it went final undelivered", self.none_after_final),
                ("no result lost", self.no_result_lost),
                ("stored counts equal a recount", self.counts_exact),
                ("parents and children consistent", self.parents_children),
                ("store and agent databases intact", self.integrity),
                ("memory bounded", self.memory_bounded),
                ("every final command and audit entry delivered", self.events_delivered),
            ):
                if name.startswith("every final command and audit") and self.ev.webhook is None:
                    continue  # a run without a subscriber
                self.report.checks[name] = check()
        finally:
            self.store.close()
        return self.report

    # -- loading --------------------------------------------------------------------------------
    def _load(self) -> None:
        with self.store.reading() as tx:
            for r in tx.all(
                "SELECT id, task_id, parent_id, target_type, target_id, action_name, status, "
                "expanded, delivered_at, completed_at, timeout, result_data FROM commands"
            ):
                self.commands[int(r[0])] = r
        by_status = Counter(str(r[6]) for r in self.commands.values() if not r[7])
        self.report.figures["commands"] = sum(by_status.values())
        self.report.figures["commands_by_status"] = dict(sorted(by_status.items()))
        names = _action_names()
        pattern = re.compile(r" command (\d+): (\S+)$")
        for agent in self.ev.agents:
            agent_id = self._agent_id(agent.state_dir) or agent.name
            runs: Counter[int] = Counter()
            if agent.log.exists():
                for line in agent.log.read_text(errors="replace").splitlines():
                    m = pattern.search(line)
                    if m and m.group(2) in names:
                        runs[int(m.group(1))] += 1
            self.executions[agent_id] = runs
            db = agent.state_dir / "agent.db"
            journal: dict[int, tuple[str, str | None, float | None]] = {}
            outbox: list[str] = []
            if db.exists():
                conn = sqlite3.connect(db)
                try:
                    for cid, state, result, done_at in conn.execute(
                        "SELECT id, state, result, done_at FROM journal"
                    ):
                        status = json.loads(result)["status"] if result else None
                        journal[int(cid)] = (state, status, done_at)
                    outbox = [r[0] for r in conn.execute("SELECT id FROM outbox")]
                finally:
                    conn.close()
            self.journals[agent_id] = journal
            self.outboxes[agent_id] = outbox
        for d in self.ev.sim_dirs:
            record = d / "executions.jsonl"
            if record.exists():
                for line in record.read_text().splitlines():
                    if not line.strip():
                        continue
                    e = json.loads(line)
                    self.executions.setdefault(e["agent"], Counter())[int(e["id"])] += 1
                    if e.get("target") != e["agent"]:
                        self.report.checks.setdefault("commands reach their own agent", []).append(
                            f"simulated agent {e['agent']} was handed command {e['id']} "
                            f"aimed at {e.get('target')}"
                        )
                    self.sim_times[(e["agent"], int(e["id"]))] = float(e.get("t", 0))
            summary = d / "summary.json"
            if summary.exists():
                for agent_id, s in json.loads(summary.read_text())["agents"].items():
                    self.outboxes[agent_id] = [str(i) for i in s["outbox"]]
                    self.executions.setdefault(agent_id, Counter())
            else:
                self.outboxes[f"simulator {d.name}"] = ["(no summary: it did not stop cleanly)"]

    @staticmethod
    def _agent_id(state_dir: Path) -> str | None:
        p = state_dir / "credentials.json"
        try:
            return str(json.loads(p.read_text())["id"])
        except (OSError, ValueError, KeyError):
            return None

    def _agent_commands(self) -> list[tuple[Any, ...]]:
        return [r for r in self.commands.values() if r[3] == "agent" and not r[7]]

    # -- the invariants ---------------------------------------------------------------------------
    def tasks_final(self) -> list[str]:
        with self.store.reading() as tx:
            rows = tx.all("SELECT id, type, status FROM tasks WHERE completed_at IS NULL")
            self.report.figures["tasks"] = int(tx.all("SELECT count(*) FROM tasks")[0][0])
        return [f"task {r[0]} ({r[1]}) is still {r[2]}" for r in rows]

    def commands_final(self) -> list[str]:
        open_ = [r for r in self.commands.values() if r[6] not in FINAL]
        if not open_:
            return []
        by = Counter(str(r[6]) for r in open_)
        return [
            f"{n} command(s) still {s}: {_ids(r[0] for r in open_ if r[6] == s)}"
            for s, n in sorted(by.items())
        ]

    def at_most_once(self) -> list[str]:
        out = []
        for agent_id, runs in self.executions.items():
            twice = sorted(cid for cid, n in runs.items() if n > 1)
            if twice:
                out.append(f"agent {agent_id} executed command(s) more than once: {_ids(twice)}")
        self.report.figures["executions"] = sum(sum(r.values()) for r in self.executions.values())
        return out

    def exactly_once_success(self) -> list[str]:
        out = []
        missing: dict[str, list[int]] = {}
        for r in self._agent_commands():
            if r[6] != "success":
                continue
            agent_id = str(r[4])
            runs = self.executions.get(agent_id)
            if runs is None:
                continue  # an agent this run does not watch (none today)
            journal = self.journals.get(agent_id)
            ran = runs.get(int(r[0]), 0)
            if journal is not None and int(r[0]) in journal:
                ran = max(ran, 1) if journal[int(r[0])][1] == "success" else ran
            if ran != 1:
                missing.setdefault(agent_id, []).append(int(r[0]))
        for agent_id, ids in sorted(missing.items()):
            out.append(
                f"agent {agent_id}: success recorded without exactly one execution "
                f"for command(s) {_ids(ids)}"
            )
        return out

    def none_after_final(self) -> list[str]:
        """An `expired` or `cancelled` command that never reached its agent (no delivery
        recorded) has no execution in any agent's log or simulator record, and no agent
        journal holds it as confirmed (`received` or `done`)."""
        out = []
        never = {
            int(r[0])
            for r in self._agent_commands()
            if r[6] in ("expired", "cancelled") and r[8] is None
        }
        self.report.figures["final_undelivered"] = len(never)
        for agent_id, runs in sorted(self.executions.items()):
            ran = sorted(cid for cid in runs if cid in never)
            if ran:
                out.append(
                    f"agent {agent_id} executed command(s) that ended undelivered: {_ids(ran)}"
                )
        for agent_id, journal in sorted(self.journals.items()):
            held = sorted(
                cid
                for cid, (state, _s, _d) in journal.items()
                if cid in never and state in ("received", "done")
            )
            if held:
                out.append(
                    f"agent {agent_id} journal holds as confirmed command(s) that "
                    f"ended undelivered: {_ids(held)}"
                )
        return out

    def no_result_lost(self) -> list[str]:
        out = []
        for agent_id, ids in sorted(self.outboxes.items()):
            if ids:
                out.append(
                    f"agent {agent_id}: outbox not drained ({len(ids)} result(s): {_ids(ids)})"
                )
        for r in self._agent_commands():
            if r[8] is not None and r[6] not in ("success", "failure", "timeout"):
                out.append(f"command {r[0]} was delivered but ended {r[6]}")
        lost = []
        for agent_id, journal in self.journals.items():
            for cid, (_state, status, done_at) in journal.items():
                row = self.commands.get(cid)
                if row is None or status is None:
                    continue
                if (
                    row[6] == "timeout"
                    and row[8] is not None
                    and done_at is not None
                    and done_at < float(row[8]) + float(row[10])
                ):
                    lost.append((agent_id, cid, status))
                elif row[6] in ("success", "failure") and row[6] != status:
                    out.append(
                        f"command {cid}: agent {agent_id} answered {status}, the store "
                        f"says {row[6]}"
                    )
        for agent_id, cid, status in lost:
            out.append(
                f"command {cid}: agent {agent_id} answered {status} in time but the "
                "store ended it timeout (result lost)"
            )
        return out

    def counts_exact(self) -> list[str]:
        out = []
        with self.store.reading() as tx:
            task_ids = [int(r[0]) for r in tx.all("SELECT id FROM tasks")]
        for tid in task_ids:
            kept, real = self.store.counts("task", tid), self.store.recount("task", tid)
            if kept != real:
                out.append(f"task {tid}: counts {kept} but a recount gives {real}")
        for r in self.commands.values():
            if r[7]:
                kept = self.store.counts("parent", int(r[0]))
                real = self.store.recount("parent", int(r[0]))
                if kept != real:
                    out.append(f"parent command {r[0]}: counts {kept} but a recount gives {real}")
        return out

    def parents_children(self) -> list[str]:
        out = []
        children: dict[int, list[tuple[Any, ...]]] = {}
        for r in self.commands.values():
            if r[2] is not None:
                children.setdefault(int(r[2]), []).append(r)
        orphans = sorted(pid for pid in children if pid not in self.commands)
        if orphans:
            out.append(f"children of missing parent(s) {_ids(orphans)}")
        for r in self.commands.values():
            if not r[7] or r[6] not in FINAL or r[6] == "cancelled":
                continue
            kids = children.get(int(r[0]), [])
            open_kids = [k[0] for k in kids if k[6] not in FINAL]
            if open_kids:
                out.append(f"parent {r[0]} is {r[6]} with children still open: {_ids(open_kids)}")
            data = r[11]
            if isinstance(data, str):
                try:
                    data = json.loads(data)
                except ValueError:
                    data = None
            counts = data.get("counts") if isinstance(data, dict) else None
            if isinstance(counts, dict) and sum(int(n) for n in counts.values()) != len(kids):
                out.append(
                    f"parent {r[0]} is {r[6]} counting {sum(counts.values())} children "
                    f"but has {len(kids)}"
                )
        return out

    def integrity(self) -> list[str]:
        out = []
        dbs: list[Path] = []
        if self.ev.store_url.startswith("sqlite:"):
            dbs.append(Path(self.ev.store_url.removeprefix("sqlite://")))
        dbs += [p for a in self.ev.agents for p in a.state_dir.glob("*.db")]
        for db in dbs:
            if not db.exists():
                continue
            conn = sqlite3.connect(db)
            try:
                answer = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
            if answer != ["ok"]:
                out.append(f"{db}: integrity_check says {answer[:5]}")
        self.report.figures["databases_checked"] = len(dbs)
        return out

    def memory_bounded(self) -> list[str]:
        out = []
        for name, peak in sorted(self.ev.rss_peaks.items()):
            limit = next(
                (mb for prefix, mb in self.ev.rss_limits.items() if name.startswith(prefix)), None
            )
            if limit is not None and peak > limit:
                out.append(f"{name} peaked at {peak:.0f} MB RSS (limit {limit:.0f} MB)")
        self.report.figures["rss_peak_mb"] = {
            k: round(v, 1) for k, v in sorted(self.ev.rss_peaks.items())
        }
        return out

    def events_delivered(self) -> list[str]:
        """Every final command and every audit record in the store reached the webhook
        subscriber at least once: an event of its subject (a command's with its final status)
        among the ids the receiver accepted. Read from the tables themselves, not only from
        the outbox, so a change that wrote no event is caught too."""
        assert self.ev.webhook is not None
        got: list[int] = []
        if self.ev.webhook.exists():
            for line in self.ev.webhook.read_text().splitlines():
                if line.strip():
                    got += [int(i) for i in json.loads(line)["ids"]]
        accepted = set(got)
        with self.store.reading() as tx:
            events = tx.all("SELECT id, kind, type, subject FROM events ORDER BY tx, id")
            audit = [int(r[0]) for r in tx.all("SELECT id FROM audit")]
        delivered: dict[tuple[str, str], set[str]] = {}
        for eid, kind, type_, subject in events:
            if int(eid) in accepted:
                delivered.setdefault((str(kind), str(subject)), set()).add(str(type_))
        out = []
        final = sorted(int(r[0]) for r in self.commands.values() if r[6] in FINAL)
        missed = [
            c
            for c in final
            if str(self.commands[c][6]) not in delivered.get(("command", str(c)), set())
        ]
        if missed:
            out.append(
                f"{len(missed)} of {len(final)} final command(s) never delivered with their "
                f"status: {_ids(missed)}"
            )
        missed_audit = sorted(a for a in audit if ("audit", str(a)) not in delivered)
        if missed_audit:
            out.append(
                f"{len(missed_audit)} of {len(audit)} audit record(s) never delivered: "
                f"{_ids(missed_audit)}"
            )
        rank = {int(r[0]): i for i, r in enumerate(events)}
        firsts = [rank[e] for e in dict.fromkeys(got) if e in rank]
        self.report.figures["subscriber"] = {
            "events_in_store": len(events),
            "events_received": len(got),
            "events_unique": len(accepted),
            "final_commands": len(final),
            "audit_records": len(audit),
            "first_arrivals_in_store_order": firsts == sorted(firsts),
        }
        return out


def check(evidence: Evidence) -> Report:
    return Checker(evidence).run()
