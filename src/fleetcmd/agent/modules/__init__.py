"""The agent's modules, each owning one section of the merged configuration.

A configuration is applied in two steps: every module first checks its section (nothing is
applied if any section is invalid), then each reconfigures itself in place. No module ever
restarts the process (R2); a module whose content kind is disabled removes that content (R5).
Periodic work runs from `tick`, called by the main loop between long-polls, so an idle agent
owns no timer threads; the one exception is the log collector, whose events cannot wait for
the next long-poll (it runs its thread only while files are configured).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("fleetcmd.agent.modules")


class ConfigError(ValueError):
    """A configuration section this agent cannot apply."""


class Module(Protocol):
    section: str

    def section_from(self, config: dict[str, Any]) -> dict[str, Any]:
        """This module's part of the merged configuration."""

    def check(self, section: dict[str, Any]) -> None:
        """Raise ConfigError when `section` cannot be applied."""

    def configure(self, section: dict[str, Any]) -> list[str]:
        """Apply `section` in place; return what changed, for the log and the result."""

    def tick(self, now: float) -> None:
        """Do periodic work that is due."""

    def describe(self) -> dict[str, Any]:
        """Current settings, for agent-status."""

    def close(self) -> None:
        """Release what the module holds (threads, connections) when the agent stops."""


class SectionModule:
    """Shared plumbing of modules that own one object-valued section."""

    section = ""

    def section_from(self, config: dict[str, Any]) -> dict[str, Any]:
        return section_of(config, self.section)

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        return None


def section_of(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{name}' must be an object, got {type(value).__name__}")
    return value


def flag(section: dict[str, Any], name: str, key: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"'{name}.{key}' must be true or false, got {value!r}")
    return value


def seconds(
    section: dict[str, Any], name: str, key: str, default: float, minimum: float = 10.0
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(
            f"'{name}.{key}' must be a number of seconds >= {minimum:g}, got {value!r}"
        )
    return float(value)


class Modules:
    """All modules of one agent, applied together."""

    def __init__(self, modules: list[Module]) -> None:
        self.modules = modules
        self.by_section = {m.section: m for m in modules}

    def check(self, config: Any) -> None:
        if not isinstance(config, dict):
            raise ConfigError("the configuration must be an object")
        for m in self.modules:
            m.check(m.section_from(config))

    def apply(self, config: dict[str, Any]) -> list[str]:
        """Check every section, then reconfigure every module in place; returns the changes."""
        self.check(config)
        changes: list[str] = []
        for m in self.modules:
            changes.extend(m.configure(m.section_from(config)))
        for c in changes:
            log.info("configuration: %s", c)
        return changes

    def tick(self, now: float) -> None:
        for m in self.modules:
            try:
                m.tick(now)
            except Exception:
                log.exception("module %s failed its periodic work", m.section)

    def describe(self) -> dict[str, Any]:
        return {m.section: m.describe() for m in self.modules}

    def close(self) -> None:
        for m in self.modules:
            try:
                m.close()
            except Exception:
                log.exception("module %s failed to close", m.section)
