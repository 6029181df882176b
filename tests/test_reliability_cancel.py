"""Cancel from the dashboard: the Runs page's own launch and cancel helpers (bench.ui.launch) stop the whole process
tree (the bench and its spawned worker) within a few seconds, the sweep is *cancelled*, finished points are kept.

The Cancel button itself is exercised under AppTest in tests/test_app_runs.py; this test checks the process tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import locks
from bench.paths import PROJECT_ROOT
from bench.store import queries
from bench.ui import launch as ui_launch

pytestmark = pytest.mark.slow

SPEC = """
title = "cancel me"
[sweep]
prompt_len = 8
new_tokens = 24
batch_sizes = [1, 2, 3, 4, 5, 6, 7, 8]
repeats = 3
device = "cpu"
dtype = "float32"
seed = 0
[[variants]]
name = "base"
model = "synthetic:tiny-moe"
top_k = 2
[[variants]]
name = "half"
model = "synthetic:tiny-moe"
top_k = 1
prune = { experts = 4, method = "first" }
"""


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<pid>/task/*/children."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_cancel_stops_bench_and_worker_and_keeps_finished_points(tmp_path: Path) -> None:
    db = tmp_path / "bench.duckdb"
    spec = tmp_path / "cancel.toml"
    spec.write_text(SPEC)
    launch = ui_launch.launch_sweep(db, spec)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 180
        row = None
        while time.monotonic() < deadline:
            row = queries.sweep(db, launch.sweep_id) if db.exists() else None
            if row and row["points_done"] >= 2:
                break
            assert locks.pid_alive(launch.pid), Path(launch.log_path).read_text()
            time.sleep(0.3)
        assert row and row["points_done"] >= 2 and row["shown_state"] == "running", row
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
        wait = time.monotonic() + 10
        while time.monotonic() < wait and queries.sweep(db, launch.sweep_id)["shown_state"] != "cancelled":
            time.sleep(0.2)
        assert queries.sweep(db, launch.sweep_id)["shown_state"] == "cancelled"
        states = dict(zip(queries.runs(db)["name"], queries.runs(db)["state"], strict=True))
        assert "running" not in states.values() and "cancelled" in states.values(), states
    finally:  # on failure, stop what this test started (only the pids of its own launch)
        for p in pids or [launch.pid]:
            if locks.pid_alive(p):
                os.kill(p, signal.SIGKILL)

    row = queries.sweep(db, launch.sweep_id)
    assert row["state"] == "cancelled" and row["shown_state"] == "cancelled", row
    assert row["finished_at"] is not None and row["message"] == "cancelled by the user"
    ls = subprocess.run([sys.executable, "-m", "bench", "ls", "--json", "--db", str(db)], cwd=PROJECT_ROOT,
                        capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(ls.stdout.strip().splitlines()[-1])[0]["state"] == "cancelled"
    after = {(r["run_id"], r["batch"], r["repeat"]): (r["finished_at"], r["status"])
             for r in queries.points(db, list(queries.runs(db)["run_id"])).to_dict("records")}
    for key, finished in before.items():  # every point finished before the cancel is still there, unchanged
        assert after[key] == (finished, "ok")
    assert len(after) < 2 * 8 * 3  # it really stopped early
