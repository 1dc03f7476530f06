"""firewall-drop: drop every packet from an address with nftables, for a while.

    firewall-drop add ADDRESS [--timeout SECONDS]     (default 600 s)
    firewall-drop delete ADDRESS [--timeout SECONDS]  (the timeout is ignored: one definition
                                                       template serves both)

The block lives in a table of its own, `inet fleetcmd`: the sets `drop4` and `drop6` (flag
`timeout`) and a chain `input` hooked at priority -10 that drops what comes from their
members. An element is added with its timeout, so the kernel lifts the block by itself even if
the agent is gone; adding an address already blocked restarts its timeout. Nothing outside the
table is touched. Exit codes: 0 done, 2 bad usage or address, 4 nftables is not installed,
5 nft refused the change (its message is printed).
"""

import ipaddress
import os
import shutil
import subprocess
import sys

TABLE = "fleetcmd"
DEFAULT_TIMEOUT = 600
MAX_TIMEOUT = 30 * 86400
SETUP = f"""
table inet {TABLE} {{
  set drop4 {{ type ipv4_addr; flags timeout; }}
  set drop6 {{ type ipv6_addr; flags timeout; }}
  chain input {{
    type filter hook input priority -10; policy accept;
    ip saddr @drop4 drop
    ip6 saddr @drop6 drop
  }}
}}
"""
USAGE = "usage: firewall-drop add|delete ADDRESS [--timeout SECONDS]"


class NftError(Exception):
    pass


def nft(binary: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [binary, *args] if script is None else [binary, "-f", "-"]
    return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=20)


def ensure_table(binary: str) -> None:
    """Create the table, its sets and its chain once (a second `add rule` would duplicate)."""
    if nft(binary, "list", "chain", "inet", TABLE, "input").returncode == 0:
        return
    done = nft(binary, script=SETUP)
    if done.returncode != 0:
        raise NftError(f"could not create table inet {TABLE}: {done.stderr.strip()}")


def blocked(binary: str, set_name: str, address: str) -> bool:
    found = nft(binary, "get", "element", "inet", TABLE, set_name, f"{{ {address} }}")
    return found.returncode == 0


def add(binary: str, set_name: str, address: str, timeout: int) -> str:
    element = f"inet {TABLE} {set_name} {{ {address} timeout {timeout}s }}"
    again = blocked(binary, set_name, address)
    # Delete and add in one transaction: the address is never unblocked in between.
    script = (
        f"delete element inet {TABLE} {set_name} {{ {address} }}\nadd element {element}\n"
        if again
        else f"add element {element}\n"
    )
    done = nft(binary, script=script)
    if done.returncode != 0:
        raise NftError(f"nft refused to block {address}: {done.stderr.strip()}")
    what = "block renewed" if again else "blocked"
    return f"{what}: {address} for {timeout}s (nftables inet {TABLE} {set_name})"


def delete(binary: str, set_name: str, address: str) -> str:
    if not blocked(binary, set_name, address):
        return f"{address} was not blocked (nftables inet {TABLE} {set_name})"
    done = nft(binary, "delete", "element", "inet", TABLE, set_name, f"{{ {address} }}")
    if done.returncode != 0 and blocked(binary, set_name, address):
        raise NftError(f"nft refused to unblock {address}: {done.stderr.strip()}")
    return f"unblocked: {address} (nftables inet {TABLE} {set_name})"


def parse(argv: list[str]) -> tuple[str, str, int]:
    if len(argv) not in (2, 4) or argv[0] not in ("add", "delete"):
        raise ValueError(USAGE)
    address = str(ipaddress.ip_address(argv[1]))
    timeout = DEFAULT_TIMEOUT
    if len(argv) == 4:
        if argv[2] != "--timeout" or not argv[3].isdigit():
            raise ValueError(USAGE)
        timeout = int(argv[3])
        if not 1 <= timeout <= MAX_TIMEOUT:
            raise ValueError(f"--timeout must be 1..{MAX_TIMEOUT} seconds, got {timeout}")
    return argv[0], address, timeout


def main(argv: list[str]) -> int:
    try:
        action, address, timeout = parse(argv)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    binary = shutil.which("nft", path=os.environ.get("PATH", os.defpath))
    if binary is None:
        print(
            "nftables is not installed on this host (no 'nft' program on PATH "
            f"{os.environ.get('PATH', '')}): firewall-drop cannot {action} {address}. "
            "Install nftables (Debian: apt-get install nftables).",
            file=sys.stderr,
        )
        return 4
    set_name = "drop4" if ipaddress.ip_address(address).version == 4 else "drop6"
    try:
        ensure_table(binary)
        if action == "add":
            print(add(binary, set_name, address, timeout))
        else:
            print(delete(binary, set_name, address))
    except NftError as exc:
        print(str(exc), file=sys.stderr)
        return 5
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"nft could not run: {exc}", file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
