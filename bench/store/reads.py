"""Read-only SQL for the commands: `ls`, `export`, and the existence checks a command makes before it writes.

Every function opens the database read-only (`bench.store.connect(..., read_only=True)`), so none of them creates
the file, its folder or its schema: a command refused for an unknown id leaves the disk as it was. The dashboard's
page queries live beside this module in `bench.store.queries`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import duckdb

from bench.records import PointRecord, RunRecord
from bench.store import check_version, connect, run_from_row, schema_version_of

_POINT_COLUMNS = [f.name for f in fields(PointRecord)]  # points table columns, in PointRecord order


@contextmanager
def _reader(db: Path | str) -> Iterator[tuple[duckdb.DuckDBPyConnection, set[str]]]:
    """A read-only connection and the set of table names (empty for a file without the schema)."""
    con = connect(db, read_only=True)
    try:
        check_version(Path(db), schema_version_of(con))
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        yield con, tables
    finally:
        con.close()


def _dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------- existence checks


def has_sweep(db: Path | str, sweep_id: str) -> bool:
    """Whether the sweep is registered. False (and nothing created) when the database file does not exist."""
    if not Path(db).exists():
        return False
    with _reader(db) as (con, tables):
        if "sweeps" not in tables:
            return False
        return con.execute("SELECT 1 FROM sweeps WHERE sweep_id = ?", [sweep_id]).fetchone() is not None


def has_run(db: Path | str, run_id: str) -> bool:
    """Whether the run is stored. False (and nothing created) when the database file does not exist."""
    if not Path(db).exists():
        return False
    with _reader(db) as (con, tables):
        if "runs" not in tables:
            return False
        return con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is not None


# ---------------------------------------------------------------------------------------------- ls


def list_sweeps(db: Path | str) -> list[dict[str, Any]]:
    """Sweep rows for `ls`, oldest first, with `source` ('measured' or 'imported:<file>') and the lock path."""
    with _reader(db) as (con, tables):
        if "sweeps" not in tables:
            return []
        columns = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'sweeps'").fetchall()}
        source = "source" if "source" in columns else "'measured' AS source"  # readers do not migrate (v1, v2)
        return _dicts(
            con,
            "SELECT sweep_id AS id, title, state, points_done, points_planned, current_variant, device_key, pid, "
            f"lock_path, created_at, started_at, finished_at, heartbeat_at, message, {source} "
            "FROM sweeps ORDER BY created_at",
        )


def list_runs(db: Path | str) -> list[dict[str, Any]]:
    """Run rows for `ls --runs` with their point counts."""
    with _reader(db) as (con, tables):
        if "runs" not in tables:
            return []
        return _dicts(
            con,
            "SELECT r.run_id AS id, r.sweep_id, r.name, r.model, r.top_k, r.experts, r.engine, r.device_name, "
            "r.source, r.state, r.rerun_of, r.started_at, count(p.run_id) AS points "
            "FROM runs r LEFT JOIN points p USING (run_id) "
            "GROUP BY ALL ORDER BY r.started_at NULLS FIRST, r.name",
        )


# ---------------------------------------------------------------------------------------------- export


def all_runs(db: Path | str) -> list[RunRecord]:
    """Every stored run ([] for a database without the schema)."""
    with _reader(db) as (con, tables):
        if "runs" not in tables:
            return []
        return [run_from_row(r) for r in _dicts(con, "SELECT * FROM runs")]


def points_and_titles(db: Path | str, runs: list[RunRecord]) -> tuple[list[PointRecord], dict[str, str]]:
    """The points of `runs` (PointRecords) and the titles of their sweeps, in one read-only connection."""
    ids = [r.run_id for r in runs]
    if not ids:
        return [], {}
    with _reader(db) as (con, tables):
        if "points" not in tables:
            return [], {}
        cols = ", ".join(f'"{name}"' for name in _POINT_COLUMNS)
        sql = f"SELECT {cols} FROM points WHERE run_id IN (SELECT unnest(?::VARCHAR[]))"
        points = [PointRecord(*row) for row in con.execute(sql, [ids]).fetchall()]
        titles: dict[str, str] = {}
        sweep_ids = sorted({r.sweep_id for r in runs if r.sweep_id})
        if sweep_ids and "sweeps" in tables:
            rows = con.execute(
                "SELECT sweep_id, title FROM sweeps WHERE sweep_id IN (SELECT unnest(?::VARCHAR[]))", [sweep_ids]
            ).fetchall()
            titles = {sid: title for sid, title in rows}
    return points, titles


def quality_of(db: Path | str, run_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Quality figures of the runs: run_id -> {domain: {metric: value, "tokens": n[, "seconds": s]}}."""
    if not run_ids:
        return {}
    with _reader(db) as (con, tables):
        if "quality" not in tables:
            return {}
        rows = con.execute(
            "SELECT run_id, domain, metric, value, tokens, seconds FROM quality "
            "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, domain, metric", [run_ids]).fetchall()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run_id, domain, metric, value, tokens, seconds in rows:
        d = out.setdefault(run_id, {}).setdefault(domain, {})
        d[metric] = value
        d["tokens"] = tokens
        if seconds is not None:
            d["seconds"] = seconds
    return out
