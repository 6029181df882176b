"""The dashboard side of scale-out: GPU lanes of a cluster sweep, where each run ran, and the New sweep form's
"Run on" choice (real DuckDB file, real Runs page under AppTest)."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bench import store
from bench.analysis.lanes import where_ran
from bench.errors import BadInputError
from bench.paths import PROJECT_ROOT
from bench.records import PointRecord, RunRecord, SweepRecord, utcnow
from bench.ui import cluster as ui_cluster

APP = str(PROJECT_ROOT / "app.py")


def _cluster_db(db: Path) -> str:
    """A running cluster sweep: GPU 0 finished `big` and now runs `mid`; GPU 1 runs `small`."""
    store.init_db(db)
    sid = "s-cluster"
    spec = {"title": "on two GPUs", "sweep": {"batch_sizes": [1, 2], "repeats": 1, "cluster": "local"},
            "variants": []}
    now = utcnow()
    store.insert_sweep(db, SweepRecord(sweep_id=sid, title="on two GPUs", spec_json=json.dumps(spec),
                                       state="running", host=socket.gethostname(), pid=os.getpid(),
                                       points_planned=6, cluster="local", started_at=now))
    placed = {"big": (0, "done", now - timedelta(minutes=5)), "mid": (0, "running", now),
              "small": (1, "running", now - timedelta(minutes=1))}
    for name, (gpu, state, started) in placed.items():
        run = RunRecord(run_id=f"r-{name}", sweep_id=sid, name=name, model="synthetic:tiny-moe", top_k=2,
                        engine="graph", dtype="bfloat16", device="cuda", prompt_len=8, new_tokens=8, repeats=1,
                        seed=0, state=state, started_at=started)
        run.env.host, run.env.gpu_index, run.env.gpu_uuid = "gpuhost", gpu, f"GPU-{gpu}aaaaaaaa-bbbb"
        run.env.worker_address, run.env.device_name = f"tcp://10.0.0.1:{4000 + gpu}", "NVIDIA H200"
        store.insert_run(db, run)
    pts = [("big", 1, 100.0, 0), ("big", 2, 190.0, 1), ("mid", 1, 120.0, 2), ("small", 1, 80.0, 3),
           ("small", 2, 150.0, 4)]
    for name, batch, tps, sec in pts:
        store.insert_point(db, PointRecord(run_id=f"r-{name}", batch=batch, repeat=0, status="ok", total_tps=tps,
                                           started_at=now, finished_at=now + timedelta(seconds=sec)),
                           sweep_id=sid)
    return sid


def test_lanes_show_each_gpu_its_variant_points_and_last_tps(tmp_path: Path) -> None:
    db = tmp_path / "bench.duckdb"
    sid = _cluster_db(db)
    row = store.read_sweep(db, sid)
    lanes = ui_cluster.lanes_for(db, sid, row).to_dict("records")
    assert [lane["lane"] for lane in lanes] == ["gpuhost · GPU 0", "gpuhost · GPU 1"]
    gpu0, gpu1 = lanes
    assert (gpu0["variant"], gpu0["state"], gpu0["points"], gpu0["last_tps"], gpu0["runs_done"]) == (
        "mid", "running", "1 / 2", 120.0, 1)
    assert (gpu1["variant"], gpu1["points"], gpu1["last_tps"], gpu1["card"]) == ("small", "2 / 2", 150.0,
                                                                                  "NVIDIA H200")
    assert ui_cluster.lanes_for(db, sid, {**row, "cluster": None}).empty  # a serial sweep has no lanes


def test_where_ran_names_host_gpu_and_worker() -> None:
    text = where_ran({"host": "n1", "gpu_index": 3.0, "gpu_uuid": "GPU-1234567890abcdef", "worker_address": "tcp://x:1"})
    assert text == "n1 · GPU 3 (GPU-12345678) · Dask tcp://x:1"
    assert where_ran({"host": "n1", "gpu_index": float("nan")}) == "n1"
    assert where_ran({}) == "—"


def test_cluster_choice() -> None:
    assert ui_cluster.cluster_choice(ui_cluster.THIS_GPU) is None
    assert ui_cluster.cluster_choice(ui_cluster.THIS_HOST) == "local"
    assert ui_cluster.cluster_choice(ui_cluster.ADDRESS, " head:8786 ") == "tcp://head:8786"
    for bad in ("", "local:2", "not an address"):
        with pytest.raises(BadInputError, match="Cluster address"):
            ui_cluster.cluster_choice(ui_cluster.ADDRESS, bad)


@pytest.mark.slow
def test_runs_page_shows_lanes_and_refuses_an_empty_cluster_address(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bench.duckdb"
    sid = _cluster_db(db)
    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    frames = [d.value for d in at.dataframe]
    lane_frames = [f for f in frames if "lane" in f.columns]
    assert lane_frames, [list(f.columns) for f in frames]
    assert list(lane_frames[0]["variant"]) == ["mid", "small"]
    at.radio(key="new_where").set_value(ui_cluster.ADDRESS).run()
    assert at.text_input(key="new_cluster_address")
    at.button(key="launch_spec").click().run()
    assert any("Cluster address: empty" in e.value for e in at.error), [e.value for e in at.error]
    assert not (db.parent / (db.stem + ".logs")).exists() or not list((db.parent / (db.stem + ".logs")).glob(
        "*.launch.json"))  # nothing was launched
    runs_text = " ".join(m.value for m in at.markdown)
    assert "gpuhost · GPU 0 (GPU-0aaaaaaa" in runs_text and sid
