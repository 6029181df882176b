"""Issue 14 item 12: a sweep whose disk fills up reports the real cause ("no space left on device", never the
ROLLBACK's "no transaction is active"), is marked failed with it, leaves no run `running`, keeps every committed
point, and resumes once space is free. Runs on a small tmpfs, so it needs root (skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.sweeps import last_json, rows, start_bench, sweep_spec, wait_points

pytestmark = pytest.mark.slow

SPEC = sweep_spec(title="disk full", batches=(1, 2, 3), repeats=3)


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


def test_disk_full_mid_sweep_fails_with_the_real_cause_keeps_points_and_resumes(small_fs, tmp_path):
    db = small_fs / "bench.duckdb"
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    proc = start_bench("sweep", "--spec", str(spec), "--db", str(db), "--quiet", "--sweep-id", "s-full")
    wait_points(db, 2, proc=proc, poll=0.1)
    filler = _fill(small_fs)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "no space left on device" in err.lower()
    assert "no transaction is active" not in err
    ((state, message),) = rows(db, "SELECT state, message FROM sweeps")
    assert state == "failed" and "no space left on device" in message.lower()
    assert {s for (s,) in rows(db, "SELECT state FROM runs")} == {"failed"}
    kept = {(b, r): f for b, r, f in rows(db, 'SELECT batch, "repeat", finished_at FROM points')}
    assert len(kept) >= 2

    filler.unlink()
    assert os.statvfs(small_fs).f_bavail > 0
    resumed = start_bench("sweep", "--resume", "s-full", "--db", str(db), "--quiet")
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err
    assert last_json(out)["points_done"] == 9
    after = {(b, r): f for b, r, f in rows(db, 'SELECT batch, "repeat", finished_at FROM points')}
    assert len(after) == 9
    for key, finished in kept.items():  # every point committed before the disk filled is still there, unchanged
        assert after[key] == finished
    assert rows(db, "SELECT state FROM sweeps")[0][0] == "done"
