"""Per-point and per-task costs of the cluster path, measured on this machine (figures for docs/SCALE.md).

  python scripts/cluster_costs.py [--points 2000] [--tasks 20]

- queue: one Dask task puts N pickled PointRecords on a Queue (as bench.cluster.task does); the coordinator
  drains in batches; reports points/s end to end.
- tasks: N no-op tasks that each start `python -c pass` (submit -> process started, the per-task scheduling cost
  without model loading).
- writes: store.insert_points into a DuckDB file holding 2,000 points, for 1, 10 and 100 points per transaction.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import store
from bench.records import PointRecord, RunRecord, SweepRecord, utcnow


def _point(run_id: str, i: int) -> PointRecord:
    now = utcnow()
    return PointRecord(run_id=run_id, batch=i, repeat=0, status="ok", total_tps=100.0 + i, per_stream_tps=1.0,
                       decode_s=0.5, prefill_s=0.01, tpot_p50_ms=3.0, tpot_p90_ms=3.1, tokens_generated=64,
                       mem_used_gib=40.0, bytes_per_step=7e9, ceiling_tps=400.0, mbu=0.7, started_at=now,
                       finished_at=now)


def put_points(queue_name: str, n: int) -> float:
    from distributed import Queue

    q = Queue(queue_name)
    t = time.time()
    for i in range(n):
        q.put(pickle.dumps({"job": "r", "attempt": "a", "kind": "point", "payload": _point("r", i)}))
    return time.time() - t


def spawn_noop(submitted: float) -> float:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.time() - submitted


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--tasks", type=int, default=20)
    args = ap.parse_args()
    from distributed import Client, LocalCluster, Queue

    out: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        q = Queue("costs", client=client)
        t0 = time.time()
        fut = client.submit(put_points, "costs", args.points, pure=False)
        got, drains = 0, 0
        while got < args.points:
            items = q.get(batch=True)
            got += len(items)
            drains += 1
            for raw in items:
                pickle.loads(raw)
            if not items:
                time.sleep(0.05)
        out["queue_points_per_s"] = args.points / (time.time() - t0)
        out["queue_put_s_per_point"] = fut.result() / args.points
        out["queue_drains"] = drains
        spawn = []
        for _ in range(args.tasks):
            spawn.append(client.submit(spawn_noop, time.time(), pure=False).result())
        out["task_submit_to_process_exit_s_median"] = statistics.median(spawn)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "costs.duckdb"
        store.insert_sweep(db, SweepRecord(sweep_id="s", title="costs", spec_json="{}"))
        run = RunRecord(run_id="r", sweep_id="s", name="r", model="m", top_k=1, engine="graph", dtype="bf16",
                        device="cuda", prompt_len=1, new_tokens=1, repeats=1, seed=0)
        store.insert_run(db, run)
        store.insert_points(db, [_point("r", 100000 + i) for i in range(2000)], sweep_id="s")
        base = 0
        for size in (1, 10, 100):
            times = []
            for _ in range(5):
                pts = [_point("r", base + i) for i in range(size)]
                base += size
                t = time.perf_counter()
                store.insert_points(db, pts, sweep_id="s")
                times.append(time.perf_counter() - t)
            out[f"write_{size}_points_s_median"] = statistics.median(times)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
