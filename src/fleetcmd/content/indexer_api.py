"""The few indexer endpoints the content manager uses, over HTTP with the node credential.

The content manager is a client of the indexer like any server node: it never opens the store,
so it runs the same inside the indexer's host, in `fleetcmd up`, or on a machine of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx


class IndexerError(Exception):
    """The indexer was unreachable or answered with an error we cannot act on: retry later."""


class TaskRefused(Exception):
    """The task manager refused a task (4xx): retrying the same request cannot help."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class TaskFiled:
    type: str
    task_id: int
    created: bool  # False: the idempotency key was seen before, nothing was written
    idempotency_key: str
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "task_id": self.task_id,
            "created": self.created,
            "idempotency_key": self.idempotency_key,
            "params": self.params,
        }


class IndexerApi:
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise IndexerError(f"{method} {self.url}{path}: {exc}") from None
        if resp.status_code >= 500 or resp.status_code in (401, 429):
            raise IndexerError(f"{method} {path}: HTTP {resp.status_code} {resp.text[:300]}")
        return resp

    def get_document(self, index: str, doc_id: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/indexes/{index}/{doc_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise IndexerError(f"GET {index}/{doc_id}: HTTP {resp.status_code} {resp.text[:300]}")
        body = resp.json()["data"]
        return body if isinstance(body, dict) else {"value": body}

    def list_documents(self, index: str, prefix: str = "") -> dict[str, Any]:
        resp = self._call("GET", f"/indexes/{index}", params={"prefix": prefix})
        if resp.status_code != 200:
            raise IndexerError(f"GET {index}: HTTP {resp.status_code} {resp.text[:300]}")
        return dict(resp.json()["data"]["items"])

    def put_document(self, index: str, doc_id: str, body: dict[str, Any]) -> None:
        resp = self._call("PUT", f"/indexes/{index}/{doc_id}", json=body)
        if resp.status_code != 200:
            raise IndexerError(f"PUT {index}/{doc_id}: HTTP {resp.status_code} {resp.text[:300]}")

    def append_audit(self, record: dict[str, Any]) -> None:
        resp = self._call("POST", "/audit", json={"records": [record]})
        if resp.status_code != 201:
            raise IndexerError(f"POST /audit: HTTP {resp.status_code} {resp.text[:300]}")

    def put_blob(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        resp = self._call(
            "PUT",
            f"/blobs/{digest}",
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        if resp.status_code != 200:
            raise IndexerError(f"PUT blob {digest}: HTTP {resp.status_code} {resp.text[:300]}")
        return digest

    def submit_task(self, type_: str, params: dict[str, Any], key: str) -> TaskFiled:
        """File an unattended task; the same key again returns the first task (no new one)."""
        body = {
            "type": type_,
            "params": params,
            "source": "content-manager",
            "user": "content-manager",
            "idempotency_key": key,
        }
        resp = self._call("POST", "/tasks", json=body)
        if resp.status_code not in (200, 202):
            try:
                detail: Any = resp.json()
            except ValueError:
                detail = resp.text[:300]
            raise TaskRefused(resp.status_code, detail)
        out = resp.json()
        return TaskFiled(type_, int(out["data"]["id"]), bool(out["created"]), key, params)
