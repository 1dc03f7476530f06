"""Running a program from the agent: an argument vector, never a shell, always bounded.

Used by SCA `command_output` rules and by active responses. Both run content that came over
the network, so every run is bounded the same way: a fixed argv (no shell to interpret
anything), stdin closed, a minimal environment, its own process group (killed whole on
timeout), and at most `cap` bytes kept of each output stream — the rest is read and dropped,
so a chatty child can neither block on a full pipe nor grow the agent's memory.
"""

from __future__ import annotations

import codecs
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CAP = 32 * 1024
# A fixed PATH: content names programs, the agent's own environment does not leak to them.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Completed:
    """What a bounded run produced. `exit_code` is None when the run timed out (killed)."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    timed_out: bool
    duration: float

    def text(self, which: str = "stdout") -> str:
        raw = self.stdout if which == "stdout" else self.stderr
        return raw.decode("utf-8", errors="replace")


def minimal_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(extra or {})
    return env


def run_bounded(
    argv: list[str],
    timeout: float,
    *,
    cap: int = DEFAULT_CAP,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    on_output: Callable[[str], None] | None = None,
) -> Completed:
    """Run `argv` (no shell) for at most `timeout` seconds; raises OSError if it cannot start
    (not found, not executable). `on_output` gets stdout and stderr as they are read (text,
    interleaved), for a long command's live output; the capped capture is kept regardless."""
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise ValueError("argv must be a non-empty list of strings without NUL bytes")
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env if env is not None else minimal_env(),
        cwd=cwd,
        close_fds=True,
        start_new_session=True,
        shell=False,
    )
    assert proc.stdout is not None and proc.stderr is not None
    kept: dict[int, bytearray] = {
        proc.stdout.fileno(): bytearray(),
        proc.stderr.fileno(): bytearray(),
    }
    decoders = {fd: codecs.getincrementaldecoder("utf-8")(errors="replace") for fd in kept}
    truncated = timed_out = False
    deadline = start + timeout
    with selectors.DefaultSelector() as sel:
        for fd in kept:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(left, 1.0)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if on_output is not None:
                    text = decoders[key.fd].decode(chunk, final=not chunk)
                    if text:
                        on_output(text)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = kept[key.fd]
                room = cap - len(buf)
                if len(chunk) > room:
                    truncated = True
                buf.extend(chunk[: max(room, 0)])
    if timed_out:
        _kill_group(proc)
    else:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    out, err = bytes(kept[proc.stdout.fileno()]), bytes(kept[proc.stderr.fileno()])
    proc.stdout.close()
    proc.stderr.close()
    return Completed(
        None if timed_out else proc.returncode,
        out,
        err,
        truncated,
        timed_out,
        time.monotonic() - start,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The child and anything it started: a response must not leave workers behind."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
