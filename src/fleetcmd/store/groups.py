"""Groups and their configurations (content-addressed, with a version history per group)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fleetcmd.errors import NotFound
from fleetcmd.model.config import config_hash, merge
from fleetcmd.model.nesting import Unreadable
from fleetcmd.model.records import Group, dumps, loads
from fleetcmd.store.core import StoreCore, TxCore


class GroupsTx(TxCore):
    """Group rows and configuration writes."""

    def group(self, name: str) -> Group | None:
        row = self.one(
            "SELECT name, config_hash, version, created_at, updated_at FROM groups WHERE name = :n",
            {"n": name},
        )
        return None if row is None else Group(row[0], row[1], int(row[2]), row[3], row[4])

    def ensure_groups(self, names: list[str]) -> None:
        self.many(
            "INSERT INTO groups (name, version, created_at, updated_at) VALUES (:n, 0, :now, :now) "
            "ON CONFLICT (name) DO NOTHING",
            [{"n": n, "now": self.now} for n in names],
        )

    def delete_group(self, name: str) -> None:
        self.ex("DELETE FROM agent_groups WHERE group_name = :n", {"n": name})
        self.ex("DELETE FROM groups WHERE name = :n", {"n": name})

    def put_config(self, config: dict[str, Any]) -> str:
        text = dumps(config)
        h = config_hash(config)
        self.ex(
            "INSERT INTO configs (hash, content, size, created_at) VALUES (:h, :c, :s, :now) "
            "ON CONFLICT (hash) DO NOTHING",
            {"h": h, "c": text, "s": len(text), "now": self.now},
        )
        return h

    def put_group_config(
        self, name: str, config: dict[str, Any], task_id: int | None
    ) -> tuple[str, int]:
        h = self.put_config(config)
        self.ensure_groups([name])
        row = self.one(
            "UPDATE groups SET config_hash = :h, version = version + 1, "
            "updated_at = :now WHERE name = :n RETURNING version",
            {"h": h, "now": self.now, "n": name},
        )
        assert row is not None
        version = int(row[0])
        self.ex(
            "INSERT INTO group_history (group_name, version, config_hash, task_id, changed_at) "
            "VALUES (:n, :v, :h, :t, :now)",
            {"n": name, "v": version, "h": h, "t": task_id, "now": self.now},
        )
        return h, version


class GroupsStore(StoreCore):
    """Group reads and the merged configuration an agent runs (cached by hashes)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._merged_cache: dict[tuple[str | None, ...], tuple[dict[str, Any], str]] = {}

    def get_group(self, name: str) -> Group:
        with self.reading() as tx:
            group = tx.group(name)
            if group is None:
                raise NotFound(f"group {name} not found")
            row = tx.one("SELECT count(*) FROM agent_groups WHERE group_name = :n", {"n": name})
            group.members = int(row[0]) if row else 0
            if group.config_hash:
                c = tx.one("SELECT content FROM configs WHERE hash = :h", {"h": group.config_hash})
                group.configuration = loads(c[0]) if c else None
        return group

    def list_groups(self) -> list[Group]:
        with self.reading() as tx:
            members = dict(tx.all("SELECT group_name, count(*) FROM agent_groups GROUP BY 1"))
            rows = tx.all(
                "SELECT name, config_hash, version, created_at, updated_at FROM groups "
                "ORDER BY name"
            )
        return [Group(r[0], r[1], int(r[2]), r[3], r[4], int(members.get(r[0], 0))) for r in rows]

    def group_history(self, name: str) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all(
                "SELECT version, config_hash, task_id, changed_at FROM group_history "
                "WHERE group_name = :n ORDER BY version DESC",
                {"n": name},
            )
        return [
            {"version": r[0], "config_hash": r[1], "task_id": r[2], "changed_at": r[3]}
            for r in rows
        ]

    def get_config(self, config_hash_: str) -> dict[str, Any]:
        config = self._config(config_hash_)
        return Unreadable() if isinstance(config, Unreadable) else dict(config)

    @lru_cache(maxsize=4096)  # noqa: B019 - content-addressed, so entries never go stale
    def _config(self, h: str) -> dict[str, Any]:
        with self.reading() as tx:
            row = tx.one("SELECT content FROM configs WHERE hash = :h", {"h": h})
        if row is None:
            raise NotFound(f"configuration {h} not found")
        value: dict[str, Any] = loads(row[0])
        return value

    def merged_config(self, groups: list[str]) -> tuple[dict[str, Any], str]:
        """The configuration an agent in `groups` runs, and its hash (what the agent reports)."""
        with self.reading() as tx:
            hashes: list[str | None] = []
            for g in groups:
                row = tx.one("SELECT config_hash FROM groups WHERE name = :n", {"n": g})
                hashes.append(row[0] if row else None)
        key = tuple(hashes)
        cached = self._merged_cache.get(key)
        if cached is None:
            parts = [self._config(h) for h in hashes if h]
            # A part too deep to read (stored before the limit) leaves nothing to merge.
            merged = Unreadable() if any(isinstance(c, Unreadable) for c in parts) else merge(parts)
            cached = (merged, config_hash(merged))
            if len(self._merged_cache) > 4096:
                self._merged_cache.clear()
            self._merged_cache[key] = cached
        return cached
