"""The agent's side of the Comms API (docs/comms-api.md), on one persistent HTTP connection.

Built on the standard library's `http.client` rather than httpx: importing httpx pulls in rich
and pygments (about 14 MB) and the agent must stay under 40 MB idle. One keep-alive connection
is all an agent needs; it is reopened transparently when the server drops it.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

log = logging.getLogger("fleetcmd.agent.comms")

# Renew the token this long before it expires, so a long-poll never starts with a dying token.
TOKEN_MARGIN = 30.0


class CommsError(Exception):
    """The server answered with an error, or could not be reached (status 0)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        # Seconds the server asked us to wait (429 Retry-After), if it said.
        self.retry_after = retry_after

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def transient(self) -> bool:
        """Worth trying again later: unreachable (refused, reset, timed out), overloaded or
        rate-limited, a server error."""
        return self.status in (0, 408, 425, 429) or self.status >= 500


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by fleetcmd servers)."""
    try:
        return max(0.0, min(float(value), 3600.0)) if value else None
    except ValueError:
        return None


class AgentRemoved(CommsError):
    """The server says this agent was deleted: stop connecting and forget the credentials."""


class Comms:
    """Typed calls of the Comms API; re-authenticates on expiry or on a 401."""

    def __init__(self, url: str, timeout: float = 10.0, ca: str | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must be http(s)://host[:port], got {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        # A CA file to verify the server with (a private PKI, `fleetcmd certs`); else the
        # system's trust store.
        self.ca = ca
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._credentials: tuple[str, str] | None = None
        self._token: str | None = None
        self._token_renew_at = 0.0

    # -- transport ----------------------------------------------------------------------------
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                import ssl  # only paid for when the server speaks TLS

                self._conn = http.client.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=timeout,
                    context=ssl.create_default_context(cafile=self.ca),
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        else:
            self._conn.timeout = timeout
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _send(
        self, method: str, path: str, body: Any, auth: bool, timeout: float
    ) -> tuple[int, Any, float | None]:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        # A keep-alive connection the server closed fails on first use: retry once on a new one.
        for attempt in (1, 2):
            with self._lock:
                try:
                    conn = self._connection(timeout)
                    conn.request(method, self._prefix + path, body=payload, headers=headers)
                    resp = conn.getresponse()
                    raw = resp.read()
                    status = resp.status
                    retry_after = _seconds(resp.getheader("retry-after"))
                    if resp.will_close:
                        conn.close()
                        self._conn = None
                except (OSError, http.client.HTTPException) as exc:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    stale = isinstance(
                        exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError
                    )
                    if attempt == 1 and stale:
                        continue
                    raise CommsError(
                        0, "unreachable", f"{method} {path}: {type(exc).__name__}: {exc}"
                    ) from None
            break
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return status, doc, retry_after

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Call the API and return `data`; raises CommsError (AgentRemoved on 403 removed)."""
        t = timeout if timeout is not None else self.timeout
        if auth:
            self._ensure_token()
        status, doc, retry_after = self._send(method, path, body, auth, t)
        if status == 401 and auth and self._credentials is not None:
            log.info("token refused by the server; authenticating again")
            self._token = None
            self._ensure_token()
            status, doc, retry_after = self._send(method, path, body, auth, t)
        if status >= 400:
            err = doc if isinstance(doc, dict) else {}
            code = str(err.get("error", "http_error"))
            message = str(err.get("message", f"HTTP {status}"))
            if status == 403 and code == "agent_removed":
                raise AgentRemoved(status, code, message)
            raise CommsError(status, code, message, retry_after if status == 429 else None)
        return doc.get("data") if isinstance(doc, dict) else doc

    # -- authentication -----------------------------------------------------------------------
    def use_credentials(self, agent_id: str, secret: str) -> None:
        self._credentials = (agent_id, secret)
        self._token = None

    def _ensure_token(self) -> None:
        if self._token is not None and time.monotonic() < self._token_renew_at:
            return
        if self._credentials is None:
            raise RuntimeError("no credentials: enroll first")
        self.authenticate()

    def authenticate(self) -> None:
        assert self._credentials is not None
        agent_id, secret = self._credentials
        data = self.request(
            "POST", "/agents/authenticate", {"id": agent_id, "secret": secret}, auth=False
        )
        self._token = str(data["token"])
        expires_in = float(data.get("expires_in", 900))
        self._token_renew_at = time.monotonic() + max(expires_in - TOKEN_MARGIN, expires_in / 2)

    # -- the endpoints --------------------------------------------------------------------------
    def enroll(
        self,
        key: str,
        name: str,
        groups: list[str],
        version: str,
        info: dict[str, Any],
        request_id: str | None = None,
        request_secret: str | None = None,
    ) -> tuple[str, str, Any]:
        """Returns the id, the secret and the command-signing keys the server offers. With
        a request id and secret, a repeat gets the same answer (idempotent)."""
        body: dict[str, Any] = {
            "enrollment_key": key,
            "name": name,
            "version": version,
            "info": info,
        }
        if request_id is not None:
            body["request_id"], body["request_secret"] = request_id, request_secret
        if groups:
            body["groups"] = groups
        data = self.request("POST", "/agents/enroll", body, auth=False)
        return str(data["id"]), str(data["secret"]), data.get("command_keys")

    def command_keys(self) -> dict[str, Any]:
        """The indexer's current command-signing key and its endorsed next key."""
        return dict(self.request("GET", "/agents/command-keys"))

    def init(self) -> dict[str, Any]:
        return dict(self.request("GET", "/agents/init"))

    def report_applied(self, config_hash: str) -> None:
        """Tell the server which configuration this agent runs (after init)."""
        self.request("POST", "/agents/state", {"config_hash": config_hash})

    def commands(self, wait: float) -> list[dict[str, Any]]:
        data = self.request("GET", f"/agents/commands?wait={int(wait)}", timeout=wait + 15.0)
        return list((data or {}).get("commands") or [])

    def ack(self, ids: list[Any]) -> list[Any]:
        data = self.request("POST", "/agents/commands/ack", {"ids": ids})
        return list((data or {}).get("acked") or [])

    def results(self, results: list[dict[str, Any]]) -> dict[str, str]:
        """Post a batch; returns command id (as text) -> outcome for those the server answered."""
        data = self.request("POST", "/agents/results", {"results": results}, timeout=30.0)
        return {str(r["id"]): str(r.get("outcome", "")) for r in (data or {}).get("results", [])}

    def progress(self, beats: list[dict[str, Any]]) -> dict[str, Any]:
        """Heartbeats of running commands; returns {running: ids, stopped: ids, next: {id:
        output chunks the stream holds}}."""
        data = self.request("POST", "/agents/commands/progress", {"progress": beats}, timeout=10.0)
        got = data or {}
        return {
            "running": list(got.get("running") or []),
            "stopped": list(got.get("stopped") or []),
            "next": dict(got.get("next") or {}),
        }

    def configuration(self, groups: list[str]) -> dict[str, Any]:
        q = quote(",".join(groups), safe=",")
        return dict(self.request("GET", f"/agents/configuration?groups={q}"))

    def events(self, events: list[dict[str, Any]]) -> int:
        data = self.request("POST", "/agents/events", {"events": events}, timeout=30.0)
        return int((data or {}).get("accepted", 0))

    def inventory(self, packages: list[dict[str, str]]) -> int:
        data = self.request("POST", "/agents/inventory", {"packages": packages}, timeout=60.0)
        return int((data or {}).get("accepted", 0))

    # -- binary downloads (agent packages) -------------------------------------------------------
    def download(
        self, path: str, out: BinaryIO, max_bytes: int, timeout: float = 60.0
    ) -> dict[str, str]:
        """Stream a GET into `out` (at most `max_bytes`); returns the response headers with
        lower-case names. Same token handling as `request`; errors raise CommsError."""
        self._ensure_token()
        status, headers, err = self._download(path, out, max_bytes, timeout)
        if status == 401 and self._credentials is not None:
            self._token = None
            self._ensure_token()
            out.seek(0)
            out.truncate()
            status, headers, err = self._download(path, out, max_bytes, timeout)
        if status >= 400:
            code = str(err.get("error", "http_error"))
            message = str(err.get("message", f"HTTP {status}"))
            if status == 403 and code == "agent_removed":
                raise AgentRemoved(status, code, message)
            raise CommsError(status, code, message)
        return headers

    def _download(
        self, path: str, out: BinaryIO, max_bytes: int, timeout: float
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self._token}"}
        with self._lock:
            try:
                conn = self._connection(timeout)
                conn.request("GET", self._prefix + path, headers=headers)
                resp = conn.getresponse()
                got = {k.lower(): v for k, v in resp.getheaders()}
                if resp.status >= 400:
                    raw = resp.read(65536)
                    try:
                        err = json.loads(raw)
                    except ValueError:
                        err = {}
                    self._drop_connection()
                    return resp.status, got, err if isinstance(err, dict) else {}
                size = 0
                while chunk := resp.read(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        self._drop_connection()
                        raise CommsError(
                            0, "too_large", f"GET {path}: more than {max_bytes} bytes; refused"
                        )
                    out.write(chunk)
                if resp.will_close:
                    self._drop_connection()
                return resp.status, got, {}
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise CommsError(
                    0, "unreachable", f"GET {path}: {type(exc).__name__}: {exc}"
                ) from None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
