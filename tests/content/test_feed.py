"""Signing, the feed format, the content schemas and the publisher's CLI, without an indexer."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetcmd.cli import app
from fleetcmd.content import sample
from fleetcmd.content.feed import MANIFEST, FeedError, FolderFeed, parse_manifest
from fleetcmd.model import content_signing as signing
from fleetcmd.model.content import ContentError, parse_item

from .conftest import Publisher


def test_sign_verify_round_trip_and_domain_separation(tmp_path: Path) -> None:
    private = signing.generate_key(tmp_path / "k")
    public = private.public_key()
    st = signing.item_statement("sca", "p1", "1.0", "ab" * 32)
    sig = signing.sign(private, st)
    assert signing.verify(public, st, sig)
    assert not signing.verify(public, signing.item_statement("sca", "p1", "1.1", "ab" * 32), sig)
    assert not signing.verify(public, signing.MANIFEST_DOMAIN + st, sig)
    assert not signing.verify(public, st, "not base64!")
    other = signing.generate_key(tmp_path / "other").public_key()
    assert not signing.verify(other, st, sig)
    with pytest.raises(ValueError, match="not allowed"):
        signing.item_statement("sca", "p|1", "1.0", "ab" * 32)


def test_keys_on_disk_pem_and_raw_base64(tmp_path: Path) -> None:
    path = tmp_path / "cti.key"
    private = signing.generate_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        signing.generate_key(path)
    from_pem = signing.load_public(str(signing.pub_path(path)))
    from_b64 = signing.load_public(signing.public_base64(private.public_key()))
    assert signing.key_id(from_pem) == signing.key_id(from_b64)
    assert signing.key_id(signing.load_private(path).public_key()) == signing.key_id(from_pem)
    with pytest.raises(signing.BadKey):
        signing.load_public("aGVsbG8=")  # base64, but not 32 bytes


def test_built_feed_verifies_and_any_edit_to_the_manifest_is_refused(
    publisher: Publisher,
) -> None:
    m = publisher.publish(serial=7)
    body = (publisher.out / MANIFEST).read_bytes()
    parsed = parse_manifest(body, publisher.public())
    assert parsed.serial == 7 and parsed.feed == "fleetcmd-sample"
    assert {i.type for i in m.items} == {
        "sca",
        "cve",
        "ruleset",
        "active-response",
        "agent-package",
    }
    for item in parsed.items:
        assert publisher.public().verify_any(item.statement(), item.signature)
        assert (publisher.out / item.path).stat().st_size == item.size

    raw = json.loads(body)
    for edit in (
        lambda d: d.update(serial=8),
        lambda d: d["items"][0].update(sha256="0" * 64),
        lambda d: d["items"].pop(),
        lambda d: d.update(key_id=None),
    ):
        tampered = json.loads(json.dumps(raw))
        edit(tampered)
        with pytest.raises(FeedError):
            parse_manifest(json.dumps(tampered).encode(), publisher.public())
    with pytest.raises(FeedError, match="not JSON"):
        parse_manifest(b"{", publisher.public())
    stranger = signing.TrustedKeys((signing.generate_key(publisher.key.parent / "x").public_key(),))
    with pytest.raises(FeedError, match="not trusted"):
        parse_manifest(body, stranger)


def test_folder_feed_sees_changes_and_stays_inside_its_folder(publisher: Publisher) -> None:
    publisher.publish()
    feed = FolderFeed(publisher.out)
    first = feed.manifest({})
    assert first is not None and feed.manifest(first.marker) is None
    publisher.publish()
    assert feed.manifest(first.marker) is not None
    (publisher.out.parent / "secret").write_text("x")
    with pytest.raises(ContentError, match="outside"):
        feed.fetch("../secret", 10)


def test_agent_package_is_reproducible(tmp_path: Path) -> None:
    a = sample.agent_package(tmp_path / "a")
    b = sample.agent_package(tmp_path / "b")
    assert a.name == f"fleetcmd-{sample.project_version()}.tar.gz"
    assert a.read_bytes() == b.read_bytes()
    import tarfile

    with tarfile.open(a) as tar:
        names = tar.getnames()
    prefix = f"fleetcmd-{sample.project_version()}"
    assert f"{prefix}/pyproject.toml" in names
    assert f"{prefix}/src/fleetcmd/content/manager.py" in names
    assert not [n for n in names if "__pycache__" in n]


@pytest.mark.parametrize(
    ("type_", "path", "content", "error"),
    [
        ("sca", "p.yaml", "id: p\nversion: '1'\nname: n\nchecks: []\n", "checks"),
        (
            "sca",
            "p.yaml",
            "id: p\nversion: '1'\nname: n\nchecks:\n- {id: '1', title: t, remediation: r, "
            "condition: all, rules: [{type: file_contains, path: /etc/x, regex: '(['}]}\n",
            "bad regex",
        ),
        (
            "sca",
            "p.yaml",
            "id: p\nversion: '1'\nname: n\nchecks:\n- {id: '1', title: t, remediation: r, "
            "condition: all, rules: [{type: command_output, argv: [id], compare: 'about 5'}]}\n",
            "compare",
        ),
        ("cve", "c.json", '{"id": "CVE-1", "version": "1"}', "id"),
        (
            "active-response",
            "a.json",
            '{"name": "x", "version": "1", "executable": "../../bin/sh", "arguments": []}',
            "executable",
        ),
        (
            "active-response",
            "a.json",
            '{"name": "x", "version": "1", "executable": "x", "arguments": ["{1}"], '
            '"allowed_arguments": ["^a$"]}',
            "allowed_arguments",
        ),
        (
            "ruleset",
            "r.yaml",
            "version: '1'\nrules:\n- {id: 1, level: 16, description: d, match: {a: b}}\n",
            "level",
        ),
        ("sca", "p.yaml", "id: [unclosed", "not valid"),
    ],
)
def test_schemas_refuse_malformed_content(type_: str, path: str, content: str, error: str) -> None:
    with pytest.raises(ContentError, match=error):
        parse_item(type_, content.encode(), path)


def test_sample_content_parses() -> None:
    src = sample.SAMPLE_SOURCE
    policy_id, version, policy = parse_item(
        "sca", (src / "sca/debian12-baseline.yaml").read_bytes(), "x.yaml"
    )
    assert (policy_id, version) == ("debian12-baseline", "1.0.0")
    kinds = {r["type"] for c in policy["checks"] for r in c["rules"]}
    assert {"command_output", "file_exists", "file_absent", "dir_exists"} <= kinds
    _, _, cve = parse_item("cve", (src / "cve/CVE-2024-6387.json").read_bytes(), "x.json")
    assert cve["sample"] is True and cve["summary"].startswith("[SAMPLE DATA]")
    _, _, rules = parse_item("ruleset", (src / "ruleset/rules.yaml").read_bytes(), "r.yaml")
    fim = next(r for r in rules["rules"] if r["id"] == 100200)
    assert fim["match"]["event"] == {"in": ["modified", "deleted"]}


def test_cti_cli_keygen_and_build(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "k" / "cti.key"
    r = runner.invoke(app, ["cti", "keygen", str(key)])
    assert r.exit_code == 0, r.output
    assert "key id" in r.output and key.exists() and signing.pub_path(key).exists()
    r = runner.invoke(app, ["cti", "keygen", str(key)])
    assert r.exit_code != 0
    out = tmp_path / "feed"
    r = runner.invoke(
        app,
        ["cti", "build", str(sample.SAMPLE_SOURCE), str(out), "--key", str(key), "--serial", "3"],
    )
    assert r.exit_code == 0, r.output
    trusted = signing.TrustedKeys((signing.load_public(str(signing.pub_path(key))),))
    m = parse_manifest((out / MANIFEST).read_bytes(), trusted)
    sources = [p for p in sample.SAMPLE_SOURCE.rglob("*") if p.is_file() and p.name != "feed.yaml"]
    assert m.serial == 3 and len(m.items) == len(sources)  # one item a source file
    assert not [i for i in m.items if "package" in i.type]  # none without --sample-package
    r = runner.invoke(app, ["cti", "build", str(sample.SAMPLE_SOURCE), str(out), "--key", str(key)])
    assert r.exit_code == 0 and "serial 4" in r.output
