"""The engine of a server node (SPEC §1): agent events through the detection rules into
alerts and active-response tasks; package inventories against CVE data into findings.

Reloads (`ruleset-reload`, `cve-reload`) swap the whole rule set or CVE database at once,
while the node runs: an event is evaluated by the old rules or by the new ones, never a mix.
A ruleset that does not parse is refused and the rules in force stay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fleetcmd.model.content import Ruleset
from fleetcmd.server.engine.alerts import AlertWriter
from fleetcmd.server.engine.responses import Responder
from fleetcmd.server.engine.rules import EngineEvent, Match, RuleSet, RulesetInvalid, parse_ruleset
from fleetcmd.server.engine.seen import SeenEvents
from fleetcmd.server.engine.vulnerabilities import VulnerabilityScanner
from fleetcmd.server.indexer_client import IndexerClient, IndexerError

log = logging.getLogger("fleetcmd.server.engine")

__all__ = ["Engine", "RulesetInvalid"]

EVENT_BATCH = 2000
MAX_RESPONSES_IN_FLIGHT = 64


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "fleetcmd_engine_events_total", "Agent events evaluated", registry=registry
        )
        self.duplicates = Counter(
            "fleetcmd_engine_duplicate_events_total",
            "Agent events re-sent with an id already evaluated (not evaluated again)",
            registry=registry,
        )
        self.alerts = Counter(
            "fleetcmd_engine_alerts_total", "Alerts raised", ["level"], registry=registry
        )
        self.responses = Counter(
            "fleetcmd_engine_responses_total",
            "Active responses of alerts, by outcome",
            ["status"],
            registry=registry,
        )
        self.rules = Gauge("fleetcmd_engine_rules", "Detection rules in force", registry=registry)
        self.cve_records = Gauge(
            "fleetcmd_engine_cve_records", "CVE records loaded", registry=registry
        )


class Engine:
    def __init__(
        self, indexer: IndexerClient, data_dir: Path, registry: CollectorRegistry | None = None
    ) -> None:
        self.indexer = indexer
        self.rules = RuleSet()
        self.seen = SeenEvents()
        self.alerts = AlertWriter(indexer)
        self.responder = Responder(indexer)
        self.vulnerabilities = VulnerabilityScanner(indexer)
        self.metrics = EngineMetrics(registry or CollectorRegistry())
        # The last ruleset that parsed, so that a restart after a broken update still has rules.
        self.last_good = data_dir / "engine" / "ruleset.json"
        self.wakeup = asyncio.Event()
        self._responses = asyncio.Semaphore(MAX_RESPONSES_IN_FLIGHT)
        self._pending: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self, events: Callable[[], deque[dict[str, Any]]]) -> None:
        """Load rules and CVE data (a missing or broken index does not stop the node), then
        start consuming `events()` (the Comms API's queue, read afresh since it is resized)."""
        try:
            await self.load_rules()
        except (RulesetInvalid, IndexerError) as exc:
            self._load_last_good(str(exc))
        try:
            await self.reload_cves(None, rematch=False)
        except IndexerError as exc:
            log.warning("CVE data not loaded at start: %s", exc)
        self.alerts.start()
        self.vulnerabilities.start()
        self._tasks.append(asyncio.create_task(self._consume(events), name="engine-events"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)
        await self.vulnerabilities.stop()
        await self.alerts.stop()

    # -- rules -----------------------------------------------------------------------------------
    async def load_rules(self) -> dict[str, Any]:
        """Row 12: read `ruleset/rules`, parse, and swap it in. Raises `RulesetInvalid` (the
        rules in force stay) when the document is missing or does not parse."""
        try:
            doc = await self.indexer.get("/indexes/ruleset/rules")
        except IndexerError as exc:
            if exc.status == 404:
                raise RulesetInvalid("no ruleset in the index (ruleset/rules)") from None
            raise
        ruleset = parse_ruleset(doc)
        previous = self.rules.version
        self.rules.load(ruleset)
        self.metrics.rules.set(len(self.rules))
        self._save_last_good(ruleset)
        log.info(
            "ruleset %s loaded: %d rule(s) (was %s)", ruleset.version, len(self.rules), previous
        )
        return {"version": ruleset.version, "rules": len(self.rules), "previous": previous}

    def _save_last_good(self, ruleset: Ruleset) -> None:
        try:
            self.last_good.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.last_good.parent, prefix=".ruleset.")
            with os.fdopen(fd, "w") as f:
                json.dump(ruleset.model_dump(mode="json", by_alias=True, exclude_none=True), f)
            os.replace(tmp, self.last_good)
        except OSError as exc:
            log.warning("could not keep the last good ruleset in %s: %s", self.last_good, exc)

    def _load_last_good(self, why: str) -> None:
        try:
            ruleset = parse_ruleset(json.loads(self.last_good.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("no rules loaded (%s; no usable last good ruleset: %s)", why, exc)
            return
        self.rules.load(ruleset)
        self.metrics.rules.set(len(self.rules))
        log.warning(
            "index ruleset not usable (%s); running the last good ruleset %s (%d rules)",
            why,
            ruleset.version,
            len(self.rules),
        )

    # -- CVE data ----------------------------------------------------------------------------------
    async def reload_cves(self, version: str | None, *, rematch: bool = True) -> dict[str, Any]:
        """Row 9: reload the CVE records and match every stored inventory against them."""
        db = await self.vulnerabilities.load(version)
        self.metrics.cve_records.set(db.records)
        result: dict[str, Any] = {
            "version": db.version,
            "records": db.records,
            "refused": len(db.refused),
        }
        if rematch:
            counts = await self.vulnerabilities.rescan_all()
            result.update({"agents_rematched": counts["agents"], "findings": counts["findings"]})
        return result

    def inventory(self, agent_id: str, packages: list[dict[str, Any]]) -> None:
        """Row 8: an agent (re-)sent its inventory; match it in the background."""
        self.vulnerabilities.submit(agent_id, packages)

    # -- events ------------------------------------------------------------------------------------
    async def _consume(self, events: Callable[[], deque[dict[str, Any]]]) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            queue = events()
            while queue:
                batch = [queue.popleft() for _ in range(min(EVENT_BATCH, len(queue)))]
                try:
                    await self.process(
                        [EngineEvent(e["agent"], e["received_at"], e["event"]) for e in batch]
                    )
                except Exception:
                    log.exception("evaluating %d event(s) failed", len(batch))
                await asyncio.sleep(0)  # let the APIs breathe between batches
                queue = events()

    async def process(self, events: list[EngineEvent]) -> list[Match]:
        """Evaluate events (each id once per agent); queue their alerts; file the responses of
        those that ask for one."""
        fresh = [e for e in events if self.seen.fresh(e.agent, e.event, e.received_at)]
        if len(fresh) < len(events):
            self.metrics.duplicates.inc(len(events) - len(fresh))
        matches = self.rules.evaluate_all(fresh)
        self.metrics.events.inc(len(fresh))
        plain: list[dict[str, Any]] = []
        for m in matches:
            alert = self.alert(m)
            self.metrics.alerts.labels(str(m.rule.level)).inc()
            if m.rule.active_response is None:
                plain.append(alert)
                continue
            await self._responses.acquire()
            task = asyncio.create_task(self._respond(m, alert))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        self.alerts.add(plain)
        return matches

    async def _respond(self, match: Match, alert: dict[str, Any]) -> None:
        try:
            outcome = await self.responder.respond(match, alert["id"])
        except Exception as exc:
            log.exception("active response of alert %s failed", alert["id"])
            outcome = {"status": "failed", "reason": str(exc)[:500]}
        finally:
            self._responses.release()
        self.metrics.responses.labels(outcome["status"]).inc()
        self.alerts.add([{**alert, "active_response": outcome}])

    def alert(self, m: Match) -> dict[str, Any]:
        """The alert document: what fired, on which agent, on what event, when."""
        rule = m.rule
        doc: dict[str, Any] = {
            "id": m.alert_id,
            "timestamp": _iso(m.event.occurred_at),
            "received_at": _iso(m.event.received_at),
            "agent": {"id": m.event.agent},
            "rule": {
                "id": rule.id,
                "level": rule.level,
                "description": rule.description,
                "groups": list(rule.groups),
            },
            "ruleset_version": self.rules.version,
            "event": m.event.event,
        }
        if rule.threshold is not None:
            doc["threshold"] = {
                "count": rule.threshold.count,
                "window": rule.threshold.window,
                "events": m.count,
                "group": m.group,
            }
        return doc

    async def settled(self, timeout: float = 10.0) -> bool:
        """Whether queued responses and alert writes finished within `timeout` (tests)."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout)
        with contextlib.suppress(Exception):
            return await self.alerts.drained(timeout)
        return False
