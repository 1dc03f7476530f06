"""Real processes for server tests: an indexer, server nodes, and httpx playing agents."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from support import Indexer, Role, free_port, wait_http, wait_until

ENROLLMENT_KEY = "test-enrollment-key"
JWT_KEY = "test-jwt-key-shared-by-server-nodes"


class Server(Role):
    def __init__(
        self,
        indexer: Indexer,
        data_dir: Path,
        node_id: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.comms_port = free_port()
        self.management_port = free_port()
        self.node_id = node_id or f"server-test-{self.comms_port}"
        self.comms = f"http://127.0.0.1:{self.comms_port}"
        self.api = f"http://127.0.0.1:{self.management_port}"
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            self.node_id,
            [
                "server",
                "--indexer",
                indexer.url,
                "--data-dir",
                str(data_dir),
                "--node-id",
                self.node_id,
                "--comms-port",
                str(self.comms_port),
                "--management-port",
                str(self.management_port),
                "--log-level",
                "info",
                *(extra or []),
            ],
            data_dir,
            env={
                "FLEETCMD_TOKEN": indexer.token,
                "FLEETCMD_ENROLLMENT_KEY": ENROLLMENT_KEY,
                "FLEETCMD_JWT_KEY": JWT_KEY,
            },
        )

    def start(self) -> Server:
        super().start()
        wait_http(f"{self.comms}/health", proc=self.proc, timeout=30)
        wait_http(f"{self.api}/health", proc=self.proc, timeout=30)
        return self

    def admin(self, password: str | None = None) -> httpx.Client:
        """A Management API client logged in as admin."""
        password = password or (self.data_dir / "admin.password").read_text().strip()
        return login(self.api, "admin", password)


def login(api: str, user: str, password: str) -> httpx.Client:
    r = httpx.post(f"{api}/security/user/authenticate", auth=(user, password), timeout=10)
    assert r.status_code == 200, r.text
    return httpx.Client(
        base_url=api, timeout=30, headers={"Authorization": f"Bearer {r.json()['data']['token']}"}
    )


def dashboard_page(api: httpx.Client, path: str) -> httpx.Response:
    """A dashboard page as the browser of the user logged in on `api` gets it (the dashboard
    takes the Management API's JWT from its session cookie)."""
    token = api.headers["Authorization"].removeprefix("Bearer ")
    cookies = {"fleetcmd_token": token, "fleetcmd_sid": "s" * 24}
    return httpx.get(f"{api.base_url}{path}", cookies=cookies, timeout=30)


class FakeAgent:
    """The agent's side of the Comms API, by hand: enough to prove the server's side."""

    def __init__(self, comms: str, name: str, groups: list[str] | None = None) -> None:
        self.comms = comms
        self.name = name
        self.http = httpx.Client(base_url=comms, timeout=70)
        body: dict[str, Any] = {"enrollment_key": ENROLLMENT_KEY, "name": name, "version": "1.0.0"}
        if groups is not None:
            body["groups"] = groups
        r = self.http.post("/agents/enroll", json=body)
        assert r.status_code == 201, r.text
        self.enrollment = r.json()["data"]
        self.id: str = self.enrollment["id"]
        self.secret: str = self.enrollment["secret"]
        self.executed: dict[int, dict[str, Any]] = {}
        self.authenticate()

    def authenticate(self) -> httpx.Response:
        r = self.http.post("/agents/authenticate", json={"id": self.id, "secret": self.secret})
        if r.status_code == 200:
            self.http.headers["Authorization"] = f"Bearer {r.json()['data']['token']}"
        return r

    def poll(self, wait: float = 5.0) -> list[dict[str, Any]]:
        r = self.http.get("/agents/commands", params={"wait": wait})
        assert r.status_code == 200, r.text
        return list(r.json()["data"]["commands"])

    def ack(self, ids: list[int]) -> list[int]:
        r = self.http.post("/agents/commands/ack", json={"ids": ids})
        assert r.status_code == 200, r.text
        return list(r.json()["data"]["acked"])

    def report(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r = self.http.post("/agents/results", json={"results": results})
        assert r.status_code == 200, r.text
        return list(r.json()["data"]["results"])

    def run_once(self, wait: float = 5.0) -> list[dict[str, Any]]:
        """Poll, ack, 'execute' (echo the config hash, as a real agent reports it), answer."""
        commands = self.poll(wait)
        if not commands:
            return []
        self.ack([c["id"] for c in commands])
        results = []
        for c in commands:
            self.executed[c["id"]] = c
            args = c["action"]["args"] or {}
            data = {"groups": args.get("groups"), "config_hash": args.get("config_hash")}
            if c["action"]["name"] == "delete":
                data = {"deleted": True}
            results.append(
                {"id": c["id"], "status": "success", "code": 0, "message": "ok", "data": data}
            )
        outcomes = self.report(results)
        assert all(o["outcome"] in ("recorded", "duplicate") for o in outcomes), outcomes
        return commands


@contextmanager
def fleet(store_url: str, tmp: Path, servers: int = 1) -> Iterator[tuple[Indexer, list[Server]]]:
    """An indexer and `servers` server nodes, stopped (logs kept in tmp) at the end."""
    idx = Indexer(store_url, tmp / "indexer").start()
    nodes: list[Server] = []
    try:
        for i in range(servers):
            nodes.append(Server(idx, tmp / f"server{i}").start())
        yield idx, nodes
    finally:
        for n in nodes:
            n.stop()
        idx.stop()
        for r in [idx, *nodes]:
            print(f"----- {r.name} log (tail) -----\n{r.log()[-4000:]}")


def task_final(api: httpx.Client, task_id: int, timeout: float = 30.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        t = api.get(f"/tasks/{task_id}").json()["data"]
        return t if t.get("completed_at") else None

    return dict(wait_until(check, timeout=timeout, what=f"task {task_id} final"))


def file_task(api: httpx.Client, type_: str, params: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/tasks", json={"type": type_, "params": params})
    assert r.status_code == 202, r.text
    return dict(r.json()["data"])


def settle(seconds: float = 0.2) -> None:
    time.sleep(seconds)
