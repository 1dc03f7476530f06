"""The webhook signature (issue 18.1) as docs/security.md tells receivers to check it: over
the raw body and the timestamp, with the subscriber's secret, within five minutes."""

from __future__ import annotations

import hashlib
import hmac

from fleetcmd.model.subscriptions import sign, verify


def test_a_signature_checks_out_only_for_its_body_secret_and_time() -> None:
    body = b'{"subscriber":"hook","events":[{"id":1}]}'
    header = sign("s3cret", body, timestamp=1_765_100_000)
    t, v1 = header.split(",")
    assert t == "t=1765100000"
    expected = hmac.new(b"s3cret", b"1765100000." + body, hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"  # the documented recipe, computed independently
    assert verify("s3cret", header, body, now=1_765_100_010)
    assert not verify("s3cret", header, body + b" ", now=1_765_100_010)  # body changed
    assert not verify("other", header, body, now=1_765_100_010)  # another secret
    assert not verify("s3cret", header, body, now=1_765_100_000 + 301)  # replayed later
    assert not verify("s3cret", "v1=" + expected, body, now=1_765_100_010)  # no timestamp
    assert not verify("s3cret", "t=x,v1=00", body, now=1_765_100_010)
