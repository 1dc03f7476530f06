"""SCA scans: the verdicts, a scan's summary, and the `sca-results` document.

The agent computes the summary it keeps and reports; the server computes the same one from
the reported check results when it writes the index, so both read from here. Import-light
(no pydantic): the agent imports it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PASSED, FAILED, NOT_APPLICABLE = "passed", "failed", "not_applicable"
VERDICTS = (PASSED, FAILED, NOT_APPLICABLE)
RESULTS_INDEX = "sca-results"


def summarize(verdicts: Iterable[str]) -> dict[str, Any]:
    """Counts per verdict and the score over the checks that apply: None when none does
    (not "0 %": nothing failed)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    applicable = counts[PASSED] + counts[FAILED]
    score = round(100 * counts[PASSED] / applicable) if applicable else None
    return {
        "pass": counts[PASSED],
        "fail": counts[FAILED],
        "na": counts[NOT_APPLICABLE],
        "score": score,
    }


def result_id(agent_id: str, policy_id: str) -> str:
    """One document per agent and policy: the latest scan replaces the previous one."""
    return f"{agent_id}/{policy_id}"


def result_document(agent_id: str, scan: dict[str, Any], received_at: float) -> dict[str, Any]:
    """`sca-results/<agent>/<policy>` from a reported scan (`policy_id`, `policy_name`,
    `policy_version`, `evaluated_at`, `results`: one `{id, title, status, reason}` per check)."""
    checks = list(scan["results"])
    summary = summarize(c["status"] for c in checks)
    return {
        "agent": agent_id,
        "policy_id": scan["policy_id"],
        "policy_name": scan.get("policy_name") or scan["policy_id"],
        "policy_version": scan.get("policy_version") or "",
        "scanned_at": scan.get("evaluated_at"),
        "received_at": received_at,
        "score": summary["score"],
        "passed": summary["pass"],
        "failed": summary["fail"],
        "not_applicable": summary["na"],
        "total": len(checks),
        "checks": checks,
    }
