from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcmd.agent.handlers import Context
from fleetcmd.agent.modules import Modules
from fleetcmd.agent.modules.active_response import ActiveResponse
from fleetcmd.agent.modules.inventory import Inventory
from fleetcmd.agent.modules.logs import Logs
from fleetcmd.agent.modules.sca import Sca
from fleetcmd.agent.state import AgentState, StateDir

from .fake_comms import FakeComms


class Sent:
    def __init__(self) -> None:
        self.inventories: list[list[dict[str, str]]] = []
        self.fetched: list[list[str]] = []
        self.configs: dict[str, dict] = {}
        self.events: list[dict] = []


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def ctx(tmp_path: Path, sent: Sent) -> Context:
    d = StateDir(tmp_path / "state").create()
    sca, ar = Sca(d, sent.events.extend), ActiveResponse(d)
    inv = Inventory(
        sent.inventories.append,
        collect=lambda: [{"name": "bash", "version": "5.2", "source": "dpkg"}],
    )

    def fetch(groups: list[str]) -> dict:
        sent.fetched.append(groups)
        return {"groups": groups, "config": sent.configs[",".join(groups)]}

    return Context(
        d,
        AgentState(name="a1"),
        Modules([sca, ar, inv, Logs("info")]),
        sca,
        ar,
        fetch,
        inventory=inv,
    )


@pytest.fixture
def fake() -> Iterator[FakeComms]:
    f = FakeComms().start()
    try:
        yield f
    finally:
        f.stop()
