"""CVE matching: agents' package inventories against the `cve` index (rows 8 and 9).

The CVE records are loaded once into memory, indexed by (ecosystem, package name), and
replaced whole on `cve-reload`. An inventory is matched when an agent posts it (on start and
on `vulnerability-rescan`), and every agent's stored inventory is matched again after a
reload. Findings go to `vulnerabilities/<agent id>`, written only when they changed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fleetcmd.model.content import CveRecord
from fleetcmd.server.engine.versions import (
    SOURCE_ECOSYSTEM,
    BadVersion,
    in_range,
    normalize_name,
)
from fleetcmd.server.indexer_client import IndexerClient, IndexerError

log = logging.getLogger("fleetcmd.server.engine.vulnerabilities")

CVE_FIELDS = set(CveRecord.model_fields)
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
AGENT_PAGE = 1000
PARALLEL = 8


@dataclass(frozen=True)
class Finding:
    cve: str
    package: str
    ecosystem: str
    installed: str
    fixed: str | None
    introduced: str
    severity: str
    cvss: float | None
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cve": self.cve,
            "package": self.package,
            "ecosystem": self.ecosystem,
            "installed": self.installed,
            "fixed": self.fixed,
            "introduced": self.introduced,
            "severity": self.severity,
            "cvss": self.cvss,
            "summary": self.summary,
        }


@dataclass
class CveDatabase:
    """CVE records by (ecosystem, normalized package name), and what the load refused."""

    version: str | None = None
    records: int = 0
    by_package: dict[tuple[str, str], list[CveRecord]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # doc id -> reason

    @classmethod
    def from_documents(cls, docs: dict[str, Any], version: str | None) -> CveDatabase:
        """One bad record is refused and reported; it does not hide the thousands of good ones."""
        db = cls(version=version)
        for doc_id, doc in sorted(docs.items()):
            if not isinstance(doc, dict):
                db.refused[doc_id] = "not an object"
                continue
            try:
                record = CveRecord.model_validate({k: v for k, v in doc.items() if k in CVE_FIELDS})
            except ValidationError as exc:
                db.refused[doc_id] = "; ".join(
                    f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
                )
                continue
            key = (record.ecosystem, normalize_name(record.ecosystem, record.package))
            db.by_package.setdefault(key, []).append(record)
            db.records += 1
        return db

    def match(self, packages: Iterable[dict[str, Any]]) -> list[Finding]:
        """Findings for an inventory, most severe first. A version that cannot be placed in
        its ecosystem's order is skipped (and logged), never guessed."""
        found: dict[tuple[str, str, str], Finding] = {}
        for p in packages:
            ecosystem = SOURCE_ECOSYSTEM.get(str(p.get("source") or "dpkg").lower())
            name, installed = str(p.get("name", "")), str(p.get("version", ""))
            if ecosystem is None or not name or not installed:
                continue
            for record in self.by_package.get((ecosystem, normalize_name(ecosystem, name)), ()):
                for r in record.affected:
                    try:
                        hit = in_range(ecosystem, installed, r.introduced, r.fixed)
                    except BadVersion as exc:
                        log.debug("%s %s vs %s: %s", name, installed, record.id, exc)
                        break
                    if hit:
                        found[(record.id, name, installed)] = Finding(
                            record.id,
                            name,
                            ecosystem,
                            installed,
                            r.fixed,
                            r.introduced,
                            record.severity,
                            record.cvss,
                            record.summary,
                        )
                        break
        return sorted(
            found.values(),
            key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), -(f.cvss or 0), f.cve, f.package),
        )


class VulnerabilityScanner:
    """Matches inventories in the background (latest inventory per agent wins) and keeps the
    `vulnerabilities` index in step."""

    def __init__(self, indexer: IndexerClient) -> None:
        self.indexer = indexer
        self.db = CveDatabase()
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._kick = asyncio.Event()
        self._written: dict[str, str] = {}  # agent -> digest of the last document written
        self._task: asyncio.Task[None] | None = None
        self.scans = 0

    # -- loading ---------------------------------------------------------------------------
    async def load(self, version: str | None = None) -> CveDatabase:
        """Read every CVE record from the index into a new database and switch to it."""
        docs = await self.indexer.get("/indexes/cve")
        db = CveDatabase.from_documents(docs.get("items") or {}, version)
        if version is None:
            db.version = self.db.version or ("index-" + _digest(sorted(docs.get("items") or {})))
        for doc_id, reason in db.refused.items():
            log.error("CVE record %s refused: %s", doc_id, reason)
        self.db = db
        log.info(
            "CVE data %s loaded: %d record(s), %d refused", db.version, db.records, len(db.refused)
        )
        return db

    # -- matching ----------------------------------------------------------------------------
    def submit(self, agent_id: str, packages: list[dict[str, Any]]) -> None:
        """Match this inventory soon (the Comms API answers the agent without waiting)."""
        self._pending[agent_id] = packages
        self._kick.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-vulnerabilities")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                agent_id, packages = self._pending.popitem()
                try:
                    await self.scan(agent_id, packages)
                except Exception as exc:
                    log.warning("vulnerability scan of agent %s failed: %s", agent_id, exc)
                await asyncio.sleep(0)

    async def scan(self, agent_id: str, packages: list[dict[str, Any]]) -> list[Finding]:
        """Match one inventory and store the findings if they changed."""
        findings = self.db.match(packages)
        self.scans += 1
        doc = {
            "agent": agent_id,
            "cve_version": self.db.version,
            "packages_scanned": len(packages),
            "counts": _counts(findings),
            "findings": [f.to_json() for f in findings],
        }
        digest = _digest(doc)
        if self._written.get(agent_id) != digest:
            await self.indexer.put(
                f"/indexes/vulnerabilities/{agent_id}", {**doc, "updated_at": time.time()}
            )
            self._written[agent_id] = digest
            log.info(
                "agent %s: %d vulnerabilit%s (CVE data %s)",
                agent_id,
                len(findings),
                "y" if len(findings) == 1 else "ies",
                self.db.version,
            )
        return findings

    async def rescan_all(self) -> dict[str, int]:
        """Match the stored inventory of every agent of the fleet (after a reload). Agents are
        listed page by page and inventories read a few at a time, so memory stays bounded
        with any fleet size."""
        agents = findings = 0
        gate = asyncio.Semaphore(PARALLEL)

        async def one(agent_id: str) -> int:
            async with gate:
                try:
                    inv = await self.indexer.get(f"/indexes/packages/{agent_id}")
                except IndexerError as exc:
                    if exc.status == 404:
                        return -1  # never sent an inventory: nothing to match
                    raise
                return len(await self.scan(agent_id, list(inv.get("packages") or [])))

        cursor: str | None = None
        while True:
            page = await self.indexer.get("/agents", cursor=cursor, limit=AGENT_PAGE)
            counts = await asyncio.gather(*(one(str(a["id"])) for a in page["items"]))
            agents += sum(1 for n in counts if n >= 0)
            findings += sum(n for n in counts if n > 0)
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return {"agents": agents, "findings": findings}


def _counts(findings: list[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITY_ORDER, 0)
    for f in findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    return counts


def _digest(value: Any) -> str:
    body = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]
