"""In-process checks of the server's moving parts (no processes, fast)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fleetcmd.server.bulker import Bulker
from fleetcmd.server.config import ServerOptions
from fleetcmd.server.mailbox import REDELIVER_AFTER, Mailboxes
from fleetcmd.server.node import build_state
from fleetcmd.server.puller import Puller


def cmd(cid: int, agent: str, action: str = "rename") -> dict[str, Any]:
    return {
        "id": cid,
        "task_id": 1,
        "target": {"type": "agent", "id": agent},
        "action": {"name": action, "args": {}, "version": 1},
    }


def test_bulker_coalesces_concurrent_writes() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        b: Bulker[int, int] = Bulker("t", flush, interval=0.02)
        b.start()
        answers = await asyncio.gather(*(b.submit(i) for i in range(200)))
        await b.stop()
        return list(answers)

    assert asyncio.run(main()) == [i * 10 for i in range(200)]
    assert len(batches) == 1


def test_bulker_failure_reaches_every_caller() -> None:
    async def flush(items: list[int]) -> list[int]:
        raise RuntimeError("indexer down")

    async def main() -> list[Any]:
        b: Bulker[int, int] = Bulker("t", flush, interval=0.001)
        b.start()
        out = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        await b.stop()
        return list(out)

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(main()))


def test_mailbox_hands_once_then_again_after_silence() -> None:
    async def main() -> None:
        boxes = Mailboxes()
        boxes.put(cmd(1, "a"))
        box = boxes.box("a")
        now = time.monotonic()
        assert [e.command["id"] for e in box.ready(now)] == [1]
        assert box.ready(now + 1) == []
        assert [e.command["id"] for e in box.ready(now + REDELIVER_AFTER + 1)] == [1]
        assert boxes.drop([1, 99]) == {"a": [1]}
        assert boxes.depth() == 0 and 1 in box.history

    asyncio.run(main())


class FakeIndexer:
    """Answers the stream calls the puller makes, refusing or losing chosen ids."""

    def __init__(self, refuse: set[int] = frozenset(), lose: set[int] = frozenset()) -> None:
        self.refuse, self.lose = set(refuse), set(lose)
        self.calls: list[tuple[str, Any]] = []

    async def post(self, path: str, body: Any, **_: Any) -> Any:
        self.calls.append((path, body))
        if path == "/commands/mark":
            return {
                "moved": [i for i in body["ids"] if i not in self.refuse],
                "refused": [i for i in body["ids"] if i in self.refuse],
            }
        if path == "/leases/renew":
            return {
                "held": [i for i in body["ids"] if i not in self.lose],
                "lost": [i for i in body["ids"] if i in self.lose],
            }
        return {}


def _state(tmp: Path, fake: FakeIndexer) -> Any:
    st = build_state(
        ServerOptions(
            indexer_url="http://127.0.0.1:1", token="t", data_dir=tmp, node_id="n1", jwt_key="k"
        )
    )
    st.indexer = fake
    st.presence.indexer = fake
    return st


def test_zombie_drops_what_it_no_longer_owns(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeIndexer(refuse={2}, lose={3})
        st = _state(tmp_path, fake)
        puller = Puller(st)
        await puller.deliver([cmd(1, "a"), cmd(2, "a"), cmd(3, "b")])
        assert sorted(st.mailboxes.held_ids()) == [1, 3]  # 2 was refused as `sent`
        await puller.renew()
        assert st.mailboxes.held_ids() == [1]  # 3's lease went to another node

    asyncio.run(main())


def test_paused_node_hands_nothing_past_its_lease(tmp_path: Path) -> None:
    """Found by chaos (SIGSTOP of a server longer than its lease): on waking, its mailbox
    must not hand commands until a renewal says the lease is still its own."""

    async def main() -> None:
        fake = FakeIndexer(lose={2})
        st = _state(tmp_path, fake)
        puller = Puller(st)
        lease = st.options.lease
        # claimed by a request asked `lease + 5` seconds ago: the node was paused since
        await puller.deliver([cmd(1, "a"), cmd(2, "a")], time.monotonic() - lease - 5)
        box = st.mailboxes.box("a")
        assert box.ready(time.monotonic()) == []
        await puller.renew()
        assert [e.command["id"] for e in box.ready(time.monotonic())] == [1]  # 2 is another's now
        assert st.mailboxes.held_ids() == [1]

    asyncio.run(main())


def test_refused_commands_never_reach_a_mailbox(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeIndexer(refuse={1})
        st = _state(tmp_path, fake)
        await Puller(st).deliver([cmd(1, "a")])
        assert st.mailboxes.box("a").ready(time.monotonic()) == []
        assert 1 not in st.mailboxes.box("a").history

    asyncio.run(main())


def test_silent_agent_is_detached_then_released(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeIndexer()
        st = _state(tmp_path, fake)
        puller = Puller(st)
        await puller.deliver([cmd(1, "a"), cmd(2, "b")])
        st.mailboxes.box("b").last_poll = time.monotonic()  # b polls, a never did
        await puller.release_away()
        paths = [p for p, _ in fake.calls]
        assert paths.index("/agents/updates") < paths.index("/leases/release")
        assert dict(fake.calls)["/leases/release"]["ids"] == [1]
        assert dict(fake.calls)["/agents/updates"]["updates"] == [
            {"id": "a", "status": "disconnected", "node": "", "if_node": "n1"}
        ]
        assert st.mailboxes.held_ids() == [2]

    asyncio.run(main())


def test_live_config_notifies_observers(tmp_path: Path) -> None:
    st = _state(tmp_path, FakeIndexer())
    seen: list[dict[str, Any]] = []
    st.config.observe(seen.append)
    changed = st.config.apply({"events.queue_size": 5, "comms.max_poll_wait": 60.0})
    assert changed == {"events.queue_size": {"old": 10_000, "new": 5}}
    assert seen == [changed] and st.events.maxlen == 5
    assert st.config.apply({"events.queue_size": 5}) == {}
