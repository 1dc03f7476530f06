"""Exports (issue 18.2): a task's commands and results, and the audit trail over a time range,
as NDJSON and CSV, streamed through the Management API, the CLI and the dashboard; on both
stores. A real indexer and server; 2,500 agents registered straight into the indexer (never
connected) and two played with httpx, so the task has results to export and spans several
of the export's keyset pages (1,000 rows each)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from server.harness import FakeAgent, dashboard_page, file_task, fleet, login, task_final
from support import wait_until

AUDIT_COLUMNS = ("id", "at", "actor", "action", "outcome", "address", "target", "node", "details")
AGENTS = 2_500
PW = "export-reader-password"
COLUMNS = [
    "id",
    "task_id",
    "parent_id",
    "source",
    "user",
    "target_type",
    "target_id",
    "action",
    "status",
    "result_code",
    "result_message",
    "result_data",
    "created_at",
    "sent_at",
    "delivered_at",
    "completed_at",
    "attempts",
    "expanded",
]


def walk_commands(api: httpx.Client, task_id: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"task_id": task_id, "limit": 5000}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/commands", params=params).json()["data"]
        out += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


def streamed(api: httpx.Client, path: str, **params: Any) -> tuple[httpx.Response, bytes]:
    with api.stream("GET", path, params=params) as r:
        chunks = list(r.iter_bytes())
    return r, b"".join(chunks)


def test_task_and_audit_export(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        admin = srv.admin()
        started = time.time()
        with idx.client() as ic:
            r = ic.post(
                "/agents",
                json={
                    "agents": [
                        {"id": f"quiet{i:05d}", "name": f"quiet-{i:05d}", "groups": ["big"]}
                        for i in range(AGENTS)
                    ]
                },
                timeout=120,
            )
            assert r.status_code == 200, r.text
        live = [FakeAgent(srv.comms, f"live-{i}", groups=["big"]) for i in range(2)]
        task = file_task(
            admin,
            "group-configuration-change",
            {"group": "big", "configuration": {"log_level": "debug"}},
        )
        tid = task["id"]
        wait_until(
            lambda: admin.get(f"/tasks/{tid}").json()["data"]["total"] == AGENTS + 2,
            timeout=60,
            what="the task expanded",
        )
        for agent in live:
            wait_until(lambda a=agent: a.run_once(wait=2), timeout=30, what=f"{agent.name} ran")
        wait_until(
            lambda: admin.get(f"/tasks/{tid}").json()["data"]["counts"].get("success") == 2,
            timeout=30,
            what="two results recorded",
        )
        admin.post(f"/tasks/{tid}/cancel")  # the quiet agents' commands end cancelled
        task_final(admin, tid)
        expected = walk_commands(admin, tid)
        assert len(expected) == AGENTS + 3  # the parent and its children

        # NDJSON: the command documents as GET /commands has them, in id order, each once.
        r, body = streamed(admin, f"/tasks/{tid}/export", format="ndjson")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert f'filename="task-{tid}-commands.ndjson"' in r.headers["content-disposition"]
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert lines == expected
        successes = [c for c in lines if c["status"] == "success"]
        assert {c["target"]["id"] for c in successes} == {a.id for a in live}
        assert all(c["result"]["data"]["config_hash"] for c in successes)

        # CSV: one flattened row per command; JSON in the result data cells.
        r, body = streamed(admin, f"/tasks/{tid}/export", format="csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows[0] == COLUMNS
        assert [int(row[0]) for row in rows[1:]] == [c["id"] for c in expected]
        by_id = {int(row[0]): dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]}
        for c in successes:
            row = by_id[c["id"]]
            assert row["status"] == "success" and row["target_id"] == c["target"]["id"]
            assert json.loads(row["result_data"]) == c["result"]["data"]
            assert row["completed_at"] == c["completed_at"]
        cancelled = [row for row in by_id.values() if row["status"] == "cancelled"]
        assert sum(1 for row in cancelled if row["expanded"] == "false") == AGENTS
        assert by_id[expected[0]["id"]]["parent_id"] == ""
        assert by_id[expected[0]["id"]]["expanded"] == "true"

        # Bad input is a 4xx JSON answer saying what is wrong, before any row is sent.
        r = admin.get(f"/tasks/{tid}/export", params={"format": "xml"})
        assert r.status_code == 422 and "format" in r.text
        r = admin.get("/tasks/999999/export")
        assert r.status_code == 404 and r.json()["error"]
        # RBAC as reading the task: a reader scoped to another group may not export it.
        assert admin.put(
            "/security/roles/web-readers",
            json={
                "policies": [
                    {
                        "actions": ["task:read", "command:read"],
                        "resources": ["agent:group:web"],
                    }
                ]
            },
        ).is_success
        assert admin.post(
            "/security/users",
            json={"name": "webreader", "password": PW, "roles": ["web-readers"]},
        ).is_success
        scoped = login(srv.api, "webreader", PW)
        r = scoped.get(f"/tasks/{tid}/export")
        assert r.status_code == 403 and r.json()["error"] == "forbidden"

        # The CLI writes the same bytes to a file (renamed into place when complete).
        out = tmp_path / "export.csv"
        cli = [
            str(Path(sys.executable).parent / "fleetcmd"),
            "task",
            "export",
            str(tid),
            "--format",
            "csv",
            "-o",
            str(out),
            "--api",
            srv.api,
            "--data-dir",
            str(srv.data_dir),
        ]
        env = {k: v for k, v in os.environ.items() if k != "FLEETCMD_PASSWORD"}
        done = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == body
        assert not out.with_name("export.csv.part").exists()
        bad = subprocess.run(
            [*cli[:3], "999999", *cli[4:]], capture_output=True, text=True, timeout=60, env=env
        )
        assert bad.returncode == 1 and "HTTP 404" in bad.stderr

        # The dashboard's download buttons stream the same export with the session's user.
        page = dashboard_page(admin, f"/app/tasks/{tid}")
        assert f'href="/app/tasks/{tid}/export?format=csv"' in page.text
        download = dashboard_page(admin, f"/app/tasks/{tid}/export?format=csv")
        assert download.status_code == 200 and download.content == body
        assert dashboard_page(scoped, f"/app/tasks/{tid}/export?format=csv").status_code == 403

        # The audit trail over a time range, oldest first, every record of it once.
        until = time.time()
        time.sleep(0.05)
        admin.get(f"/tasks/{tid}/export", params={"format": "csv"})  # after `until`
        trail = []
        cursor = None
        while True:
            params: dict[str, Any] = {"since": started, "until": until, "limit": 7}
            if cursor:
                params["cursor"] = cursor
            page_ = admin.get("/audit", params=params).json()["data"]
            trail += page_["items"]
            cursor = page_["next_cursor"]
            if not cursor:
                break
        trail.reverse()
        assert {"task.create", "task.cancel", "task.export"} <= {t["action"] for t in trail}
        r, body = streamed(admin, "/audit/export", format="ndjson", since=started, until=until)
        assert r.status_code == 200
        exported = [json.loads(line) for line in body.decode().splitlines()]
        assert exported == trail
        assert all(started <= t["at"] < until for t in exported)
        r, body = streamed(
            admin, "/audit/export", format="csv", since=started, until=until, action="task.*"
        )
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows[0] == [
            "id",
            "at",
            "actor",
            "action",
            "outcome",
            "address",
            "target",
            "node",
            "details",
        ]
        assert [int(row[0]) for row in rows[1:]] == [
            t["id"] for t in trail if t["action"].startswith("task.")
        ]
        assert scoped.get("/audit/export").status_code == 403  # audit:read on a group only
        r = admin.get("/audit/export", params={"since": "yesterday"})
        assert r.status_code == 422
        audit_download = dashboard_page(admin, "/app/audit/export?format=ndjson&action=task.*")
        assert audit_download.status_code == 200
        assert all(
            json.loads(line)["action"].startswith("task.")
            for line in audit_download.text.splitlines()
        )
