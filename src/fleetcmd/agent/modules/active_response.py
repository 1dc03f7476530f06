"""Active response: owns `STATE_DIR/active-response/` and the `active_response` section.

`active_response`: `{"enabled": bool (default true)}`.

What may run is decided on the endpoint, never by the command (row 11):
- only a definition stored by `ar-config` (row 10) in `active-response/<name>.json`;
- only its `executable`, a bare file name resolved inside `active-response/bin/` (no `/`, no
  `..`; a regular file owned by the agent's user, not a link, not writable by others);
- an argument vector built from the definition's template, each argument fully matching the
  pattern at its position in `allowed_arguments`; no shell anywhere;
- within the definition's timeout, output capped, stdin closed, a minimal environment.

The bundled responses (`firewall-drop`, `disable-account`, `block-ip`) are installed into
`bin/` while active response is enabled. Disabling it deletes every definition and everything
in `bin/` (R5).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcmd.agent.modules import ConfigError, SectionModule, flag
from fleetcmd.agent.processes import minimal_env, run_bounded
from fleetcmd.agent.state import StateDir, atomic_write, check_name

log = logging.getLogger("fleetcmd.agent.active_response")

EXECUTABLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PLACEHOLDER_RE = re.compile(r"\{(\d+)\}")
MAX_ARGUMENTS = 32
MAX_ARGUMENT_LENGTH = 1024
MAX_TIMEOUT = 600.0
DEFAULT_TIMEOUT = 30.0
# Per output stream: a response reports what it did, not a data dump.
OUTPUT_CAP = 32 * 1024
BUNDLED = {
    "firewall-drop": "firewall_drop.py",
    "disable-account": "disable_account.py",
    "block-ip": "block_ip.py",
}
BUNDLED_SOURCE = Path(__file__).resolve().parent.parent / "responses"


class ActiveResponseDisabled(ConfigError):
    """An active-response definition or execution arrived while active response is
    disabled."""


class ResponseRefused(ConfigError):
    """An execution (or definition) the agent will not run; nothing was started."""


@dataclass(frozen=True)
class Definition:
    name: str
    version: str
    executable: str
    arguments: tuple[str, ...]
    allowed: tuple[re.Pattern[str], ...]
    timeout: float

    def argv(self, arguments: list[Any]) -> list[str]:
        """The argument vector for these execution arguments (after the executable)."""
        if not isinstance(arguments, list):
            raise ResponseRefused("'arguments' must be a list of strings")
        if len(arguments) > len(self.allowed):
            raise ResponseRefused(
                f"{self.name} takes at most {len(self.allowed)} argument(s), got {len(arguments)}"
            )
        for i, arg in enumerate(arguments):
            if not isinstance(arg, str) or len(arg) > MAX_ARGUMENT_LENGTH or "\0" in arg:
                raise ResponseRefused(
                    f"argument {i} must be a string of at most {MAX_ARGUMENT_LENGTH} characters"
                )
            if not self.allowed[i].fullmatch(arg):
                raise ResponseRefused(
                    f"argument {i} {arg[:100]!r} is not allowed by "
                    f"{self.name} (pattern {self.allowed[i].pattern!r})"
                )

        def fill(m: re.Match[str]) -> str:
            n = int(m.group(1))
            if n >= len(arguments):
                raise ResponseRefused(f"{self.name} needs argument {n}; got {len(arguments)}")
            return str(arguments[n])

        # Placeholders only, never str.format: an argument cannot reach attributes or indexes.
        return [PLACEHOLDER_RE.sub(fill, t) for t in self.arguments]


def parse_definition(doc: Any, name: str) -> Definition:
    """Check the fields execution relies on (docs/content.md, "Active-response definition")."""
    if not isinstance(doc, dict):
        raise ResponseRefused(f"definition {name}: must be an object")
    if doc.get("name", name) != name:
        raise ResponseRefused(f"definition says name {doc.get('name')!r}, the command {name!r}")
    exe = doc.get("executable")
    if not isinstance(exe, str) or not EXECUTABLE_RE.fullmatch(exe) or ".." in exe:
        raise ResponseRefused(
            f"definition {name}: 'executable' must be a bare file name of the "
            "agent's active-response folder (no '/', no '..')"
        )
    template = doc.get("arguments", [])
    allowed = doc.get("allowed_arguments", [])
    for what, value in (("arguments", template), ("allowed_arguments", allowed)):
        if (
            not isinstance(value, list)
            or len(value) > MAX_ARGUMENTS
            or not all(isinstance(v, str) and "\0" not in v for v in value)
        ):
            raise ResponseRefused(
                f"definition {name}: '{what}' must be a list of at most {MAX_ARGUMENTS} strings"
            )
    patterns = []
    for p in allowed:
        try:
            patterns.append(re.compile(p))
        except re.error as exc:
            raise ResponseRefused(f"definition {name}: bad pattern {p!r}: {exc}") from None
    used = [int(n) for t in template for n in PLACEHOLDER_RE.findall(t)]
    if used and max(used) >= len(patterns):
        raise ResponseRefused(
            f"definition {name}: template uses {{{max(used)}}} but "
            f"allowed_arguments has {len(patterns)} pattern(s)"
        )
    timeout = doc.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ResponseRefused(f"definition {name}: 'timeout' must be in (0, {MAX_TIMEOUT:g}]")
    return Definition(
        name, str(doc.get("version", "")), exe, tuple(template), tuple(patterns), float(timeout)
    )


def interpreter_line() -> str:
    """How the bundled scripts are started: this interpreter, isolated from the environment."""
    exe = sys.executable
    if exe and not any(c.isspace() for c in exe) and len(exe) < 200:
        return f"#!{exe} -I\n"
    return "#!/usr/bin/env python3\n"


class ActiveResponse(SectionModule):
    section = "active_response"

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.enabled = True

    # -- configuration ----------------------------------------------------------------------------
    def check(self, section: dict[str, Any]) -> None:
        flag(section, self.section, "enabled", True)

    def configure(self, section: dict[str, Any]) -> list[str]:
        enabled = flag(section, self.section, "enabled", True)
        changes = []
        if enabled != self.enabled:
            changes.append(f"active response {'enabled' if enabled else 'disabled'}")
        self.enabled = enabled
        if enabled:
            self.install_bundled()
        else:
            removed = self.state.clear_content(self.state.ar_dir)
            scripts = self._clear_bin()
            if removed or scripts:
                changes.append(
                    "active response disabled: removed definitions "
                    f"{', '.join(removed) or '-'}; scripts {', '.join(scripts) or '-'}"
                )
        return changes

    def install_bundled(self) -> list[str]:
        """(Re)write the bundled scripts whose content differs: what runs is what shipped."""
        bin_dir = self._bin_dir(create=True)
        written = []
        for exe, source in BUNDLED.items():
            data = (interpreter_line() + (BUNDLED_SOURCE / source).read_text()).encode()
            target = bin_dir / exe
            try:
                st = target.lstat()
                same = (
                    stat.S_ISREG(st.st_mode)
                    and st.st_mode & 0o777 == 0o700
                    and target.read_bytes() == data
                )
            except FileNotFoundError:
                same = False
            if not same:
                atomic_write(target, data, 0o700)
                os.chmod(target, 0o700)
                written.append(exe)
        if written:
            log.info("active response: installed %s", ", ".join(written))
        return written

    def _bin_dir(self, create: bool = False) -> Path:
        d = self.state.ar_bin_dir
        if create:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.state.ar_lists_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            st = d.lstat()
        except FileNotFoundError:
            raise ResponseRefused(f"{d} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ResponseRefused(f"{d} is not a directory (a link is not accepted)")
        return d

    def _clear_bin(self) -> list[str]:
        removed: list[str] = []
        d = self.state.ar_bin_dir
        if not d.is_dir() or d.is_symlink():
            return removed
        for p in sorted(d.iterdir()):
            if p.is_file() or p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p.name)
        return removed

    # -- definitions (row 10) ---------------------------------------------------------------------
    def store(self, name: str, definition: dict[str, Any]) -> None:
        if not self.enabled:
            raise ActiveResponseDisabled(
                f"active response is disabled by configuration; definition {name} refused"
            )
        check_name(name)
        parse_definition(definition, name)
        self.install_bundled()
        self.state.put_content(self.state.ar_dir, name, definition)

    def remove(self, name: str) -> bool:
        return self.state.remove_content(self.state.ar_dir, name)

    def definitions(self) -> list[str]:
        return self.state.list_content(self.state.ar_dir)

    # -- execution (row 11) -----------------------------------------------------------------------
    def prepare(self, name: Any, arguments: Any) -> tuple[Definition, list[str]]:
        """Everything checked before anything runs: the full argv, or ResponseRefused."""
        if not self.enabled:
            raise ActiveResponseDisabled("active response is disabled by configuration")
        if not isinstance(name, str):
            raise ResponseRefused("'name' must be a string")
        check_name(name)
        doc = self.state.get_content(self.state.ar_dir, name)
        if doc is None:
            raise ResponseRefused(f"no active response {name!r} in this agent's configuration")
        definition = parse_definition(doc, name)
        args = definition.argv(arguments if arguments is not None else [])
        return definition, [str(self._executable(definition.executable)), *args]

    def _executable(self, exe: str) -> Path:
        if not EXECUTABLE_RE.fullmatch(exe) or "/" in exe or ".." in exe:
            raise ResponseRefused(f"executable {exe!r} refused: a bare file name is required")
        path = self._bin_dir() / exe
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise ResponseRefused(f"executable {exe!r} is not in {self.state.ar_bin_dir}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ResponseRefused(f"executable {exe!r} is not a regular file (links are refused)")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ResponseRefused(
                f"executable {exe!r} must belong to the agent's user and not be writable by others"
            )
        if not st.st_mode & 0o100:
            raise ResponseRefused(f"executable {exe!r} is not executable")
        return path

    def execute(
        self,
        name: Any,
        arguments: Any,
        deadline: float | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> tuple[bool, dict[str, Any], str]:
        """Run a response: (succeeded, result data, message); its output goes to `on_output`
        as it comes (the command's live output). Refusals raise ResponseRefused."""
        definition, argv = self.prepare(name, arguments)
        timeout = definition.timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise ResponseRefused("no time left within the command's timeout")
        env = minimal_env(
            {"FLEETCMD_AR_LISTS": str(self.state.ar_lists_dir), "FLEETCMD_AR_NAME": definition.name}
        )
        self.state.ar_lists_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log.info(
            "active response %s: running %s", definition.name, [definition.executable, *argv[1:]]
        )
        try:
            done = run_bounded(
                argv,
                timeout,
                cap=OUTPUT_CAP,
                env=env,
                cwd=self.state.ar_lists_dir,
                on_output=on_output,
            )
        except OSError as exc:
            raise ResponseRefused(
                f"{definition.executable} could not be started: {exc.strerror or exc}"
            ) from None
        data = {
            "name": definition.name,
            "version": definition.version,
            "argv": [definition.executable, *argv[1:]],
            "exit_code": done.exit_code,
            "stdout": done.text("stdout"),
            "stderr": done.text("stderr"),
            "truncated": done.truncated,
            "timed_out": done.timed_out,
            "duration": round(done.duration, 3),
        }
        if done.timed_out:
            return False, data, f"{definition.name} timed out after {timeout:g}s and was killed"
        if done.exit_code != 0:
            return False, data, f"{definition.name} exited with code {done.exit_code}"
        return True, data, f"{definition.name} exited with code 0"

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "definitions": self.definitions()}
