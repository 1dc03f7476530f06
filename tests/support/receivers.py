"""Real receivers for event subscriptions (issue 18.1): a webhook receiver on loopback that
verifies signatures as a real one would, and Debian's rsyslogd started with a config of its
own (a TCP input on a loopback port, a file output), as an unprivileged collector."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetcmd.launch import free_port
from fleetcmd.model.subscriptions import SIGNATURE_HEADER, verify

RSYSLOGD = "/usr/sbin/rsyslogd"


class WebhookReceiver:
    """Answers `status` (200 by default; set 500 to play a failing receiver) and keeps every
    delivery it accepted: (signature header, raw body, time received) and the parsed body.
    `secret` is set once the subscriber is registered (its secret comes back then)."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = 0.0  # seconds to wait before answering (a receiver that stopped answering)
        self.secret = ""
        self.deliveries: list[tuple[tuple[str, bytes, float], dict[str, Any]]] = []
        self.refused = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.hang:
                    time.sleep(receiver.hang)
                    self.close_connection = True
                    return
                signature = (self.headers.get(SIGNATURE_HEADER, ""), body, time.time())
                with receiver.lock:
                    status = receiver.status
                    if status == 200:
                        receiver.deliveries.append((signature, json.loads(body)))
                    else:
                        receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        """Every event received, in arrival order, repeats included."""
        with self.lock:
            return [e for _, body in self.deliveries for e in body["events"]]

    def all_signed(self) -> bool:
        """Every accepted delivery's signature checks out with the secret (checked now: the
        secret is known once registration answered, a first delivery may come before)."""
        with self.lock:
            return bool(self.deliveries) and all(
                verify(self.secret, header, body, now=at)
                for (header, body, at), _ in self.deliveries
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


OSSL = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so"


def ensure_rsyslog(tls: bool = False) -> str:
    """rsyslogd (and, for TLS, its OpenSSL driver), installed with apt-get when missing, as
    `make rsyslog` does."""
    wanted = [("rsyslog", RSYSLOGD)] + ([("rsyslog-openssl", OSSL)] if tls else [])
    missing = [pkg for pkg, path in wanted if not os.path.exists(path)]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", *missing], capture_output=True, timeout=600)
    missing = [pkg for pkg, path in wanted if not os.path.exists(path)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{' '.join(missing)} required (CI): run `make rsyslog`")
        pytest.skip(f"{' '.join(missing)} not installed and apt-get could not (make rsyslog)")
    return RSYSLOGD


@contextmanager
def rsyslog(tmp: Path, tls: dict[str, Path] | None = None) -> Iterator[tuple[int, Path]]:
    """An rsyslogd of our own: imtcp on a free loopback port (TLS with OpenSSL when `tls`
    gives `ca`, `cert`, `key`), every message written to `out.log` in RFC 5424 form
    (rsyslog's own template), no system sockets or files."""
    binary = ensure_rsyslog(tls is not None)
    work = tmp / "rsyslog"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    out = work / "out.log"
    conf = work / "rsyslog.conf"
    driver = ""
    module = 'module(load="imtcp")\n'
    if tls is not None:
        driver = (
            f' defaultNetstreamDriver="ossl" defaultNetstreamDriverCAFile="{tls["ca"]}"'
            f' defaultNetstreamDriverCertFile="{tls["cert"]}"'
            f' defaultNetstreamDriverKeyFile="{tls["key"]}"'
        )
        module = (
            'module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" '
            'streamDriver.authMode="anon")\n'
        )
    conf.write_text(
        f'global(workDirectory="{work}" maxMessageSize="256k"{driver})\n'
        + module
        + f'input(type="imtcp" address="127.0.0.1" port="{port}")\n'
        + f'action(type="omfile" file="{out}" template="RSYSLOG_SyslogProtocol23Format")\n'
    )
    proc = subprocess.Popen(
        [binary, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
        stdout=(work / "rsyslogd.stdout").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"rsyslogd did not listen: {(work / 'rsyslogd.stdout').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield port, out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


RFC5424 = re.compile(
    r"^<(?P<pri>\d+)>1 (?P<ts>\S+) (?P<host>\S+) fleetcmd (?P<pid>\d+) (?P<msgid>\S+) "
    r"\[fleetcmd@32473 id=\"(?P<id>\d+)\" kind=\"(?P<kind>\w+)\" type=\"(?P<type>[^\"]+)\"\] "
    r"(?P<msg>\{.*\})$"
)


def syslog_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        m = RFC5424.match(line)
        assert m, f"not an RFC 5424 line as expected: {line[:300]}"
        event = json.loads(m["msg"])
        assert str(event["id"]) == m["id"] and event["kind"] == m["kind"]
        assert m["msgid"] == f"{event['kind']}.{event['type']}"[:32]
        out.append(event)
    return out
