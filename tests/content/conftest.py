"""A publisher's side for the content tests: a signing key, a writable copy of the sample
feed's sources, a build of it, and a loopback HTTP server that serves the built feed."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetcmd.content import sample
from fleetcmd.content.feed import MANIFEST, Manifest
from fleetcmd.model import content_signing as signing


@dataclass
class Publisher:
    """The sample feed's sources, key and output folder; `publish` rebuilds the feed."""

    src: Path
    out: Path
    key: Path

    def publish(self, serial: int | None = None) -> Manifest:
        return sample.build_sample_feed(self.out, self.key, serial=serial, source=self.src)

    def public(self) -> signing.TrustedKeys:
        return signing.TrustedKeys((signing.load_public(str(signing.pub_path(self.key))),))

    def bump(self, rel: str, old: str, new: str) -> None:
        path = self.src / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1))

    def item(self, manifest: Manifest, key: str) -> Any:
        return next(i for i in manifest.items if i.key == key)


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    src = sample.copy_source(tmp_path / "src")
    key = tmp_path / "keys" / "cti.key"
    signing.generate_key(key)
    return Publisher(src, tmp_path / "feed", key)


class _FeedHandler(SimpleHTTPRequestHandler):
    """Static files with a strong ETag on the manifest, as a CDN would serve a feed."""

    def end_headers(self) -> None:
        if self.path.endswith(MANIFEST):
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        super().end_headers()

    def send_head(self) -> Any:
        if self.path.endswith(MANIFEST) and "If-None-Match" in self.headers:
            body = Path(self.translate_path(self.path)).read_bytes()
            if self.headers["If-None-Match"] == '"' + hashlib.sha256(body).hexdigest()[:32] + '"':
                self.send_response(304)
                self.end_headers()
                return None
        return super().send_head()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.requests.append((self.path, int(code)))  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class FeedServer:
    url: str
    requests: list[tuple[str, int]]


@pytest.fixture
def feed_server(publisher: Publisher) -> Iterator[FeedServer]:
    publisher.out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_FeedHandler, directory=str(publisher.out))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield FeedServer(
            f"http://127.0.0.1:{httpd.server_address[1]}/",
            httpd.requests,  # type: ignore[attr-defined]
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
