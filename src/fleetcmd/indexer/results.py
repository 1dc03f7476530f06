"""Command results as they come back from servers (seed: "10- Command result").

Besides the stream's status, some results update the agents index in the same transaction: an
agent that applied a configuration reports the hash it now runs; one that upgraded reports its
new version (which fields: the catalog's actions say, model/actions.py `reports`)."""

from __future__ import annotations

from typing import Any

from fleetcmd.model.catalog import AGENT_FIELDS
from fleetcmd.store import Result
from fleetcmd.store.base import SqlStore


def record_results(store: SqlStore, results: list[Result]) -> list[dict[str, Any]]:
    return store.complete(results, AGENT_FIELDS)
