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


def _sweeps(db) -> dict[str, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT sweep_id, state, points_done, points_planned, source, message, title FROM sweeps"
        ).fetchall()
        orphans = con.execute(
            "SELECT count(*) FROM runs WHERE sweep_id IS NOT NULL AND sweep_id NOT IN (SELECT sweep_id FROM sweeps)"
        ).fetchone()[0]
    finally:
        con.close()
    assert orphans == 0
    return {r[0]: r[1:] for r in rows}


def test_jsonl_import_rebuilds_the_sweep_rows_and_says_they_were_imported(tmp_path, capsys):
    db = tmp_path / "default.duckdb"
    assert main(["build-db", "--db", str(db)]) == 0
    capsys.readouterr()
    sweeps = _sweeps(db)
    assert len(sweeps) >= 3
    hf = RESULTS_DIR / "union-prunes-hf-h100-2026-11-27.jsonl"
    state, done, planned, source, message, title = sweeps["s20261127-144305-02dbea"]
    # 5 variants x 6 batch sizes x 2 repeats, as the runs' configs say; the committed file holds them all
    assert (state, done, planned, source) == ("done", 60, 60, f"imported:{hf.name}")
    assert "imported from" in message and title
    for state, *_ in sweeps.values():
        assert state == "done"  # every committed results file is complete
    assert main(["ls", "--db", str(db)]) == 0
    assert f"[imported from {hf.name}]" in capsys.readouterr().out


def test_a_truncated_jsonl_does_not_import_as_a_complete_sweep(tmp_path, capsys):
    """Issue 8 §2: a JSONL cut short (here: its last 7 lines gone) gives an `incomplete` sweep with the planned
    points from the configs, never `done` with planned = done."""
    hf = RESULTS_DIR / "union-prunes-hf-h100-2026-11-27.jsonl"
    cut = tmp_path / hf.name
    cut.write_text("".join(hf.read_text().splitlines(keepends=True)[:-7]))
    db = tmp_path / "cut.duckdb"
    assert main(["import", str(cut), "--db", str(db)]) == 0
    state, done, planned, source, message, _ = _sweeps(db)["s20261127-144305-02dbea"]
    assert (state, done, planned, source) == ("incomplete", 53, 60, f"imported:{cut.name}")
    assert "53 of 60 planned points" in message and "fewer points than the sweep planned" in message
    capsys.readouterr()
    assert main(["ls", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["state"], r["source"]) for r in rows] == [("incomplete", f"imported:{cut.name}")]


def test_the_runs_page_shows_imported_sweeps_as_imported(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from bench.paths import PROJECT_ROOT

    hf = RESULTS_DIR / "union-prunes-hf-h100-2026-11-27.jsonl"
    cut = tmp_path / hf.name
    cut.write_text("".join(hf.read_text().splitlines(keepends=True)[:-7]))
    db = tmp_path / "bench.duckdb"
    assert main(["import", str(cut), "--db", str(db)]) == 0
    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(df.value for df in at.dataframe if "origin" in df.value.columns)
    row = table.set_index("sweep_id").loc["s20261127-144305-02dbea"]
    assert row["origin"] == f"imported from {cut.name}"
    assert row["shown_state"] == "incomplete" and row["points"] == "53 / 60"
