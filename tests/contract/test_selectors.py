"""Selectors on both stores: every field and operator against a known fleet, the compiled SQL
against a reference evaluator on random fleets and random expressions, and the parser under
fuzzing (it never fails other than with a positioned SelectorError)."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcmd.errors import InvalidParams
from fleetcmd.model import selectors as s
from fleetcmd.model.catalog import validate
from fleetcmd.model.targets import AgentScope, AgentSelection
from fleetcmd.store.base import SqlStore
from support.selector_reference import matches

NAMES = ["web-1", "web-2", "db-1", "db-10", "edge.x", "cache_a"]
GROUPS = ["web", "db", "edge", "default"]
VERSIONS = ["1.2.0", "1.10.0", "1.9.3", "2.0.0rc1", "2.0.0", "0.9", None]
OSES = ["Linux", "Darwin", None]
ARCHES = ["x86_64", "aarch64"]
NODES = ["n1", "n2", None]
STATUSES = ["active", "disconnected", "never_connected"]
LABEL_KEYS = ["env", "team"]
LABEL_VALUES = ["prod", "dev", "qa"]
CHECKS = ["c1", "c2", "ssh-root"]
CVES = ["CVE-2024-3094", "CVE-2023-0001"]


def fleet(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = time.time()
    agents = []
    for i in range(n):
        sca = [
            {"score": rng.choice([None, 10, 50, 79, 80, 95, 100]), "failed": rng.sample(CHECKS, 1)}
            for _ in range(rng.randint(0, 2))
        ]
        agents.append(
            {
                "id": f"a{i:03d}",
                "name": f"{rng.choice(NAMES)}-{i}",
                "groups": rng.sample(GROUPS, rng.randint(0, 2)),
                "status": rng.choice(STATUSES),
                "version": rng.choice(VERSIONS),
                "node": rng.choice(NODES),
                "config_hash": rng.choice(["h1", "h2", None]),
                "last_seen": rng.choice([None, now - 1800, now - 5400, now - 3 * 86400]),
                "info": {
                    k: v
                    for k, v in (("os", rng.choice(OSES)), ("arch", rng.choice(ARCHES)))
                    if v is not None
                },
                "labels": {k: rng.choice(LABEL_VALUES) for k in LABEL_KEYS if rng.random() < 0.6},
                "sca": sca,
                "cves": rng.sample(CVES, rng.randint(0, 1)),
            }
        )
    return agents


def load(store: SqlStore, agents: list[dict[str, Any]]) -> None:
    store.register_agents(
        [
            {
                "id": a["id"],
                "name": a["name"],
                "groups": a["groups"],
                "version": a["version"],
                "info": a["info"],
            }
            for a in agents
        ]
    )
    store.update_agents(
        [
            {
                "id": a["id"],
                "status": a["status"],
                "node": a["node"],
                "config_hash": a["config_hash"],
                "last_seen": a["last_seen"],
            }
            for a in agents
        ]
    )
    with store.transaction() as tx:
        for a in agents:
            tx.set_labels(a["id"], a["labels"])
            for j, scan in enumerate(a["sca"]):
                checks = [{"id": c, "status": "failed"} for c in scan["failed"]]
                checks += [{"id": c, "status": "passed"} for c in CHECKS if c not in scan["failed"]]
                tx.put_document(
                    "sca-results",
                    f"{a['id']}/p{j}",
                    {
                        "agent": a["id"],
                        "policy_id": f"p{j}",
                        "score": scan["score"],
                        "checks": checks,
                    },
                )
            if a["cves"]:
                tx.put_document(
                    "vulnerabilities", a["id"], {"findings": [{"cve": c} for c in a["cves"]]}
                )


def selected(store: SqlStore, selection: AgentSelection) -> list[str]:
    with store.reading() as tx:
        params: dict[str, Any] = {}
        sql = f"SELECT a.id {tx.selection_sql(selection, params)} ORDER BY a.id"
        return [r[0] for r in tx.all(sql, params)]


def expected(agents: list[dict[str, Any]], text: str) -> list[str]:
    expr = s.parse(text)
    now = time.time()
    return sorted(a["id"] for a in agents if matches(expr, a, now))


CASES = [
    "all",
    "name = web-*",
    "name != web-*",
    "name = db-1?-*",
    "id = a001",
    "group = web",
    "group = e*",
    "os = Linux",
    "platform = Darwin",
    "not os = Linux",
    "arch = aarch64",
    "node = n1",
    "config_hash = h2",
    "status = active",
    "status != never_connected",
    "version < 1.10",
    "version >= 1.9.3",
    "version = 1.2",
    "version > 2.0.0rc1",
    "version <= 2.0.0rc1",
    "version != 2.0.0",
    "last_seen < 1h",
    "last_seen <= 2h",
    "last_seen > 1d",
    "last_seen >= 2h",
    "label.env = prod",
    "label.team != dev",
    "label.env = *d*",
    "sca.score < 80",
    "sca.score >= 95",
    "sca.score = 80",
    "sca.failed = ssh-root",
    "sca.failed != c1",
    "has vulnerability CVE-2024-3094",
    "not has vulnerability CVE-2023-0001",
    "(group = web or group = db) and version < 2 and not label.env = prod",
    'name = "edge.x-*" or (os = Linux and (arch = x86_64 or last_seen < 1h))',
]


@pytest.mark.parametrize("text", CASES)
def test_every_field_and_operator_matches_the_reference_on_both_stores(
    store: SqlStore, text: str
) -> None:
    agents = fleet(7, 80)
    load(store, agents)
    want = expected(agents, text)
    got = selected(store, AgentSelection(selector=s.parse(text)))
    assert got == want
    if text != "all":  # the fleet is varied enough that each case splits it
        assert 0 < len(want) < len(agents) or text.startswith(("id", "name = db-1?"))


def test_version_ordering_is_numeric_part_by_part() -> None:
    key = s.version_key
    assert key("1.10.0") > key("1.9.9") > key("1.9") == key("1.9.0.0")  # type: ignore[operator]
    assert key("2.0.0rc1") < key("2.0.0") < key("2.0.1")  # type: ignore[operator]
    assert key("not a version") is None


def test_scope_narrows_a_selection_by_id_and_group_patterns(store: SqlStore) -> None:
    agents = fleet(3, 40)
    load(store, agents)
    scope = AgentScope(ids=("a00[0-4]",), groups=("we*",))
    got = selected(store, AgentSelection(selector=s.Every(), scope=scope))
    want = sorted(
        a["id"]
        for a in agents
        if a["id"] in {f"a00{i}" for i in range(5)} or any(g.startswith("we") for g in a["groups"])
    )
    assert got == want and 0 < len(got) < len(agents)
    assert selected(store, AgentSelection(selector=s.Every(), scope=AgentScope())) == []


def _leaf() -> st.SearchStrategy[str]:
    text = st.sampled_from(
        [
            *(f"name = {n}*" for n in NAMES),
            *(f"group = {g}" for g in GROUPS),
            *(f"os = {o}" for o in OSES if o),
            *(f"arch {op} {a}" for a in ARCHES for op in ("=", "!=")),
            *(f"node = {n}" for n in NODES if n),
            *(f"status = {x}" for x in STATUSES),
            *(
                f"label.{k} {op} {v}"
                for k in LABEL_KEYS
                for v in LABEL_VALUES
                for op in ("=", "!=")
            ),
            *(f"sca.failed = {c}" for c in CHECKS),
            *(f"has vulnerability {c}" for c in CVES),
            "all",
        ]
    )
    ops = st.sampled_from(["<", "<=", ">", ">="])
    ordered = st.one_of(
        st.builds("version {} {}".format, ops, st.sampled_from(["1.9", "1.10.0", "2.0.0rc1"])),
        st.builds("sca.score {} {}".format, ops, st.sampled_from(["50", "80"])),
        st.builds("last_seen {} {}".format, ops, st.sampled_from(["1h", "2h", "1d"])),
    )
    return st.one_of(text, ordered)


EXPRESSIONS = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"{a} or {b}", inner, inner),
        st.builds(lambda a: f"not ({a})", inner),
    ),
    max_leaves=8,
)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_selectors_agree_with_the_reference_on_both_stores(
    store: SqlStore, seed: int
) -> None:
    agents = fleet(seed, 60)
    load(store, agents)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(EXPRESSIONS)
    def check(text: str) -> None:
        assert selected(store, AgentSelection(selector=s.parse(text))) == expected(agents, text)

    check()


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), EXPRESSIONS.map(lambda t: t[: len(t) // 2])))
def test_the_parser_only_ever_refuses_with_a_position(text: str) -> None:
    try:
        s.parse(text)
    except s.SelectorError as exc:
        assert exc.line >= 1 and exc.column >= 1 and exc.message
    try:
        validate("vulnerability-rescan", {"selector": text})
    except InvalidParams as exc:
        body = exc.to_json()
        assert body["error"] == "invalid_params"
        errors = body.get("errors") or body.get("details", {}).get("errors")
        assert errors, body
