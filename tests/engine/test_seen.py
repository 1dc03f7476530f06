"""Events re-sent with the same id count once towards a threshold (the log collector delivers
at least once); events without an id are each evaluated."""

from __future__ import annotations

import yaml

from fleetcmd.agent.modules.logdecoders import decode
from fleetcmd.content.sample import SAMPLE_SOURCE
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


def test_the_sample_rules_fire_on_auth_log_lines_as_the_collector_decodes_them() -> None:
    """The agent's decoders give the fields the sample ruleset names (program, message,
    srcip): six failures from one address fire the brute-force rule and its firewall-drop."""
    rules = RuleSet()
    rules.load(
        Ruleset.model_validate(
            yaml.safe_load((SAMPLE_SOURCE / "ruleset" / "rules.yaml").read_text())
        )
    )
    lines = [
        f"Dec  7 14:31:{i:02d} web-01 {prog}[9]: "
        f"Failed password for root from 203.0.113.7 port {i} ssh2"
        for i, prog in enumerate(["sshd", "sshd-session"] * 3)
    ]
    fired = [
        m
        for i, line in enumerate(lines)
        for m in rules.evaluate(EngineEvent("a1", 100.0 + i, decode("syslog", line)))
    ]
    assert [m.rule.id for m in fired] == [100100] * 6 + [100101]
    brute = fired[-1]
    assert brute.group == {"srcip": "203.0.113.7"} and brute.count == 6
    assert brute.rule.active_response is not None
    assert brute.rule.active_response.name == "firewall-drop"
