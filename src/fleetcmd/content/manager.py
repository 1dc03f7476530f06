"""The content manager: the seed's "0- Download content, 1- Update index, 2- Generate task".

Each poll reads the feed's manifest (only when it changed), trusts nothing it cannot verify
(manifest signature, then each item's size, SHA-256 and signature, then its schema), writes the
good, changed items to their content index and files the unattended task of that row of the
catalog. A refused item is reported and leaves the content already indexed untouched; a refused
manifest changes nothing at all.

Restarts never file a task twice: every task carries an idempotency key made of
feed + item + version, and an item is marked done (in DATA_DIR/content-state.json) only after
its index document and its tasks were both accepted. The index documents are the truth; the
state file only spares work.

Over 500 lines on purpose: the verification chain (manifest, item, schema) and the filing
that depends on it read top to bottom as one procedure; the feed client is content/feed.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcmd.content.feed import FeedError, FeedSource, Manifest, ManifestItem, parse_manifest
from fleetcmd.content.indexer_api import IndexerApi, IndexerError, TaskFiled, TaskRefused
from fleetcmd.model import content_signing as signing
from fleetcmd.model.content import ContentError, parse_item

log = logging.getLogger("fleetcmd.content")

# Agent packages are listed in the indexer's `agent-packages` index; the bytes are blobs.
PACKAGE_INDEX = "agent-packages"
PACKAGE_PREFIX = ""
STATUS_INDEX = "content-status"
# Packages first (servers can fetch them at once); active responses before the rules naming them.
APPLY_ORDER = ("agent-package", "active-response", "sca", "cve", "ruleset")


@dataclass(frozen=True)
class Refusal:
    item: str  # type:id, or "manifest"
    version: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "version": self.version, "reason": self.reason}


@dataclass
class PollReport:
    """What one poll did; also written to the indexer as the content status."""

    feed: str | None
    location: str
    status: str = "unchanged"  # unchanged | applied | refused | error
    serial: int | None = None
    applied: list[str] = field(default_factory=list)  # type:id@version written to an index
    refused: list[Refusal] = field(default_factory=list)
    tasks: list[TaskFiled] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def new_tasks(self) -> list[TaskFiled]:
        return [t for t in self.tasks if t.created]

    def to_json(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "location": self.location,
            "status": self.status,
            "serial": self.serial,
            "applied": self.applied,
            "refused": [r.to_json() for r in self.refused],
            "tasks": [t.to_json() for t in self.tasks],
            "errors": self.errors,
        }


@dataclass
class LocalState:
    """What this content manager applied last (a cache; the indexer is the truth)."""

    feed: str | None = None
    serial: int | None = None
    marker: dict[str, str] = field(default_factory=dict)
    items: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LocalState:
        try:
            raw = json.loads(path.read_text())
            return cls(
                raw.get("feed"), raw.get("serial"), raw.get("marker") or {}, raw.get("items") or {}
            )
        except (OSError, ValueError, AttributeError):
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".content-state.")
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "feed": self.feed,
                    "serial": self.serial,
                    "marker": self.marker,
                    "items": self.items,
                },
                f,
                indent=1,
                sort_keys=True,
            )
        os.replace(tmp, path)


def write_poll(path: Path, doc: dict[str, Any]) -> None:
    """The last poll's outcome, replaced whole (a reader never sees half of it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Refused(Exception):
    """This item cannot be trusted or used; the content already indexed stays."""


def task_key(feed: str, *parts: str) -> str:
    """An idempotency key for a task of this feed; hashed when it would exceed 200 chars."""
    key = ":".join(["content-manager", feed, *parts])
    if len(key) > 200:
        key = "content-manager:" + hashlib.sha256(key.encode()).hexdigest()
    return key


class ContentManager:
    def __init__(
        self,
        indexer: IndexerApi,
        feed: FeedSource,
        trusted: signing.TrustedKeys,
        state_path: Path,
    ) -> None:
        self.indexer = indexer
        self.feed = feed
        self.trusted = trusted
        self.state_path = state_path
        self.state = LocalState.load(state_path)
        self._appliers: dict[str, Callable[[Manifest, list[_Verified], PollReport], None]] = {
            "agent-package": self._apply_packages,
            "active-response": self._apply_active_responses,
            "sca": self._apply_sca,
            "cve": self._apply_cves,
            "ruleset": self._apply_ruleset,
        }

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self,
        interval: float,
        stop: threading.Event,
        wake: threading.Event | None = None,
        report_path: Path | None = None,
    ) -> None:
        """Poll until `stop` is set; a failing poll is logged and retried at the next tick.
        Setting `wake` polls at once (`fleetcmd content poll`); the set of `stop` must set it
        too. Each poll's outcome goes to `report_path` (what `content poll` waits for)."""
        wake = wake or stop
        while not stop.is_set():
            wake.clear()
            started = time.time()
            outcome: dict[str, Any]
            try:
                outcome = {"report": self.poll_once().to_json()}
            except Exception as exc:
                log.exception("content poll failed; retrying in %.0fs", interval)
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            if report_path is not None:
                write_poll(
                    report_path, {"started_at": started, "finished_at": time.time(), **outcome}
                )
            wake.wait(interval)

    def poll_once(self) -> PollReport:
        report = PollReport(self.state.feed, self.feed.location)
        try:
            fetched = self.feed.manifest(self.state.marker)
        except FeedError as exc:
            report.status, report.errors = "error", [str(exc)]
            log.warning("feed %s: %s", self.feed.location, exc)
            return report
        if fetched is None:
            return report
        try:
            manifest = parse_manifest(fetched.body, self.trusted)
            report.feed, report.serial = manifest.feed, manifest.serial
            self._check_serial(manifest)
        except FeedError as exc:
            return self._refuse_manifest(report, fetched.body, fetched.marker, str(exc))
        except IndexerError as exc:
            report.status, report.errors = "error", [str(exc)]
            return report

        if self.state.feed != manifest.feed:
            self.state = LocalState(feed=manifest.feed)
        pending = self._verify_pending(manifest, report)
        for type_ in APPLY_ORDER:
            batch = [v for v in pending if v.item.type == type_]
            if not batch:
                continue
            try:
                self._appliers[type_](manifest, batch, report)
            except IndexerError as exc:
                report.errors.append(f"{type_}: {exc}")
                log.warning("feed %s serial %s: %s", manifest.feed, manifest.serial, exc)

        report.status = "error" if report.errors else ("refused" if report.refused else "applied")
        if not report.errors:
            # Only a fully processed manifest moves the marker: errors are retried next poll.
            self.state.serial = max(manifest.serial, self.state.serial or 0)
            self.state.marker = fetched.marker
        self.state.save(self.state_path)
        self._publish_status(report, manifest)
        return report

    # -- trust -----------------------------------------------------------------------------------
    def _check_serial(self, manifest: Manifest) -> None:
        """Refuse a manifest older than one already applied (a replayed or rolled-back feed)."""
        applied = self.state.serial if self.state.feed == manifest.feed else None
        status = self.indexer.get_document(STATUS_INDEX, manifest.feed)
        if status and isinstance(status.get("applied_serial"), int):
            applied = max(applied or 0, status["applied_serial"])
        if applied is not None and manifest.serial < applied:
            raise FeedError(
                f"manifest serial {manifest.serial} is older than the applied serial {applied} "
                "(rollback refused)"
            )

    def _verify_pending(self, manifest: Manifest, report: PollReport) -> list[_Verified]:
        """Items not yet applied at this version, downloaded and verified; others refused."""
        out: list[_Verified] = []
        first_ruleset = next((i.key for i in manifest.items if i.type == "ruleset"), None)
        for item in manifest.items:
            done = self.state.items.get(item.key)
            if done == {"version": item.version, "sha256": item.sha256}:
                continue
            try:
                if item.type == "ruleset" and item.key != first_ruleset:
                    raise Refused(f"a feed carries one ruleset; {first_ruleset} came first")
                out.append(self._verify(manifest, item))
            except Refused as exc:
                self._refuse_item(report, manifest, item, str(exc))
            except IndexerError as exc:
                report.errors.append(f"{item.key}: {exc}")
        return out

    def _verify(self, manifest: Manifest, item: ManifestItem) -> _Verified:
        if not self.trusted.verify_any(item.statement(), item.signature, manifest.key_id):
            raise Refused("item signature does not verify against the trusted key(s)")
        try:
            data = self.feed.fetch(item.path, item.size)
        except ContentError as exc:
            raise Refused(str(exc)) from None
        if len(data) != item.size:
            raise Refused(
                f"size is {len(data)}{'+' if len(data) > item.size else ''} bytes, "
                f"manifest says {item.size}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != item.sha256:
            raise Refused(f"sha256 is {digest}, manifest says {item.sha256}")
        try:
            id_, version, doc = parse_item(item.type, data, item.path)
        except ContentError as exc:
            raise Refused(f"content does not follow the {item.type} schema: {exc}") from None
        if (id_, version) != (item.id, item.version):
            raise Refused(f"content is {id_}@{version}, manifest says {item.id}@{item.version}")
        return _Verified(item, data, doc)

    def _refuse_item(
        self, report: PollReport, manifest: Manifest, item: ManifestItem, reason: str
    ) -> None:
        refusal = Refusal(item.key, item.version, reason)
        report.refused.append(refusal)
        log.error(
            "feed %s serial %s: REFUSED %s@%s: %s",
            manifest.feed,
            manifest.serial,
            item.key,
            item.version,
            reason,
        )
        try:
            self._audit(
                f"{manifest.serial}-{item.key}",
                {
                    "feed": manifest.feed,
                    "serial": manifest.serial,
                    "type": item.type,
                    "id": item.id,
                    "version": item.version,
                    "sha256": item.sha256,
                    "path": item.path,
                    "reason": reason,
                },
            )
        except IndexerError as exc:  # the refusal stands; reporting it is retried next poll
            report.errors.append(f"{item.key}: refusal not recorded: {exc}")

    def _refuse_manifest(
        self, report: PollReport, body: bytes, marker: dict[str, str], reason: str
    ) -> PollReport:
        report.status = "refused"
        report.refused.append(Refusal("manifest", None, reason))
        log.error("feed %s: manifest REFUSED, nothing applied: %s", self.feed.location, reason)
        digest = hashlib.sha256(body).hexdigest()
        feed, serial = report.feed, report.serial
        if serial is None:  # what the refused manifest claims: reported, never trusted
            feed, serial = _claimed(body)
        ident = f"{serial}-manifest" if serial is not None else f"manifest-{digest[:16]}"
        try:
            self._audit(
                ident,
                {
                    "feed": feed,
                    "location": self.feed.location,
                    "serial": serial,
                    "sha256": digest,
                    "reason": reason,
                },
            )
        except IndexerError as exc:
            report.errors.append(str(exc))
            return report
        # The same bad manifest is not re-examined (and re-reported) until it changes.
        self.state.marker = marker
        self.state.save(self.state_path)
        return report

    def _audit(self, ident: str, body: dict[str, Any]) -> None:
        """A refusal joins the audit trail (append-only) as `content.refuse`."""
        self.indexer.append_audit(
            {
                "actor": "content-manager",
                "action": "content.refuse",
                "outcome": "refused",
                "target": ident,
                "details": body,
            }
        )

    def _publish_status(self, report: PollReport, manifest: Manifest) -> None:
        """`content-status/<feed>`: the last poll, for operators and restarts."""
        body = {**report.to_json(), "polled_at": time.time(), "items": len(manifest.items)}
        body["applied_serial"] = self.state.serial
        try:
            self.indexer.put_document(STATUS_INDEX, manifest.feed, body)
        except IndexerError as exc:
            log.warning("could not publish the content status: %s", exc)

    # -- 1- update index, 2- generate task, per item type -------------------------------------
    def _current(self, index: str, doc_id: str, v: _Verified) -> bool:
        """Whether the index already holds this item; refuses a changed file under an old
        version (versions are immutable, else agents holding it would never be told)."""
        doc = self.indexer.get_document(index, doc_id)
        if doc is None:
            return False
        if doc.get("version") == v.item.version and doc.get("sha256") not in (None, v.item.sha256):
            raise Refused(
                f"version {v.item.version} is already indexed with sha256 {doc.get('sha256')}; "
                "changed content needs a new version"
            )
        return bool(doc.get("version") == v.item.version and doc.get("sha256") == v.item.sha256)

    def _each(
        self,
        manifest: Manifest,
        batch: list[_Verified],
        report: PollReport,
        apply: Callable[[_Verified], None],
    ) -> list[_Verified]:
        """Run `apply` per item; refusals are reported, the rest is marked done. Returns the
        items applied."""
        done = []
        for v in batch:
            try:
                apply(v)
            except Refused as exc:
                self._refuse_item(report, manifest, v.item, str(exc))
                continue
            except TaskRefused as exc:
                # Permanent (4xx): retrying the same task cannot help. The index is updated;
                # the refusal is reported like a refused item.
                self._refuse_item(report, manifest, v.item, f"task refused: {exc}")
            self._mark(v.item)
            done.append(v)
        return done

    def _mark(self, item: ManifestItem) -> None:
        self.state.items[item.key] = {"version": item.version, "sha256": item.sha256}

    def _meta(self, manifest: Manifest, v: _Verified) -> dict[str, Any]:
        return {
            "sha256": v.item.sha256,
            "signature": v.item.signature,
            "feed": manifest.feed,
            "serial": manifest.serial,
        }

    def _file(self, report: PollReport, type_: str, params: dict[str, Any], key: str) -> None:
        filed = self.indexer.submit_task(type_, params, key)
        report.tasks.append(filed)
        if filed.created:
            log.info("filed %s task %s (%s)", type_, filed.task_id, key)

    def _apply_packages(self, m: Manifest, batch: list[_Verified], report: PollReport) -> None:
        """Row 4: store the bytes and the package record, then `agent-package-new`."""

        def apply(v: _Verified) -> None:
            doc_id = f"{PACKAGE_PREFIX}{v.item.id}-{v.item.version}"
            if not self._current(PACKAGE_INDEX, doc_id, v):
                self.indexer.put_blob(v.data)
                self.indexer.put_document(
                    PACKAGE_INDEX,
                    doc_id,
                    {
                        "name": v.item.id,
                        "version": v.item.version,
                        "size": v.item.size,
                        **self._meta(m, v),
                    },
                )
                report.applied.append(f"{v.item.key}@{v.item.version}")
            self._file(
                report,
                "agent-package-new",
                {"package": v.item.id, "version": v.item.version, "sha256": v.item.sha256},
                task_key(m.feed, v.item.type, v.item.id, v.item.version),
            )

        self._each(m, batch, report, apply)

    def _apply_active_responses(
        self, m: Manifest, batch: list[_Verified], report: PollReport
    ) -> None:
        """Row 10: the definition goes to `active-response/content/<name>`; each group that has
        it enabled (`active-response/<group>/<name>`) gets the new version through an
        `active-response-configuration` task (the task manager rewrites the group's document)."""

        def apply(v: _Verified) -> None:
            name = v.item.id
            if not self._current("active-response", f"content/{name}", v):
                self.indexer.put_document(
                    "active-response", f"content/{name}", {**v.doc, **self._meta(m, v)}
                )
                report.applied.append(f"{v.item.key}@{v.item.version}")
            enabled = self.indexer.list_documents("active-response")
            for doc_id, current in sorted(enabled.items()):
                group, _, doc_name = doc_id.partition("/")
                if group == "content" or doc_name != name or current == v.doc:
                    continue
                try:
                    self._file(
                        report,
                        "active-response-configuration",
                        {"group": group, "name": name, "definition": v.doc, "enabled": True},
                        task_key(m.feed, v.item.type, name, v.item.version, group),
                    )
                except TaskRefused as exc:  # e.g. the group was deleted: the others go on
                    self._refuse_item(report, m, v.item, f"group {group}: task refused: {exc}")

        self._each(m, batch, report, apply)

    def _apply_sca(self, m: Manifest, batch: list[_Verified], report: PollReport) -> None:
        """Row 7: the policy goes to `sca/content/<policy_id>`, then `sca-content-update`
        (the task manager reaches the agents of every group using the policy)."""

        def apply(v: _Verified) -> None:
            doc_id = f"content/{v.item.id}"
            if not self._current("sca", doc_id, v):
                self.indexer.put_document("sca", doc_id, {**v.doc, **self._meta(m, v)})
                report.applied.append(f"{v.item.key}@{v.item.version}")
            self._file(
                report,
                "sca-content-update",
                {"policy_id": v.item.id, "version": v.item.version},
                task_key(m.feed, v.item.type, v.item.id, v.item.version),
            )

        self._each(m, batch, report, apply)

    def _apply_cves(self, m: Manifest, batch: list[_Verified], report: PollReport) -> None:
        """Rows 9 and 8: every changed record goes to `cve/<id>`; then, once per manifest,
        `cve-content-update` (engines reload) and `vulnerability-rescan` of all agents."""
        written: list[_Verified] = []

        def write(v: _Verified) -> None:
            if not self._current("cve", v.item.id, v):
                self.indexer.put_document("cve", v.item.id, {**v.doc, **self._meta(m, v)})
                report.applied.append(f"{v.item.key}@{v.item.version}")
            written.append(v)

        # Records are marked done only after both tasks were accepted (below).
        for v in batch:
            try:
                write(v)
            except Refused as exc:
                self._refuse_item(report, m, v.item, str(exc))
        if not written:
            return
        version = f"{m.feed}-{m.serial}"[-64:]
        try:
            self._file(
                report,
                "cve-content-update",
                {"version": version},
                task_key(m.feed, "cve-content-update", str(m.serial)),
            )
            self._file(
                report,
                "vulnerability-rescan",
                {"all": True, "reason": f"CVE content {version}"},
                task_key(m.feed, "vulnerability-rescan", str(m.serial)),
            )
        except TaskRefused as exc:
            for v in written:
                self._refuse_item(report, m, v.item, f"task refused: {exc}")
        for v in written:
            self._mark(v.item)

    def _apply_ruleset(self, m: Manifest, batch: list[_Verified], report: PollReport) -> None:
        """Row 12: the rules go to `ruleset/rules` = {version, rules}, then `ruleset-update`."""

        def apply(v: _Verified) -> None:
            if not self._current("ruleset", "rules", v):
                self.indexer.put_document("ruleset", "rules", {**v.doc, **self._meta(m, v)})
                report.applied.append(f"{v.item.key}@{v.item.version}")
            self._file(
                report,
                "ruleset-update",
                {"version": v.item.version},
                task_key(m.feed, v.item.type, v.item.id, v.item.version),
            )

        self._each(m, batch, report, apply)


def _claimed(body: bytes) -> tuple[str | None, int | None]:
    """The feed name and serial an untrusted manifest claims, for the refusal report."""
    try:
        raw = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(raw, dict):
        return None, None
    feed, serial = raw.get("feed"), raw.get("serial")
    return (
        feed if isinstance(feed, str) and len(feed) <= 128 else None,
        serial if isinstance(serial, int) and not isinstance(serial, bool) else None,
    )


@dataclass(frozen=True)
class _Verified:
    """An item whose bytes matched its manifest entry, signature and schema."""

    item: ManifestItem
    data: bytes
    doc: dict[str, Any]
