"""Enrollment is idempotent (issue 14.7): an agent names its enrollment request, and a retry
after a lost answer (a client-side timeout once the server had enrolled it) gets the first
answer again instead of "name already taken"; another request with the same name does not."""

from __future__ import annotations

import json
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from fleetcmd.server.comms.enroll import derived_secret, secret_hash
from support import Role, wait_until

from .harness import ENROLLMENT_KEY, fleet


def request(name: str, request_id: str | None = None, secret: str | None = None) -> dict[str, Any]:
    return {
        "enrollment_key": ENROLLMENT_KEY,
        "name": name,
        "version": "1.0.0",
        "request_id": request_id or secrets.token_urlsafe(24),
        "request_secret": secret or secrets.token_urlsafe(32),
    }


def agents_named(indexer: httpx.Client, name: str) -> list[dict[str, Any]]:
    items = indexer.get("/agents", params={"search": name}).json()["data"]["items"]
    return [a for a in items if a["name"] == name]


def test_a_repeated_enrollment_gets_the_same_answer(store_url: str, tmp_path: Path) -> None:
    with (
        fleet(store_url, tmp_path) as (idx, [srv]),
        httpx.Client(base_url=srv.comms, timeout=30) as comms,
    ):
        first = request("agent-retry")
        r1 = comms.post("/agents/enroll", json=first)
        assert r1.status_code == 201, r1.text
        # the answer was lost: the agent asks again with the same request
        r2 = comms.post("/agents/enroll", json=first)
        assert r2.status_code == 201, r2.text
        a, b = r1.json()["data"], r2.json()["data"]
        assert (b["id"], b["secret"], b["groups"]) == (a["id"], a["secret"], a["groups"])
        assert b["command_keys"] == a["command_keys"]
        auth = comms.post("/agents/authenticate", json={"id": a["id"], "secret": b["secret"]})
        assert auth.status_code == 200, auth.text
        with idx.client() as c:
            assert [x["id"] for x in agents_named(c, "agent-retry")] == [a["id"]]
            # the store keeps the hash of the derived secret, never the request secret
            creds = c.get(f"/agents/{a['id']}/credentials").json()["data"]
            assert creds["secret_hash"] == secret_hash(
                derived_secret(first["request_secret"], a["id"])
            )

        # another request for the same name is another agent: refused, as before
        other = comms.post("/agents/enroll", json=request("agent-retry"))
        assert other.status_code == 409, other.text
        assert "already taken" in other.json()["message"]
        # the same request id without its secret proves nothing
        stolen = comms.post("/agents/enroll", json=request("agent-retry", first["request_id"]))
        assert stolen.status_code == 409, stolen.text
        assert "another secret" in stolen.json()["message"]
        # half a pair is a bad request, said so
        half = {k: v for k, v in first.items() if k != "request_secret"}
        bad = comms.post("/agents/enroll", json=half)
        assert bad.status_code == 422 and "request_secret" in bad.text, bad.text


def test_concurrent_attempts_of_one_request_enroll_one_agent(
    store_url: str, tmp_path: Path
) -> None:
    """Retries that overlap the first attempt (still being written) get its answer too."""
    with fleet(store_url, tmp_path) as (idx, [srv]):
        body = request("agent-race")

        def attempt(_: int) -> httpx.Response:
            return httpx.post(f"{srv.comms}/agents/enroll", json=body, timeout=30)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(attempt, range(6)))
        assert [r.status_code for r in answers] == [201] * 6, [r.text for r in answers]
        assert len({(r.json()["data"]["id"], r.json()["data"]["secret"]) for r in answers}) == 1
        with idx.client() as c:
            assert len(agents_named(c, "agent-race")) == 1


class AnswerLosingProxy:
    """HTTP on loopback in front of the Comms API: passes every request, but the answer to the
    first `POST /agents/enroll` is thrown away and the connection cut, as when the client
    times out after the server has enrolled it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.enrolls = 0
        self.lost: list[dict[str, Any]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        cin, uin = client.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                head, body = _message(cin)
                if not head:
                    return
                upstream.sendall(head + body)
                answer = b"".join(_message(uin))
                if head.startswith(b"POST /agents/enroll "):
                    self.enrolls += 1
                    if self.enrolls == 1:
                        self.lost.append(json.loads(answer.split(b"\r\n\r\n", 1)[1]))
                        return  # the answer never reaches the agent
                client.sendall(answer)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


def _message(stream: Any) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message (head, body) with a Content-Length body, or (b"", b"") at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return b"", b""
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, stream.read(length) if length else b""


def test_an_agent_whose_enrollment_answer_is_lost_enrolls_once(
    store_url: str, tmp_path: Path
) -> None:
    """A real agent: the first answer is lost, the retry gets the same agent, and the agent
    runs on (before: 409 "already taken", exit code 2, an agent nobody holds the secret of)."""
    with fleet(store_url, tmp_path) as (idx, [srv]):
        proxy = AnswerLosingProxy(srv.comms_port)
        state = tmp_path / "agent"
        agent = Role(
            "agent-lost-answer",
            [
                "agent",
                "--server",
                f"http://127.0.0.1:{proxy.port}",
                "--name",
                "agent-lost",
                "--state-dir",
                str(state),
                "--enrollment-key",
                ENROLLMENT_KEY,
            ],
            tmp_path,
        ).start()
        try:
            wait_until(
                lambda: (state / "credentials.json").exists() or not agent.alive(),
                60,
                what="agent enrolled or exited",
            )
            assert agent.alive(), agent.log()[-3000:]
            creds = json.loads((state / "credentials.json").read_text())
            assert proxy.enrolls >= 2 and proxy.lost[0]["data"]["id"] == creds["id"]
            # the credentials replace it (written first, so it goes a moment after)
            wait_until(
                lambda: not (state / "enrollment.json").exists(), 10, what="enrollment.json gone"
            )
            with idx.client() as c:
                assert [a["id"] for a in agents_named(c, "agent-lost")] == [creds["id"]]
                wait_until(
                    lambda: c.get(f"/agents/{creds['id']}").json()["data"]["status"] == "active",
                    30,
                    what="agent polling",
                )
            assert agent.alive()
        finally:
            agent.stop()
            proxy.close()
            print(agent.log()[-3000:])
