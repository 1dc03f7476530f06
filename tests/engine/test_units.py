"""Package names a download may ask for, and the alert writer's bounds and retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetcmd.server.engine.alerts import AlertWriter
from fleetcmd.server.indexer_client import IndexerError, IndexerUnavailable
from fleetcmd.server.packages import BadPackageName, package_id


@pytest.mark.parametrize(
    ("requested", "ident"),
    [
        ("fleetcmd-0.1.0.tar.gz", "fleetcmd-0.1.0"),
        ("fleetcmd-0.1.0", "fleetcmd-0.1.0"),
        ("fleetcmd-1.0~rc1+b2.deb", "fleetcmd-1.0~rc1+b2"),
        ("fleetcmd_agent-2.0.whl", "fleetcmd_agent-2.0"),
    ],
)
def test_package_names(requested: str, ident: str) -> None:
    assert package_id(requested) == ident


@pytest.mark.parametrize(
    "requested", ["../node.token", "..", "a/../b", "/etc/passwd", ".hidden", "a..b", "a b", ""]
)
def test_package_names_that_leave_the_folder_are_refused(requested: str) -> None:
    with pytest.raises(BadPackageName):
        package_id(requested)


class FlakyIndexer:
    """Unavailable for the first `down` writes; refuses ids containing "bad"."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.docs: dict[str, Any] = {}

    async def put(self, path: str, body: Any) -> Any:
        if "bad" in path:
            raise IndexerError(422, {"error": "invalid_params", "message": "bad id"})
        if self.down > 0:
            self.down -= 1
            raise IndexerUnavailable(503, {"error": "indexer_unavailable"})
        self.docs[path] = body
        return {}


def test_alert_writer_retries_outages_drops_refusals_and_stays_bounded() -> None:
    async def run() -> None:
        indexer = FlakyIndexer(down=3)
        writer = AlertWriter(indexer, max_queue=5, batch=2, parallel=1)  # type: ignore[arg-type]
        writer.add([{"id": f"a/{i}"} for i in range(7)] + [{"id": "a/bad"}])
        assert len(writer.queue) == 5 and writer.dropped == 3  # the oldest went first
        while writer.queue:
            await writer.flush_once()
        assert sorted(indexer.docs) == [f"/indexes/alerts/a/{i}" for i in range(3, 7)]
        assert (writer.written, writer.failed) == (4, 1)

    asyncio.run(run())
