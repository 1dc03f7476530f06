"""The agent's life: enroll once, authenticate, initialize (R7), then long-poll for commands.

One thread does everything, in this order for each delivered command: journal as received →
acknowledge → execute (under the command's timeout) → journal the result → outbox → send.
The order is what makes execution exactly-once per command id and results durable; see
docs/agent.md. Errors reaching the server back off with jitter and never end the process; only
a deletion (or SIGTERM/SIGINT) does, with exit code 0.

Over 500 lines on purpose: this is the one thread's whole life, and the exactly-once order
above is only reviewable when every step that journals, acks, runs and sends sits in one
class; the work itself is elsewhere (handlers, modules, journal, outbox, upgrade, comms).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import fleetcmd
from fleetcmd.agent import upgrade as upgrades
from fleetcmd.agent.backoff import Backoff
from fleetcmd.agent.comms import AgentRemoved, Comms, CommsError
from fleetcmd.agent.handlers import INTERRUPTED, Context, execute
from fleetcmd.agent.journal import Journal, Result
from fleetcmd.agent.modules import ConfigError, Modules
from fleetcmd.agent.modules.active_response import ActiveResponse
from fleetcmd.agent.modules.inventory import Inventory
from fleetcmd.agent.modules.logcollector import LogCollector
from fleetcmd.agent.modules.logs import Logs
from fleetcmd.agent.modules.sca import Sca
from fleetcmd.agent.outbox import DEFAULT_LIMIT, Outbox
from fleetcmd.agent.state import AgentState, Credentials, StateDir
from fleetcmd.agent.trust import CommandTrust, Refusal
from fleetcmd.model.config import config_hash
from fleetcmd.model.progress import HEARTBEAT_MAX

log = logging.getLogger("fleetcmd.agent")

RESULT_BATCH = 500
# Result code of a command refused before execution (unsigned, tampered, expired, replayed…).
REFUSED = 5
# How long a deleted agent keeps trying to deliver its last answer before it leaves anyway.
REMOVAL_GRACE = 60.0


def _refused(exc: CommsError) -> bool:
    """A 4xx about the request itself (not auth, not a missing route): retrying cannot help."""
    return exc.status in (400, 413, 422)


def _refusal(cmd: dict[str, Any], exc: Refusal) -> Result:
    return Result.failure(
        cmd["id"], f"refused ({exc.reason}): {exc.message}", REFUSED, {"refused": exc.reason}
    )


class FatalStartError(Exception):
    """The agent cannot start (bad enrollment key, name taken, state folder in use)."""


class _StopPolling(BaseException):
    """Raised from the signal handler to cut a long-poll short (BaseException: not an error)."""


@dataclass
class AgentOptions:
    server: str
    enrollment_key: str
    name: str
    state_dir: str
    # A 0600 file holding the enrollment key (instead of `enrollment_key`): read only when
    # the agent enrolls, so the key is in no process's arguments or environment.
    enrollment_key_file: str = ""
    groups: list[str] = field(default_factory=list)
    log_level: str = "info"
    wait: float = 30.0
    outbox_limit: int = DEFAULT_LIMIT
    backoff_cap: float = 30.0
    # Public keys (files or base64) whose signatures on agent packages this agent accepts;
    # none: upgrades are refused.
    trust_keys: list[str] = field(default_factory=list)
    # How long a new version has to check in before it is rolled back.
    upgrade_deadline: float = upgrades.DEFAULT_DEADLINE
    # Public keys (files or base64) of the indexer's command signatures; none: the keys the
    # server hands over at enrollment are pinned on first use (docs/security.md).
    command_keys: list[str] = field(default_factory=list)
    # CA file that signed the server's TLS certificate (https URLs; default: system CAs).
    ca: str | None = None
    # A command that runs longer than `heartbeat_after` is heartbeated every
    # `heartbeat_interval` seconds (the stream records it `running`).
    heartbeat_after: float = 2.0
    heartbeat_interval: float = 10.0


class Agent:
    def __init__(self, options: AgentOptions, comms: Comms | None = None) -> None:
        self.options = options
        self.dir = StateDir(options.state_dir)
        self.comms = comms or Comms(options.server, ca=options.ca)
        self.backoff = Backoff(cap=options.backoff_cap)
        # id -> command journaled `offered` whose ack got no answer: asked again (runner._loop).
        self._unanswered: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._polling = False
        self._lock_fd: int | None = None
        self.journal: Journal | None = None
        self.outbox: Outbox | None = None
        self.trust: CommandTrust | None = None
        self.ctx: Context | None = None
        self.id: str | None = None
        self.versions = upgrades.Versions(self.dir)
        # The boot marker while this process is a version on trial (commits at check-in).
        self._trial: dict[str, Any] | None = None
        self._switch_to: upgrades.PendingUpgrade | None = None
        self._beats: Comms | None = None  # the heartbeats' own connection

    # -- process life -------------------------------------------------------------------------
    def run(self) -> int:
        """Run until deleted or signalled; returns the process exit code."""
        self.dir.create()
        self._take_folder()
        self._install_signals()
        try:
            return self._run()
        except _StopPolling:
            return 0
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _take_folder(self) -> None:
        """One agent per state folder: an flock (freed by the kernel on any death) + pid file."""
        fd = os.open(self.dir.root / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FatalStartError(
                f"another agent (pid {self.dir.running_pid()}) is running on {self.dir.root}"
            ) from None
        self._lock_fd = fd
        self.dir.write_pid()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self._stop.set()
            if self._polling:
                raise _StopPolling()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _shutdown(self) -> None:
        if self.ctx is not None:
            self.ctx.modules.close()
        self.comms.close()
        for closable in (self.journal, self.outbox, self.trust):
            if closable is not None:
                closable.close()
        self.dir.remove_pid()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # -- start-up -----------------------------------------------------------------------------
    def _run(self) -> int:
        applied = self.dir.load_state()
        if applied is not None and applied.removed:
            log.warning("this agent was deleted; remove %s to enroll it again", self.dir.root)
            return 0
        applied = applied or AgentState(name=self.options.name, groups=list(self.options.groups))
        applied.version = fleetcmd.__version__
        self.journal = Journal(self.dir.db_path)
        self.outbox = Outbox(self.dir.db_path, self.options.outbox_limit)
        self.trust = CommandTrust(
            self.dir.root,
            self.dir.db_path,
            self.options.command_keys,
            fetch_keys=self.comms.command_keys,
        )
        if not self.trust.load() and self.trust.explicit:
            raise FatalStartError("none of the --command-key keys can be loaded")
        self.journal.prune()
        self.ctx = self._context(applied)
        self._apply_local(applied)
        self._trial = self._upgrade_state()
        self._recover_interrupted()

        creds = self._credentials()
        if creds is None:
            return 0
        self.id = creds.id
        self.comms.use_credentials(creds.id, creds.secret)
        log.info(
            "agent %s (%s) version %s, state in %s",
            creds.id,
            applied.name,
            fleetcmd.__version__,
            self.dir.root,
        )
        try:
            if not self._initialize():
                return 0
            self._check_in()
            self.ctx.modules.tick(time.monotonic())  # inventory and due SCA work, at start
            return self._loop()
        except AgentRemoved as exc:
            log.warning("the server says this agent was removed (%s)", exc.message)
            self._forget()
            return 0

    def _context(self, applied: AgentState) -> Context:
        sca = Sca(self.dir, self._send_events)
        active_response = ActiveResponse(self.dir)
        inventory = Inventory(self._send_inventory)
        collector = LogCollector(self.dir, self._event_channel)
        modules = Modules(
            [sca, active_response, inventory, collector, Logs(self.options.log_level)]
        )
        return Context(
            self.dir,
            applied,
            modules,
            sca,
            active_response,
            self._fetch_config,
            inventory=inventory,
            comms=self.comms,
            trust_keys=list(self.options.trust_keys),
            upgrade_deadline=self.options.upgrade_deadline,
            heartbeat=self._heartbeat,
            heartbeat_after=self.options.heartbeat_after,
            heartbeat_interval=self.options.heartbeat_interval,
        )

    def _apply_local(self, applied: AgentState) -> None:
        """Before the server answers, run with the configuration applied last time."""
        assert self.ctx is not None
        try:
            self.ctx.modules.apply(applied.config)
        except ConfigError as exc:
            log.error("stored configuration cannot be applied: %s", exc)
        self.ctx.save()

    def _recover_interrupted(self) -> None:
        """Commands received by a previous run that never finished: answer, never re-run."""
        assert self.journal is not None and self.outbox is not None
        for entry in self.journal.interrupted():
            if self._trial is not None and str(self._trial["command_id"]) == entry.id:
                continue  # the upgrade this process is the trial of: answered at check-in
            command = self.journal.command(entry.id) or {"id": entry.id}
            result = Result.failure(
                command["id"],
                f"{entry.action}: the agent stopped while executing this command; "
                "it is not run again (execution is at most once per command id)",
                INTERRUPTED,
            )
            self.journal.complete(result)
            self.outbox.put(result)
            log.warning("command %s (%s) was interrupted by a restart", entry.id, entry.action)

    def _credentials(self) -> Credentials | None:
        """Enrolled once; the credentials are reused on every restart."""
        creds = self.dir.credentials()
        if creds is not None:
            return creds
        key = self._enrollment_key()
        info = {
            "hostname": os.uname().nodename,
            "os": os.uname().sysname,
            "arch": os.uname().machine,
        }
        # Kept before the first attempt: a retry whose first answer was lost (a timeout after
        # the server enrolled us) is the same request and gets the same id and secret.
        request = self.dir.enrollment_request()
        while not self._stop.is_set():
            try:
                agent_id, secret, keys = self.comms.enroll(
                    key,
                    self.options.name,
                    list(self.options.groups),
                    fleetcmd.__version__,
                    info,
                    request.request_id,
                    request.secret,
                )
            except CommsError as exc:
                if exc.transient:
                    self._retry_later("enroll", exc)
                    continue
                raise FatalStartError(f"enrollment refused: {exc}") from None
            creds = Credentials(agent_id, secret)
            self.dir.save_credentials(creds)
            self.dir.forget_enrollment_request()
            assert self.trust is not None
            self.trust.offered(keys, "enrollment")
            log.info("enrolled as %s", agent_id)
            self.backoff.reset()
            return creds
        return None

    def _enrollment_key(self) -> str:
        if self.options.enrollment_key:
            return self.options.enrollment_key
        if self.options.enrollment_key_file:
            try:
                key = Path(self.options.enrollment_key_file).read_text().strip()
            except OSError as exc:
                raise FatalStartError(f"enrollment key file: {exc}") from None
            if key:
                return key
            raise FatalStartError(
                f"enrollment key file {self.options.enrollment_key_file} is empty"
            )
        raise FatalStartError("not enrolled yet and no --enrollment-key given")

    def _initialize(self) -> bool:
        """R7: ask for the current assignment and configuration and apply it."""
        while not self._stop.is_set():
            try:
                data = self.comms.init()
            except AgentRemoved:
                raise
            except CommsError as exc:
                self._retry_later("init", exc)
                continue
            self.backoff.reset()
            self._apply_init(data)
            return True
        return False

    def _apply_init(self, data: dict[str, Any]) -> None:
        assert self.ctx is not None and self.trust is not None
        self.trust.offered(data.get("command_keys"), "init")
        applied = self.ctx.applied
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        assert isinstance(config, dict)
        digest = config_hash(config)
        if data.get("config_hash") not in (None, digest):
            log.warning(
                "init: server hash %s differs from the configuration's %s",
                data.get("config_hash"),
                digest,
            )
        if isinstance(data.get("name"), str) and data["name"]:
            applied.name = data["name"]
        groups = data.get("groups")
        try:
            with self.ctx.lock:
                changes = self.ctx.modules.apply(config)
                applied.config, applied.config_hash = config, digest
                if isinstance(groups, list):
                    applied.groups = [str(g) for g in groups]
        except ConfigError as exc:
            log.error("init: configuration refused, keeping the previous one: %s", exc)
            changes = []
        self.ctx.save()
        self._report_applied(applied.config_hash)
        log.info(
            "initialized: name %s, groups %s, config %s%s",
            applied.name,
            applied.groups,
            applied.config_hash[:12],
            f" ({'; '.join(changes)})" if changes else "",
        )

    def _report_applied(self, digest: str) -> None:
        """Best effort: the agents index shows what this agent runs from its start, not only
        after its next group command (whose result reports the hash again)."""
        try:
            self.comms.report_applied(digest)
        except AgentRemoved:
            raise
        except CommsError as exc:
            log.info(
                "could not report the applied configuration (%s); the next group "
                "command reports it",
                exc,
            )

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self) -> int:
        assert self.ctx is not None and self.journal is not None
        self._unanswered = {str(c["id"]): c for c in self.journal.offered()}
        while not self._stop.is_set():
            try:
                self.flush()
                if self._unanswered:  # acks whose answer was lost: asked again first
                    retry, self._unanswered = list(self._unanswered.values()), {}
                    self.handle(retry)
                commands = self._poll()
                self.backoff.reset()
                if commands:
                    self.handle(commands)
                    self.flush()
                if self.ctx.removing:
                    return self._leave()
                if self._switch_to is not None:
                    self._switch(self._switch_to)
                self.ctx.modules.tick(time.monotonic())
            except AgentRemoved:
                raise
            except CommsError as exc:
                self._retry_later("poll", exc)
        return 0

    def _poll(self) -> list[dict[str, Any]]:
        self._polling = True
        try:
            if self._stop.is_set():
                return []
            return self.comms.commands(self.options.wait)
        finally:
            self._polling = False

    def _retry_later(self, what: str, exc: CommsError) -> None:
        delay = self.backoff.next_delay()
        if exc.retry_after is not None:
            # Rate-limited: never sooner than the server asks, plus jitter so that agents
            # told the same Retry-After do not come back together.
            delay = exc.retry_after + self.backoff.jitter(max(1.0, exc.retry_after / 2))
        log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        self._sleep(delay)

    def handle(self, commands: list[dict[str, Any]]) -> None:
        """Verify, journal, acknowledge, execute once, record: the exactly-once path."""
        assert self.journal is not None and self.outbox is not None and self.ctx is not None
        assert self.trust is not None
        fresh: list[dict[str, Any]] = []
        again: list[dict[str, Any]] = []
        untrusted: list[Any] = []
        for cmd in commands:
            if not isinstance(cmd, dict) or "id" not in cmd:
                log.warning("ignoring a command without an id: %r", cmd)
                continue
            try:
                self.trust.authentic(cmd, self.id)
            except Refusal as exc:
                untrusted.append(cmd["id"])
                self._refuse_untrusted(cmd, exc)
                continue
            (fresh if self.journal.receive(cmd) else again).append(cmd)
        ids = [c["id"] for c in fresh + again] + untrusted
        try:
            confirmed = {str(i) for i in self.comms.ack(ids)}
        except AgentRemoved:
            raise
        except CommsError as exc:
            # Unconfirmed, nothing runs: the command may have gone final meanwhile. It stays
            # `offered` and its ack is asked again before the next poll (the server may have
            # recorded it delivered and lost only its answer).
            log.warning(
                "ack of %s failed (%s); nothing runs until a delivery is confirmed", ids, exc
            )
            if not _refused(exc):  # a refusal for good (4xx) is an answer: not asked again
                for cmd in fresh:
                    self._unanswered[str(cmd["id"])] = cmd
                fresh = []
            confirmed = set()
        refused = [c for c in fresh if str(c["id"]) not in confirmed]
        fresh = [c for c in fresh if str(c["id"]) in confirmed]
        for cmd in refused:
            log.info(
                "command %s (%s) not run: the server did not confirm its delivery "
                "(cancelled, expired or held by another node)",
                cmd["id"],
                (cmd.get("action") or {}).get("name"),
            )
        self.journal.refuse([c["id"] for c in refused])
        self.journal.confirm([c["id"] for c in fresh])
        for cmd in again:
            entry = self.journal.get(cmd["id"])
            if entry is not None and entry.result is not None:
                log.info("command %s delivered again: re-sending its recorded result", cmd["id"])
                self.outbox.put(entry.result)
        for cmd in fresh:
            name = (cmd.get("action") or {}).get("name")
            try:
                self.trust.admit(cmd)
            except Refusal as exc:
                result = _refusal(cmd, exc)
                self.journal.complete(result)
                self.outbox.put(result)
                log.warning("command %s (%s) refused: %s", cmd["id"], name, exc)
                continue
            log.info("command %s: %s", cmd["id"], name)
            result = execute(self.ctx, cmd)
            restart, self.ctx.restart = self.ctx.restart, None
            if (
                restart is not None
                and result.status == "success"
                and restart.command_id == cmd["id"]
                and self._switch_to is None
            ):
                # Not answered now: the version that runs after the switch answers it.
                log.info(
                    "command %s: %s installed; switching to it", cmd["id"], restart.target.version
                )
                self._switch_to = restart
                continue
            self.journal.complete(result)
            self.outbox.put(result)
            log.info("command %s: %s %s", cmd["id"], result.status, result.message)
            if self.ctx.removing:
                break

    def _refuse_untrusted(self, cmd: dict[str, Any], exc: Refusal) -> None:
        """Not from the indexer (or not for us): never journaled, so it cannot shadow the real
        command of the same id; answered unless that id already has an answer."""
        assert self.journal is not None and self.outbox is not None
        log.warning("command %s refused: %s", cmd["id"], exc)
        if self.journal.get(cmd["id"]) is None:
            self.outbox.put(_refusal(cmd, exc))

    def flush(self) -> int:
        """Send queued results oldest first; drop each once the server gave it an outcome."""
        assert self.outbox is not None
        sent = 0
        while True:
            batch = self.outbox.peek(RESULT_BATCH)
            if not batch:
                return sent
            try:
                outcomes = self.comms.results([r.to_json() for r in batch])
            except CommsError as exc:
                if not _refused(exc):
                    raise
                # The server refuses the batch itself: find the result(s) it will never take
                # rather than blocking every later result behind them.
                sent += self._send_one_by_one(batch)
                continue
            done = [r.id for r in batch if str(r.id) in outcomes]
            for r in batch:
                outcome = outcomes.get(str(r.id))
                if outcome and outcome not in ("recorded", "duplicate"):
                    log.info("result of command %s: %s", r.id, outcome)
            self.outbox.remove(done)
            sent += len(done)
            if len(done) < len(batch):
                log.warning(
                    "server gave no outcome for %d result(s); kept for later",
                    len(batch) - len(done),
                )
                return sent

    def _send_one_by_one(self, batch: list[Result]) -> int:
        assert self.outbox is not None
        sent = 0
        for r in batch:
            try:
                outcomes = self.comms.results([r.to_json()])
            except CommsError as exc:
                if not _refused(exc):
                    raise
                log.error(
                    "server refuses the result of command %s (%s); dropped from the "
                    "outbox, kept in the journal",
                    r.id,
                    exc,
                )
                self.outbox.remove([r.id])
                continue
            if str(r.id) in outcomes:
                self.outbox.remove([r.id])
                sent += 1
        return sent

    # -- upgrades (row 3; design in agent/upgrade.py) -------------------------------------------
    def _upgrade_state(self) -> dict[str, Any] | None:
        """At start: the boot marker of the last upgrade. Returns it when this process is
        the version on trial; answers the upgrade command when the marker is final."""
        doc = self.versions.marker()
        if doc is None:
            return None
        here = upgrades.running()
        if doc.get("state") == upgrades.TRIAL:
            if doc["to"]["version"] == here.version and doc["to"]["src"] == here.src:
                log.info("version %s on trial: it commits once it has checked in", here.version)
                return doc
            doc = (
                self.versions.roll_back(
                    f"the agent started as version {here.version} ({here.src}) instead of "
                    f"{doc['to']['version']}"
                )
                or self.versions.marker()
                or doc
            )
        self._answer_upgrade(doc)
        return None

    def _answer_upgrade(self, doc: dict[str, Any]) -> None:
        """Write the upgrade command's result once, from the marker's final state."""
        assert self.journal is not None and self.outbox is not None
        entry = self.journal.get(doc.get("command_id"))
        if entry is None or entry.result is not None:
            return
        cid = self.journal.command(entry.id) or {"id": entry.id}
        to, previous = doc["to"]["version"], doc["from"]["version"]
        if doc.get("state") == upgrades.COMMITTED and fleetcmd.__version__ == to:
            result = Result.success(
                cid["id"],
                {"version": to, "previous": previous},
                f"upgraded from {previous} to {to}",
            )
        else:
            result = Result.failure(
                cid["id"],
                f"upgrade to {to} rolled back to {fleetcmd.__version__}: "
                f"{doc.get('reason') or 'the new version did not check in'}",
                data={"version": fleetcmd.__version__, "attempted": to, "rolled_back": True},
            )
        self.journal.complete(result)
        self.outbox.put(result)
        log.info("upgrade command %s answered: %s %s", cid["id"], result.status, result.message)

    def _check_in(self) -> None:
        """The server answered this version: if it is on trial, it is now the current one."""
        if self._trial is None:
            return
        self._phase(self._trial["command_id"], "watch", self.options.heartbeat_interval)
        doc = self.versions.commit()
        self._trial = None
        if doc is None:
            log.error(
                "upgrade no longer on trial (rolled back meanwhile); the watchdog "
                "restarts the previous version"
            )
            return
        log.info("upgrade to %s committed", doc["to"]["version"])
        self._answer_upgrade(doc)

    def _switch(self, pending: upgrades.PendingUpgrade) -> None:
        """Restart into the installed version: boot marker, watchdog, exec (same pid)."""
        assert self.journal is not None and self.outbox is not None
        self._switch_to = None
        if threading.current_thread() is not threading.main_thread():
            self._answer_switch_failure(
                pending,
                "the agent is not running as its own process (embedded); it cannot restart itself",
            )
            return
        try:
            self.flush()  # answers of the other commands go out before the restart
        except CommsError as exc:
            log.warning("results not sent before the restart (%s); sent after it", exc)
        # Enrolled already: the versions after the switch (and the watchdog) need no key,
        # and an older version would not know the key-file option.
        kept = {
            k: v for k, v in dataclasses.asdict(self.options).items() if k != "enrollment_key_file"
        }
        options = json.dumps({**kept, "enrollment_key": ""})
        self.versions.begin(pending.command_id, pending.target, pending.deadline)
        try:
            upgrades.spawn_watchdog(self.dir, os.getpid(), options)
        except Exception as exc:
            self.versions.roll_back(f"the upgrade watchdog could not start ({exc})")
            self._answer_switch_failure(pending, f"the upgrade watchdog could not start: {exc}")
            return
        # Until the new version checks in (its deadline) nothing heartbeats the command.
        self._phase(pending.command_id, "restart", pending.deadline)
        src = self.versions.boot_target()
        log.warning("restarting into version %s (%s)", pending.target.version, src)
        self._shutdown()
        upgrades.exec_agent(src or pending.target.src, options)

    def _answer_switch_failure(self, pending: upgrades.PendingUpgrade, why: str) -> None:
        assert self.journal is not None and self.outbox is not None
        result = Result.failure(
            pending.command_id, f"upgrade to {pending.target.version} not switched: {why}"
        )
        self.journal.complete(result)
        self.outbox.put(result)

    # -- deletion -----------------------------------------------------------------------------
    def _leave(self) -> int:
        """After `delete`: deliver the answer (bounded effort), forget credentials, exit 0."""
        assert self.outbox is not None
        deadline = time.monotonic() + REMOVAL_GRACE
        while self.outbox.size() and time.monotonic() < deadline and not self._stop.is_set():
            try:
                self.flush()
            except AgentRemoved:
                break  # the server already forgot this agent: nothing more will be taken
            except CommsError as exc:
                self._retry_later("sending the deletion answer", exc)
        self._forget()
        return 0

    def _forget(self) -> None:
        assert self.ctx is not None
        self.dir.forget_credentials()
        self.ctx.applied.removed = True
        self.ctx.save()
        log.warning("agent deleted: credentials forgotten, no longer connecting")

    # -- callbacks for handlers and modules ---------------------------------------------------
    def _fetch_config(self, groups: list[str]) -> dict[str, Any]:
        return self.comms.configuration(groups)

    def _send_inventory(self, packages: list[dict[str, str]]) -> None:
        self.comms.inventory(packages)

    def _send_events(self, events: list[dict[str, Any]]) -> None:
        self.comms.events(events)

    def _heartbeat(self, beat: dict[str, Any]) -> dict[str, Any]:
        """A heartbeat of the running command, on a connection of its own: the handler may be
        using the main one (an upgrade's download)."""
        if self._beats is None:
            self._beats = self._event_channel()
        if self._beats is None:
            return {}
        answer = self._beats.progress([beat])
        if beat["id"] in answer["stopped"]:
            log.info("command %s: the stream no longer waits for it (final already)", beat["id"])
        return answer

    def _phase(self, command_id: Any, phase: str, interval: float) -> None:
        """An upgrade phase the handler's heartbeats cannot carry: the switch, the trial."""
        percent, message = upgrades.PHASES[phase]
        beat = {"id": command_id, "percent": percent, "message": message}
        try:
            self._heartbeat({**beat, "interval": min(max(interval, 1.0), HEARTBEAT_MAX)})
        except Exception as exc:  # a lost phase report never stops an upgrade
            log.warning("phase %s of upgrade command %s not reported: %s", phase, command_id, exc)

    def _event_channel(self) -> Comms | None:
        """A connection of the log collector's own (the main one is held by the long-poll);
        none before the agent is enrolled."""
        creds = self.dir.credentials()
        if creds is None:
            return None
        channel = Comms(self.options.server, ca=self.options.ca)
        channel.use_credentials(creds.id, creds.secret)
        return channel
