"""A damaged or foreign database file: random bytes, a truncated real database, a database whose checksummed
blocks were overwritten, and a database from a newer schema. Every command (sweep, ls, export, import, build-db)
exits 2 with a message naming the file, and leaves the file byte-identical (no WAL created beside it either).

The dashboard side (st.error, no traceback, on every page) is covered for random bytes and a newer schema in
tests/test_app.py (test_corrupt_database, test_newer_schema); here only the truncated case is added.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from bench import store
from bench.cli import main
from bench.paths import PROJECT_ROOT, RESULTS_DIR
from bench.store import queries

FIXTURE_SQL = PROJECT_ROOT / "tests" / "fixtures" / "schema_v1.sql"
APP = str(PROJECT_ROOT / "app.py")
SPEC = """
title = "t"
[sweep]
prompt_len = 8
new_tokens = 4
batch_sizes = [1]
repeats = 1
device = "cpu"
dtype = "float32"
[[variants]]
name = "base"
model = "synthetic:tiny-moe"
top_k = 2
"""


def real_db(path: Path) -> Path:
    """A real, current-version database: the v1 fixture sweep, migrated, plus padding rows so it spans blocks."""
    con = duckdb.connect(str(path))
    try:
        con.execute(FIXTURE_SQL.read_text())
    finally:
        con.close()
    store.init_db(path)
    with store.writer(path) as con:
        con.execute("INSERT INTO points (run_id, batch, \"repeat\", status, error) "
                    "SELECT 'pad', i, 0, 'error', repeat('x', 500) || i FROM range(3000) t(i)")
    return path


def damage(kind: str, path: Path) -> Path:
    if kind == "random-bytes":
        path.write_bytes(random.Random(5).randbytes(300_000))
    elif kind == "truncated":
        real_db(path)
        size = path.stat().st_size
        assert size > 3 * 262_144, size  # several blocks, so the cut removes real data
        with open(path, "r+b") as fh:
            fh.truncate(size * 6 // 10)
    elif kind == "overwritten-block":  # the data block that holds schema_meta overwritten (checksum mismatch)
        real_db(path)
        con = duckdb.connect(str(path), read_only=True)
        block_id, block_size = con.execute(
            "SELECT s.block_id, d.block_size FROM pragma_storage_info('schema_meta') s, pragma_database_size() d "
            "WHERE s.block_id >= 0 LIMIT 1").fetchone()
        con.close()
        with open(path, "r+b") as fh:
            fh.seek(3 * 4096 + block_id * block_size + 64)  # after DuckDB's three 4 KiB headers
            fh.write(random.Random(6).randbytes(4096))
    elif kind == "newer-schema":
        real_db(path)
        con = duckdb.connect(str(path))
        con.execute("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
        con.close()
    else:
        raise AssertionError(kind)
    return path


KINDS = ["random-bytes", "truncated", "overwritten-block", "newer-schema"]
COMMANDS = {
    "sweep": lambda db, spec: ["sweep", "--spec", str(spec), "--db", str(db), "--quiet"],
    "ls": lambda db, spec: ["ls", "--json", "--db", str(db)],
    "ls-runs": lambda db, spec: ["ls", "--runs", "--db", str(db)],
    "export": lambda db, spec: ["export", "--format", "markdown", "--db", str(db)],
    "export-csv-out": lambda db, spec: ["export", "--format", "csv", "--out", str(db.parent / "x.csv"),
                                        "--db", str(db)],
    "import": lambda db, spec: ["import", str(RESULTS_DIR / "oom-check-h100-2026-11-27.jsonl"), "--db", str(db)],
    "build-db": lambda db, spec: ["build-db", "--db", str(db)],
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One damaged file per kind, built once; every test checks it is still byte-identical afterwards."""
    root = tmp_path_factory.mktemp("baddb")
    out = {}
    for kind in KINDS:
        (root / kind).mkdir()
        out[kind] = damage(kind, root / kind / "bench.duckdb")
    return out


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_refuses_a_bad_database_and_leaves_it_untouched(
    kind: str, command: str, damaged: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = damaged[kind]
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    before = digest(db)
    code = main(COMMANDS[command](db, spec))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert f"database {db}" in err  # the message names the file
    assert ("newer than this moe-bench" in err) if kind == "newer-schema" else ("corrupt" in err)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["exit_code"] == 2
    assert digest(db) == before
    assert not Path(str(db) + ".wal").exists()
    assert not (db.parent / "x.csv").exists()
    # no WAL, temp or building copy beside it (a sweep may leave its logs folder with the sweep lock file)
    assert sorted(p.name for p in db.parent.iterdir() if p.name != "bench.logs") == ["bench.duckdb"]


@pytest.mark.parametrize("kind", KINDS)
def test_dashboard_queries_report_the_file_not_a_traceback(kind: str, damaged: dict[str, Path]) -> None:
    db = damaged[kind]
    before = digest(db)
    info = queries.db_info(db)
    assert info.error and str(db) in info.error
    with pytest.raises(store.StoreError, match="database " + str(db)):
        queries.runs(db)
    assert digest(db) == before


def test_a_truncated_database_shows_st_error_on_every_page(
    damaged: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = damaged["truncated"]
    before = digest(db)
    monkeypatch.setenv("BENCH_DB", str(db))
    for page in ["pages/overview.py", "pages/scaling.py", "pages/memory.py", "pages/compare.py", "pages/runs.py",
                 "pages/export.py"]:
        at = AppTest.from_file(APP, default_timeout=30)
        at.run()
        if page != "pages/overview.py":
            at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.error and "truncated or corrupt" in at.error[0].value, page
    assert digest(db) == before


def test_a_healthy_database_still_passes_the_open_probe(tmp_path: Path) -> None:
    """The probe behind these errors must not refuse good files: fresh, migrated, and one with free blocks."""
    db = real_db(tmp_path / "ok.duckdb")
    assert queries.db_info(db).error is None
    con = store.connect(db, read_only=True)
    con.close()
    fresh = tmp_path / "fresh.duckdb"
    store.init_db(fresh)
    assert queries.db_info(fresh).error is None
    with store.writer(db) as con:  # free blocks: DuckDB may count blocks the file no longer holds
        con.execute("DELETE FROM points WHERE run_id = 'pad'")
    con = duckdb.connect(str(db))
    con.execute("CHECKPOINT")
    free = con.execute("SELECT free_blocks FROM pragma_database_size()").fetchone()[0]
    con.close()
    assert free > 0
    assert queries.db_info(db).error is None and main(["ls", "--db", str(db)]) == 0
