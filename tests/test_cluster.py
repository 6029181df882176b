"""Scale-out on Dask (bench.cluster), on a CPU LocalCluster of 2 worker processes with tiny-moe.

Real Dask scheduler and workers, real variant processes, a real DuckDB file: `--cluster local:2` stores every
point once, from two different worker processes, in the same shape as a serial sweep; a device lock held by
someone else makes a task wait; a Dask worker killed mid-variant gives error rows for that variant only and
`--resume` completes it; an unreachable scheduler is rc 2; cancel from the dashboard stops every process.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench import locks
from bench.cluster.coordinator import LOST_PREFIX, is_lost_point
from bench.cluster.target import ClusterTarget, parse_cluster
from bench.errors import BadInputError
from bench.runner import SweepRunner
from bench.spec import load_spec, spec_from_dict, spec_to_toml
from bench.store import queries
from tests.helpers.sweeps import (
    bench_env,
    cmdline,
    last_json,
    parent,
    run_bench,
    start_bench,
    tree,
    variant_children,
    wait_for,
)

pytestmark = pytest.mark.slow

VARIANTS = ["--variant", "name=base,model=synthetic:tiny-moe,top_k=2",
            "--variant", "name=half,model=synthetic:tiny-moe,top_k=1,experts=4,method=first"]
FLAGS = ["--device", "cpu", "--dtype", "float32", "--prompt-len", "8", "--new-tokens", "4", "--batch-sizes", "1,2",
         "--repeats", "1"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = bench_env(MOE_BENCH_LOCK_DIR=str(tmp_path / "locks"), **extra)
    if "MOE_BENCH_FAULT" not in extra:
        env.pop("MOE_BENCH_FAULT", None)
    return env


def _bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 400):
    return run_bench(*args, env=env or _env(tmp_path), timeout=timeout)


def _points(db: Path) -> list[dict]:
    runs = queries.runs(db)
    pts = queries.points(db, list(runs["run_id"])).merge(runs[["run_id", "name"]], on="run_id")
    return pts.to_dict("records")


# ---------------------------------------------------------------------------------------------- fast checks


def test_parse_cluster_forms_and_errors() -> None:
    assert parse_cluster(None) is None and parse_cluster("") is None
    assert parse_cluster("local") == ClusterTarget("local")
    assert parse_cluster("local:2") == ClusterTarget("local", workers=2)
    assert str(parse_cluster("tcp://10.0.0.5:8786")) == "tcp://10.0.0.5:8786"
    assert str(parse_cluster("head-node:8786")) == "tcp://head-node:8786"
    for bad in ("local:0", "local:x", "http://x y", "cluster"):
        with pytest.raises(BadInputError, match="--cluster"):
            parse_cluster(bad)


def test_spec_cluster_field_round_trips_and_is_validated(tmp_path: Path) -> None:
    raw = {"title": "t", "sweep": {"prompt_len": 4, "new_tokens": 4, "batch_sizes": [1], "cluster": "local:2"},
           "variants": [{"name": "a", "model": "synthetic:tiny-moe", "top_k": 2}]}
    spec = spec_from_dict(raw)
    assert spec.sweep.cluster == "local:2"
    path = tmp_path / "s.toml"
    path.write_text(spec_to_toml(spec))
    assert load_spec(path).sweep.cluster == "local:2"
    raw["sweep"]["cluster"] = "local:zero"
    with pytest.raises(BadInputError, match=r"sweep\.cluster"):
        spec_from_dict(raw)
    del raw["sweep"]["cluster"]
    assert "cluster" not in spec_to_toml(spec_from_dict(raw))  # no cluster: the spec file is as before


def test_lost_point_rule() -> None:
    assert is_lost_point("error", f"{LOST_PREFIX} (worker tcp://a:1): gone")
    assert not is_lost_point("error", "RuntimeError: boom")
    assert not is_lost_point("ok", None)


def test_unreachable_scheduler_is_rc2_within_seconds(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = _bench(tmp_path, "sweep", "--db", str(tmp_path / "b.duckdb"), "--cluster", "tcp://127.0.0.1:9", *FLAGS,
                 *VARIANTS, timeout=120)
    took = time.monotonic() - t0
    assert res.returncode == 2, res.stderr[-2000:]
    assert "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in res.stderr
    assert "Traceback" not in res.stderr
    assert took < 60, took  # the connect gives up after 4 s; the rest is importing torch and dask
    assert not (tmp_path / "b.duckdb").exists() or queries.sweeps(tmp_path / "b.duckdb").empty


# ---------------------------------------------------------------------------------------------- real clusters


def test_local2_stores_every_point_once_in_two_processes_like_a_serial_run(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    env = _env(tmp_path)
    # Another sweep holds worker 1's device lock: its task must say that it waits, then run once it is free.
    held = locks.try_lock(tmp_path / "locks" / "device-cpu-1.lock", "other sweep pid 1")
    assert held is not None
    log = tmp_path / "c.log"
    with open(log, "w") as fh:
        proc = start_bench("sweep", "--db", str(db), "--cluster", "local:2", *FLAGS, *VARIANTS, env=env, stderr=fh)
    try:
        wait_for(lambda: "waiting for cpu-1" in log.read_text(), "a task waiting for worker 1's device lock",
                 proc=proc, log=log)
        assert "held by other sweep pid 1" in log.read_text()
    finally:
        held.release()
    out, _ = proc.communicate(timeout=400)
    err = log.read_text()
    assert proc.returncode == 0, err[-3000:]
    summary = last_json(out)
    assert summary["statuses"] == {"ok": 4} and summary["points_done"] == 4
    pts = _points(db)
    keys = [(p["name"], p["batch"], p["repeat"]) for p in pts]
    assert sorted(keys) == sorted({(n, b, 0) for n in ("base", "half") for b in (1, 2)})  # each once
    runs = queries.runs(db)
    assert runs["worker_address"].nunique() == 2 and runs["worker_address"].str.startswith("tcp://").all()
    assert runs["host"].notna().all() and set(runs["state"]) == {"done"}
    sweep = queries.sweeps(db).iloc[0]
    assert sweep["cluster"] == "local:2"

    serial_db = tmp_path / "serial.duckdb"
    res = _bench(tmp_path, "sweep", "--db", str(serial_db), *FLAGS, *VARIANTS)
    assert res.returncode == 0, res.stderr[-2000:]
    serial = _points(serial_db)
    assert sorted((p["name"], p["batch"], p["repeat"], p["status"]) for p in serial) == sorted(
        (p["name"], p["batch"], p["repeat"], p["status"]) for p in pts)
    filled = {k for k, v in serial[0].items() if v is not None and v == v}
    for p in pts:  # the same columns are filled as in the serial run
        assert {k for k, v in p.items() if v is not None and v == v} == filled


def test_killed_worker_gives_error_rows_for_its_variant_only_and_resume_completes(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    env = _env(tmp_path, MOE_BENCH_FAULT="half@2:hang")
    log = tmp_path / "k.log"
    with open(log, "w") as fh:
        proc = start_bench("sweep", "--db", str(db), "--cluster", "local:2", "--sweep-id", "kill-me", *FLAGS,
                           *VARIANTS, env=env, stderr=fh)
    try:
        def half_started() -> bool:  # half's batch 1 is stored; batch 2 hangs
            return any(line.startswith("[half @") and "1/2 points" in line for line in log.read_text().splitlines())

        wait_for(half_started, "half's first point", proc=proc, log=log)
        child = wait_for(lambda: variant_children(proc.pid).get("half"), "half's variant process", timeout=30,
                         proc=proc, log=log)
        os.kill(parent(child), signal.SIGKILL)  # the Dask worker process that runs half
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 1, text[-3000:]
    assert not locks.pid_alive(child)  # the variant's process died with its worker
    pts = {(p["name"], p["batch"]): p for p in _points(db)}
    assert [pts[("base", b)]["status"] for b in (1, 2)] == ["ok", "ok"]  # the other worker went on
    assert pts[("half", 1)]["status"] == "ok"
    lost = pts[("half", 2)]
    assert lost["status"] == "error" and lost["error"].startswith(LOST_PREFIX) and "tcp://" in lost["error"]
    before_ok = {k: p["finished_at"] for k, p in pts.items() if p["status"] == "ok"}

    res = _bench(tmp_path, "sweep", "--db", str(db), "--resume", "kill-me")
    assert res.returncode == 0, res.stderr[-3000:]
    after = _points(db)
    assert sorted((p["name"], p["batch"], p["status"]) for p in after) == [
        ("base", 1, "ok"), ("base", 2, "ok"), ("half", 1, "ok"), ("half", 2, "ok")]
    for p in after:  # nothing already measured was redone or lost
        if (p["name"], p["batch"]) in before_ok:
            assert p["finished_at"] == before_ok[(p["name"], p["batch"])]


def test_cancel_from_the_dashboard_stops_every_process_within_5s(tmp_path: Path, monkeypatch) -> None:
    from bench.ui import launch as ui_launch

    monkeypatch.setenv("MOE_BENCH_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("MOE_BENCH_FAULT", "base@1:hang,half@1:hang")
    db = tmp_path / "x.duckdb"
    raw = {"title": "cancel a cluster sweep", "sweep": {"prompt_len": 8, "new_tokens": 4, "batch_sizes": [1, 2],
                                                         "repeats": 1, "device": "cpu", "dtype": "float32",
                                                         "cluster": "local:2"},
           "variants": [{"name": "base", "model": "synthetic:tiny-moe", "top_k": 2},
                        {"name": "half", "model": "synthetic:tiny-moe", "top_k": 1,
                         "prune": {"experts": 4, "method": "first"}}]}
    launch = ui_launch.launch_spec(db, spec_from_dict(raw))
    pids: list[int] = []
    try:
        wait_for(lambda: len(variant_children(launch.pid)) == 2, "both variant processes",
                 alive=lambda: locks.pid_alive(launch.pid), log=Path(launch.log_path))
        pids = tree(launch.pid)
        workers = [p for p in pids if p != launch.pid and "multiprocessing.spawn" in cmdline(p)]
        variants = list(variant_children(launch.pid).values())
        assert len(workers) == 2, [(p, cmdline(p)) for p in pids]
        t0 = time.monotonic()
        assert ui_launch.cancel(launch.pid)
        while time.monotonic() - t0 < 5 and any(locks.pid_alive(p) for p in workers + variants):
            time.sleep(0.05)
        killed = time.monotonic() - t0
        assert not [p for p in workers + variants if locks.pid_alive(p)], [(p, cmdline(p)) for p in pids]
        assert killed < 5.0, killed  # every Dask worker and variant process is gone within 5 s
        while time.monotonic() - t0 < 30 and any(locks.pid_alive(p) for p in pids):
            ui_launch.reap()
            time.sleep(0.1)
        # the coordinator itself records the cancel (a few DuckDB writes) and exits
        assert not [p for p in pids if locks.pid_alive(p)], [(p, cmdline(p)) for p in pids]
    finally:
        for p in pids or [launch.pid]:
            if locks.pid_alive(p):
                os.kill(p, signal.SIGKILL)
    row = queries.sweep(db, launch.sweep_id)
    assert row["state"] == "cancelled", row


def test_serial_runner_is_unchanged_without_cluster(tmp_path: Path, monkeypatch) -> None:
    """No --cluster and no sweep.cluster: the plain SweepRunner runs, and the sweep row names no cluster."""
    from argparse import Namespace

    from bench.commands.sweep import make_runner

    spec = spec_from_dict({"title": "t", "sweep": {"prompt_len": 4, "new_tokens": 4, "batch_sizes": [1]},
                           "variants": [{"name": "a", "model": "synthetic:tiny-moe", "top_k": 2}]})
    runner = make_runner(tmp_path / "d.duckdb", spec, Namespace(cluster=None, quiet=True, gpu_mem_cap_gib=None))
    assert type(runner) is SweepRunner


def test_batched_point_write_stores_what_single_writes_store(tmp_path: Path) -> None:
    """store.insert_points (the coordinator's one-transaction write) gives the same rows as insert_point, NULLs,
    ints, bools and timestamps included, and replaces an earlier row of the same point (one row per point)."""
    from bench import store
    from bench.records import PointRecord, RunRecord, SweepRecord, utcnow

    now = utcnow()
    full = PointRecord(run_id="r", batch=1, repeat=0, status="ok", total_tps=123.5, per_stream_tps=123.5,
                       decode_s=0.5, tokens_generated=64, throttle_reasons=4, experts_measured=True,
                       bandwidth_source="measured", started_at=now, finished_at=now)
    sparse = PointRecord(run_id="r", batch=2, repeat=0, status="error", error="worker lost before this point: x",
                         started_at=now, finished_at=now)
    rows = {}
    for name, batched in (("one", False), ("many", True)):
        db = tmp_path / f"{name}.duckdb"
        store.insert_sweep(db, SweepRecord(sweep_id="s", title="t", spec_json="{}"))
        store.insert_run(db, RunRecord(run_id="r", sweep_id="s", name="r", model="m", top_k=1, engine="hf",
                                       dtype="float32", device="cpu", prompt_len=1, new_tokens=2, repeats=1, seed=0))
        if batched:
            store.insert_points(db, [PointRecord(run_id="r", batch=2, repeat=0, status="ok", total_tps=1.0)],
                                sweep_id="s")
            store.insert_points(db, [full, sparse], sweep_id="s")
        else:
            store.insert_point(db, full, sweep_id="s")
            store.insert_point(db, sparse, sweep_id="s")
        rows[name] = queries.points(db, ["r"]).to_dict("records")
        assert store.read_sweep(db, "s")["points_done"] == 2

    def norm(v):
        return None if v is None or v != v else v

    assert [{k: norm(v) for k, v in r.items()} for r in rows["many"]] == [
        {k: norm(v) for k, v in r.items()} for r in rows["one"]]
