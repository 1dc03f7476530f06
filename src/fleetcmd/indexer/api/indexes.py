"""The indexes that servers and the content manager read and write: agents, groups,
configurations, content documents (sca, cve, active-response, ruleset, ...) and server nodes."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from fleetcmd.errors import Forbidden, InvalidParams, TooDeep
from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.model.nesting import Unreadable
from fleetcmd.model.params import NAME_RE

router = APIRouter(tags=["indexes"])
Auth = Annotated[IndexerState, Depends(authorized)]

# `packages` holds agents' package inventories; `agent-packages` the installable agent builds,
# whose bytes are blobs.
CONTENT_INDEXES = (
    "agent-packages",
    "sca",
    "cve",
    "active-response",
    "ruleset",
    "server-configuration",
    "rbac",
    "packages",
    "alerts",
    "vulnerabilities",
    "sca-results",
    "content-status",
    "enrollment-keys",
)
RBAC = "rbac"
FIRST_ADMIN = "users/admin"
RBAC_WRITES = (
    "the rbac index changes only through rbac-change tasks filed with a user proof "
    "(the Management API's /security routes); the node credential may only create "
    "the first 'users/admin'"
)
# The audit trail is not a document index: records are appended and read through /audit only.
ENROLLMENT_REQUEST = r"^[A-Za-z0-9_-]{16,128}$"
DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str = Field(min_length=1, max_length=128)
    groups: list[str] = Field(default_factory=list, max_length=128)
    version: str | None = Field(default=None, max_length=64)
    status: Literal["never_connected", "active", "disconnected"] = "never_connected"
    info: dict[str, Any] = Field(default_factory=dict)
    secret_hash: str | None = Field(default=None, max_length=512)
    # The enrollment request that created the agent (unique): a repeat finds it.
    enrollment_request: str | None = Field(default=None, pattern=ENROLLMENT_REQUEST)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("agent name must be letters, digits, '.', '_' or '-'")
        return v


class AgentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agents: list[AgentIn] = Field(max_length=200_000)


@router.post("/agents")
async def register_agents(body: AgentsIn, st: Auth) -> dict[str, Any]:
    """Insert or update agents (servers enroll agents through this)."""
    for a in body.agents:
        for g in a.groups:
            if not NAME_RE.fullmatch(g):
                raise InvalidParams(f"agent {a.id}: bad group name {g!r}")
    n = await run_in_threadpool(st.store.register_agents, [a.model_dump() for a in body.agents])
    return {"data": {"registered": n}}


class AgentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    status: Literal["active", "disconnected"] | None = None
    node: str | None = Field(default=None, max_length=128)
    last_seen: float | None = None
    version: str | None = Field(default=None, max_length=64)
    config_hash: str | None = Field(default=None, max_length=128)
    info: dict[str, Any] | None = None
    # Apply only while the agent is attached to this node (see Store.update_agents).
    if_node: str | None = Field(default=None, max_length=128)


class AgentUpdatesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    updates: list[AgentUpdate] = Field(max_length=50_000)


@router.post("/agents/updates")
async def update_agents(body: AgentUpdatesIn, st: Auth) -> dict[str, Any]:
    """Batched connection state from server nodes: status, node, last seen, version."""
    rows = [u.model_dump(exclude_none=True) for u in body.updates]
    n = await run_in_threadpool(st.store.update_agents, rows)
    return {"data": {"updated": n}}


@router.get("/agents")
async def list_agents(
    st: Auth,
    group: str | None = None,
    status: str | None = None,
    node: str | None = None,
    search: str | None = Query(default=None, max_length=128),
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    scope_groups: str | None = None,
    scope_ids: str | None = None,
) -> dict[str, Any]:
    """`scope_groups`/`scope_ids` (comma-separated): only agents in those groups or with
    those ids, for people whose roles are scoped."""

    def split(v: str | None) -> list[str] | None:
        return None if v is None else [x for x in v.split(",") if x]

    page = await run_in_threadpool(
        lambda: st.store.list_agents(
            group=group,
            status=status,
            node=node,
            search=search,
            cursor=cursor,
            limit=limit,
            scope_groups=split(scope_groups),
            scope_ids=split(scope_ids),
        )
    )
    return {"data": page.to_json()}


@router.get("/agents/summary")
async def agent_summary(st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(st.store.agent_summary)}


@router.get("/agents/removed")
async def removed_agents(
    st: Auth,
    since: Annotated[float, Query(ge=0)] = 0.0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> dict[str, Any]:
    """Agents removed since `since` (epoch seconds): servers revoke their tokens."""
    rows = await run_in_threadpool(st.store.removed_agents, since, limit)
    return {"data": {"items": [{"id": i, "removed_at": t} for i, t in rows]}}


@router.get("/enrollments/{request_id}")
async def agent_by_enrollment(
    request_id: Annotated[str, Path(pattern=ENROLLMENT_REQUEST)], st: Auth
) -> dict[str, Any]:
    """The agent an enrollment request created, with its secret hash: the Comms API answers
    a repeated request (its first answer was lost) with the same agent."""
    return {"data": await run_in_threadpool(st.store.agent_by_enrollment, request_id)}


@router.get("/agents/{agent_id}")
async def get_agent(agent_id: str, st: Auth) -> dict[str, Any]:
    agent = await run_in_threadpool(st.store.get_agent, agent_id)
    labels = (
        await run_in_threadpool(st.store.get_labels, agent_id) if agent.status != "removed" else {}
    )
    return {"data": {**agent.to_json(), "labels": labels}}


@router.get("/agents/{agent_id}/credentials")
async def agent_credentials(agent_id: str, st: Auth) -> dict[str, Any]:
    """The agent's secret hash and status, for the Comms API to authenticate it."""
    secret_hash, status = await run_in_threadpool(st.store.agent_secret_hash, agent_id)
    return {"data": {"id": agent_id, "secret_hash": secret_hash, "status": status}}


@router.get("/groups")
async def list_groups(st: Auth) -> dict[str, Any]:
    groups = await run_in_threadpool(st.store.list_groups)
    return {"data": {"items": [g.to_json() for g in groups]}}


@router.get("/groups/{name}")
async def get_group(name: str, st: Auth) -> dict[str, Any]:
    group = await run_in_threadpool(st.store.get_group, name)
    doc = group.to_json()
    doc["history"] = await run_in_threadpool(st.store.group_history, name)
    return {"data": doc}


@router.get("/configs/merged")
async def merged_config(st: Auth, groups: str = "") -> dict[str, Any]:
    """The merged configuration for an ordered, comma-separated group list, and its hash."""
    names = [g for g in groups.split(",") if g]
    config, h = await run_in_threadpool(st.store.merged_config, names)
    return {"data": {"groups": names, "config": _applicable(config), "config_hash": h}}


@router.get("/configs/{config_hash}")
async def get_config(config_hash: str, st: Auth) -> dict[str, Any]:
    config = await run_in_threadpool(st.store.get_config, config_hash)
    return {"data": {"hash": config_hash, "config": config}}


def _applicable(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration agents may apply: never the marker of one stored too deep (which a
    reader by hash is shown)."""
    if isinstance(config, Unreadable):
        raise TooDeep(Unreadable.why("configuration") + "; file a new group-configuration-change")
    return config


def _check_index(index: str, doc_id: str | None = None) -> None:
    if index not in CONTENT_INDEXES:
        raise InvalidParams(f"unknown index '{index}'", known=list(CONTENT_INDEXES))
    if doc_id is not None and (not DOC_ID.fullmatch(doc_id) or ".." in doc_id):
        raise InvalidParams(f"bad document id {doc_id!r}")


@router.get("/indexes/{index}")
async def list_documents(
    index: str,
    st: Auth,
    prefix: Annotated[str, Query(max_length=512)] = "",
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    """Every document under `prefix`, or with `limit`, `cursor` or `order` one page of them
    in id order (`order`) and the `next_cursor` of the next (null at the end)."""
    _check_index(index)
    if limit is None and cursor is None and order == "asc":
        docs = await run_in_threadpool(st.store.list_documents, index, prefix)
        return {"data": {"items": docs}}
    page = await run_in_threadpool(
        st.store.document_page, index, prefix, cursor, limit or 100, order == "desc"
    )
    items = {i["id"]: i["document"] for i in page.items}
    return {"data": {"items": items, "next_cursor": page.next_cursor}}


@router.get("/indexes/{index}/{doc_id:path}")
async def get_document(index: str, doc_id: str, st: Auth) -> dict[str, Any]:
    _check_index(index, doc_id)
    body = await run_in_threadpool(st.store.get_document, index, doc_id)
    return {"data": body}


@router.put("/indexes/{index}/{doc_id:path}")
async def put_document(index: str, doc_id: str, body: dict[str, Any], st: Auth) -> dict[str, Any]:
    """Any content document; in `rbac` only the first `users/admin` (a server's first start):
    users and roles change through `rbac-change` tasks carrying a user proof."""
    _check_index(index, doc_id)

    def write() -> int:
        with st.store.transaction() as tx:
            if index == RBAC and (doc_id != FIRST_ADMIN or tx.document(index, doc_id) is not None):
                raise Forbidden(RBAC_WRITES)
            return tx.put_document(index, doc_id, body)

    return {"data": {"index": index, "id": doc_id, "version": await run_in_threadpool(write)}}


@router.delete("/indexes/{index}/{doc_id:path}")
async def delete_document(index: str, doc_id: str, st: Auth) -> dict[str, Any]:
    _check_index(index, doc_id)
    if index == RBAC:
        raise Forbidden(RBAC_WRITES)

    def delete() -> bool:
        with st.store.transaction() as tx:
            return tx.delete_document(index, doc_id)

    return {"data": {"deleted": await run_in_threadpool(delete)}}


@router.put("/blobs/{digest}")
async def put_blob(digest: str, request: Request, st: Auth) -> dict[str, Any]:
    """Store a file addressed by its SHA-256; the digest in the path must match the bytes."""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidParams("blob id must be a lowercase hex SHA-256")
    content = await request.body()
    if hashlib.sha256(content).hexdigest() != digest:
        raise InvalidParams("content does not match its SHA-256")
    await run_in_threadpool(st.store.put_blob, content)
    return {"data": {"sha256": digest, "size": len(content)}}


@router.get("/blobs/{digest}")
async def get_blob(digest: str, st: Auth) -> Response:
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidParams("blob id must be a lowercase hex SHA-256")
    content = await run_in_threadpool(st.store.get_blob, digest)
    return Response(content, media_type="application/octet-stream")


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, max_length=512)
    info: dict[str, Any] = Field(default_factory=dict)


@router.post("/nodes/{node_id}/heartbeat")
async def heartbeat(node_id: str, body: HeartbeatIn, st: Auth) -> dict[str, Any]:
    if not NAME_RE.fullmatch(node_id):
        raise InvalidParams(f"bad node id {node_id!r}")
    await run_in_threadpool(st.store.heartbeat, node_id, body.url, body.info)
    return {"data": {"node": node_id}}


@router.get("/nodes")
async def list_nodes(st: Auth) -> dict[str, Any]:
    return {"data": {"items": await run_in_threadpool(st.store.list_nodes)}}
