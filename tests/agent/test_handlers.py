"""Handlers and hot configuration: R1 (config_ref fetch), R2 (hot apply), R5 (removal)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from fleetcmd.agent import handlers
from fleetcmd.agent.handlers import Context, execute
from fleetcmd.model.config import config_hash

from .conftest import Sent

# The smallest valid policy and response definition (docs/content.md).
POLICY = {
    "id": "cis-1",
    "version": "1",
    "name": "t",
    "checks": [
        {
            "id": "1",
            "title": "root exists",
            "condition": "all",
            "rules": [{"type": "dir_exists", "path": "/"}],
        }
    ],
}
DEFINITION = {
    "name": "block-ip",
    "version": "1",
    "executable": "block-ip",
    "arguments": ["add", "{0}"],
    "allowed_arguments": [r"[0-9.]+"],
    "timeout": 10,
}


def command(name: str, args: dict, cid: int = 1, timeout: float = 10) -> dict:
    return {"id": cid, "action": {"name": name, "version": 1, "args": args}, "timeout": timeout}


def set_groups(groups: list[str], config: dict, cid: int = 1, **extra: object) -> dict:
    return command(
        "set-groups",
        {"groups": groups, "config": config, "config_hash": config_hash(config), **extra},
        cid,
    )


@pytest.mark.req("R2")
def test_set_groups_hot_applies_and_reports_the_hash(ctx: Context) -> None:
    config = {"sca": {"enabled": True, "interval": 600}, "log_level": "debug"}
    r = execute(ctx, set_groups(["default", "web"], config))
    assert r.status == "success", r.message
    assert r.data["groups"] == ["default", "web"]
    assert r.data["config_hash"] == config_hash(config)
    assert ctx.sca.interval == 600
    saved = json.loads(ctx.state_dir.state_path.read_text())
    assert saved["groups"] == ["default", "web"] and saved["config"] == config
    assert saved["config_hash"] == config_hash(config)
    assert stat.S_IMODE(os.stat(ctx.state_dir.state_path).st_mode) == 0o600


def test_a_hash_mismatch_applies_nothing(ctx: Context) -> None:
    cmd = set_groups(["web"], {"sca": {"enabled": False}})
    cmd["action"]["args"]["config_hash"] = "0" * 64
    r = execute(ctx, cmd)
    assert r.status == "failure" and "hash mismatch" in r.message
    assert ctx.sca.enabled and ctx.applied.groups == []


def test_an_invalid_configuration_applies_nothing(ctx: Context) -> None:
    r = execute(ctx, set_groups(["web"], {"sca": {"enabled": "no"}, "log_level": "debug"}))
    assert r.status == "failure" and "sca.enabled" in r.message
    assert ctx.applied.groups == [] and ctx.modules.by_section["log_level"].describe() == {
        "level": "info"
    }


@pytest.mark.req("R1")
def test_config_ref_is_fetched_from_the_server(ctx: Context, sent: Sent) -> None:
    config = {"inventory": {"enabled": False}}
    sent.configs["a,b"] = config
    r = execute(
        ctx,
        command(
            "set-groups",
            {
                "groups": ["a", "b"],
                "config_ref": {"groups": ["a", "b"], "hash": config_hash(config)},
                "config_hash": config_hash(config),
            },
        ),
    )
    assert r.status == "success", r.message
    assert sent.fetched == [["a", "b"]]
    assert ctx.modules.by_section["inventory"].describe()["enabled"] is False


@pytest.mark.req("R5")
def test_disabling_sca_removes_stored_policies(ctx: Context) -> None:
    assert (
        execute(
            ctx, command("sca-policy", {"policy_id": "cis-1", "policy": POLICY, "delete": False})
        ).status
        == "success"
    )
    assert (ctx.state_dir.sca_dir / "cis-1.json").exists()
    r = execute(ctx, set_groups(["web"], {"sca": {"enabled": False}}, cid=2))
    assert r.status == "success"
    assert ctx.sca.policies() == []
    assert any("removed policies cis-1" in c for c in r.data["changes"])
    # and new policies are refused while SCA is disabled
    r = execute(
        ctx,
        command("sca-policy", {"policy_id": "cis-2", "policy": {**POLICY, "id": "cis-2"}}, cid=3),
    )
    assert r.status == "failure" and "disabled" in r.message
    assert ctx.sca.policies() == []


@pytest.mark.req("R5")
def test_disabling_active_response_removes_definitions(ctx: Context) -> None:
    r = execute(
        ctx,
        command(
            "ar-config",
            {"group": "web", "name": "block-ip", "definition": DEFINITION, "enabled": True},
        ),
    )
    assert r.status == "success" and ctx.active_response.definitions() == ["block-ip"]
    execute(
        ctx,
        command(
            "apply-group-config",
            {
                "group": "web",
                "version": 2,
                "groups": ["web"],
                "config": {"active_response": {"enabled": False}},
                "config_hash": config_hash({"active_response": {"enabled": False}}),
            },
            cid=2,
        ),
    )
    assert ctx.active_response.definitions() == []


@pytest.mark.req("R2")
def test_hot_apply_keeps_the_same_process(ctx: Context) -> None:
    pid = os.getpid()
    for i, level in enumerate(["debug", "warning", "info"]):
        r = execute(ctx, set_groups(["web"], {"log_level": level}, cid=i))
        assert r.status == "success"
    assert os.getpid() == pid
    assert ctx.modules.by_section["log_level"].describe() == {"level": "info"}


def test_apply_group_config_refuses_a_group_it_is_not_in(ctx: Context) -> None:
    r = execute(
        ctx,
        command(
            "apply-group-config",
            {
                "group": "db",
                "version": 1,
                "groups": ["web"],
                "config": {},
                "config_hash": config_hash({}),
            },
        ),
    )
    assert r.status == "failure" and "'db'" in r.message


def test_rename_and_delete(ctx: Context) -> None:
    r = execute(ctx, command("rename", {"name": "web-01", "previous": "a1"}))
    assert r.status == "success" and r.data == {"name": "web-01"}
    assert json.loads(ctx.state_dir.state_path.read_text())["name"] == "web-01"
    r = execute(ctx, command("delete", {}, cid=2))
    assert r.status == "success" and r.data == {"deleted": True} and ctx.removing


def test_sca_policy_delete_and_ar_removal(ctx: Context) -> None:
    execute(ctx, command("sca-policy", {"policy_id": "p1", "policy": {**POLICY, "id": "p1"}}))
    r = execute(ctx, command("sca-policy", {"policy_id": "p1", "delete": True}, cid=2))
    assert r.status == "success" and r.data["existed"] is True and ctx.sca.policies() == []
    r = execute(ctx, command("ar-config", {"group": "g", "name": "x", "enabled": False}, cid=3))
    assert r.status == "success" and r.data["existed"] is False


def test_content_names_cannot_escape_their_folder(ctx: Context) -> None:
    r = execute(ctx, command("sca-policy", {"policy_id": "../../credentials", "policy": {}}))
    assert r.status == "failure" and "invalid name" in r.message


def test_unknown_action_fails(ctx: Context) -> None:
    r = execute(ctx, command("reboot", {}))
    assert r.status == "failure" and "unknown" in r.message


def test_execution_has_the_command_timeout(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        handlers.HANDLERS, "rename", (handlers.a.Rename, lambda c, a: time.sleep(2) or {})
    )
    start = time.monotonic()
    r = execute(ctx, command("rename", {"name": "x"}, timeout=0.2))
    assert r.status == "failure" and r.code == handlers.TIMED_OUT
    assert time.monotonic() - start < 1.5


def test_inventory_is_sent_on_its_interval(ctx: Context, sent: Sent) -> None:
    ctx.modules.tick(1000.0)
    ctx.modules.tick(1001.0)
    assert len(sent.inventories) == 1
    ctx.modules.tick(1000.0 + 3600)
    assert len(sent.inventories) == 2


def test_dpkg_inventory_lists_installed_packages_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleetcmd.agent.modules.inventory import dpkg_packages

    status = tmp_path / "status"
    status.write_text(
        "Package: bash\nStatus: install ok installed\nVersion: 5.2-1\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: curl\nStatus: install ok installed\nVersion: 8.5\n"
    )
    assert dpkg_packages(status) == [
        {"name": "bash", "version": "5.2-1", "source": "dpkg"},
        {"name": "curl", "version": "8.5", "source": "dpkg"},
    ]
    assert dpkg_packages(tmp_path / "missing") == []
