"""Schema migration: a database written by schema v1 (tests/fixtures/schema_v1.sql, a real tiny CPU sweep plus an
imported GPU run) opens with the current code, is migrated to the current version on the first write, and keeps
every row. Readers (bench.store.queries, `python -m bench ls --json`) work on it before and after the migration.

`dump_inserts` is the helper that produced the fixture's INSERT statements (see the fixture's header).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bench import store
from bench.paths import PROJECT_ROOT
from bench.records import PointRecord, SweepRecord
from bench.store import queries

FIXTURE = PROJECT_ROOT / "tests" / "fixtures" / "schema_v1.sql"
TABLES = ("schema_meta", "sweeps", "runs", "points")
KEYS = {"schema_meta": "key", "sweeps": "sweep_id", "runs": "run_id", "points": 'run_id, batch, "repeat"',
        "calibrations": "calibration_id", "calibration_experts": "calibration_id, layer, expert",
        "quality": "run_id, domain, metric"}
# What schema v2 and v3 added (bench/store/__init__.py MIGRATIONS): nullable columns, NULL on migrated rows.
V2_COLUMNS = {"runs": {"engine_options"}, "points": {"kv_bytes"}}
V3_COLUMNS = {"sweeps": {"source", "cluster"},
              "runs": {"weights", "weights_impl", "prompts", "gpu_index", "gpu_uuid", "worker_address"},
              "points": {"experts_measured", "bandwidth_source"}}
NEW_COLUMNS = {t: V2_COLUMNS.get(t, set()) | V3_COLUMNS.get(t, set()) for t in ("sweeps", "runs", "points")}
V3_TABLES = ("calibrations", "calibration_experts", "quality")


def _literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else f"'{v}'::DOUBLE"
    if isinstance(v, datetime):
        return f"TIMESTAMPTZ '{v.isoformat()}'"
    return "'" + str(v).replace("'", "''") + "'"


def dump_inserts(con: duckdb.DuckDBPyConnection, tables: tuple[str, ...] = TABLES) -> str:
    """Every row of `tables` as INSERT statements with explicit column lists, in primary-key order."""
    out = []
    for table in tables:
        cur = con.execute(f"SELECT * FROM {table} ORDER BY {KEYS[table]}")
        cols = ", ".join(f'"{d[0]}"' for d in cur.description)
        for row in cur.fetchall():
            out.append(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(_literal(v) for v in row)});")
    return "\n".join(out) + "\n"


def build_v1_db(path: Path) -> Path:
    con = duckdb.connect(str(path))
    try:
        con.execute(FIXTURE.read_text())
    finally:
        con.close()
    return path


def table_rows(db: Path, table: str, columns: list[str] | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        return con.execute(f"SELECT {cols} FROM {table} ORDER BY {KEYS[table]}").fetchall()
    finally:
        con.close()


def column_names(db: Path, table: str) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [table]).fetchall()]
    finally:
        con.close()


def version_of(db: Path) -> int | None:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return store.schema_version_of(con)
    finally:
        con.close()


def ls_json(db: Path) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "bench", "ls", "--json", "--db", str(db)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def v1_db(tmp_path: Path) -> Path:
    return build_v1_db(tmp_path / "old.duckdb")


def test_fixture_is_schema_v1_with_a_real_sweep(v1_db: Path) -> None:
    assert version_of(v1_db) == 1
    assert store.SCHEMA_VERSION >= 2  # the fixture is the previous version, not the current one
    assert len(table_rows(v1_db, "sweeps")) == 1
    assert len(table_rows(v1_db, "runs")) == 3
    statuses = sorted(r[0] for r in table_rows(v1_db, "points", ["status"]))
    assert statuses.count("ok") == 8 and statuses.count("oom") == 2 and statuses.count("skipped") == 1
    for table, cols in V2_COLUMNS.items():
        assert not cols & set(column_names(v1_db, table))


def test_readers_work_on_an_unmigrated_v1_database(v1_db: Path) -> None:
    before = v1_db.read_bytes()
    listed = ls_json(v1_db)
    assert [(s["id"], s["state"], s["points_done"]) for s in listed] == [("s-v1-fixture", "done", 8)]
    info = queries.db_info(v1_db)
    assert info.error is None and info.schema_version == 1 and (info.n_runs, info.n_points) == (3, 11)
    runs = queries.runs(v1_db)
    assert set(runs["name"]) == {"base_topk2", "half_topk1", "oomcheck"}
    assert len(queries.point_summary(v1_db)) == 7  # (run, batch): 2 + 2 tiny, 3 imported (1, 4096, 2)
    assert version_of(v1_db) == 1 and v1_db.read_bytes() == before  # reading never migrates or writes


def test_first_write_migrates_to_the_current_version_and_keeps_every_row(v1_db: Path, tmp_path: Path) -> None:
    reference = build_v1_db(tmp_path / "reference.duckdb")  # an untouched copy to compare against
    old = {t: (column_names(reference, t), table_rows(reference, t)) for t in TABLES if t != "schema_meta"}

    # a write by the current code: a new sweep and a point for an existing v1 run
    run_id = next(r for r, n in table_rows(v1_db, "runs", ["run_id", "name"]) if n == "base_topk2")
    store.insert_sweep(v1_db, SweepRecord(sweep_id="s-after-migration", title="after", spec_json="{}", state="done"))
    store.insert_point(v1_db, PointRecord(run_id=run_id, batch=64, repeat=0, status="ok", total_tps=1.0))

    assert version_of(v1_db) == store.SCHEMA_VERSION
    for table, (cols, rows) in old.items():
        now_cols = column_names(v1_db, table)
        assert now_cols[: len(cols)] == cols  # old columns in the same order; new ones appended
        assert set(now_cols) - set(cols) == NEW_COLUMNS.get(table, set())
        after = table_rows(v1_db, table, cols)
        for row in rows:  # every v1 row is still there, value for value
            assert row in after, (table, row)
    assert len(table_rows(v1_db, "points")) == 12 and len(table_rows(v1_db, "sweeps")) == 2
    for table in V3_TABLES:  # tables new in v3 exist (empty) after the migration
        assert table_rows(v1_db, table) == []
    assert {r[0] for r in table_rows(v1_db, "sweeps", ["source"])} == {"measured"}
    nulls = table_rows(v1_db, "points", ["kv_bytes"])
    assert all(r[0] is None for r in nulls)

    # the readers see the migrated file, old rows included
    listed = {s["id"]: s for s in ls_json(v1_db)}
    assert listed["s-v1-fixture"]["state"] == "done" and listed["s-v1-fixture"]["points_done"] == 8
    assert queries.db_info(v1_db).schema_version == store.SCHEMA_VERSION
    assert len(queries.points(v1_db, [run_id])) == 5
    # a second open does not migrate again (no error, same version, same rows)
    store.init_db(v1_db)
    assert version_of(v1_db) == store.SCHEMA_VERSION and len(table_rows(v1_db, "points")) == 12


def test_new_columns_are_writable_after_migration(v1_db: Path) -> None:
    store.init_db(v1_db)
    with store.writer(v1_db) as con:
        con.execute("UPDATE runs SET engine_options = ? WHERE name = 'base_topk2'", [json.dumps({"cuda_graph": False})])
        con.execute("UPDATE points SET kv_bytes = 1024.0 WHERE batch = 1")
    assert table_rows(v1_db, "points", ["kv_bytes"]).count((1024.0,)) == 5  # 2 + 2 tiny repeats, 1 imported


def test_a_failed_migration_changes_nothing(v1_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration runs in one transaction: a broken step leaves the file at v1 with its rows."""
    before = {t: table_rows(v1_db, t) for t in TABLES}
    broken = dict(store.MIGRATIONS)
    broken[store.SCHEMA_VERSION] = broken[store.SCHEMA_VERSION] + "\nALTER TABLE no_such_table ADD COLUMN x INTEGER;"
    monkeypatch.setattr(store, "MIGRATIONS", broken)
    with pytest.raises(duckdb.Error):
        store.init_db(v1_db)
    assert version_of(v1_db) == 1
    assert {t: table_rows(v1_db, t) for t in TABLES} == before
    for table, cols in V2_COLUMNS.items():
        assert not cols & set(column_names(v1_db, table))


def test_dump_inserts_round_trips(v1_db: Path, tmp_path: Path) -> None:
    """The fixture's generator reproduces the fixture's rows exactly (so a regenerated fixture is faithful)."""
    con = duckdb.connect(str(v1_db), read_only=True)
    try:
        sql = dump_inserts(con)
    finally:
        con.close()
    copy = tmp_path / "copy.duckdb"
    con = duckdb.connect(str(copy))
    try:
        ddl = FIXTURE.read_text().split("-- rows", 1)[0]
        con.execute(ddl)
        con.execute(sql)
    finally:
        con.close()
    for t in TABLES:
        assert table_rows(copy, t) == table_rows(v1_db, t), t


if __name__ == "__main__":  # print the INSERTs of a database (how tests/fixtures/schema_v1.sql was produced)
    c = duckdb.connect(sys.argv[1], read_only=True)
    sys.stdout.write(dump_inserts(c))
    c.close()
