"""The server → indexer hop repeats only what is safe to repeat (issue 20, item 2).

The real indexer answered 500 after committing a task (its reply could not be serialized)
and the server sent the task again: two tasks per request. That failure cannot be made on
the fixed indexer, so a stand-in on loopback plays it: it records every request, as a write
would, and answers 500 to the first."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from fleetcmd.server.indexer_client import IndexerClient, IndexerUnavailable
from support import free_port, wait_http


class FailsFirst:
    """Answers 500 to the first request (after recording it), 202 to the others."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/health":
            status, doc = 200, {"status": "ok"}
        else:
            self.seen.append((scope["method"], json.loads(body) if body else None))
            status = 500 if len(self.seen) == 1 else 202
            doc = (
                {"error": "internal", "message": "reply failed"}
                if status == 500
                else {"data": {"id": 1}, "created": True}
            )
        payload = json.dumps(doc).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@contextmanager
def serving(app: FailsFirst, port: int, delay: float = 0.0) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )

    def run() -> None:
        time.sleep(delay)
        server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if not delay:
            wait_http(f"{url}/health")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def call(url: str, method: str, **kwargs: Any) -> Any:
    async def go() -> Any:
        client = IndexerClient(url, "node-token", retries=4, backoff=0.05)
        try:
            return await client.call(method, "/tasks", **kwargs)
        finally:
            await client.close()

    return asyncio.run(go())


TASK = {"type": "rbac-change", "params": {}, "user": "admin", "source": "management-api"}


def test_a_write_that_failed_after_it_may_have_committed_is_not_sent_again() -> None:
    app = FailsFirst()
    with serving(app, free_port()) as url, pytest.raises(IndexerUnavailable):
        call(url, "POST", json=TASK)
    assert app.seen == [("POST", TASK)]


def test_a_write_with_an_idempotency_key_is_sent_again_with_the_same_key() -> None:
    app = FailsFirst()
    keyed = {**TASK, "idempotency_key": "hop:abc"}
    with serving(app, free_port()) as url:
        status, body = call(url, "POST", json=keyed, idempotent=True)
    assert status == 202 and body["created"] is True
    assert app.seen == [("POST", keyed), ("POST", keyed)]


def test_reads_are_sent_again() -> None:
    app = FailsFirst()
    with serving(app, free_port()) as url:
        status, _ = call(url, "GET")
    assert status == 202 and [m for m, _ in app.seen] == ["GET", "GET"]


def test_a_write_that_never_left_is_sent_again() -> None:
    """Connection refused: the indexer is (re)starting and saw nothing."""
    app = FailsFirst()
    app.seen.append(("warm-up", None))  # so that the first real request succeeds
    port = free_port()
    with serving(app, port, delay=0.3) as url:
        status, _ = call(url, "POST", json=TASK)
    assert status == 202 and app.seen[1:] == [("POST", TASK)]
