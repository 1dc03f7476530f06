"""Rule matching (values, lists, regexes, thresholds), ruleset parsing, response arguments and
throttling, and CVE matching of an inventory: unit tests, no processes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetcmd.server.engine.responses import MissingField, Responder, render_arguments, target_of
from fleetcmd.server.engine.rules import (
    EngineEvent,
    RuleSet,
    RulesetInvalid,
    Thresholds,
    lookup,
    parse_ruleset,
)
from fleetcmd.server.engine.vulnerabilities import CveDatabase

SSH_FAIL = {"program": "sshd", "message": {"regex": "(Failed password|Invalid user)"}}
RULES: dict[str, Any] = {
    "id": "rules",
    "version": "1.0.0",
    "sha256": "ab" * 32,  # index metadata beside the ruleset: set aside, not refused
    "signature": "sig",
    "rules": [
        {"id": 1, "level": 5, "description": "ssh failure", "match": SSH_FAIL},
        {
            "id": 2,
            "level": 10,
            "description": "ssh brute force",
            "match": SSH_FAIL,
            "threshold": {"count": 3, "window": 60, "group_by": ["srcip"]},
            "active_response": {"name": "block-ip", "arguments": ["{srcip}"]},
        },
        {
            "id": 3,
            "level": 7,
            "description": "fim under /etc",
            "match": {
                "module": "fim",
                "event": {"in": ["modified", "deleted"]},
                "path": {"regex": "^/etc/"},
            },
        },
        {"id": 4, "level": 3, "description": "port 22", "match": {"dst.port": 22, "ok": False}},
    ],
}


def ev(fields: dict[str, Any], at: float = 1000.0, agent: str = "a1") -> EngineEvent:
    return EngineEvent(agent, at, fields)


def loaded(doc: dict[str, Any] = RULES) -> RuleSet:
    rs = RuleSet()
    rs.load(parse_ruleset(doc))
    return rs


def fired(rs: RuleSet, event: EngineEvent) -> list[int]:
    return [m.rule.id for m in rs.evaluate(event)]


def test_value_regex_and_list_tests() -> None:
    rs = loaded()
    fail = {"program": "sshd", "message": "Failed password for root", "srcip": "10.0.0.9"}
    assert fired(rs, ev(fail)) == [1]
    assert fired(rs, ev({**fail, "program": "cron"})) == []
    assert fired(rs, ev({**fail, "message": "Accepted password"})) == []
    assert fired(rs, ev({"program": "sshd"})) == []  # a missing field never matches
    fim = {"module": "fim", "event": "deleted", "path": "/etc/passwd"}
    assert fired(rs, ev(fim)) == [3]
    assert fired(rs, ev({**fim, "event": "added"})) == []
    assert fired(rs, ev({**fim, "path": "/home/x/etc/passwd"})) == []  # regex anchored


def test_values_compare_as_text_and_fields_nest() -> None:
    rs = loaded()
    assert fired(rs, ev({"dst.port": "22", "ok": "false"})) == [4]  # flat dotted key
    assert fired(rs, ev({"dst": {"port": 22.0}, "ok": False})) == [4]  # nested path
    assert fired(rs, ev({"fields": {"dst": {"port": 22}, "ok": False}})) == [4]  # under fields
    assert fired(rs, ev({"dst": {"port": 2222}, "ok": False})) == []
    assert lookup({}, "agent.id", "a9") == "a9"
    assert lookup({"agent": {"id": "spoofed"}}, "agent.id", "a9") == "a9"


def test_threshold_counts_per_agent_and_group_within_window() -> None:
    rs = loaded()
    base = {"program": "sshd", "message": "Invalid user x", "srcip": "10.0.0.1"}
    # Two from one address, one from another, one on another agent: nothing yet.
    assert fired(rs, ev(base, 0)) == [1]
    assert fired(rs, ev(base, 1)) == [1]
    assert fired(rs, ev({**base, "srcip": "10.0.0.2"}, 2)) == [1]
    assert fired(rs, ev(base, 3, agent="a2")) == [1]
    [m] = [m for m in rs.evaluate(ev(base, 4)) if m.rule.id == 2]  # third from 10.0.0.1
    assert m.count == 3 and m.group == {"srcip": "10.0.0.1"}
    # The window starts over after firing; old events fall out of it.
    assert fired(rs, ev(base, 10)) == [1]
    assert fired(rs, ev(base, 11)) == [1]
    assert fired(rs, ev(base, 200)) == [1]  # the two above are older than 60 s
    assert fired(rs, ev(base, 201)) == [1]
    assert 2 in fired(rs, ev(base, 202))


def test_reload_keeps_counters_of_unchanged_rules_only() -> None:
    rs = loaded()
    base = {"program": "sshd", "message": "Invalid user x", "srcip": "10.0.0.1"}
    rs.evaluate(ev(base, 0))
    rs.evaluate(ev(base, 1))
    rs.load(parse_ruleset({**RULES, "version": "1.0.1"}))  # same rule 2: counter kept
    assert 2 in fired(rs, ev(base, 2))
    rs.evaluate(ev(base, 3))
    rs.evaluate(ev(base, 4))
    changed = {**RULES, "version": "2", "rules": [{**RULES["rules"][1], "level": 11}]}
    rs.load(parse_ruleset(changed))  # rule 2 changed: its counters start over
    assert fired(rs, ev(base, 5)) == []
    assert rs.version == "2" and len(rs) == 1


def test_threshold_memory_is_bounded() -> None:
    t = Thresholds(max_keys=100)
    for i in range(1000):
        t.hit((1, "a", str(i)), float(i), 5, 60)
    assert len(t) == 100


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"version": "1", "rules": []}, "rules"),
        ({"version": "1", "rules": [{"id": 1, "level": 3, "description": "x"}]}, "match"),
        (
            {
                "version": "1",
                "rules": [
                    {"id": 1, "level": 3, "description": "x", "match": {"a": {"regex": "("}}}
                ],
            },
            "bad regex",
        ),
        ({"version": "1", "rules": [RULES["rules"][0], RULES["rules"][0]]}, "unique"),
        ("not a document", "not an object"),
    ],
)
def test_broken_rulesets_are_refused_with_the_reason(doc: Any, reason: str) -> None:
    with pytest.raises(RulesetInvalid, match=reason):
        parse_ruleset(doc)


@pytest.mark.parametrize(
    ("match", "sentence"),
    [
        (
            {"srcip": {"equal": "1.2.3.4"}},
            "rule 100002 (rules[1]), field 'match.srcip': as a field test (an object with one "
            "of 'equals', 'in' or 'regex'): 'equal' is not a known key",
        ),
        (
            {"srcip": ["1.2.3.4"]},
            "rule 100002 (rules[1]), field 'match.srcip': must be text, a number, true or "
            "false or a field test (an object with one of 'equals', 'in' or 'regex'), not "
            "['1.2.3.4']",
        ),
        (
            {"srcip": {"in": [{"x": 1}]}},
            "rule 100002 (rules[1]), field 'match.srcip': as a field test (an object with one "
            "of 'equals', 'in' or 'regex'): 'in[0]' must be text or a number, not {'x': 1}",
        ),
    ],
)
def test_a_bad_rule_is_named_with_its_field_in_one_sentence(match: Any, sentence: str) -> None:
    """Not pydantic's dump of every member of the union a field may be (issue 14.8)."""
    good = {"id": 100001, "level": 3, "description": "ok", "match": {"program": "sshd"}}
    bad = {"id": 100002, "level": 3, "description": "bad", "match": match}
    with pytest.raises(RulesetInvalid) as exc:
        parse_ruleset({"version": "1", "rules": [good, bad]})
    assert str(exc.value) == f"ruleset does not parse: {sentence}"


def test_the_content_manager_names_the_rule_too() -> None:
    from fleetcmd.model.content import ContentError, parse_item

    text = b"version: '1'\nrules:\n- {id: 7, level: 99, description: x, match: {a: b}}\n"
    with pytest.raises(ContentError) as exc:
        parse_item("ruleset", text, "ruleset/rules.yaml")
    assert str(exc.value) == (
        "ruleset/rules.yaml: rule 7 (rules[0]), field 'level': should be less than or equal "
        "to 15 (not 99)"
    )


def test_alert_ids_are_stable_per_event_and_rule() -> None:
    rs = loaded()
    e = {"program": "sshd", "message": "Failed password", "timestamp": "2026-01-02T03:04:05Z"}
    [a] = rs.evaluate(ev(e, 1_767_323_000.0))
    [b] = rs.evaluate(ev(dict(e), 1_767_323_050.0))  # re-sent later: same event time
    assert a.alert_id == b.alert_id
    assert a.alert_id.startswith("a1/1767323045000-1-")
    [c, _threshold] = rs.evaluate(ev({**e, "message": "Failed password again"}, 1_767_323_000.0))
    assert c.alert_id != a.alert_id


def test_response_arguments_and_targets() -> None:
    rs = loaded()
    base = {"program": "sshd", "message": "Invalid user x", "srcip": "10.0.0.7"}
    for t in range(3):
        matches = rs.evaluate(ev(base, t))
    [m] = [m for m in matches if m.rule.id == 2]
    assert render_arguments(["add", "{srcip}", "{agent.id}"], m) == ["add", "10.0.0.7", "a1"]
    with pytest.raises(MissingField):
        render_arguments(["{user}"], m)
    assert target_of(m.rule, "a1") == {"agents": ["a1"]}
    grouped = m.rule.model_copy(
        update={
            "active_response": m.rule.active_response.model_copy(update={"target": "group:web"})
        }
    )  # type: ignore[union-attr]
    assert target_of(grouped, "a1") == {"group": "web"}


def test_responses_are_throttled_per_rule_target_and_arguments() -> None:
    asyncio.run(_throttling())


async def _throttling() -> None:
    class Tasks:
        def __init__(self) -> None:
            self.filed: list[dict[str, Any]] = []

        async def post(self, path: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
            self.filed.append(body)
            return {"id": len(self.filed)}

    tasks = Tasks()
    responder = Responder(tasks)  # type: ignore[arg-type]
    rs = loaded()
    outcomes = []
    for i, ip in enumerate(["10.0.0.1"] * 6 + ["10.0.0.2"] * 3):
        for m in rs.evaluate(ev({"program": "sshd", "message": "Invalid user", "srcip": ip}, i)):
            if m.rule.active_response:
                outcomes.append(await responder.respond(m, m.alert_id))
    assert [o["status"] for o in outcomes] == ["filed", "throttled", "filed"]
    first = tasks.filed[0]
    assert first["type"] == "active-response-execution"
    assert (first["source"], first["user"]) == ("engine", "engine")
    assert first["params"] == {
        "name": "block-ip",
        "arguments": ["10.0.0.1"],
        "target": {"agents": ["a1"]},
        "reason": "rule 2: ssh brute force",
    }
    assert first["idempotency_key"].startswith("engine:a1/")


CVES = {
    "CVE-2023-4911": {
        "id": "CVE-2023-4911",
        "version": "1",
        "package": "libc6",
        "ecosystem": "debian",
        "affected": [{"introduced": "2.34", "fixed": "2.36-9+deb12u3"}],
        "severity": "high",
        "cvss": 7.8,
        "summary": "Looney Tunables",
        "sha256": "x",
    },
    "GHSA-j8r2-6x86-q33q": {
        "id": "GHSA-j8r2-6x86-q33q",
        "version": "1",
        "package": "Requests",
        "ecosystem": "pypi",
        "affected": [{"fixed": "2.31.0"}],
        "severity": "medium",
        "summary": "Proxy-Authorization leak",
    },
    "CVE-2099-0001": {"id": "broken"},
}


def test_cve_matching_of_an_inventory() -> None:
    db = CveDatabase.from_documents(CVES, "feed-1")
    assert db.records == 2 and list(db.refused) == ["CVE-2099-0001"]
    inventory = [
        {"name": "libc6", "version": "2.36-9+deb12u1", "source": "dpkg"},
        {"name": "requests", "version": "2.28.1", "source": "python"},
        {"name": "openssl", "version": "3.0.11-1~deb12u2", "source": "dpkg"},
        {"name": "libc6", "version": "not/a/version", "source": "dpkg"},
        {"name": "requests", "version": "2.31.0", "source": "dpkg"},  # wrong ecosystem
    ]
    findings = [f.to_json() for f in db.match(inventory)]
    assert [
        (f["cve"], f["package"], f["installed"], f["fixed"], f["severity"]) for f in findings
    ] == [
        ("CVE-2023-4911", "libc6", "2.36-9+deb12u1", "2.36-9+deb12u3", "high"),
        ("GHSA-j8r2-6x86-q33q", "requests", "2.28.1", "2.31.0", "medium"),
    ]
    patched = [
        {"name": "libc6", "version": "2.36-9+deb12u3", "source": "dpkg"},
        {"name": "requests", "version": "2.31.0", "source": "python"},
    ]
    assert db.match(patched) == []
