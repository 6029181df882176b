"""A small fixture database with known numbers, built through bench.store and bench.records.

`build_fixture(path)` writes two sweeps and one imported run:
- sweep `fx-sweep-h100` (H100, graph engine): `base_topk4` (32 experts) and `pruned16_topk4` (16 experts),
  batches 1, 2, 4 (+ an OOM at 8 for the base), three repeats each;
- sweep `fx-sweep-a100` (A100, hf engine, another torch): `base_topk2`, batches 1 and 2;
- an imported run `report_base_topk4` (one repeat per batch, generate timing convention).
The `EXPECTED` dict holds the medians the pages must show.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import store
from bench.records import EnvFingerprint, PointRecord, RunRecord, SweepRecord

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
T0 = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)

# run name -> batch -> total tok/s per repeat
TPS: dict[str, dict[int, list[float]]] = {
    "base_topk4": {1: [100.0, 102.0, 104.0], 2: [190.0, 200.0, 210.0], 4: [380.0, 400.0, 420.0]},
    "pruned16_topk4": {1: [150.0, 152.0, 154.0], 2: [199.0, 201.0, 203.0], 4: [600.0, 610.0, 620.0]},
    "base_topk2": {1: [90.0, 91.0, 92.0], 2: [170.0, 180.0, 190.0]},
    "report_base_topk4": {1: [17.14], 2: [35.64]},
}
CEILING = {1: 400.0, 2: 780.0, 4: 1500.0}
CEILING_PRUNED = {1: 700.0, 2: 1300.0, 4: 2400.0}
ALLOC = {"base_topk4": 40.0, "pruned16_topk4": 22.0, "base_topk2": 40.0, "report_base_topk4": None}
WEIGHTS = {"base_topk4": 39.0, "pruned16_topk4": 21.0, "base_topk2": 39.0, "report_base_topk4": None}

EXPECTED = {
    "runs": 4,
    "sweeps": 2,
    "points": 3 * 3 + 1 + 3 * 3 + 2 * 3 + 2,
    "cards": 2,
    "median_total": {("base_topk4", 4): 400.0, ("pruned16_topk4", 4): 610.0, ("base_topk2", 2): 180.0},
    "total_pct_b4": 52.5,  # (610 - 400) / 400
    "mem_alloc": {("base_topk4", 1): 40.0, ("pruned16_topk4", 1): 22.0},
    "mem_saved_b1": 18.0,
    "mbu_base_b4": 400.0 / 1500.0,
}


def _env(card: str, torch_version: str) -> EnvFingerprint:
    return EnvFingerprint(device_name=card, device_kind="cuda", driver="570.1", cuda="12.8", torch=torch_version,
                          transformers="5.24.0", bench_version="0.1.0", git_commit="abc1234", host="fixture-host",
                          python="3.11.2")


def _run(run_id: str, sweep_id: str | None, name: str, **kw) -> RunRecord:
    base = dict(run_id=run_id, sweep_id=sweep_id, name=name, model="synthetic:gpt-oss-20b", top_k=4, engine="graph",
                dtype="bfloat16", device="cuda", prompt_len=256, new_tokens=128, repeats=3, seed=0, experts=32,
                base_experts=32, env=_env(H100, "2.13.0"), state="done", started_at=T0,
                finished_at=T0 + timedelta(minutes=5))
    base.update(kw)
    if base.get("config_json") is None and sweep_id is not None:
        base["config_json"] = json.dumps({"name": name, "model": base["model"], "top_k": base["top_k"]})
    return RunRecord(**base)


def _points(run: RunRecord, ceiling: dict[int, float] | None) -> list[PointRecord]:
    out = []
    alloc, weights = ALLOC[run.name], WEIGHTS[run.name]
    for batch, values in TPS[run.name].items():
        for rep, tps in enumerate(values):
            mem = None if alloc is None else alloc + 0.5 * (batch.bit_length() - 1)
            used = mem + 1.6 if mem is not None else 14.6 + batch * 0.1
            out.append(PointRecord(
                run_id=run.run_id, batch=batch, repeat=rep, status="ok", total_tps=tps, per_stream_tps=tps / batch,
                decode_s=batch * 127 / tps, prefill_s=0.05, tpot_p50_ms=1000.0 * batch / tps,
                tpot_p90_ms=1100.0 * batch / tps, tokens_generated=run.new_tokens, mem_weights_gib=weights,
                mem_peak_alloc_gib=mem, mem_peak_reserved_gib=None if mem is None else mem + 1.0,
                mem_nvml_peak_gib=None if mem is None else mem + 1.6, mem_used_gib=used,
                ceiling_tps=None if ceiling is None else ceiling[batch],
                mbu=None if ceiling is None else tps / ceiling[batch],
                started_at=run.started_at, finished_at=run.finished_at,
            ))
    return out


def build_fixture(path: Path | str) -> dict:
    """Write the fixture database at `path` and return EXPECTED."""
    path = Path(path)
    store.insert_sweep(path, SweepRecord(
        sweep_id="fx-sweep-h100", title="fixture H100 sweep", spec_json="{}", state="done", host="fixture-host",
        pid=None, points_planned=19, points_done=19, created_at=T0, started_at=T0,
        finished_at=T0 + timedelta(minutes=10)))
    store.insert_sweep(path, SweepRecord(
        sweep_id="fx-sweep-a100", title="fixture A100 sweep", spec_json="{}", state="done", host="fixture-host",
        points_planned=6, points_done=6, created_at=T0 + timedelta(days=1), started_at=T0 + timedelta(days=1),
        finished_at=T0 + timedelta(days=1, minutes=3)))
    base = _run("run-base4", "fx-sweep-h100", "base_topk4")
    pruned = _run("run-pruned16", "fx-sweep-h100", "pruned16_topk4", experts=16,
                  prune={"experts": 16, "method": "first"}, started_at=T0 + timedelta(minutes=5),
                  finished_at=T0 + timedelta(minutes=10))
    a100 = _run("run-a100-k2", "fx-sweep-a100", "base_topk2", top_k=2, engine="hf", env=_env(A100, "2.11.0"),
                started_at=T0 + timedelta(days=1), finished_at=T0 + timedelta(days=1, minutes=3))
    imported = _run("run-report-k4", None, "report_base_topk4", model="openai/gpt-oss-20b", engine="hf",
                    repeats=1, new_tokens=2048, source="imported:union-prunes-20b-decode-report.md",
                    state="imported", timing_convention="generate", env=EnvFingerprint(device_name="unknown"),
                    started_at=None, finished_at=None, experts=None, base_experts=None)
    for run in (base, pruned, a100):
        store.insert_run(path, run)
    pts = _points(base, CEILING) + _points(pruned, CEILING_PRUNED) + _points(a100, None)
    pts.append(PointRecord(run_id=base.run_id, batch=8, repeat=0, status="oom", error="CUDA out of memory"))
    for p in pts:
        store.insert_point(path, p)
    store.insert_imported(path, [imported], _points(imported, None))
    return EXPECTED
