"""Detection rules: the ruleset from the indexer, compiled once, evaluated on every agent event.

A rule matches when every field test of its `match` holds; a rule with a `threshold` fires
only when `count` matching events of one agent (and one value of each `group_by` field)
arrive within `window` seconds. Every rule that fires makes one alert. Evaluation is pure
(no I/O) so that a burst of events costs CPU only; alerts and responses are written by
`alerts.py` and `responses.py`."""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from fleetcmd.model.content import ContentError, FieldTest, Rule, Ruleset
from fleetcmd.model.explain import explain

# Longest text a regex is run on: event fields are agent input, rules are trusted content.
MAX_FIELD_TEXT = 64 * 1024
# Threshold counters kept at most (agent x rule x group); the least recently used go first.
MAX_THRESHOLD_KEYS = 100_000
MISSING = object()
RULESET_FIELDS = set(Ruleset.model_fields)


class RulesetInvalid(ContentError):
    """The ruleset document does not parse; the rules already loaded stay in force."""


def parse_ruleset(doc: Any) -> Ruleset:
    """The `ruleset/rules` document as the engine's model. Index metadata the content manager
    adds (sha256, signature, feed, serial) is not part of the ruleset and is set aside."""
    if not isinstance(doc, dict):
        raise RulesetInvalid("the ruleset document is not an object")
    body = {k: v for k, v in doc.items() if k in RULESET_FIELDS}
    try:
        return Ruleset.model_validate(body)
    except ValidationError as exc:
        raise RulesetInvalid(f"ruleset does not parse: {explain(exc, body)}") from None


def lookup(event: dict[str, Any], path: str, agent_id: str = "") -> Any:
    """An event field by dotted name: a flat key (`"data.srcip"`), else the nested path, else
    the same inside `event["fields"]`. `agent.id` is always the sending agent (from its token,
    never from the event, which the agent could word as it likes). MISSING if absent."""
    if path == "agent.id" and agent_id:
        return agent_id
    for scope in (event, event.get("fields")):
        if not isinstance(scope, dict):
            continue
        if path in scope:
            return scope[path]
        node: Any = scope
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                node = MISSING
                break
            node = node[part]
        if node is not MISSING:
            return node
    return MISSING


def as_text(value: Any) -> str:
    """Values compare as text, so a rule's `22` matches an event's `"22"` and `true` matches
    `"true"`; whole floats read as integers (22.0 is "22")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value[:MAX_FIELD_TEXT]
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))[:MAX_FIELD_TEXT]
    return str(value)


Test = Callable[[Any], bool]


def compile_test(spec: str | int | float | bool | FieldTest) -> Test:
    """One field test as a function of the field's value (MISSING never matches)."""
    if isinstance(spec, FieldTest):
        if spec.regex is not None:
            pattern = re.compile(spec.regex)
            return lambda v: (
                v is not MISSING and v is not None and pattern.search(as_text(v)) is not None
            )
        if spec.in_ is not None:
            choices = {as_text(c) for c in spec.in_}
            return lambda v: v is not MISSING and v is not None and as_text(v) in choices
        spec = spec.equals  # type: ignore[assignment]
    if spec is None:
        return lambda v: v is None
    want = as_text(spec)
    return lambda v: v is not MISSING and v is not None and as_text(v) == want


@dataclass
class CompiledRule:
    rule: Rule
    tests: list[tuple[str, Test]]

    @property
    def id(self) -> int:
        return self.rule.id

    def matches(self, event: dict[str, Any], agent_id: str) -> bool:
        return all(test(lookup(event, path, agent_id)) for path, test in self.tests)


@dataclass
class EngineEvent:
    """One event as the Comms API queued it: the sending agent, when it arrived, the body."""

    agent: str
    received_at: float
    event: dict[str, Any]

    @property
    def occurred_at(self) -> float:
        """The event's own `timestamp` (epoch seconds or ISO 8601) if it has a sane one, else
        arrival time. Using the agent's time makes a re-sent event the same alert."""
        ts = self.event.get("timestamp")
        value: float | None = None
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            value = float(ts) / (1000 if ts > 1e11 else 1)
        elif isinstance(ts, str):
            try:
                parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
                value = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
            except ValueError:
                value = None
        if value is None or abs(value - self.received_at) > 7 * 86400:
            return self.received_at
        return value


@dataclass
class Match:
    """A rule that fired on an event (what an alert is made of)."""

    rule: Rule
    event: EngineEvent
    group: dict[str, Any] = field(default_factory=dict)  # threshold group_by values
    count: int = 1  # events behind the alert (threshold count, else 1)

    @property
    def alert_id(self) -> str:
        """`<agent>/<epoch-ms>-<rule>-<digest>`: the same event and rule always give the same
        id (a retried post rewrites the same document and files no second response)."""
        body = json.dumps(self.event.event, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(f"{self.rule.id}|{body}".encode()).hexdigest()[:10]
        ms = int(self.event.occurred_at * 1000)
        return f"{self.event.agent}/{ms}-{self.rule.id}-{digest}"


class Thresholds:
    """Sliding windows of matching-event times per (rule, agent, group_by values), bounded:
    the least recently touched key is forgotten first."""

    def __init__(self, max_keys: int = MAX_THRESHOLD_KEYS) -> None:
        self.max_keys = max_keys
        self._windows: OrderedDict[tuple[Any, ...], deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: tuple[Any, ...], at: float, count: int, window: float) -> int:
        """Record one matching event; the number of events in the window when it reaches
        `count` (the window then starts over, so a burst of 2N events fires twice), else 0."""
        times = self._windows.get(key)
        if times is None:
            times = self._windows[key] = deque()
            if len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        times.append(at)
        while times and times[0] <= at - window:
            times.popleft()
        if len(times) >= count:
            n = len(times)
            times.clear()
            return n
        return 0

    def keep_only(self, rule_ids: set[int]) -> None:
        """After a reload: counters of rules that changed or left start over."""
        for key in [k for k in self._windows if k[0] not in rule_ids]:
            del self._windows[key]


class RuleSet:
    """The compiled rules in force. Replaced whole by `load`, so an evaluation never sees
    half of an old ruleset and half of a new one."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.rules: list[CompiledRule] = []
        self.thresholds = Thresholds()

    def __len__(self) -> int:
        return len(self.rules)

    def load(self, ruleset: Ruleset) -> None:
        old = {r.id: r.rule for r in self.rules}
        compiled = [
            CompiledRule(r, [(path, compile_test(spec)) for path, spec in r.match.items()])
            for r in ruleset.rules
        ]
        self.rules = compiled
        self.version = ruleset.version
        self.thresholds.keep_only({r.id for r in compiled if old.get(r.id) == r.rule})

    def evaluate(self, event: EngineEvent) -> list[Match]:
        """Every rule this event fires (threshold rules only when their count is reached)."""
        fired: list[Match] = []
        for compiled in self.rules:
            if not compiled.matches(event.event, event.agent):
                continue
            rule = compiled.rule
            if rule.threshold is None:
                fired.append(Match(rule, event))
                continue
            group = {
                f: _plain(lookup(event.event, f, event.agent)) for f in rule.threshold.group_by
            }
            key = (
                rule.id,
                event.agent,
                *(as_text(v) if v is not None else None for v in group.values()),
            )
            n = self.thresholds.hit(
                key, event.received_at, rule.threshold.count, rule.threshold.window
            )
            if n:
                fired.append(Match(rule, event, group, n))
        return fired

    def evaluate_all(self, events: Iterable[EngineEvent]) -> list[Match]:
        return [m for e in events for m in self.evaluate(e)]


def _plain(value: Any) -> Any:
    return None if value is MISSING else value
