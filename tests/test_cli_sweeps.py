"""CLI commands around a running or finished sweep, end to end on CPU with tiny-moe: `bench cancel SWEEP_ID`
(issue 8 §5.9, the dashboard's Cancel path) and `sweep --resume ID --retry-errors` (issue 14.14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from bench.cli import main
from bench.store import queries
from tests.helpers.sweeps import bench_env, rows, start_bench, wait_sweep

pytestmark = pytest.mark.slow

ARGS = ["--variant", "name=base,model=synthetic:tiny-moe,top_k=2", "--prompt-len", "4", "--new-tokens", "3",
        "--repeats", "1", "--device", "cpu", "--dtype", "float32", "--quiet"]


@pytest.fixture(autouse=True)
def _own_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_BENCH_LOCK_DIR", str(tmp_path / "locks"))


def _statuses(db) -> dict[int, str]:
    return dict(rows(db, "SELECT batch, status FROM points ORDER BY batch"))


def test_cli_cancel_stops_a_running_sweep(tmp_path, capsys):
    db = tmp_path / "c.duckdb"
    proc = start_bench("sweep", *ARGS, "--batch-sizes", "1,2", "--db", str(db), "--sweep-id", "s-cancel-me",
                       env=bench_env(MOE_BENCH_FAULT="2:hang"), stdout=subprocess.DEVNULL)
    try:  # batch 1 is stored, batch 2 hangs
        row = wait_sweep(db, "s-cancel-me", lambda r: r["points_done"] >= 1, "1 point stored", timeout=240,
                         proc=proc)
        assert row["shown_state"] == "running", row
        assert main(["cancel", "s-cancel-me", "--db", str(db)]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out == {"ok": True, "sweep_id": "s-cancel-me", "state": "cancelled", "signalled": True}
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    row = queries.sweep(db, "s-cancel-me")
    assert row["state"] == "cancelled" and row["message"] == "cancelled by the user"
    assert _statuses(db) == {1: "ok"}  # the finished point is kept
    assert main(["cancel", "s-cancel-me", "--db", str(db)]) == 2  # no longer running: nothing to cancel
    assert "is cancelled, not running" in capsys.readouterr().err
    assert main(["cancel", "nope", "--db", str(db)]) == 2


def test_resume_with_retry_errors_measures_failed_points_again(tmp_path, monkeypatch, capsys):
    db = tmp_path / "r.duckdb"
    monkeypatch.setenv("MOE_BENCH_FAULT", "2:error")
    assert main(["sweep", *ARGS, "--batch-sizes", "1,2", "--db", str(db), "--sweep-id", "s-retry"]) == 1
    assert _statuses(db) == {1: "ok", 2: "error"}
    monkeypatch.delenv("MOE_BENCH_FAULT")
    assert main(["sweep", "--retry-errors", "--db", str(db)]) == 2  # goes with --resume
    assert main(["sweep", "--resume", "s-retry", "--retry-errors", "--quiet", "--db", str(db)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["statuses"] == {"ok": 2} and summary["state"] == "done"
    assert _statuses(db) == {1: "ok", 2: "ok"}
