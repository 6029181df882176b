"""File locks held for the life of a sweep: one per device (no two sweeps on one GPU) and one per sweep
(liveness: a sweep still marked running whose lock is free has crashed). Uses flock, released by the kernel
when the process dies, so kill -9 cannot leave a stale lock. Also the liveness rule the dashboard and `ls` show:
`shown_state` turns a sweep that claims to run but holds no lock (or whose process is gone) into "crashed".
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ACTIVE_STATES: tuple[str, ...] = ("queued", "running")
STALE_HEARTBEAT_S = 180.0


class HeldLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def try_lock(path: Path, owner: str) -> HeldLock | None:
    """Take an exclusive lock on `path` and write `owner` into it; None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, owner.encode())
    os.fsync(fd)
    return HeldLock(path, fd)


def lock_owner(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def is_held(path: str | Path | None) -> bool:
    """True while some live process holds the lock at `path` (False for a missing file)."""
    if not path:
        return False
    p = Path(path)
    if not p.exists():
        return False
    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def effective_state(state: str, lock_path: str | None) -> str:
    """A sweep recorded as running/queued whose lock no process holds has crashed."""
    if state in ("running", "queued") and lock_path and not is_held(lock_path):
        return "crashed"
    return state


def now_ts() -> float:
    return datetime.now(UTC).timestamp()


def _ts(v: Any) -> float | None:
    """Seconds since the epoch of a datetime (or pandas Timestamp); None for None, NaN and NaT."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v != v:  # NaT != NaT
        return None
    return v.timestamp()


def pid_alive(pid: int | None) -> bool:
    """True when `pid` runs on this host and is not a zombie (a zombie still answers kill(pid, 0))."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def shown_state(row: dict[str, Any]) -> str:
    """The state to show: a queued/running sweep whose lock is free (or, lacking a lock, whose process died or
    stopped beating) is crashed. Same rule as `python -m bench ls` (bench.locks.effective_state)."""
    state = str(row.get("state") or "")
    if state not in ACTIVE_STATES:
        return state
    lock_path = row.get("lock_path")
    if lock_path:
        return effective_state(state, str(lock_path))
    pid = row.get("pid")
    host = row.get("host")
    if pid and (not host or host == socket.gethostname()):
        return state if pid_alive(pid) else "crashed"
    beat = _ts(row.get("heartbeat_at")) or _ts(row.get("started_at")) or _ts(row.get("created_at"))
    if beat is not None and now_ts() - beat > STALE_HEARTBEAT_S:
        return "crashed"
    return state
