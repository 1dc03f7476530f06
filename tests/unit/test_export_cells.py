"""CSV export cells (issue 18.2): JSON for structures, empty for null, and text a spreadsheet
would run as a formula (CSV injection) defused with a leading apostrophe."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

from fleetcmd.server.management.export import csv_lines, ndjson


async def _pages(*pages: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    for p in pages:
        yield p


async def _collect(gen: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in gen]


def test_cells_and_one_chunk_per_page() -> None:
    rows = [
        {"a": "=SUM(A1:A2)", "b": {"x": [1, 2]}, "c": None},
        {"a": "+1", "b": True, "c": -3},
        {"a": "@cmd", "b": "plain", "c": 1.5},
    ]
    chunks = asyncio.run(_collect(csv_lines(_pages(rows[:2], rows[2:]), ("a", "b", "c"), dict)))
    assert len(chunks) == 2  # written page by page, never gathered whole
    table = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert table == [
        ["a", "b", "c"],
        ["'=SUM(A1:A2)", '{"x":[1,2]}', ""],
        ["'+1", "true", "-3"],
        ["'@cmd", "plain", "1.5"],
    ]
    lines = asyncio.run(_collect(ndjson(_pages(rows[:1], [], rows[1:]))))
    first = b"".join(lines).decode().splitlines()[0]
    assert first == '{"a":"=SUM(A1:A2)","b":{"x":[1,2]},"c":null}'
