"""Carry TCP connections across network namespaces through a unix socket, whose path every
namespace shares (loopback does not: an agent started in a namespace of its own cannot reach
the Comms API on the machine's 127.0.0.1 otherwise):

    bridge.py unix PATH HOST PORT    listen on PATH, connect each connection to HOST:PORT
    bridge.py tcp HOST PORT PATH     listen on HOST:PORT (in this namespace), connect to PATH

Prints `ready` once listening. Standard library only; one thread per direction."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        src.close()  # each socket is closed by the pump that reads it


def serve(listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
    listener.listen(128)
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        try:
            upstream = connect()
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    if argv[0] == "unix":
        path, host, port = argv[1], argv[2], int(argv[3])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        serve(listener, lambda: socket.create_connection((host, port), timeout=None))
    else:
        host, port, path = argv[1], int(argv[2]), argv[3]
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))

        def to_unix() -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s

        serve(listener, to_unix)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
