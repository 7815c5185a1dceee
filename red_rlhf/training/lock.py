"""One trainer per output folder: OUTPUT_DIR/train.lock names the process that trains there.

Two trainers in one folder would interleave metrics rows, overwrite each other's checkpoints and exports, and both
say "done". The lock file is created with O_EXCL (atomic, also on NFS v3+), holds the owner's pid, host, process
start time and command line as JSON, and is removed when its run ends (also by Ctrl-C, SIGTERM or an error).

A run that was killed (SIGKILL, out of memory, a lost node) leaves its lock behind. On the host that wrote it, the
lock is stale when its pid is gone or now belongs to a process that started at another time (pid reuse); a stale
lock is taken over, saying so. A lock written on another host cannot be checked from here: the refusal names that
host and pid and says to remove the file once that run is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from red_rlhf.config import ConfigError

LOCK = "train.lock"


class FolderLocked(ConfigError):
    """Another live trainer holds the output folder; the message names it."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None where /proc is absent:
    with the pid it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)[:500]}


def read_owner(file: Path) -> dict | None:
    """The lock's owner, or None when the file vanished; an unreadable lock reads as an empty record."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:  # cut short by a crash between create and write
        return {}
    return owner if isinstance(owner, dict) else {}


def is_stale(owner: dict) -> bool:
    """A lock of this host whose process is gone (or whose pid now names a younger process); a lock from another
    host is never called stale: its process cannot be seen from here."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    pid = owner["pid"]
    if not _alive(pid):
        return True
    started = owner.get("started")
    return started is not None and _start_time(pid) not in (None, started)


def describe(owner: dict) -> str:
    if not owner:
        return "a process whose lock file cannot be read"
    where = f"pid {owner.get('pid')} on host {owner.get('host')}"
    return f"{where}, started {owner.get('time', '?')}: {owner.get('command', '?')}"


def check_free(out: Path) -> None:
    """Raise FolderLocked naming the live owner of OUTPUT_DIR's lock (before any model loads); a stale or absent
    lock passes (`acquire` takes it over)."""
    file = Path(out) / LOCK
    owner = read_owner(file)
    if owner is None or (owner and is_stale(owner)) or owner.get("pid") == os.getpid():
        return
    raise FolderLocked(_refusal(file, owner))


def _refusal(file: Path, owner: dict) -> str:
    other_host = owner and owner.get("host") != socket.gethostname()
    hint = (f"if that run is gone (its host {owner.get('host')} cannot be checked from here), remove {file}"
            if other_host else f"if it is not a red-rlhf run of yours, remove {file}")
    return (f"{file.parent} is in use by another trainer ({describe(owner)}); one trainer per train.output_dir: "
            f"wait for it to end, stop it (Ctrl-C or SIGTERM: it saves a checkpoint), or pick another "
            f"train.output_dir. ({hint})")


def acquire(out: Path, say=print) -> Path:
    """Create OUTPUT_DIR/train.lock for this process; take over a stale one (saying so); raise FolderLocked when a
    live trainer holds it. Returns the lock file (give it to `release`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    file = out / LOCK
    for _ in range(3):  # a stale lock removed, or another process's lock vanishing meanwhile, then one more try
        try:
            fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_owner(file)
            if owner is None:
                continue
            if owner and is_stale(owner):
                say(f"removing a stale lock: {file} was left by pid {owner['pid']} on this host, which is no longer "
                    "running (a killed run)")
                file.unlink(missing_ok=True)
                continue
            raise FolderLocked(_refusal(file, owner)) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner_record(), f)
        return file
    raise FolderLocked(f"{file}: could not take the lock (another process keeps creating it)")


def release(file: Path | None) -> None:
    """Remove the lock if this process still owns it."""
    if file is None:
        return
    owner = read_owner(Path(file))
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        Path(file).unlink(missing_ok=True)
