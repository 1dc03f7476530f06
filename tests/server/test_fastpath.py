"""The Comms API's hot routes answer the same through the plain-ASGI fast path as through
FastAPI: same statuses, same bodies, same errors (in process, against one server state whose
indexer calls are answered by in-memory bulkers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.server.bulker import Bulker
from fleetcmd.server.comms import fastpath
from fleetcmd.server.comms.app import create_comms_app
from fleetcmd.server.config import ServerOptions
from fleetcmd.server.node import build_state
from fleetcmd.server.state import ServerState
from fleetcmd.server.tokens import AGENT


def cmd(cid: int, agent: str) -> dict[str, Any]:
    return {
        "id": cid,
        "task_id": 7,
        "target": {"type": "agent", "id": agent},
        "action": {"name": "rename", "args": {"name": "x"}, "version": 1},
    }


def state(tmp: Path) -> ServerState:
    st = build_state(
        ServerOptions(
            indexer_url="http://127.0.0.1:1",
            token="t",
            data_dir=tmp,
            node_id="n1",
            jwt_key="k" * 32,
        )
    )
    stored: dict[int, dict[str, Any]] = {}

    async def results(items: list[dict[str, Any]]) -> list[str]:
        out = []
        for r in items:
            out.append("duplicate" if r["id"] in stored else "recorded")
            stored.setdefault(r["id"], r)
        return out

    async def delivered(ids: list[int]) -> list[bool]:
        return [i != 13 for i in ids]  # 13: no longer deliverable (e.g. cancelled)

    async def targets(ids: list[int]) -> list[dict[str, Any] | None]:
        return [{"type": "agent", "id": "a2", "action": "rename"} if i == 20 else None for i in ids]

    st.results = Bulker("results", results, interval=0.001)
    st.delivered = Bulker("delivered", delivered, interval=0.001)
    st.targets = Bulker("targets", targets, interval=0.001)
    st.presence.seen = lambda *_: None  # type: ignore[method-assign]
    return st


def exchange(
    st: ServerState, steps: Callable[[httpx.AsyncClient, ServerState, dict[str, str]], Any]
) -> list[tuple[int, Any]]:
    async def main() -> list[tuple[int, Any]]:
        for b in (st.results, st.delivered, st.targets):
            b.start()
        app = create_comms_app(st)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 4000))
        token = st.tokens.issue("a1", AGENT)
        async with httpx.AsyncClient(transport=transport, base_url="http://comms") as c:
            out = await steps(c, st, {"Authorization": f"Bearer {token}"})
        for b in (st.results, st.delivered, st.targets):
            await b.stop()
        return [(r.status_code, r.json()) for r in out]

    return asyncio.run(main())


async def conversation(
    c: httpx.AsyncClient, st: ServerState, auth: dict[str, str]
) -> list[httpx.Response]:
    for i in (11, 12, 13):
        st.mailboxes.put(cmd(i, "a1"))
    st.mailboxes.put(cmd(30, "a3"))
    return [
        await c.get("/agents/commands", params={"wait": 0}, headers=auth),
        await c.get("/agents/commands", params={"wait": 0}, headers=auth),  # nothing left
        await c.get("/agents/commands", params={"wait": "soon"}, headers=auth),
        await c.get("/agents/commands", params={"wait": 61}, headers=auth),
        await c.get("/agents/commands", params={"wait": 0}),
        await c.get(
            "/agents/commands", params={"wait": 0}, headers={"Authorization": "Bearer forged"}
        ),
        await c.post("/agents/commands/ack", json={"ids": [11, 12, 13, 30, 99]}, headers=auth),
        await c.post("/agents/commands/ack", json={"ids": [11]}, headers=auth),  # again
        await c.post("/agents/commands/ack", json={"ids": ["x"]}, headers=auth),
        await c.post("/agents/commands/ack", json={"ids": [1], "more": 1}, headers=auth),
        await c.post("/agents/commands/ack", content=b"{not json", headers=auth),
        await c.post(
            "/agents/results",
            headers=auth,
            json={
                "results": [
                    {"id": 11, "status": "success", "message": "done", "data": {"k": [1, 2]}},
                    {"id": 12, "status": "failure", "code": 3},
                    {"id": 20, "status": "success"},  # another agent's, looked up
                    {"id": 30, "status": "success"},  # another agent's, handed by this node
                ]
            },
        ),
        await c.post(
            "/agents/results", headers=auth, json={"results": [{"id": 11, "status": "success"}]}
        ),  # duplicate
        await c.post(
            "/agents/results",
            headers=auth,
            json={"results": [{"id": 0, "status": "maybe", "code": 2**40}]},
        ),
        await c.post("/agents/results", json={"results": []}),
        await c.post("/agents/results", headers=auth, content=b"x" * (2 << 20)),
        await c.post("/agents/commands/ack", content=b"x" * (2 << 20)),  # 413 before 401
    ]


def test_fast_path_answers_as_fastapi_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = exchange(state(tmp_path / "fast"), conversation)
    monkeypatch.setenv("FLEETCMD_COMMS_FASTPATH", "0")
    assert not fastpath.enabled()
    slow = exchange(state(tmp_path / "slow"), conversation)

    assert [s for s, _ in fast] == [s for s, _ in slow]
    assert [s for s, _ in fast] == [
        200,
        200,
        422,
        422,
        401,
        401,
        200,
        200,
        422,
        422,
        422,
        200,
        200,
        422,
        401,
        413,
        413,
    ]
    for (status, f), (_, s) in zip(fast, slow, strict=True):
        if status == 422:  # the same fields in error; pydantic words them
            assert f["error"] == s["error"] == "invalid_request"
            assert [e["field"] for e in f["details"]["errors"]] == [
                e["field"] for e in s["details"]["errors"]
            ], (f, s)
            assert f["message"]
        else:
            assert f == s
    polled = fast[0][1]["data"]["commands"]
    assert [c["id"] for c in polled] == [11, 12, 13]
    assert fast[1][1] == {"data": {"commands": []}}
    # 13 went final before its ack: not confirmed, not run; 30 and 99 are not a1's
    assert fast[6][1] == {"data": {"acked": [11, 12]}}
    assert [r["outcome"] for r in fast[11][1]["data"]["results"]] == [
        "recorded",
        "recorded",
        "ignored: not a command of this agent",
        "ignored: not a command of this agent",
    ]
    assert fast[12][1]["data"]["results"] == [{"id": 11, "outcome": "duplicate"}]
