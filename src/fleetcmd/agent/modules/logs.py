"""The agent's own log level (`log_level`), changed in place without a restart."""

from __future__ import annotations

import logging
from typing import Any

from fleetcmd.agent.modules import ConfigError

LEVELS = ("debug", "info", "warning", "error")


class Logs:
    """Owns the top-level `log_level` key (a string, not a section)."""

    section = "log_level"

    def __init__(self, default: str = "info") -> None:
        self.default = default.lower()
        self.level = self.default

    def section_from(self, config: dict[str, Any]) -> dict[str, Any]:
        value = config.get("log_level")
        return {} if value is None else {"level": value}

    def _level(self, section: dict[str, Any]) -> str:
        value = section.get("level", self.default)
        if not isinstance(value, str) or value.lower() not in LEVELS:
            raise ConfigError(f"'log_level' must be one of {', '.join(LEVELS)}, got {value!r}")
        return value.lower()

    def check(self, section: dict[str, Any]) -> None:
        self._level(section)

    def configure(self, section: dict[str, Any]) -> list[str]:
        level = self._level(section)
        if level == self.level:
            return []
        self.level = level
        logging.getLogger().setLevel(level.upper())
        return [f"log level {level}"]

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"level": self.level}
