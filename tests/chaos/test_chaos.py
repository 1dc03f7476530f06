"""A short seeded chaos round on each store: every fault kind once against the whole system
(indexer, two servers, content manager, real agents, simulated agents, a webhook subscriber
made to fall behind while the indexer is killed), then every invariant.

PostgreSQL is never restarted here (other test runs share it): that fault is only in
`fleetcmd bench chaos --restart-postgres`. The full-disk fault needs root (a tmpfs); without it
the round says it was skipped. Waits are generous; nothing here measures time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetcmd_lab.chaos.faults import KINDS
from fleetcmd_lab.chaos.runner import ChaosConfig, run
from support import PG_DSN, need_pg

SEED = int(os.environ.get("FLEETCMD_CHAOS_SEED", "20261126"))


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_short_chaos_round_breaks_nothing(store_kind: str, tmp_path: Path) -> None:
    if store_kind == "postgres":
        need_pg()
    lines: list[str] = []
    cfg = ChaosConfig(
        seed=SEED,
        store="sqlite" if store_kind == "sqlite" else PG_DSN,
        duration=0,  # every applicable kind once
        agents=3,
        sims=10,
        lease=3.0,
        task_timeout=30.0,
        root=tmp_path / "run",
        drain_timeout=120.0,
        task_interval=1.0,
        disk_mb=64,
        scale=0.5,
    )
    result = run(cfg, say=lines.append)
    print("\n".join(lines))
    print(result.to_json())
    expected = {k for k in KINDS if k != "restart-postgres"}
    if store_kind == "postgres":
        expected.discard("disk-full")
    missing = expected - set(result.faults) - set(result.skipped)
    assert not missing, f"fault kinds not injected: {missing}"
    if store_kind == "sqlite" and os.geteuid() == 0:
        assert result.faults["disk-full"] == 1, "as root the full-disk fault must run"
    # the webhook subscriber was behind when the indexer was killed, and is judged
    assert "every final command and audit entry delivered" in result.report.checks
    sub = result.report.figures["subscriber"]
    assert sub["final_commands"] > 0 and sub["events_unique"] >= sub["final_commands"]
    assert result.figures["subscriber_lag_at_kill"], result.figures
    assert result.figures["subscriber_at_end"]["lag"] == 0, result.figures
    assert result.violations == [], (
        f"seed {SEED}: {len(result.violations)} violation(s) "
        f"(replay: FLEETCMD_CHAOS_SEED={SEED}); evidence in {result.root}:\n"
        + "\n".join(result.violations[:20])
    )
