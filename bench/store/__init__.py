"""The DuckDB store: schema creation and migration, and every write the bench makes.

Only bench processes write. Each write opens a short read-write connection, commits and closes, and
retries with backoff while another process holds the file lock (DESIGN.md, "DuckDB across processes").
Readers (the dashboard) go through `bench.store.queries`, which uses `connect(..., read_only=True)`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import duckdb

from bench.errors import StoreError
from bench.paths import device_locks_dir
from bench.records import EnvFingerprint, PointRecord, RunRecord, SweepRecord, utcnow

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
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

LOCK_RETRY_SECONDS = 30.0

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


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "lock on file" in text


class _Gate:
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
    path: Path | str, read_only: bool = False, timeout_s: float = LOCK_RETRY_SECONDS, _gate: _Gate | None = None
) -> duckdb.DuckDBPyConnection:
    """Open `path`, retrying with jittered backoff while another process holds the lock (writers first, see _Gate).

    Raises StoreError naming the file when it is not a DuckDB database or stays locked.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"database {path} does not exist; run `make run` or `python -m bench import` first")
    deadline = time.monotonic() + timeout_s
    if _gate is not None:  # writer(): the caller holds the gate until it has closed the connection
        return _connect_retrying(path, read_only, timeout_s, deadline, _gate)
    gate = _Gate(path)
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
        raise StoreError(
            f"database {path} cannot be read ({exc}); it is truncated or corrupt. "
            "Move it aside and rebuild it with `make run` or `python -m bench import data/results/*.jsonl`"
        ) from exc
    return con


def _connect_retrying(
    path: Path, read_only: bool, timeout_s: float, deadline: float, gate: _Gate
) -> duckdb.DuckDBPyConnection:
    delay = 0.02
    while True:
        gated = gate.fd is not None or (read_only and gate.pass_shared(deadline))
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            return _probed(con, path)
        except duckdb.IOException as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(delay * (0.5 + random.random()))
                # behind a gate the wait is short (the writer's transaction or readers already inside): poll quickly
                delay = min(delay * 1.6, 0.05 if gated else 0.5)
                continue
            if _is_lock_error(exc):
                raise StoreError(
                    f"database {path} stayed locked by another process for {timeout_s:.0f}s; "
                    "wait for the running sweep to finish or point --db/BENCH_DB elsewhere"
                ) from exc
            raise StoreError(
                f"database {path} cannot be opened ({exc}); it is not a DuckDB file or is corrupt. "
                "Move it aside and rebuild it with `make run` or `python -m bench import data/results/*.jsonl`"
            ) from exc
        except duckdb.Error as exc:
            raise StoreError(
                f"database {path} cannot be opened ({exc}); it is not a DuckDB file or is corrupt. "
                "Move it aside and rebuild it with `make run` or `python -m bench import data/results/*.jsonl`"
            ) from exc


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
    except Exception:
        con.execute("ROLLBACK")
        raise


@contextmanager
def writer(path: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write connection with the schema in place; commits on success, always closes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gate = _Gate(path)
    gate.hold_exclusive(time.monotonic() + LOCK_RETRY_SECONDS)  # readers queue until this write has closed
    try:
        con = connect(path, read_only=False, _gate=gate)
        try:
            _ensure_schema(con, path)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
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
