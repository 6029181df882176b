"""Cancel from the dashboard: the Runs page's own launch and cancel helpers (bench.ui.launch) stop the whole process
tree (the bench and its spawned worker) within a few seconds, the sweep is *cancelled*, finished points are kept.

The Cancel button itself is exercised under AppTest in tests/test_app_runs.py; this test checks the process tree.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench import locks
from bench.store import queries
from bench.ui import launch as ui_launch
from tests.helpers.sweeps import BASE, cmdline, last_json, run_bench, sweep_spec, tree, variant, wait_sweep

pytestmark = pytest.mark.slow

SPEC = sweep_spec(BASE, variant("half", top_k=1, experts=4), title="cancel me", batches=range(1, 9), repeats=3,
                  new_tokens=24)


def test_cancel_stops_bench_and_worker_and_keeps_finished_points(tmp_path: Path) -> None:
    db = tmp_path / "bench.duckdb"
    spec = tmp_path / "cancel.toml"
    spec.write_text(SPEC)
    launch = ui_launch.launch_sweep(db, spec)
    pids: list[int] = []
    try:
        row = wait_sweep(db, launch.sweep_id, lambda r: r["points_done"] >= 2, "2 points stored", timeout=180,
                         alive=lambda: locks.pid_alive(launch.pid), log=Path(launch.log_path))
        assert row["shown_state"] == "running", row
        pids = tree(launch.pid)
        workers = [p for p in pids if p != launch.pid and "multiprocessing" in cmdline(p)]
        assert workers, [(p, cmdline(p)) for p in pids]  # the spawned worker is alive, a child of the bench
        before = {(r["run_id"], r["batch"], r["repeat"]): r["finished_at"]
                  for r in queries.points(db, list(queries.runs(db)["run_id"])).to_dict("records")}

        t0 = time.monotonic()
        assert ui_launch.cancel(launch.pid)
        while time.monotonic() - t0 < 10 and any(locks.pid_alive(p) for p in pids):
            ui_launch.reap()
            time.sleep(0.1)
        gone_after = time.monotonic() - t0
        assert not [p for p in pids if locks.pid_alive(p)], [(p, cmdline(p)) for p in pids]
        assert gone_after < 5.0, gone_after  # the whole tree within a few seconds
        ui_launch.reap()
        assert not locks.pid_alive(launch.pid)
        # the run that was measuring when the sweep was cancelled says so (not `running` forever)
        wait_sweep(db, launch.sweep_id, lambda r: r["shown_state"] == "cancelled", "shown as cancelled", timeout=10)
        states = dict(zip(queries.runs(db)["name"], queries.runs(db)["state"], strict=True))
        assert "running" not in states.values() and "cancelled" in states.values(), states
    finally:  # on failure, stop what this test started (only the pids of its own launch)
        for p in pids or [launch.pid]:
            if locks.pid_alive(p):
                os.kill(p, signal.SIGKILL)

    row = queries.sweep(db, launch.sweep_id)
    assert row["state"] == "cancelled" and row["shown_state"] == "cancelled", row
    assert row["finished_at"] is not None and row["message"] == "cancelled by the user"
    ls = run_bench("ls", "--json", "--db", str(db), timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert last_json(ls.stdout)[0]["state"] == "cancelled"
    after = {(r["run_id"], r["batch"], r["repeat"]): (r["finished_at"], r["status"])
             for r in queries.points(db, list(queries.runs(db)["run_id"])).to_dict("records")}
    for key, finished in before.items():  # every point finished before the cancel is still there, unchanged
        assert after[key] == (finished, "ok")
    assert len(after) < 2 * 8 * 3  # it really stopped early
