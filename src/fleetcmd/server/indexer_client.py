"""The server's only way to the store: the indexer HTTP API, with the node credential.

A request that never left (the indexer refused the connection) is retried with jittered
exponential backoff, and so are 5xx answers and lost connections of requests that are safe
to repeat (an indexer restart or a PostgreSQL failover must not drop an agent's result):
reads, PUT and DELETE, and the POSTs their callers declare `idempotent` (results are
recorded once per command id; a task carries an idempotency key). Any other write is not
repeated blindly: the indexer may have committed it before failing to answer (issue 20: a
task written twice). 4xx answers are the caller's problem and are raised at once as
`IndexerError`, body intact, so the APIs can pass them through unchanged.

Every call runs on a loop of its own, on its own thread (`IndexerLane`): a node serving
thousands of agents keeps its main loop busy, and a 1 MB batch of commands read back in
64 KB pieces, one piece per turn of that loop, took a second to arrive (measured with 10,000
agents; docs/performance.md). On its own loop the node's traffic to the indexer (pulls,
marks, results, lease renewals) is never queued behind agents' requests; callers on the main
loop await it as before."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

log = logging.getLogger("fleetcmd.server.indexer")


class IndexerError(Exception):
    """An answer from the indexer that is not a success: its status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"indexer answered {status}: {body.get('message', body)}")
        self.status = status
        self.body = body

    @property
    def code(self) -> str:
        return str(self.body.get("error", ""))


class IndexerUnavailable(IndexerError):
    """The indexer could not be reached (or kept failing) after every retry."""


T = TypeVar("T")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Failures that prove the request never reached the indexer: always safe to send again.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class IndexerLane:
    """An event loop on a daemon thread; `run` awaits a coroutine there from any other loop
    (cancelling the awaiting task cancels it there too)."""

    def __init__(self, name: str = "indexer-io") -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvicorn[standard] brings it
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class IndexerClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retries: int = 4,
        backoff: float = 0.2,
        timeout: float = 30.0,
        ca: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._lane = IndexerLane()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        verify = ssl.create_default_context(cafile=ca) if ca else True

        async def make() -> httpx.AsyncClient:  # bound to the lane's loop, made there
            return httpx.AsyncClient(
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(timeout, connect=5.0),
                limits=limits,
                verify=verify,
            )

        self._http = asyncio.run_coroutine_threadsafe(make(), self._lane.loop).result()

    async def close(self) -> None:
        await self._lane.run(self._http.aclose())
        self._lane.stop()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Call the indexer; return the `data` of a success body."""
        _, body = await self.call(
            method,
            path,
            json=json,
            params=params,
            timeout=timeout,
            retries=retries,
            idempotent=idempotent,
        )
        return body.get("data")

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        idempotent: bool | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Call the indexer; return the status and whole body of a success answer.
        `idempotent` (default: by method) says whether a request that may have been
        carried out can be sent again."""
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        return await self._lane.run(
            self._call(
                method,
                path,
                json=json,
                params=params,
                timeout=timeout,
                retries=retries,
                idempotent=idempotent,
            )
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        params: dict[str, Any] | None,
        timeout: float | None,
        retries: int | None,
        idempotent: bool,
    ) -> tuple[int, dict[str, Any]]:
        attempts = (self.retries if retries is None else retries) + 1
        last: IndexerError | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff * (2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            try:
                kwargs: dict[str, Any] = {"json": json, "params": params}
                if timeout is not None:
                    kwargs["timeout"] = timeout
                resp = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = IndexerUnavailable(
                    503,
                    {"error": "indexer_unavailable", "message": f"indexer unreachable: {exc!r}"},
                )
                log.warning(
                    "indexer %s %s failed (%s), attempt %d/%d",
                    method,
                    path,
                    type(exc).__name__,
                    attempt + 1,
                    attempts,
                )
                if idempotent or isinstance(exc, NEVER_SENT):
                    continue
                raise last from None
            body = _json(resp)
            if resp.status_code < 400:
                return resp.status_code, body
            if resp.status_code < 500:
                raise IndexerError(resp.status_code, body)
            last = IndexerUnavailable(resp.status_code, body)
            log.warning(
                "indexer %s %s answered %d, attempt %d/%d",
                method,
                path,
                resp.status_code,
                attempt + 1,
                attempts,
            )
            if not idempotent:
                raise last
        assert last is not None
        raise last

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request(
            "GET", path, params={k: v for k, v in params.items() if v is not None}
        )

    async def post(
        self,
        path: str,
        body: Any,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        idempotent: bool = False,
    ) -> Any:
        return await self.request(
            "POST", path, json=body, timeout=timeout, retries=retries, idempotent=idempotent
        )

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, json=body)


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"error": "bad_gateway", "message": resp.text[:500]}
    return body if isinstance(body, dict) else {"data": body}
