"""A fixture database for the issue-13 views, with numbers chosen so every figure is known by hand.

`build_views_fixture(path, newest)` writes, on an H100 with the graph engine (card and engine held fixed):
- `base_topk4` measured twice or three times — one variant identity (model, unpruned, top_k 4, bf16, graph) on
  other dates, commits and torch versions:
  - `hist-old` (2025-02-01, commit aaa1111): total tok/s at batch b = 100·b·(0.98, 1.00, 1.02);
  - `hist-noise` (2025-02-02, commit bbb2222): 100·b·(0.99, 1.015, 1.005) — within noise of hist-old;
  - `hist-slow` (2025-02-03, commit ccc3333): hist-old × 0.9 — a planted 10% slowdown.
  `newest` picks which of the two (or both: "both") exist, so the newest run of the identity is the one tested.
- `pruned16_topk4` (`pruned`, 2025-02-01): medians 150, 260, 396, 500 at batches 1, 2, 4, 8 (same ±2% spread).
- `cpu_topk4` (`cpu-run`): a CPU run (hf engine), no energy counter, batches 1, 2.
Energy: base J/token = 2.0 / b, pruned 1.5 / b (identical repeats, so the medians are exact).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import store
from bench.records import EnvFingerprint, PointRecord, RunRecord, SweepRecord

H100 = "NVIDIA H100 80GB HBM3"
T0 = datetime(2025, 2, 1, 9, 0, tzinfo=UTC)
BATCHES = (1, 2, 4, 8)
SPREAD = (0.98, 1.00, 1.02)
NOISE = (0.99, 1.015, 1.005)
PRUNED = {1: 150.0, 2: 260.0, 4: 396.0, 8: 500.0}

EXPECTED = {
    # (per-stream, total) medians of the Pareto front, from the highest per-stream tok/s down
    "front": [("pruned16_topk4", 1, 150.0, 150.0), ("pruned16_topk4", 2, 130.0, 260.0),
              ("base_topk4", 8, 100.0, 800.0)],
    "j_per_token_base_b4": 0.5,
    "j_per_token_pruned_b4": 0.375,
    "usd_per_mtok_base_b4_default": 2.90 / (400.0 * 3600.0) * 1e6,  # H100 default $2.90/h
    "usd_per_mtok_base_b4_at_3_60": 2.5,  # $3.60/h
    "j_pct_b4": -25.0,
    "usd_pct_b4": 100.0 * (400.0 / 396.0 - 1.0),
    "speedup": {1: 1.5, 2: 1.3, 4: 0.99, 8: 0.625},
    "within_noise": {1: False, 2: False, 4: True, 8: False},
    "slow_change_pct": -10.0,
}


def _env(card: str, commit: str, torch: str, kind: str = "cuda") -> EnvFingerprint:
    return EnvFingerprint(device_name=card, device_kind=kind, driver="570.1", cuda="12.8", torch=torch,
                          transformers="5.24.0", bench_version="0.1.0", git_commit=commit, host="fixture-host",
                          python="3.11.2")


def _run(run_id: str, name: str, when: datetime, env: EnvFingerprint, **kw) -> RunRecord:
    base = dict(run_id=run_id, sweep_id="vx-sweep", name=name, model="synthetic:gpt-oss-20b", top_k=4,
                engine="graph", dtype="bfloat16", device="cuda", prompt_len=256, new_tokens=128, repeats=3, seed=0,
                experts=32, base_experts=32, env=env, state="done", started_at=when,
                finished_at=when + timedelta(minutes=5))
    base.update(kw)
    base["config_json"] = json.dumps({"name": name, "model": base["model"], "top_k": base["top_k"]})
    return RunRecord(**base)


def _points(run: RunRecord, medians: dict[int, float], factors: tuple[float, ...], joules: float | None
            ) -> list[PointRecord]:
    out = []
    for batch, med in medians.items():
        for rep, f in enumerate(factors):
            tps = med * f
            out.append(PointRecord(
                run_id=run.run_id, batch=batch, repeat=rep, status="ok", total_tps=tps, per_stream_tps=tps / batch,
                decode_s=batch * 127 / tps, prefill_s=0.05, tokens_generated=run.new_tokens,
                mem_used_gib=40.0, energy_j_per_token=None if joules is None else joules / batch,
                started_at=run.started_at, finished_at=run.finished_at))
    return out


def build_views_fixture(path: Path | str, newest: str = "slow") -> dict:
    """Write the database at `path` (newest: "slow" | "noise" | "both") and return EXPECTED."""
    path = Path(path)
    store.insert_sweep(path, SweepRecord(
        sweep_id="vx-sweep", title="views fixture", spec_json="{}", state="done", host="fixture-host",
        points_planned=0, points_done=0, created_at=T0, started_at=T0, finished_at=T0 + timedelta(days=3)))
    base = {b: 100.0 * b for b in BATCHES}
    runs_points = []
    old = _run("hist-old", "base_topk4", T0, _env(H100, "aaa1111", "2.12.0"))
    runs_points.append((old, _points(old, base, SPREAD, 2.0)))
    pruned = _run("pruned", "pruned16_topk4", T0 + timedelta(minutes=10), _env(H100, "aaa1111", "2.12.0"),
                  experts=16, prune={"experts": 16, "method": "first"})
    runs_points.append((pruned, _points(pruned, PRUNED, SPREAD, 1.5)))
    cpu = _run("cpu-run", "cpu_topk4", T0 + timedelta(minutes=20), _env("cpu: Fixture Xeon", "aaa1111", "2.12.0",
                                                                         "cpu"), engine="hf", device="cpu")
    runs_points.append((cpu, _points(cpu, {1: 20.0, 2: 35.0}, SPREAD, None)))
    if newest in ("noise", "both"):
        r = _run("hist-noise", "base_topk4", T0 + timedelta(days=1), _env(H100, "bbb2222", "2.13.0"))
        runs_points.append((r, _points(r, base, NOISE, 2.0)))
    if newest in ("slow", "both"):
        r = _run("hist-slow", "base_topk4", T0 + timedelta(days=2), _env(H100, "ccc3333", "2.13.0"))
        runs_points.append((r, _points(r, base, tuple(0.9 * f for f in SPREAD), 2.0)))
    # one transaction for every row (the store's all-or-nothing batch write), so the fixture builds in a second
    store.insert_imported(path, [r for r, _ in runs_points], [p for _, pts in runs_points for p in pts])
    return EXPECTED
