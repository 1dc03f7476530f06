"""A CTI publisher for the chaos runs: the sample feed's sources (without the agent package,
to keep each build cheap), its own signing key, and `bump` to publish a new serial whose
ruleset and CVE content changed, so the content manager has an update to be killed in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetcmd.content import feed, sample
from fleetcmd.model import content_signing as signing


@dataclass
class Publisher:
    src: Path
    out: Path
    key: Path
    serial: int = 0

    @classmethod
    def create(cls, root: Path) -> Publisher:
        src = sample.copy_source(root / "src")
        key = root / "keys" / "cti.key"
        key.parent.mkdir(parents=True, exist_ok=True)
        signing.generate_key(key)
        return cls(src, root / "feed", key)

    @property
    def pub(self) -> Path:
        return signing.pub_path(self.key)

    def publish(self) -> int:
        self.serial += 1
        feed.build(self.src, self.out, signing.load_private(self.key), serial=self.serial)
        return self.serial

    def bump(self) -> int:
        """A new serial with changed ruleset and CVE files (a comment line each)."""
        for rel in ("ruleset/rules.yaml",):
            path = self.src / rel
            path.write_text(path.read_text() + f"# chaos serial {self.serial + 1}\n")
        return self.publish()
