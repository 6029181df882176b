"""Import hardening (issue 14 items 6, 11, 13, 15, 16; issue 8 §4 item 4): bad files are refused with the file and
line, rc 2 and the database byte-identical; imports write in bounded batches; build-db cleans its leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import duckdb
import pytest
from fixtures.report_helpers import REFERENCE, cli, last_json

from bench import store
from bench.paths import PROJECT_ROOT, RESULTS_DIR
from bench.records import PointRecord, RunRecord
from bench.store import imports

RESULTS = RESULTS_DIR / "oom-check-h100-2026-11-27.jsonl"


def _md_cases() -> dict[str, tuple[str, int]]:
    """name -> (report text, line the refusal must name)."""
    lines = REFERENCE.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("| 2 | "))
    out = {}
    for what, old, new in [
        ("underscore digits", "| 2 |", "| 1_0 |"),
        ("arabic-indic digits", "| 2 |", "| \u0661\u0660 |"),
        ("nan", "| 2 | ", "| 2 | nan | "),
        ("inf", "| 2 | ", "| 2 | inf | "),
        ("1e400", "| 2 | ", "| 2 | 1e400 | "),
        ("trailing text in a number", "| 2 | ", "| 2 | 12.5abc | "),
    ]:
        bad = list(lines)
        cells = bad[i].replace(old, new, 1)
        if what in ("nan", "inf", "1e400", "trailing text in a number"):  # replace the total tok/s cell, keep 6 cells
            parts = bad[i].split("|")
            parts[2] = " " + new.split("|")[2].strip() + " "
            cells = "|".join(parts)
        bad[i] = cells
        out[what] = ("\n".join(bad) + "\n", i + 1)
    j = next(n for n, line in enumerate(lines) if line.startswith("### base_topk2"))
    k = next(n for n in range(j, len(lines)) if lines[n].startswith("| 32 |"))
    bad = [*lines[:k + 1], "", "- error at batch " + "9" * 5000 + ": boom", *lines[k + 1:]]
    out["error bullet with 5000 digits"] = ("\n".join(bad) + "\n", k + 3)
    out["trailing garbage"] = ("\n".join(lines) + "\n\nthis is not part of a report\n" + "x" * 1000 + "\n",
                               len(lines) + 2)
    return out


def _jsonl_cases() -> dict[str, tuple[str, int]]:
    good = RESULTS.read_text().splitlines()
    first = json.loads(good[0])
    out = {}

    def with_config(value: str) -> str:
        obj = json.loads(good[0])
        obj["run_meta"]["config_json"] = value
        return json.dumps(obj)

    out["config_json not JSON"] = (with_config("{not json"), 1)
    out["config_json a list"] = (with_config("[1, 2, 3]"), 1)
    out["config_json nested 200,000 deep"] = (with_config("[" * 200_000 + "]" * 200_000), 1)
    out["line nested 200,000 deep"] = ('{"run": ' + "[" * 200_000 + "]" * 200_000 + "}", 1)
    dup = good[1][:-1] + ', "batch": 4096}'
    out["duplicated key"] = (dup, 2)
    first["total_tps"] = 1.5
    out["NaN literal"] = (json.dumps(first).replace('"total_tps": 1.5', '"total_tps": NaN'), 1)
    out["Infinity literal"] = (json.dumps(first).replace('"total_tps": 1.5', '"total_tps": -Infinity'), 1)
    return {k: ("\n".join([v[0]] if v[1] == 1 else [good[0], v[0]]) + "\n", v[1]) for k, v in out.items()}


@pytest.mark.parametrize("case", sorted(_md_cases()))
def test_lenient_markdown_is_refused_with_the_line(tmp_path, capsys, case):
    text, lineno = _md_cases()[case]
    db = tmp_path / "b.duckdb"
    assert cli(capsys, "import", str(RESULTS), "--db", str(db))[0] == 0
    before = db.read_bytes()
    bad = tmp_path / "bad.md"
    bad.write_text(text)
    code, out, err = cli(capsys, "import", str(bad), "--db", str(db))
    assert code == 2, (case, err)
    assert f"bad.md:{lineno}:" in err, (case, err)
    assert "Traceback" not in err and last_json(out)["ok"] is False
    assert db.read_bytes() == before


@pytest.mark.parametrize("case", sorted(_jsonl_cases()))
def test_bad_jsonl_is_refused_with_the_line(tmp_path, capsys, case):
    text, lineno = _jsonl_cases()[case]
    db = tmp_path / "b.duckdb"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    code, out, err = cli(capsys, "import", str(bad), "--db", str(db))
    assert code == 2, (case, err)
    assert f"bad.jsonl:{lineno}:" in err, (case, err)
    assert "Traceback" not in err and last_json(out)["ok"] is False
    assert not db.exists()  # a refused import creates nothing


def test_the_reference_report_still_imports(tmp_path, capsys):
    code, _, err = cli(capsys, "import", str(REFERENCE), "--db", str(tmp_path / "r.duckdb"))
    assert code == 0, err


def _many_points(n: int) -> tuple[RunRecord, list[PointRecord]]:
    run = RunRecord(run_id="r-big", sweep_id=None, name="big", model="synthetic:tiny-moe", top_k=2, engine="hf",
                    dtype="float32", device="cpu", prompt_len=8, new_tokens=4, repeats=1, seed=0,
                    source="imported:big.jsonl", state="done")
    run.env.device_name, run.env.device_kind = "cpu", "cpu"
    return run, [PointRecord(run_id="r-big", batch=b + 1, repeat=0, status="ok", total_tps=float(b))
                 for b in range(n)]


def test_an_import_writes_in_batches_that_let_another_writer_in(tmp_path, monkeypatch):
    """Issue 14 item 13: while a long import stages its points, a sweep's point write waits for one batch at most,
    never for the whole import; the import still lands all or nothing."""
    db = tmp_path / "b.duckdb"
    store.init_db(db)
    monkeypatch.setattr(imports, "STAGE_BATCH_ROWS", 50)
    seen: list[int] = []
    monkeypatch.setattr(imports, "YIELD_S", 0.05)
    run, points = _many_points(600)
    waits: list[float] = []
    staged = threading.Event()

    def progress(done: int, total: int) -> None:
        seen.append(done)
        staged.set()

    def sweep_writes() -> None:
        staged.wait(30)
        for i in range(5):
            t0 = time.monotonic()
            with store.writer(db, timeout_s=60) as con:
                con.execute("CREATE TABLE IF NOT EXISTS probe (i INTEGER)")
                con.execute("INSERT INTO probe VALUES (?)", [i])
            waits.append(time.monotonic() - t0)

    # the sweep is another process in real life; a thread has its own DuckDB connection and the same gate file
    t = threading.Thread(target=sweep_writes)
    t.start()
    imports.write_import(db, [imports.ImportBatch("big.jsonl", [run], points)], progress=progress)
    t.join(60)
    assert seen[-1] == 600 and len(seen) == 12  # 12 batches of 50
    assert len(waits) == 5
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM points").fetchone()[0] == 600
        assert con.execute("SELECT count(*) FROM probe").fetchone()[0] == 5
        stages = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'import_stage_%'").fetchone()
        assert stages[0] == 0
    finally:
        con.close()


def test_a_killed_import_leaves_the_database_as_it_was_and_the_next_one_cleans_up(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    assert cli(capsys, "import", str(RESULTS), "--db", str(db))[0] == 0
    code = (
        "import sys, os\n"
        "from bench.store import imports\n"
        "from bench.report.importer import parse_file\n"
        "imports.STAGE_BATCH_ROWS = 10\n"
        "def kill(done, total):\n"
        "    if done >= 20: os._exit(9)\n"
        "pf = parse_file(sys.argv[2])\n"
        "imports.write_import(sys.argv[1], [imports.ImportBatch(pf.file_name, pf.runs, pf.points)], progress=kill)\n"
    )
    hf = RESULTS_DIR / "union-prunes-hf-h100-2026-11-27.jsonl"
    proc = subprocess.run([sys.executable, "-c", code, str(db), str(hf)], cwd=PROJECT_ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 9, proc.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM points").fetchone()[0] == 3  # only the first import's points
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'import_stage_%'"
                           ).fetchone()[0] == 1
    finally:
        con.close()
    assert cli(capsys, "import", str(hf), "--db", str(db))[0] == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM points").fetchone()[0] == 63
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'import_stage_%'"
                           ).fetchone()[0] == 0
    finally:
        con.close()


def test_build_db_removes_leftovers_of_a_killed_build(tmp_path, capsys):
    db = tmp_path / "bench.duckdb"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".bench.duckdb.building-{dead_pid}"
    stale_wal = tmp_path / f".bench.duckdb.building-{dead_pid}.wal"
    alive = tmp_path / ".bench.duckdb.building-1"  # pid 1 runs: a build still under way is left alone
    for p in (stale, stale_wal, alive):
        p.write_bytes(b"half a database")
    code, _out, err = cli(capsys, "build-db", "--db", str(db))
    assert code == 0, err
    assert not stale.exists() and not stale_wal.exists() and alive.exists()
    assert f"removed {stale}" in err
    alive.unlink()


def test_logs_folders_beside_a_database_are_ignored_by_git():
    """Issue 8 §4: data/bench.logs/ (and any *.logs/ beside a database) and build leftovers stay out of git."""
    paths = ["data/bench.logs/sweep-s1.lock", "data/other.logs/x.log", "data/.bench.duckdb.building-123"]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == paths
