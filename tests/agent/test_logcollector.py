"""The log collector (issue 18, item 3): real files followed through rotation, truncation and
restarts, decoded into events, posted over the real Comms client to the in-process Comms API
(fake_comms, a real HTTP server that can go down), with the rate and the outbox bounded."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetcmd.agent.comms import Comms, CommsError
from fleetcmd.agent.modules import ConfigError
from fleetcmd.agent.modules.logcollector import LogCollector, parse
from fleetcmd.agent.modules.logdecoders import decode
from fleetcmd.agent.state import StateDir
from support import wait_until

from .fake_comms import FakeComms

NOW = time.mktime((2026, 12, 7, 15, 0, 0, 0, 0, -1))


def failed(n: int, ip: str = "203.0.113.7") -> str:
    return (
        f"Dec  7 14:31:{n % 60:02d} web-01 sshd[812]: "
        f"Failed password for root from {ip} port {40000 + n} ssh2"
    )


def test_syslog_and_sshd_lines_decode_into_rule_fields() -> None:
    e = decode("syslog", failed(16), NOW)
    assert e["program"] == "sshd" and e["pid"] == "812" and e["hostname"] == "web-01"
    assert e["message"].startswith("Failed password for root from 203.0.113.7")
    assert (e["decoder"], e["category"], e["srcip"], e["srcport"], e["dstuser"]) == (
        "sshd",
        "authentication_failed",
        "203.0.113.7",
        "40016",
        "root",
    )
    assert e["timestamp"] == time.mktime((2026, 12, 7, 14, 31, 16, 0, 0, -1))
    iso = (
        "2026-12-07T14:31:16.123456+00:00 web-01 sshd-session[9]: "
        "Failed publickey for invalid user admin from 2001:db8::7 port 2222 ssh2"
    )
    e = decode("syslog", iso, NOW)
    assert (e["srcip"], e["dstuser"], e["invalid_user"], e["auth_method"]) == (
        "2001:db8::7",
        "admin",
        True,
        "publickey",
    )
    assert e["timestamp"] == 1796653876.123456
    e = decode(
        "syslog",
        "Dec  7 14:31:20 web-01 sshd[812]: Invalid user oracle from 198.51.100.4 port 5022",
        NOW,
    )
    assert (e["category"], e["dstuser"], e["srcip"]) == ("invalid_user", "oracle", "198.51.100.4")
    e = decode(
        "syslog",
        "Dec  7 14:31:21 web-01 sshd[812]: Accepted publickey for ops from 192.0.2.9 port 22 ssh2",
        NOW,
    )
    assert e["category"] == "authentication_success" and e["dstuser"] == "ops"
    # a bad address is left out, never handed to a rule that would block it
    e = decode(
        "syslog", "Dec  7 14:31:22 h sshd[1]: Invalid user x from 1.2.3.4;reboot port 1", NOW
    )
    assert "srcip" not in e and e["category"] == "invalid_user"
    # in January, a December line is last year's
    jan = time.mktime((2027, 1, 1, 0, 0, 10, 0, 0, -1))
    assert decode("syslog", failed(1), jan)["timestamp"] < jan - 86400 * 20
    assert decode("syslog", "kernel: something", NOW) == {
        "message": "kernel: something",
        "decoder": "plain",
    }
    assert decode("json", '{"srcip": "203.0.113.9", "n": 1}') == {
        "srcip": "203.0.113.9",
        "n": 1,
        "decoder": "json",
    }
    assert decode("json", "[1]")["decoder"] == "json-invalid"


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ({"files": "/var/log/auth.log"}, "must be a list"),
        ({"files": ["var/log/auth.log"]}, "absolute path"),
        ({"files": [{"path": "/x", "format": "xml"}]}, "format"),
        ({"files": [{"path": "/x", "colour": 1}]}, "must be a path or"),
        ({"files": ["/x"], "max_eps": 0}, "max_eps"),
        ({"files": ["/x"], "interval": "fast"}, "must be a number"),
        ({"files": ["/x"], "from": "middle"}, "'end' or 'start'"),
        ({"files": ["/x"], "outbox": 10}, "outbox"),
        ({"files": ["/x"], "follow": True}, "unknown keys: follow"),
        ({"enabled": "yes"}, "true or false"),
    ],
)
def test_bad_sections_are_refused(section: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse(section)


class Harness:
    """A collector on a state folder, sending to the fake Comms API as agent a1."""

    def __init__(self, tmp: Path, fake: FakeComms) -> None:
        self.tmp, self.fake = tmp, fake
        fake.agents["a1"] = {"name": "a1", "secret": "s3cret", "removed": False, "groups": []}
        self.state = StateDir(tmp / "state").create()
        self.collector = self.new()

    def channel(self) -> Comms:
        c = Comms(self.fake.url, timeout=5.0)
        c.use_credentials("a1", "s3cret")
        return c

    def new(self) -> LogCollector:
        return LogCollector(self.state, self.channel)

    def restart(self, section: dict[str, Any]) -> None:
        self.collector.close()
        self.collector = self.new()
        self.collector.configure(section)

    def messages(self) -> list[str]:
        return [e.get("message", "") for e in self.fake.events]

    def wait_messages(self, n: int, timeout: float = 20) -> list[str]:
        wait_until(lambda: len(self.fake.events) >= n, timeout, what=f"{n} events")
        time.sleep(0.5)  # and no more than that
        return self.messages()


@pytest.fixture
def h(tmp_path: Path, fake: FakeComms) -> Iterator[Harness]:
    harness = Harness(tmp_path, fake)
    try:
        yield harness
    finally:
        harness.collector.close()


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def line(i: int) -> str:
    return f"Dec  7 14:31:00 web-01 app[1]: line {i}"


def test_follows_from_the_end_and_sends_decoded_events(h: Harness) -> None:
    auth = h.tmp / "auth.log"
    append(auth, failed(0), failed(1))  # history before the collector is configured: not sent
    changes = h.collector.configure({"files": [str(auth)], "interval": 0.2})
    assert changes == [f"log collector following {auth}"]
    append(auth, *(failed(i) for i in range(2, 8)))
    got = h.wait_messages(6)
    assert len(got) == 6 and all("Failed password" in m for m in got)
    first = h.fake.events[0]
    assert first["module"] == "logcollector" and first["location"] == str(auth)
    assert (first["program"], first["srcip"], first["srcport"]) == ("sshd", "203.0.113.7", "40002")
    assert first["full_log"] == failed(2)
    assert len({e["id"] for e in h.fake.events}) == 6
    d = h.collector.describe()
    assert (d["enabled"], d["following"], d["read"], d["sent"], d["queued"]) == (True, 1, 6, 6, 0)
    assert [t.name for t in threading.enumerate()].count("logcollector") == 1
    # a partial line waits for its newline
    with open(auth, "a") as f:
        f.write("Dec  7 14:32:00 web-01 sshd[812]: Failed password for root from 203.0.113.8")
    time.sleep(0.8)
    assert len(h.fake.events) == 6
    append(auth, " port 1 ssh2")
    h.wait_messages(7)
    assert h.fake.events[-1]["srcip"] == "203.0.113.8" and h.fake.events[-1]["srcport"] == "1"


def test_globs_rotation_and_truncation_lose_nothing_and_repeat_nothing(h: Harness) -> None:
    logs = h.tmp / "app"
    logs.mkdir()
    a = logs / "a.log"
    append(a, line(0))
    h.collector.configure({"files": [str(logs / "*.log")], "interval": 0.2, "from": "start"})
    append(a, line(1))
    h.wait_messages(2)
    # rename rotation with a writer that still holds the old file for a moment
    late = open(a, "a")  # noqa: SIM115
    os.rename(a, logs / "a.log.1")
    append(a, line(3))  # the new a.log
    late.write(f"{line(2)}\n")
    late.close()
    # a file that appears later under the glob is read from its start
    append(logs / "b.log", line(4))
    h.wait_messages(5)
    # copytruncate: the file is emptied in place and written again
    os.truncate(a, 0)
    time.sleep(0.5)
    append(a, line(5), line(6))
    got = h.wait_messages(7)
    assert sorted(got) == sorted(f"line {i}" for i in range(7)), got
    assert len({e["id"] for e in h.fake.events}) == 7


def test_positions_survive_restarts_and_rotation_while_down(h: Harness) -> None:
    auth = h.tmp / "auth.log"
    section = {"files": [str(auth)], "interval": 0.2}
    append(auth, line(0))
    h.collector.configure(section)
    append(auth, line(1), line(2))
    h.wait_messages(2)
    # down: more lines, a rotation, lines in the new file, then started again
    h.collector.close()
    append(auth, line(3), line(4))
    os.rename(auth, h.tmp / "auth.log.1")
    append(auth, line(5))
    h.restart(section)
    got = h.wait_messages(5)
    assert got == [f"line {i}" for i in range(1, 6)], got
    # down again, nothing new: nothing is sent twice; the old file was finished and forgotten
    h.restart(section)
    append(auth, line(6))
    got = h.wait_messages(6)
    assert got == [f"line {i}" for i in range(1, 7)], got
    wait_until(lambda: h.collector.describe()["following"] == 1, 20, what="rotated file done")
    h.collector.close()
    db = sqlite3.connect(h.state.db_path)
    assert db.execute("SELECT path FROM log_positions").fetchall() == [(str(auth),)]
    assert db.execute("SELECT count(*) FROM log_events").fetchone() == (0,)


def test_an_outage_fills_a_bounded_outbox_then_everything_arrives_once(h: Harness) -> None:
    auth = h.tmp / "auth.log"
    auth.touch()
    h.collector.configure({"files": [str(auth)], "interval": 0.2, "outbox": 100, "batch": 40})
    h.fake.stop()
    append(auth, *(line(i) for i in range(250)))
    wait_until(lambda: h.collector.describe()["queued"] == 100, 20, what="outbox full")
    time.sleep(1.0)
    assert h.collector.describe()["queued"] == 100  # bounded: reading paused, nothing dropped
    assert h.fake.events == []
    h.fake.start()  # same port
    got = h.wait_messages(250, timeout=60)
    assert got == [f"line {i}" for i in range(250)]
    assert h.collector.describe()["queued"] == 0


def test_the_rate_is_bounded(h: Harness) -> None:
    auth = h.tmp / "auth.log"
    auth.touch()
    h.collector.configure({"files": [str(auth)], "interval": 0.2, "max_eps": 50})
    append(auth, *(line(i) for i in range(200)))
    time.sleep(1.0)
    assert h.collector.describe()["read"] <= 70  # 50 a second (10 a turn), and a turn early
    got = h.wait_messages(200, timeout=30)
    assert got == [f"line {i}" for i in range(200)]


def test_json_lines(h: Harness) -> None:
    app = h.tmp / "app.json"
    app.touch()
    h.collector.configure({"files": [{"path": str(app), "format": "json"}], "interval": 0.2})
    append(app, '{"event": "login_failed", "srcip": "203.0.113.5", "id": "theirs"}', "not json")
    wait_until(lambda: len(h.fake.events) >= 2, 20, what="2 events")
    e, bad = h.fake.events
    assert (e["event"], e["srcip"], e["decoder"], e["module"]) == (
        "login_failed",
        "203.0.113.5",
        "json",
        "logcollector",
    )
    assert e["id"] != "theirs" and "full_log" not in e
    assert bad["decoder"] == "json-invalid" and bad["message"] == "not json"


@pytest.mark.req("R2", "R5")
def test_disabling_stops_the_collector_and_removes_what_it_kept(h: Harness) -> None:
    auth = h.tmp / "auth.log"
    auth.touch()
    h.collector.configure({"files": [str(auth)], "interval": 0.2})
    h.fake.stop()
    append(auth, line(0), line(1))
    wait_until(lambda: h.collector.describe()["queued"] == 2, 20, what="queued")
    changes = h.collector.configure({"enabled": False, "files": [str(auth)]})
    assert changes == ["log collector disabled: positions and 2 unsent event(s) removed"]
    assert "logcollector" not in [t.name for t in threading.enumerate()]
    db = sqlite3.connect(h.state.db_path)
    for table in ("log_sources", "log_positions", "log_events"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    assert h.collector.describe()["enabled"] is False
    assert h.collector.configure({}) == []  # already off


class Refusing:
    """A channel whose server refuses (422) any post holding an event with message `bad`:
    the one boundary played here, since the real Comms API takes any event object."""

    def __init__(self) -> None:
        self.taken: list[dict[str, Any]] = []

    def events(self, events: list[dict[str, Any]]) -> int:
        if any(e.get("message") == "bad" for e in events):
            raise CommsError(422, "invalid", "refused")
        self.taken.extend(events)
        return len(events)

    def close(self) -> None:
        return None


def test_an_event_the_server_refuses_is_dropped_alone(tmp_path: Path) -> None:
    channel = Refusing()
    c = LogCollector(StateDir(tmp_path / "state").create(), lambda: channel)
    log = tmp_path / "app.log"
    log.touch()
    try:
        c.configure({"files": [str(log)], "interval": 0.2})
        append(log, "one", "bad", "three")
        wait_until(lambda: len(channel.taken) == 2, 20, what="the two good events")
        assert [e["message"] for e in channel.taken] == ["one", "three"]
        d = c.describe()
        assert (d["sent"], d["refused"], d["queued"]) == (2, 1, 0)
    finally:
        c.close()
