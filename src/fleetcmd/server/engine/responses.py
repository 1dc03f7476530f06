"""Active responses the engine files when a rule with `active_response` fires (row 11, seed
"1- Generate Active response task"): an `active-response-execution` task through the indexer's
task manager, which the command manager expands over the target agents.

Two guards keep a noisy attack from becoming a flood of commands: a throttle (the same rule,
target and arguments answer once per window) and an idempotency key per alert (a retried
filing, or the same event re-sent, returns the task already filed)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from typing import Any

from fleetcmd.model.content import Rule
from fleetcmd.server.engine.rules import MISSING, Match, as_text, lookup
from fleetcmd.server.indexer_client import IndexerClient, IndexerError, IndexerUnavailable

log = logging.getLogger("fleetcmd.server.engine.responses")

# The throttle window of a rule without a threshold (a threshold rule uses its own window).
DEFAULT_THROTTLE = 60.0
# An active response is urgent or useless: one not delivered within this window expires.
DELIVERY_WINDOW = 900.0
MAX_THROTTLE_KEYS = 100_000
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.@-]+)\}")


class MissingField(ValueError):
    """An argument names an event field that the event does not have."""


def render_arguments(templates: list[str], match: Match) -> list[str]:
    """`{field}` in each argument becomes that field of the event, as text. A missing field
    refuses the response: running `block-ip` with an empty address helps nobody."""

    def sub(m: re.Match[str]) -> str:
        value = lookup(match.event.event, m[1], match.event.agent)
        if value is MISSING or value is None:
            raise MissingField(m[1])
        return as_text(value)

    return [PLACEHOLDER.sub(sub, t) for t in templates]


def target_of(rule: Rule, agent_id: str) -> dict[str, Any]:
    assert rule.active_response is not None
    target = rule.active_response.target
    if target == "all":
        return {"all": True}
    if target.startswith("group:"):
        return {"group": target.split(":", 1)[1]}
    return {"agents": [agent_id]}


def idempotency_key(alert_id: str) -> str:
    key = f"engine:{alert_id}"
    return key if len(key) <= 200 else "engine:" + hashlib.sha256(key.encode()).hexdigest()


class Responder:
    """Files the active response of an alert, at most once per throttle window and key."""

    def __init__(self, indexer: IndexerClient) -> None:
        self.indexer = indexer
        self._last: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self.filed = 0
        self.throttled = 0
        self.failed = 0

    def _throttle_key(self, rule: Rule, params: dict[str, Any]) -> tuple[Any, ...]:
        target = params["target"]
        where = ("agents", *target["agents"]) if "agents" in target else tuple(target.items())
        return (rule.id, where, tuple(params["arguments"]))

    def _throttled(self, key: tuple[Any, ...], window: float, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < window:
            return True
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > MAX_THROTTLE_KEYS:
            self._last.popitem(last=False)
        return False

    async def respond(self, match: Match, alert_id: str) -> dict[str, Any]:
        """File the response of this alert; what happened, for the alert document."""
        rule = match.rule
        ar = rule.active_response
        assert ar is not None
        try:
            arguments = render_arguments(ar.arguments, match)
        except MissingField as exc:
            self.failed += 1
            log.warning(
                "rule %s on agent %s: response %s not filed: event has no field '%s'",
                rule.id,
                match.event.agent,
                ar.name,
                exc,
            )
            return {
                "name": ar.name,
                "status": "skipped",
                "reason": f"the event has no field '{exc}' for the arguments",
            }
        params = {
            "name": ar.name,
            "arguments": arguments,
            "target": target_of(rule, match.event.agent),
            "reason": f"rule {rule.id}: {rule.description}"[:512],
        }
        window = rule.threshold.window if rule.threshold else DEFAULT_THROTTLE
        key = self._throttle_key(rule, params)
        if self._throttled(key, window, time.monotonic()):
            self.throttled += 1
            return {
                "name": ar.name,
                "status": "throttled",
                "arguments": arguments,
                "target": params["target"],
                "window": window,
            }
        try:
            data = await self.indexer.post(
                "/tasks",
                {
                    "type": "active-response-execution",
                    "params": params,
                    "source": "engine",
                    "user": "engine",
                    "idempotency_key": idempotency_key(alert_id),
                    "expires_in": DELIVERY_WINDOW,
                },
                idempotent=True,
            )
        except IndexerError as exc:
            # An outage: the next matching alert may try again. A refusal (an unknown group,
            # say) stays throttled, so a noisy rule does not hammer the task manager.
            if isinstance(exc, IndexerUnavailable):
                self._last.pop(key, None)
            self.failed += 1
            log.error(
                "rule %s on agent %s: response %s not filed: %s",
                rule.id,
                match.event.agent,
                ar.name,
                exc,
            )
            return {
                "name": ar.name,
                "status": "failed",
                "arguments": arguments,
                "target": params["target"],
                "reason": str(exc)[:500],
            }
        self.filed += 1
        log.info(
            "rule %s on agent %s: filed %s%s as task %s",
            rule.id,
            match.event.agent,
            ar.name,
            arguments,
            data["id"],
        )
        return {
            "name": ar.name,
            "status": "filed",
            "task_id": data["id"],
            "arguments": arguments,
            "target": params["target"],
        }
