"""disable-account: lock a local account so that nobody can log in to it (or unlock it).

    disable-account [lock] USER
    disable-account unlock USER

Locking is `usermod -L -e 1 USER`: the password hash is disabled (a `!` in front of it in
/etc/shadow) *and* the account expires (day 1, 1970-01-02), which also stops logins that need
no password (SSH keys), since sshd and PAM refuse an expired account. Where `usermod` is
missing, `passwd -l USER` (password only). Unlocking undoes both (`usermod -U -e ''`, or
`passwd -u`). The account must exist in /etc/passwd; root (uid 0) is never locked. Each change
is also recorded in `$FLEETCMD_AR_LISTS/disabled-accounts.txt` when that folder is given.
Exit codes: 0 done, 2 bad usage, unknown account or root, 4 neither usermod nor passwd is
installed, 5 the tool refused (its message is printed).
"""

import fcntl
import os
import pwd
import re
import shutil
import subprocess
import sys

LIST = "disabled-accounts.txt"
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
USAGE = "usage: disable-account [lock|unlock] USER (a valid account name)"


def record(folder: str, entry: str, present: bool) -> None:
    """Keep the list of accounts this response locked (the record of what was done)."""
    path = os.path.join(folder, LIST)
    with open(os.path.join(folder, f".{LIST}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                entries = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            entries = []
        entries = [e for e in entries if e != entry] + ([entry] if present else [])
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{e}\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def command(lock: bool, user: str) -> list[str] | None:
    path = os.environ.get("PATH", os.defpath)
    usermod = shutil.which("usermod", path=path)
    if usermod is not None:
        return [usermod, "-L", "-e", "1", user] if lock else [usermod, "-U", "-e", "", user]
    passwd = shutil.which("passwd", path=path)
    if passwd is not None:
        return [passwd, "-l" if lock else "-u", user]
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 1:
        argv = ["lock", *argv]
    if len(argv) != 2 or argv[0] not in ("lock", "unlock") or not USER_RE.fullmatch(argv[1]):
        print(USAGE, file=sys.stderr)
        return 2
    action, user = argv
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        print(f"no local account {user!r} on this host", file=sys.stderr)
        return 2
    if entry.pw_uid == 0:
        print(f"account {user!r} has uid 0: root is never locked", file=sys.stderr)
        return 2
    argv_tool = command(action == "lock", user)
    if argv_tool is None:
        print("neither usermod nor passwd is installed: cannot change the account", file=sys.stderr)
        return 4
    done = subprocess.run(argv_tool, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        print(
            f"{os.path.basename(argv_tool[0])} refused to {action} {user}: "
            f"{(done.stderr or done.stdout).strip()}",
            file=sys.stderr,
        )
        return 5
    folder = os.environ.get("FLEETCMD_AR_LISTS", "")
    if folder and os.path.isdir(folder):
        record(folder, user, action == "lock")
    how = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv_tool))
    print(f"account {user} {action}ed ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
