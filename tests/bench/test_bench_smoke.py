"""Each benchmark once at a tiny size, so the benchmark code cannot rot (figures are not
asserted against targets: timing belongs to `fleetcmd bench`, not to tests). Scenarios that
start real processes run on one store each to keep this file fast; `make bench` runs every
scenario on both."""

from __future__ import annotations

import json

import pytest

from fleetcmd_lab.bench import (
    backlog,
    delivery,
    events,
    fanout,
    footprint,
    latency,
    multinode,
    preview,
    storm,
)
from support import PG_DSN, need_haproxy, need_pg


def _json_line(out: str, name: str) -> dict:
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    found = [x for x in lines if x["name"] == name]
    assert found, out
    return found[-1]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_fanout_runs_and_reports(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "postgres":
        need_pg()
    line = fanout.run(300, None if kind == "sqlite" else PG_DSN)
    assert line["figures"]["children"] == 300
    assert line["figures"]["fanout_seconds"] > 0 and line["figures"]["raw_insert_seconds"] > 0
    assert _json_line(capsys.readouterr().out, "fanout")["params"] == {"agents": 300}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_preview_runs_and_reports(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "postgres":
        need_pg()
    line = preview.run(400, None if kind == "sqlite" else PG_DSN)
    f = line["figures"]
    assert f["selector_0"]["matched"] == 400 and f["selector_1"]["matched"] == 100
    assert f["filed_commands"] == 100 and f["scoped_all"]["excluded_by_rbac"] == 300
    assert _json_line(capsys.readouterr().out, "preview")["params"] == {"agents": 400}


def test_delivery_records_every_result(capsys: pytest.CaptureFixture[str]) -> None:
    line = delivery.run(20, None)
    f = line["figures"]
    assert f["counts"] == {"success": 20}
    assert f["results_at_agents"] == 20 and f["duplicates_at_agents"] == 0
    assert f["server_rss_peak_mb"] > 0 and f["seconds_to_all_results"] > 0
    assert _json_line(capsys.readouterr().out, "delivery")["store"] == "sqlite"


def test_storm_restarts_the_server_and_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    line = storm.run(30, None, kill_at=0, timeout=120)
    f = line["figures"]
    assert f["task_status"] == "success" and f["counts"] == {"success": 30}
    assert f["results_at_agents"] == 30
    assert f["reconnect_seconds_all_polling"] is not None
    assert f["agents_polling_at_most"] == 30 and f["probes_unanswered"] == 0
    assert f["failed_requests_per_agent"] >= 1  # every agent saw its server go away
    assert _json_line(capsys.readouterr().out, "storm")["params"]["agents"] == 30


def test_latency_measures_each_task(capsys: pytest.CaptureFixture[str]) -> None:
    need_pg()
    line = latency.run(5, PG_DSN)
    f = line["figures"]
    assert 0 < f["delivered_p50_ms"] <= f["delivered_max_ms"]
    assert f["delivered_p50_ms"] <= f["result_p50_ms"]
    assert _json_line(capsys.readouterr().out, "latency")["store"] == "postgresql"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_events_bench_pushes_the_backlog_and_times_latency_behind_it(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "postgres":
        need_pg()
    # 20 events a batch, 2 s each: the slow subscriber cannot catch up on 300 during the run
    line = events.run(300, 3, None if kind == "sqlite" else PG_DSN, batch=20, slow_delay=2.0)
    f = line["figures"]
    assert f["commands"] == 300 and f["events"] > 300  # + the parent's and the task's
    pushed = f["push"]
    assert pushed["events"] == f["events"] and pushed["batches"] >= f["events"] / 20
    assert pushed["in_order"] and pushed["bad_signatures"] == 0 and pushed["events_per_second"] > 0
    assert f["latency_p50_ms_no_subscriber"] > 0 and f["latency_p50_ms_slow_subscriber"] > 0
    lag_start, lag_end = f["slow_subscriber_lag_start_end"]
    assert lag_start >= f["events"] and lag_end > 0  # behind from start to end
    assert f["ratio_p50_slow_to_none"] > 0 and f["catching_up_received"] > 0
    assert _json_line(capsys.readouterr().out, "events")["params"]["agents"] == 300


def test_backlog_compares_and_retention_empties_it(capsys: pytest.CaptureFixture[str]) -> None:
    line = backlog.run(commands=1500, agents=20, tasks=2, store_url=None)
    f = line["figures"]
    assert f["retention_commands_removed"] == 1500 and f["retention_tasks_removed"] == 1
    assert f["fanout_seconds_empty"] > 0 and f["fanout_seconds_backlog"] > 0
    assert f["latency_p50_ms_backlog"] > 0 and f["latency_p50_ms_during_retention"] > 0
    assert f["upkeep"] == "SQLite: nothing to vacuum"
    assert _json_line(capsys.readouterr().out, "backlog")["params"]["commands"] == 1500


def test_agent_footprint_reads_proc(capsys: pytest.CaptureFixture[str]) -> None:
    # 10 changes: ~4 ms of CPU each, so the total spans several clock ticks (/proc counts
    # CPU time in 10-ms ticks: two changes could read 0 on a fast host)
    line = footprint.run(idle=0.5, changes=10, store_url=None)
    f = line["figures"]
    assert 0 < f["idle_rss_mb"] <= f["peak_rss_mb"]
    assert f["changes_cpu_seconds"] > 0 and f["threads"] >= 1
    assert _json_line(capsys.readouterr().out, "footprint")["params"]["changes"] == 10


def test_multinode_counts_duplicates_and_losses(capsys: pytest.CaptureFixture[str]) -> None:
    need_pg()
    line = multinode.run(agents=20, tasks=2, store_url=PG_DSN)
    f = line["figures"]
    assert f["commands_expected"] == 40
    assert f["losses"] == 0 and f["duplicates_at_agents"] == 0
    assert sum(f["commands_by_server"].values()) == 40 and len(f["commands_by_server"]) == 2
    assert _json_line(capsys.readouterr().out, "multinode")["store"] == "postgresql"


def test_topology_bench_kills_a_server_and_an_indexer_behind_haproxy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleetcmd_lab.bench import topology

    need_pg()
    need_haproxy()
    f = topology.run(agents=20, store_url=PG_DSN)["figures"]
    assert f["losses"] == 0
    for phase in ("all_up", "server_killed", "indexer_killed"):
        assert f[phase]["status"] == "success" and f[phase]["losses"] == 0, f
    assert set(f["agents_by_node_after"]) == {"bench-server-0", "bench-server-1"} - {
        f["server_killed"]["node"]
    }
    assert f["results_posted_by_agents"] == 60
    assert _json_line(capsys.readouterr().out, "topology")["store"] == "postgresql"


def test_rollout_bench_runs_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    from fleetcmd_lab.bench import rollout

    line = rollout.run(40, None, wave_percent=50, pause=0.5, spread=0.5, canary_percent=5)
    figures = line["figures"]
    assert figures["rollout_state"] == "completed" and figures["succeeded"] == 40
    assert figures["wave_sizes"] == [2, 20, 18]
    assert '"name": "rollout"' in capsys.readouterr().out
