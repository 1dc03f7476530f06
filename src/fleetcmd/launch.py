"""Starting fleetcmd's processes and waiting for them: the one launcher that `fleetcmd up`, the
lab (benchmarks, chaos runs) and the tests' harnesses share.

- `free_port()`: a loopback port that is free now;
- `fleetcmd_argv(...)`: the command line of a `fleetcmd` sub-command under this interpreter;
- `wait_url(url, ...)`: until the URL answers, the process it waits for ends, or time is up;
- `Process`: one child with its environment and log file (appended to across restarts), in a
  session of its own (a Ctrl-C meant for the launcher does not reach it), stopped with
  SIGTERM and, when it does not end in time, SIGKILL;
- `stop_all(...)`: SIGTERM to every process first, so that they stop side by side, then SIGKILL
  for those still running at the deadline.

It knows no role: what to start, with which flags and secrets, is the caller's business."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FLEETCMD = (sys.executable, "-m", "fleetcmd.cli")


class LaunchError(RuntimeError):
    """A process ended before its URL answered, or the URL did not answer in time."""


class NoAnswer(LaunchError, TimeoutError):
    """The URL did not answer in time (a TimeoutError too)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before the caller does)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def fleetcmd_argv(*args: str) -> list[str]:
    return [*FLEETCMD, *args]


def answered_200(status: int) -> bool:
    return status == 200


def wait_url(
    url: str,
    timeout: float = 60.0,
    process: Process | subprocess.Popen[bytes] | None = None,
    *,
    accept: Callable[[int], bool] = answered_200,
    interval: float = 0.1,
) -> None:
    """Return once a GET of `url` answers with a status that `accept`s (200 by default).
    Raise LaunchError as soon as `process` has ended, NoAnswer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        code = _exit_code(process)
        if code is not None:
            raise LaunchError(f"{_describe(process)} exited with code {code} before {url} answered")
        try:
            status = httpx.get(url, timeout=min(2.0, max(timeout, 0.1))).status_code
            if accept(status):
                return
            last = f"HTTP {status}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise NoAnswer(f"{url} did not answer within {timeout:g}s ({last})" + _see(process))
        time.sleep(interval)


def _exit_code(process: Process | subprocess.Popen[bytes] | None) -> int | None:
    popen = process.proc if isinstance(process, Process) else process
    return None if popen is None else popen.poll()


def _describe(process: Process | subprocess.Popen[bytes] | None) -> str:
    if isinstance(process, Process):
        return f"{process.name}{_see(process)};"
    return f"process {process.pid}" if process is not None else "the process"


def _see(process: Process | subprocess.Popen[bytes] | None) -> str:
    return f" (see {process.log_path})" if isinstance(process, Process) else ""


def _raise_open_files_limit() -> None:
    """In the child, before exec: as many open files as the hard limit allows (a server under
    a simulated fleet holds one socket per agent)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Process:
    """One child process. `env` None inherits this one's; `health`: URLs that answer once it is
    up (start waits for them); `many_files`: raise its open-files limit to the hard one."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    health: Sequence[str] = ()
    many_files: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    def start(self, wait: float = 60.0) -> Process:
        """Spawn it (its output appended to its log) and wait up to `wait` seconds for each
        of its health URLs."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_raise_open_files_limit if self.many_files else None,
            )
        self.starts += 1
        for url in self.health:
            wait_url(url, wait, self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send(self, sig: int) -> None:
        """Send `sig` if the process still runs."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> bool:
        """`sig` (SIGTERM), then SIGKILL if it has not ended within `timeout` seconds.
        True when it ended by itself."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        self.send(sig)
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def log(self) -> str:
        """What it wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(processes: Iterable[Process], timeout: float = 10.0) -> list[str]:
    """SIGTERM to all that run, side by side, then SIGKILL to those not ended at the deadline
    (`timeout` seconds for the lot). Returns the names of the ones that had to be killed."""
    running = [p for p in processes if p.alive()]
    for p in running:
        p.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for p in running:
        assert p.proc is not None
        try:
            p.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(p.name)
            p.kill()
    return killed


def clean_env(drop: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment without the variables in `drop`, with `extra`, and with
    unbuffered Python output (so that logs are current when read)."""
    dropped = set(drop)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}
