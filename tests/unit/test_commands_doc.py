"""docs/commands.md stays true to the catalog: a section per command, in order, naming its
first target, action and default timeout and every parameter its schema accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetcmd.model.catalog import CATALOG, CommandSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^## (\d+)\. (\S+)\n", text, flags=re.MULTILINE)
    found = {}
    for i in range(1, len(parts) - 2, 3):
        found[parts[i + 1]] = f"{parts[i]}\n{parts[i + 2]}"
    return found


def test_one_section_per_command_in_catalog_order() -> None:
    titles = re.findall(r"^## (\d+)\. (\S+)$", DOC.read_text(), flags=re.MULTILINE)
    assert [(int(n), t) for n, t in titles] == sorted(
        (s.number, s.task_type) for s in CATALOG.values()
    )


@pytest.mark.parametrize(
    "spec", sorted(CATALOG.values(), key=lambda s: s.number), ids=lambda s: s.task_type
)
def test_section_matches_the_catalog(spec: CommandSpec) -> None:
    body = sections()[spec.task_type]
    assert f"action `{spec.action}`" in body, f"{spec.task_type}: action {spec.action}"
    assert f"{spec.timeout:g} s" in body, f"{spec.task_type}: default timeout {spec.timeout:g} s"
    assert spec.target.value in body.split("first target |", 1)[1].split("\n", 1)[0]
    for field in spec.params.model_fields:
        assert f"`{field}`" in body, f"{spec.task_type}: parameter '{field}' not documented"
