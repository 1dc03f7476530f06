"""Where each role keeps its data and credentials, how its settings are found, and how secrets
are read.

A role's settings (one pydantic model per role, `fleetcmd.role_settings`) come from, highest
first: a flag given on the command line, an environment variable `FLEETCMD_<ROLE>_<KEY>`, the
role's table in a TOML file (`--config FILE`), the model's default. Secrets never come from a
flag: each is a file (refused when group or others may read it, as ssh refuses keys) or an
environment variable (`SecretSpec`)."""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Self, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError


def data_dir(path: str | os.PathLike[str] | None) -> Path:
    d = Path(path or os.environ.get("FLEETCMD_DATA_DIR", "./data")).resolve()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def default_store_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'fleetcmd.db'}"


class SecretFileError(ValueError):
    """A secret file that is missing, empty, or readable by more than its owner."""


def check_private(path: Path, what: str = "secret file") -> None:
    """Refuse a file group or others may read or write: its secret is no longer one."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretFileError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); refused, as "
            f"ssh refuses such keys: run `chmod 600 {path}`"
        )


def secret_file(path: Path, nbytes: int = 32) -> str:
    """Read a secret from `path`, creating it (0600) on first use."""
    if path.exists():
        return read_secret(path)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def read_secret(path: Path, what: str = "secret file") -> str:
    """A secret from a file (`--token-file`, `--enrollment-key-file`, a systemd credential):
    the way to hand a process a secret that `ps` and /proc/PID/environ do not show."""
    try:
        check_private(path, what)
        value = path.read_text().strip()
    except FileNotFoundError:
        raise SecretFileError(f"{what} {path} does not exist") from None
    if not value:
        raise SecretFileError(f"{what} {path} is empty")
    return value


def write_secret(path: Path, value: str) -> Path:
    """(Re)write a secret to a 0600 file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)
    return path


def url_password(url: str) -> str | None:
    return urlsplit(url).password if "://" in url else None


def with_password(url: str, password: str) -> str:
    """`url` with `password` for its user (a store URL whose password came from elsewhere)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = quote(parts.username or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def redact(url: str) -> str:
    """A URL fit for a log line: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class ConfigError(ValueError):
    """Settings that cannot be used; the message names each key and where it came from."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SecretSpec:
    """A secret of a role: the setting naming its file, the environment variable that may hold
    it instead, and the file in the data folder used when neither is given (None: required
    only when used; `create`: made on first use, 0600)."""

    file_key: str
    env: str
    what: str
    default_file: str | None = None
    create: bool = False
    nbytes: int = 32


FLAG, ENV, FILE, DEFAULT = "flag", "environment", "file", "default"


class RoleSettings(BaseModel):
    """Base of each role's settings. Subclasses name the role (its TOML table and its
    environment prefix) and its secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ROLE: ClassVar[str]
    SECRETS: ClassVar[dict[str, SecretSpec]] = {}
    # Settings whose value may hold a password (a store URL): refused from a flag, and from
    # a file others may read.
    PASSWORD_KEYS: ClassVar[tuple[str, ...]] = ()
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def env_name(cls, key: str) -> str:
        return f"FLEETCMD_{cls.ROLE.replace('-', '_').upper()}_{key.upper()}"

    def source(self, key: str) -> str:
        return self._sources.get(key, DEFAULT)

    @classmethod
    def load(
        cls,
        config: Path | None = None,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Flags over environment over the file's table over defaults; ConfigError names
        every key that is wrong and where its value came from."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        problems: list[str] = []
        if config is not None:
            table = read_table(config, cls.ROLE)
            for key, value in table.items():
                values[key], sources[key] = value, f"{config} [{cls.ROLE}]"
            for key in cls.PASSWORD_KEYS:
                if url_password(str(table.get(key) or "")) is not None:
                    try:
                        check_private(config, "configuration file with a password")
                    except SecretFileError as exc:
                        problems.append(f"{key} (from {config}): {exc}")
        for key, field in cls.model_fields.items():
            name = cls.env_name(key)
            if env.get(name):
                raw: Any = env[name]
                if _is_list(field.annotation):
                    raw = [v.strip() for v in raw.split(",") if v.strip()]
                values[key], sources[key] = raw, f"{name}"
        for key, value in (flags or {}).items():
            if key in cls.PASSWORD_KEYS and url_password(str(value or "")) is not None:
                problems.append(
                    f"{key} (from --{key.replace('_', '-')}): a password on the command line is "
                    f"visible to every user (`ps`); give the password with "
                    f"--{key}-password-file, FLEETCMD_STORE_PASSWORD, or the whole URL in "
                    f"{cls.env_name(key)} or a 0600 configuration file"
                )
            values[key], sources[key] = value, f"--{key.replace('_', '-')}"
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "?"
                where = sources.get(key, "the defaults")
                if err["type"] == "extra_forbidden":
                    known = ", ".join(cls.model_fields)
                    problems.append(
                        f"{cls.ROLE}.{key} (from {where}): unknown option; known: {known}"
                    )
                else:
                    problems.append(
                        f"{cls.ROLE}.{key} (from {where}): {err['msg']} (got {err.get('input')!r})"
                    )
            raise ConfigError(problems) from None
        if problems:
            raise ConfigError(problems)
        settings._sources = {
            k: FLAG if s.startswith("--") else ENV if s.startswith("FLEETCMD_") else FILE
            for k, s in sources.items()
        }
        return settings

    @classmethod
    def from_cli(cls, ctx: Any, config: Path | None) -> Self:
        """Settings of a typer command: only the flags given on its command line count as
        flags (the others show the model's defaults in `--help`). Compared by name: typer
        brings its own copy of click's `ParameterSource`."""
        flags = {
            k: v
            for k, v in ctx.params.items()
            if k in cls.model_fields
            and getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"
        }
        return cls.load(config, flags)

    def secret(self, name: str, directory: Path | None = None) -> str | None:
        """A secret: the file named by a flag, else the environment variable, else the file
        named in the configuration, else the data folder's file."""
        spec = self.SECRETS[name]
        path: Path | None = getattr(self, spec.file_key)
        what = f"{spec.what} file"
        if path is not None and self.source(spec.file_key) == FLAG:
            return read_secret(path, what)
        if os.environ.get(spec.env):
            return os.environ[spec.env].strip()
        if path is not None:
            return read_secret(path, what)
        if spec.default_file is None or directory is None:
            return None
        if spec.create:
            return secret_file(directory / spec.default_file, spec.nbytes)
        return read_secret(directory / spec.default_file, what)

    def secret_where(self, name: str, directory: Path | None = None) -> str:
        """Where `secret(name)` comes from, for a start-up line (never the value)."""
        spec = self.SECRETS[name]
        path = getattr(self, spec.file_key)
        if path is not None and self.source(spec.file_key) == FLAG:
            return str(path)
        if os.environ.get(spec.env):
            return spec.env
        if path is not None:
            return str(path)
        return str((directory or Path()) / (spec.default_file or "?"))


def _is_list(annotation: Any) -> bool:
    return "list" in str(annotation)


def read_table(path: Path, role: str | None = None) -> dict[str, Any]:
    """The role's table of a TOML file (a file configures one role: `[indexer]`, …)."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such configuration file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    tables = [k for k, v in doc.items() if isinstance(v, dict)]
    loose = [k for k, v in doc.items() if not isinstance(v, dict)]
    if loose:
        raise ConfigError([f"{path}: {', '.join(loose)} outside a table: put options under [ROLE]"])
    if len(tables) != 1:
        raise ConfigError(
            [
                f"{path}: one table expected ([indexer], [server], [content-manager], [agent] or "
                f"[up]); found {', '.join(f'[{t}]' for t in tables) or 'none'}"
            ]
        )
    if role is not None and tables[0] != role:
        raise ConfigError([f"{path} configures [{tables[0]}], not [{role}]"])
    table: dict[str, Any] = doc[tables[0]]
    return table


def node_token(directory: Path, file: Path | None = None) -> str:
    """The credential nodes use to call the indexer: a file named with `--token-file`, else
    FLEETCMD_TOKEN, else the 0600 file DATA_DIR/node.token (made on first use)."""
    if file is not None:
        return read_secret(file, "node credential file")
    return os.environ.get("FLEETCMD_TOKEN") or secret_file(directory / "node.token")


S = TypeVar("S", bound=RoleSettings)


def fail(role: str, message: str) -> NoReturn:
    """End a role's command with a message naming what is wrong (exit code 2)."""
    import typer

    typer.echo(f"fleetcmd {role}: {message}", err=True)
    raise typer.Exit(2)


def settings_or_exit(model: type[S], ctx: Any, config: Path | None) -> S:
    """A role's settings from its flags, environment and `--config` file, or exit 2 with
    every problem named."""
    try:
        return model.from_cli(ctx, config)
    except ConfigError as exc:
        fail(model.ROLE, "configuration refused:\n  " + "\n  ".join(exc.problems))
