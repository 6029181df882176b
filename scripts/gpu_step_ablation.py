"""H200 ablation of the batch-1 decode step's launch-count work (issue 12, session 5), one call: which of
programmatic dependent launch (`kernels.PDL`), rope + KV write folded into attention (`kernels.FUSE_ROPE_ATTN`) and
the post-attention norm + router in one launch (`kernels.FUSE_NORM_ROUTER`) is faster, alone and together; the
compact expert launch's tiles at batch 1 (`kernels.MOE_CONFIG_FEW`); a step profile; exactness of every
configuration against the unfused one (bf16 and, after quantizing the experts, MXFP4).

    PYTHONUNBUFFERED=1 python scripts/gpu_step_ablation.py [--cases 1x4,1x2,8x4] [--skip-tiles] [--skip-mxfp4]

Every record is appended to $OUT/ablation.jsonl as it is made; $OUT/picks.json holds the flags and tile measured
fastest at batch 1 top_k 4 (as `--set NAME=JSON` arguments for scripts/gpu_ab.py and scripts/gpu_perf_graph.py).
Engine timings as scripts/gpu_ab.py: prompt 256, 33 new tokens (32 timed steps), best of 2 generations, E32,
roofline % with the measured copy bandwidth and the counted distinct experts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check_graph

from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph import kernels as gk

T0 = time.time()
OUT = Path(os.environ.get("OUT", "."))
LOG = OUT / "ablation.jsonl"
PROMPT, NEW = 256, 33
FLAGS = ("PDL", "FUSE_ROPE_ATTN", "FUSE_NORM_ROUTER")
CONFIGS = {  # name -> (PDL, FUSE_ROPE_ATTN, FUSE_NORM_ROUTER)
    "base": (False, False, False),
    "pdl": (True, False, False),
    "rope_attn": (False, True, False),
    "norm_router": (False, False, True),
    "fused": (False, True, True),
    "all": (True, True, True),
}


def emit(rec: dict) -> None:
    rec = {"t": round(time.time() - T0, 1), **rec}
    line = json.dumps(rec)
    print(line, flush=True)
    with LOG.open("a") as f:
        f.write(line + "\n")


def set_config(name: str) -> None:
    for flag, value in zip(FLAGS, CONFIGS[name], strict=True):
        setattr(gk, flag, value)


def run_engine(model, batch: int, k: int, keep_logits: bool = False):
    from bench.models.pruning import set_top_k

    set_top_k(model, k)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(batch))
    eng = GraphEngine(GraphOptions(), keep_logits=keep_logits)
    eng.prepare(model, ids, NEW)
    res = [eng.generate(model, ids, NEW) for _ in range(2)]
    logits = eng.decoder.logits.float().clone() if keep_logits else None
    eng.release()
    return res, logits


def time_case(model, batch: int, k: int, arch, bandwidth: float, label: str, weights: str = "bf16") -> dict:
    from bench.roofline import mean_decode_context, roofline_point

    try:
        res, _ = run_engine(model, batch, k)
        r = min(res, key=lambda r: r.decode_s)
        tps = batch * (NEW - 1) / r.decode_s
        rec = {"sec": "engine", "label": label, "weights": weights, "batch": batch, "top_k": k,
               "ms_step": round(1000 * r.decode_s / (NEW - 1), 4), "tok_s": round(tps, 1),
               "spread_pct": round(100 * (max(x.decode_s for x in res) / r.decode_s - 1), 2)}
        if weights == "bf16":
            ceil = roofline_point(arch, batch, k, mean_decode_context(PROMPT, NEW), bandwidth,
                                  distinct=r.distinct_experts).ceiling_tps
            rec["roofline_pct"] = round(100 * tps / ceil, 2)
            rec["ceiling_ms"] = round(1000 * batch / ceil, 4)
        return rec
    except Exception as exc:
        return {"sec": "engine", "label": label, "batch": batch, "top_k": k, "error": repr(exc)[:400],
                "tb": traceback.format_exc()[-1200:]}


def exactness(model, batch: int, k: int, names, weights: str = "bf16") -> None:
    """Tokens and the last step's logits of each configuration against "base" (no PDL, no fusion)."""
    ref = None
    for name in names:
        set_config(name)
        try:
            res, logits = run_engine(model, batch, k, keep_logits=True)
            toks = res[-1].tokens
            if ref is None:
                ref = (toks, logits)
            emit({"sec": "exact", "weights": weights, "batch": batch, "top_k": k, "config": name,
                  "tokens_equal": bool(torch.equal(toks, ref[0])),
                  "token_agreement": round((toks == ref[0]).float().mean().item(), 4),
                  "logits_max_abs_diff": round((logits - ref[1]).abs().max().item(), 5),
                  "repeat_equal": bool(torch.equal(res[0].tokens, res[1].tokens))})
        except Exception as exc:
            emit({"sec": "exact", "config": name, "error": repr(exc)[:400], "tb": traceback.format_exc()[-1200:]})


def tile_sweep(model, k: int = 4) -> dict | None:
    """One token's expert layer (compact launch, MOE_CONFIG_FEW) over the 24 layers' weights in turn (no L2 reuse),
    gate_up tiles with the shipped down tile, then down tiles with the best gate_up; CUDA graph median."""
    import triton.testing

    layers = [la.mlp.experts for la in model.model.layers]
    experts = layers[0].gate_up_proj.shape[0]
    gen = torch.Generator("cuda").manual_seed(3)
    xs = [torch.randn(1, layers[0].gate_up_proj.shape[1], device="cuda", dtype=torch.bfloat16, generator=gen)
          for _ in layers]
    topis = [torch.randperm(experts, device="cuda", generator=gen)[:k].view(1, k).to(torch.int32) for _ in layers]
    topw = torch.softmax(torch.randn(1, k, device="cuda", generator=gen), -1)
    nbytes = len(layers) * k * (layers[0].gate_up_proj[0].numel() + layers[0].down_proj[0].numel()) * 2

    def run(tiles):
        return [gk.moe(x, ex.gate_up_proj, ex.gate_up_proj_bias, ex.down_proj, ex.down_proj_bias, ti, topw, 1.702,
                       7.0, tiles=tiles) for x, ex, ti in zip(xs, layers, topis, strict=True)]

    ref = [o.float() for o in run(None)]
    shipped = dict(gk.MOE_CONFIG_FEW)

    def measure(tiles) -> float:
        try:
            err = max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(run(tiles), ref, strict=True))
            ms = float(triton.testing.do_bench_cudagraph(lambda: run(tiles), rep=30, return_mode="median"))
            emit({"sec": "tiles", "k": k, "tiles": {n: list(v) for n, v in tiles.items()}, "us_layer":
                  round(1000 * ms / len(layers), 2), "tb_s": round(nbytes / ms / 1e9, 3), "rel_err": err})
            return ms if err < 1e-2 else float("inf")
        except Exception as exc:
            emit({"sec": "tiles", "tiles": str(tiles), "error": repr(exc)[:300]})
            return float("inf")

    gate_ups = [shipped["gate_up"], (64, 128, 4, 3), (32, 128, 4, 4), (128, 64, 4, 4), (64, 256, 4, 3),
                (128, 128, 8, 3)]
    downs = [shipped["down"], (32, 128, 4, 3), (16, 256, 4, 3), (64, 128, 4, 4), (32, 256, 4, 3)]
    base = measure(shipped)
    best_gu, best = shipped["gate_up"], base
    for gu in gate_ups[1:]:
        ms = measure({"gate_up": gu, "down": shipped["down"]})
        if ms < best:
            best_gu, best = gu, ms
    best_dn = shipped["down"]
    for dn in downs[1:]:
        ms = measure({"gate_up": best_gu, "down": dn})
        if ms < best:
            best_dn, best = dn, ms
    again = measure(shipped)  # the spread: the shipped tiles timed twice
    pick = {"gate_up": best_gu, "down": best_dn}
    emit({"sec": "tiles_pick", "k": k, "pick": {n: list(v) for n, v in pick.items()}, "us_layer": round(
        1000 * best / len(layers), 2), "shipped_us_layer": [round(1000 * base / len(layers), 2),
                                                           round(1000 * again / len(layers), 2)]})
    return pick if best < 0.98 * min(base, again) else None


def profile(model, label: str) -> None:
    from gpu_check_graph import profile_step

    from bench.models.pruning import set_top_k

    set_top_k(model, 4)
    try:
        prof = profile_step(model, 1, PROMPT, GraphOptions(), top_n=16)
        emit({"sec": "profile", "label": label, "batch": 1, "kernels": prof["kernels_per_step"],
              "kernel_us": round(prof["kernel_time_us"], 1),
              "top": [[t["name"], t["total_us"], t["count"]] for t in prof["top"]]})
    except Exception as exc:
        emit({"sec": "profile", "label": label, "error": repr(exc)[:300]})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="1x4,1x2,8x4")
    ap.add_argument("--skip-tiles", action="store_true")
    ap.add_argument("--skip-mxfp4", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    from bench.measure.bandwidth import measure_bandwidth
    from bench.models.loading import load_model
    from bench.roofline import ArchSummary

    model = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0).model
    bandwidth = measure_bandwidth("cuda")
    emit({"sec": "env", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "commit": os.environ.get("MOE_BENCH_GIT_COMMIT"), "bandwidth_gbs": round(bandwidth / 1e9, 1),
          "pdl_supported": gk.pdl_launch(), "load_s": round(time.time() - T0, 1)})
    arch = ArchSummary.from_model(model)
    exactness(model, 1, 4, list(CONFIGS))
    exactness(model, 8, 4, ["base", "all"])
    cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
    times: dict[tuple[str, int, int], float] = {}
    for b, k in cases:
        order = list(CONFIGS) + (["base", "all"] if b == 1 else [])  # batch 1: base and all twice (spread)
        for name in order:
            set_config(name)
            rec = time_case(model, b, k, arch, bandwidth, name)
            emit(rec)
            if "ms_step" in rec:
                key = (name, b, k)
                times[key] = min(times.get(key, float("inf")), rec["ms_step"])
    set_config("base")
    profile(model, "base")
    set_config("fused")
    profile(model, "fused (no PDL)")
    picks: dict[str, object] = {}
    for i, flag in enumerate(FLAGS):  # a flag stays on if it alone beats base at batch 1 top_k 4
        alone = next(n for n, v in CONFIGS.items() if sum(v) == 1 and v[i])
        picks[flag] = times.get((alone, 1, 4), 1e9) < times.get(("base", 1, 4), 0.0)
    if not args.skip_tiles:
        for name, on in zip(FLAGS, (picks[f] for f in FLAGS), strict=True):
            setattr(gk, name, on)
        try:
            tiles = tile_sweep(model)
            if tiles:
                picks["MOE_CONFIG_FEW"] = {n: list(v) for n, v in tiles.items()}
                gk.MOE_CONFIG_FEW = dict(tiles)
                emit(time_case(model, 1, 4, arch, bandwidth, "picks"))
                emit(time_case(model, 1, 2, arch, bandwidth, "picks"))
        except Exception as exc:
            emit({"sec": "tiles", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1200:]})
    (OUT / "picks.json").write_text(json.dumps(picks))
    emit({"sec": "picks", **picks})
    if not args.skip_mxfp4:  # the shared decoder on the MXFP4 experts: same tokens, and the time
        from bench.models import mxfp4

        mxfp4.quantize_model(model)
        torch.cuda.empty_cache()
        exactness(model, 1, 4, ["base", "all"], weights="mxfp4")
        for b in (1,):
            for name in ("base", "all"):
                set_config(name)
                emit(time_case(model, b, 4, arch, bandwidth, name, weights="mxfp4"))
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
