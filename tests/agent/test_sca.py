"""The SCA evaluator (rule kinds, conditions, comparisons, not applicable) and the SCA module
(results stored and sent as events, schedule, rows 6 and 7), on files made in tmp."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetcmd.agent import sca_eval
from fleetcmd.agent.comms import CommsError
from fleetcmd.agent.handlers import Context, execute
from fleetcmd.agent.modules.sca import Sca
from fleetcmd.agent.sca_eval import FAILED, NOT_APPLICABLE, PASSED, Evaluator, parse_policy
from fleetcmd.agent.state import StateDir
from fleetcmd.content.sample import SAMPLE_SOURCE

from .conftest import Sent

PY = sys.executable


def check(
    rules: list[dict[str, Any]],
    condition: str = "all",
    requires: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "c1",
        "title": "t",
        "remediation": "fix it",
        "condition": condition,
        "rules": rules,
    }
    if requires is not None:
        doc["requires"] = requires
    return doc


def verdict(c: dict[str, Any], deadline: float | None = None) -> tuple[str, str]:
    policy = parse_policy({"id": "p", "version": "1", "checks": [c]}, "p")
    result = Evaluator(deadline).policy(policy).results[0]
    return result["status"], result["reason"]


def out(text: str, **extra: Any) -> dict[str, Any]:
    """A command_output rule whose command prints `text` (no shell: the interpreter's argv)."""
    return {"type": "command_output", "argv": [PY, "-c", f"print({text!r})"], **extra}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "conf").write_text("# comment\nPermitRootLogin no\nMaxAuthTries 4\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path


# -- rule kinds -----------------------------------------------------------------------------------
def test_file_exists(files: Path) -> None:
    assert verdict(check([{"type": "file_exists", "path": str(files / "conf")}]))[0] == PASSED
    status, reason = verdict(check([{"type": "file_exists", "path": str(files / "missing")}]))
    assert status == FAILED and "does not exist" in reason
    status, reason = verdict(check([{"type": "file_exists", "path": str(files / "dir")}]))
    assert status == FAILED and "not a regular file" in reason


def test_file_absent(files: Path) -> None:
    assert verdict(check([{"type": "file_absent", "path": str(files / "missing")}]))[0] == PASSED
    assert verdict(check([{"type": "file_absent", "path": str(files / "conf")}]))[0] == FAILED
    # a dangling link still names something at that path
    assert verdict(check([{"type": "file_absent", "path": str(files / "dangling")}]))[0] == FAILED


def test_dir_exists(files: Path) -> None:
    assert verdict(check([{"type": "dir_exists", "path": str(files / "dir")}]))[0] == PASSED
    assert verdict(check([{"type": "dir_exists", "path": str(files / "conf")}]))[0] == FAILED
    assert verdict(check([{"type": "dir_exists", "path": str(files / "missing")}]))[0] == FAILED


def test_file_contains_is_a_regex_search_over_the_file(files: Path) -> None:
    conf = str(files / "conf")
    status, reason = verdict(
        check(
            [{"type": "file_contains", "path": conf, "regex": r"(?m)^\s*PermitRootLogin\s+no\s*$"}]
        )
    )
    assert status == PASSED and "PermitRootLogin no" in reason
    assert (
        verdict(
            check(
                [
                    {
                        "type": "file_contains",
                        "path": conf,
                        "regex": r"(?m)^PasswordAuthentication no",
                    }
                ]
            )
        )[0]
        == FAILED
    )
    status, reason = verdict(
        check([{"type": "file_contains", "path": str(files / "missing"), "regex": "x"}])
    )
    assert status == FAILED and "does not exist" in reason


def test_command_output_regex() -> None:
    assert verdict(check([out("644", regex="^[0246][04][04]$")]))[0] == PASSED
    status, reason = verdict(check([out("666", regex="^[0246][04][04]$")]))
    assert status == FAILED and "'666' does not match" in reason


@pytest.mark.parametrize(
    ("output", "compare", "expected"),
    [
        ("365", "<= 365", PASSED),
        ("366", "<= 365", FAILED),
        ("4", "< 5", PASSED),
        ("5", "< 5", FAILED),
        ("6", "> 5", PASSED),
        ("5", ">= 5", PASSED),
        ("4", ">= 5", FAILED),
        ("0", "== 0", PASSED),
        ("1", "== 0", FAILED),
        ("1", "!= 0", PASSED),
        ("-2", "< -1", PASSED),
        ("1.5", ">= 1.5", PASSED),
        ("  99  ", "<= 100", PASSED),
        ("", "<= 365", FAILED),
        ("unlimited", "<= 365", FAILED),
        ("1\n2", "<= 365", FAILED),
    ],
)
def test_command_output_numeric_comparisons(output: str, compare: str, expected: str) -> None:
    status, reason = verdict(check([out(output, compare=compare)]))
    assert status == expected, reason
    if output.strip() in ("", "unlimited"):
        assert "is not a number" in reason


def test_a_command_is_run_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    # a shell would run the second command; an argv passes it as one literal argument
    rule = {"type": "command_output", "argv": ["/bin/echo", f"x; touch {marker}"], "regex": "touch"}
    assert verdict(check([rule]))[0] == PASSED
    assert not marker.exists()


def test_rules_that_cannot_be_evaluated_are_not_applicable(files: Path) -> None:
    status, reason = verdict(
        check([{"type": "command_output", "argv": ["/nonexistent/tool"], "regex": "x"}])
    )
    assert status == NOT_APPLICABLE and "not found" in reason
    status, reason = verdict(
        check(
            [out("x", regex="x", timeout=0.3) | {"argv": [PY, "-c", "import time; time.sleep(5)"]}]
        )
    )
    assert status == NOT_APPLICABLE and "timed out" in reason
    # an exhausted evaluation deadline (a command's timeout) runs nothing more
    status, reason = verdict(check([out("1", compare="== 1")]), deadline=time.monotonic() - 1)
    assert status == NOT_APPLICABLE and "deadline" in reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_permission_denied_is_not_applicable_never_passed(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_text("PermitEmptyPasswords yes\n")
    locked.chmod(0o000)
    try:
        status, reason = verdict(
            check(
                [
                    {
                        "type": "file_contains",
                        "path": str(locked / "f"),
                        "regex": "PermitEmptyPasswords yes",
                    }
                ],
                "none",
            )
        )
        assert status == NOT_APPLICABLE and "permission denied" in reason
    finally:
        locked.chmod(0o700)


# -- conditions and requirements ------------------------------------------------------------------
T = {"type": "dir_exists", "path": "/"}
F = {"type": "file_exists", "path": "/nonexistent/file"}


@pytest.mark.parametrize(
    ("condition", "rules", "expected"),
    [
        ("all", [T, T], PASSED),
        ("all", [T, F], FAILED),
        ("all", [F, T], FAILED),
        ("any", [F, T], PASSED),
        ("any", [F, F], FAILED),
        ("any", [T], PASSED),
        ("none", [F, F], PASSED),
        ("none", [F, T], FAILED),
        ("none", [T], FAILED),
    ],
)
def test_conditions(condition: str, rules: list[dict[str, Any]], expected: str) -> None:
    assert verdict(check(rules, condition))[0] == expected


def test_a_requirement_not_met_makes_the_check_not_applicable(files: Path) -> None:
    status, reason = verdict(
        check([F], requires=[{"type": "file_exists", "path": str(files / "no-sshd_config")}])
    )
    assert status == NOT_APPLICABLE and "requirement 1 not met" in reason
    assert (
        verdict(check([T], requires=[{"type": "file_exists", "path": str(files / "conf")}]))[0]
        == PASSED
    )


def test_summary_and_score() -> None:
    policy = parse_policy(
        {
            "id": "p",
            "version": "1",
            "checks": [
                {"id": "a", "condition": "all", "rules": [T]},
                {"id": "b", "condition": "all", "rules": [T]},
                {"id": "c", "condition": "all", "rules": [T]},
                {"id": "d", "condition": "all", "rules": [F], "remediation": "do it"},
                {"id": "e", "condition": "all", "rules": [T], "requires": [F]},
            ],
        },
        "p",
    )
    ev = Evaluator().policy(policy)
    assert ev.summary == {"pass": 3, "fail": 1, "na": 1, "score": 75}
    assert ev.results[3]["remediation"] == "do it" and "remediation" not in ev.results[0]
    only_na = parse_policy(
        {
            "id": "p",
            "version": "1",
            "checks": [{"id": "e", "condition": "all", "rules": [T], "requires": [F]}],
        },
        "p",
    )
    assert Evaluator().policy(only_na).summary == {"pass": 0, "fail": 0, "na": 1, "score": None}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checks": []}, "'checks'"),
        ({"checks": [{"id": "a", "condition": "most", "rules": [T]}]}, "'condition'"),
        ({"checks": [{"id": "a", "condition": "all", "rules": []}]}, "rules"),
        (
            {
                "checks": [
                    {"id": "a", "condition": "all", "rules": [{"type": "registry", "path": "/"}]}
                ]
            },
            "unknown rule type",
        ),
        (
            {
                "checks": [
                    {
                        "id": "a",
                        "condition": "all",
                        "rules": [{"type": "file_exists", "path": "etc/passwd"}],
                    }
                ]
            },
            "absolute",
        ),
        (
            {
                "checks": [
                    {
                        "id": "a",
                        "condition": "all",
                        "rules": [{"type": "file_contains", "path": "/x", "regex": "("}],
                    }
                ]
            },
            "bad regex",
        ),
        (
            {
                "checks": [
                    {
                        "id": "a",
                        "condition": "all",
                        "rules": [
                            {
                                "type": "command_output",
                                "argv": ["id"],
                                "regex": "x",
                                "compare": "< 1",
                            }
                        ],
                    }
                ]
            },
            "exactly one",
        ),
        (
            {
                "checks": [
                    {
                        "id": "a",
                        "condition": "all",
                        "rules": [{"type": "command_output", "argv": ["id"], "compare": "about 5"}],
                    }
                ]
            },
            "compare",
        ),
        (
            {
                "checks": [
                    {
                        "id": "a",
                        "condition": "all",
                        "rules": [{"type": "command_output", "argv": "id -u", "regex": "0"}],
                    }
                ]
            },
            "argv",
        ),
        (
            {
                "checks": [
                    {"id": "a", "condition": "all", "rules": [T]},
                    {"id": "a", "condition": "all", "rules": [T]},
                ]
            },
            "twice",
        ),
        ({"id": "other"}, "says id"),
    ],
)
def test_invalid_policies_are_refused(change: dict[str, Any], message: str) -> None:
    doc = {"id": "p", "version": "1", "checks": [{"id": "a", "condition": "all", "rules": [T]}]}
    with pytest.raises(sca_eval.PolicyError, match=message):
        parse_policy({**doc, **change}, "p")


def test_the_sample_feed_policies_evaluate_on_this_host() -> None:
    for path in sorted((SAMPLE_SOURCE / "sca").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        ev = Evaluator(time.monotonic() + 60).policy(parse_policy(doc, doc["id"]))
        assert len(ev.results) == len(doc["checks"])
        assert all(
            r["status"] in (PASSED, FAILED, NOT_APPLICABLE) and r["reason"] for r in ev.results
        )
    baseline = yaml.safe_load((SAMPLE_SOURCE / "sca" / "debian12-baseline.yaml").read_text())
    by_id = {r["id"]: r for r in Evaluator().policy(parse_policy(baseline, baseline["id"])).results}
    assert by_id["1.3"]["status"] == PASSED  # /tmp has its sticky bit on any sane host


# -- the module: results, events, schedule --------------------------------------------------------
def policy_doc(pid: str = "p1", version: str = "1", path: str = "/nonexistent/x") -> dict[str, Any]:
    return {
        "id": pid,
        "version": version,
        "name": "test policy",
        "checks": [
            {"id": "ok", "title": "root exists", "condition": "all", "rules": [T]},
            {
                "id": "x",
                "title": "x exists",
                "condition": "all",
                "rules": [{"type": "file_exists", "path": path}],
                "remediation": "create x",
            },
        ],
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.req("C6")
def test_a_stored_policy_is_evaluated_kept_and_sent(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    sca = Sca(StateDir(tmp_path).create(), events.extend)
    summary = sca.store("p1", policy_doc())
    assert summary == {"pass": 1, "fail": 1, "na": 0, "score": 50}
    stored = json.loads((tmp_path / "sca-results" / "p1.json").read_text())
    assert stored["summary"] == summary and stored["pending_events"] == []
    assert [r["status"] for r in stored["results"]] == [PASSED, FAILED]
    first, *checks = events
    assert first["type"] == "sca" and first["policy_id"] == "p1" and first["summary"] == summary
    assert [r["id"] for r in first["results"]] == ["ok", "x"]
    # first evaluation: one event per failed check, for the engine's "module: sca" rule
    assert checks == [
        {
            "module": "sca",
            "type": "sca-check",
            "policy_id": "p1",
            "check_id": "x",
            "title": "x exists",
            "result": FAILED,
            "previous": None,
            "reason": checks[0]["reason"],
        }
    ]
    events.clear()
    sca.evaluate("p1")
    assert [e["type"] for e in events] == ["sca"]  # nothing changed: no check events


def test_a_changed_verdict_is_sent_as_a_check_event(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    sca = Sca(StateDir(tmp_path).create(), events.extend)
    target = tmp_path / "x"
    sca.store("p1", policy_doc(path=str(target)))
    events.clear()
    target.write_text("now here")
    sca.evaluate("p1")
    change = [e for e in events if e["type"] == "sca-check"]
    assert change and change[0]["result"] == PASSED and change[0]["previous"] == FAILED


def test_results_not_sent_are_kept_and_sent_by_a_later_tick(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    down = True

    def send(events: list[dict[str, Any]]) -> None:
        if down:
            raise CommsError(0, "unreachable", "server down")
        sent.extend(events)

    sca = Sca(StateDir(tmp_path).create(), send)
    sca.store("p1", policy_doc())
    assert json.loads((tmp_path / "sca-results" / "p1.json").read_text())["pending_events"]
    down = False
    sca.tick(0.0)
    assert sent and sent[0]["type"] == "sca"
    assert json.loads((tmp_path / "sca-results" / "p1.json").read_text())["pending_events"] == []


def test_policies_are_evaluated_on_their_interval_and_not_again_after_a_restart(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path).create()
    clock = Clock()
    events: list[dict[str, Any]] = []
    sca = Sca(state, events.extend, clock=clock)
    sca.configure({"interval": 600})
    sca.store("p1", policy_doc())
    events.clear()
    sca.tick(0.0)
    assert events == []  # fresh
    clock.now += 601
    sca.tick(0.0)
    assert [e["type"] for e in events] == ["sca"]
    # a restarted agent does not re-run a fresh evaluation...
    events.clear()
    again = Sca(state, events.extend, clock=clock)
    again.configure({"interval": 600})
    again.tick(0.0)
    assert events == []
    # ...but evaluates at once a policy whose stored content changed meanwhile
    state.put_content(state.sca_dir, "p1", policy_doc(version="2"))
    again = Sca(state, events.extend, clock=clock)
    again.configure({"interval": 600})
    again.tick(0.0)
    assert events and events[0]["policy_version"] == "2"


# -- rows 6 and 7 through the handlers ------------------------------------------------------------
def command(name: str, args: dict[str, Any], cid: int = 1) -> dict[str, Any]:
    return {"id": cid, "action": {"name": name, "version": 1, "args": args}, "timeout": 30}


@pytest.mark.req("C6")
def test_sca_policy_stores_evaluates_and_answers_the_summary(ctx: Context, sent: Sent) -> None:
    r = execute(ctx, command("sca-policy", {"policy_id": "p1", "policy": policy_doc()}))
    assert r.status == "success", r.message
    assert r.data == {
        "policy_id": "p1",
        "stored": True,
        "summary": {"pass": 1, "fail": 1, "na": 0, "score": 50},
    }
    assert sent.events[0]["type"] == "sca"
    bad = execute(
        ctx, command("sca-policy", {"policy_id": "p2", "policy": {"checks": [{}]}}, cid=2)
    )
    assert bad.status == "failure" and "p2" in bad.message and ctx.sca.policies() == ["p1"]


@pytest.mark.req("C7")
def test_sca_content_replaces_the_policy_and_re_evaluates(ctx: Context, tmp_path: Path) -> None:
    execute(ctx, command("sca-policy", {"policy_id": "p1", "policy": policy_doc()}))
    target = tmp_path / "exists"
    target.write_text("")
    new = policy_doc(version="2", path=str(target))
    r = execute(
        ctx, command("sca-content", {"policy_id": "p1", "version": "2", "policy": new}, cid=2)
    )
    assert r.status == "success", r.message
    assert r.data["summary"] == {"pass": 2, "fail": 0, "na": 0, "score": 100}
    assert r.data["previous_version"] == "1" and ctx.sca.policy("p1")["version"] == "2"
    # content that is not the version the command names replaces nothing
    r = execute(
        ctx, command("sca-content", {"policy_id": "p1", "version": "3", "policy": new}, cid=3)
    )
    assert r.status == "failure" and "nothing replaced" in r.message
    assert ctx.sca.policy("p1")["version"] == "2"


class StubComms:
    def __init__(self, policies: dict[str, Any]) -> None:
        self.policies = policies

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        pid = path.rsplit("/", 1)[1]
        if pid not in self.policies:
            raise CommsError(404, "not_found", f"{method} {path}")
        return {"policy_id": pid, "policy": self.policies[pid]}


@pytest.mark.req("C7")
def test_sca_content_without_the_policy_attached_fetches_it(ctx: Context) -> None:
    ctx.comms = StubComms({"p1": policy_doc(version="5")})
    r = execute(ctx, command("sca-content", {"policy_id": "p1", "version": "5"}))
    assert r.status == "success" and ctx.sca.policy("p1")["version"] == "5"
    r = execute(ctx, command("sca-content", {"policy_id": "p9", "version": "1"}, cid=2))
    assert r.status == "failure" and "did not serve p9" in r.message
    assert ctx.sca.policies() == ["p1"]


@pytest.mark.req("R5")
def test_disabling_sca_removes_policies_and_their_results(ctx: Context) -> None:
    execute(ctx, command("sca-policy", {"policy_id": "p1", "policy": policy_doc()}))
    assert (ctx.state_dir.sca_results_dir / "p1.json").exists()
    ctx.modules.apply({"sca": {"enabled": False}})
    assert ctx.sca.policies() == [] and not (ctx.state_dir.sca_results_dir / "p1.json").exists()
