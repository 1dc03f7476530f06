"""Command results as they come back from servers (seed: "10- Command result").

Besides the stream's status, some results update the agents index: an agent that applied a
configuration reports the hash it now runs; one that upgraded reports its new version."""

from __future__ import annotations

from typing import Any

from fleetcmd.model.catalog import AGENT_FIELDS
from fleetcmd.store import Result
from fleetcmd.store.base import SqlStore

# Which fields: the catalog's actions say (model/actions.py `reports`).


def record_results(store: SqlStore, results: list[Result]) -> list[dict[str, Any]]:
    outcome = store.complete(results)
    recorded = {o["id"] for o in outcome if o["outcome"] == "recorded"}
    reporting = {
        r.id: r
        for r in results
        if r.id in recorded
        and r.status == "success"
        and isinstance(r.data, dict)
        and any(isinstance(r.data.get(k), str) for k in AGENT_FIELDS)
    }
    if reporting:
        targets = store.targets(sorted(reporting))
        updates = []
        for cid, r in reporting.items():
            kind, agent_id = targets.get(cid, ("", ""))
            if kind == "agent":
                updates.append(
                    {
                        "id": agent_id,
                        **{k: r.data[k] for k in AGENT_FIELDS if isinstance(r.data.get(k), str)},
                    }
                )
        store.update_agents(updates)
    return outcome
