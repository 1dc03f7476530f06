"""Security configuration assessment: owns `STATE_DIR/sca/`, `sca-results/` and the `sca`
section.

`sca`: `{"enabled": bool (default true), "interval": seconds (default 43200)}`. A policy is
evaluated when it is stored or replaced (rows 6 and 7), then every `interval`; the last
evaluation of each policy is kept in `sca-results/<policy_id>.json` (so a restart does not
re-run a fresh one) and sent to the server as events. Disabling SCA deletes every stored policy
and its results (R5): a disabled kind of content must not linger on the endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fleetcmd.agent import sca_eval
from fleetcmd.agent.modules import ConfigError, SectionModule, flag, seconds
from fleetcmd.agent.state import StateDir, write_json
from fleetcmd.model.config import config_hash
from fleetcmd.model.sca import FAILED

log = logging.getLogger("fleetcmd.agent.sca")

DEFAULT_INTERVAL = 43_200.0

# Sends events to the server (`POST /agents/events`); raises when they were not taken.
SendEvents = Callable[[list[dict[str, Any]]], None]


class ScaDisabled(ConfigError):
    """SCA content arrived while SCA is disabled by configuration."""


class ScaPolicyInvalid(ConfigError):
    """A policy the evaluator cannot use: refused, nothing stored."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Sca(SectionModule):
    section = "sca"

    def __init__(
        self,
        state: StateDir,
        send_events: SendEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.send_events = send_events
        self.clock = clock
        self.enabled = True
        self.interval = DEFAULT_INTERVAL
        # policy id -> wall-clock time of its next scheduled evaluation; built lazily.
        self._due: dict[str, float] | None = None
        self._unsent: set[str] = set()

    # -- configuration ----------------------------------------------------------------------------
    def check(self, section: dict[str, Any]) -> None:
        flag(section, self.section, "enabled", True)
        seconds(section, self.section, "interval", DEFAULT_INTERVAL)

    def configure(self, section: dict[str, Any]) -> list[str]:
        enabled = flag(section, self.section, "enabled", True)
        interval = seconds(section, self.section, "interval", DEFAULT_INTERVAL)
        changes = []
        if enabled != self.enabled:
            changes.append(f"sca {'enabled' if enabled else 'disabled'}")
        if interval != self.interval:
            changes.append(f"sca interval {interval:g}s")
            self._due = None  # recomputed from the stored results with the new interval
        self.enabled, self.interval = enabled, interval
        if not enabled:
            removed = self.state.clear_content(self.state.sca_dir)
            self.state.clear_content(self.state.sca_results_dir)
            self._due, self._unsent = None, set()
            if removed:
                changes.append(f"sca disabled: removed policies {', '.join(removed)}")
        return changes

    # -- content (rows 6 and 7) -------------------------------------------------------------------
    def store(self, policy_id: str, policy: Any, deadline: float | None = None) -> dict[str, Any]:
        """Check, store and evaluate a policy; returns its summary. Nothing is stored when the
        policy cannot be evaluated."""
        if not self.enabled:
            raise ScaDisabled(f"SCA is disabled by configuration; policy {policy_id} refused")
        if isinstance(policy, str):
            policy = _yaml(policy_id, policy)
        try:
            sca_eval.parse_policy(policy, policy_id)
        except sca_eval.PolicyError as exc:
            raise ScaPolicyInvalid(str(exc)) from None
        self.state.put_content(self.state.sca_dir, policy_id, policy)
        return self.evaluate(policy_id, deadline)

    def remove(self, policy_id: str) -> bool:
        existed = self.state.remove_content(self.state.sca_dir, policy_id)
        self.state.remove_content(self.state.sca_results_dir, policy_id)
        if self._due is not None:
            self._due.pop(policy_id, None)
        self._unsent.discard(policy_id)
        return existed

    def policies(self) -> list[str]:
        return self.state.list_content(self.state.sca_dir)

    def policy(self, policy_id: str) -> Any:
        return self.state.get_content(self.state.sca_dir, policy_id)

    def results(self, policy_id: str) -> dict[str, Any] | None:
        doc = self.state.get_content(self.state.sca_results_dir, policy_id)
        return doc if isinstance(doc, dict) else None

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, policy_id: str, deadline: float | None = None) -> dict[str, Any]:
        """Evaluate a stored policy now: results kept locally, then sent as events."""
        doc = self.policy(policy_id)
        if doc is None:
            raise ScaPolicyInvalid(f"no stored policy {policy_id}")
        policy = sca_eval.parse_policy(doc, policy_id)
        started = self.clock()
        ev = sca_eval.Evaluator(deadline).policy(policy)
        summary = ev.summary
        before_doc = self.results(policy_id) or {}
        previous = {r["id"]: r["status"] for r in before_doc.get("results", [])}
        events: list[dict[str, Any]] = [
            {
                "module": "sca",
                "type": "sca",
                "policy_id": policy_id,
                "policy_version": policy.version,
                "policy_name": policy.name,
                "evaluated_at": _iso(started),
                "results": ev.results,
                "summary": summary,
            }
        ]
        # One event per check whose verdict changed (first run: only failures), for the
        # engine's rules ("module: sca, result: failed") without an alert per check per run.
        for r in ev.results:
            before = previous.get(r["id"])
            if r["status"] != before and (before is not None or r["status"] == FAILED):
                events.append(
                    {
                        "module": "sca",
                        "type": "sca-check",
                        "policy_id": policy_id,
                        "check_id": r["id"],
                        "title": r["title"],
                        "result": r["status"],
                        "previous": before,
                        "reason": r["reason"],
                    }
                )
        record = {
            "policy_id": policy_id,
            "policy_version": policy.version,
            "policy_hash": config_hash(doc),
            "evaluated_at": started,
            "results": ev.results,
            "summary": summary,
            "pending_events": events,
        }
        write_json(self.state.sca_results_dir / f"{policy_id}.json", record)
        if self._due is not None:
            self._due[policy_id] = started + self.interval
        log.info(
            "sca %s %s: %d passed, %d failed, %d not applicable (score %s)",
            policy_id,
            policy.version,
            summary["pass"],
            summary["fail"],
            summary["na"],
            summary["score"],
        )
        self._send(policy_id, record)
        return summary

    def _send(self, policy_id: str, record: dict[str, Any]) -> bool:
        events = record.get("pending_events") or []
        if not events or self.send_events is None:
            return True
        try:
            self.send_events(events)
        except Exception as exc:
            # Kept in the results file; retried by the next tick.
            log.warning("sca %s: results not sent yet (%s)", policy_id, exc)
            self._unsent.add(policy_id)
            return False
        record["pending_events"] = []
        write_json(self.state.sca_results_dir / f"{policy_id}.json", record)
        self._unsent.discard(policy_id)
        return True

    def _schedule(self) -> dict[str, float]:
        """Next evaluation of each policy, from the stored results: a restart does not
        re-evaluate a fresh policy, and a policy whose content changed is evaluated at once."""
        due: dict[str, float] = {}
        for pid in self.policies():
            res, doc = self.results(pid), self.policy(pid)
            fresh = (
                res is not None and doc is not None and res.get("policy_hash") == config_hash(doc)
            )
            due[pid] = float(res["evaluated_at"]) + self.interval if fresh and res else 0.0
            if res and res.get("pending_events"):
                self._unsent.add(pid)
        return due

    def tick(self, now: float) -> None:
        if not self.enabled:
            return
        if self._due is None:
            self._due = self._schedule()
        wall = self.clock()
        for pid in list(self._unsent):
            record = self.results(pid)
            if record is None or not self._send(pid, record):
                break  # the server is unreachable: try again next tick
        for pid, when in sorted(self._due.items(), key=lambda kv: kv[1]):
            if when <= wall:
                try:
                    self.evaluate(pid)
                except (sca_eval.PolicyError, ScaPolicyInvalid) as exc:
                    log.error("sca %s: stored policy cannot be evaluated: %s", pid, exc)
                    self._due[pid] = wall + self.interval

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "interval": self.interval, "policies": self.policies()}


def _yaml(policy_id: str, text: str) -> Any:
    """A policy sent as its YAML text (docs/content.md); PyYAML is imported only then."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScaPolicyInvalid(f"policy {policy_id}: not valid YAML ({exc})") from None
