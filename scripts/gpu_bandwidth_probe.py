"""GPU probe: why did the pruned runs of the graph seed sweep measure 2577 GB/s copy bandwidth (others ~2960)?

    PYTHONUNBUFFERED=1 python scripts/gpu_bandwidth_probe.py [--out DIR]

Reproduces the worker's order (load synthetic gpt-oss-20b, apply the union50 prune, measure_bandwidth) and
measures around it: before and after the prune, with and without prune_model's torch.cuda.empty_cache(), a
control that only frees 20 GiB back to the driver, the per-copy time series after the prune, and candidate
measurement methods: `official` is measure_bandwidth as it is now, `legacy` as it was before the fix (2 warm-up
copies, median of 10). Writes bandwidth.json to --out. Findings: docs/PERF.md, seed sweep section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure.bandwidth import measure_bandwidth
from bench.models.loading import load_model
from bench.models.pruning import apply_variant
from bench.spec import PruneSpec

SIZE = 2 * 2**30
_KEEP = Path(__file__).resolve().parents[1] / "data" / "keep"
UNION = [str(_KEEP / "gpt-oss-20b-domain-code.json"), str(_KEEP / "gpt-oss-20b-domain-chat.json")]

try:
    import pynvml

    pynvml.nvmlInit()
    _H = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception:  # clocks are optional information
    _H = None


def clocks() -> dict:
    if _H is None:
        return {}
    try:
        return {
            "sm_mhz": pynvml.nvmlDeviceGetClockInfo(_H, pynvml.NVML_CLOCK_SM),
            "mem_mhz": pynvml.nvmlDeviceGetClockInfo(_H, pynvml.NVML_CLOCK_MEM),
            "reasons": hex(pynvml.nvmlDeviceGetCurrentClocksEventReasons(_H)),
            "temp_c": pynvml.nvmlDeviceGetTemperature(_H, pynvml.NVML_TEMPERATURE_GPU),
        }
    except Exception as exc:
        return {"error": str(exc)[:100]}


def official(tag: str, log: list) -> float:
    c = clocks()
    bw = measure_bandwidth("cuda") / 1e9
    entry = {"tag": tag, "gbs": round(bw, 1), "t": round(time.time() - T0, 2), **c,
             "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 2)}
    log.append(entry)
    print(json.dumps(entry), flush=True)
    return bw


def legacy(tag: str, log: list) -> float:
    """measure_bandwidth as it was before the fix: 2 warm-up copies, then the median of 10."""
    src = torch.empty(SIZE, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    src.fill_(1)
    for _ in range(2):
        dst.copy_(src)
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    bw = 2 * SIZE / statistics.median(ts) / 1e9
    entry = {"tag": tag + " [legacy method]", "gbs": round(bw, 1), "t": round(time.time() - T0, 2), **clocks()}
    log.append(entry)
    print(json.dumps(entry), flush=True)
    return bw


def series(tag: str, log: list, n: int = 150) -> None:
    """n back-to-back 2 GiB copies, each timed: does a slow phase decay, and how fast?"""
    src = torch.empty(SIZE, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    src.fill_(1)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    ev[0].record()
    for i in range(n):
        dst.copy_(src)
        ev[i + 1].record()
    torch.cuda.synchronize()
    gbs = [2 * SIZE / (ev[i].elapsed_time(ev[i + 1]) / 1e3) / 1e9 for i in range(n)]
    chunks = [round(statistics.median(gbs[i : i + 10]), 0) for i in range(0, n, 10)]
    entry = {"tag": tag, "series_medians_per_10": chunks, "first5": [round(g) for g in gbs[:5]],
             "ms_total": round(ev[0].elapsed_time(ev[n]), 1), "src_ptr_gib": round(src.data_ptr() / 2**30, 2)}
    log.append(entry)
    print(json.dumps(entry), flush=True)
    del src, dst
    torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    log: list = []
    official("fresh process", log)
    official("fresh process again", log)

    # A: the worker's order for union50_topk4 (prune_model empties the cache)
    loaded = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0)
    official("A after load (32 experts)", log)
    apply_variant(loaded, PruneSpec(union=UNION, experts=16), 4, seed=0)
    official("A after prune (worker order)", log)
    official("A after prune, again", log)
    legacy("A after prune, third", log)
    del loaded
    torch.cuda.empty_cache()

    # B: the same without empty_cache in prune_model (the hf sweep ran before that line existed)
    loaded = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0)
    official("B after load", log)
    real_empty = torch.cuda.empty_cache
    torch.cuda.empty_cache = lambda: None
    try:
        apply_variant(loaded, PruneSpec(union=UNION, experts=16), 4, seed=0)
    finally:
        torch.cuda.empty_cache = real_empty
    c = clocks()
    # measure_bandwidth itself empties the cache only after measuring, so this is the pre-0455d96 worker
    official("B after prune without empty_cache", log)
    log.append({"tag": "B clocks", **c})
    real_empty()
    legacy("B after a later empty_cache", log)
    official("B after that", log)
    del loaded
    real_empty()

    # C: control without a model: free 20 GiB back to the driver, then measure at once
    blocks = [torch.ones(2 * 2**30, dtype=torch.uint8, device="cuda") for _ in range(10)]
    torch.cuda.synchronize()
    official("C holding 20 GiB", log)
    del blocks
    torch.cuda.empty_cache()
    official("C right after freeing 20 GiB to the driver", log)
    blocks = [torch.ones(2 * 2**30, dtype=torch.uint8, device="cuda") for _ in range(10)]
    del blocks
    torch.cuda.empty_cache()
    series("C series after freeing 20 GiB again", log)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bandwidth.json").write_text(json.dumps(log, indent=1))
    print("BANDWIDTH SUMMARY")
    for e in log:
        if "gbs" in e:
            print(f"  {e['tag']:45s} {e['gbs']:7.1f} GB/s  sm {e.get('sm_mhz')} mem {e.get('mem_mhz')}")
        elif "series_medians_per_10" in e:
            print(f"  {e['tag']:45s} per 10 copies: {e['series_medians_per_10']}")
        elif "max" in e:
            print(f"  {e['tag']:45s} {e['max']:7.1f} GB/s (max of {e['round_medians']})")
    return 0


T0 = time.time()

if __name__ == "__main__":
    raise SystemExit(main())
