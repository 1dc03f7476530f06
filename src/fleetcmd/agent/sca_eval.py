"""The SCA evaluator: a policy (docs/content.md, "SCA policy") in, one verdict per check out.

Plain code on purpose: the agent does not load pydantic, so the few fields evaluation relies on
are checked here again (the content manager validated the feed, but a policy can also come
from the Management API, and the agent trusts nothing it did not check itself).

Verdicts, per check:
- `passed` / `failed`: the rules were evaluated and the `condition` (all | any | none of the
  rules pass) holds or not;
- `not_applicable`: a `requires` rule did not pass (e.g. no SSH server), or a rule could not be
  evaluated at all (permission denied, command missing or timed out, evaluation deadline). A
  check the agent could not evaluate is never reported as passed.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetcmd.agent.processes import Completed, run_bounded
from fleetcmd.model.sca import FAILED, NOT_APPLICABLE, PASSED, summarize

COMPARE_RE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")
NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?$")
CHECK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONDITIONS = ("all", "any", "none")
PATH_KINDS = ("file_exists", "file_absent", "dir_exists", "file_contains")
KINDS = (*PATH_KINDS, "command_output")
MAX_CHECKS = 2000
MAX_RULES = 64
MAX_REQUIRES = 16
MAX_ARGV = 64
MAX_TIMEOUT = 120.0
DEFAULT_TIMEOUT = 10.0
# file_contains reads at most this much of a file; configuration files are far smaller.
MAX_FILE_BYTES = 4 * 1024 * 1024
OUTPUT_CAP = 64 * 1024

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class PolicyError(ValueError):
    """A policy document the evaluator cannot use; nothing of it is stored or run."""


@dataclass(frozen=True)
class Rule:
    kind: str
    path: str = ""
    regex: re.Pattern[str] | None = None
    argv: tuple[str, ...] = ()
    compare: tuple[str, float] | None = None
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        if self.kind == "command_output":
            test = (
                f"compare {self.compare[0]} {self.compare[1]:g}"
                if self.compare
                else f"regex {self.regex.pattern if self.regex else ''!r}"
            )
            return f"command_output {list(self.argv)} {test}"
        if self.kind == "file_contains":
            return f"file_contains {self.path} regex {self.regex.pattern if self.regex else ''!r}"
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    condition: str
    rules: tuple[Rule, ...]
    requires: tuple[Rule, ...] = ()
    remediation: str = ""


@dataclass(frozen=True)
class Policy:
    id: str
    version: str
    name: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Outcome:
    """One rule: True (passes), False (does not), None (could not be evaluated)."""

    value: bool | None
    reason: str


@dataclass
class Evaluation:
    policy_id: str
    policy_version: str
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(r["status"] for r in self.results)


# -- parsing --------------------------------------------------------------------------------------
def _regex(value: Any, where: str) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: 'regex' must be a string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise PolicyError(f"{where}: bad regex {value!r}: {exc}") from None


def parse_rule(doc: Any, where: str) -> Rule:
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: a rule must be an object")
    kind = doc.get("type")
    if kind not in KINDS:
        raise PolicyError(f"{where}: unknown rule type {kind!r} (known: {', '.join(KINDS)})")
    if kind in PATH_KINDS:
        path = doc.get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise PolicyError(f"{where}: 'path' must be an absolute path")
        regex = _regex(doc.get("regex"), where) if kind == "file_contains" else None
        return Rule(kind, path=path, regex=regex)
    argv = doc.get("argv")
    if (
        not isinstance(argv, list)
        or not 1 <= len(argv) <= MAX_ARGV
        or not all(isinstance(a, str) and "\0" not in a for a in argv)
        or not argv[0]
    ):
        raise PolicyError(f"{where}: 'argv' must be a list of 1 to {MAX_ARGV} strings")
    has_regex, has_compare = doc.get("regex") is not None, doc.get("compare") is not None
    if has_regex == has_compare:
        raise PolicyError(f"{where}: command_output needs exactly one of 'regex' or 'compare'")
    compare = None
    regex = None
    if has_compare:
        m = COMPARE_RE.match(str(doc["compare"])) if isinstance(doc["compare"], str) else None
        if m is None:
            raise PolicyError(f"{where}: compare {doc['compare']!r} must look like '<= 365'")
        compare = (m.group(1), float(m.group(2)))
    else:
        regex = _regex(doc["regex"], where)
    timeout = doc.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise PolicyError(f"{where}: 'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    return Rule(kind, argv=tuple(argv), regex=regex, compare=compare, timeout=float(timeout))


def _rules(value: Any, where: str, minimum: int, maximum: int) -> tuple[Rule, ...]:
    if value is None and minimum == 0:
        return ()
    if not isinstance(value, list) or not minimum <= len(value) <= maximum:
        raise PolicyError(f"{where}: must be a list of {minimum} to {maximum} rules")
    return tuple(parse_rule(r, f"{where}[{i}]") for i, r in enumerate(value))


def parse_policy(doc: Any, policy_id: str) -> Policy:
    """Check a policy document (the JSON form of docs/content.md's YAML) for evaluation."""
    if not isinstance(doc, dict):
        raise PolicyError(f"policy {policy_id}: must be an object")
    if doc.get("id", policy_id) != policy_id:
        raise PolicyError(f"policy document says id {doc.get('id')!r}, the command {policy_id!r}")
    checks = doc.get("checks")
    if not isinstance(checks, list) or not 1 <= len(checks) <= MAX_CHECKS:
        raise PolicyError(f"policy {policy_id}: 'checks' must be a list of 1 to {MAX_CHECKS}")
    parsed: list[Check] = []
    seen: set[str] = set()
    for i, c in enumerate(checks):
        where = f"policy {policy_id} check[{i}]"
        if not isinstance(c, dict):
            raise PolicyError(f"{where}: must be an object")
        cid = c.get("id")
        cid = str(cid) if isinstance(cid, str | int) and not isinstance(cid, bool) else None
        if cid is None or not CHECK_ID_RE.fullmatch(cid):
            raise PolicyError(f"{where}: 'id' must be a short name (letters, digits, . _ -)")
        if cid in seen:
            raise PolicyError(f"{where}: check id {cid!r} appears twice")
        seen.add(cid)
        condition = c.get("condition")
        if condition not in CONDITIONS:
            raise PolicyError(f"{where}: 'condition' must be one of {', '.join(CONDITIONS)}")
        title = c.get("title", cid)
        remediation = c.get("remediation", "")
        parsed.append(
            Check(
                id=cid,
                title=str(title)[:256],
                condition=condition,
                rules=_rules(c.get("rules"), f"{where}.rules", 1, MAX_RULES),
                requires=_rules(c.get("requires"), f"{where}.requires", 0, MAX_REQUIRES),
                remediation=str(remediation)[:1024],
            )
        )
    return Policy(
        policy_id, str(doc.get("version", "")), str(doc.get("name", policy_id)), tuple(parsed)
    )


# -- evaluation -----------------------------------------------------------------------------------
Runner = Callable[[list[str], float], Completed]


def _run(argv: list[str], timeout: float) -> Completed:
    return run_bounded(argv, timeout, cap=OUTPUT_CAP)


class Evaluator:
    """Evaluates policies under a deadline (a command's timeout, or none for scheduled runs)."""

    def __init__(self, deadline: float | None = None, runner: Runner = _run) -> None:
        self.deadline = deadline
        self.runner = runner

    def policy(self, policy: Policy) -> Evaluation:
        ev = Evaluation(policy.id, policy.version)
        for check in policy.checks:
            status, reason = self.check(check)
            result: dict[str, Any] = {
                "id": check.id,
                "title": check.title,
                "status": status,
                "reason": reason,
            }
            if status == FAILED and check.remediation:
                result["remediation"] = check.remediation
            ev.results.append(result)
        return ev

    def check(self, check: Check) -> tuple[str, str]:
        for i, req in enumerate(check.requires):
            out = self.rule(req)
            if out.value is not True:
                return (
                    NOT_APPLICABLE,
                    f"requirement {i + 1} not met: {req.describe()}: {out.reason}",
                )
        outcomes: list[tuple[Rule, Outcome]] = []
        for rule in check.rules:
            out = self.rule(rule)
            outcomes.append((rule, out))
            # Stop as soon as the verdict cannot change (commands are not free to run).
            if check.condition == "all" and out.value is not True:
                break
            if check.condition in ("any", "none") and out.value is True:
                break
        return self._verdict(check, outcomes)

    @staticmethod
    def _verdict(check: Check, outcomes: list[tuple[Rule, Outcome]]) -> tuple[str, str]:
        true = [(r, o) for r, o in outcomes if o.value is True]
        unknown = [(r, o) for r, o in outcomes if o.value is None]
        n = len(check.rules)
        if check.condition == "all":
            if unknown:
                r, o = unknown[0]
                return NOT_APPLICABLE, f"could not evaluate {r.describe()}: {o.reason}"
            if len(true) == n:
                evidence = "; ".join(f"{r.describe()}: {o.reason}" for r, o in outcomes)
                return PASSED, evidence if len(evidence) <= 500 else f"all {n} rules pass"
            r, o = next((r, o) for r, o in outcomes if o.value is False)
            return FAILED, f"{r.describe()}: {o.reason}"
        if check.condition == "any":
            if true:
                r, o = true[0]
                return PASSED, f"{r.describe()}: {o.reason}"
            if unknown:
                r, o = unknown[0]
                return NOT_APPLICABLE, f"could not evaluate {r.describe()}: {o.reason}"
            return FAILED, f"none of {n} rule(s) pass"
        if true:  # condition "none"
            r, o = true[0]
            return FAILED, f"{r.describe()}: {o.reason}"
        if unknown:
            r, o = unknown[0]
            return NOT_APPLICABLE, f"could not evaluate {r.describe()}: {o.reason}"
        return PASSED, f"none of {n} rule(s) pass"

    def rule(self, rule: Rule) -> Outcome:
        try:
            if rule.kind == "command_output":
                return self._command(rule)
            if rule.kind == "file_contains":
                return _file_contains(rule)
            return _path_rule(rule)
        except PermissionError as exc:
            return Outcome(None, f"permission denied ({exc.strerror})")
        except OSError as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc.strerror or exc}")

    def _command(self, rule: Rule) -> Outcome:
        timeout = rule.timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                return Outcome(None, "evaluation deadline reached")
        try:
            done = self.runner(list(rule.argv), timeout)
        except FileNotFoundError:
            return Outcome(None, f"command {rule.argv[0]!r} not found")
        if done.timed_out:
            return Outcome(None, f"command timed out after {timeout:g}s")
        out = done.text().strip()
        shown = out if len(out) <= 80 else out[:77] + "..."
        if rule.compare is not None:
            op, number = rule.compare
            if not NUMBER_RE.fullmatch(out):
                return Outcome(False, f"output {shown!r} is not a number")
            ok = _OPS[op](float(out), number)
            return Outcome(ok, f"output {shown} {'is' if ok else 'is not'} {op} {number:g}")
        assert rule.regex is not None
        ok = rule.regex.search(out) is not None
        return Outcome(ok, f"output {shown!r} {'matches' if ok else 'does not match'}")


def _path_rule(rule: Rule) -> Outcome:
    try:
        st = os.stat(rule.path)
    except (FileNotFoundError, NotADirectoryError):
        if rule.kind == "file_absent":
            # A dangling link still names something: "absent" means nothing at that path.
            if os.path.lexists(rule.path):
                return Outcome(False, "a dangling link is there")
            return Outcome(True, "absent")
        return Outcome(False, "does not exist")
    if rule.kind == "file_absent":
        return Outcome(False, "exists")
    if rule.kind == "dir_exists":
        ok = stat.S_ISDIR(st.st_mode)
        return Outcome(ok, "is a directory" if ok else "exists but is not a directory")
    ok = stat.S_ISREG(st.st_mode)
    return Outcome(ok, "is a file" if ok else "exists but is not a regular file")


def _file_contains(rule: Rule) -> Outcome:
    assert rule.regex is not None
    try:
        with open(rule.path, "rb") as f:
            data = f.read(MAX_FILE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return Outcome(False, "file does not exist")
    except IsADirectoryError:
        return Outcome(False, "is a directory")
    m = rule.regex.search(data.decode("utf-8", errors="replace"))
    if m is None:
        return Outcome(False, "no match")
    line = m.group(0).strip()
    return Outcome(True, f"matches {line[:80]!r}")


def evaluate(policy: Policy, deadline: float | None = None) -> Evaluation:
    return Evaluator(deadline).policy(policy)
