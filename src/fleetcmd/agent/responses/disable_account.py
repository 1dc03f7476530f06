"""disable-account: record an account as disabled in the agent's list.

    disable-account USER

The list is `$FLEETCMD_AR_LISTS/disabled-accounts.txt`, one account per line. This script does
not edit /etc/shadow or lock anything itself. Exit codes: 0 done, 2 bad usage or name, 3 no
list folder given.
"""

import fcntl
import os
import re
import sys

LIST = "disabled-accounts.txt"
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def add(folder: str, name: str, entry: str) -> bool:
    path = os.path.join(folder, name)
    with open(os.path.join(folder, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                entries = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            entries = []
        if entry in entries:
            return False
        entries.append(entry)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{e}\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not USER_RE.fullmatch(argv[0]):
        print("usage: disable-account USER (a valid account name)", file=sys.stderr)
        return 2
    folder = os.environ.get("FLEETCMD_AR_LISTS", "")
    if not folder or not os.path.isdir(folder):
        print("FLEETCMD_AR_LISTS does not name a folder", file=sys.stderr)
        return 3
    if add(folder, LIST, argv[0]):
        print(f"account {argv[0]} recorded as disabled")
    else:
        print(f"account {argv[0]} was already recorded as disabled")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
