"""Configuration files with real processes (issue 19.2): the precedence a role applies, a
loose secret file refused, and no secret on the command line of any process `fleetcmd up`
starts, on both stores."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from support import FLEETCMD, Role, free_port, wait_http, wait_until


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_indexer_takes_flag_over_environment_over_file(tmp_path: Path) -> None:
    p_file, p_env, p_flag = free_port(), free_port(), free_port()
    config = tmp_path / "indexer.toml"
    config.write_text(f'[indexer]\nport = {p_file}\ndata_dir = "{tmp_path / "data"}"\n')
    cases = [([], {}, p_file), ([], {"FLEETCMD_INDEXER_PORT": str(p_env)}, p_env)]
    cases.append((["--port", str(p_flag)], {"FLEETCMD_INDEXER_PORT": str(p_env)}, p_flag))
    for n, (flags, env, port) in enumerate(cases):
        role = Role(f"indexer-{n}", ["indexer", "--config", str(config), *flags], tmp_path, env)
        role.start()
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc=role.proc)
            assert [p for p in (p_file, p_env, p_flag) if _health(p)] == [port]
        finally:
            role.stop()


def test_config_check_and_a_role_name_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "server.toml"
    key = tmp_path / "enrollment.key"
    key.write_text("k" * 20)
    os.chmod(key, 0o644)
    bad.write_text(
        f'[server]\nindexer = "http://127.0.0.1:1"\ncoms_port = 1\nenrollment_key_file = "{key}"\n'
    )
    r = subprocess.run([*FLEETCMD, "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "server.coms_port" in r.stderr and "unknown option" in r.stderr
    bad.write_text(f'[server]\nindexer = "http://127.0.0.1:1"\nenrollment_key_file = "{key}"\n')
    r = subprocess.run([*FLEETCMD, "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "server.enrollment_key_file" in r.stderr, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "FLEETCMD_ENROLLMENT_KEY"}
    r = subprocess.run(
        [*FLEETCMD, "server", "--config", str(bad), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "FLEETCMD_TOKEN": "t"},
    )
    assert r.returncode == 2 and "mode 0644" in r.stderr and "chmod 600" in r.stderr, r.stderr


def descendants(root: int) -> list[int]:
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_no_secret_on_the_command_line_of_any_process_up_starts(
    store_kind: str, store_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    password = "pw-" + secrets.token_hex(8)  # trust authentication ignores it; it must not leak
    config = tmp_path / "up.toml"
    ports = {k: free_port() for k in ("indexer", "management", "comms")}
    config.write_text(
        "[up]\nagents = 2\ncontent = true\ncontent_interval = 3600\n"
        f'data_dir = "{data}"\nindexer_port = {ports["indexer"]}\n'
        f"management_port = {ports['management']}\ncomms_port = {ports['comms']}\n"
        + (f'store = "{store_url}"\n' if store_kind == "postgres" else "")
    )
    env = {**os.environ, "FLEETCMD_STORE_PASSWORD": password}
    out = tmp_path / "up.out"
    proc = subprocess.Popen(
        [*FLEETCMD, "up", "--config", str(config)],
        stdout=open(out, "wb"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: "fleetcmd is up." in out.read_text() or proc.poll() is not None,
            120,
            interval=0.2,
            what="fleetcmd up",
        )
        assert proc.poll() is None, out.read_text()
        pids = wait_until(
            lambda: (p := descendants(proc.pid)) and len(p) >= 5 and p, 30, what="the roles"
        )
        values = {
            "node credential": (data / "node.token").read_text().strip(),
            "enrollment key": (data / "enrollment.key").read_text().strip(),
            "token signing key": (data / "comms-jwt.key").read_text().strip(),
            "admin password": (data / "admin.password").read_text().strip(),
        }
        if store_kind == "postgres":
            values["store password"] = password
            indexer_config = (data / "run" / "indexer.toml").read_text()
            assert password in indexer_config  # handed over in the 0600 file instead
            assert (data / "run" / "indexer.toml").stat().st_mode & 0o077 == 0
        seen = []
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            except OSError:
                continue
            seen.append(cmdline.replace("\0", " "))
            for what, value in values.items():
                assert value not in cmdline, f"{what} on the command line of {cmdline[:200]}"
        assert sum(" agent " in f" {c} " or "fleetcmd.agent" in c for c in seen) == 2, seen
        assert any(" indexer --config " in c for c in seen), seen
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
