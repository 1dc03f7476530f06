"""Active response on the agent: definitions (row 10), execution (row 11) and its refusals,
the bundled responses, and their removal when active response is disabled (R5)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fleetcmd.agent.handlers import TIMED_OUT, Context, execute
from fleetcmd.content.sample import SAMPLE_SOURCE


def command(name: str, args: dict[str, Any], cid: int = 1, timeout: float = 30) -> dict[str, Any]:
    return {"id": cid, "action": {"name": name, "version": 1, "args": args}, "timeout": timeout}


def sample(name: str) -> dict[str, Any]:
    return dict(json.loads((SAMPLE_SOURCE / "active-response" / f"{name}.json").read_text()))


def configure(ctx: Context, name: str, definition: dict[str, Any]) -> None:
    r = execute(
        ctx,
        command(
            "ar-config", {"group": "web", "name": name, "definition": definition, "enabled": True}
        ),
    )
    assert r.status == "success", r.message


def run(ctx: Context, name: str, arguments: Any, cid: int = 2) -> Any:
    return execute(
        ctx,
        command("ar-execute", {"name": name, "arguments": arguments, "reason": "rule 100101"}, cid),
    )


def script(ctx: Context, exe: str, body: str) -> Path:
    """An operator-provided response in the agent's bin folder."""
    ctx.active_response.install_bundled()  # what the agent does at start
    path = ctx.state_dir.ar_bin_dir / exe
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o700)
    return path


@pytest.mark.req("C10", "C11")
def test_block_ip_from_the_sample_feed_runs_for_real(ctx: Context) -> None:
    configure(ctx, "block-ip", sample("block-ip"))
    assert (ctx.state_dir.ar_bin_dir / "block-ip").exists()
    r = run(ctx, "block-ip", ["203.0.113.7"])
    assert r.status == "success", r.message
    assert r.data["exit_code"] == 0 and r.data["argv"] == ["block-ip", "add", "203.0.113.7"]
    assert "added 203.0.113.7 to the deny list" in r.data["stdout"]
    deny = ctx.state_dir.ar_lists_dir / "deny-ip.txt"
    assert deny.read_text() == "203.0.113.7\n"
    assert run(ctx, "block-ip", ["203.0.113.7"], cid=3).status == "success"
    assert deny.read_text() == "203.0.113.7\n"  # idempotent


@pytest.mark.req("C11")
def test_an_unknown_definition_is_refused(ctx: Context) -> None:
    r = run(ctx, "block-ip", ["203.0.113.7"])
    assert r.status == "failure" and "no active response 'block-ip'" in r.message
    assert not (ctx.state_dir.ar_lists_dir / "deny-ip.txt").exists()
    r = run(ctx, "../../bin/sh", ["x"])
    assert r.status == "failure" and "invalid name" in r.message


@pytest.mark.req("C11")
@pytest.mark.parametrize("executable", ["../../../bin/sh", "/bin/sh", "sub/dir", ".."])
def test_an_executable_outside_the_bin_folder_is_refused(ctx: Context, executable: str) -> None:
    r = execute(
        ctx,
        command(
            "ar-config",
            {
                "group": "web",
                "name": "evil",
                "enabled": True,
                "definition": {**sample("block-ip"), "name": "evil", "executable": executable},
            },
        ),
    )
    assert r.status == "failure" and "bare file name" in r.message
    # and one stored behind the agent's back is refused at execution too
    ctx.state_dir.put_content(
        ctx.state_dir.ar_dir,
        "evil",
        {**sample("block-ip"), "name": "evil", "executable": executable},
    )
    r = run(ctx, "evil", ["203.0.113.7"])
    assert r.status == "failure" and "bare file name" in r.message


@pytest.mark.req("C11")
def test_links_and_files_writable_by_others_are_refused(ctx: Context, tmp_path: Path) -> None:
    configure(ctx, "block-ip", sample("block-ip"))
    exe = ctx.state_dir.ar_bin_dir / "block-ip"
    exe.unlink()
    outside = tmp_path / "outside.sh"
    outside.write_text("#!/bin/sh\necho pwned\n")
    outside.chmod(0o700)
    exe.symlink_to(outside)
    r = run(ctx, "block-ip", ["203.0.113.7"])
    assert r.status == "failure" and "links are refused" in r.message
    exe.unlink()
    script(ctx, "block-ip", "echo hi").chmod(0o777)
    r = run(ctx, "block-ip", ["203.0.113.7"], cid=3)
    assert r.status == "failure" and "writable by others" in r.message


@pytest.mark.req("C11")
@pytest.mark.parametrize(
    "arguments",
    [
        ["203.0.113.7; rm -rf /"],
        ["$(reboot)"],
        ["203.0.113.7", "extra"],
        ["-f"],
        [7],
        "1.2.3.4",
    ],
)
def test_arguments_must_match_the_allowed_patterns(ctx: Context, arguments: Any) -> None:
    configure(ctx, "block-ip", sample("block-ip"))
    r = run(ctx, "block-ip", arguments)
    assert r.status == "failure"
    assert any(w in r.message for w in ("not allowed", "at most", "must be"))
    assert not (ctx.state_dir.ar_lists_dir / "deny-ip.txt").exists()


def test_a_missing_argument_is_refused(ctx: Context) -> None:
    configure(ctx, "block-ip", sample("block-ip"))
    r = run(ctx, "block-ip", [])
    assert r.status == "failure" and "needs argument 0" in r.message


@pytest.mark.req("C11")
def test_a_response_past_its_timeout_is_killed(ctx: Context) -> None:
    script(ctx, "slow", "echo started; sleep 30")
    configure(
        ctx,
        "slow",
        {
            "name": "slow",
            "version": "1",
            "executable": "slow",
            "arguments": [],
            "allowed_arguments": [],
            "timeout": 0.5,
        },
    )
    r = run(ctx, "slow", [])
    assert r.status == "failure" and r.code == TIMED_OUT and "timed out" in r.message
    assert r.data["timed_out"] is True and r.data["exit_code"] is None
    assert "started" in r.data["stdout"]


def test_exit_code_and_capped_output_are_reported(ctx: Context) -> None:
    script(ctx, "noisy", "head -c 200000 /dev/zero | tr '\\0' x; echo oops >&2; exit 3")
    configure(ctx, "noisy", {"name": "noisy", "version": "1", "executable": "noisy", "timeout": 10})
    r = run(ctx, "noisy", [])
    assert r.status == "failure" and "exited with code 3" in r.message
    assert r.data["exit_code"] == 3 and r.data["truncated"] is True
    assert len(r.data["stdout"]) == 32 * 1024 and r.data["stderr"] == "oops\n"


def test_the_response_gets_a_minimal_environment_and_no_shell(ctx: Context) -> None:
    os.environ["FLEETCMD_SECRET_FOR_TEST"] = "leak"
    try:
        script(ctx, "env", 'env; echo "args:$1"')
        configure(
            ctx,
            "env",
            {
                "name": "env",
                "version": "1",
                "executable": "env",
                "arguments": ["{0}"],
                "allowed_arguments": [".*"],
            },
        )
        r = run(ctx, "env", ["$(id) `id` ; id"])
    finally:
        del os.environ["FLEETCMD_SECRET_FOR_TEST"]
    assert r.status == "success", r.message
    assert "leak" not in r.data["stdout"] and "FLEETCMD_AR_LISTS=" in r.data["stdout"]
    assert "args:$(id) `id` ; id" in r.data["stdout"]  # passed literally, nothing expanded


def test_disabled_active_response_refuses_executions(ctx: Context) -> None:
    configure(ctx, "block-ip", sample("block-ip"))
    ctx.modules.apply({"active_response": {"enabled": False}})
    r = run(ctx, "block-ip", ["203.0.113.7"])
    assert r.status == "failure" and "disabled" in r.message


@pytest.mark.req("R5", "C10")
def test_disabling_active_response_removes_definitions_and_scripts(ctx: Context) -> None:
    configure(ctx, "block-ip", sample("block-ip"))
    configure(ctx, "disable-account", sample("disable-account"))
    script(ctx, "custom", "true")
    ctx.modules.apply({"active_response": {"enabled": False}})
    assert ctx.active_response.definitions() == []
    assert list(ctx.state_dir.ar_bin_dir.iterdir()) == []
    # enabled again: the bundled scripts come back, the definitions come with ar-config
    ctx.modules.apply({"active_response": {"enabled": True}})
    assert sorted(p.name for p in ctx.state_dir.ar_bin_dir.iterdir()) == [
        "block-ip",
        "disable-account",
        "firewall-drop",
    ]


@pytest.mark.req("C10")
def test_invalid_definitions_are_refused_and_removal_works(ctx: Context) -> None:
    for bad, why in [
        (
            {"executable": "x", "arguments": ["{1}"], "allowed_arguments": ["a"]},
            "template uses {1}",
        ),
        ({"executable": "x", "allowed_arguments": ["("]}, "bad pattern"),
        ({"executable": "x", "timeout": 3600}, "timeout"),
        ({"executable": "x", "name": "other"}, "says name"),
    ]:
        r = execute(ctx, command("ar-config", {"group": "g", "name": "x", "definition": bad}))
        assert r.status == "failure" and why in r.message, (bad, r.message)
    assert ctx.active_response.definitions() == []
    configure(ctx, "block-ip", sample("block-ip"))
    r = execute(
        ctx, command("ar-config", {"group": "g", "name": "block-ip", "enabled": False}, cid=9)
    )
    assert r.status == "success" and r.data["existed"] is True
    assert ctx.active_response.definitions() == []
