"""What the agent does for each action it receives: one function per action name.

A handler gets the command's arguments, parsed into its action's model (model/actions.py), and
returns the result `data`; arguments of the wrong shape, or raising `Refused` (or a
`ConfigError`), make the command a `failure` with that message (and the data it carries).
Handlers never claim success for work they did not do: an upgrade's result, for instance, is
only written by the version that runs after the restart (see agent/upgrade.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetcmd.agent import upgrade as upgrades
from fleetcmd.agent.comms import CommsError
from fleetcmd.agent.journal import Result
from fleetcmd.agent.modules import ConfigError, Modules
from fleetcmd.agent.modules.active_response import ActiveResponse
from fleetcmd.agent.modules.inventory import Inventory
from fleetcmd.agent.modules.sca import Sca
from fleetcmd.agent.reporting import Reporter
from fleetcmd.agent.state import AgentState, InvalidName, StateDir, check_name
from fleetcmd.model import actions as a
from fleetcmd.model.config import config_hash

log = logging.getLogger("fleetcmd.agent.handlers")

# Result codes: 0 success; the others tell an operator which kind of failure it was.
FAILED = 1
UNSUPPORTED = 2
TIMED_OUT = 3
INTERRUPTED = 4

DEFAULT_TIMEOUT = 60.0
# Kept back from a command's timeout so a handler can still write and report its result.
MARGIN = 2.0


class Refused(Exception):
    """The agent will not (or cannot) do what the command asks; becomes a failure result."""

    def __init__(
        self, message: str, data: dict[str, Any] | None = None, code: int = FAILED
    ) -> None:
        super().__init__(message)
        self.data = data or {}
        self.code = code


@dataclass
class Context:
    """Everything a handler may touch: the applied state and the modules that act on it."""

    state_dir: StateDir
    applied: AgentState
    modules: Modules
    sca: Sca
    active_response: ActiveResponse
    # GET /agents/configuration?groups=…, for commands carrying `config_ref` instead of `config`.
    fetch_config: Callable[[list[str]], dict[str, Any]]
    inventory: Inventory | None = None
    # The Comms API client, for downloads (upgrade packages, SCA content not attached).
    comms: Any = None
    trust_keys: list[str] = field(default_factory=list)
    upgrade_deadline: float = upgrades.DEFAULT_DEADLINE
    # Set by `delete`: the runner sends the result, forgets the credentials and exits.
    removing: bool = False
    # Set by `upgrade`: the runner switches to this installed version and restarts into it.
    restart: upgrades.PendingUpgrade | None = None
    # The command being executed and when its timeout leaves no time to report.
    command_id: Any = None
    deadline: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Heartbeats of a long command (runner: POST /agents/commands/progress, body -> answer):
    # sent every `heartbeat_interval` seconds once it has run `heartbeat_after` (short ones
    # send none), with what the handler reported (`report`, `output`).
    heartbeat: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    heartbeat_after: float = 2.0
    heartbeat_interval: float = 10.0
    reporter: Reporter | None = None

    def save(self) -> None:
        self.state_dir.save_state(self.applied)

    def report(self, percent: float | None = None, message: str | None = None) -> None:
        """A handler says how far it got (sent with the command's next heartbeat)."""
        if self.reporter is not None:
            self.reporter.progress(percent, message)

    def output(self, text: str) -> None:
        """A handler's incremental output (chunked, bounded, sent with the heartbeats)."""
        if self.reporter is not None:
            self.reporter.write(text)


Handler = Callable[[Context, Any], dict[str, Any]]


# -- configuration (R1, R2, R5, R6) ---------------------------------------------------------------
def _groups(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
        raise Refused("'groups' must be the full list of group names")
    return list(value)


def resolve_config(
    ctx: Context, groups: list[str], args: a.ConfigAttached
) -> tuple[dict[str, Any], str]:
    """The merged configuration a command refers to, checked against the hash it carries."""
    expected = args.config_hash
    if not expected:
        raise Refused("command carries no 'config_hash'; cannot verify the configuration")
    config: Any = args.config
    if config is None:
        ref = args.config_ref
        if ref is None:
            raise Refused("command carries neither 'config' nor 'config_ref'")
        ref_groups = _groups(ref.get("groups", groups))
        # R1: the configuration was too large to travel attached; ask the server for it.
        log.info("configuration not attached: fetching it for groups %s", ref_groups)
        fetched = ctx.fetch_config(ref_groups)
        config = fetched.get("config")
    if not isinstance(config, dict):
        raise Refused("the configuration must be an object")
    got = config_hash(config)
    if got != expected:
        raise Refused(
            f"configuration hash mismatch: computed {got}, command says {expected}; nothing applied"
        )
    return config, got


def apply_config(ctx: Context, groups: list[str], config: dict[str, Any], digest: str) -> list[str]:
    """Hot-apply (R2): modules reconfigure in place, then the applied state is saved."""
    changes = ctx.modules.apply(config)
    ctx.applied.groups = groups
    ctx.applied.config = config
    ctx.applied.config_hash = digest
    ctx.save()
    return changes


def set_groups(ctx: Context, args: a.SetGroups) -> dict[str, Any]:
    groups = _groups(args.groups)
    config, digest = resolve_config(ctx, groups, args)
    changes = apply_config(ctx, groups, config, digest)
    return {"groups": groups, "config_hash": digest, "changes": changes}


def apply_group_config(ctx: Context, args: a.ApplyGroupConfig) -> dict[str, Any]:
    groups = _groups(ctx.applied.groups if args.groups is None else args.groups)
    group = args.group
    if group is not None and group not in groups:
        raise Refused(f"group '{group}' is not one of this agent's groups {groups}")
    config, digest = resolve_config(ctx, groups, args)
    changes = apply_config(ctx, groups, config, digest)
    return {"groups": groups, "config_hash": digest, "changes": changes}


# -- identity --------------------------------------------------------------------------------------
def rename(ctx: Context, args: a.Rename) -> dict[str, Any]:
    name = args.name
    if not name.strip():
        raise Refused("'name' must be a non-empty string")
    ctx.applied.name = name
    ctx.save()
    return {"name": name}


def delete(ctx: Context, args: a.Delete) -> dict[str, Any]:
    """Answer first; the runner then sends the answer, forgets the credentials and exits."""
    ctx.removing = True
    return {"deleted": True}


# -- SCA (rows 6 and 7) ----------------------------------------------------------------------------
def sca_policy(ctx: Context, args: a.ScaPolicy) -> dict[str, Any]:
    """Row 6: store (then evaluate) or remove a group's policy."""
    policy_id = check_name(args.policy_id)
    if args.delete:
        existed = ctx.sca.remove(policy_id)
        return {"policy_id": policy_id, "deleted": True, "existed": existed}
    policy = args.policy
    if policy is None:
        raise Refused("'policy' must be an object (or 'delete': true)")
    summary = ctx.sca.store(policy_id, policy, ctx.deadline)
    return {"policy_id": policy_id, "stored": True, "summary": summary}


def sca_content(ctx: Context, args: a.ScaContent) -> dict[str, Any]:
    """Row 7: the content manager published a new version of a policy this agent uses.
    The content travels attached as `policy` (like configurations, R6); an agent given only
    the id and version fetches it (`GET /agents/sca/{policy_id}`)."""
    policy_id = check_name(args.policy_id)
    version = args.version
    if not version:
        raise Refused("'version' must be a non-empty string")
    policy: Any = args.policy
    if policy is None:
        policy = _fetch_policy(ctx, policy_id, version)
    if not isinstance(policy, dict):
        raise Refused("'policy' must be an object")
    if str(policy.get("version", version)) != version:
        raise Refused(
            f"policy {policy_id} content is version {policy.get('version')!r}, the "
            f"command says {version!r}; nothing replaced"
        )
    previous = ctx.sca.policy(policy_id)
    summary = ctx.sca.store(policy_id, policy, ctx.deadline)
    return {
        "policy_id": policy_id,
        "version": version,
        "stored": True,
        "previous_version": previous.get("version") if isinstance(previous, dict) else None,
        "summary": summary,
    }


def _fetch_policy(ctx: Context, policy_id: str, version: str) -> Any:
    if ctx.comms is None:
        raise Refused("the policy content is not attached and this agent cannot fetch it")
    try:
        data = ctx.comms.request("GET", f"/agents/sca/{policy_id}", timeout=30.0)
    except CommsError as exc:
        raise Refused(
            f"the command carries no policy content and the server did not serve "
            f"{policy_id} {version} ({exc}); nothing replaced"
        ) from None
    return data.get("policy", data) if isinstance(data, dict) else data


# -- inventory (row 8) -----------------------------------------------------------------------------
def vulnerability_rescan(ctx: Context, args: a.VulnerabilityRescan) -> dict[str, Any]:
    """Row 8: re-send the package inventory now, so the engine matches it again."""
    if ctx.inventory is None:
        raise Refused("this agent has no inventory module")
    try:
        sent = ctx.inventory.send_now(time.monotonic())
    except ConfigError:
        raise
    except Exception as exc:
        raise Refused(f"inventory not sent: {exc}") from None
    return {"sent": sent, "total": sum(sent.values())}


# -- active response (rows 10 and 11) --------------------------------------------------------------
def ar_config(ctx: Context, args: a.ArConfig) -> dict[str, Any]:
    name = args.name
    if not args.enabled:
        existed = ctx.active_response.remove(name)
        return {"name": name, "removed": True, "existed": existed}
    definition = args.definition
    if definition is None:
        raise Refused("'definition' must be an object when the response is enabled")
    ctx.active_response.store(name, definition)
    return {"name": name, "stored": True}


def ar_execute(ctx: Context, args: a.ArExecute) -> dict[str, Any]:
    """Row 11: run an allow-listed response; a non-zero exit or a timeout is a failure that
    still reports the exit code and output."""
    ok, data, message = ctx.active_response.execute(
        args.name, args.arguments, ctx.deadline, ctx.output
    )
    if not ok:
        raise Refused(message, data, TIMED_OUT if data.get("timed_out") else FAILED)
    return data


# -- upgrade (row 3) -------------------------------------------------------------------------------
def upgrade(ctx: Context, args: a.Upgrade) -> dict[str, Any]:
    """Download, verify and install; the switch and the result happen in the runner and in
    the version that runs next (success only once it has checked in)."""
    if ctx.comms is None:
        raise Refused("this agent cannot download packages")
    try:
        prepared = upgrades.prepare(
            ctx.state_dir,
            ctx.comms,
            ctx.command_id,
            args,
            ctx.trust_keys,
            ctx.upgrade_deadline,
            lambda percent, phase: ctx.report(percent, phase),
        )
    except upgrades.UpgradeRefused as exc:
        raise Refused(f"upgrade refused, nothing changed: {exc}") from None
    except CommsError as exc:
        raise Refused(
            f"upgrade refused, nothing changed: package download failed ({exc})"
        ) from None
    if isinstance(prepared, dict):
        return prepared
    ctx.restart = prepared
    return {"version": prepared.target.version, "restarting": True}


# Action name (the catalog's, model/actions.py) -> its arguments' model and the handler.
HANDLERS: dict[str, tuple[type[a.ActionArgs], Handler]] = {
    model.action: (model, handler)
    for model, handler in (
        (a.SetGroups, set_groups),
        (a.ApplyGroupConfig, apply_group_config),
        (a.Rename, rename),
        (a.Delete, delete),
        (a.ScaPolicy, sca_policy),
        (a.ScaContent, sca_content),
        (a.VulnerabilityRescan, vulnerability_rescan),
        (a.ArConfig, ar_config),
        (a.ArExecute, ar_execute),
        (a.Upgrade, upgrade),
    )
}


def _wait_reporting(
    ctx: Context, reporter: Reporter, worker: threading.Thread, timeout: float
) -> None:
    """Wait for the handler up to `timeout`; past `heartbeat_after`, send a heartbeat every
    `heartbeat_interval` from this thread while the handler runs in its own, and once more
    at its end if output is left unsent (a short command sends nothing)."""
    started = time.monotonic()
    end = started + timeout
    beat_at = started + ctx.heartbeat_after
    beats = 0
    while worker.is_alive():
        now = time.monotonic()
        if now >= end:
            return
        if ctx.heartbeat is None:
            worker.join(end - now)
            continue
        if now >= beat_at:
            beats += _beat(ctx, reporter)
            beat_at = time.monotonic() + ctx.heartbeat_interval
        worker.join(max(0.0, min(end, beat_at) - time.monotonic()))
    if beats and reporter.unsent():
        _beat(ctx, reporter)


def _beat(ctx: Context, reporter: Reporter) -> int:
    assert ctx.heartbeat is not None
    try:
        answer = ctx.heartbeat(reporter.beat(ctx.heartbeat_interval))
    except Exception as exc:  # a lost beat is not the command's failure; its chunks wait
        log.warning("heartbeat of command %s not sent: %s", reporter.command_id, exc)
        return 1
    taken = (answer.get("next") or {}).get(str(reporter.command_id))
    if taken is not None:
        reporter.taken(int(taken))
    return 1


def execute(ctx: Context, command: dict[str, Any]) -> Result:
    """Run one command's handler within the command's execution timeout."""
    cid = command["id"]
    action = command.get("action") or {}
    name = str(action.get("name", ""))
    args = action.get("args") or {}
    known = HANDLERS.get(name)
    if known is None:
        return Result.failure(cid, f"action {name} unknown to this agent version", UNSUPPORTED)
    model, handler = known
    try:
        typed = model.parse(args)
    except a.BadArgs as exc:
        return Result.failure(cid, f"action {name}: {exc}")
    timeout = command.get("timeout") or DEFAULT_TIMEOUT
    outcome: list[Result] = []
    deadline = time.monotonic() + max(float(timeout) - MARGIN, float(timeout) / 2)
    reporter = Reporter(cid)

    def run() -> None:
        try:
            with ctx.lock:  # handlers never overlap, even one outliving its timeout
                ctx.command_id, ctx.deadline, ctx.reporter = cid, deadline, reporter
                try:
                    data = handler(ctx, typed)
                finally:
                    ctx.command_id = ctx.deadline = ctx.reporter = None
            outcome.append(Result.success(cid, data))
        except Refused as exc:
            outcome.append(Result.failure(cid, f"{name}: {exc}", exc.code, exc.data))
        except (ConfigError, InvalidName) as exc:
            outcome.append(Result.failure(cid, f"{name}: {exc}"))
        except Exception as exc:
            log.exception("command %s (%s) failed", cid, name)
            outcome.append(Result.failure(cid, f"{name}: {type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=run, name=f"command-{cid}", daemon=True)
    worker.start()
    _wait_reporting(ctx, reporter, worker, float(timeout))
    if not outcome:
        return Result.failure(
            cid, f"{name}: did not finish within its {timeout:g}s timeout", TIMED_OUT
        )
    return outcome[0]
