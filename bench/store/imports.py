"""Writing imported files into the store: staged in bounded batches, then swapped in with one short transaction.

A long import must not starve a running sweep (whose every point is a short write). So the points of an import
are first copied into a staging table, `STAGE_BATCH_ROWS` at a time, each batch its own short transaction that
takes and releases the writer gate (`bench.store.connection.Gate`) and then pauses, so a sweep waiting to write
gets the file between two batches. The swap (delete the replaced rows, insert runs, points from the staging table
and sweep rows, drop the staging table) is one transaction, so an import is still all or nothing: a failure or a
kill before or during the swap leaves the stored rows as they were. A staging table left by a killed import
(its name carries the importer's pid) is dropped by the next import.

An import that would remove stored points (a run re-imported with fewer points than the database holds, or a
report re-imported without a run it listed before) is refused unless `replace=True`, with the counts.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from bench.errors import BadInputError
from bench.locks import pid_alive
from bench.records import PointRecord, RunRecord, SweepRecord
from bench.store import _insert, point_row, run_row, sweep_row, writer

STAGE_BATCH_ROWS = 1000  # about 0.3 s of writing on a 2-core box: the longest a sweep's point write waits
YIELD_S = 0.05  # pause between batches so a waiting writer (a sweep's point) takes the gate first
_STAGE_PREFIX = "import_stage_"
_STAGE_RE = re.compile(rf"^{_STAGE_PREFIX}(\d+)_[0-9a-f]+$")
_POINT_COLUMNS = [f.name for f in fields(PointRecord)]


@dataclass
class ImportBatch:
    """The rows one parsed file contributes."""

    file_name: str
    runs: list[RunRecord]
    points: list[PointRecord]
    sweeps: list[SweepRecord] = field(default_factory=list)
    drop_stale: bool = False  # a report: drop runs an earlier import of this file created that it no longer lists

    @property
    def source(self) -> str:
        return f"imported:{self.file_name}"


@dataclass
class Removal:
    """What an import would delete: per file, the stored points it does not bring back, and stale runs."""

    file_name: str
    points: int
    runs: list[str]  # labels of the runs losing points ("name (run_id): N of M points")


def _keys_frame(batch: ImportBatch) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": pd.Series([p.run_id for p in batch.points], dtype=object),
            "batch": pd.Series([p.batch for p in batch.points], dtype="int64"),
            "repeat": pd.Series([p.repeat for p in batch.points], dtype="int64"),
        }
    )


def removals(con: duckdb.DuckDBPyConnection, batches: list[ImportBatch]) -> list[Removal]:
    """Stored points each file would remove (points of its runs it does not carry, and runs it no longer lists)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "points" not in tables:
        return []
    out = []
    for b in batches:
        ids = [r.run_id for r in b.runs]
        keys = _keys_frame(b)  # noqa: F841  (read by name in the SQL below)
        lost = con.execute(
            """SELECT p.run_id, any_value(r.name), count(*) FROM points p JOIN runs r USING (run_id)
               WHERE p.run_id IN (SELECT unnest(?::VARCHAR[]))
                 AND NOT EXISTS (SELECT 1 FROM keys k WHERE k.run_id = p.run_id AND k.batch = p.batch
                                 AND k."repeat" = p."repeat")
               GROUP BY 1 ORDER BY 1""",
            [ids],
        ).fetchall()
        labels = [f"{name} ({rid}): {n} point(s)" for rid, name, n in lost]
        n = sum(int(x[2]) for x in lost)
        if b.drop_stale:
            stale = con.execute(
                """SELECT r.run_id, r.name, count(p.run_id) FROM runs r LEFT JOIN points p USING (run_id)
                   WHERE r.source = ? AND r.run_id NOT IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL ORDER BY 1""",
                [b.source, ids],
            ).fetchall()
            labels += [f"{name} ({rid}, no longer in the file): {k} point(s)" for rid, name, k in stale]
            n += sum(int(x[2]) for x in stale)
        if n:
            out.append(Removal(b.file_name, n, labels))
    return out


def _refuse(found: list[Removal]) -> BadInputError:
    total = sum(r.points for r in found)
    detail = "; ".join(f"{r.file_name}: " + ", ".join(r.runs[:5]) + (" ..." if len(r.runs) > 5 else "")
                       for r in found)
    return BadInputError(
        f"import would remove {total} stored point(s) that the file(s) do not carry ({detail}); nothing was "
        "imported. Pass --replace to replace those runs with the file's contents"
    )


def check_removals(db: Path | str, batches: list[ImportBatch]) -> list[Removal]:
    """The removals, read without creating or migrating anything (an absent file removes nothing)."""
    from bench.store import connect

    if not Path(db).exists():
        return []
    con = connect(db, read_only=True)
    try:
        return removals(con, batches)
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------- staging


def _frame(rows: list[dict[str, Any]], types: dict[str, str]) -> pd.DataFrame:
    """The rows as a DataFrame with each column's dtype set from the table's SQL type (None stays NULL)."""
    data = {}
    for col in _POINT_COLUMNS:
        values = [r[col] for r in rows]
        sql = types[col].upper()
        if sql in ("DOUBLE", "FLOAT", "REAL"):
            data[col] = pd.Series([float("nan") if v is None else float(v) for v in values], dtype="float64")
        elif sql in ("INTEGER", "BIGINT", "SMALLINT"):
            data[col] = pd.Series(values, dtype="Int64")
        elif sql == "BOOLEAN":
            data[col] = pd.Series(values, dtype="boolean")
        elif sql.startswith("TIMESTAMP"):
            data[col] = pd.to_datetime(pd.Series(values, dtype=object), utc=True)
        else:
            data[col] = pd.Series(values, dtype=object)
    return pd.DataFrame(data)


def drop_stale_stages(db: Path | str) -> list[str]:
    """Drop staging tables whose importer process is gone (a killed import). Returns their names."""
    dropped = []
    with writer(db) as con:
        for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE ?", [_STAGE_PREFIX + "%"]
        ).fetchall():
            m = _STAGE_RE.match(name)
            if m and not pid_alive(int(m.group(1))):
                con.execute(f'DROP TABLE "{name}"')
                dropped.append(name)
    return dropped


def _stage(db: Path | str, points: list[PointRecord], progress: Callable[[int, int], None] | None) -> str:
    """Copy the points into a new staging table in batches, each in its own short transaction."""
    table = f"{_STAGE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    with writer(db) as con:
        con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM points LIMIT 0')
        types = {name: typ for name, typ in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()}
    names = ", ".join(f'"{c}"' for c in _POINT_COLUMNS)
    for start in range(0, len(points), STAGE_BATCH_ROWS):
        chunk = _frame([point_row(p) for p in points[start:start + STAGE_BATCH_ROWS]], types)  # noqa: F841
        with writer(db) as con:
            con.execute(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM chunk')
        if progress is not None:
            progress(min(start + STAGE_BATCH_ROWS, len(points)), len(points))
        time.sleep(YIELD_S)  # let a writer that waited during this batch (a sweep's point) go first
    return table


def _drop(db: Path | str, table: str) -> None:
    try:
        with writer(db) as con:
            con.execute(f'DROP TABLE IF EXISTS "{table}"')
    except Exception:  # best effort: the next import drops it (its pid is gone by then)
        pass


def write_import(
    db: Path | str,
    batches: list[ImportBatch],
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write parsed files: refuse removals unless `replace`, stage the points in batches, then swap in one
    transaction. All or nothing; nothing is created when the import is refused."""
    found = check_removals(db, batches)
    if found and not replace:
        raise _refuse(found)
    if Path(db).exists():
        drop_stale_stages(db)
    points = [p for b in batches for p in b.points]
    table = _stage(db, points, progress)
    try:
        with writer(db) as con:
            if not replace:  # a sweep may have written between the check and here
                found = removals(con, batches)
                if found:
                    raise _refuse(found)
            for b in batches:
                ids = [r.run_id for r in b.runs]
                clear = list(ids)
                if b.drop_stale:
                    stale = [r[0] for r in con.execute(
                        "SELECT run_id FROM runs WHERE source = ? AND run_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                        [b.source, ids],
                    ).fetchall()]
                    clear += stale
                    con.execute("DELETE FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [stale])
                con.execute("DELETE FROM points WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [clear])
                for run in b.runs:
                    _insert(con, "runs", run_row(run), replace=True)
            names = ", ".join(f'"{c}"' for c in _POINT_COLUMNS)
            con.execute(f'INSERT INTO points ({names}) SELECT {names} FROM "{table}"')
            for b in batches:
                for sweep in b.sweeps:
                    row = con.execute("SELECT source FROM sweeps WHERE sweep_id = ?", [sweep.sweep_id]).fetchone()
                    if row is None:
                        _insert(con, "sweeps", sweep_row(sweep))
                    elif str(row[0]).startswith("imported:"):  # an earlier import's row: refresh it
                        _insert(con, "sweeps", sweep_row(sweep), replace=True)
                    # a measured sweep of this database keeps its own row
            con.execute(f'DROP TABLE "{table}"')
    except BaseException:
        _drop(db, table)
        raise
