"""Concurrency: dashboard readers while a real sweep writes, and the per-machine device locks.

- A real tiny CPU sweep (`python -m bench sweep` in a subprocess) writes while this process loops over every page
  query (scripts/soak.py read_all_pages). No reader error, readers never see the point count go down, and at the
  end every planned (run, batch, repeat) has its row.
- Meanwhile a second sweep on the same device, into another database file, is refused naming the running sweep
  (device locks are per machine, not per database).
- A held cuda-0 lock (a GPU sweep) does not stop a CPU sweep: both run and write.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.locks import try_lock
from bench.paths import device_locks_dir
from scripts.soak import check_points, read_all_pages
from tests.helpers.sweeps import BASE, last_json, rows, run_bench, start_bench, variant, write_spec

pytestmark = pytest.mark.slow

VARIANTS = (BASE, variant("half", top_k=1, experts=4))


def spec_file(path: Path, batches: tuple[int, ...] = (1, 2, 3), repeats: int = 2,
              variants: tuple[str, ...] = VARIANTS) -> Path:
    return write_spec(path, *variants, title="concurrency", batches=batches, repeats=repeats, warmup=False)


def test_readers_see_no_error_and_no_point_is_lost_while_a_sweep_writes(tmp_path: Path, capsys) -> None:
    db = tmp_path / "bench.duckdb"
    spec = spec_file(tmp_path / "spec.toml")
    proc = start_bench("sweep", "--spec", str(spec), "--db", str(db), "--quiet", "--sweep-id", "s-writer")
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
                code = main(["sweep", "--spec", str(spec_file(tmp_path / "one.toml", (1,), 1)), "--db", str(other),
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
    assert last_json(out)["points_done"] == 12

    assert refused is not None
    code, err = refused
    assert code == 2 and "device cpu is busy" in err and "s-writer" in err
    assert not (tmp_path / "other" / "bench.duckdb").exists()  # the refused sweep wrote nothing


def test_a_gpu_sweep_does_not_block_a_cpu_sweep(tmp_path: Path) -> None:
    gpu = try_lock(device_locks_dir() / "device-cuda-0.lock", "s-gpu-sweep pid 1 db /elsewhere/bench.duckdb")
    assert gpu is not None
    try:
        db = tmp_path / "bench.duckdb"
        spec = spec_file(tmp_path / "spec.toml", (1,), 1, (BASE,))  # one variant: one worker process is enough
        # a subprocess, as a user runs it (an in-process sweep after AppTest tests spawns workers that re-run app.py)
        res = run_bench("sweep", "--spec", str(spec), "--db", str(db), "--quiet", "--sweep-id", "s-cpu", timeout=300)
        code, err = res.returncode, res.stderr
    finally:
        gpu.release()
    assert rows(db, "SELECT state, points_done, device_key FROM sweeps") == [("done", 1, "cpu")]
    failed = rows(db, "SELECT error FROM points WHERE status <> 'ok'")
    assert code == 0 and failed == [], (err, failed)
