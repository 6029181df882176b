"""Writing imported files into the store: staged in bounded batches, then swapped in with one short transaction.

A long import must not starve a running sweep (whose every point is a short write). So the points of an import
(and its runs and sweep rows) are first copied into staging tables, `STAGE_BATCH_ROWS` at a time, each batch its
own short transaction that takes and releases the writer gate (`bench.store.connection.Gate`) and then pauses, so
a sweep waiting to write gets the file between two batches. The swap (delete the replaced rows, insert runs,
points and sweep rows from the staging tables with one INSERT ... SELECT each, drop the staging tables) is one
short transaction, so an import is still all or nothing: a failure or a kill before or during the swap leaves the
stored rows as they were. Staging tables left by a killed import (their names carry the importer's pid) are
dropped by the next import.

An import that would remove stored points (a run re-imported with fewer points than the database holds, or a
report re-imported without a run it listed before) is refused unless `replace=True`, with the counts.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from bench.errors import BadInputError
from bench.locks import pid_alive
from bench.records import PointRecord, RunRecord, SweepRecord
from bench.store import point_row, run_row, sweep_row, writer

STAGE_BATCH_ROWS = 1000  # about 0.3 s of writing on a 2-core box: the longest a sweep's point write waits
YIELD_S = 0.05  # pause between batches so a waiting writer (a sweep's point) takes the gate first
_STAGE_PREFIX = "import_stage_"
_STAGE_RE = re.compile(rf"^{_STAGE_PREFIX}(\d+)_[0-9a-f]+_[a-z]+$")


@dataclass
class ImportBatch:
    """The rows one parsed file contributes."""

    file_name: str
    runs: list[RunRecord]
    points: list[PointRecord]
    sweeps: list[SweepRecord] = field(default_factory=list)
    drop_stale: bool = False  # a report: drop runs an earlier import of this file created that it no longer lists
    quality: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # run_id -> {domain: {metric: v}}

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


def removals(con: duckdb.DuckDBPyConnection, batches: list[ImportBatch], staged: str | None = None) -> list[Removal]:
    """Stored points each file would remove (points of its runs it does not carry, and runs it no longer lists).
    The file's keys come from the staging table `staged` (inside the swap) or from the batches themselves."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "points" not in tables:
        return []
    out = []
    for b in batches:
        ids = [r.run_id for r in b.runs]
        keys = _keys_frame(b)  # noqa: F841  (read by name in the SQL below when nothing is staged)
        source = f'"{staged}"' if staged else "keys"
        lost = con.execute(
            f"""SELECT p.run_id, any_value(r.name), count(*) FROM points p JOIN runs r USING (run_id)
               WHERE p.run_id IN (SELECT unnest(?::VARCHAR[]))
                 AND NOT EXISTS (SELECT 1 FROM {source} k WHERE k.run_id = p.run_id AND k.batch = p.batch
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
    for col in rows[0]:
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


def _stage(db: Path | str, table: str, stage: str, rows: list[dict[str, Any]],
           progress: Callable[[int, int], None] | None = None) -> None:
    """Copy rows into a new staging table shaped like `table`, in batches, each its own short transaction."""
    with writer(db) as con:
        con.execute(f'CREATE TABLE "{stage}" AS SELECT * FROM {table} LIMIT 0')
        types = {name: typ for name, typ in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [stage]
        ).fetchall()}
    for start in range(0, len(rows), STAGE_BATCH_ROWS):
        part = rows[start:start + STAGE_BATCH_ROWS]
        chunk = _frame(part, types)  # noqa: F841  (read by name in the SQL below)
        names = ", ".join(f'"{c}"' for c in part[0])
        with writer(db) as con:
            con.execute(f'INSERT INTO "{stage}" ({names}) SELECT {names} FROM chunk')
        if progress is not None:
            progress(min(start + STAGE_BATCH_ROWS, len(rows)), len(rows))
        time.sleep(YIELD_S)  # let a writer that waited during this batch (a sweep's point) go first


def _drop(db: Path | str, stages: list[str]) -> None:
    try:
        with writer(db) as con:
            for stage in stages:
                con.execute(f'DROP TABLE IF EXISTS "{stage}"')
    except Exception:  # best effort: the next import drops them (their pid is gone by then)
        pass


def write_import(
    db: Path | str,
    batches: list[ImportBatch],
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write parsed files: refuse removals unless `replace`, stage points, runs and sweeps in batches, then swap
    them in with one short transaction. All or nothing; nothing is created when the import is refused."""
    found = check_removals(db, batches)
    if found and not replace:
        raise _refuse(found)
    if Path(db).exists():
        drop_stale_stages(db)
    token = f"{_STAGE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    stage = {kind: f"{token}_{kind}" for kind in ("points", "runs", "sweeps")}
    rows = {
        "points": [point_row(p) for b in batches for p in b.points],
        "runs": [run_row(r) for b in batches for r in b.runs],
        "sweeps": [sweep_row(s) for b in batches for s in b.sweeps],
    }
    try:
        for kind in ("points", "runs", "sweeps"):
            if rows[kind]:
                _stage(db, kind, stage[kind], rows[kind], progress if kind == "points" else None)
        with writer(db) as con:
            if not replace and rows["points"]:  # a sweep may have written between the check and here
                found = removals(con, batches, staged=stage["points"])
                if found:
                    raise _refuse(found)
            ids = [r.run_id for b in batches for r in b.runs]
            for b in batches:
                if b.drop_stale:
                    stale = [r[0] for r in con.execute(
                        "SELECT run_id FROM runs WHERE source = ? AND run_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                        [b.source, [r.run_id for r in b.runs]],
                    ).fetchall()]
                    ids += stale
            con.execute("DELETE FROM points WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
            con.execute("DELETE FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
            for kind in ("runs", "points"):
                if rows[kind]:
                    names = ", ".join(f'"{c}"' for c in rows[kind][0])
                    con.execute(f'INSERT INTO {kind} ({names}) SELECT {names} FROM "{stage[kind]}"')
            if rows["sweeps"]:
                names = ", ".join(f'"{c}"' for c in rows["sweeps"][0])
                # an earlier import's row is refreshed; a sweep measured in this database keeps its own row
                con.execute(f"""DELETE FROM sweeps WHERE source LIKE 'imported:%'
                                AND sweep_id IN (SELECT sweep_id FROM "{stage['sweeps']}")""")
                con.execute(f"""INSERT INTO sweeps ({names}) SELECT {names} FROM "{stage['sweeps']}"
                                WHERE sweep_id NOT IN (SELECT sweep_id FROM sweeps)""")
            for b in batches:  # quality figures a JSONL carried: a few rows per run
                for run_id, domains in b.quality.items():
                    con.execute("DELETE FROM quality WHERE run_id = ?", [run_id])
                    for domain, metrics in domains.items():
                        for metric, value in metrics.items():
                            if metric not in ("tokens", "seconds"):
                                con.execute(
                                    "INSERT INTO quality (run_id, domain, metric, value, tokens, seconds) "
                                    "VALUES (?, ?, ?, ?, ?, ?)",
                                    [run_id, domain, metric, value, metrics.get("tokens"), metrics.get("seconds")])
            for kind in ("points", "runs", "sweeps"):
                con.execute(f'DROP TABLE IF EXISTS "{stage[kind]}"')
    except BaseException:
        _drop(db, list(stage.values()))
        raise
