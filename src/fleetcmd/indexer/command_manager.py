"""The command manager: claims indexer-bound commands and expands each in one transaction.

Seed steps "3- Pull command", "4- Change index", "5- Write child commands & update first
status command". Crash-safe: a claim is a lease; killed mid-expansion, the transaction rolls
back and the command is claimed again once its lease lapses.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from fleetcmd.errors import FleetError, LeaseLost
from fleetcmd.indexer import rollouts
from fleetcmd.indexer.parts import NOTHING, PARTS
from fleetcmd.model.catalog import CATALOG
from fleetcmd.model.nesting import Unreadable
from fleetcmd.model.records import Command
from fleetcmd.store import ClaimFilter
from fleetcmd.store.base import SqlStore

log = logging.getLogger("fleetcmd.command_manager")

MAX_ATTEMPTS = 5


@dataclass
class CommandManagerStats:
    expanded: int = 0
    failed: int = 0
    children: int = 0
    last_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class CommandManager:
    def __init__(
        self, store: SqlStore, owner: str | None = None, lease: float = 60.0, batch: int = 8
    ) -> None:
        self.store = store
        self.owner = owner or f"cm-{socket.gethostname()}-{os.getpid()}"
        self.lease = lease
        self.batch = batch
        self.stats = CommandManagerStats()

    def run_once(self) -> int:
        """Claim a batch of indexer commands and expand them; returns how many were handled."""
        claimed = self.store.claim(self.owner, ClaimFilter("indexer"), self.batch, self.lease)
        for cmd in claimed:
            self.expand(cmd)
        return len(claimed)

    def expand(self, cmd: Command) -> int:
        started = time.perf_counter()
        spec = CATALOG.get(cmd.action_name)
        handler = PARTS.get(cmd.action_name, NOTHING).expand
        try:
            if spec is None or handler is None:
                raise FleetError(f"no expansion for action '{cmd.action_name}'")
            if isinstance(cmd.action_args, Unreadable):
                raise FleetError(Unreadable.why("arguments"))
            params = spec.params.model_validate(cmd.action_args)
            with self.store.transaction() as tx:
                held = tx.lease_held(cmd.id, self.owner)
                rollouts.prepare_expansion(tx, held.task_id, spec.task_type, params)
                children, summary = handler(tx, held, spec, params)
                tx.finish_expansion(held, children, summary)
        except LeaseLost as exc:
            log.warning("task %s command %s: %s", cmd.task_id, cmd.id, exc)
            return 0
        except FleetError as exc:
            self._fail(cmd, exc.message)
            return 0
        except Exception as exc:
            # Unexpected: leave the command to be claimed again when its lease lapses, unless
            # it has failed too often to be worth another try.
            log.exception("task %s command %s: expansion crashed", cmd.task_id, cmd.id)
            self.stats.errors.append(f"{cmd.id}: {exc}")
            if cmd.attempts >= MAX_ATTEMPTS:
                self._fail(cmd, f"expansion failed {cmd.attempts} times: {exc}")
            return 0
        self.stats.expanded += 1
        self.stats.children += children
        self.stats.last_seconds = time.perf_counter() - started
        log.info(
            "task %s command %s: %s expanded into %d child commands in %.3fs",
            cmd.task_id,
            cmd.id,
            cmd.action_name,
            children,
            self.stats.last_seconds,
        )
        return children

    def _fail(self, cmd: Command, message: str) -> None:
        try:
            with self.store.transaction() as tx:
                tx.lease_held(cmd.id, self.owner)
                tx.fail_command(cmd.id, message)
            self.stats.failed += 1
            log.warning("task %s command %s failed: %s", cmd.task_id, cmd.id, message)
        except LeaseLost:
            pass
