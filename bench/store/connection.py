"""Opening the database file: the writer gate, the lock retry, the open probe and the errors that name the file.

Only bench processes write. Each write opens a short read-write connection, commits and closes, and retries with
backoff while another process holds the file lock (docs/RELIABILITY.md, "Readers vs. writers"). Readers (the
dashboard, `ls`, `export`) open it with `connect(..., read_only=True)`. Every failure to open becomes a StoreError
that says which file and what to do: locked by another process, read-only (permissions or `chattr +i`), in a
folder that cannot be created or written, or not a DuckDB file at all.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import sys
import time
from pathlib import Path

import duckdb

from bench.errors import StoreError
from bench.paths import device_locks_dir

LOCK_RETRY_SECONDS = 30.0

_PERMISSION_TEXTS = ("Permission denied", "Operation not permitted", "Read-only file system")
_REBUILD = "Move it aside and rebuild it with `make run` or `python -m bench import data/results/*.jsonl`"


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "lock on file" in text


def is_permission_error(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return True
    return any(t in str(exc) for t in _PERMISSION_TEXTS)


def is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def read_only_error(path: Path, exc: BaseException) -> StoreError:
    if not path.exists():
        return StoreError(
            f"cannot create the database {path} ({exc}): its folder {path.parent} is not writable. Make it writable "
            "or point --db/BENCH_DB at a writable folder"
        )
    return StoreError(
        f"database {path} cannot be opened for writing ({exc}): the file or its folder is read-only or immutable, "
        "so it cannot be locked for a write (the data in it is fine). Make it writable "
        f"(`chmod u+w {path}`, or `chattr -i {path}` if it was made immutable), or point --db/BENCH_DB at a "
        "writable copy"
    )


def prepare_folder(path: Path) -> None:
    """Create the database's folder when missing (saying so on stderr); StoreError when it cannot be created."""
    folder = path.parent
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {folder} for database {path} ({exc.strerror or exc}); "
            "create it yourself or point --db/BENCH_DB at a writable folder"
        ) from None
    print(f"note: created the folder {folder} for the database {path.name}", file=sys.stderr)


class Gate:
    """Writer priority across processes. DuckDB lets one read-write or many read-only processes hold the file, and
    readers that reopen it in a loop (several dashboard tabs during a sweep) can starve a writer for tens of
    seconds. A writer holds an exclusive flock on a gate file beside the database while it waits for the file;
    readers pass the gate (a momentary shared flock) before each open, so they queue behind a waiting writer.
    Readers never create the gate file; flock is released by the kernel if a process dies. The gate is keyed by the
    database's resolved path and lives in the machine's lock folder (bench.paths.device_locks_dir)."""

    def __init__(self, db: Path) -> None:
        # in the machine's lock folder (DuckDB's file lock is per machine too), so nothing is left beside the file
        key = hashlib.sha1(str(db.resolve()).encode()).hexdigest()[:16]
        self.path = device_locks_dir() / f"db-{key}.gate"
        self.fd: int | None = None

    def _open(self, create: bool) -> bool:
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # a read-only folder: no gate, plain retry
                return False
        else:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return False
        return True

    def _take(self, mode: int, deadline: float) -> bool:
        while True:
            try:
                fcntl.flock(self.fd, mode | fcntl.LOCK_NB)  # type: ignore[arg-type]
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)

    def hold_exclusive(self, deadline: float) -> None:
        """Writer: hold the gate until release() (best effort: a gate that cannot be taken is skipped)."""
        if self._open(create=True) and not self._take(fcntl.LOCK_EX, deadline):
            self.release()

    def pass_shared(self, deadline: float) -> bool:
        """Reader: wait while a writer holds the gate, then let go at once. False when there is no gate file."""
        if not self._open(create=False):
            return False
        self._take(fcntl.LOCK_SH, deadline)
        self.release()
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops its flock
            self.fd = None


def connect(
    path: Path | str, read_only: bool = False, timeout_s: float = LOCK_RETRY_SECONDS, _gate: Gate | None = None
) -> duckdb.DuckDBPyConnection:
    """Open `path`, retrying with jittered backoff while another process holds the lock (writers first, see Gate).

    Raises StoreError naming the file when it is not a DuckDB database, is read-only, or stays locked.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"database {path} does not exist; run `make run` or `python -m bench import` first")
    deadline = time.monotonic() + timeout_s
    if _gate is not None:  # writer(): the caller holds the gate until it has closed the connection
        return _connect_retrying(path, read_only, timeout_s, deadline, _gate)
    gate = Gate(path)
    if not read_only:
        gate.hold_exclusive(deadline)
    try:
        return _connect_retrying(path, read_only, timeout_s, deadline, gate)
    finally:
        gate.release()


def _probed(con: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyConnection:
    """Read the catalog, one small table and the block count once: a truncated or damaged file often opens fine and
    fails only at its first query (a raw duckdb error deep inside a command). Failing here gives the StoreError that
    names the file. Damage in blocks read later (points data) still surfaces as a duckdb error at that read."""
    try:
        if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_meta'").fetchone()[0]:
            con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchall()  # data + key index
        block_size, blocks = con.execute(  # used blocks all lie in the file (free ones at its end may not)
            "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = current_database()"
        ).fetchone() or (0, 0)
        size = path.stat().st_size
        if size < int(block_size) * int(blocks):  # the metadata names more blocks than the file has room for
            raise duckdb.IOException(f"file is {size} bytes but uses {blocks} blocks of {block_size} bytes")
    except (duckdb.Error, OSError) as exc:
        con.close()
        raise StoreError(f"database {path} cannot be read ({exc}); it is truncated or corrupt. {_REBUILD}") from exc
    return con


def _connect_retrying(
    path: Path, read_only: bool, timeout_s: float, deadline: float, gate: Gate
) -> duckdb.DuckDBPyConnection:
    delay = 0.02
    while True:
        gated = gate.fd is not None or (read_only and gate.pass_shared(deadline))
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            return _probed(con, path)
        except duckdb.IOException as exc:
            if is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(delay * (0.5 + random.random()))
                # behind a gate the wait is short (the writer's transaction or readers already inside): poll quickly
                delay = min(delay * 1.6, 0.05 if gated else 0.5)
                continue
            if is_lock_error(exc):
                raise DatabaseLockedError(
                    f"database {path} stayed locked by another process for {timeout_s:.0f}s; "
                    "wait for the running sweep or import to finish or point --db/BENCH_DB elsewhere"
                ) from exc
            if is_permission_error(exc):
                raise read_only_error(path, exc) from exc
            if is_disk_full(exc):
                raise StoreError(f"database {path} cannot be opened: no space left on device ({exc}); "
                                 "free some space and try again (nothing stored was lost)") from exc
            raise StoreError(
                f"database {path} cannot be opened ({exc}); it is not a DuckDB file or is corrupt. {_REBUILD}"
            ) from exc
        except duckdb.Error as exc:
            raise StoreError(
                f"database {path} cannot be opened ({exc}); it is not a DuckDB file or is corrupt. {_REBUILD}"
            ) from exc


class DiskFullError(StoreError):
    """A write failed because the disk is full: a failed run (exit 1), not bad input. Committed rows are kept."""

    exit_code = 1


class DatabaseLockedError(StoreError):
    """Another process held the database for the whole wait. A sweep retries its point writes on this."""
