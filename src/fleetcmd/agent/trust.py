"""Which commands this agent accepts: signed by a trusted indexer key, for this agent, not
expired, never seen before (docs/security.md, "Command signing").

Trusted keys come from `--command-key` (files or base64; re-read when an unknown key id shows
up) or, without it, are pinned on first use: the keys the server handed over at enrollment
(or at the first start of an agent enrolled before commands were signed), kept in
`STATE_DIR/command-keys.json`. Either way a key the indexer publishes as its *next* key is
added when a trusted key endorses it, so a rotation needs no agent re-configuration.

Seen nonces are kept in the agent's database until the command's expiry (bounded), so a
captured command cannot be played again even after the journal forgot its id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetcmd.agent.journal import connect
from fleetcmd.agent.state import write_json
from fleetcmd.model import command_signature as cs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("fleetcmd.agent.trust")

# Clocks differ: an expiry is enforced this many seconds late.
CLOCK_SKEW = 120.0
MAX_NONCES = 100_000
# An unknown key id makes the agent ask the server for the current keys at most this often.
REFRESH_EVERY = 60.0


class Refusal(Exception):
    """Why a command is refused: `reason` is one of the `command_signature` reasons."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class CommandTrust:
    def __init__(
        self,
        state_root: Path,
        db_path: Path,
        key_specs: list[str],
        fetch_keys: Callable[[], dict[str, Any]] | None = None,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self.pinned_path = state_root / "command-keys.json"
        self.specs = list(key_specs)
        self.fetch_keys = fetch_keys
        self.max_nonces = max_nonces
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._file_stamp: tuple[tuple[str, float], ...] = ()
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()
        self._db = connect(db_path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY,"
            " command_id TEXT NOT NULL, expires REAL NOT NULL)"
        )
        self._inserts = 0
        self.prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- keys -------------------------------------------------------------------------------
    @property
    def explicit(self) -> bool:
        """Keys were given on the command line (no trust on first use)."""
        return bool(self.specs)

    def load(self) -> int:
        """(Re)load the configured and pinned keys; returns how many are trusted."""
        keys: dict[str, Ed25519PublicKey] = {}
        for spec in self.specs:
            path = Path(spec)
            try:
                if len(spec) < 4096 and path.is_file():
                    found = cs.parse_keyring(path.read_text())
                else:
                    found = [cs.parse_public(spec)]
            except (OSError, ValueError) as exc:
                log.error("command key %s cannot be loaded: %s", spec[:80], exc)
                continue
            keys.update({cs.key_id(k): k for k in found})
        for b64 in self._pinned().values():
            with contextlib.suppress(ValueError):
                k = cs.parse_public(b64)
                keys[cs.key_id(k)] = k
        self._keys = keys
        self._file_stamp = self._stamp()
        return len(keys)

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def _stamp(self) -> tuple[tuple[str, float], ...]:
        out = []
        for spec in self.specs:
            with contextlib.suppress(OSError):
                out.append((spec, Path(spec).stat().st_mtime))
        return tuple(out)

    def _pinned(self) -> dict[str, str]:
        try:
            doc = json.loads(self.pinned_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        keys = doc.get("keys") if isinstance(doc, dict) else None
        return {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}

    def _pin(self, new: dict[str, str], how: str) -> None:
        pinned = self._pinned()
        pinned.update(new)
        write_json(self.pinned_path, {"keys": pinned, "updated_at": time.time(), "how": how})
        for kid in new:
            log.warning("command-signing key %s now trusted (%s)", kid, how)

    def offered(self, doc: Any, how: str) -> None:
        """Keys the server handed over (enrollment, init, refresh): pinned on first use when
        nothing is trusted yet; otherwise only a next key endorsed by a trusted key is added."""
        if not isinstance(doc, dict):
            return
        learned: dict[str, str] = {}
        first_use = not self._keys and not self.explicit
        for role in ("current", "next"):  # current first: it may endorse next
            entry = doc.get(role)
            if not isinstance(entry, dict):
                continue
            pub = str(entry.get("public", ""))
            try:
                k = cs.parse_public(pub)
            except ValueError:
                log.error("the server offered an unusable %s command key", role)
                continue
            kid = cs.key_id(k)
            if kid in self._keys:
                continue
            endorser = self._keys.get(str(entry.get("endorsed_by", "")))
            if endorser is not None and cs.verify(
                endorser, cs.endorsement_statement(pub), str(entry.get("endorsement", ""))
            ):
                learned[kid] = pub
                self._keys[kid] = k
                log.info("command key %s endorsed by trusted key %s", kid, entry.get("endorsed_by"))
            elif first_use and role == "current":
                learned[kid] = pub
                self._keys[kid] = k
                how = f"pinned on first use ({how})"
        if learned:
            self._pin(learned, how)

    def _key(self, kid: str) -> Ed25519PublicKey | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._stamp() != self._file_stamp:
            self.load()
            key = self._keys.get(kid)
        now = time.monotonic()
        if (
            key is None
            and self.fetch_keys is not None
            and now - self._refreshed.get(kid, -REFRESH_EVERY) >= REFRESH_EVERY
        ):
            self._refreshed[kid] = now
            try:
                self.offered(self.fetch_keys(), "key refresh")
            except Exception as exc:  # the command is refused; the next one tries again
                log.warning("could not fetch the server's command keys: %s", exc)
            key = self._keys.get(kid)
        return key

    # -- checks -----------------------------------------------------------------------------
    def authentic(self, cmd: dict[str, Any], agent_id: str | None) -> None:
        """Raise Refusal unless the command is signed by a trusted key and aimed at us."""
        sig = cmd.get("signature")
        if not isinstance(sig, dict) or not sig.get("sig"):
            raise Refusal(cs.UNSIGNED, "the command carries no signature")
        if sig.get("v") != cs.VERSION:
            raise Refusal(cs.BAD_SIGNATURE, f"unknown signature version {sig.get('v')!r}")
        kid = str(sig.get("key_id", ""))
        key = self._key(kid)
        if key is None:
            raise Refusal(
                cs.BAD_SIGNATURE,
                f"signed with key {kid[:32]!r}, which this agent "
                f"does not trust (trusted: {', '.join(self.ids()) or 'none'})",
            )
        if not cs.verify(key, cs.statement(cmd, sig), str(sig.get("sig"))):
            raise Refusal(
                cs.BAD_SIGNATURE,
                f"the signature (key {kid}) does not match the "
                "command: it was altered after signing",
            )
        target = cmd.get("target") if isinstance(cmd.get("target"), dict) else {}
        assert isinstance(target, dict)
        if target.get("type") != "agent" or target.get("id") != agent_id:
            raise Refusal(
                cs.NOT_FOR_THIS_AGENT,
                f"the command is for {target.get('type')} "
                f"{target.get('id')!r}, this agent is {agent_id!r}",
            )

    def admit(self, cmd: dict[str, Any], now: float | None = None) -> None:
        """Raise Refusal if an authentic command expired or its nonce was seen; else remember
        the nonce until the command's expiry."""
        sig = cmd["signature"]
        now = time.time() if now is None else now
        try:
            expires = float(sig.get("expires"))
        except (TypeError, ValueError):
            raise Refusal(cs.BAD_SIGNATURE, "the signature has no expiry") from None
        if expires + CLOCK_SKEW < now:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            raise Refusal(
                cs.EXPIRED, f"the command expired {now - expires:.0f}s ago (signed expiry {when})"
            )
        nonce = str(sig.get("nonce", ""))
        if not nonce:
            raise Refusal(cs.BAD_SIGNATURE, "the signature has no nonce")
        with self._lock:
            row = self._db.execute(
                "SELECT command_id FROM nonces WHERE nonce = ?", (nonce,)
            ).fetchone()
            if row is not None:
                raise Refusal(
                    cs.REPLAYED,
                    f"nonce {nonce} was already used by command "
                    f"{row[0]}: this delivery is a replay",
                )
            self._db.execute(
                "INSERT INTO nonces (nonce, command_id, expires) VALUES (?, ?, ?)",
                (nonce, str(cmd.get("id")), expires + CLOCK_SKEW),
            )
            self._inserts += 1
        if self._inserts % 1000 == 0:
            self.prune()

    def prune(self) -> int:
        """Forget nonces of expired commands (they are refused as expired anyway); keep at most
        `max_nonces`, dropping those that expire first."""
        with self._lock:
            n = self._db.execute("DELETE FROM nonces WHERE expires < ?", (time.time(),)).rowcount
            over = (
                int(self._db.execute("SELECT count(*) FROM nonces").fetchone()[0]) - self.max_nonces
            )
            if over > 0:
                n += self._db.execute(
                    "DELETE FROM nonces WHERE nonce IN (SELECT nonce FROM nonces "
                    "ORDER BY expires LIMIT ?)",
                    (over,),
                ).rowcount
        return n
