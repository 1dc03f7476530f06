"""What a command looks like when it leaves the stream for a server (R1, R6).

The stream stores one row per agent with a small reference (group list, version); the
configuration itself is stored once per version, addressed by its hash. It is attached here,
to the command as delivered, when it fits under the size limit; otherwise the command carries
the reference and the agent fetches the configuration from the Comms API (R3). An SCA
content update (row 7) carries the policy document `sca/content/<id>` the same way, or only
its id and version, and the agent fetches it (`GET /agents/sca/{policy_id}`).

Every agent-bound command is then signed (`indexer/signing.py`) over what the agent receives,
attachments included: a server relays commands but cannot alter or invent them."""

from __future__ import annotations

from typing import Any

from fleetcmd.errors import NotFound
from fleetcmd.indexer.signing import CommandSigner
from fleetcmd.model.actions import ACTIONS
from fleetcmd.model.nesting import Unreadable
from fleetcmd.model.records import Command, dumps
from fleetcmd.store import Result
from fleetcmd.store.base import SqlStore

# What each action has attached on its way out (model/actions.py `attaches`).
ATTACHES = {name: a.attaches for name, a in ACTIONS.items() if a.attaches}


def outgoing(
    store: SqlStore, commands: list[Command], attach_limit: int, signer: CommandSigner | None = None
) -> tuple[list[dict[str, Any]], list[Result]]:
    """The commands as delivered, and failure results for those that cannot be: their
    arguments or attachments were stored too deep to read back (model/nesting.py), and
    handing them out anyway would deliver the marker that stands in for them."""
    out = []
    refused: list[Result] = []
    policies: dict[str, Any] = {}
    # A batch is mostly one fan-out: look each group set up once, not once per command.
    configs: dict[tuple[str, ...], tuple[dict[str, Any], str]] = {}
    for cmd in commands:
        if isinstance(cmd.action_args, Unreadable):
            refused.append(_undeliverable(cmd, "its arguments"))
            continue
        doc = cmd.to_json()
        attaches = ATTACHES.get(cmd.action_name)
        if attaches == "config":
            groups = list(cmd.action_args.get("groups", []))
            key = tuple(groups)
            if key not in configs:
                configs[key] = store.merged_config(groups)
            merged, h = configs[key]
            if isinstance(merged, Unreadable):
                refused.append(_undeliverable(cmd, f"the configuration of {groups}"))
                continue
            args = doc["action"]["args"]
            args["config_hash"] = h
            if len(dumps(merged)) <= attach_limit:
                args["config"] = merged
            else:
                args["config_ref"] = {"groups": groups, "hash": h}
        elif attaches == "sca-policy":
            args = doc["action"]["args"]
            policy_id = str(args.get("policy_id", ""))
            if policy_id not in policies:
                try:
                    policy = store.get_document("sca", f"content/{policy_id}")
                except NotFound:  # the agent asks the Comms API and reports what it got
                    policy = None
                fits = (
                    policy is not None
                    and not isinstance(policy, Unreadable)
                    and len(dumps(policy)) <= attach_limit
                )
                policies[policy_id] = policy if fits else None
            if policies[policy_id] is not None:
                args["policy"] = policies[policy_id]
        if signer is not None and cmd.target_type == "agent":
            signer.sign(doc, cmd.expires_at)
        out.append(doc)
    return out, refused


def _undeliverable(cmd: Command, what: str) -> Result:
    return Result(
        cmd.id,
        "failure",
        1,
        f"not delivered: {Unreadable.why(what)}",
    )
