"""`fleetcmd cti …` (publish a signed feed) and `fleetcmd content-manager` (consume one)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from fleetcmd.role_settings import ContentManagerSettings

cti_app = typer.Typer(help="Build and sign CTI feeds.", no_args_is_help=True)
content_app = typer.Typer(help="Talk to the running content manager.", no_args_is_help=True)

# In the data folder: the running content manager's pid, and the outcome of its last poll.
PID_FILE = "content-manager.pid"
POLL_FILE = "content-poll.json"


@cti_app.command("keygen")
def keygen(keyfile: Annotated[Path, typer.Argument(help="Private key to write (0600).")]) -> None:
    """Write a new ed25519 signing key (PEM, 0600) and KEYFILE.pub (PEM)."""
    from fleetcmd.model import content_signing as signing

    if keyfile.exists():
        raise typer.BadParameter(f"{keyfile} exists; refusing to overwrite a signing key")
    private = signing.generate_key(keyfile)
    public = private.public_key()
    typer.echo(f"private key {keyfile} (0600), public key {signing.pub_path(keyfile)}")
    typer.echo(f"key id {signing.key_id(public)}; raw public key {signing.public_base64(public)}")


@cti_app.command("build")
def build(
    src: Annotated[Path, typer.Argument(help="Source folder (sca/, cve/, ruleset/, …).")],
    out: Annotated[Path, typer.Argument(help="Feed folder to write (servable as is).")],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (PEM).")],
    serial: Annotated[
        int | None, typer.Option(help="Manifest serial (default: the published one + 1).")
    ] = None,
    sample_package: Annotated[
        bool, typer.Option(help="Add this project as an agent package (sample feed).")
    ] = False,
) -> None:
    """Validate, copy and sign every content file of SRC into the feed folder OUT."""
    from fleetcmd.content import feed
    from fleetcmd.content.sample import build_sample_feed
    from fleetcmd.model import content_signing as signing

    try:
        if sample_package:
            manifest = build_sample_feed(out, key, serial=serial, source=src)
        else:
            manifest = feed.build(src, out, signing.load_private(key), serial=serial)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"feed {manifest.feed} serial {manifest.serial}: {len(manifest.items)} items signed "
        f"by key {manifest.key_id} into {out}"
    )


_CM = ContentManagerSettings.model_validate({})


def content_manager(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file with a \\[content-manager] table (docs/configuration.md)."),
    ] = None,
    indexer: Annotated[str, typer.Option(help="Indexer URL.")] = _CM.indexer,
    feed: Annotated[
        str | None,
        typer.Option(help="Feed folder or http(s) URL (default: the sample feed, dev key)."),
    ] = None,
    trust_key: Annotated[
        list[str] | None,
        typer.Option(help="Trusted public key: file (PEM/base64) or base64; repeat to rotate."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.1)] = _CM.interval,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default ./data).")] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File (0600) holding the node credential (default: FLEETCMD_TOKEN, else "
            "DATA_DIR/node.token)."
        ),
    ] = None,
    once: Annotated[bool, typer.Option(help="Poll once, print the report as JSON, exit.")] = False,
    log_level: Annotated[str, typer.Option()] = _CM.log_level,
) -> None:
    """Poll a signed CTI feed; update the content indexes and file unattended tasks."""
    from fleetcmd.content.feed import open_feed
    from fleetcmd.content.indexer_api import IndexerApi
    from fleetcmd.content.manager import ContentManager
    from fleetcmd.content.sample import sample_setup
    from fleetcmd.logsetup import setup_logging
    from fleetcmd.model import content_signing as signing
    from fleetcmd.settings import data_dir as make_dir
    from fleetcmd.settings import fail, settings_or_exit

    cfg = settings_or_exit(ContentManagerSettings, ctx, config)
    setup_logging(cfg.log_level)
    d = make_dir(cfg.data_dir)
    try:
        token = cfg.secret("token", d)
    except (OSError, ValueError) as exc:
        fail("content-manager", f"no FLEETCMD_TOKEN and no usable node credential: {exc}")
    assert token is not None
    feed, interval, indexer = cfg.feed, cfg.interval, cfg.indexer
    keys = list(cfg.trust_key)
    if feed is None:
        sample_dir, sample_pub = sample_setup(d)
        feed, keys = str(sample_dir), [*keys, str(sample_pub)]
        typer.echo(
            f"using the sample feed {sample_dir} signed with the DEVELOPMENT key "
            f"{d / 'cti-dev.key'} (never use it in production)"
        )
    if not keys:
        raise typer.BadParameter("--trust-key is required with --feed")
    try:
        trusted = signing.TrustedKeys(tuple(signing.load_public(k) for k in keys))
    except signing.BadKey as exc:
        raise typer.BadParameter(str(exc)) from None
    manager = ContentManager(
        IndexerApi(indexer, token), open_feed(feed), trusted, d / "content-state.json"
    )
    if once:
        typer.echo(json.dumps(manager.poll_once().to_json(), indent=2))
        return
    stop, wake = threading.Event(), threading.Event()

    def on_stop(*_: object) -> None:
        stop.set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGUSR1, lambda *_: wake.set())  # `fleetcmd content poll`
    pid_file = d / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    typer.echo(
        f"content manager: feed {feed}, trusted keys {', '.join(trusted.ids())}, "
        f"every {interval:g}s (now: `fleetcmd content poll --data-dir {d}`)"
    )
    try:
        manager.run(interval, stop, wake, d / POLL_FILE)
    finally:
        if pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()


@content_app.command("poll")
def poll_now(
    data_dir: Annotated[Path, typer.Option(help="The content manager's data folder.")] = Path(
        "./data"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the poll.")] = 120.0,
) -> None:
    """Make the running content manager poll its feed now; print what the poll did."""
    d = data_dir.resolve()
    try:
        pid = int((d / PID_FILE).read_text().strip())
        if b"content-manager" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            raise ProcessLookupError
        asked = time.time()
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        typer.echo(f"error: no content manager is running on {d}", err=True)
        raise typer.Exit(2) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = json.loads((d / POLL_FILE).read_text())
        except (OSError, ValueError):
            doc = {}
        if float(doc.get("started_at") or 0) >= asked:
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
            failed = "error" in doc or doc.get("report", {}).get("status") == "error"
            raise typer.Exit(1 if failed else 0)
        time.sleep(0.2)
    typer.echo(f"error: the content manager (pid {pid}) did not poll within {timeout:g}s", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cti_app, name="cti")
    app.add_typer(content_app, name="content")
    app.command("content-manager")(content_manager)
