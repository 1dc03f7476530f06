"""Agent-side security with real processes on both stores (issue 5): enrollment keys rotated
and revoked, a deleted agent's token refused on every node, rate limits, body limits, signed
commands refused by a real agent, TLS on all three APIs."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.indexer.signing import CommandSigner
from server.harness import ENROLLMENT_KEY, JWT_KEY, Server, file_task, task_final
from support import FLEETCMD, Indexer, Role, free_port, store_url_for, wait_until

STORES = ["sqlite", "postgres"]


@contextmanager
def system(
    kind: str, tmp: Path, servers: int = 1, server_extra: list[str] | None = None
) -> Iterator[tuple[Indexer, list[Server]]]:
    with store_url_for(kind, tmp) as url:
        idx = Indexer(url, tmp / "indexer").start()
        nodes: list[Server] = []
        try:
            for i in range(servers):
                nodes.append(Server(idx, tmp / f"server{i}", extra=server_extra).start())
            yield idx, nodes
        finally:
            for r in [*nodes, idx]:
                r.kill(signal.SIGKILL)
                print(f"----- {r.name} log (tail) -----\n{r.log()[-3000:]}")


def enroll(comms: str, key: str, name: str) -> httpx.Response:
    return httpx.post(
        f"{comms}/agents/enroll",
        json={"enrollment_key": key, "name": name, "version": "1.0.0"},
        timeout=10,
    )


def agent_role(srv: Server, tmp: Path, name: str, *extra: str) -> tuple[Role, Path]:
    state = tmp / name
    role = Role(
        name,
        [
            "agent",
            "--server",
            srv.comms,
            "--enrollment-key",
            ENROLLMENT_KEY,
            "--name",
            name,
            "--state-dir",
            str(state),
            *extra,
        ],
        tmp,
    ).start()
    return role, state


def credentials(state: Path) -> dict[str, str]:
    return dict(
        wait_until(
            lambda: (
                (state / "credentials.json").exists()
                and json.loads((state / "credentials.json").read_text())
            ),
            30,
            what="agent enrolled",
        )
    )


@pytest.mark.parametrize("kind", STORES)
def test_enrollment_keys_rotate_revoke_expire(kind: str, tmp_path: Path) -> None:
    with system(kind, tmp_path) as (idx, [srv]):
        api = srv.admin()
        [configured] = api.get("/security/enrollment-keys").json()["data"]["items"]
        assert configured["source"] == "configured" and configured["state"] == "active"
        assert httpx.get(f"{srv.api}/security/enrollment-keys").status_code == 401

        r = api.post("/security/enrollment-keys", json={"description": "laptops"})
        assert r.status_code == 201, r.text
        k1 = r.json()["data"]
        assert k1["key"].startswith(f"fek1.{k1['id']}.") and "hash" not in k1
        ok = enroll(srv.comms, k1["key"], "with-k1")
        assert ok.status_code == 201, ok.text
        agent = api.get(f"/agents/{ok.json()['data']['id']}").json()["data"]
        assert agent["info"]["enrollment_key"] == k1["id"]

        revoked = api.delete(f"/security/enrollment-keys/{k1['id']}")
        assert revoked.json()["data"]["state"] == "revoked"
        refused = enroll(srv.comms, k1["key"], "after-revoke")
        assert refused.status_code == 401 and "revoked" in refused.json()["message"]

        # Rotation with a grace period: old and new both work until the old one expires.
        k2 = api.post("/security/enrollment-keys", json={}).json()["data"]
        r = api.post(f"/security/enrollment-keys/{k2['id']}/rotate", json={"grace": 3600})
        assert r.status_code == 201, r.text
        k3 = r.json()["data"]
        assert k3["replaces"]["id"] == k2["id"] and k3["replaces"]["replaced_by"] == k3["id"]
        assert enroll(srv.comms, k2["key"], "old-in-grace").status_code == 201
        assert enroll(srv.comms, k3["key"], "rotated").status_code == 201
        # Without grace the old key stops at once.
        k4 = api.post(f"/security/enrollment-keys/{k3['id']}/rotate", json={"grace": 0}).json()[
            "data"
        ]
        assert enroll(srv.comms, k3["key"], "too-late").status_code == 401
        assert enroll(srv.comms, k4["key"], "newest").status_code == 201

        short = api.post("/security/enrollment-keys", json={"expires_in": 0.5}).json()["data"]
        expired = wait_until(
            lambda: (r := enroll(srv.comms, short["key"], "short")).status_code == 401 and r,
            10,
            what="key expiry",
        )
        assert "expired" in expired.json()["message"]

        states = {
            k["id"]: k["state"]
            for k in api.get("/security/enrollment-keys").json()["data"]["items"]
        }
        assert states[k1["id"]] == "revoked" and states[k3["id"]] == "revoked"
        assert states[k4["id"]] == "active" and states[short["id"]] == "expired"
        bad = [
            api.post("/security/enrollment-keys", json={"expires_in": -1}),
            api.post("/security/enrollment-keys", json={"nope": 1}),
            api.delete("/security/enrollment-keys/no-such-key"),
            api.delete("/security/enrollment-keys/..%2F..%2Fetc"),
        ]
        assert [b.status_code for b in bad[:3]] == [422, 422, 404]
        assert bad[3].status_code in (404, 422)  # never reaches a file or document
        assert all(b.json()["error"] for b in bad)

        trail = idx.client().get("/audit", params={"actor": "admin"}).json()["data"]["items"]
        done = [(r["action"], r["target"]) for r in trail if r["action"].startswith("enroll")]
        assert {
            ("enrollment-key.create", k1["id"]),
            ("enrollment-key.revoke", k1["id"]),
            ("enrollment-key.rotate", k2["id"]),
            ("enrollment-key.rotate", k3["id"]),
        } <= set(done)
        assert all(
            r["address"] == "127.0.0.1" for r in trail if r["action"].startswith("enrollment-key.")
        )
        refusals = (
            idx.client()
            .get("/audit", params={"action": "agent.enroll", "outcome": "failure"})
            .json()["data"]["items"]
        )
        assert {r["details"]["name"] for r in refusals} >= {"after-revoke", "too-late"}

        # The key `fleetcmd up` and the tests start with can be revoked too, and stays so.
        assert enroll(srv.comms, ENROLLMENT_KEY, "configured-ok").status_code == 201
        api.delete(f"/security/enrollment-keys/{configured['id']}").raise_for_status()
        assert enroll(srv.comms, ENROLLMENT_KEY, "configured-revoked").status_code == 401
        srv.kill(signal.SIGTERM)
        srv.start()
        assert enroll(srv.comms, ENROLLMENT_KEY, "after-restart").status_code == 401


@pytest.mark.req("C14")
@pytest.mark.parametrize("kind", STORES)
def test_a_deleted_agents_token_is_refused_on_every_node(kind: str, tmp_path: Path) -> None:
    with system(kind, tmp_path, servers=2) as (idx, [a, b]):
        role, state = agent_role(a, tmp_path, "doomed")
        creds = credentials(state)
        api = a.admin()
        wait_until(
            lambda: api.get(f"/agents/{creds['id']}").json()["data"]["status"] == "active",
            30,
            what="agent connected",
        )
        # A token of the same agent from the other node, taken while it was enrolled.
        tok = httpx.post(f"{b.comms}/agents/authenticate", json=creds).json()["data"]["token"]
        other = httpx.Client(base_url=b.comms, headers={"Authorization": f"Bearer {tok}"})
        assert other.get("/agents/init").status_code == 200

        task = file_task(api, "agent-deletion", {"agent": creds["id"]})
        assert task_final(api, task["id"], timeout=60)["status"] == "success"
        assert role.proc is not None and role.proc.wait(30) == 0
        assert not (state / "credentials.json").exists()
        # The node that did not handle the deletion refuses the token too.
        r = wait_until(
            lambda: (r := other.get("/agents/init")).status_code == 403 and r,
            15,
            what="token refused on the other node",
        )
        assert r.json()["error"] == "agent_removed"
        for srv in (a, b):
            r = httpx.post(f"{srv.comms}/agents/authenticate", json=creds)
            assert r.status_code == 403 and r.json()["error"] == "agent_removed"
        [gone] = (
            idx.client().get("/audit", params={"action": "agent.remove"}).json()["data"]["items"]
        )
        assert gone["target"] == creds["id"] and gone["node"] == a.node_id
        print(role.log()[-2000:])


# Rate limits live in the server's memory; the store plays no part: one store is enough.
@pytest.mark.parametrize("kind", ["sqlite"])
def test_rate_limits_answer_429_and_the_agent_waits(kind: str, tmp_path: Path) -> None:
    with system(kind, tmp_path, server_extra=["--enroll-rate", "0.2", "--auth-rate", "0.5"]) as (
        _,
        [srv],
    ):
        codes = [enroll(srv.comms, "wrong", f"x{i}").status_code for i in range(6)]
        assert codes == [401] * 5 + [429], codes
        r = enroll(srv.comms, ENROLLMENT_KEY, "limited")
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1 and r.json()["message"]
        auth = [
            httpx.post(
                f"{srv.comms}/agents/authenticate", json={"id": "nobody", "secret": "s"}
            ).status_code
            for _ in range(6)
        ]
        assert auth == [401] * 5 + [429], auth
        # A real agent told to wait does, then enrolls.
        role, state = agent_role(srv, tmp_path, "patient")
        try:
            credentials(state)
            assert "retrying in" in role.log() and "429" in role.log()
        finally:
            role.kill(signal.SIGTERM)
            print(role.log()[-2000:])


def _raw(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("kind", STORES)
def test_oversized_bodies_get_413_on_all_three_apis(kind: str, tmp_path: Path) -> None:
    with system(kind, tmp_path) as (idx, [srv]):
        for url, path in ((idx.url, "/tasks"), (srv.api, "/tasks"), (srv.comms, "/agents/enroll")):
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {10**10}\r\n\r\n"
            ).encode()
            status, body = _raw(url, head)
            assert status == 413 and body["error"] == "payload_too_large", (url, body)

        # Without a length (chunked): refused once the stream passes the limit.
        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b" " * 65536

        r = httpx.post(
            f"{srv.comms}/agents/enroll",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


@pytest.mark.parametrize("kind", STORES)
def test_a_real_agent_refuses_commands_not_signed_by_its_key(kind: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    elsewhere = tmp_path / "other-key.pub"
    CommandSigner(Ed25519PrivateKey.generate()).write_public(elsewhere)
    with system(kind, tmp_path) as (idx, [srv]):
        keys = httpx.get(f"{idx.url}/command-keys").json()["data"]
        assert (idx.data_dir / "command-keys.pub").read_text().count(keys["current"]["public"])
        assert oct((idx.data_dir / "command-signing.key").stat().st_mode & 0o777) == "0o600"
        good, good_state = agent_role(srv, tmp_path, "pinned")
        given, given_state = agent_role(
            srv, tmp_path, "explicit", "--command-key", str(idx.data_dir / "command-keys.pub")
        )
        wrong, wrong_state = agent_role(
            srv, tmp_path, "misconfigured", "--command-key", str(elsewhere)
        )
        try:
            ids = [credentials(s)["id"] for s in (good_state, given_state, wrong_state)]
            api = srv.admin()
            for aid in ids:
                wait_until(
                    lambda aid=aid: api.get(f"/agents/{aid}").json()["data"]["status"] == "active",
                    30,
                    what="agent connected",
                )
            results = {}
            for aid in ids:
                task = file_task(api, "agent-rename", {"agent": aid, "name": f"r-{aid}"})
                task_final(api, task["id"], timeout=60)
                [cmd] = [
                    c
                    for c in api.get("/commands", params={"task_id": task["id"]}).json()["data"][
                        "items"
                    ]
                    if c["target"]["type"] == "agent"
                ]
                results[aid] = cmd
            assert results[ids[0]]["status"] == "success"
            assert results[ids[1]]["status"] == "success"
            bad = results[ids[2]]
            assert bad["status"] == "failure", bad
            assert bad["result"]["data"] == {"refused": "bad signature"}
            assert "does not trust" in bad["result"]["message"]
            pinned = json.loads((good_state / "command-keys.json").read_text())
            assert list(pinned["keys"]) == [keys["current"]["id"]]
        finally:
            for r in (good, given, wrong):
                r.kill(signal.SIGTERM)
                print(r.log()[-1500:])


# TLS is the processes' listeners; the store plays no part: one store is enough.
@pytest.mark.parametrize("kind", ["sqlite"])
def test_all_three_apis_over_tls_with_a_real_agent(kind: str, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    out = subprocess.run(
        [*FLEETCMD, "certs", str(certs)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    ca = str(certs / "ca.pem")
    tls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem")]
    with store_url_for(kind, tmp_path) as url:
        port, comms, mgmt = free_port(), free_port(), free_port()
        idx = Role(
            "indexer-tls",
            [
                "indexer",
                "--port",
                str(port),
                "--store",
                url,
                "--data-dir",
                str(tmp_path / "indexer"),
                *tls,
            ],
            tmp_path,
            env={"FLEETCMD_TOKEN": "tls-node-token"},
        ).start()
        srv = Role(
            "server-tls",
            [
                "server",
                "--indexer",
                f"https://127.0.0.1:{port}",
                "--data-dir",
                str(tmp_path / "server"),
                "--comms-port",
                str(comms),
                "--management-port",
                str(mgmt),
                "--ca",
                ca,
                *tls,
            ],
            tmp_path,
            env={
                "FLEETCMD_TOKEN": "tls-node-token",
                "FLEETCMD_ENROLLMENT_KEY": ENROLLMENT_KEY,
                "FLEETCMD_JWT_KEY": JWT_KEY,
            },
        ).start()
        agent = None
        try:
            for u in (
                f"https://127.0.0.1:{port}/health",
                f"https://127.0.0.1:{comms}/health",
                f"https://localhost:{mgmt}/health",
            ):
                wait_until(lambda u=u: _ok(u, ca), 30, what=u)
            # Plain HTTP is not served, and an unknown CA is refused by clients.
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{comms}/health", timeout=3)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"https://127.0.0.1:{comms}/health", timeout=3)
            state = tmp_path / "tls-agent"
            agent = Role(
                "tls-agent",
                [
                    "agent",
                    "--server",
                    f"https://127.0.0.1:{comms}",
                    "--enrollment-key",
                    ENROLLMENT_KEY,
                    "--name",
                    "tls-1",
                    "--state-dir",
                    str(state),
                    "--ca",
                    ca,
                ],
                tmp_path,
            ).start()
            aid = credentials(state)["id"]
            password = (tmp_path / "server" / "admin.password").read_text().strip()
            tok = httpx.post(
                f"https://127.0.0.1:{mgmt}/security/user/authenticate",
                auth=("admin", password),
                verify=_ctx(ca),
            ).json()["data"]["token"]
            api = httpx.Client(
                base_url=f"https://127.0.0.1:{mgmt}",
                verify=_ctx(ca),
                timeout=30,
                headers={"Authorization": f"Bearer {tok}"},
            )
            wait_until(
                lambda: api.get(f"/agents/{aid}").json()["data"]["status"] == "active",
                30,
                what="agent connected over TLS",
            )
            task = file_task(api, "agent-rename", {"agent": aid, "name": "tls-renamed"})
            assert task_final(api, task["id"], timeout=60)["status"] == "success"
            wait_until(
                lambda: json.loads((state / "state.json").read_text())["name"] == "tls-renamed",
                10,
                what="renamed over TLS",
            )
        finally:
            for r in (agent, srv, idx):
                if r is not None:
                    r.kill(signal.SIGTERM)
                    print(f"----- {r.name} -----\n{r.log()[-2000:]}")


def _ctx(ca: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def _ok(url: str, ca: str | None = None) -> bool:
    try:
        return httpx.get(url, verify=_ctx(ca), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_fleetcmd_up_binds_loopback_and_keeps_secrets_out_of_logs(tmp_path: Path) -> None:
    """A full run: up with an agent, a login, a task, a new enrollment key; then no secret
    appears in any log."""
    data = tmp_path / "up"
    ports = {"indexer": free_port(), "management": free_port(), "comms": free_port()}
    proc = subprocess.Popen(
        [
            *FLEETCMD,
            "up",
            "--agents",
            "1",
            "--data-dir",
            str(data),
            "--no-content",
            "--indexer-port",
            str(ports["indexer"]),
            "--management-port",
            str(ports["management"]),
            "--comms-port",
            str(ports["comms"]),
        ],
        stdout=open(tmp_path / "up.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        api_url = f"http://127.0.0.1:{ports['management']}"
        wait_until(lambda: _ok(f"{api_url}/health"), 90, what="fleetcmd up")
        state = data / "agents" / "local-agent-1"
        creds = credentials(state)
        password = (data / "admin.password").read_text().strip()
        r = httpx.post(f"{api_url}/security/user/authenticate", auth=("admin", password))
        user_token = r.json()["data"]["token"]
        api = httpx.Client(
            base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {user_token}"}
        )
        wait_until(
            lambda: api.get(f"/agents/{creds['id']}").json()["data"]["status"] == "active",
            60,
            what="local agent connected",
        )
        task = file_task(api, "agent-rename", {"agent": creds["id"], "name": "renamed-up"})
        assert task_final(api, task["id"], timeout=60)["status"] == "success"
        new_key = api.post("/security/enrollment-keys", json={}).json()["data"]["key"]
        agent_token = httpx.post(
            f"http://127.0.0.1:{ports['comms']}/agents/authenticate", json=creds
        ).json()["data"]["token"]
        # Loopback only: the ports are not bound on any other address.
        assert all(_bound_only_on_loopback(p) for p in ports.values())
        # Agents were given the indexer's public key file (no trust on first use).
        assert not (state / "command-keys.json").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    secrets_ = {
        "enrollment key": (data / "enrollment.key").read_text().strip(),
        "node token": (data / "node.token").read_text().strip(),
        "jwt key": (data / "comms-jwt.key").read_text().strip(),
        "admin password": password,
        "agent secret": creds["secret"],
        "user token": user_token,
        "agent token": agent_token,
        "new enrollment key": new_key,
        "command-signing key": "".join(
            (data / "command-signing.key").read_text().splitlines()[1:-1]
        ),
    }
    logs = {p.name: p.read_text(errors="replace") for p in (data / "logs").glob("*.log")}
    logs["up.log"] = (tmp_path / "up.log").read_text(errors="replace")
    assert len(logs) >= 4 and ": rename" in logs["local-agent-1.log"]
    for what, value in secrets_.items():
        assert len(value) >= 16, what
        for name, text in logs.items():
            assert value not in text, f"{what} appears in {name}"


def _bound_only_on_loopback(port: int) -> bool:
    """Every listening socket on `port` is bound to 127.0.0.1 (from /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":  # LISTEN
                found.append(addr)
    return bool(found) and all(a == "0100007F" for a in found)


def test_no_shell_anywhere() -> None:
    """No code path hands a string to a shell: every process is an argument vector."""
    src = Path(__file__).resolve().parents[2] / "src"
    hits = []
    for path in src.rglob("*.py"):
        text = path.read_text()
        for needle in (
            "shell=True",
            "os.system(",
            "os.popen(",
            "create_subprocess_shell",
            "subprocess.getoutput",
            "subprocess.getstatusoutput",
        ):
            if needle in text:
                hits.append(f"{path.relative_to(src)}: {needle}")
    assert hits == []


@pytest.mark.parametrize("kind", STORES)
def test_command_key_rotation_with_real_agents(kind: str, tmp_path: Path) -> None:
    """`fleetcmd command-key next` then `promote`, the indexer restarted each time: an agent
    that pinned the old key and one given the key file both run commands signed by the new
    key, without being restarted or re-configured."""
    with system(kind, tmp_path) as (idx, [srv]):
        pinned, pinned_state = agent_role(srv, tmp_path, "rot-pinned")
        filed, filed_state = agent_role(
            srv, tmp_path, "rot-file", "--command-key", str(idx.data_dir / "command-keys.pub")
        )
        api = srv.admin()
        ids = [credentials(s)["id"] for s in (pinned_state, filed_state)]
        for aid in ids:
            wait_until(
                lambda aid=aid: api.get(f"/agents/{aid}").json()["data"]["status"] == "active",
                30,
                what="agent connected",
            )

        def rename_all(suffix: str) -> list[str]:
            out = []
            for aid in ids:
                task = file_task(api, "agent-rename", {"agent": aid, "name": f"{aid}-{suffix}"})
                out.append(task_final(api, task["id"], timeout=60)["status"])
            return out

        try:
            old = httpx.get(f"{idx.url}/command-keys").json()["data"]["current"]["id"]
            assert rename_all("before") == ["success", "success"]
            for step in ("next", "promote"):
                out = subprocess.run(
                    [*FLEETCMD, "command-key", step, "--data-dir", str(idx.data_dir)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert out.returncode == 0, out.stderr
                idx.kill(signal.SIGTERM)
                idx.start()
            keys = httpx.get(f"{idx.url}/command-keys").json()["data"]
            new = keys["current"]["id"]
            assert new != old and keys["current"]["endorsed_by"] == old
            assert rename_all("after") == ["success", "success"]
            trusted = json.loads((pinned_state / "command-keys.json").read_text())["keys"]
            assert set(trusted) == {old, new}
        finally:
            for r in (pinned, filed):
                r.kill(signal.SIGTERM)
                print(r.log()[-2000:])


@pytest.mark.parametrize("kind", STORES)
def test_indexers_of_one_store_with_different_command_keys_are_reported(
    kind: str, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleetcmd.indexer.signing import record_key
    from fleetcmd.model import command_signature as cs
    from fleetcmd.store import open_store

    with store_url_for(kind, tmp_path) as url:
        store = open_store(url)
        try:
            old = Ed25519PrivateKey.generate()
            first = CommandSigner(old)
            assert record_key(store, first) is None
            assert record_key(store, CommandSigner(old)) is None  # the same key elsewhere
            stranger = CommandSigner(Ed25519PrivateKey.generate())
            assert record_key(store, stranger) == first.key_id
            new = Ed25519PrivateKey.generate()
            pub = cs.public_base64(new.public_key())
            promoted = CommandSigner(
                new,
                endorsement={
                    "by": first.key_id,
                    "sig": cs.sign(old, cs.endorsement_statement(pub)),
                },
            )
            assert record_key(store, promoted) is None  # a promotion replaces the record
            assert record_key(store, first) == promoted.key_id
        finally:
            store.close()
