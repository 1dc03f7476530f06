"""block-ip: add an address to (or remove it from) the agent's deny list; blocks nothing.

    block-ip add|delete ADDRESS

The deny list is `$FLEETCMD_AR_LISTS/deny-ip.txt`, one address per line: a record an operator
or a firewall integration can act on. This script changes no firewall rule itself; the response
that blocks is `firewall-drop`. Exit codes:
0 done, 2 bad usage or address, 3 no list folder given.
"""

import fcntl
import ipaddress
import os
import sys

LIST = "deny-ip.txt"


def update(folder: str, name: str, entry: str, add: bool) -> int:
    path = os.path.join(folder, name)
    with open(os.path.join(folder, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                entries = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            entries = []
        before = len(entries)
        if add and entry not in entries:
            entries.append(entry)
        elif not add:
            entries = [e for e in entries if e != entry]
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{e}\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return len(entries) - before


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("add", "delete"):
        print("usage: block-ip add|delete ADDRESS", file=sys.stderr)
        return 2
    try:
        address = str(ipaddress.ip_address(argv[1]))
    except ValueError:
        print(f"not an IP address: {argv[1]!r}", file=sys.stderr)
        return 2
    folder = os.environ.get("FLEETCMD_AR_LISTS", "")
    if not folder or not os.path.isdir(folder):
        print("FLEETCMD_AR_LISTS does not name a folder", file=sys.stderr)
        return 3
    adding = argv[0] == "add"
    changed = update(folder, LIST, address, adding)
    if adding:
        print(
            f"added {address} to the deny list"
            if changed
            else f"{address} was already in the deny list"
        )
    else:
        print(
            f"removed {address} from the deny list"
            if changed
            else f"{address} was not in the deny list"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
