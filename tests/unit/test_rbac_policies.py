"""The RBAC model, property by property: for random roles (actions x resources) and random
requests, nothing is granted outside the caller's policies, and nobody can create or grant
more than they hold. The HTTP side is in tests/server/test_authorization.py."""

from __future__ import annotations

import fnmatch
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcmd.server.policies import (
    BUILTIN_ROLES,
    EVERYTHING,
    Policy,
    _tokens,
    action_covers,
    action_matches,
    reaches_kind,
    resource_covers,
    uncovered,
)
from fleetcmd.server.rbac import RbacCache, User

# Small alphabets, so that random patterns overlap often enough to be interesting.
CHARS = "ab"
SETS = ("[ab]", "[!a]", "[b]")
KINDS = ("agent", "group", "user", "role", "audit")
ATTRS = ("id", "group")
NOUNS = ("task", "agent", "group", "user", "role", "audit", "metrics", "enrollment-key")
VERBS = ("read", "create", "update", "delete", "manage")
ACTIONS = (
    *(f"{n}:{v}" for n in NOUNS for v in VERBS),
    "task:create:agent-upgrade",
    "task:create:agent-rename",
)

value_tokens = st.lists(st.sampled_from([*CHARS, "*", "?", *SETS]), min_size=0, max_size=4)


@st.composite
def resource_patterns(draw: Any) -> str:
    """`<kind>:<attribute>:<value>` with wildcards anywhere, or everything."""
    if draw(st.integers(0, 15)) == 0:
        return EVERYTHING
    kind = draw(st.sampled_from([*KINDS, "*", "a*", "?ser"]))
    attr = draw(st.sampled_from([*ATTRS, "*"]))
    return f"{kind}:{attr}:" + "".join(draw(value_tokens))


@st.composite
def action_patterns(draw: Any) -> str:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return "*"
    noun = draw(st.sampled_from(NOUNS))
    if choice == 1:
        return f"{noun}:*"
    if choice == 2:
        return noun  # covers all its verbs, as a plain prefix does
    return draw(st.sampled_from(ACTIONS))


policies = st.builds(
    lambda a, r: Policy(tuple(a), tuple(r)),
    st.lists(action_patterns(), min_size=1, max_size=3),
    st.lists(resource_patterns(), min_size=1, max_size=3),
)
roles = st.lists(policies, min_size=1, max_size=3)


@st.composite
def instance(draw: Any, pattern: str) -> str:
    """A string `pattern` matches: each wildcard replaced by something it matches."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(draw(st.text(alphabet=CHARS + ":", max_size=3)))
        elif c == "?":
            out.append(draw(st.sampled_from(CHARS + ":")))
        elif c == "[":  # one of SETS
            end = pattern.index("]", i)
            spec = pattern[i : end + 1]
            out.append(draw(st.sampled_from([x for x in CHARS if fnmatch.fnmatchcase(x, spec)])))
            i = end
        else:
            out.append(c)
        i += 1
    s = "".join(out)
    assert fnmatch.fnmatchcase(s, pattern), (s, pattern)
    return s


@st.composite
def resources(draw: Any) -> str:
    """Real resources: three parts, values from the small alphabet."""
    return f"{draw(st.sampled_from(KINDS))}:{draw(st.sampled_from(ATTRS))}:" + draw(
        st.text(alphabet=CHARS, min_size=1, max_size=4)
    )


def cache_with(role: list[Policy]) -> tuple[RbacCache, User]:
    cache = RbacCache(indexer=None)  # type: ignore[arg-type]  # no refresh in these tests
    cache.roles["r"] = tuple(role)
    return cache, User("u", "", ("r",))


def granted(role: list[Policy], action: str, resource: str) -> bool:
    """The plain reading of a role: one of its policies grants both the action and the
    resource (`*:*:*` is everything)."""
    return any(
        p.grants(action)
        and any(pat == EVERYTHING or fnmatch.fnmatchcase(resource, pat) for pat in p.resources)
        for p in role
    )


@settings(max_examples=250, deadline=None)
@given(role=roles, action=st.sampled_from(ACTIONS), resource=resources())
def test_no_request_reaches_a_resource_outside_the_callers_policies(
    role: list[Policy], action: str, resource: str
) -> None:
    cache, user = cache_with(role)
    assert cache.allowed(user, action, resource) == granted(role, action, resource)
    # The gate of a route: some resource of the action's kind, never another kind's.
    if cache.can(user, action):
        noun = action.partition(":")[0]
        if noun in ("audit", "metrics", "enrollment-key"):
            assert cache.allowed(user, action, EVERYTHING)
        else:
            kinds = ("agent", "group") if noun in ("task", "agent", "group") else (noun,)
            assert any(
                p.grants(action) and any(reaches_kind(r, k) for r in p.resources for k in kinds)
                for p in role
            )


@settings(max_examples=150, deadline=None)
@given(role=roles, noun=st.sampled_from(("audit", "metrics", "enrollment-key", "user", "role")))
def test_fleet_resources_grant_nothing_on_people_or_the_system(
    role: list[Policy], noun: str
) -> None:
    """The issue's escalation: `*` on an agent group's resources is not administration."""
    scoped = [
        Policy(
            p.actions,
            tuple(r for r in p.resources if r.split(":")[0] in ("agent", "group"))
            or ("agent:id:a",),
        )
        for p in role
    ]
    cache, user = cache_with(scoped)
    for verb in VERBS:
        assert not cache.can(user, f"{noun}:{verb}")
        assert not cache.allowed(user, f"{noun}:{verb}", EVERYTHING)
        assert not cache.allowed(user, f"{noun}:{verb}", f"{noun}:id:a")


@st.composite
def near(draw: Any, pattern: str) -> str:
    """`pattern` with its value's tokens changed a little: the pairs where a cover check
    can go wrong are patterns that almost cover each other."""
    head, _, value = pattern.rpartition(":")
    if not head:
        return pattern
    tokens = list(_tokens(value))
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(tokens)))
        edit = draw(st.sampled_from(["insert", "replace", "delete"]))
        new = draw(st.sampled_from([*CHARS, "*", "?", *SETS]))
        if edit == "insert" or not tokens:
            tokens.insert(i, new)
        elif edit == "replace":
            tokens[min(i, len(tokens) - 1)] = new
        else:
            del tokens[min(i, len(tokens) - 1)]
    return f"{head}:{''.join(tokens)}"


@settings(max_examples=300, deadline=None)
@given(data=st.data(), outer=resource_patterns(), related=st.booleans())
def test_resource_cover_is_sound(data: st.DataObject, outer: str, related: bool) -> None:
    inner = data.draw(near(outer) if related else resource_patterns())
    if resource_covers(outer, inner) and inner != EVERYTHING:
        r = data.draw(instance(inner))
        assert outer == EVERYTHING or fnmatch.fnmatchcase(r, outer), (outer, inner, r)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    outer=action_patterns(),
    inner=action_patterns(),
    sub=st.sampled_from(["", ":agent-upgrade", ":x:y"]),
)
def test_action_cover_is_sound(data: st.DataObject, outer: str, inner: str, sub: str) -> None:
    if not action_covers(outer, inner):
        return
    a = data.draw(instance(inner)) if "*" in inner else inner + sub
    if action_matches(inner, a):
        assert action_matches(outer, a), (outer, inner, a)


@st.composite
def narrowed(draw: Any, p: Policy) -> Policy:
    """A part of `p`: some of its actions and resources, some made concrete."""

    def part(patterns: tuple[str, ...], concrete: Any) -> tuple[str, ...]:
        picked = draw(st.lists(st.sampled_from(patterns), min_size=1, max_size=2))
        return tuple(draw(concrete(x)) if draw(st.booleans()) else x for x in picked)

    return Policy(
        part(p.actions, lambda a: instance(a) if "*" in a else st.just(a)),
        part(p.resources, lambda r: resources() if r == EVERYTHING else instance(r)),
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), held=roles, derived=st.booleans())
def test_nobody_grants_more_than_they_hold(
    data: st.DataObject, held: list[Policy], derived: bool
) -> None:
    """A part of what one holds may be granted; whatever `uncovered` lets through, every
    request the granted role allows, the granter's own role allows too."""
    if derived:
        wanted = [data.draw(narrowed(p)) for p in held[: data.draw(st.integers(1, len(held)))]]
        assert uncovered(held, wanted) == [], (held, wanted)
    else:
        wanted = data.draw(roles)
        if uncovered(held, wanted):
            return
    for p in wanted:
        a = data.draw(st.sampled_from(p.actions))
        a = data.draw(instance(a)) if "*" in a else a + data.draw(st.sampled_from(["", ":t"]))
        r = data.draw(st.sampled_from(p.resources))
        r = data.draw(resources()) if r == EVERYTHING else data.draw(instance(r))
        if p.grants(a) and r.count(":") >= 2:
            assert granted(held, a, r), (held, wanted, a, r)


@settings(max_examples=100, deadline=None)
@given(role=roles, extra=policies)
def test_what_one_holds_one_may_grant_and_no_more(role: list[Policy], extra: Policy) -> None:
    """The check is not merely 'no': one's own policies, any part of them, and anything for
    an administrator pass; adding a policy one lacks is named in the refusal."""
    assert uncovered(role, role) == []
    assert uncovered(role, role[:1]) == []
    assert uncovered(BUILTIN_ROLES["administrator"], [*role, extra]) == []
    if uncovered(role, [extra]):
        assert uncovered(role, [*role, extra])


def test_the_issues_cases() -> None:
    web_op = [Policy(("*",), ("agent:group:web", "group:id:web"))]
    cache, user = cache_with(web_op)
    for action in (
        "user:create",
        "user:read",
        "role:read",
        "audit:read",
        "metrics:read",
        "enrollment-key:manage",
    ):
        assert not cache.can(user, action), action
    assert cache.can(user, "task:create") and cache.can(user, "agent:read")
    assert uncovered(web_op, BUILTIN_ROLES["administrator"]) == ["* on *:*:*"]
    assert uncovered(web_op, BUILTIN_ROLES["operator"])
    only_create = [Policy(("user:create",), ("agent:group:web",))]
    cache, user = cache_with(only_create)
    assert not cache.can(user, "user:create")
    assert not cache.allowed(user, "user:create", "user:id:x")
    delegate = [Policy(("user:*", "role:*"), ("user:id:web-*", "role:id:web-*")), *web_op]
    cache, user = cache_with(delegate)
    assert cache.allowed(user, "user:create", "user:id:web-bob")
    assert not cache.allowed(user, "user:create", "user:id:bob")
    assert uncovered(delegate, [Policy(("task:read",), ("agent:group:web",))]) == []
    assert uncovered(delegate, [Policy(("task:read",), ("agent:group:*",))])


def test_resource_cover_is_sound_on_every_small_pattern() -> None:
    """Exhaustively, where random pairs rarely land: every value of up to three tokens
    against every other, checked on every value of up to five characters."""
    tokens = [*CHARS, "*", "?", "[ab]", "[!a]"]
    values = sorted({"".join(p) for n in range(4) for p in itertools.product(tokens, repeat=n)})
    words = ["".join(p) for n in range(6) for p in itertools.product(CHARS, repeat=n)]
    matches = {v: {w for w in words if fnmatch.fnmatchcase(w, v)} for v in values}
    covered = 0
    for outer in values:
        for inner in values:
            if resource_covers(f"agent:id:{outer}", f"agent:id:{inner}"):
                covered += 1
                assert matches[inner] <= matches[outer], (outer, inner)
    assert covered > len(values)  # more than the pattern itself
