"""Version ordering per ecosystem, and the `introduced <= v < fixed` ranges of CVE records.

A wrong comparison is a silent false negative (a vulnerable host reported clean), so each
ecosystem uses its own real ordering: dpkg's for Debian (epoch, `~` before everything,
letters before other symbols) and PEP 440 (`packaging.version`) for Python."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import total_ordering
from typing import Any

from packaging.version import InvalidVersion, Version

DEBIAN_VERSION_RE = re.compile(r"^(?:(\d+):)?([A-Za-z0-9.+~:-]+?)(?:-([A-Za-z0-9.+~]+))?$")


class BadVersion(ValueError):
    """A version string that the ecosystem's ordering cannot place."""


def _order(c: str) -> int:
    """dpkg's weight of one character of a non-digit run: `~` sorts before the end of the
    string, which sorts before letters, which sort before every other symbol."""
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's `verrevcmp`: alternate non-digit runs (by `_order`) and digit runs (by value)."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        start = i
        while i < len(a) and a[i].isdigit():
            i += 1
        an = int(a[start:i] or 0)
        start = j
        while j < len(b) and b[j].isdigit():
            j += 1
        bn = int(b[start:j] or 0)
        if an != bn:
            return -1 if an < bn else 1
    return 0


@total_ordering
class DebianVersion:
    """`[epoch:]upstream[-revision]`, ordered as `dpkg --compare-versions` orders them."""

    __slots__ = ("epoch", "revision", "text", "upstream")

    def __init__(self, text: str) -> None:
        m = DEBIAN_VERSION_RE.match(text.strip())
        if m is None or not m[2]:
            raise BadVersion(f"not a Debian version: {text!r}")
        self.text = text.strip()
        self.epoch = int(m[1] or 0)
        self.upstream = m[2]
        # A missing revision compares equal to "0" (dpkg treats both as the empty string).
        self.revision = m[3] or ""

    def _cmp(self, other: DebianVersion) -> int:
        if self.epoch != other.epoch:
            return -1 if self.epoch < other.epoch else 1
        return _verrevcmp(self.upstream, other.upstream) or _verrevcmp(
            self.revision, other.revision
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DebianVersion) and self._cmp(other) == 0

    def __lt__(self, other: DebianVersion) -> bool:
        return self._cmp(other) < 0

    def __hash__(self) -> int:  # equal versions may be spelled differently ("1.0" vs "1.0-0")
        return hash(self.epoch)

    def __repr__(self) -> str:
        return f"DebianVersion({self.text!r})"


def debian_compare(a: str, b: str) -> int:
    """-1, 0 or 1, like `dpkg --compare-versions a lt|eq|gt b`."""
    va, vb = DebianVersion(a), DebianVersion(b)
    return 0 if va == vb else (-1 if va < vb else 1)


def python_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise BadVersion(f"not a PEP 440 version: {text!r}") from None


PARSERS: dict[str, Callable[[str], Any]] = {"debian": DebianVersion, "pypi": python_version}
# Where an inventory entry comes from -> the CVE ecosystem whose ordering applies.
SOURCE_ECOSYSTEM = {
    "dpkg": "debian",
    "deb": "debian",
    "debian": "debian",
    "python": "pypi",
    "pip": "pypi",
    "pypi": "pypi",
}


def in_range(ecosystem: str, version: str, introduced: str, fixed: str | None) -> bool:
    """Whether `introduced <= version < fixed` in the ecosystem's order. `introduced` "0"
    means "every version" (even `0~rc1`, which dpkg sorts below "0"); no `fixed` means no fix
    exists yet. Raises `BadVersion` when a string cannot be placed."""
    parse = PARSERS[ecosystem]
    v = parse(version)
    if introduced not in ("", "0") and v < parse(introduced):
        return False
    return fixed is None or v < parse(fixed)


def normalize_name(ecosystem: str, name: str) -> str:
    """Package names as the ecosystem compares them: PEP 503 for Python (`Foo_Bar` is
    `foo-bar`), lower case for Debian (dpkg names are lower case already)."""
    if ecosystem == "pypi":
        return re.sub(r"[-_.]+", "-", name).lower()
    return name.lower()
