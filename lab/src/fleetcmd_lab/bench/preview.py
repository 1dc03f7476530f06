"""preview: `POST /tasks/preview`'s work for N agents (the task manager's `preview`: the
selector compiled to SQL, the matches frozen into a target set, the counts by status, group,
node and version and the first page), for a few selectors, and filing a task from the token."""

from __future__ import annotations

import time
from typing import Any

from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.targets import AgentScope
from fleetcmd.store.base import SqlStore
from fleetcmd_lab.bench.common import report, scratch_store

GROUPS = ("web", "db", "edge", "batch")
VERSIONS = ("1.8.2", "1.9.0", "1.10.1", "2.0.0")
SELECTORS = (
    "all",
    "group = web",
    "group = web and version < 1.10 and not label.env = prod",
    "(status = active or last_seen < 1h) and name = host-00*7",
)


def fill(store: SqlStore, n: int) -> float:
    """N agents spread over groups, versions, nodes, statuses and an `env` label."""
    started = time.perf_counter()
    batch = 50_000
    now = time.time()
    for lo in range(0, n, batch):
        part = range(lo, min(n, lo + batch))
        store.register_agents(
            [
                {
                    "id": f"agent-{i:07d}",
                    "name": f"host-{i:07d}",
                    "groups": [GROUPS[i % len(GROUPS)]],
                    "version": VERSIONS[(i // 4) % len(VERSIONS)],
                    "info": {"os": "Linux", "arch": "x86_64"},
                }
                for i in part
            ]
        )
        store.update_agents(
            [
                {
                    "id": f"agent-{i:07d}",
                    "status": "active" if i % 3 else "disconnected",
                    "node": f"node-{i % 4}",
                    "last_seen": now - (i % 7200),
                }
                for i in part
            ]
        )
        with store.transaction() as tx:
            tx.many(
                "INSERT INTO agent_labels (agent_id, key, value) VALUES (:a, 'env', :v)",
                [{"a": f"agent-{i:07d}", "v": "prod" if (i // 8) % 2 else "dev"} for i in part],
            )
    return time.perf_counter() - started


def run(agents: int, store_url: str | None, quiet: bool = False) -> dict[str, Any]:
    with scratch_store(store_url) as store:
        return _run(store, agents, quiet)


def _run(store: SqlStore, agents: int, quiet: bool) -> dict[str, Any]:
    kind = store.url.split(":", 1)[0]
    fill_seconds = fill(store, agents)
    tm = TaskManager(store)
    figures: dict[str, Any] = {"fill_seconds": round(fill_seconds, 2), "target_seconds": 1.0}
    worst = 0.0
    token, matched = "", 0
    for i, selector in enumerate(SELECTORS):
        req = TaskRequest("vulnerability-rescan", {"selector": selector}, user="bench")
        started = time.perf_counter()
        out = tm.preview(req, ttl=900.0)
        seconds = time.perf_counter() - started
        worst = max(worst, seconds)
        figures[f"selector_{i}"] = {
            "selector": selector,
            "seconds": round(seconds, 4),
            "matched": out["total"],
        }
        if i == 1:
            token, matched = out["preview_token"], out["total"]
    scoped = TaskRequest(
        "vulnerability-rescan", {"selector": "all"}, user="bench", scope=AgentScope((), ("db",))
    )
    started = time.perf_counter()
    out = tm.preview(scoped, ttl=900.0)
    figures["scoped_all"] = {
        "seconds": round(time.perf_counter() - started, 4),
        "matched": out["total"],
        "excluded_by_rbac": out["excluded_by_rbac"],
    }
    started = time.perf_counter()
    task, _ = tm.submit(
        TaskRequest(
            "vulnerability-rescan", {"selector": "group = web"}, user="bench", preview_token=token
        )
    )
    file_seconds = time.perf_counter() - started
    reached = sum(store.counts("task", task.id).values())
    assert reached == matched, (reached, matched)
    figures.update(
        worst_preview_seconds=round(worst, 4),
        file_from_token_seconds=round(file_seconds, 4),
        filed_commands=reached,
    )
    return report("preview", kind, {"agents": agents}, figures, quiet=quiet)
