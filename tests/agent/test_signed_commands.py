"""Signed commands (issue 5): a real agent process refuses unsigned, tampered, expired,
replayed and misdirected commands, with the reason in the result; key rotation."""

from __future__ import annotations

import copy
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetcmd.agent.trust import CommandTrust, Refusal
from fleetcmd.indexer.signing import CommandSigner, make_next, promote
from fleetcmd.model import command_signature as cs
from support import Role, wait_until

from .fake_comms import FakeComms
from .test_process import agent_role, enrolled, status


def result_of(fake: FakeComms, cid: int) -> dict:
    return dict(wait_until(lambda: fake.results.get(str(cid)), 20, what=f"result of {cid}"))


def refused(fake: FakeComms, cid: int, reason: str) -> dict:
    r = result_of(fake, cid)
    assert r["status"] == "failure", r
    assert r["data"] == {"refused": reason}, r
    assert reason in r["message"], r
    return r


@pytest.fixture
def running(fake: FakeComms, tmp_path: Path):
    role = agent_role(fake, tmp_path).start()
    try:
        yield role, enrolled(fake)
    finally:
        role.kill(signal.SIGTERM)
        print(role.log()[-3000:])


def test_a_real_agent_refuses_what_the_indexer_did_not_sign(
    fake: FakeComms, tmp_path: Path, running: tuple[Role, str]
) -> None:
    _, aid = running
    fake.queue(aid, fake.command(1, "rename", {"name": "signed"}))
    assert result_of(fake, 1)["status"] == "success"

    fake.queue(aid, fake.command(2, "rename", {"name": "unsigned"}), sign=False)
    refused(fake, 2, cs.UNSIGNED)

    tampered = fake.sign(aid, fake.command(3, "rename", {"name": "ok"}))
    tampered["action"]["args"]["name"] = "tampered"
    fake.queue(aid, tampered)
    refused(fake, 3, cs.BAD_SIGNATURE)

    fake.queue(aid, fake.sign(aid, fake.command(4, "rename", {"name": "late"}), -3600))
    refused(fake, 4, cs.EXPIRED)

    other = fake.command(5, "rename", {"name": "someone-else"})
    other["target"] = {"type": "agent", "id": "not-" + aid}
    fake.queue(aid, fake.sign(aid, other))
    refused(fake, 5, cs.NOT_FOR_THIS_AGENT)

    forger = CommandSigner(Ed25519PrivateKey.generate())
    forged = fake.command(6, "rename", {"name": "forged"})
    forged["target"] = {"type": "agent", "id": aid}
    fake.queue(aid, forger.sign(forged, time.time() + 600))
    assert "does not trust" in refused(fake, 6, cs.BAD_SIGNATURE)["message"]

    # The attached configuration is covered too.
    fake.group_configs["default"] = {"log_level": "warning"}
    cfg = fake.sign(aid, fake.config_command(7, ["default"]))
    cfg["action"]["args"]["config"]["log_level"] = "debug"
    fake.queue(aid, cfg)
    refused(fake, 7, cs.BAD_SIGNATURE)

    s = status(tmp_path)
    assert s["name"] == "signed" and s["config"] == {}
    # Journaled: 1 (run) and 4 (signed by the indexer, refused as expired). The others never
    # entered the journal, so they cannot shadow a real command of the same id.
    assert s["executed"] == 2


def test_a_replayed_command_is_refused_even_after_the_journal_forgot_it(
    fake: FakeComms, tmp_path: Path
) -> None:
    role = agent_role(fake, tmp_path).start()
    try:
        aid = enrolled(fake)
        captured = fake.sign(aid, fake.command(10, "rename", {"name": "first"}))
        fake.queue(aid, copy.deepcopy(captured))
        assert result_of(fake, 10)["status"] == "success"
        fake.queue(aid, fake.command(11, "rename", {"name": "second"}))
        assert result_of(fake, 11)["status"] == "success"

        # Delivered again while the journal knows the id: answered from it, not re-run.
        fake.queue(aid, copy.deepcopy(captured))
        wait_until(
            lambda: sum(1 for r in fake.all_results if r["id"] == 10) == 2,
            20,
            what="recorded result re-sent",
        )
        assert status(tmp_path)["name"] == "second"

        # The journal is lost (a restored backup, a wiped database row): the nonce still
        # marks the command as used.
        role.kill(signal.SIGTERM)
        fake.stop()  # also ends the dead agent's long-poll, which would take the next command
        fake.start()
        fake.agents[aid]["name"] = "second"
        with sqlite3.connect(tmp_path / "p1" / "agent.db") as db:
            db.execute("DELETE FROM journal WHERE id = '10'")
        role = agent_role(fake, tmp_path).start()
        wait_until(lambda: fake.calls.count("GET /agents/init") >= 2, 20, what="restart")
        fake.results.pop("10")
        fake.queue(aid, copy.deepcopy(captured))
        r = refused(fake, 10, cs.REPLAYED)
        assert "replay" in r["message"]
        assert status(tmp_path)["name"] == "second"
    finally:
        role.kill(signal.SIGTERM)
        print(role.log()[-3000:])


def test_rotation_next_key_learned_then_promoted(
    fake: FakeComms, tmp_path: Path, running: tuple[Role, str]
) -> None:
    _, aid = running
    old = fake.signer.current
    new = Ed25519PrivateKey.generate()
    # Promoted while this agent never saw it as "next": the retired key's endorsement does.
    fake.signer = CommandSigner(
        new,
        endorsement={
            "by": cs.key_id(old.public_key()),
            "sig": cs.sign(old, cs.endorsement_statement(cs.public_base64(new.public_key()))),
        },
    )
    # The agent meets a key id it does not know, asks for the keys, finds it endorsed.
    fake.queue(aid, fake.command(20, "rename", {"name": "rotated"}))
    assert result_of(fake, 20)["status"] == "success"
    pinned = json.loads((tmp_path / "p1" / "command-keys.json").read_text())["keys"]
    assert set(pinned) == {cs.key_id(old.public_key()), cs.key_id(new.public_key())}
    assert status(tmp_path)["command_keys"] == sorted(pinned)
    assert "GET /agents/command-keys" in fake.calls
    # A key nobody trusted endorses is still refused.
    rogue = Ed25519PrivateKey.generate()
    fake.signer = CommandSigner(
        rogue,
        endorsement={
            "by": cs.key_id(rogue.public_key()),
            "sig": cs.sign(rogue, cs.endorsement_statement(cs.public_base64(rogue.public_key()))),
        },
    )
    fake.queue(aid, fake.command(21, "rename", {"name": "rogue"}))
    refused(fake, 21, cs.BAD_SIGNATURE)
    assert status(tmp_path)["name"] == "rotated"


def _cmd(cid: int, aid: str = "a1") -> dict:
    return {
        "id": cid,
        "task_id": 1,
        "target": {"type": "agent", "id": aid},
        "action": {"name": "rename", "version": 1, "args": {"name": "x"}},
        "timeout": 30,
    }


def test_key_files_rotation_and_explicit_keys(tmp_path: Path) -> None:
    """`fleetcmd command-key next/promote` on files; an agent given the public key file."""
    key = tmp_path / "idx" / "command-signing.key"
    first = CommandSigner.from_files(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    pub = key.with_name("command-keys.pub")
    trust = CommandTrust(tmp_path, tmp_path / "agent.db", [str(pub)])
    assert trust.load() == 1 and trust.ids() == [first.key_id]
    trust.authentic(first.sign(_cmd(1), time.time() + 60), "a1")
    # An explicit agent pins nothing on first use.
    rogue = CommandSigner(Ed25519PrivateKey.generate())
    trust.offered(rogue.public_keys(), "enrollment")
    with pytest.raises(Refusal) as exc:
        trust.authentic(rogue.sign(_cmd(2), time.time() + 60), "a1")
    assert exc.value.reason == cs.BAD_SIGNATURE

    nxt = make_next(key)
    assert len(pub.read_text().split("# next")) == 2  # the file agents read lists both
    old_id, new_id = promote(key)
    assert (old_id, new_id) == (first.key_id, nxt)
    second = CommandSigner.from_files(key)
    assert second.key_id == nxt and second.public_keys()["current"]["endorsed_by"] == old_id
    # The agent re-reads its key file when it meets an unknown key id; commands the retired
    # key signed before the promotion still verify.
    assert f"# retired {old_id}" in pub.read_text()
    trust.authentic(second.sign(_cmd(3), time.time() + 60), "a1")
    trust.authentic(first.sign(_cmd(4), time.time() + 60), "a1")
    assert sorted(trust.ids()) == sorted([old_id, new_id])
    trust.close()


def test_nonces_are_kept_until_expiry_and_bounded(tmp_path: Path) -> None:
    signer = CommandSigner(Ed25519PrivateKey.generate())
    trust = CommandTrust(tmp_path, tmp_path / "agent.db", [], max_nonces=3)
    trust.offered(signer.public_keys(), "test")
    cmds = [signer.sign(_cmd(i), time.time() + 600 + i) for i in range(5)]
    for c in cmds:
        trust.authentic(c, "a1")
        trust.admit(c)
    with pytest.raises(Refusal) as exc:
        trust.admit(cmds[4])
    assert exc.value.reason == cs.REPLAYED
    assert trust.prune() == 2  # the two that expire first are dropped past the bound
    with pytest.raises(Refusal):
        trust.admit(cmds[2])
    trust.close()
