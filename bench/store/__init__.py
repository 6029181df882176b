"""The DuckDB store: schema creation and migration, and every write the bench makes.

The package is the one persistence layer: `connection` opens files (gate, lock retry, errors that name the file),
this module holds the schema, migrations and the bench's writes, `imports` writes imported files (in bounded
batches, so a long import never starves a sweep), `reads` holds the read-only SQL of the commands (ls, export,
existence checks) and `queries` the read-only SQL of the dashboard pages.

Only bench processes write. Each write opens a short read-write connection, commits and closes, and retries with
backoff while another process holds the file lock.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import duckdb

from bench.errors import StoreError
from bench.paths import logs_dir_for
from bench.records import EnvFingerprint, PointRecord, RunRecord, SweepRecord, utcnow
from bench.store.connection import (  # re-exported: `store.connect`, `store.LOCK_RETRY_SECONDS`, ...
    LOCK_RETRY_SECONDS,
    DatabaseLockedError,
    DiskFullError,
    Gate,
    connect,
    is_disk_full,
    is_lock_error,
    prepare_folder,
)

__all__ = [  # re-exported from bench.store.connection; the rest of the package's API is defined below
    "LOCK_RETRY_SECONDS", "DatabaseLockedError", "DiskFullError", "Gate", "connect", "is_lock_error", "prepare_folder",
]

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
RESERVE_BYTES = 1 << 20  # SpaceReserve: room for the last rows of a sweep that filled the disk
_VERSION_RE = re.compile(r"^--\s*schema_version:\s*(\d+)\s*$", re.MULTILINE)
SCHEMA_VERSION = int(_VERSION_RE.search(SCHEMA_FILE.read_text()).group(1))  # type: ignore[union-attr]

# version -> SQL that migrates a database from (version - 1) to version. Each runs in the transaction that also
# bumps schema_meta, so a failed migration leaves the file at its old version. New columns go at the end of their
# table (ADD COLUMN appends), in the same place as in schema.sql, so old and new databases have the same layout.
MIGRATIONS: dict[int, str] = {
    2: """
        ALTER TABLE runs ADD COLUMN engine_options VARCHAR;
        ALTER TABLE points ADD COLUMN kv_bytes DOUBLE;
    """,
    3: """
        ALTER TABLE sweeps ADD COLUMN source VARCHAR NOT NULL DEFAULT 'measured';
        ALTER TABLE sweeps ADD COLUMN cluster VARCHAR;
        ALTER TABLE runs ADD COLUMN weights VARCHAR NOT NULL DEFAULT 'bf16';
        ALTER TABLE runs ADD COLUMN weights_impl VARCHAR;
        ALTER TABLE runs ADD COLUMN prompts VARCHAR;
        ALTER TABLE runs ADD COLUMN gpu_index INTEGER;
        ALTER TABLE runs ADD COLUMN gpu_uuid VARCHAR;
        ALTER TABLE runs ADD COLUMN worker_address VARCHAR;
        ALTER TABLE points ADD COLUMN experts_measured BOOLEAN;
        ALTER TABLE points ADD COLUMN bandwidth_source VARCHAR;
    """,  # v3's new tables (calibrations, calibration_experts, quality) come from schema.sql after the migrations
}


# RunRecord.env fields are stored flat, some under a clearer column name.
_ENV_COLUMNS = {
    "device_name": "device_name",
    "device_kind": "device_kind",
    "driver": "driver",
    "cuda": "cuda",
    "torch": "torch_version",
    "transformers": "transformers_version",
    "bench_version": "bench_version",
    "git_commit": "git_commit",
    "host": "host",
    "python": "python_version",
    "gpu_index": "gpu_index",
    "gpu_uuid": "gpu_uuid",
    "worker_address": "worker_address",
}


def schema_version_of(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version stored in an open database, or None for an empty file."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "schema_meta" not in tables:
        return None
    row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def check_version(path: Path, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"database {path} has schema version {version}, newer than this moe-bench ({SCHEMA_VERSION}); "
            "upgrade moe-bench or point --db/BENCH_DB at another file"
        )


def _ensure_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    version = schema_version_of(con)
    check_version(path, version)
    if version == SCHEMA_VERSION:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        if version is None:
            con.execute(SCHEMA_FILE.read_text())
        else:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                con.execute(MIGRATIONS[target])
            con.execute(SCHEMA_FILE.read_text())  # every statement is IF NOT EXISTS: creates tables new since then
        con.execute(
            "INSERT OR REPLACE INTO schema_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
        con.execute("COMMIT")
    except Exception as exc:
        _rollback_quietly(con)
        cause = _real_cause(path, exc)
        if cause is exc:
            raise
        raise cause from exc


def _rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK after a failed statement or COMMIT. When the COMMIT itself failed (a full disk) DuckDB has already
    ended the transaction and ROLLBACK raises "no transaction is active": that second error must never replace the
    first one, which is the real cause."""
    with suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _real_cause(path: Path, exc: BaseException) -> BaseException:
    """A full disk becomes a DiskFullError that says so (the raw duckdb text buries it); others pass unchanged."""
    if is_disk_full(exc) and not isinstance(exc, DiskFullError):
        return DiskFullError(
            f"database {path}: no space left on device; the last write was rolled back, everything committed "
            f"before it is kept. Free some space, then resume ({type(exc).__name__}: {str(exc)[:300]})"
        )
    return exc


_patience = LOCK_RETRY_SECONDS  # how long a write waits for other writers; see patient_writes


@contextmanager
def patient_writes(seconds: float) -> Iterator[None]:
    """Within this block every write of this process waits up to `seconds` for other writers (default 30 s).
    A sweep uses it: it must never die of waiting on another writer (an import) while its worker has points."""
    global _patience
    saved, _patience = _patience, seconds
    try:
        yield
    finally:
        _patience = saved


@contextmanager
def writer(path: Path | str, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write connection with the schema in place; commits on success, always closes.

    Creates the database's folder when missing (and says so on stderr). Any failure rolls back and raises the
    real cause (a full disk is a DiskFullError, never the ROLLBACK's own error).
    """
    path = Path(path)
    timeout_s = _patience if timeout_s is None else timeout_s
    prepare_folder(path)
    gate = Gate(path)
    gate.hold_exclusive(time.monotonic() + timeout_s)  # readers queue until this write has closed
    try:
        con = connect(path, read_only=False, timeout_s=timeout_s, _gate=gate)
        try:
            _ensure_schema(con, path)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                _rollback_quietly(con)
                cause = _real_cause(path, exc)
                if cause is exc:
                    raise
                raise cause from exc
        finally:
            con.close()
    finally:
        gate.release()


def init_db(path: Path | str) -> None:
    """Create (or migrate) the database so that readers find the tables."""
    with writer(path):
        pass


# ---------------------------------------------------------------------------------------------- rows


def sweep_row(sweep: SweepRecord) -> dict[str, Any]:
    return asdict(sweep)


def run_row(run: RunRecord) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(RunRecord):
        value = getattr(run, f.name)
        if f.name == "env":
            for env_key, column in _ENV_COLUMNS.items():
                row[column] = getattr(value, env_key)
        elif f.name == "kept_experts":
            row["kept_experts_json"] = json.dumps(value) if value is not None else None
        elif f.name == "prune":
            row["prune_json"] = json.dumps(value, sort_keys=True) if value is not None else None
        else:
            row[f.name] = value
    return row


def run_from_row(row: dict[str, Any]) -> RunRecord:
    env = EnvFingerprint(**{k: row.get(c) for k, c in _ENV_COLUMNS.items() if row.get(c) is not None})
    kwargs: dict[str, Any] = {}
    for f in fields(RunRecord):
        if f.name == "env":
            kwargs["env"] = env
        elif f.name == "kept_experts":
            raw = row.get("kept_experts_json")
            kwargs["kept_experts"] = json.loads(raw) if raw else None
        elif f.name == "prune":
            raw = row.get("prune_json")
            kwargs["prune"] = json.loads(raw) if raw else None
        elif f.name in row:
            kwargs[f.name] = row[f.name]
    return RunRecord(**kwargs)


def point_row(point: PointRecord) -> dict[str, Any]:
    return asdict(point)


def _insert(con: duckdb.DuckDBPyConnection, table: str, row: dict[str, Any], replace: bool = False) -> None:
    cols = list(row)
    quoted = ", ".join(f'"{c}"' for c in cols)
    marks = ", ".join("?" for _ in cols)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    con.execute(f"{verb} INTO {table} ({quoted}) VALUES ({marks})", [row[c] for c in cols])


def _update(con: duckdb.DuckDBPyConnection, table: str, key: str, key_value: Any, **values: Any) -> None:
    if not values:
        return
    sets = ", ".join(f'"{c}" = ?' for c in values)
    con.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", [*values.values(), key_value])


# ---------------------------------------------------------------------------------------------- writes


def insert_sweep(path: Path | str, sweep: SweepRecord) -> None:
    with writer(path) as con:
        _insert(con, "sweeps", sweep_row(sweep))


def update_sweep(path: Path | str, sweep_id: str, **values: Any) -> None:
    with writer(path) as con:
        _update(con, "sweeps", "sweep_id", sweep_id, **values)


def heartbeat(path: Path | str, sweep_id: str, **values: Any) -> None:
    update_sweep(path, sweep_id, heartbeat_at=utcnow(), **values)


def fail_sweep(path: Path | str, sweep_id: str, message: str) -> None:
    """Mark a sweep failed with `message`, and its runs still `running` or `pending` failed too, in one small
    transaction (the last write of a sweep that hit an error, a full disk included)."""
    now = utcnow()
    with writer(path) as con:
        _update(con, "sweeps", "sweep_id", sweep_id, state="failed", finished_at=now, message=message[:4000])
        con.execute(
            "UPDATE runs SET state = 'failed', finished_at = coalesce(finished_at, ?), "
            "notes = coalesce(notes, ?) WHERE sweep_id = ? AND state IN ('running', 'pending')",
            [now, message[:2000], sweep_id],
        )


class SpaceReserve:
    """Disk space held in a file beside the database while a sweep runs (in its logs folder), released when a write
    fails for lack of space, so that the sweep can still record why it stopped. Best effort: without room for it
    at the start there is no reserve."""

    def __init__(self, db: Path | str, name: str, size: int = RESERVE_BYTES) -> None:
        self.path: Path | None = logs_dir_for(Path(db)) / f"{name}.reserve"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.release()

    def release(self) -> None:
        if self.path is not None:
            with suppress(OSError):
                self.path.unlink()
            self.path = None


def insert_run(path: Path | str, run: RunRecord, replace: bool = False) -> None:
    with writer(path) as con:
        _insert(con, "runs", run_row(run), replace=replace)


def update_run(path: Path | str, run_id: str, **values: Any) -> None:
    with writer(path) as con:
        _update(con, "runs", "run_id", run_id, **values)


def insert_point(path: Path | str, point: PointRecord, sweep_id: str | None = None) -> None:
    """Write one point (replacing an earlier row for the same run/batch/repeat) and bump the sweep count."""
    with writer(path) as con:
        _insert(con, "points", point_row(point), replace=True)
        if sweep_id is not None:
            con.execute(
                "UPDATE sweeps SET points_done = (SELECT count(*) FROM points p JOIN runs r USING (run_id) "
                "WHERE r.sweep_id = ?), heartbeat_at = ? WHERE sweep_id = ?",
                [sweep_id, utcnow(), sweep_id],
            )


def insert_imported(path: Path | str, runs: list[RunRecord], points: list[PointRecord]) -> None:
    """Write imported runs and their points in one transaction: all or nothing."""
    with writer(path) as con:
        for run in runs:
            _insert(con, "runs", run_row(run), replace=True)
        for point in points:
            _insert(con, "points", point_row(point), replace=True)


# ---------------------------------------------------------------------------------------------- reads used by writers


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def read_sweep(path: Path | str, sweep_id: str) -> dict[str, Any] | None:
    with writer(path) as con:
        rows = fetch_dicts(con, "SELECT * FROM sweeps WHERE sweep_id = ?", [sweep_id])
    return rows[0] if rows else None


def read_runs(path: Path | str, sweep_id: str | None = None, run_id: str | None = None) -> list[RunRecord]:
    sql, params = "SELECT * FROM runs WHERE 1=1", []
    if sweep_id is not None:
        sql += " AND sweep_id = ?"
        params.append(sweep_id)
    if run_id is not None:
        sql += " AND run_id = ?"
        params.append(run_id)
    with writer(path) as con:
        rows = fetch_dicts(con, sql + " ORDER BY started_at NULLS LAST, name", params)
    return [run_from_row(r) for r in rows]


def done_points(path: Path | str, run_id: str, redo: tuple[str, ...] = ()) -> set[tuple[int, int]]:
    """(batch, repeat) pairs that already have a row for this run, except rows whose status is in `redo`."""
    with writer(path) as con:
        rows = con.execute('SELECT batch, "repeat", status FROM points WHERE run_id = ?', [run_id]).fetchall()
    return {(int(b), int(r)) for b, r, status in rows if status not in redo}


def status_counts(path: Path | str, sweep_id: str) -> dict[str, int]:
    with writer(path) as con:
        rows = con.execute(
            "SELECT p.status, count(*) FROM points p JOIN runs r USING (run_id) WHERE r.sweep_id = ? GROUP BY 1",
            [sweep_id],
        ).fetchall()
    return {str(s): int(n) for s, n in rows}


def point_statuses(path: Path | str, run_id: str) -> dict[tuple[int, int], tuple[str, str | None]]:
    """(batch, repeat) -> (status, error) of a run's stored points (the cluster's --resume reruns lost ones)."""
    with writer(path) as con:
        rows = con.execute('SELECT batch, "repeat", status, error FROM points WHERE run_id = ?', [run_id]).fetchall()
    return {(int(b), int(r)): (str(s), e) for b, r, s, e in rows}


def insert_points(path: Path | str, points: list[PointRecord], sweep_id: str | None = None) -> None:
    """Write several points in one transaction (the cluster coordinator drains many at once), then the count."""
    if not points:
        return
    import pandas as pd

    rows = [point_row(p) for p in points]
    cols = list(rows[0])
    frame = pd.DataFrame(rows, columns=cols).astype(object)  # object: None stays NULL, ints stay ints
    quoted = ", ".join(f'"{c}"' for c in cols)
    with writer(path) as con:
        con.register("new_points", frame)  # one set-based statement: per-row INSERTs cost ~10-40 ms each
        try:
            con.execute(f"INSERT OR REPLACE INTO points ({quoted}) SELECT {quoted} FROM new_points")
        finally:
            con.unregister("new_points")
        if sweep_id is not None:
            con.execute(
                "UPDATE sweeps SET points_done = (SELECT count(*) FROM points p JOIN runs r USING (run_id) "
                "WHERE r.sweep_id = ?), heartbeat_at = ? WHERE sweep_id = ?",
                [sweep_id, utcnow(), sweep_id],
            )


def update_runs(path: Path | str, run_ids: list[str], **values: Any) -> None:
    """The same update on several runs, in one transaction (a cancelled cluster sweep closes all its runs)."""
    if not run_ids:
        return
    with writer(path) as con:
        for run_id in run_ids:
            _update(con, "runs", "run_id", run_id, **values)
