"""A long-poll its client has left must not take the agent's commands (both stores).

Behind a load balancer that cuts a connection (HAProxy killing the sessions of a node it
marks down, after it has forwarded the request elsewhere) the server keeps waiting on a poll
nobody reads; the agent's next poll is a second waiter. Before, a command that landed went to
the first waiter, into the closed socket, and reached the agent only when offered again 15 s
later. Now the newest poll of an agent wins and the older one yields."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from server.harness import FakeAgent, file_task, fleet, task_final
from support import store_url_for


def abandoned_poll(agent: FakeAgent, wait: int) -> None:
    """Send a long-poll and leave it unread with the socket open (a proxy that has cut its
    client side keeps its server side the same way until the answer comes)."""
    url = urlsplit(agent.comms)
    s = socket.create_connection((url.hostname, url.port))
    token = agent.http.headers["Authorization"]
    s.sendall(
        f"GET /agents/commands?wait={wait} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: {token}\r\n\r\n".encode()
    )
    agent.abandoned = s  # type: ignore[attr-defined]  # kept open, never read


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_newest_poll_of_an_agent_gets_its_commands(kind: str, tmp_path: Path) -> None:
    with store_url_for(kind, tmp_path) as url, fleet(url, tmp_path) as (_, [srv]):
        api = srv.admin()
        task_final(
            api,
            file_task(api, "group-configuration-change", {"group": "lp", "configuration": {}})[
                "id"
            ],
        )
        agent = FakeAgent(srv.comms, "lp-1", ["lp"])
        agent.poll(wait=0.5)
        abandoned_poll(agent, 30)
        time.sleep(0.5)  # the server is waiting on it
        got: dict[str, Any] = {}

        def live_poll() -> None:
            started = time.monotonic()
            got["commands"] = agent.poll(wait=10)
            got["after"] = time.monotonic() - started

        t = threading.Thread(target=live_poll)
        t.start()
        time.sleep(0.5)
        task = file_task(
            api, "group-configuration-change", {"group": "lp", "configuration": {"v": 1}}
        )
        t.join(30)
        # Before the fix the live poll ran out its 10 s empty-handed: the command had gone
        # to the abandoned one, and was offered again only 15 s later.
        assert [c["task_id"] for c in got["commands"]] == [task["id"]], got
        agent.ack([c["id"] for c in got["commands"]])
        agent.report(
            [{"id": c["id"], "status": "success", "message": "ok"} for c in got["commands"]]
        )
        assert task_final(api, task["id"])["status"] == "success"
        agent.abandoned.close()  # type: ignore[attr-defined]
