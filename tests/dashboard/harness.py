"""A real fleet for the dashboard tests (indexer, server, `fleetcmd agent`s, httpx-played
agents) and Debian's Chromium driven by Playwright, with no browser download."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.agent.cli import status_of
from server.harness import ENROLLMENT_KEY, FakeAgent, Server, file_task, login, task_final
from support import Indexer, Role, store_url_for, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
READER, READER_PASSWORD = "reader", "pw-reader-dashboard"


def need_browser() -> None:
    """Skip without Chromium or Playwright locally; in CI their absence is a failure."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        message = "dashboard browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class DashFleet:
    """What the tests need to know about the running fleet."""

    indexer: Indexer
    server: Server
    admin_password: str
    api: httpx.Client
    agents: dict[str, str] = field(default_factory=dict)  # name -> id of real agents
    roles: list[Role] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.api

    def fake_agent(self, name: str) -> FakeAgent:
        return FakeAgent(self.server.comms, name)

    def register(self, agents: list[dict[str, Any]]) -> None:
        """Agents straight into the indexer (never connected), as enrollment would."""
        with self.indexer.client() as idx:
            for i in range(0, len(agents), 5_000):
                r = idx.post("/agents", json={"agents": agents[i : i + 5_000]}, timeout=300)
                assert r.status_code == 200, r.text


def dashboard_session(url: str, user: str, password: str) -> httpx.Client:
    """An httpx client logged in to the dashboard (its login form, CSRF token included)."""
    client = httpx.Client(base_url=url, timeout=60)
    form = client.get("/app/login").text
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form).group(1)  # type: ignore[union-attr]
    r = client.post(
        "/app/login",
        data={"csrf_token": csrf, "username": user, "password": password, "next": "/app/"},
    )
    assert r.status_code == 303, r.text
    return client


@contextmanager
def dash_fleet(tmp: Path, real_agents: int = 2) -> Iterator[DashFleet]:
    with store_url_for("sqlite", tmp) as url:
        idx = Indexer(url, tmp / "indexer").start()
        srv: Server | None = None
        roles: list[Role] = [idx]
        try:
            srv = Server(idx, tmp / "server").start()
            roles.append(srv)
            password = (srv.data_dir / "admin.password").read_text().strip()
            api = login(srv.api, "admin", password)
            for group, conf in (
                ("web", {"log_level": "info", "sca": {"enabled": True}}),
                ("linux", {"inventory": {"interval": 3600}}),
            ):
                task_final(
                    api,
                    file_task(
                        api, "group-configuration-change", {"group": group, "configuration": conf}
                    )["id"],
                )
            fleet = DashFleet(idx, srv, password, api, roles=roles)
            for i in range(real_agents):
                name = f"edge-{i + 1}"
                state = tmp / name
                roles.append(
                    Role(
                        name,
                        [
                            "agent",
                            "--server",
                            srv.comms,
                            "--enrollment-key",
                            ENROLLMENT_KEY,
                            "--name",
                            name,
                            "--state-dir",
                            str(state),
                            "--log-level",
                            "warning",
                        ],
                        tmp,
                    ).start()
                )
                fleet.agents[name] = wait_until(
                    lambda s=state: s.is_dir() and status_of(s).get("id"),
                    30,
                    what=f"{name} enrolled",
                )
            wait_until(
                lambda: all(
                    api.get(f"/agents/{a}").json()["data"]["status"] == "active"
                    for a in fleet.agents.values()
                ),
                30,
                what="real agents active",
            )
            api.post(
                "/security/users",
                json={"name": READER, "password": READER_PASSWORD, "roles": ["readonly"]},
            ).raise_for_status()
            task_final(api, file_task(api, "rbac-change", {"reason": "dashboard reader"})["id"])
            yield fleet
        finally:
            for r in reversed(roles):
                r.kill()
            for r in roles:
                print(f"----- {r.name} log (tail) -----\n{r.log()[-2500:]}")


def log_in(browser: Any, fleet: DashFleet, user: str, password: str) -> Any:
    context = browser.new_context(viewport={"width": 1360, "height": 860}, base_url=fleet.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors
    page.goto("/app/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/app/")
    return page
