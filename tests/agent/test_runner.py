"""The agent's loop against a fake Comms API: start-up (R7), exactly-once, outbox, re-auth."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcmd.agent.cli import status_of
from fleetcmd.agent.runner import Agent, AgentOptions
from fleetcmd.model.config import config_hash
from support import wait_until

from .fake_comms import KEY, FakeComms


class Running:
    """An Agent run in a thread of the test process."""

    def __init__(self, fake: FakeComms, state_dir: Path, **options: object) -> None:
        given: dict[str, object] = {
            "server": fake.url,
            "enrollment_key": KEY,
            "name": "a1",
            "state_dir": str(state_dir),
            "wait": 1.0,
            "backoff_cap": 0.3,
            **options,
        }
        self.agent = Agent(AgentOptions(**given))  # type: ignore[arg-type]
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.agent.run()

    def start(self) -> Running:
        self.thread.start()
        wait_until(lambda: self.agent.id is not None, 10, what="enrollment")
        return self

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(10)


@pytest.fixture
def start(fake: FakeComms, tmp_path: Path) -> Iterator:
    running: list[Running] = []

    def _start(**options: object) -> Running:
        r = Running(fake, tmp_path / "state", **options).start()
        running.append(r)
        return r

    yield _start
    for r in running:
        r.stop()


@pytest.mark.req("R7")
def test_start_up_enrolls_then_applies_the_current_assignment(fake: FakeComms, start) -> None:
    fake.group_configs["default"] = {"sca": {"enabled": False}, "log_level": "warning"}
    r = start()
    aid = r.agent.id
    assert fake.agents[aid]["name"] == "a1"
    wait_until(lambda: "GET /agents/init" in fake.calls, 5, what="init")
    applied = wait_until(
        lambda: (
            (s := status_of(r.agent.dir.root))["config_hash"]
            == config_hash(fake.group_configs["default"])
            and s
        ),
        5,
        what="configuration applied",
    )
    assert applied["groups"] == ["default"] and applied["id"] == aid
    assert applied["pid"] is not None


def test_credentials_are_reused_across_restarts(fake: FakeComms, start) -> None:
    first = start()
    aid = first.agent.id
    first.stop()
    assert first.code == 0
    second = start()
    assert second.agent.id == aid and len(fake.agents) == 1


def test_a_command_delivered_twice_is_executed_once(fake: FakeComms, start) -> None:
    r = start()
    aid = r.agent.id
    fake.queue(aid, fake.command(10, "rename", {"name": "b1"}))
    wait_until(lambda: "10" in fake.results, 5, what="result of 10")
    assert fake.results["10"]["status"] == "success"
    # renamed meanwhile on disk by someone else: a re-execution would be visible
    r.agent.ctx.applied.name = "changed"  # type: ignore[union-attr]
    posts = fake.result_posts
    fake.queue(aid, fake.command(10, "rename", {"name": "b1"}))
    wait_until(lambda: fake.result_posts > posts, 5, what="result re-sent")
    assert fake.acked.count(10) == 2
    assert r.agent.ctx.applied.name == "changed"  # type: ignore[union-attr]
    assert status_of(r.agent.dir.root)["executed"] == 1


def test_results_survive_a_server_outage(fake: FakeComms, start) -> None:
    r = start()
    aid = r.agent.id
    port = fake.port
    wait_until(lambda: "GET /agents/init" in fake.calls, 5, what="init")
    fake.queue(aid, fake.command(20, "rename", {"name": "x"}))
    wait_until(lambda: "20" in fake.results, 5, what="first result")
    fake.stop()
    # results produced while the server is away stay in the outbox
    r.agent.outbox.put(  # type: ignore[union-attr]
        r.agent.journal.get(20).result
    )  # type: ignore[union-attr]
    fake.results.clear()
    back = FakeComms(port=port)
    back.agents, back.group_configs = fake.agents, fake.group_configs
    back.start()
    try:
        wait_until(lambda: "20" in back.results, 10, what="result after the outage")
        wait_until(
            lambda: r.agent.outbox.size() == 0,
            5,  # type: ignore[union-attr]
            what="outbox emptied",
        )
    finally:
        back.stop()


def test_an_expired_token_is_renewed(fake: FakeComms, start) -> None:
    fake.token_ttl = 0.5  # renewed at half its life: each 1 s long-poll needs a new one
    r = start()
    wait_until(lambda: fake.calls.count("POST /agents/authenticate") >= 3, 5, what="token renewals")
    fake.queue(r.agent.id, fake.command(30, "rename", {"name": "y"}))
    wait_until(lambda: "30" in fake.results, 5, what="result")


def test_a_revoked_token_gets_a_401_and_is_renewed(fake: FakeComms, start) -> None:
    r = start()
    wait_until(lambda: "GET /agents/init" in fake.calls, 5, what="init")
    fake.tokens.clear()
    fake.queue(r.agent.id, fake.command(31, "rename", {"name": "z"}))
    wait_until(lambda: "31" in fake.results, 5, what="result after 401")


def test_delete_answers_then_forgets_credentials_and_stops(fake: FakeComms, start) -> None:
    r = start()
    fake.queue(r.agent.id, fake.command(40, "delete", {}))
    r.thread.join(10)
    assert r.code == 0
    assert fake.results["40"]["data"] == {"deleted": True}
    s = status_of(r.agent.dir.root)
    assert s["id"] is None and s["removed"] is True and s["pid"] is None
    assert not r.agent.dir.credentials_path.exists()


def test_a_removed_agent_forgets_its_credentials(fake: FakeComms, start) -> None:
    r = start()
    fake.agents[r.agent.id]["removed"] = True
    fake.tokens.clear()
    r.thread.join(10)
    assert r.code == 0 and not r.agent.dir.credentials_path.exists()


def test_interrupted_command_is_answered_not_rerun(fake: FakeComms, start, tmp_path: Path) -> None:
    r = start()
    aid = r.agent.id
    r.stop()
    from fleetcmd.agent.journal import Journal

    j = Journal(tmp_path / "state" / "agent.db")
    j.receive(fake.command(50, "rename", {"name": "never"}))
    j.confirm([50])
    j.close()
    r2 = start()
    assert r2.agent.id == aid
    wait_until(lambda: "50" in fake.results, 5, what="interrupted answer")
    assert fake.results["50"]["status"] == "failure"
    assert "not run again" in fake.results["50"]["message"]
    assert status_of(r2.agent.dir.root)["name"] != "never"


def test_a_command_whose_delivery_is_not_confirmed_never_runs(fake: FakeComms, start) -> None:
    """Issue 14.1: the ack's answer is the agent's licence to run. A command the server does
    not confirm (it went final first) or whose ack failed is journaled `offered`, not run;
    offered again and confirmed, it runs once."""
    r = start()
    aid = r.agent.id
    fake.unconfirmed.add(60)
    fake.queue(aid, fake.command(60, "rename", {"name": "cancelled-meanwhile"}))
    wait_until(lambda: 60 in fake.acked, 5, what="ack of 60")
    fake.fail_acks = True
    fake.queue(aid, fake.command(61, "rename", {"name": "ack-failed"}))
    wait_until(lambda: 61 in fake.failed_acks, 5, what="failed ack of 61")
    time.sleep(0.5)
    assert "60" not in fake.results and "61" not in fake.results
    # The failed ack is asked again before the next poll; confirmed this time, 61 runs, once.
    fake.fail_acks = False
    wait_until(lambda: "61" in fake.results, 5, what="result of 61")
    assert fake.results["61"]["status"] == "success"
    assert status_of(r.agent.dir.root)["name"] == "ack-failed"
    fake.queue(aid, fake.command(62, "rename", {"name": "confirmed"}))
    wait_until(lambda: "62" in fake.results, 5, what="result of 62")
    assert status_of(r.agent.dir.root)["name"] == "confirmed"
    fake.queue(aid, fake.command(60, "rename", {"name": "cancelled-meanwhile"}))  # again
    wait_until(lambda: fake.acked.count(60) == 2, 5, what="second ack of 60")
    time.sleep(0.3)
    assert "60" not in fake.results
    assert status_of(r.agent.dir.root)["executed"] == 2  # 61 and 62; 60 never ran
    r.stop()
    r2 = start()  # a restart answers neither 60 nor anything else as interrupted
    assert r2.agent.id == aid
    fake.queue(aid, fake.command(63, "rename", {"name": "after-restart"}))
    wait_until(lambda: "63" in fake.results, 5, what="result of 63")
    assert "60" not in fake.results


def test_bad_enrollment_key_is_fatal(fake: FakeComms, tmp_path: Path) -> None:
    from fleetcmd.agent.runner import FatalStartError

    a = Agent(
        AgentOptions(
            server=fake.url, enrollment_key="wrong", name="a1", state_dir=str(tmp_path / "s")
        )
    )
    with pytest.raises(FatalStartError, match="bad enrollment key"):
        a.run()


def test_enrollment_outlives_transient_errors(fake: FakeComms, start) -> None:
    """Timeouts, overload, rate limits and server errors are retried, never fatal; every
    attempt names the same enrollment request (issue 14.7)."""
    fake.enroll_errors = [408, 500, 503, 429, 425, 502]
    r = start()
    assert r.agent.id in fake.agents and fake.enroll_errors == []
    assert len(fake.enroll_bodies) == 7
    assert len({(b["request_id"], b["request_secret"]) for b in fake.enroll_bodies}) == 1


def test_the_enrollment_key_can_come_from_a_file(fake: FakeComms, start, tmp_path: Path) -> None:
    key_file = tmp_path / "enrollment.key"
    key_file.write_text(KEY + "\n")
    r = start(enrollment_key="", enrollment_key_file=str(key_file))
    assert r.agent.id in fake.agents
    assert fake.enroll_bodies[0]["enrollment_key"] == KEY


def test_a_result_the_server_refuses_does_not_block_the_others(fake: FakeComms, start) -> None:
    r = start()
    wait_until(lambda: "GET /agents/init" in fake.calls, 5, what="init")
    original = fake.handle

    def picky(method, path, query, body, token):  # type: ignore[no-untyped-def]
        if path == "/agents/results" and any(x["id"] == 60 for x in body["results"]):
            return 422, {"error": "invalid_request", "message": "results.0.id: bad"}
        return original(method, path, query, body, token)

    fake.handle = picky  # type: ignore[method-assign]
    fake.queue(r.agent.id, fake.command(60, "rename", {"name": "p"}))
    fake.queue(r.agent.id, fake.command(61, "rename", {"name": "q"}))
    wait_until(lambda: "61" in fake.results, 5, what="the other result")
    wait_until(lambda: r.agent.outbox.size() == 0, 5, what="outbox emptied")  # type: ignore[union-attr]
    assert "60" not in fake.results
