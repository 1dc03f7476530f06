"""What a server node does with server-bound commands (catalog rows 4, 9, 12, 13, 15).

One function per action, looked up by `action.name`, given the command's arguments parsed into
its action's model (model/actions.py); each returns a real outcome, and a failure says why (the
content that did not parse, the package that did not verify)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fleetcmd.errors import FleetError
from fleetcmd.model import actions as a
from fleetcmd.server.engine import RulesetInvalid
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.state import ServerState

log = logging.getLogger("fleetcmd.server.handlers")


@dataclass
class Outcome:
    status: str  # success | failure
    message: str = ""
    data: Any = None
    code: int = 0


Handler = Callable[[ServerState, Any], Awaitable[Outcome]]


async def server_config(st: ServerState, args: a.ServerConfig) -> Outcome:
    """Apply the stored server configuration plus this command's settings, live."""
    settings: dict[str, Any] = {}
    try:
        stored = await st.indexer.get("/indexes/server-configuration/settings")
        if isinstance(stored, dict):
            settings.update(stored)
    except IndexerError as exc:
        if exc.status != 404:
            raise
    settings.update(args.settings)
    changed = st.config.apply(settings)
    return Outcome(
        "success",
        f"{len(changed)} setting(s) changed",
        {"node": st.options.node_id, "changed": changed, "config_version": st.config.version},
    )


async def rbac_refresh(st: ServerState, args: a.RbacRefresh) -> Outcome:
    counts = await st.rbac.refresh()
    return Outcome("success", "RBAC cache reloaded", {"node": st.options.node_id, **counts})


async def ruleset_reload(st: ServerState, args: a.RulesetReload) -> Outcome:
    """Row 12: the engine reloads its rules from the `ruleset` index, without a restart. A
    ruleset that does not parse is refused with the reason; the rules in force stay."""
    asked = args.version
    try:
        loaded = await st.engine.load_rules()
    except RulesetInvalid as exc:
        return Outcome(
            "failure",
            f"ruleset refused, rules in force kept: {exc}",
            {
                "node": st.options.node_id,
                "asked": asked,
                "version": st.engine.rules.version,
                "rules": len(st.engine.rules),
            },
            422,
        )
    note = "" if asked in (None, loaded["version"]) else f" (the task asked for {asked})"
    return Outcome(
        "success",
        f"ruleset {loaded['version']} loaded: {loaded['rules']} rule(s)" + note,
        {"node": st.options.node_id, "asked": asked, **loaded},
    )


async def cve_reload(st: ServerState, args: a.CveReload) -> Outcome:
    """Row 9: the engine reloads its CVE data and matches every stored inventory again."""
    result = await st.engine.reload_cves(args.version)
    return Outcome(
        "success",
        f"CVE data {result['version']}: {result['records']} record(s), "
        f"{result['agents_rematched']} agent(s) re-matched, {result['findings']} "
        "finding(s)",
        {"node": st.options.node_id, **result},
    )


async def fetch_package(st: ServerState, args: a.FetchPackage) -> Outcome:
    """Row 4: fetch the package record and bytes from the indexer, verify, store, serve."""
    ident = f"{args.package}-{args.version}"
    try:
        meta = await st.packages.fetch(ident, args.sha256)
    except FleetError as exc:
        return Outcome(
            "failure", exc.message, {"node": st.options.node_id, "package": ident}, exc.http_status
        )
    return Outcome(
        "success",
        f"package {meta.id} stored and served",
        {"node": st.options.node_id, **meta.to_json()},
    )


# Action name (the catalog's, model/actions.py) -> its arguments' model and the handler.
HANDLERS: dict[str, tuple[type[a.ActionArgs], Handler]] = {
    model.action: (model, handler)
    for model, handler in (
        (a.ServerConfig, server_config),
        (a.RbacRefresh, rbac_refresh),
        (a.FetchPackage, fetch_package),
        (a.CveReload, cve_reload),
        (a.RulesetReload, ruleset_reload),
    )
}


async def handle(st: ServerState, command: dict[str, Any]) -> Outcome:
    name = str(command.get("action", {}).get("name", ""))
    known = HANDLERS.get(name)
    if known is None:
        return Outcome("failure", f"unknown server action '{name}'", None, 400)
    model, handler = known
    try:
        args = model.parse(command.get("action", {}).get("args") or {})
    except a.BadArgs as exc:
        return Outcome("failure", f"{name}: {exc}", None, 400)
    try:
        return await handler(st, args)
    except Exception as exc:
        log.exception(
            "command %s (task %s) %s failed", command.get("id"), command.get("task_id"), name
        )
        return Outcome("failure", f"{name} failed: {exc}", None, 500)
