"""The store's refusals (issue 8 item 5.7, issue 14 item 10): an unwritable folder, a read-only or immutable but
healthy database, a folder that has to be created, and unknown ids that must not create anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from fixtures.report_helpers import cli

from bench.paths import RESULTS_DIR

RESULTS = RESULTS_DIR / "oom-check-h100-2026-11-27.jsonl"


@contextmanager
def unwritable(path: Path):
    """Make a file or folder unwritable even for root: `chattr +i` as root, plain permissions otherwise."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root on a file system without chattr +i: cannot make a file unwritable")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)


def test_unwritable_db_folder_is_rc_2_with_a_message(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    with unwritable(folder):
        for db in (folder / "x.duckdb", folder / "sub" / "x.duckdb"):
            code, out, err = cli(capsys, "import", str(RESULTS), "--db", str(db))
            assert code == 2, err
            assert "Traceback" not in err and "PermissionError" not in err
            assert str(db.parent) in err and "writable" in err
            assert json.loads(out.strip().splitlines()[-1])["ok"] is False
    assert list(folder.iterdir()) == []


def test_an_immutable_healthy_database_is_not_called_corrupt(tmp_path, capsys):
    db = tmp_path / "ok.duckdb"
    assert cli(capsys, "import", str(RESULTS), "--db", str(db))[0] == 0
    before = db.read_bytes()
    with unwritable(db):
        code, _, err = cli(capsys, "import", str(RESULTS_DIR / "perf-h100-2026-11-27.jsonl"), "--db", str(db))
        assert code == 2
        assert "corrupt" not in err and "read-only or immutable" in err
        assert "chmod u+w" in err and "chattr -i" in err
        code, out, err = cli(capsys, "ls", "--db", str(db))  # reading still works
        assert code == 0 and "OOM check" in out
    assert db.read_bytes() == before


def test_a_missing_db_folder_is_created_and_said_on_stderr(tmp_path, capsys):
    db = tmp_path / "new" / "dir" / "x.duckdb"
    code, _, err = cli(capsys, "import", str(RESULTS), "--db", str(db))
    assert code == 0, err
    assert f"created the folder {db.parent}" in err
    code, _, err = cli(capsys, "import", str(RESULTS), "--db", str(db))  # said once: the folder exists now
    assert code == 0 and "created the folder" not in err


@pytest.mark.parametrize("argv", [["sweep", "--resume", "nope", "--quiet"], ["rerun", "nope", "--quiet"]])
def test_unknown_ids_create_no_database_and_no_folder(tmp_path, capsys, argv):
    db = tmp_path / "absent" / "dir" / "x.duckdb"
    code, _, err = cli(capsys, *argv, "--db", str(db))
    assert code == 2 and "nope" in err
    assert not (tmp_path / "absent").exists()
    # an existing database is left byte-identical and gains no logs folder
    db = tmp_path / "here.duckdb"
    assert cli(capsys, "import", str(RESULTS), "--db", str(db))[0] == 0
    before = sorted(p.name for p in tmp_path.iterdir()), db.read_bytes()
    code, _, err = cli(capsys, *argv, "--db", str(db))
    assert code == 2 and "nope" in err
    assert (sorted(p.name for p in tmp_path.iterdir()), db.read_bytes()) == before
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM sweeps").fetchone()[0] == 1
    con.close()


def test_a_failed_rollback_never_hides_the_real_error(tmp_path):
    """Issue 14 item 12 without root: when the transaction is already over (as after a COMMIT that failed on a full
    disk), the writer's ROLLBACK fails with "no transaction is active"; the caller must still see the first error."""
    from bench import store

    db = tmp_path / "x.duckdb"

    class RealCause(Exception):
        pass

    with pytest.raises(RealCause), store.writer(db) as con:
        con.execute("COMMIT")  # the transaction ends here, like a COMMIT that failed
        raise RealCause("the first error")
    err = OSError(28, "No space left on device")
    assert isinstance(store._real_cause(db, err), store.DiskFullError)
    assert "no space left on device" in str(store._real_cause(db, err)).lower()
