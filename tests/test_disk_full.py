"""Issue 14 item 12: a sweep whose disk fills up reports the real cause ("no space left on device", never the
ROLLBACK's "no transaction is active"), is marked failed with it, leaves no run `running`, keeps every committed
point, and resumes once space is free. Runs on a small tmpfs, so it needs root (skipped otherwise)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from bench.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

SPEC = """
title = "disk full"
[sweep]
prompt_len = 8
new_tokens = 4
batch_sizes = [1, 2, 3]
repeats = 3
device = "cpu"
dtype = "float32"
seed = 0
[[variants]]
name = "base"
model = "synthetic:tiny-moe"
top_k = 2
"""


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as f:  # the last partial page
        for _ in range(64):
            f.write(b"\0" * 1024)
            f.flush()
    return filler


def _bench(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=PROJECT_ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_disk_full_mid_sweep_fails_with_the_real_cause_keeps_points_and_resumes(small_fs, tmp_path):
    db = small_fs / "bench.duckdb"
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    proc = _bench("sweep", "--spec", str(spec), "--db", str(db), "--quiet", "--sweep-id", "s-full")
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and done < 2:
        time.sleep(0.1)
        with contextlib.suppress(duckdb.Error):
            done = _rows(db, "SELECT count(*) FROM points")[0][0] if db.exists() else 0
    assert done >= 2, proc.communicate(timeout=5)
    filler = _fill(small_fs)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "no space left on device" in err.lower()
    assert "no transaction is active" not in err
    ((state, message),) = _rows(db, "SELECT state, message FROM sweeps")
    assert state == "failed" and "no space left on device" in message.lower()
    assert {s for (s,) in _rows(db, "SELECT state FROM runs")} == {"failed"}
    kept = {(b, r): f for b, r, f in _rows(db, 'SELECT batch, "repeat", finished_at FROM points')}
    assert len(kept) >= 2

    filler.unlink()
    assert os.statvfs(small_fs).f_bavail > 0
    resumed = _bench("sweep", "--resume", "s-full", "--db", str(db), "--quiet")
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["points_done"] == 9
    after = {(b, r): f for b, r, f in _rows(db, 'SELECT batch, "repeat", finished_at FROM points')}
    assert len(after) == 9
    for key, finished in kept.items():  # every point committed before the disk filled is still there, unchanged
        assert after[key] == finished
    assert _rows(db, "SELECT state FROM sweeps")[0][0] == "done"
