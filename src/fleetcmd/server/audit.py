"""The audit trail as seen from a server node: one primitive, `record`, that every people-
facing action calls once its outcome is known (login, task, cancel, user and role changes,
configuration changes, key rotation).

Records go to the indexer's append-only `POST /audit`; nothing on any API updates or deletes
them. A record that cannot be written (the indexer is down) is logged at ERROR with its
content, and the action itself is not undone: refusing every login while the indexer is
unreachable would lock operators out exactly when they need to look."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from fleetcmd.server.indexer_client import IndexerError

if TYPE_CHECKING:
    from fleetcmd.server.state import ServerState

log = logging.getLogger("fleetcmd.server.audit")

SUCCESS = "success"
FAILURE = "failure"
DENIED = "denied"
THROTTLED = "throttled"


def client_address(conn: HTTPConnection | None) -> str | None:
    """The peer address of a request (the proxy's, if there is one in front)."""
    if conn is None or conn.client is None:
        return None
    return conn.client.host


async def record(
    st: ServerState,
    action: str,
    *,
    actor: str,
    outcome: str = SUCCESS,
    request: HTTPConnection | None = None,
    address: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit record: `actor` did `action` on `target`, from `address` (or the
    request's peer), through this node, and it ended `outcome`.

    `action` is `<noun>.<verb>` (`user.login`, `task.create`, `role.update`,
    `enrollment-key.rotate`); `outcome` is success, failure, denied or throttled."""
    doc = {
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "address": address or client_address(request),
        "target": target,
        "node": st.options.node_id,
        "at": time.time(),
        "details": details or {},
    }
    try:
        await st.indexer.post("/audit", {"records": [doc]}, retries=2)
    except IndexerError as exc:
        log.error("audit record not written (%s): %s", exc, doc)
