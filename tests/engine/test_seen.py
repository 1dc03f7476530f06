"""Events re-sent with the same id count once towards a threshold (the log collector delivers
at least once); events without an id are each evaluated."""

from __future__ import annotations

from fleetcmd.model.content import Ruleset
from fleetcmd.server.engine.rules import EngineEvent, RuleSet
from fleetcmd.server.engine.seen import SeenEvents

RULES = Ruleset.model_validate(
    {
        "id": "rules",
        "version": "1",
        "rules": [
            {
                "id": 1,
                "level": 10,
                "description": "brute force",
                "match": {"program": "sshd"},
                "threshold": {"count": 3, "window": 60, "group_by": ["srcip"]},
            }
        ],
    }
)


def test_a_resent_event_is_evaluated_once_per_agent() -> None:
    seen, rules = SeenEvents(), RuleSet()
    rules.load(RULES)
    fired = 0
    batch = [{"program": "sshd", "srcip": "203.0.113.7", "id": f"e{i}"} for i in range(2)]
    for t, events in enumerate([batch, batch, batch]):  # the same two, posted three times
        fresh = [e for e in events if seen.fresh("a1", e, 100.0 + t)]
        fired += len(rules.evaluate_all(EngineEvent("a1", 100.0 + t, e) for e in fresh))
    assert fired == 0 and len(seen) == 2
    # another agent's event of the same id is its own; an event without an id always counts
    assert seen.fresh("a2", batch[0], 103.0)
    assert seen.fresh("a1", {"program": "sshd"}, 103.0) and seen.fresh("a1", {"id": 7}, 103.0)


def test_ids_are_remembered_for_a_while_and_bounded() -> None:
    seen = SeenEvents(max_ids=3, ttl=10.0)
    for i in range(5):
        assert seen.fresh("a1", {"id": f"e{i}"}, float(i))
    assert len(seen) == 3 and not seen.fresh("a1", {"id": "e4"}, 5.0)
    assert seen.fresh("a1", {"id": "e0"}, 5.0)  # pushed out by the bound
    assert seen.fresh("a1", {"id": "e4"}, 30.0)  # forgotten after ttl
