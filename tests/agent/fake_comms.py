"""A small in-process Comms API (docs/comms-api.md) for the agent's tests.

It follows the contract closely enough to drive a real agent process: enrollment, tokens that
expire, long-polls that wake when a command is queued, acks and idempotent results. It can be
stopped and restarted on the same port to play a server outage. It plays the indexer's part
too: commands are signed (a test key of its own, handed over at enrollment) when queued.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetcmd.indexer.signing import CommandSigner
from fleetcmd.model.config import config_hash, merge

KEY = "test-enrollment-key"


class FakeComms:
    def __init__(self, port: int = 0, token_ttl: float = 900.0) -> None:
        self.port = port
        self.token_ttl = token_ttl
        self.cond = threading.Condition()
        self.agents: dict[str, dict[str, Any]] = {}  # id -> {name, secret, groups, removed}
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (agent id, expires at)
        self.group_configs: dict[str, dict[str, Any]] = {}
        self.mailbox: dict[str, list[dict[str, Any]]] = {}
        self.acked: list[Any] = []
        self.results: dict[str, dict[str, Any]] = {}  # command id (text) -> first result
        self.result_posts = 0
        self.refuse_results = False  # play a server that cannot record results right now
        # Ids whose ack the stream does not confirm (they went final before the ack), and
        # whether acks fail outright (503): the agent must run neither.
        self.unconfirmed: set[Any] = set()
        self.fail_acks = False
        self.failed_acks: list[Any] = []
        self.enroll_errors: list[int] = []  # statuses the next enrollments are answered with
        self.enroll_bodies: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.events: list[dict[str, Any]] = []
        # package id (NAME-VERSION) -> (bytes, response headers)
        self.packages: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.sca: dict[str, dict[str, Any]] = {}  # policy id -> policy (GET /agents/sca/…)
        self.signer = CommandSigner(Ed25519PrivateKey.generate())
        self.all_results: list[dict[str, Any]] = []  # every result posted, in order
        self.beats: list[dict[str, Any]] = []  # every heartbeat of a running command, in order
        self.connections: set[Any] = set()
        self.generation = 0  # bumped by stop(): long-polls of an earlier run end at once
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeComms:
        self._server = _Server(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for sock in list(self.connections):  # an outage also cuts keep-alive connections
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def merged(self, groups: list[str]) -> dict[str, Any]:
        return merge(self.group_configs.get(g, {}) for g in groups)

    def sign(
        self, agent_id: str, command: dict[str, Any], expires_in: float = 3600.0
    ) -> dict[str, Any]:
        """Aim the command at `agent_id` (unless aimed already) and sign it, as the indexer."""
        if command["target"].get("id") == "?":
            command["target"] = {"type": "agent", "id": agent_id}
        return self.signer.sign(command, time.time() + expires_in)

    def queue(self, agent_id: str, command: dict[str, Any], sign: bool = True) -> None:
        """Hand a command to the agent's next poll; signed unless `sign` is False (or it
        carries a signature already: replays and forgeries are queued as they are)."""
        if sign and "signature" not in command:
            self.sign(agent_id, command)
        with self.cond:
            self.mailbox.setdefault(agent_id, []).append(command)
            self.cond.notify_all()

    def command(
        self, cid: int, name: str, args: dict[str, Any], timeout: float = 30
    ) -> dict[str, Any]:
        return {
            "id": cid,
            "task_id": 1,
            "parent_id": None,
            "source": "test",
            "user": "t",
            "target": {"type": "agent", "id": "?"},
            "action": {"name": name, "version": 1, "args": args},
            "timeout": timeout,
        }

    def config_command(
        self, cid: int, groups: list[str], attach: bool = True, name: str = "set-groups"
    ) -> dict[str, Any]:
        merged = self.merged(groups)
        args: dict[str, Any] = {"groups": groups, "config_hash": config_hash(merged)}
        if attach:
            args["config"] = merged
        else:
            args["config_ref"] = {"groups": groups, "hash": config_hash(merged)}
        return self.command(cid, name, args)

    # -- the API ----------------------------------------------------------------------------
    def agent_of(self, token: str | None) -> str | None:
        entry = self.tokens.get(token or "")
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, token: str | None
    ) -> tuple[int, Any]:
        self.calls.append(f"{method} {path}")
        if method == "POST" and path == "/agents/enroll":
            self.enroll_bodies.append(body)
            if self.enroll_errors:
                return self.enroll_errors.pop(0), {"error": "busy", "message": "try later"}
            if body.get("enrollment_key") != KEY:
                return 401, {"error": "unauthorized", "message": "bad enrollment key"}
            if any(a["name"] == body["name"] for a in self.agents.values()):
                return 409, {"error": "conflict", "message": "name taken"}
            aid = secrets.token_hex(4)
            secret = secrets.token_urlsafe(16)
            self.agents[aid] = {
                "name": body["name"],
                "secret": secret,
                "removed": False,
                "groups": list(body.get("groups") or ["default"]),
            }
            return 201, {
                "data": {"id": aid, "secret": secret, "command_keys": self.signer.public_keys()}
            }
        if method == "POST" and path == "/agents/authenticate":
            a = self.agents.get(body.get("id", ""))
            if a is None or a["secret"] != body.get("secret"):
                return 401, {"error": "unauthorized", "message": "bad credentials"}
            if a["removed"]:
                return 403, {"error": "agent_removed", "message": "agent removed"}
            tok = secrets.token_hex(8)
            self.tokens[tok] = (body["id"], time.monotonic() + self.token_ttl)
            return 200, {"data": {"token": tok, "expires_in": self.token_ttl}}
        aid = self.agent_of(token)
        if aid is None:
            return 401, {"error": "unauthorized", "message": "bad or expired token"}
        agent = self.agents[aid]
        if agent["removed"]:
            return 403, {"error": "agent_removed", "message": "agent removed"}
        if method == "GET" and path == "/agents/init":
            merged = self.merged(agent["groups"])
            return 200, {
                "data": {
                    "id": aid,
                    "name": agent["name"],
                    "groups": agent["groups"],
                    "config": merged,
                    "config_hash": config_hash(merged),
                    "version": 1,
                    "command_keys": self.signer.public_keys(),
                }
            }
        if method == "POST" and path == "/agents/state":
            agent["config_hash"] = body.get("config_hash")
            return 200, {"data": {"config_hash": agent["config_hash"]}}
        if method == "GET" and path == "/agents/command-keys":
            return 200, {"data": self.signer.public_keys()}
        if method == "GET" and path == "/agents/commands":
            wait = float(query.get("wait", ["30"])[0])
            deadline = time.monotonic() + wait
            generation = self.generation
            with self.cond:
                while (
                    not self.mailbox.get(aid)
                    and time.monotonic() < deadline
                    and self._server is not None
                    and self.generation == generation
                ):
                    self.cond.wait(max(0.0, deadline - time.monotonic()))
                if self.generation != generation:
                    return 503, {"error": "unavailable", "message": "server restarted"}
                commands, self.mailbox[aid] = self.mailbox.get(aid, []), []
            return 200, {"data": {"commands": commands}}
        if method == "POST" and path == "/agents/commands/ack":
            if self.fail_acks:
                self.failed_acks.extend(body["ids"])
                return 503, {"error": "unavailable", "message": "indexer unreachable"}
            self.acked.extend(body["ids"])
            return 200, {"data": {"acked": [i for i in body["ids"] if i not in self.unconfirmed]}}
        if method == "POST" and path == "/agents/commands/progress":
            self.beats.extend(body["progress"])
            ids = [b["id"] for b in body["progress"]]
            running = [i for i in ids if str(i) not in self.results]
            return 200, {
                "data": {
                    "running": running,
                    "stopped": [i for i in ids if i not in running],
                    "next": {str(b["id"]): len(b.get("output", [])) for b in body["progress"]},
                }
            }
        if method == "POST" and path == "/agents/results":
            if self.refuse_results:
                return 503, {"error": "unavailable", "message": "indexer unreachable"}
            self.result_posts += 1
            out = []
            self.all_results.extend(body["results"])
            for r in body["results"]:
                k = str(r["id"])
                out.append(
                    {"id": r["id"], "outcome": "duplicate" if k in self.results else "recorded"}
                )
                self.results.setdefault(k, r)
            return 200, {"data": {"results": out}}
        if method == "GET" and path == "/agents/configuration":
            groups = [g for g in query.get("groups", [""])[0].split(",") if g]
            if groups != agent["groups"]:
                return 403, {"error": "forbidden", "message": "not your groups"}
            merged = self.merged(groups)
            return 200, {
                "data": {"groups": groups, "config": merged, "config_hash": config_hash(merged)}
            }
        if method == "POST" and path == "/agents/inventory":
            agent["inventory"] = body.get("packages", [])
            agent["inventories"] = agent.get("inventories", 0) + 1
            return 200, {"data": {"accepted": len(agent["inventory"])}}
        if method == "POST" and path == "/agents/events":
            self.events.extend(body.get("events", []))
            return 200, {"data": {"accepted": len(body.get("events", []))}}
        if method == "GET" and path.startswith("/agents/sca/"):
            policy = self.sca.get(path.rsplit("/", 1)[1])
            if policy is None:
                return 404, {"error": "not_found", "message": "no such policy"}
            return 200, {
                "data": {"policy_id": policy["id"], "version": policy["version"], "policy": policy}
            }
        return 404, {"error": "not_found", "message": f"{method} {path}"}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # connections cut on purpose by stop()


def _handler(fake: FakeComms) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            fake.connections.add(self.connection)

        def finish(self) -> None:
            fake.connections.discard(self.connection)
            super().finish()

        def log_message(self, *args: Any) -> None:
            return None

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else None
            pkg = parts.path.removeprefix("/agents/packages/")
            if (
                method == "GET"
                and pkg != parts.path
                and fake.agent_of(token)
                and pkg in fake.packages
            ):
                fake.calls.append(f"GET {parts.path}")
                data, headers = fake.packages[pkg]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            status, doc = fake.handle(method, parts.path, parse_qs(parts.query), body, token)
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler
