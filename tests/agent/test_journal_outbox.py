"""Journal (at-most-once per command id, across restarts) and outbox (durable, bounded)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleetcmd.agent.journal import DONE, OFFERED, RECEIVED, Journal, Result
from fleetcmd.agent.outbox import Outbox


def cmd(cid: int, name: str = "rename") -> dict:
    return {"id": cid, "action": {"name": name, "args": {}}}


def test_a_command_id_is_received_once_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    j = Journal(db)
    assert j.receive(cmd(1)) is True
    assert j.receive(cmd(1)) is True  # offered, never confirmed: it may still run
    j.confirm([1])
    assert j.receive(cmd(1)) is False
    j.complete(Result.success(1, {"name": "x"}))
    j.close()

    j = Journal(db)  # a restart
    assert j.receive(cmd(1)) is False
    entry = j.get(1)
    assert entry is not None and entry.state == DONE
    assert entry.result == Result.success(1, {"name": "x"})
    assert j.count() == 1


def test_interrupted_commands_are_found_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    j = Journal(db)
    j.receive(cmd(1))
    j.receive(cmd(2, "set-groups"))
    j.receive(cmd(3))  # offered, its delivery never confirmed: it never ran
    j.confirm([1, 2])
    j.complete(Result.success(1))
    j.close()
    j = Journal(db)
    [entry] = j.interrupted()
    assert (entry.id, entry.state, entry.action) == ("2", RECEIVED, "set-groups")
    assert j.command(2) == cmd(2, "set-groups")


def test_outbox_is_durable_and_oldest_first(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    o = Outbox(db)
    for i in range(5):
        o.put(Result.success(i))
    o.close()
    o = Outbox(db)
    assert [r.id for r in o.peek(3)] == [0, 1, 2]
    o.remove([0, 1])
    assert [r.id for r in o.peek()] == [2, 3, 4]
    assert o.size() == 3


def test_outbox_replaces_a_result_for_the_same_id(tmp_path: Path) -> None:
    o = Outbox(tmp_path / "agent.db")
    o.put(Result.success(7))
    o.put(Result.success(7))
    assert o.size() == 1


def test_outbox_is_bounded_and_drops_the_oldest_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    o = Outbox(tmp_path / "agent.db", limit=3)
    with caplog.at_level(logging.WARNING, "fleetcmd.agent.outbox"):
        for i in range(5):
            o.put(Result.success(i))
    assert [r.id for r in o.peek()] == [2, 3, 4]
    assert o.dropped == 2
    assert "dropped the 1 oldest" in caplog.text


def test_journal_and_outbox_share_one_file(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    j, o = Journal(db), Outbox(db)
    j.receive(cmd(1))
    j.complete(Result.failure(1, "no"))
    o.put(Result.failure(1, "no"))
    assert j.count() == 1 and o.size() == 1


def test_an_unconfirmed_command_runs_only_after_a_confirmed_delivery(tmp_path: Path) -> None:
    j = Journal(tmp_path / "agent.db")
    j.receive(cmd(4))
    entry = j.get(4)
    assert entry is not None and entry.state == OFFERED
    assert j.interrupted() == []  # a restart now does not answer it: it never ran
    j.confirm([99])  # confirming another id changes nothing
    assert j.receive(cmd(4)) is True
    j.confirm([4])
    entry = j.get(4)
    assert entry is not None and entry.state == RECEIVED
    assert j.receive(cmd(4)) is False
