"""The command catalog and the status transition table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetcmd.errors import IllegalTransition, InvalidParams, RemovedCommand, UnknownTaskType
from fleetcmd.model.catalog import CATALOG, REMOVED, Expansion, Target, validate
from fleetcmd.model.config import config_hash, merge
from fleetcmd.model.status import FINAL, TRANSITIONS, Status, check_transition, rollup


def test_catalog_has_the_fifteen_commands_of_the_spec() -> None:
    assert sorted(s.number for s in CATALOG.values()) == list(range(1, 16))
    rows = {s.task_type: s.target for s in CATALOG.values()}
    assert rows["group-assignment-change"] is Target.INDEXER
    assert rows["agent-upgrade"] is Target.AGENT
    assert rows["cve-content-update"] is Target.SERVER
    for spec in CATALOG.values():
        if spec.target is Target.INDEXER:
            assert spec.expansion is Expansion.BY_COMMAND_MANAGER
        if spec.target is Target.SERVER:
            assert spec.expansion is Expansion.PER_SERVER_NODE
        assert spec.timeout > 0 and spec.action


@pytest.mark.req("R4")
@pytest.mark.parametrize("name", sorted(REMOVED))
def test_reboot_is_refused_by_name(name: str) -> None:
    assert not any("reboot" in s.task_type or "restart" in s.action for s in CATALOG.values())
    with pytest.raises(RemovedCommand, match="removed"):
        validate(name, {})


def test_unknown_type_and_bad_params_say_why() -> None:
    with pytest.raises(UnknownTaskType, match="unknown task type 'frobnicate'"):
        validate("frobnicate", {})
    with pytest.raises(InvalidParams, match="name"):
        validate("agent-rename", {"agent": "a1"})
    with pytest.raises(InvalidParams, match="surprise: Extra inputs"):
        validate("agent-rename", {"agent": "a1", "name": "n", "surprise": 1})
    with pytest.raises(InvalidParams, match="exactly one"):
        validate("agent-upgrade", {"version": "2", "all": True, "group": "web"})
    with pytest.raises(InvalidParams, match="group"):
        validate("group-configuration-change", {"group": "../etc", "configuration": {}})


def test_final_statuses_have_no_way_out() -> None:
    for s in FINAL:
        assert TRANSITIONS[s] == frozenset()


@given(st.sampled_from(list(Status)), st.sampled_from(list(Status)))
def test_check_transition_follows_the_table(old: Status, new: Status) -> None:
    if new in TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def test_rollup_keeps_never_reached_apart_from_failed() -> None:
    assert rollup({"pending": 3}) == "pending"
    assert rollup({"pending": 1, "success": 2}) == "in_progress"
    assert rollup({"success": 3}) == "success"
    assert rollup({"success": 2, "expired": 1}) == "expired"
    assert rollup({"success": 2, "expired": 1, "failure": 1}) == "failure"
    assert rollup({"timeout": 1}) == "failure"
    assert rollup({"success": 1, "cancelled": 2}) == "cancelled"
    assert rollup({}) == "success"


def test_merge_later_groups_override_and_hash_is_canonical() -> None:
    merged = merge([{"sca": {"enabled": True, "interval": 60}}, {"sca": {"interval": 30}}])
    assert merged == {"sca": {"enabled": True, "interval": 30}}
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
