"""Selectors compiled to SQL: a WHERE clause over the agents index (alias `a`) from a parsed
selector (model/selectors.py) and from a user's RBAC scope, for SQLite and PostgreSQL alike.

Every value is a bound parameter; only field names known to the grammar become SQL, from the
tables below. Each comparison is two-valued (a column's is wrapped in `COALESCE(..., FALSE)`; a
semi-join over ids that are never NULL already is): an agent that
reported no OS does not match `os = Linux`, and so does match `not os = Linux`, on both
stores. Facts held in other indexes (groups, labels, SCA scans, CVE findings) are semi-joins
computed once per statement (`a.id IN (SELECT ...)`), never a subquery per agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetcmd.model import selectors as s
from fleetcmd.model.targets import AgentScope

if TYPE_CHECKING:
    from fleetcmd.store.core import TxCore

COLUMNS = {
    "name": "a.name",
    "id": "a.id",
    "node": "a.node",
    "config_hash": "a.config_hash",
    "status": "a.status",
}
INFO_FIELDS = ("os", "arch", "hostname")  # what the agent reports at enrollment (`info`)
_SQL_OPS = {"=": "=", "!=": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class Compiler:
    """One statement's compilation: binds parameters into `params` under fresh names."""

    def __init__(self, tx: TxCore, params: dict[str, Any]) -> None:
        self.tx = tx
        self.params = params
        self.pg = tx.store.dialect == "postgres"

    def bind(self, value: Any) -> str:
        name = f"_s{len(self.params)}"
        while name in self.params:
            name += "_"
        self.params[name] = value
        return f":{name}"

    # -- dialect pieces ---------------------------------------------------------------------
    def json_text(self, column: str, key: str) -> str:
        if self.pg:
            return f"(CAST({column} AS jsonb) ->> '{key}')"
        return f"CAST(json_extract({column}, '$.{key}') AS TEXT)"

    def json_elements(self, column: str, key: str) -> str:
        """FROM-clause item: each element `e` of the array `column.key`."""
        if self.pg:
            return (
                f"CROSS JOIN LATERAL jsonb_array_elements(COALESCE(CAST({column} AS jsonb) "
                f"-> '{key}', CAST('[]' AS jsonb))) e"
            )
        return f", json_each({column}, '$.{key}') e"

    def element_text(self, key: str) -> str:
        if self.pg:
            return f"(e ->> '{key}')"
        return f"CAST(json_extract(e.value, '$.{key}') AS TEXT)"

    def id_array(self, column: str) -> str:
        """Aggregate: the JSON array text of `column` over the rows (a frozen set)."""
        if self.pg:
            return f"CAST(COALESCE(json_agg({column}), CAST('[]' AS json)) AS text)"
        return f"json_group_array({column})"

    def array_length(self, column: str) -> str:
        if self.pg:
            return f"json_array_length(CAST({column} AS json))"
        return f"json_array_length({column})"

    def frozen_ids(self, set_param: str) -> str:
        """Subquery: the ids of frozen set `:set_param`."""
        if self.pg:
            return (
                "SELECT json_array_elements_text(CAST(ts.agents AS json)) FROM target_sets ts "
                f"WHERE ts.id = :{set_param}"
            )
        return (
            f"SELECT j.value FROM target_sets ts, json_each(ts.agents) j WHERE ts.id = :{set_param}"
        )

    def text_match(self, column: str, value: str, glob: bool) -> str:
        if not glob:
            return f"{column} = {self.bind(value)}"
        if self.pg:
            return f"{column} ~ {self.bind(s.glob_regex(value))}"
        return f"{column} GLOB {self.bind(value.replace('[', '[[]'))}"

    def fnmatch(self, column: str, pattern: str) -> str:
        """fnmatch's `*`, `?` and `[...]` (an RBAC resource pattern)."""
        if not any(c in pattern for c in "*?["):
            return f"{column} = {self.bind(pattern)}"
        if self.pg:
            return f"{column} ~ {self.bind(fnmatch_regex(pattern))}"
        return f"{column} GLOB {self.bind(fnmatch_glob(pattern))}"

    # -- the tree -----------------------------------------------------------------------------
    def where(self, expr: s.Expr) -> str:
        if isinstance(expr, s.Every):
            return "(1 = 1)"
        if isinstance(expr, s.Not):
            return f"(NOT {self.where(expr.part)})"
        if isinstance(expr, s.And):
            return "(" + " AND ".join(self.where(p) for p in expr.parts) + ")"
        if isinstance(expr, s.Or):
            return "(" + " OR ".join(self.where(p) for p in expr.parts) + ")"
        if isinstance(expr, s.HasVulnerability):
            return (
                "a.id IN (SELECT d.doc_id FROM documents d "
                f"{self.json_elements('d.body', 'findings')} "
                f"WHERE d.index_name = 'vulnerabilities' AND {self.element_text('cve')} = "
                f"{self.bind(expr.cve)})"
            )
        sql = self._compare(expr)
        # `a.id IN (<ids, never NULL>)` is already true or false, and left bare the planner
        # can drive the query from it; a column compared with a value is NULL when the agent
        # has none, made false here.
        leaf = sql if sql.startswith("a.id IN (") else f"COALESCE(({sql}), FALSE)"
        return f"(NOT {leaf})" if expr.op == "!=" else leaf

    def _compare(self, c: s.Compare) -> str:
        op = _SQL_OPS[c.op]
        if c.field in COLUMNS:
            assert isinstance(c.value, str)
            return self.text_match(COLUMNS[c.field], c.value, c.glob)
        if c.field in INFO_FIELDS:
            assert isinstance(c.value, str)
            return self.text_match(self.json_text("a.info", c.field), c.value, c.glob)
        if c.field == "group":
            assert isinstance(c.value, str)
            match = self.text_match("group_name", c.value, c.glob)
            return f"a.id IN (SELECT agent_id FROM agent_groups WHERE {match})"
        if c.field == "label":
            assert isinstance(c.value, str) and c.key is not None
            match = self.text_match("value", c.value, c.glob)
            return (
                "a.id IN (SELECT agent_id FROM agent_labels WHERE "
                f"key = {self.bind(c.key)} AND {match})"
            )
        if c.field == "version":
            return f"a.version_key {op} {self.bind(c.value)}"
        if c.field == "last_seen":
            assert isinstance(c.value, float)
            cut = self.bind(self.tx.now - c.value)
            if c.op in ("<", "<="):  # seen less than that long ago
                return f"a.last_seen {'>' if c.op == '<' else '>='} {cut}"
            # not seen for longer (never seen included)
            return f"(a.last_seen IS NULL OR a.last_seen {'<' if c.op == '>' else '<='} {cut})"
        if c.field == "sca.score":
            score = self.json_text("d.body", "score")
            number = f"CAST({score} AS {'DOUBLE PRECISION' if self.pg else 'REAL'})"
            agent = self.json_text("d.body", "agent")
            return (
                f"a.id IN (SELECT {agent} FROM documents d WHERE d.index_name = 'sca-results' "
                f"AND {agent} IS NOT NULL AND {number} {op} {self.bind(c.value)})"
            )
        if c.field == "sca.failed":
            assert isinstance(c.value, str)
            match = self.text_match(self.element_text("id"), c.value, c.glob)
            agent = self.json_text("d.body", "agent")
            return (
                f"a.id IN (SELECT {agent} FROM documents d "
                f"{self.json_elements('d.body', 'checks')} WHERE d.index_name = 'sca-results' "
                f"AND {agent} IS NOT NULL AND {self.element_text('status')} = 'failed' "
                f"AND {match})"
            )
        raise AssertionError(f"no SQL for field {c.field!r}")

    def scope(self, scope: AgentScope) -> str:
        """The agents a scoped user reaches: by id pattern, or by a group pattern."""
        parts = [self.fnmatch("a.id", p) for p in scope.ids]
        if scope.groups:
            groups = " OR ".join(self.fnmatch("group_name", p) for p in scope.groups)
            parts.append(f"a.id IN (SELECT agent_id FROM agent_groups WHERE {groups})")
        return "(" + (" OR ".join(parts) or "1 = 0") + ")"


def fnmatch_glob(pattern: str) -> str:
    """fnmatch to SQLite GLOB: the same but for a class's negation (`[!` -> `[^`)."""
    return pattern.replace("[!", "[^")


def fnmatch_regex(pattern: str) -> str:
    """fnmatch to an anchored POSIX regex (PostgreSQL `~`), classes as fnmatch reads them."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        elif ch.isalnum() or ch == "_":
            out.append(ch)
        else:
            out.append("\\" + ch)
    return "^" + "".join(out) + "$"
