"""Nodes: the processes of the control plane and their heartbeats."""

from __future__ import annotations

from typing import Any

from fleetcmd.model.records import dumps, loads
from fleetcmd.store.core import StoreCore, TxCore


class NodesTx(TxCore):
    """The nodes alive now, as a transaction sees them."""

    def active_nodes(self, max_age: float) -> list[str]:
        return [
            r[0]
            for r in self.all(
                "SELECT id FROM nodes WHERE heartbeat_at >= :t ORDER BY id",
                {"t": self.now - max_age},
            )
        ]


class NodesStore(StoreCore):
    """Heartbeats and the list of nodes."""

    def heartbeat(self, node_id: str, url: str | None, info: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.ex(
                "INSERT INTO nodes (id, url, info, heartbeat_at, started_at) VALUES "
                "(:id, :url, :info, :now, :now) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                "info = excluded.info, heartbeat_at = excluded.heartbeat_at",
                {"id": node_id, "url": url, "info": dumps(info), "now": tx.now},
            )

    def list_nodes(self) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all("SELECT id, url, info, heartbeat_at, started_at FROM nodes ORDER BY id")
        return [
            {"id": r[0], "url": r[1], "info": loads(r[2]), "heartbeat_at": r[3], "started_at": r[4]}
            for r in rows
        ]
