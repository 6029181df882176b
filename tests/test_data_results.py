"""The committed data/ folder builds the default database: every report and GPU results file imports."""

from __future__ import annotations

import json

import duckdb

from bench.cli import main
from bench.paths import RESULTS_DIR


def test_build_db_imports_every_committed_file(tmp_path, capsys):
    db = tmp_path / "default.duckdb"
    assert main(["build-db", "--db", str(db)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = sorted(p.name for p in RESULTS_DIR.glob("*.jsonl"))
    assert set(results) <= set(summary["files"])
    con = duckdb.connect(str(db), read_only=True)
    try:
        engines = {e for (e,) in con.execute("SELECT DISTINCT engine FROM runs WHERE source = 'measured'").fetchall()}
        sql = "SELECT DISTINCT device_name FROM runs WHERE source = 'measured'"
        cards = {c for (c,) in con.execute(sql).fetchall()}
        imported = con.execute("SELECT count(*) FROM runs WHERE source LIKE 'imported:%'").fetchone()[0]
    finally:
        con.close()
    assert {"hf", "graph"} <= engines  # the seed sweep measured both ways
    assert any("H100" in c for c in cards)
    assert imported == 5  # the reference report's five runs


def test_jsonl_import_rebuilds_the_sweep_rows(tmp_path, capsys):
    db = tmp_path / "default.duckdb"
    assert main(["build-db", "--db", str(db)]) == 0
    capsys.readouterr()
    con = duckdb.connect(str(db), read_only=True)
    try:
        sweeps = con.execute(
            "SELECT s.sweep_id, s.state, s.points_done, s.points_planned, s.title, count(p.run_id) FROM sweeps s "
            "JOIN runs r USING (sweep_id) JOIN points p USING (run_id) GROUP BY ALL"
        ).fetchall()
        orphans = con.execute(
            "SELECT count(*) FROM runs WHERE sweep_id IS NOT NULL AND sweep_id NOT IN (SELECT sweep_id FROM sweeps)"
        ).fetchone()[0]
    finally:
        con.close()
    assert orphans == 0
    assert len(sweeps) >= 3
    for _id, state, done, planned, title, points in sweeps:
        assert state == "done" and done == planned == points and title
