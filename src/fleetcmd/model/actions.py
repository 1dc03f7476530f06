"""The arguments of each action as its receiver gets them (agent or server node).

The indexer builds them (`Rename(name=..., previous=...).dump()`), delivery adds what travels
attached (`config`, `policy`), and the receiver's handler reads them back with
`Rename.parse(args)`, which names the first field that is missing or of the wrong type.

These are plain dataclasses, not pydantic models: the agent imports them on every command and
its footprint stays free of pydantic (docs/performance.md, the idle agent). Unknown keys are
ignored on parse, so an older agent still runs a command a newer indexer added a field to.
The field types are the few JSON shapes actions use: str, int, float, bool, list[str], dict,
list[dict] and `X | None`.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


class BadArgs(ValueError):
    """The command's arguments do not have the shape its action needs."""


_SIMPLE: dict[Any, tuple[type, ...]] = {
    str: (str,),
    bool: (bool,),
    int: (int,),
    float: (int, float),
    dict: (dict,),
    Any: (object,),
}


_WORDS = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    dict: "an object",
}


def _check(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(name, option, value)
            except BadArgs as exc:
                errors.append(str(exc))
        raise BadArgs(errors[0] if len(errors) == 1 else f"'{name}' has the wrong type")
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise BadArgs(f"'{name}' must be a list")
        return [_check(f"{name}[{i}]", item, v) for i, v in enumerate(value)]
    if origin is dict:
        hint = dict
    accepted = _SIMPLE.get(hint)
    if accepted is None:
        raise TypeError(f"unsupported action field type {hint!r}")
    if isinstance(value, bool) and hint in (int, float):
        raise BadArgs(f"'{name}' must be a number")
    if not isinstance(value, accepted):
        raise BadArgs(f"'{name}' must be {_WORDS.get(hint, 'a value')}")
    return value


# Marks a field that the fan-out or delivery adds, not the indexer step that builds the args.
ADDED = {"added": True}


@dataclass(frozen=True, kw_only=True)
class ActionArgs:
    """One action's arguments. Subclasses set `action` (the name the receiver dispatches on)."""

    action: ClassVar[str] = ""
    # Attached on the way out (indexer/delivery.py): "config" (the merged group configuration,
    # or a reference to fetch it) or "sca-policy" (the policy content).
    attaches: ClassVar[str | None] = None
    # Fields of a successful result that update the agents index (indexer/results.py).
    reports: ClassVar[tuple[str, ...]] = ()
    # A successful result of this action removes the agent (the server refuses it from then).
    removes_agent: ClassVar[bool] = False

    @classmethod
    def parse(cls, args: Any) -> Self:
        if not isinstance(args, dict):
            raise BadArgs("'args' must be an object")
        hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in args or (args[f.name] is None and not _optional(hints[f.name])):
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise BadArgs(f"'{f.name}' is missing")
                continue
            values[f.name] = _check(f.name, hints[f.name], args[f.name])
        return cls(**values)

    def dump(self) -> dict[str, Any]:
        """The JSON the command carries; fields added on the way (`ADDED`) only when set."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not (f.metadata.get("added") and getattr(self, f.name) is None)
        }


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(hint)


# -- configuration: what the agent applies is attached, or referenced by hash ---------------------
@dataclass(frozen=True, kw_only=True)
class ConfigAttached(ActionArgs):
    """What delivery adds to a configuration action (R1, R6)."""

    groups: list[str] | None = field(
        default=None, metadata=ADDED
    )  # the agent's full group list (the fan-out adds it)
    config_hash: str | None = field(default=None, metadata=ADDED)
    config: dict[str, Any] | None = field(default=None, metadata=ADDED)
    config_ref: dict[str, Any] | None = field(
        default=None, metadata=ADDED
    )  # {"groups": [...], "hash": ...}: fetch it

    attaches: ClassVar[str | None] = "config"
    reports: ClassVar[tuple[str, ...]] = ("config_hash",)


@dataclass(frozen=True, kw_only=True)
class SetGroups(ConfigAttached):
    action: ClassVar[str] = "set-groups"


@dataclass(frozen=True, kw_only=True)
class ApplyGroupConfig(ConfigAttached):
    action: ClassVar[str] = "apply-group-config"
    group: str | None = None
    version: int | None = None
    group_config_hash: str | None = None


# -- identity -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Rename(ActionArgs):
    action: ClassVar[str] = "rename"
    name: str
    previous: str | None = None


@dataclass(frozen=True, kw_only=True)
class Delete(ActionArgs):
    action: ClassVar[str] = "delete"
    removes_agent: ClassVar[bool] = True


# -- SCA ------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ScaPolicy(ActionArgs):
    action: ClassVar[str] = "sca-policy"
    policy_id: str
    policy: dict[str, Any] | str | None = None
    delete: bool = False


@dataclass(frozen=True, kw_only=True)
class ScaContent(ActionArgs):
    action: ClassVar[str] = "sca-content"
    attaches: ClassVar[str | None] = "sca-policy"
    policy_id: str
    version: str
    policy: dict[str, Any] | None = field(
        default=None, metadata=ADDED
    )  # attached when it fits; else the agent fetches it


@dataclass(frozen=True, kw_only=True)
class VulnerabilityRescan(ActionArgs):
    action: ClassVar[str] = "vulnerability-rescan"
    reason: str = ""


# -- active response ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ArConfig(ActionArgs):
    action: ClassVar[str] = "ar-config"
    group: str | None = None
    name: str
    definition: dict[str, Any] | None = None
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class ArExecute(ActionArgs):
    action: ClassVar[str] = "ar-execute"
    name: str
    arguments: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Upgrade(ActionArgs):
    action: ClassVar[str] = "upgrade"
    reports: ClassVar[tuple[str, ...]] = ("version",)
    version: str
    package: str | None = None
    from_version: str | None = field(
        default=None, metadata=ADDED
    )  # a rollout adds each agent's version before the change


# -- server nodes ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FetchPackage(ActionArgs):
    action: ClassVar[str] = "fetch-package"
    package: str
    version: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class CveReload(ActionArgs):
    action: ClassVar[str] = "cve-reload"
    version: str


@dataclass(frozen=True, kw_only=True)
class RulesetReload(ActionArgs):
    action: ClassVar[str] = "ruleset-reload"
    version: str
    rules: list[dict[str, Any]] | None = None


@dataclass(frozen=True, kw_only=True)
class ServerConfig(ActionArgs):
    action: ClassVar[str] = "server-config"
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RbacRefresh(ActionArgs):
    action: ClassVar[str] = "rbac-refresh"
    reason: str = ""
    changes: list[dict[str, Any]] = field(default_factory=list)


ACTIONS: dict[str, type[ActionArgs]] = {
    a.action: a
    for a in (
        SetGroups,
        ApplyGroupConfig,
        Rename,
        Delete,
        ScaPolicy,
        ScaContent,
        VulnerabilityRescan,
        ArConfig,
        ArExecute,
        Upgrade,
        FetchPackage,
        CveReload,
        RulesetReload,
        ServerConfig,
        RbacRefresh,
    )
}
