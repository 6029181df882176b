"""H200 ablation of the batch-1 decode step's launch-count work (issue 12, session 5), one call: programmatic
dependent launch (`kernels.PDL`: 0 off, 1 implicit trigger, 2 trigger after the wait), the post-attention norm +
router in one launch (`kernels.FUSE_NORM_ROUTER`) and the compact expert launch's down tile at batch 1
(`kernels.MOE_CONFIG_FEW`), alone and together, each timed twice, interleaved; a step profile; exactness of every
configuration against the plain one (bf16 and, after quantizing the experts, MXFP4).

    PYTHONUNBUFFERED=1 python scripts/gpu_step_ablation.py [--cases 1x4,1x2] [--big-cases 8x4,32x4,128x4]
        [--skip-mxfp4]

Every record is appended to $OUT/ablation.jsonl as it is made; $OUT/picks.json holds the choices measured fastest
(as `--set @picks.json` for scripts/gpu_ab.py and scripts/gpu_perf_graph.py): the fusion and the tile if faster at
batch 1 with both top_k, the PDL mode with the lowest mean time ratio to PDL 0 over all cases (kept if >= 0.5%
faster). A configuration whose tokens differ from the plain one's is never picked. Engine timings as
scripts/gpu_ab.py: prompt 256, 33 new tokens (32 timed steps), best of 2 generations, E32, roofline % with the
measured copy bandwidth and the counted distinct experts.
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

from jsonl_log import JsonlLog

from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph import kernels as gk

T0 = time.time()
OUT = Path(os.environ.get("OUT", "."))
LOG = OUT / "ablation.jsonl"
PROMPT, NEW = 256, 33
gk.PDL_MAX_TOKENS = 1 << 20  # the PDL configurations apply at every batch size here (the shipped gate: 1 token)
SHIPPED_FEW = {"gate_up": (64, 128, 4, 4), "down": (32, 128, 4, 4)}  # main's table before session 5
TILE = {"gate_up": (64, 128, 4, 4), "down": (64, 128, 4, 4)}  # session 5 call 1's sweep: down 65.3 -> 62.8 us
CONFIGS = {  # name -> (PDL mode, FUSE_NORM_ROUTER, MOE_CONFIG_FEW)
    "base": (0, False, SHIPPED_FEW),
    "nr": (0, True, SHIPPED_FEW),
    "nr_tile": (0, True, TILE),
    "pdl1": (1, False, SHIPPED_FEW),
    "pdl2": (2, False, SHIPPED_FEW),
    "nr_tile_pdl1": (1, True, TILE),
    "nr_tile_pdl2": (2, True, TILE),
}


emit = JsonlLog(LOG, T0).emit


def set_config(name: str) -> None:
    gk.PDL, gk.FUSE_NORM_ROUTER, few = CONFIGS[name]
    gk.MOE_CONFIG_FEW = dict(few)


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


def exactness(model, batch: int, k: int, names, weights: str = "bf16") -> dict[str, bool]:
    """Tokens and the last step's logits of each configuration against the first ("base": no PDL, no fusion);
    returns, per configuration, whether it gave the first one's tokens."""
    ref = None
    same: dict[str, bool] = {}
    for name in names:
        set_config(name)
        try:
            res, logits = run_engine(model, batch, k, keep_logits=True)
            toks = res[-1].tokens
            if ref is None:
                ref = (toks, logits)
            same[name] = bool(torch.equal(toks, ref[0]))
            emit({"sec": "exact", "weights": weights, "batch": batch, "top_k": k, "config": name,
                  "tokens_equal": same[name], "token_agreement": round((toks == ref[0]).float().mean().item(), 4),
                  "logits_max_abs_diff": round((logits - ref[1]).abs().max().item(), 5),
                  "repeat_equal": bool(torch.equal(res[0].tokens, res[1].tokens))})
        except Exception as exc:
            same[name] = False
            emit({"sec": "exact", "config": name, "error": repr(exc)[:400], "tb": traceback.format_exc()[-1200:]})
    return same


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


def mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="1x4,1x2", help="batch-1 cases: every configuration, twice")
    ap.add_argument("--big-cases", default="8x4,32x4,128x4", help="PDL modes only (the rest is batch-1 only), once")
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
          "pdl_supported": gk.pdl_launch() > 0, "load_s": round(time.time() - T0, 1)})
    arch = ArchSummary.from_model(model)
    exact = exactness(model, 1, 4, list(CONFIGS))
    big_exact = exactness(model, 8, 4, ["base", "pdl1", "pdl2"])
    for mode in (1, 2):
        exact[f"pdl{mode}"] = exact[f"pdl{mode}"] and big_exact[f"pdl{mode}"]
    times: dict[tuple[str, int, int], list[float]] = {}

    def timed(name: str, b: int, k: int) -> None:
        set_config(name)
        rec = time_case(model, b, k, arch, bandwidth, name)
        emit(rec)
        if "ms_step" in rec:
            times.setdefault((name, b, k), []).append(rec["ms_step"])

    small = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",") if c]
    big = [tuple(int(v) for v in c.split("x")) for c in args.big_cases.split(",") if c]
    for b, k in small:
        for _ in range(2):
            for name in CONFIGS:
                timed(name, b, k)
    for b, k in big:
        for name in ("base", "pdl1", "pdl2"):
            timed(name, b, k)
    set_config("base")
    profile(model, "base")
    set_config("nr_tile")
    profile(model, "nr_tile (no PDL)")

    ok = lambda n: exact.get(n, False)  # noqa: E731
    t = lambda n, b, k: mean(times.get((n, b, k), []))  # noqa: E731
    nr = ok("nr") and all(t("nr", b, k) < t("base", b, k) for b, k in small)
    tile = nr and ok("nr_tile") and all(t("nr_tile", b, k) < t("nr", b, k) for b, k in small)
    plain = "nr_tile" if tile else ("nr" if nr else "base")
    scores = {}
    for mode in (1, 2):
        with_pdl = f"nr_tile_pdl{mode}" if tile else f"pdl{mode}"
        if not (ok(f"pdl{mode}") and ok(with_pdl)):
            continue
        ratios = [t(with_pdl, b, k) / t(plain, b, k) for b, k in small]
        ratios += [t(f"pdl{mode}", b, k) / t("base", b, k) for b, k in big]
        scores[mode] = mean(ratios)
    pdl = min(scores, key=scores.get) if scores else 0
    if pdl and scores[pdl] > 0.995:
        pdl = 0
    picks = {"PDL": pdl, "FUSE_NORM_ROUTER": nr, "MOE_CONFIG_FEW": {n: list(v) for n, v in
                                                                   (TILE if tile else SHIPPED_FEW).items()}}
    (OUT / "picks.json").write_text(json.dumps(picks))
    emit({"sec": "picks", **picks, "pdl_scores": scores,
          "means": {f"{n}|{b}x{k}": round(mean(v), 4) for (n, b, k), v in times.items()}})
    if not args.skip_mxfp4:  # the shared decoder on the MXFP4 experts: same tokens, and the time
        from bench.models import mxfp4

        mxfp4.quantize_model(model)
        torch.cuda.empty_cache()
        gk.PDL, gk.FUSE_NORM_ROUTER = pdl, nr
        CONFIGS["picks"] = (pdl, nr, SHIPPED_FEW)
        exactness(model, 1, 4, ["base", "picks"], weights="mxfp4")
        for name in ("base", "picks"):
            set_config(name)
            emit(time_case(model, 1, 4, arch, bandwidth, name, weights="mxfp4"))
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
