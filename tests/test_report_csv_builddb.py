"""CSV export columns and values; `build-db` creates the default database from data/reports and data/results."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fixtures.report_helpers import REFERENCE, cli, last_json, measured_run, write_measured

from bench import store
from bench.commands import build_db
from bench.errors import BadInputError
from bench.report import export_selection
from bench.report.csv_export import csv_columns
from bench.report.jsonl import HEADLINE_KEYS, POINT_KEYS


def test_csv_columns_match_flattened_jsonl(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    write_measured(db, measured_run("r1", 'tiny, "quoted" | name'))
    code, out, err = cli(capsys, "export", "--format", "csv", "--db", str(db))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    header = out.splitlines()[0].split(",")
    assert header == csv_columns()
    assert header[: len(HEADLINE_KEYS) + len(POINT_KEYS)] == [*HEADLINE_KEYS, *POINT_KEYS]
    assert "run_meta.env.device_name" in header and "run_meta.kept_experts" in header
    assert len(rows) == 10
    jsonl = [json.loads(line) for line in export_selection(db, None, "jsonl").splitlines()]
    for row, line in zip(rows, jsonl, strict=True):
        assert row["run"] == line["run"] == 'tiny, "quoted" | name'
        assert (int(row["batch"]), int(row["repeat"])) == (line["batch"], line["repeat"])
        if line["total_tps"] is None:
            assert row["total_tps"] == ""
        else:
            assert float(row["total_tps"]) == line["total_tps"]
        if line["mem_used_gib"] is not None:
            assert float(row["mem_used_gib"]) == line["mem_used_gib"]
        assert row["started_at"] == (line["started_at"] or "")
        assert json.loads(row["run_meta.kept_experts"]) == line["run_meta"]["kept_experts"]
        assert row["run_meta.env.device_name"] == line["run_meta"]["env"]["device_name"] == "cpu: Test CPU"
    error_row = next(r for r in rows if r["status"] == "error")
    assert error_row["error"] == "RuntimeError: injected | fault\nline two"


def test_csv_run_filter(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    code, _, err = cli(capsys, "import", str(REFERENCE), "--db", str(db))
    assert code == 0, err
    code, out, err = cli(capsys, "export", "--format", "csv", "--db", str(db), "--run", "union50_topk2")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6 and {r["run"] for r in rows} == {"union50_topk2"}
    assert [r["total_tps"] for r in rows] == ["17.75", "35.83", "72.02", "144.1", "283.44", "589.96"]


def test_build_db_imports_the_report(tmp_path, capsys, monkeypatch):
    db = tmp_path / "new" / "bench.duckdb"
    code, out, err = cli(capsys, "build-db", "--db", str(db))
    assert code == 0, err
    summary = last_json(out)
    assert REFERENCE.name in summary["files"] and summary["created"] is True
    assert summary["runs"] >= 5 and summary["points"] >= 30
    names = {r.name for r in store.read_runs(db) if r.source == f"imported:{REFERENCE.name}"}
    assert names == {"base_topk4", "base_topk2", "union50_topk4", "union50_topk2", "unionAgg_topk2"}
    assert not [p for p in db.parent.iterdir() if p.name.startswith(".")]  # no leftover temp file
    # BENCH_DB is the default when --db is absent; running again updates in place without duplicates
    monkeypatch.setenv("BENCH_DB", str(db))
    code, out, err = cli(capsys, "build-db")
    assert code == 0, err
    assert last_json(out)["created"] is False
    con = store.connect(db, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == summary["runs"]
    finally:
        con.close()


def test_build_db_with_a_bad_file_leaves_no_database(tmp_path):
    reports = tmp_path / "reports"
    results = tmp_path / "results"
    reports.mkdir()
    results.mkdir()
    (reports / "good.md").write_text(REFERENCE.read_text())
    (results / "bad.jsonl").write_text('{"run": "x", "batch": 1')
    db = tmp_path / "bench.duckdb"
    with pytest.raises(BadInputError, match=r"bad\.jsonl:1"):
        build_db.build(db, build_db.default_files(reports, results))
    assert list(tmp_path.glob("*.duckdb*")) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
