"""The limits of a long command's reports (issue 17.3), shared by the agent, the server and
the store. Plain constants: the agent imports this without pydantic (model/wire.py has the
request models built on them)."""

from __future__ import annotations

# An agent heartbeats a command it has run for a while every `interval` seconds; the stream
# ends it `timeout` after two intervals without one (store `command_heartbeats`, `sweep`).
HEARTBEAT_MIN = 0.5
HEARTBEAT_MAX = 3600.0

# A running command's output travels in numbered chunks of at most OUTPUT_CHUNK characters,
# at most OUTPUT_MAX bytes (UTF-8) per command: past that the rest is dropped, and said so.
OUTPUT_CHUNK = 8192
OUTPUT_MAX = 1 << 20
OUTPUT_CHUNKS_PER_BEAT = 32
