"""Role settings (issue 19.2): flag > environment > file > default; errors that name the key
and where its value came from; secrets only from private files or the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetcmd.role_settings import ROLES, IndexerSettings, ServerSettings, check_config
from fleetcmd.settings import ConfigError, SecretFileError

ROOT = Path(__file__).resolve().parents[2]


def toml(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(
    tmp_path: Path,
) -> None:
    f = toml(tmp_path / "i.toml", "[indexer]\nport = 1001\nretention_days = 7\n")
    env = {"FLEETCMD_INDEXER_PORT": "1002", "FLEETCMD_INDEXER_LOG_LEVEL": "DEBUG"}
    s = IndexerSettings.load(f, {"port": 1003}, env)
    assert (s.port, s.source("port")) == (1003, "flag")
    s = IndexerSettings.load(f, {}, env)
    assert (s.port, s.source("port"), s.log_level) == (1002, "environment", "debug")
    s = IndexerSettings.load(f, {}, {})
    assert (s.port, s.retention_days, s.source("port")) == (1001, 7.0, "file")
    s = IndexerSettings.load(None, {}, {})
    assert (s.port, s.retention_days, s.source("port")) == (9200, 30.0, "default")


def test_errors_name_the_key_and_where_it_came_from(tmp_path: Path) -> None:
    f = toml(tmp_path / "i.toml", '[indexer]\nprot = 1\nretention_days = "soon"\n')
    with pytest.raises(ConfigError) as err:
        IndexerSettings.load(f, {}, {"FLEETCMD_INDEXER_MAX_CONNECTIONS": "many"})
    text = str(err.value)
    assert f"indexer.prot (from {f} [indexer]): unknown option; known: " in text
    assert f"indexer.retention_days (from {f} [indexer])" in text
    assert "indexer.max_connections (from FLEETCMD_INDEXER_MAX_CONNECTIONS)" in text
    other = toml(tmp_path / "s.toml", '[server]\nindexer = "http://x"\n')
    with pytest.raises(ConfigError, match=r"configures \[server\], not \[indexer\]"):
        IndexerSettings.load(other)
    broken = toml(tmp_path / "b.toml", "[indexer\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        IndexerSettings.load(broken)


def test_secrets_come_from_private_files_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETCMD_ENROLLMENT_KEY", raising=False)
    loose = toml(tmp_path / "enroll.key", "abc\n", 0o640)
    f = toml(tmp_path / "s.toml", f'[server]\nenrollment_key_file = "{loose}"\n')
    s = ServerSettings.load(f, {}, {})
    with pytest.raises(SecretFileError, match=r"mode 0640.*chmod 600"):
        s.secret("enrollment_key", tmp_path)
    os.chmod(loose, 0o600)
    assert s.secret("enrollment_key", tmp_path) == "abc"
    monkeypatch.setenv("FLEETCMD_ENROLLMENT_KEY", "from-env")
    assert s.secret("enrollment_key", tmp_path) == "from-env"  # environment over the file
    flagged = toml(tmp_path / "flag.key", "from-flag\n")
    s = ServerSettings.load(f, {"enrollment_key_file": flagged}, {})
    assert s.secret("enrollment_key", tmp_path) == "from-flag"  # a flag over both
    monkeypatch.delenv("FLEETCMD_ENROLLMENT_KEY")
    made = ServerSettings.load(None, {}, {}).secret("jwt_key", tmp_path)
    assert made and (tmp_path / "comms-jwt.key").stat().st_mode & 0o777 == 0o600


def test_a_store_password_never_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="visible to every user"):
        IndexerSettings.load(None, {"store": "postgresql://u:pw@db/x"}, {})
    url = 'store = "postgresql://u:pw@db/x"\n'
    loose = toml(tmp_path / "loose.toml", "[indexer]\n" + url, 0o644)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        IndexerSettings.load(loose, {}, {})
    tight = toml(tmp_path / "tight.toml", "[indexer]\n" + url)
    assert IndexerSettings.load(tight, {}, {}).store_url(tmp_path) == "postgresql://u:pw@db/x"
    pw = toml(tmp_path / "pg.pw", "s3:cr@t\n")
    s = IndexerSettings.load(None, {"store": "postgresql://u@db/x", "store_password_file": pw}, {})
    assert s.store_url(tmp_path) == "postgresql://u:s3%3Acr%40t@db/x"


def test_config_check_names_missing_and_loose_files(tmp_path: Path) -> None:
    cert = tmp_path / "missing.pem"
    key = toml(tmp_path / "tls.key", "k", 0o644)
    f = toml(tmp_path / "s.toml", f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    role, problems = check_config(f)
    assert role == "server" and len(problems) == 2, problems
    assert any("server.tls_cert" in p and "no file" in p for p in problems)
    assert any("server.tls_key" in p and "mode 0644" in p for p in problems)


def test_the_configuration_page_lists_every_option_with_its_default() -> None:
    """docs/configuration.md has, per role, a row `| key | default | … |` for every option."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for role, model in ROLES.items():
        section = doc.split(f"## [{role}]", 1)[1].split("\n## ", 1)[0]
        for key, field in model.model_fields.items():
            row = f"| `{key}` | {default_text(field.default)} |"
            assert row in section, f"docs/configuration.md [{role}] lacks {row}"


def default_text(value: object) -> str:
    """A default as the page shows it: TOML's spelling, or "—" for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[]`"
    return f"`{value}`" if not isinstance(value, str) or value else '`""`'
