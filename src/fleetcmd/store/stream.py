"""The commands stream: leases (claim, renew, release, sweep), status marks and results,
heartbeats of running commands, cancellation, the command manager's steps, and the command
and count reads.

Over 500 lines on purpose: every move of a command between statuses is here, beside the
others, so that the lease rules (who may move what, and when it goes back to the stream)
read in one place; the per-concept reads and writes around it live in their own modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleetcmd.errors import InvalidParams, LeaseLost, NotFound
from fleetcmd.model.progress import OUTPUT_MAX
from fleetcmd.model.records import Command, Page, dumps
from fleetcmd.model.status import FINAL, Status
from fleetcmd.store.core import ACTIVE_SQL, COLS, UNDELIVERED_SQL, StoreCore, TxCore, cursor_id
from fleetcmd.store.types import Beat, ClaimFilter, Output, Result, SweepReport, chunks

# How long after a node's last heartbeat the sweep still looks at it: a node silent for
# longer than that has had every lease it held lapse (server leases are seconds to minutes).
SILENT_HORIZON = 3600.0

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlTx


REMOVED_OFFLINE = (
    "the agent was not connected: it is removed from the index and its credentials are "
    "refused if it returns"
)
REMOVED_UNDELIVERED = "never delivered: its agent was removed from the fleet"
STOPPED_REPORTING = "agent stopped reporting"
# A heartbeat promises the next within `interval`; the command is stale after two.
STALE_AFTER_INTERVALS = 2


class StreamTx(TxCore):
    """The command manager's steps on a leased command, and the end of commands whose
    agent is removed."""

    # -- command manager ------------------------------------------------------------------------
    def lease_held(self, command_id: int, owner: str) -> Command:
        row = self.one(
            f"SELECT {COLS} FROM commands WHERE id = :id{self.store.for_update}", {"id": command_id}
        )
        if row is None:
            raise NotFound(f"command {command_id} not found")
        cmd = Command.from_row(row)
        if cmd.status != Status.PROCESSING or cmd.lease_owner != owner:
            raise LeaseLost(
                f"command {command_id}: lease no longer held by {owner} "
                f"(status {cmd.status}, owner {cmd.lease_owner})"
            )
        return cmd

    def finish_expansion(self, parent: Command, children: int, data: dict[str, Any]) -> None:
        """The seed's step 5: the parent is handed on to its children (or done if none)."""
        self.ex(
            "UPDATE commands SET status = 'sent', expanded = 1, sent_at = :now, updated_at = :now, "
            "lease_owner = NULL, lease_expires_at = NULL, result_data = :data WHERE id = :id",
            {"now": self.now, "data": dumps(data), "id": parent.id},
        )
        self.count(parent.parent_id, parent.task_id, False, parent.status, -1)
        if parent.parent_id is not None:
            self.count(parent.parent_id, parent.task_id, True, "sent", +1)
        self.touched_parents.add(parent.id)
        self.touched_tasks.add(parent.task_id)

    def fail_command(self, command_id: int, message: str, code: int = 1) -> None:
        self.move(
            "id = :cid",
            {"cid": command_id, "_msg": message[:2000], "_code": code},
            Status.FAILURE,
            sets=", completed_at = :_now, result_code = :_code, result_message = :_msg, "
            "lease_owner = NULL, lease_expires_at = NULL",
        )

    def settle_removed(
        self,
        *,
        agent_id: str | None = None,
        ids: Sequence[int] | None = None,
        connected: bool = False,
    ) -> int:
        """Commands aimed at a removed agent never wait for it (they would be claimed and
        released for ever: issue 14.2). Undelivered ones end `expired`, saying why; its own
        `delete` command ends `success` unless the agent is `connected` to a node that can
        still hand it over: the deletion is done on this side, and the agent's credentials
        are refused if it ever returns. Scoped to one agent (at removal) or to `ids` (just
        handed back to pending)."""
        where = (
            "target_type = 'agent' AND expanded = 0 "
            "AND target_id IN (SELECT id FROM agents WHERE status = 'removed')"
        )
        params: dict[str, Any] = {}
        if agent_id is not None:
            where += " AND target_id = :rid"
            params["rid"] = agent_id
        if ids is not None:
            if not ids:
                return 0
            where += " AND status = 'pending' AND " + self.in_list("id", "sids")
            params["sids"] = self.list_param(list(ids))
        else:
            where += f" AND status IN {UNDELIVERED_SQL}"
        n = 0
        cleared = ", completed_at = :_now, lease_owner = NULL, lease_expires_at = NULL, "
        if not connected:
            rows, _ = self.move(
                where + " AND action_name = 'delete'",
                dict(
                    params, _msg=REMOVED_OFFLINE, _data=dumps({"deleted": True, "delivered": False})
                ),
                Status.SUCCESS,
                sets=cleared + "result_code = 0, result_message = :_msg, result_data = :_data",
            )
            n += len(rows)
        rows, _ = self.move(
            where + " AND action_name <> 'delete'",
            dict(params, _msg=REMOVED_UNDELIVERED),
            Status.EXPIRED,
            sets=cleared + "result_message = :_msg",
        )
        return n + len(rows)


class StreamStore(StoreCore):
    """The stream as the servers and the command manager drive it."""

    def get_command(self, command_id: int) -> Command:
        with self.reading() as tx:
            row = tx.one(f"SELECT {COLS} FROM commands WHERE id = :id", {"id": command_id})
        if row is None:
            raise NotFound(f"command {command_id} not found")
        return Command.from_row(row)

    def list_commands(
        self,
        *,
        task_id: int | None = None,
        parent_id: int | None = None,
        status: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        where: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit + 1}
        for col, val in (
            ("task_id", task_id),
            ("parent_id", parent_id),
            ("status", status),
            ("target_type", target_type),
            ("target_id", target_id),
        ):
            if val is not None:
                where.append(f"{col} = :{col}")
                params[col] = val
        after = cursor_id(cursor)
        if after is not None:
            where.append("id > :after")
            params["after"] = after
        with self.reading() as tx:
            rows = tx.all(
                f"SELECT {COLS} FROM commands WHERE {' AND '.join(where)} ORDER BY id LIMIT :limit",
                params,
            )
        cmds = [Command.from_row(r) for r in rows[:limit]]
        return Page(cmds, str(cmds[-1].id) if len(rows) > limit else None)

    def counts(self, scope: str, scope_id: int) -> dict[str, int]:
        with self.reading() as tx:
            return tx.counts(scope, scope_id)

    def targets(self, ids: list[int]) -> dict[int, tuple[str, str]]:
        """Command id -> (target type, target id)."""
        out: dict[int, tuple[str, str]] = {}
        with self.reading() as tx:
            for part in chunks(ids, 20_000):
                for r in tx.all(
                    "SELECT id, target_type, target_id FROM commands WHERE "
                    f"{tx.in_list('id', 'ids')}",
                    {"ids": tx.list_param(part)},
                ):
                    out[int(r[0])] = (r[1], r[2])
        return out

    def command_targets(self, ids: list[int]) -> dict[int, tuple[str, str, str]]:
        """Command id -> (target type, target id, action name), for many ids at once (a
        server checking that the results an agent posts are its own)."""
        out: dict[int, tuple[str, str, str]] = {}
        with self.reading() as tx:
            for part in chunks(ids, 20_000):
                for r in tx.all(
                    "SELECT id, target_type, target_id, action_name FROM commands WHERE "
                    f"{tx.in_list('id', 'ids')}",
                    {"ids": tx.list_param(part)},
                ):
                    out[int(r[0])] = (r[1], r[2], r[3])
        return out

    def recount(self, scope: str, scope_id: int) -> dict[str, int]:
        """Count by scanning the stream: only for checking the kept counts (tests, invariants)."""
        if scope == "parent":
            sql = "SELECT status, count(*) FROM commands WHERE parent_id = :id GROUP BY status"
        else:
            sql = (
                "SELECT status, count(*) FROM commands WHERE task_id = :id AND expanded = 0 "
                "GROUP BY status"
            )
        with self.reading() as tx:
            return {s: int(n) for s, n in tx.all(sql, {"id": scope_id})}

    # -- the stream -----------------------------------------------------------------------------
    def claim(self, owner: str, where: ClaimFilter, limit: int, lease: float) -> list[Command]:
        """Claim up to `limit` pending commands under a lease (each by one claimer at a time)."""
        with self.transaction() as tx:
            params: dict[str, Any] = {
                "tt": where.target_type,
                "now": tx.now,
                "owner": owner,
                "until": tx.now + lease,
            }
            cond = "status = 'pending' AND target_type = :tt AND expires_at > :now"
            if where.target_type == "agent" and (
                where.node is not None or where.target_ids is not None
            ):
                # Go from the agents (of the node, or listed) to their pending commands through
                # commands_pending_target, not along every pending command in id order: with
                # 100,000 commands waiting for offline agents that walk took 33 ms a claim on
                # SQLite (5 ms this way), and grew with the offline fleet.
                cond = cond.replace("target_type", tx.by_target_first("target_type"), 1)
            if where.node is not None:
                params["node"] = where.node
                if where.target_type == "agent":
                    cond += " AND target_id IN (SELECT id FROM agents WHERE node = :node)"
                else:
                    cond += " AND target_id IN (:node, '*')"
            elif where.target_ids is not None:
                params["tids"] = tx.list_param(list(where.target_ids))
                cond += f" AND {tx.in_list('target_id', 'tids')}"
            _, claimed = tx.move(
                cond,
                params,
                Status.PROCESSING,
                sets=", lease_owner = :owner, lease_expires_at = :until, attempts = attempts + 1",
                limit=limit,
                skip_locked=True,
                returning=True,
            )
        return claimed

    def renew(self, owner: str, ids: list[int], lease: float) -> list[int]:
        if not ids:
            return []
        with self.transaction() as tx:
            return [
                int(r[0])
                for r in tx.update_returning(
                    self.sql(
                        "UPDATE commands SET lease_expires_at = :until WHERE "
                        f"{tx.in_list('id', 'ids')} AND lease_owner = :owner "
                        "AND status IN ('processing', 'sent') RETURNING id"
                    ),
                    {"until": tx.now + lease, "owner": owner, "ids": tx.list_param(ids)},
                )
            ]

    @staticmethod
    def _hand_back(tx: SqlTx, where: str, params: dict[str, Any]) -> int:
        """Leased commands matching `where` back to pending, lease cleared, claimers woken;
        those of removed agents end instead (`settle_removed`)."""
        rows, _ = tx.move(
            f"({where}) AND expanded = 0",
            params,
            Status.PENDING,
            sets=", lease_owner = NULL, lease_expires_at = NULL",
        )
        if rows:
            tx.settle_removed(ids=[int(r[0]) for r in rows])
            for tt in {"agent", "server", "indexer"}:
                tx.notify(tt)
        return len(rows)

    def release(self, owner: str, ids: list[int]) -> int:
        if not ids:
            return 0
        with self.transaction() as tx:
            return self._hand_back(
                tx,
                f"{tx.in_list('id', 'ids')} AND lease_owner = :owner",
                {"ids": tx.list_param(ids), "owner": owner},
            )

    def release_previous(self, owner: str) -> int:
        """A server node restarted: hand back at once what its earlier incarnations held
        (lease owners `NODE#INCARNATION`), instead of letting it wait out their leases. The
        caller's own leases are kept; a still-running older incarnation loses its leases, and
        with them the right to mark anything `sent` (the newest incarnation wins)."""
        node, sep, incarnation = owner.rpartition("#")
        if not sep or not node or not incarnation:
            raise InvalidParams("owner must be NODE#INCARNATION")
        prefix = node + "#"
        with self.transaction() as tx:
            return self._hand_back(
                tx,
                "status IN ('processing', 'sent') AND substr(lease_owner, 1, :n) = :prefix "
                "AND lease_owner <> :owner",
                {"n": len(prefix), "prefix": prefix, "owner": owner},
            )

    def mark(self, owner: str | None, ids: list[int], status: str) -> list[int]:
        """`sent` needs the caller's lease; returns the ids moved. `delivered` is accepted from
        whoever saw the agent take the command (the agent's journal makes a second delivery
        harmless); returns every id that is `delivered` now, moved by this call or an earlier
        one, because the agent executes only what this answer confirms: a command that went
        final undelivered (expired, cancelled) meanwhile is left out and never runs."""
        if not ids:
            return []
        with self.transaction() as tx:
            params: dict[str, Any] = {"ids": tx.list_param(ids), "owner": owner}
            if status == Status.SENT:
                rows, _ = tx.move(
                    f"{tx.in_list('id', 'ids')} AND lease_owner = :owner AND status = 'processing'",
                    params,
                    Status.SENT,
                    sets=", sent_at = :_now",
                )
            elif status == Status.DELIVERED:
                # A node may report a command it does not hold (its lease lapsed: the agent
                # has it all the same), but not one another node holds now: that is a zombie
                # node waking up with a stale mailbox.
                stale = (
                    " AND NOT (status IN ('processing', 'sent') AND lease_owner IS NOT NULL "
                    "AND lease_owner <> :owner)"
                    if owner is not None
                    else ""
                )
                rows, _ = tx.move(
                    f"{tx.in_list('id', 'ids')} AND expanded = 0{stale}",
                    params,
                    Status.DELIVERED,
                    sets=", delivered_at = :_now, timeout_at = :_now + timeout, "
                    "lease_owner = NULL, lease_expires_at = NULL",
                )
                moved = {int(r[0]) for r in rows}
                rest = [i for i in dict.fromkeys(ids) if i not in moved]
                if rest:  # acked before (the agent repeats an ack whose answer it lost)
                    moved.update(
                        int(r[0])
                        for r in tx.all(
                            f"SELECT id FROM commands WHERE {tx.in_list('id', 'rest')} "
                            "AND status IN ('delivered', 'running')",
                            {"rest": tx.list_param(rest)},
                        )
                    )
                return sorted(moved)
            else:
                raise InvalidParams(f"status '{status}' cannot be marked; use results")
        return sorted(r[0] for r in rows)

    def command_heartbeats(self, beats: Sequence[Beat]) -> dict[int, int]:
        """Heartbeats of commands agents are executing, many agents' in one write: a
        `delivered` command becomes `running` (counted), every running one is stale two
        intervals from now, keeps the progress reported and takes its output chunks in order
        (bounded). Returns, for each id running now, the number of its output chunks kept
        (the next `seq` it takes); the others went final (cancelled, timed out) or were
        never delivered, and their agents may stop reporting on them."""
        latest: dict[int, Beat] = {}
        output: dict[int, list[tuple[int, str]]] = {}
        for b in beats:  # a repeated id: its last beat counts, its chunks all do
            latest[b.id] = b
            output.setdefault(b.id, []).extend(b.output)
        if not latest:
            return {}
        ids = sorted(latest)
        with self.transaction() as tx:
            for part in chunks(ids, 20_000):
                tx.move(
                    f"{tx.in_list('id', 'ids')} AND expanded = 0",
                    {"ids": tx.list_param(part)},
                    Status.RUNNING,
                )
            state = {
                int(r[0]): (int(r[1]), int(r[2]))
                for part in chunks(ids, 20_000)
                for r in tx.all(
                    "SELECT id, output_chunks, output_bytes FROM commands WHERE "
                    f"{tx.in_list('id', 'ids')} AND status = 'running'",
                    {"ids": tx.list_param(part)},
                )
            }
            rows, kept = [], []
            for cid, (n, size) in sorted(state.items()):
                b = latest[cid]
                for seq, data in sorted(set(output[cid])):
                    if seq != n or size >= OUTPUT_MAX:
                        continue  # a repeat (seq < n), a gap the agent fills later, or full
                    data = _fit(data, OUTPUT_MAX - size)
                    kept.append({"cid": cid, "seq": seq, "at": tx.now, "data": data})
                    n, size = n + 1, size + len(data.encode())
                state[cid] = (n, size)
                rows.append(
                    {
                        "id": cid,
                        "now": tx.now,
                        "stale": tx.now + STALE_AFTER_INTERVALS * b.interval,
                        "reported": int(b.percent is not None or b.message is not None),
                        "pct": b.percent,
                        "msg": None if b.message is None else b.message[:500],
                        "n": n,
                        "size": size,
                    }
                )
            tx.many(
                "INSERT INTO command_output (command_id, seq, at, data) "
                "VALUES (:cid, :seq, :at, :data)",
                kept,
            )
            tx.many(
                "UPDATE commands SET stale_at = :stale, updated_at = :now, "
                "progress_percent = CASE WHEN :reported = 1 THEN :pct ELSE progress_percent END, "
                "progress_message = CASE WHEN :reported = 1 THEN :msg ELSE progress_message END, "
                "progress_at = CASE WHEN :reported = 1 THEN :now ELSE progress_at END, "
                "output_chunks = :n, output_bytes = :size WHERE id = :id",
                rows,
            )
        return {cid: n for cid, (n, _) in state.items()}

    def command_output(self, command_id: int, after: int = -1, limit: int = 100) -> list[Output]:
        """A command's output chunks with `seq` > `after`, in order."""
        with self.reading() as tx:
            rows = tx.all(
                "SELECT seq, at, data FROM command_output WHERE command_id = :id AND seq > :after "
                "ORDER BY seq LIMIT :limit",
                {"id": command_id, "after": after, "limit": limit},
            )
        return [Output(int(r[0]), float(r[1]), str(r[2])) for r in rows]

    def complete(
        self, results: list[Result], agent_fields: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Record results, idempotent per command id: a repeat of a final result is a no-op.

        In the same transaction, a success recorded now whose data carries any of
        `agent_fields` (strings: the configuration hash the agent now runs, its new version)
        updates its agent's row (the catalog's `AGENT_FIELDS`)."""
        outcome: dict[int, str] = {}
        by_id = {r.id: r for r in results}
        for r in results:
            if r.status not in (Status.SUCCESS, Status.FAILURE):
                outcome[r.id] = (
                    f"rejected: result status must be success or failure, not {r.status}"
                )
        wanted = sorted(i for i in by_id if i not in outcome)
        with self.transaction() as tx:
            current = {
                row[0]: row
                for part in chunks(wanted, 20_000)
                for row in tx.select_locked(
                    tx.in_list("id", "ids"), {"ids": tx.list_param(part)}, None, False
                )
            }
            updates = []
            reported: dict[int, dict[str, str]] = {}
            for cid in wanted:
                res = by_id[cid]
                row = current.get(cid)
                if row is None:
                    outcome[cid] = "not_found"
                    continue
                _, old, parent_id, task_id, expanded = row
                if old in FINAL:
                    outcome[cid] = "duplicate" if old == res.status else f"ignored: already {old}"
                    continue
                if expanded:
                    outcome[cid] = "rejected: a parent's result is derived from its children"
                    continue
                updates.append(
                    {
                        "id": cid,
                        "s": res.status,
                        "code": res.code,
                        "msg": res.message[:4000],
                        "data": dumps(res.data),
                        "now": tx.now,
                    }
                )
                tx.count(parent_id, task_id, False, old, -1)
                tx.count(parent_id, task_id, False, res.status, +1)
                if parent_id is not None:
                    tx.touched_parents.add(parent_id)
                tx.touched_tasks.add(task_id)
                outcome[cid] = "recorded"
                fields = _reported(res.data, agent_fields) if res.status == Status.SUCCESS else {}
                if fields:
                    reported[cid] = fields
            tx.many(
                "UPDATE commands SET status = :s, result_code = :code, result_message = :msg, "
                "result_data = :data, completed_at = :now, updated_at = :now, "
                "lease_owner = NULL, lease_expires_at = NULL WHERE id = :id",
                updates,
            )
            tx.command_events(sorted(cid for cid, o in outcome.items() if o == "recorded"))
            if reported:
                tx.report_agent_fields(reported)
        return [{"id": r.id, "outcome": outcome[r.id]} for r in results]

    def cancel_task(self, task_id: int) -> int:
        with self.transaction() as tx:
            tx.lock_task(task_id)
            tx.ex(
                "UPDATE tasks SET cancelled = 1, updated_at = :now WHERE id = :id",
                {"now": tx.now, "id": task_id},
            )
            rows, _ = tx.move(
                "task_id = :tid AND expanded = 0",
                {"tid": task_id},
                Status.CANCELLED,
                sets=", completed_at = :_now, result_message = 'cancelled', "
                "lease_owner = NULL, lease_expires_at = NULL",
            )
            # parents already handed on, with no child left to settle them
            for (pid,) in tx.all(
                "SELECT id FROM commands WHERE task_id = :tid AND expanded = 1 "
                f"AND status IN {ACTIVE_SQL}",
                {"tid": task_id},
            ):
                tx.touched_parents.add(int(pid))
            tx.touched_tasks.add(task_id)
        return len(rows)

    def sweep(
        self,
        now: float | None = None,
        batch: int = 5000,
        disconnect_after: float | None = None,
        silent_after: float | None = None,
    ) -> SweepReport:
        """Time-driven moves: lapsed leases back to pending, missed deadlines to expired,
        delivered commands past their execution timeout to timeout; with `silent_after`,
        the undelivered agent commands of a server node whose heartbeat stopped that long
        ago back to pending at once instead of when their leases lapse."""
        report = SweepReport()
        if silent_after is not None:
            self._hand_back_silent(report, now, silent_after)
        steps: list[tuple[str, Status, str, str]] = [
            (
                "status IN ('processing', 'sent') AND lease_expires_at < :t AND expanded = 0",
                Status.PENDING,
                ", lease_owner = NULL, lease_expires_at = NULL",
                "lease_lapsed",
            ),
            (
                f"status IN {UNDELIVERED_SQL} AND expires_at < :t AND expanded = 0",
                Status.EXPIRED,
                ", completed_at = :_now, lease_owner = NULL, lease_expires_at = NULL, "
                "result_message = 'not delivered before its deadline'",
                "expired",
            ),
            (
                "status = 'delivered' AND timeout_at < :t",
                Status.TIMEOUT,
                ", completed_at = :_now, result_message = 'no result within the execution timeout'",
                "timed_out",
            ),
            (
                "status = 'running' AND timeout_at < :t",
                Status.TIMEOUT,
                ", completed_at = :_now, result_message = 'no result within the execution timeout'",
                "timed_out",
            ),
            (
                "status = 'running' AND stale_at < :t",
                Status.TIMEOUT,
                f", completed_at = :_now, result_message = '{STOPPED_REPORTING}'",
                "stopped_reporting",
            ),
        ]
        for where, new, sets, field_name in steps:
            while True:
                with self.transaction() as tx:
                    t = tx.now if now is None else now
                    rows, _ = tx.move(
                        where, {"t": t}, new, sets=sets, limit=batch, skip_locked=True
                    )
                    if rows and new == Status.PENDING:
                        tx.settle_removed(ids=[int(r[0]) for r in rows])
                        tx.notify("agent")
                        tx.notify("server")
                        tx.notify("indexer")
                setattr(report, field_name, getattr(report, field_name) + len(rows))
                if len(rows) < batch:
                    break
        if disconnect_after is not None:
            with self.transaction() as tx:
                t = tx.now if now is None else now
                gone = tx.update_returning(
                    "UPDATE agents SET status = 'disconnected', updated_at = :now "
                    "WHERE status = 'active' AND last_seen < :t RETURNING id",
                    {"now": tx.now, "t": t - disconnect_after},
                )
                # their events from what the update returned: the scan is made once a second
                tx.add_events(
                    "agent",
                    [
                        {"type": "disconnected", "subject": r[0], "data": {"previous": "active"}}
                        for r in gone
                    ],
                )
                report.disconnected = len(gone)
        return report

    def _hand_back_silent(self, report: SweepReport, now: float | None, after: float) -> None:
        """A node that stopped heartbeating is dead or cut off: its agents have gone on to
        other nodes, which may claim their commands now. As after a lapsed lease, a node that
        is only cut off can no longer mark or renew what it held; a command it had already
        handed to an agent is confirmed to that agent once, whichever node the ack reaches,
        and the agent's journal runs a command once. Nodes silent for longer than
        SILENT_HORIZON are left to the lapse of their leases."""
        with self.transaction() as tx:
            t = tx.now if now is None else now
            silent = tx.all(
                "SELECT id FROM nodes WHERE heartbeat_at < :dead AND heartbeat_at >= :horizon",
                {"dead": t - after, "horizon": t - after - SILENT_HORIZON},
            )
            for (node,) in silent:
                prefix = f"{node}#"
                n = self._hand_back(
                    tx,
                    "status IN ('processing', 'sent') AND target_type = 'agent' "
                    "AND substr(lease_owner, 1, :n) = :prefix",
                    {"n": len(prefix), "prefix": prefix},
                )
                if n:
                    report.silent_nodes[str(node)] = n
                    report.node_silent += n


def _fit(text: str, room: int) -> str:
    """`text`, cut to at most `room` bytes of UTF-8 (on a character boundary)."""
    raw = text.encode()
    return text if len(raw) <= room else raw[: max(0, room)].decode(errors="ignore")


def _reported(data: Any, fields: tuple[str, ...]) -> dict[str, str]:
    if not fields or not isinstance(data, dict):
        return {}
    return {k: data[k] for k in fields if isinstance(data.get(k), str)}
