"""Every role's settings, one model each: what `--config FILE` (a TOML table named after the
role), `FLEETCMD_<ROLE>_<KEY>` variables and flags may set, with its default. Flags are
declared by each role's `cli.py` with these defaults; docs/configuration.md lists them all
(a test keeps it in step with these models)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field

from fleetcmd.model.progress import HEARTBEAT_MAX, HEARTBEAT_MIN
from fleetcmd.settings import (
    ConfigError,
    RoleSettings,
    SecretSpec,
    check_private,
    default_store_url,
    read_table,
    with_password,
)

LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"],
    BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
]

TOKEN = SecretSpec("token_file", "FLEETCMD_TOKEN", "node credential", "node.token", create=True)
STORE_PASSWORD = SecretSpec("store_password_file", "FLEETCMD_STORE_PASSWORD", "store password")


class StoreSettings(RoleSettings):
    """A role that opens the store: its URL with the password from wherever it was given."""

    store: str | None = None

    def store_url(self, directory: Path) -> str:
        url = self.store or default_store_url(directory)
        password = self.secret("store_password")
        return with_password(url, password) if password else url


class IndexerSettings(StoreSettings):
    ROLE: ClassVar[str] = "indexer"
    SECRETS: ClassVar[dict[str, SecretSpec]] = {
        "token": TOKEN,
        "store_password": STORE_PASSWORD,
    }
    PASSWORD_KEYS: ClassVar[tuple[str, ...]] = ("store",)

    host: str = Field("127.0.0.1", description="Address to bind (loopback by default).")
    port: int = Field(9200, ge=1, le=65535, description="Port of the indexer API.")
    store: str | None = Field(
        None,
        description="sqlite:///PATH or postgresql://USER@HOST/DB?schema=NAME "
        "(default: SQLite in the data folder).",
    )
    store_password_file: Path | None = Field(
        None,
        description="File (0600) holding the PostgreSQL password (else "
        "FLEETCMD_STORE_PASSWORD, else the URL's own, else libpq's ~/.pgpass).",
    )
    data_dir: Path | None = Field(None, description="Data folder (default ./data).")
    token_file: Path | None = Field(
        None,
        description="File (0600) holding the node credential (else FLEETCMD_TOKEN, "
        "else DATA_DIR/node.token, made on first start).",
    )
    command_manager: bool = Field(True, description="Run the command manager worker.")
    dispatcher: bool = Field(
        True, description="Push events to the event subscribers from this indexer."
    )
    retention_days: float = Field(
        30.0, ge=0, description="Finished tasks older than this leave the store (0: keep all)."
    )
    upkeep_interval: float = Field(
        60.0, ge=0, description="Seconds between the store's vacuum/analyze checks (0: never)."
    )
    node_silent_after: float = Field(
        15.0,
        ge=0,
        description="Seconds without a heartbeat after which a server node's undelivered "
        "agent commands go to other nodes, before its leases lapse (0: wait for the leases).",
    )
    command_key: Path | None = Field(
        None,
        description="Command-signing private key (0600; default "
        "DATA_DIR/command-signing.key, made on first start).",
    )
    tls_cert: Path | None = Field(None, description="Serve HTTPS with this certificate.")
    tls_key: Path | None = Field(None, description="Private key of tls_cert (0600).")
    header_timeout: float = Field(10.0, ge=0.1, description="Seconds for a request's headers.")
    body_timeout: float = Field(60.0, ge=0.1, description="Seconds for a request's body.")
    max_connections: int = Field(4096, ge=1, description="Open connections accepted.")
    log_level: LogLevel = Field("info", description="debug, info, warning or error.")


class ServerSettings(RoleSettings):
    ROLE: ClassVar[str] = "server"
    SECRETS: ClassVar[dict[str, SecretSpec]] = {
        "token": TOKEN,
        "enrollment_key": SecretSpec(
            "enrollment_key_file",
            "FLEETCMD_ENROLLMENT_KEY",
            "enrollment key",
            "enrollment.key",
            create=True,
            nbytes=24,
        ),
        "jwt_key": SecretSpec(
            "jwt_key_file", "FLEETCMD_JWT_KEY", "token signing key", "comms-jwt.key", create=True
        ),
    }

    indexer: str | None = Field(None, description="Indexer URL (required).")
    data_dir: Path | None = Field(None, description="Data folder (default ./data).")
    token_file: Path | None = Field(
        None,
        description="File (0600) holding the node credential (else FLEETCMD_TOKEN, "
        "else DATA_DIR/node.token).",
    )
    enrollment_key_file: Path | None = Field(
        None,
        description="File (0600) holding the key agents enroll with (else "
        "FLEETCMD_ENROLLMENT_KEY, else DATA_DIR/enrollment.key).",
    )
    jwt_key_file: Path | None = Field(
        None,
        description="File (0600) holding the token signing key shared by server nodes "
        "(else FLEETCMD_JWT_KEY, else DATA_DIR/comms-jwt.key).",
    )
    node_id: str | None = Field(None, description="Node id (default server-HOSTNAME-COMMSPORT).")
    host: str = Field("127.0.0.1", description="Address to bind (loopback by default).")
    management_port: int = Field(55000, ge=1, le=65535, description="Management API port.")
    comms_port: int = Field(27000, ge=1, le=65535, description="Comms API port (agents).")
    pull_wait: float = Field(20.0, gt=0, description="Long-poll wait on the indexer, s.")
    lease: float = Field(60.0, gt=0, description="Lease on pulled commands, s.")
    enroll_rate: float = Field(10.0, ge=0, description="Enrollments/s per address (0: no limit).")
    auth_rate: float = Field(50.0, ge=0, description="Agent logins/s per address (0: no limit).")
    tls_cert: Path | None = Field(None, description="Serve both APIs over HTTPS with this cert.")
    tls_key: Path | None = Field(None, description="Private key of tls_cert (0600).")
    ca: Path | None = Field(None, description="CA that signed an https indexer's certificate.")
    forwarded_allow_ips: str = Field(
        "",
        description="Comma-separated addresses of reverse proxies trusted for "
        "X-Forwarded-For (a load balancer's).",
    )
    header_timeout: float = Field(10.0, ge=0.1, description="Seconds for a request's headers.")
    body_timeout: float = Field(60.0, ge=0.1, description="Seconds for a request's body.")
    max_connections: int = Field(16_384, ge=1, description="Open connections per API.")
    log_level: LogLevel = Field("info", description="debug, info, warning or error.")


class ContentManagerSettings(RoleSettings):
    ROLE: ClassVar[str] = "content-manager"
    SECRETS: ClassVar[dict[str, SecretSpec]] = {
        "token": SecretSpec("token_file", "FLEETCMD_TOKEN", "node credential", "node.token"),
    }

    indexer: str = Field("http://127.0.0.1:9200", description="Indexer URL.")
    feed: str | None = Field(
        None, description="Feed folder or http(s) URL (default: the sample feed, dev key)."
    )
    trust_key: list[str] = Field(
        [], description="Public keys (files or base64) the feed is signed with."
    )
    interval: float = Field(60.0, ge=0.1, description="Seconds between polls.")
    data_dir: Path | None = Field(None, description="Data folder (default ./data).")
    token_file: Path | None = Field(
        None,
        description="File (0600) holding the node credential (else FLEETCMD_TOKEN, "
        "else DATA_DIR/node.token).",
    )
    log_level: LogLevel = Field("info", description="debug, info, warning or error.")


class AgentSettings(RoleSettings):
    ROLE: ClassVar[str] = "agent"
    SECRETS: ClassVar[dict[str, SecretSpec]] = {
        "enrollment_key": SecretSpec(
            "enrollment_key_file", "FLEETCMD_ENROLLMENT_KEY", "enrollment key"
        ),
    }

    server: str | None = Field(None, description="Comms API URL (required).")
    name: str | None = Field(None, description="Agent name, used at enrollment (required).")
    state_dir: Path | None = Field(
        None, description="State folder: credentials, journal, outbox, content (required)."
    )
    enrollment_key_file: Path | None = Field(
        None,
        description="File (0600) holding the enrollment key (else "
        "FLEETCMD_ENROLLMENT_KEY); needed until the agent is enrolled.",
    )
    groups: str = Field("", description="Comma-separated groups asked for at enrollment.")
    log_level: LogLevel = Field("info", description="debug, info, warning or error.")
    trust_key: list[str] = Field(
        [], description="Public keys agent packages are signed with (none: no upgrades)."
    )
    upgrade_deadline: float = Field(
        120.0, ge=5, description="Seconds a new version has to check in before rollback."
    )
    heartbeat_after: float = Field(
        2.0, ge=0, le=3600, description="Seconds a command runs before it is heartbeated."
    )
    heartbeat_interval: float = Field(
        10.0,
        ge=HEARTBEAT_MIN,
        le=HEARTBEAT_MAX,
        description="Seconds between heartbeats of a running command (two missed: timeout).",
    )
    command_key: list[str] = Field(
        [], description="The indexer's command-signing public keys (none: pinned at enrollment)."
    )
    ca: Path | None = Field(None, description="CA to verify an https server with.")


class UpSettings(StoreSettings):
    ROLE: ClassVar[str] = "up"
    SECRETS: ClassVar[dict[str, SecretSpec]] = {"store_password": STORE_PASSWORD}
    PASSWORD_KEYS: ClassVar[tuple[str, ...]] = ("store",)

    agents: int = Field(3, ge=0, description="Local agents to start.")
    data_dir: Path = Field(Path("./data"), description="Data folder.")
    store: str | None = Field(None, description="Store URL (default: SQLite in the data folder).")
    store_password_file: Path | None = Field(
        None,
        description="File (0600) holding the PostgreSQL password (else FLEETCMD_STORE_PASSWORD).",
    )
    host: str = Field("127.0.0.1", description="Address every role binds.")
    indexer_port: int = Field(9200, ge=1, le=65535, description="Indexer port.")
    management_port: int = Field(55000, ge=1, le=65535, description="Management API port.")
    comms_port: int = Field(27000, ge=1, le=65535, description="Comms API port.")
    content: bool = Field(True, description="Run the content manager.")
    feed: str | None = Field(None, description="CTI feed folder or URL (default: the sample).")
    trust_key: list[Path] = Field([], description="Public keys of the feed and packages.")
    content_interval: float = Field(60.0, ge=0.1, description="Seconds between feed polls.")


ROLES: dict[str, type[RoleSettings]] = {
    m.ROLE: m
    for m in (IndexerSettings, ServerSettings, ContentManagerSettings, AgentSettings, UpSettings)
}

# Private keys: refused when group or others may read them, like the secrets.
PRIVATE_KEYS = ("tls_key", "command_key")
# Files that must exist when named.
FILES = ("tls_cert", "ca")


def check_config(path: Path) -> tuple[str, list[str]]:
    """`fleetcmd config check FILE`: the role the file configures and every problem found —
    unknown keys, bad values, and files it names that are missing or readable by others.
    The environment is left out: this checks the file."""
    read_table(path)  # one table, valid TOML
    role = next(iter(tomllib.loads(path.read_text())))
    model = ROLES.get(role)
    if model is None:
        return role, [f"{path}: [{role}] is no role; known: {', '.join(ROLES)}"]
    try:
        settings = model.load(path, environ={})
    except ConfigError as exc:
        return role, exc.problems
    problems = []
    secret_files = {spec.file_key for spec in model.SECRETS.values()}
    for key in model.model_fields:
        value = getattr(settings, key)
        if not isinstance(value, Path):
            continue
        what = f"{role}.{key} (from {path})"
        if key in secret_files or key in PRIVATE_KEYS:
            try:
                check_private(value, key.replace("_", " "))
            except FileNotFoundError:
                if key not in ("command_key",):  # made on first start
                    problems.append(f"{what}: no file at {value}")
            except ValueError as exc:
                problems.append(f"{what}: {exc}")
        elif key in FILES and not value.is_file():
            problems.append(f"{what}: no file at {value}")
    return role, problems
