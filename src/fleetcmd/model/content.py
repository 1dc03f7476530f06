"""The content a CTI feed carries, one pydantic model per item type.

The publisher (`cti build`) and the content manager parse every item with these models, so a
signed but malformed file is refused before it reaches an index, and the agent's SCA evaluator,
the engine and the active-response runner can rely on the shapes documented in docs/content.md.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetcmd.model.explain import explain

ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9.+_~-]{0,63}$"
ITEM_TYPES = ("sca", "cve", "ruleset", "active-response", "agent-package")
COMPARE_RE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


class ContentError(ValueError):
    """A content file that does not parse or does not follow its schema."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regex {value!r}: {exc}") from None
    return value


# -- SCA ------------------------------------------------------------------------------------------
class FileExists(Model):
    type: Literal["file_exists"]
    path: str = Field(pattern=r"^/")


class FileAbsent(Model):
    type: Literal["file_absent"]
    path: str = Field(pattern=r"^/")


class DirExists(Model):
    type: Literal["dir_exists"]
    path: str = Field(pattern=r"^/")


class FileContains(Model):
    """Passes when a line of the file matches `regex` (re.search, multiline)."""

    type: Literal["file_contains"]
    path: str = Field(pattern=r"^/")
    regex: str

    _r = field_validator("regex")(_regex)


class CommandOutput(Model):
    """Runs `argv` (no shell) and tests its stripped stdout by `regex` or by `compare`
    (`< 5`, `<= 365`, `== 0`, …: stdout read as a number; not a number fails the rule)."""

    type: Literal["command_output"]
    argv: list[str] = Field(min_length=1, max_length=64)
    regex: str | None = None
    compare: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _one_test(self) -> CommandOutput:
        if (self.regex is None) == (self.compare is None):
            raise ValueError("command_output needs exactly one of 'regex' or 'compare'")
        if self.regex is not None:
            _regex(self.regex)
        if self.compare is not None and not COMPARE_RE.match(self.compare):
            raise ValueError(f"compare {self.compare!r} must look like '< 5' or '>= 1.5'")
        return self


ScaRule = Annotated[
    FileExists | FileAbsent | DirExists | FileContains | CommandOutput,
    Field(discriminator="type"),
]


class ScaCheck(Model):
    id: str = Field(pattern=ID_RE)
    title: str = Field(min_length=1, max_length=256)
    description: str = ""
    rationale: str = ""
    remediation: str = Field(min_length=1)
    condition: Literal["all", "any", "none"]
    rules: list[ScaRule] = Field(min_length=1, max_length=64)
    # Rules that must all pass for the check to apply; otherwise it is "not applicable"
    # (e.g. SSH settings on a host without an SSH server).
    requires: list[ScaRule] = Field(default_factory=list, max_length=16)
    references: list[str] = Field(default_factory=list)


class ScaPolicy(Model):
    id: str = Field(pattern=ID_RE)
    version: str = Field(pattern=VERSION_RE)
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    platform: str = ""
    checks: list[ScaCheck] = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _unique_checks(self) -> ScaPolicy:
        ids = [c.id for c in self.checks]
        if len(set(ids)) != len(ids):
            raise ValueError("check ids must be unique within a policy")
        return self


# -- CVE ------------------------------------------------------------------------------------------
class AffectedRange(Model):
    """Versions `introduced` <= v < `fixed` (ecosystem ordering); no `fixed`: not fixed yet."""

    introduced: str = Field(default="0", min_length=1, max_length=128)
    fixed: str | None = Field(default=None, min_length=1, max_length=128)


class CveRecord(Model):
    id: str = Field(pattern=r"^(CVE-\d{4}-\d{4,}|GHSA(-[0-9a-z]{4}){3})$")
    version: str = Field(pattern=VERSION_RE)
    package: str = Field(min_length=1, max_length=256)
    ecosystem: Literal["debian", "pypi"]
    affected: list[AffectedRange] = Field(min_length=1, max_length=64)
    severity: Literal["low", "medium", "high", "critical"]
    cvss: float | None = Field(default=None, ge=0, le=10)
    summary: str = Field(min_length=1, max_length=4096)
    references: list[str] = Field(default_factory=list, max_length=64)
    published: str | None = None
    sample: bool = False  # illustrative data, not an advisory to act on


# -- Ruleset --------------------------------------------------------------------------------------
class FieldTest(Model):
    """One event field: `equals` a value, is `in` a list, or matches `regex`."""

    equals: str | int | float | bool | None = None
    in_: list[str | int | float] | None = Field(default=None, alias="in")
    regex: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one(self) -> FieldTest:
        given = sum(x is not None for x in (self.equals, self.in_, self.regex))
        if given != 1:
            raise ValueError("a field test takes exactly one of 'equals', 'in' or 'regex'")
        if self.regex is not None:
            _regex(self.regex)
        return self


class Threshold(Model):
    """Fire only when `count` matching events arrive within `window` seconds, per
    `group_by` value (e.g. per source address)."""

    count: int = Field(ge=2, le=100_000)
    window: float = Field(gt=0, le=86_400)
    group_by: list[str] = Field(default_factory=list, max_length=8)


class RuleResponse(Model):
    """The active response a firing rule asks the engine to file (row 11)."""

    name: str = Field(pattern=ID_RE)
    target: str = Field(default="agent", pattern=r"^(agent|all|group:[A-Za-z0-9][A-Za-z0-9._-]*)$")
    # Each argument is a template: "{field.path}" is replaced by that field of the event.
    arguments: list[str] = Field(default_factory=list, max_length=32)


class Rule(Model):
    id: int = Field(ge=1, le=10_000_000)
    level: int = Field(ge=0, le=15)
    description: str = Field(min_length=1, max_length=512)
    match: dict[str, str | int | float | bool | FieldTest] = Field(min_length=1)
    threshold: Threshold | None = None
    groups: list[str] = Field(default_factory=list)
    active_response: RuleResponse | None = None


class Ruleset(Model):
    id: str = Field(default="rules", pattern=ID_RE)
    version: str = Field(pattern=VERSION_RE)
    rules: list[Rule] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _unique_rules(self) -> Ruleset:
        ids = [r.id for r in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("rule ids must be unique")
        return self


# -- Active response ------------------------------------------------------------------------------
class ActiveResponseDefinition(Model):
    """What an agent may run: a file of its active-response folder, never a shell line.

    `arguments` is a template: `{0}`, `{1}`, … are the execution's arguments, each of which
    must fully match the pattern at the same position of `allowed_arguments`."""

    name: str = Field(pattern=ID_RE)
    version: str = Field(pattern=VERSION_RE)
    description: str = ""
    executable: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    arguments: list[str] = Field(default_factory=list, max_length=32)
    allowed_arguments: list[str] = Field(default_factory=list, max_length=32)
    timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _placeholders(self) -> ActiveResponseDefinition:
        for pattern in self.allowed_arguments:
            _regex(pattern)
        used = {int(n) for a in self.arguments for n in re.findall(r"\{(\d+)\}", a)}
        if used and max(used) >= len(self.allowed_arguments):
            raise ValueError(
                f"argument template uses {{{max(used)}}} but allowed_arguments has only "
                f"{len(self.allowed_arguments)} pattern(s)"
            )
        return self


# -- parsing --------------------------------------------------------------------------------------
def _load(data: bytes, path: str) -> Any:
    text = data.decode("utf-8")
    if path.endswith(".json"):
        return json.loads(text)
    return yaml.safe_load(text)


def _validate(model: type[Model], raw: Any, what: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ContentError(f"{what}: {explain(exc, raw)}") from None


PACKAGE_NAME_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.]*?)-(?P<version>\d[A-Za-z0-9.+_~]*)"
    r"\.(?:tar\.gz|tgz|whl|deb)$"
)


def parse_item(type_: str, data: bytes, path: str) -> tuple[str, str, dict[str, Any]]:
    """Parse a content file of `type_`: its id, its version and the document to index."""
    try:
        if type_ == "agent-package":
            m = PACKAGE_NAME_RE.fullmatch(path.rsplit("/", 1)[-1])
            if m is None:
                raise ContentError(f"{path}: agent packages are named NAME-VERSION.tar.gz")
            return m["name"], m["version"], {"name": m["name"], "version": m["version"]}
        raw = _load(data, path)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ContentError(f"{path}: not valid {type_} content ({exc})") from None
    model: type[Model]
    if type_ == "sca":
        model = ScaPolicy
    elif type_ == "cve":
        model = CveRecord
    elif type_ == "ruleset":
        model = Ruleset
    elif type_ == "active-response":
        model = ActiveResponseDefinition
    else:
        raise ContentError(f"unknown item type {type_!r} (known: {', '.join(ITEM_TYPES)})")
    parsed = _validate(model, raw, path)
    ident = parsed.id if hasattr(parsed, "id") else parsed.name
    doc = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    return str(ident), parsed.version, doc
