"""Changes to the `rbac` index carried by an `rbac-change` task (row 15), applied in the
task's own transaction: the users and roles change exactly when the task that tells every
server node to reload them is written, or neither happens."""

from __future__ import annotations

from typing import Any

from fleetcmd.errors import Conflict, InvalidParams, NotFound
from fleetcmd.model import params as p
from fleetcmd.store.base import SqlTx

INDEX = "rbac"
BUILTIN_ROLES = frozenset({"administrator", "operator", "readonly", "approver"})


def apply_changes(tx: SqlTx, changes: list[p.RbacDocChange]) -> None:
    for change in changes:
        doc_id = f"{change.kind}s/{change.name}"
        current = tx.document(INDEX, doc_id)
        if change.kind == "role" and change.name in BUILTIN_ROLES:
            raise Conflict(f"role '{change.name}' is built in and cannot be changed")
        if change.op == "create" and current is not None:
            raise Conflict(f"{change.kind} '{change.name}' already exists")
        if change.op != "create" and current is None:
            raise NotFound(f"{change.kind} '{change.name}' not found")
        if change.op == "delete":
            _check_unused(tx, change.name)
            tx.delete_document(INDEX, doc_id)
            continue
        doc: dict[str, Any] = dict(current or {})
        if change.op == "create":
            doc = {"created_at": tx.now, "generation": 0}
            if change.kind == "user":
                doc.update({"roles": [], "disabled": False})
            else:
                doc.update({"policies": [], "description": ""})
        doc.update(change.set)
        if change.kind == "user":
            _check_roles(tx, doc.get("roles", []))
            if change.revoke_tokens:
                doc["generation"] = int(doc.get("generation", 0)) + 1
        doc["updated_at"] = tx.now
        tx.put_document(INDEX, doc_id, doc)


def _check_roles(tx: SqlTx, roles: Any) -> None:
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidParams("'roles' must be a list of role names")
    defined = BUILTIN_ROLES | {k.removeprefix("roles/") for k in tx.documents(INDEX, "roles/")}
    unknown = sorted(set(roles) - defined)
    if unknown:
        raise InvalidParams(f"unknown role(s): {', '.join(unknown)}", known=sorted(defined))


def _check_unused(tx: SqlTx, role: str) -> None:
    users = [
        k.removeprefix("users/")
        for k, body in tx.documents(INDEX, "users/").items()
        if isinstance(body, dict) and role in body.get("roles", [])
    ]
    if users:
        raise Conflict(
            f"role '{role}' is still assigned to: {', '.join(sorted(users))}", users=sorted(users)
        )
