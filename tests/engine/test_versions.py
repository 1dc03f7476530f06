"""Version ordering per ecosystem and CVE range matching (unit tests, no processes)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcmd.server.engine.versions import (
    BadVersion,
    DebianVersion,
    debian_compare,
    in_range,
    normalize_name,
)

# (a, b, expected sign), checked against `dpkg --compare-versions`.
DEBIAN_CASES = [
    ("1.0", "1.0", 0),
    ("1.0", "1.0-0", 0),  # a missing revision is "0"
    ("1.0-1", "1.0-2", -1),
    ("1.0-2", "1.0-10", -1),  # digits compare by value, not as text
    ("1.9", "1.10", -1),
    ("1.0~rc1", "1.0", -1),  # ~ sorts before the end of the string
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~~", "1.0~", -1),
    ("1.0~", "1.0", -1),
    ("1.0", "1.0+deb12u1", -1),
    ("1.0a", "1.0+", -1),  # letters sort before other symbols
    ("1.0", "1.0a", -1),
    ("1:0.9", "2.0", 1),  # the epoch wins over everything
    ("0:2.0", "2.0", 0),
    ("2:1.0", "10:0.1", -1),
    ("2.36-9+deb12u3", "2.36-9+deb12u4", -1),
    ("2.36-9+deb12u10", "2.36-9+deb12u4", 1),
    ("1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3", -1),
    ("3.0.11-1~deb12u2", "3.0.11-1", -1),
    ("1.2-3-4", "1.2-3-5", -1),  # the revision is after the last hyphen
    ("1.2-3-4", "1.2-4", 1),  # upstream "1.2-3" > "1.2"
    ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", -1),
    ("1.0.0", "1.0", 1),
]


@pytest.mark.parametrize(("a", "b", "sign"), DEBIAN_CASES)
def test_debian_order(a: str, b: str, sign: int) -> None:
    assert debian_compare(a, b) == sign
    assert debian_compare(b, a) == -sign


def test_debian_parts_and_sorting() -> None:
    v = DebianVersion("1:9.2p1-2+deb12u3")
    assert (v.epoch, v.upstream, v.revision) == (1, "9.2p1", "2+deb12u3")
    ordered = ["1.0~alpha", "1.0~beta", "1.0", "1.0-1", "1.0+b1", "1.0.1", "1:0.1"]
    assert sorted(reversed(ordered), key=DebianVersion) == ordered
    for bad in ("", "1.0 2", "1.0/2", "é"):
        with pytest.raises(BadVersion):
            DebianVersion(bad)


@pytest.mark.parametrize(
    ("version", "introduced", "fixed", "hit"),
    [
        ("2.36-9+deb12u3", "0", "2.36-9+deb12u4", True),
        ("2.36-9+deb12u4", "0", "2.36-9+deb12u4", False),  # fixed is excluded
        ("2.36-9+deb12u5", "0", "2.36-9+deb12u4", False),
        ("2.35-1", "2.36", "2.36-9+deb12u4", False),  # before introduced
        ("2.36", "2.36", "2.36-9+deb12u4", True),  # introduced is included
        ("0~rc1", "0", None, True),  # "0" means every version
        ("1:1.0", "0", "9.0", False),  # epoch 1 is above any epoch-0 fix
        ("9.9", "0", None, True),  # no fix yet
    ],
)
def test_debian_ranges(version: str, introduced: str, fixed: str | None, hit: bool) -> None:
    assert in_range("debian", version, introduced, fixed) is hit


@pytest.mark.parametrize(
    ("version", "introduced", "fixed", "hit"),
    [
        ("2.31.0", "0", "2.32.0", True),
        ("2.32.0", "0", "2.32.0", False),
        ("2.32.0rc1", "0", "2.32.0", True),  # pre-releases sort before the release
        ("2.32.0.post1", "0", "2.32.0", False),  # post-releases after it
        ("2.32.0.dev3", "2.32.0a1", "2.32.0", False),  # dev before alpha
        ("2.32.0a1", "2.32.0a1", "2.32.0", True),
        ("1!0.1", "0", "99.0", False),  # PEP 440 epochs
        ("2.10.0", "2.9", "2.11", True),  # 10 > 9 numerically
        ("2.2", "2.2.0", None, True),  # 2.2 == 2.2.0
    ],
)
def test_python_ranges(version: str, introduced: str, fixed: str | None, hit: bool) -> None:
    assert in_range("pypi", version, introduced, fixed) is hit


def test_unplaceable_versions_raise() -> None:
    with pytest.raises(BadVersion):
        in_range("pypi", "not a version", "0", "1.0")
    with pytest.raises(BadVersion):
        in_range("debian", "1.0", "0", "bad version!")


def test_name_normalization() -> None:
    assert normalize_name("pypi", "Foo_Bar.baz") == "foo-bar-baz"
    assert normalize_name("debian", "libc6") == "libc6"


_upstream = st.from_regex(r"\A[0-9][0-9a-z.+~]{0,6}\Z")
_revision = st.from_regex(r"\A[0-9a-z.+~]{1,5}\Z")
_debian = st.builds(
    lambda epoch, up, rev: (
        (f"{epoch}:" if epoch is not None else "") + up + (f"-{rev}" if rev else "")
    ),
    st.one_of(st.none(), st.integers(0, 3)),
    _upstream,
    st.one_of(st.none(), _revision),
)


def _dpkg(a: str, b: str) -> int:
    def holds(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0

    return 0 if holds("eq") else (-1 if holds("lt") else 1)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed")
@settings(max_examples=150, deadline=None)
@given(_debian, _debian)
def test_debian_order_agrees_with_dpkg(a: str, b: str) -> None:
    assert debian_compare(a, b) == _dpkg(a, b)
