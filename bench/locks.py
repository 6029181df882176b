"""File locks held for the life of a sweep: one per device (no two sweeps on one GPU) and one per sweep
(liveness: a sweep still marked running whose lock is free has crashed). Uses flock, released by the kernel
when the process dies, so kill -9 cannot leave a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


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
