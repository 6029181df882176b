"""Concurrency: dashboard readers while a real sweep writes, and the per-machine device locks.

- A real tiny CPU sweep (`python -m bench sweep` in a subprocess) writes while this process loops over every page
  query (scripts/soak.py read_all_pages). No reader error, readers never see the point count go down, and at the
  end every planned (run, batch, repeat) has its row.
- Meanwhile a second sweep on the same device, into another database file, is refused naming the running sweep
  (device locks are per machine, not per database).
- A held cuda-0 lock (a GPU sweep) does not stop a CPU sweep: both run and write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from bench.cli import main
from bench.locks import try_lock
from bench.paths import PROJECT_ROOT, device_locks_dir
from scripts.soak import check_points, read_all_pages

pytestmark = pytest.mark.slow

SPEC = """
title = "concurrency"
[sweep]
prompt_len = 8
new_tokens = 4
batch_sizes = {batches}
repeats = {repeats}
device = "cpu"
dtype = "float32"
seed = 0
warmup = false
[[variants]]
name = "base"
model = "synthetic:tiny-moe"
top_k = 2
[[variants]]
name = "half"
model = "synthetic:tiny-moe"
top_k = 1
prune = {{ experts = 4, method = "first" }}
"""


def write_spec(path: Path, batches: str = "[1, 2, 3]", repeats: int = 2) -> Path:
    path.write_text(SPEC.format(batches=batches, repeats=repeats))
    return path


def test_readers_see_no_error_and_no_point_is_lost_while_a_sweep_writes(tmp_path: Path, capsys) -> None:
    db = tmp_path / "bench.duckdb"
    spec = write_spec(tmp_path / "spec.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "sweep", "--spec", str(spec), "--db", str(db), "--quiet",
         "--sweep-id", "s-writer"],
        cwd=PROJECT_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    passes, errors, seen, backwards = 0, [], [], 0
    refused = None
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                n = read_all_pages(db)
            except Exception as exc:  # any reader error fails the test, after the sweep is stopped
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if n is None:
                continue
            passes += 1
            if seen and n < max(seen):
                backwards += 1
            seen.append(n)
            if refused is None and n >= 1:
                # a second sweep on the same device but another database file: refused, naming the running sweep
                other = tmp_path / "other" / "bench.duckdb"
                code = main(["sweep", "--spec", str(write_spec(tmp_path / "one.toml", "[1]", 1)), "--db", str(other),
                             "--quiet"])
                refused = (code, capsys.readouterr().err)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, err
    assert errors == []
    assert backwards == 0
    assert passes >= 3, passes  # the readers really overlapped the writes
    assert len(set(seen)) >= 3, seen  # ... and saw the count grow while the sweep ran
    result = check_points(db, "s-writer")
    assert result["lost"] == 0 and result["present"] == result["planned"] == result["points_done"] == 12
    assert result["statuses"] == {"ok": 12}
    assert json.loads(out.strip().splitlines()[-1])["points_done"] == 12

    assert refused is not None
    code, err = refused
    assert code == 2 and "device cpu is busy" in err and "s-writer" in err
    assert not (tmp_path / "other" / "bench.duckdb").exists()  # the refused sweep wrote nothing


def test_a_gpu_sweep_does_not_block_a_cpu_sweep(tmp_path: Path) -> None:
    gpu = try_lock(device_locks_dir() / "device-cuda-0.lock", "s-gpu-sweep pid 1 db /elsewhere/bench.duckdb")
    assert gpu is not None
    try:
        db = tmp_path / "bench.duckdb"
        spec = write_spec(tmp_path / "spec.toml", "[1]", 1)
        # a subprocess, as a user runs it (an in-process sweep after AppTest tests spawns workers that re-run app.py)
        res = subprocess.run([sys.executable, "-m", "bench", "sweep", "--spec", str(spec), "--db", str(db), "--quiet",
                              "--sweep-id", "s-cpu"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        code, err = res.returncode, res.stderr
    finally:
        gpu.release()
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT state, points_done, device_key FROM sweeps").fetchall() == [("done", 2, "cpu")]
        failed = con.execute("SELECT error FROM points WHERE status <> 'ok'").fetchall()
    finally:
        con.close()
    assert code == 0 and failed == [], (err, failed)
