"""H200 ablation of the batch-1 decode step's launch-count work (issue 12, session 5), one call: programmatic
dependent launch (`kernels.PDL`: 0 off, 1 implicit trigger, 2 trigger after the wait), the post-attention norm +
router in one launch (`kernels.FUSE_NORM_ROUTER`) and the compact expert launch's down tile at batch 1
(`kernels.MOE_CONFIG_FEW`), alone and together, each timed twice, interleaved; a step profile; exactness of every
configuration against the plain one (bf16 and, after quantizing the experts, MXFP4).

    PYTHONUNBUFFERED=1 python scripts/gpu_step_ablation.py [--cases 1x4,1x2] [--big-cases 8x4,32x4,128x4]
        [--skip-mxfp4]
    PYTHONUNBUFFERED=1 python scripts/gpu_step_ablation.py --sweep [--classes scan32,scan16,compact,big,few]
        [--budget-s 270]

--sweep (session 6, batch 8-256): a profile at 8 and 32 tokens; per class of expert launch (scan M tile 32 / 16,
compact past COMPACT_FEW_PAIRS, one token, sorted M tile 64 at 256 tokens) a coordinate sweep of the gate_up and
down tiles and the N-tile-major grid over the 24 layers' weights (`sweep_class`); the split router's slice width at
8 / 32 / 256 tokens; decode attention's block and warps at 1 / 8 / 32 / 256 streams; $OUT/picks.json (only the
tables measured >= 1% (tiles), 5% (router) or 3% (attention) faster than the shipped ones); then the engine with
the shipped tables and with the picks, interleaved, at every batch whose tables changed (E32, then pruned to E16).

--prefetch (session 7, batch 1): the one-row norm + router tail (`kernels.NORM_ROUTER_ONE_ROW`) and the split-K
GEMVs' early start (`SPLITK_EARLY`: the kernel before each triggers it right after its own wait), alone and together,
against main's configuration: exactness (tokens and last logits), --rounds interleaved rounds at 1x4 and 1x2, eager
profiles (qkv / o_proj split-K launches apart), $OUT/picks.json (`prefetch_main`). --early: on top of that, more
one-token kernels in PDL mode 2, one site at a time, then the winners together (`early_main`).
--compare '{"main": {}, "x": {"FUSE_ROPE_ATTN": false}}' [--cases 1x4,8x2] [--rounds 2] [--experts 16] (session 8):
named configurations of the kernels module's settings on top of the shipped ones, exactness against the first,
interleaved timings on E32 and then pruned, each case's ratio to the first (`compare_main`); --profile adds one eager
batch-1 step of each under torch.profiler; --timeline one profiled graph replay of each case (`graph_timeline`);
--exact-repeats R runs each configuration's exactness case R times (determinism: `"sec": "repeat"` records);
--pruned-only skips the E32 model (session 9); --weights mxfp4 quantizes the experts first, and names "mx.NAME" set
mxfp4_kernels' settings (session 12).
--pruned: each of those options alone and bf7's pick, at 1x4 / 1x2 on E32 and then on the model pruned to --experts
(16) in the same process: the pruned / E32 ratio per option, to find what made pruned models slower at batch 1
(`pruned_main`; docs/PERF.md session 7).

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
from bench.engines.graph import mxfp4_kernels as gmx

T0 = time.time()
OUT = Path(os.environ.get("OUT", "."))
LOG = OUT / "ablation.jsonl"
PROMPT, NEW = 256, 33
PDL_MAX_SHIPPED = gk.PDL_MAX_TOKENS  # the shipped gate (sessions 5-8: 1 token; since session 9: 32)
gk.PDL_MAX_TOKENS = 1 << 20  # the PDL configurations apply at every batch size here
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


def time_case(model, batch: int, k: int, arch, bandwidth: float, label: str, weights: str = "bf16",
              roofline: bool | None = None) -> dict:
    from bench.roofline import mean_decode_context, roofline_point

    try:
        res, _ = run_engine(model, batch, k)
        r = min(res, key=lambda r: r.decode_s)
        tps = batch * (NEW - 1) / r.decode_s
        rec = {"sec": "engine", "label": label, "weights": weights, "batch": batch, "top_k": k,
               "ms_step": round(1000 * r.decode_s / (NEW - 1), 4), "tok_s": round(tps, 1),
               "spread_pct": round(100 * (max(x.decode_s for x in res) / r.decode_s - 1), 2)}
        if weights == "bf16" if roofline is None else roofline:  # arch must be this model's (its weights' widths)
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


# ---- session 6 (--sweep): per-batch tiles of the expert launches, the router's slice, decode attention ----
# (BN, BK, num_warps, num_stages) candidates (session 6's; the first were main's then); the shipped table of each
# class is timed first and last
SCAN_GATE_UP = [(64, 128, 4, 4), (64, 128, 4, 3), (64, 128, 4, 5), (64, 64, 4, 6), (128, 64, 4, 4),
                (128, 128, 4, 3), (128, 128, 8, 3), (64, 256, 4, 3), (256, 64, 8, 3)]
SCAN_DOWN = [(32, 128, 4, 4), (64, 128, 4, 4), (32, 128, 4, 5), (32, 256, 4, 3), (64, 64, 4, 6), (128, 64, 4, 4),
             (16, 256, 4, 4), (64, 256, 4, 3)]
BIG_GATE_UP = [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3), (256, 64, 8, 3), (64, 128, 4, 3), (128, 64, 8, 3)]
BIG_DOWN = [(64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3)]
# class -> (kernels table, M-tile key or None, cases (tokens, experts, top_k), gate_up and down candidates; each
# also tried with the N-tile-major grid). Each
# case takes the class's table in the engine: batch 8 at E32 k4 / E16 k4 -> scan M tile 16; E32 k2 (16 pairs < 32
# experts) -> compact past COMPACT_FEW_PAIRS; 32 tokens -> scan M tile 32; 256 tokens E32 k4 -> sorted M tile 64;
# one token -> compact, MOE_CONFIG_FEW (only the grid order is new there).
CLASSES = {
    "scan32": ("MOE_CONFIG_BM", 32, [(32, 32, 4), (32, 32, 2), (32, 16, 4)], SCAN_GATE_UP, SCAN_DOWN),
    "scan16": ("MOE_CONFIG_BM", 16, [(8, 32, 4), (8, 16, 4)], SCAN_GATE_UP, SCAN_DOWN),
    "compact": ("MOE_CONFIG_COMPACT", None, [(8, 32, 2)], SCAN_GATE_UP, SCAN_DOWN),
    "big": ("MOE_CONFIG_BM", 64, [(256, 32, 4)], BIG_GATE_UP, BIG_DOWN),
    "few": ("MOE_CONFIG_FEW", None, [(1, 32, 4), (1, 32, 2)], [(64, 128, 4, 4)], [(64, 128, 4, 4)]),
    "few_wide": ("MOE_CONFIG_FEW", None, [(1, 32, 4), (1, 32, 2)], None, None),  # FEW_GATE_UP / FEW_DOWN
}
# one token (compact, session 6 lead): more and smaller CTAs (the 4 experts' N tiles are 180-360 CTAs on 132 SMs),
# other warp counts and deeper K pipelines than session 5's sweep tried
FEW_GATE_UP = [(32, 128, 4, 4), (32, 256, 4, 3), (32, 128, 2, 4), (64, 128, 2, 4), (64, 128, 8, 4), (64, 64, 4, 8),
               (64, 256, 4, 3), (128, 128, 4, 3), (128, 64, 4, 6), (16, 256, 2, 4)]
FEW_DOWN = [(32, 128, 4, 4), (32, 256, 4, 3), (32, 128, 2, 4), (64, 128, 2, 4), (64, 128, 8, 4), (64, 64, 4, 8),
            (64, 256, 4, 3), (128, 64, 4, 4), (128, 128, 4, 3), (16, 256, 2, 4)]
ATTN_CANDIDATES = [(64, 4, None), (128, 4, None), (64, 8, None), (128, 8, None), (32, 4, None), (64, 4, 2)]
KEEP = 0.99  # a pick must be >= 1% faster than the shipped table, on the mean ratio over the class's cases


def class_base(name: str) -> dict:
    key = CLASSES[name][1]
    if name in ("compact", "few", "few_wide"):
        return dict(gk.MOE_CONFIG_FEW)
    return dict(gk.MOE_CONFIG_BM.get(key) or (gk.MOE_CONFIG_BIG if key >= 64 else gk.MOE_CONFIG))


def moe_bench(model, tokens: int, experts: int, k: int):
    """`measure(tiles)` -> (ms, rel_err, TB/s): one routed expert layer over the 24 layers' weights in turn (no L2
    reuse; the first `experts` experts of each), each layer with its own random distinct top-k routing, in a CUDA
    graph (median). rel_err against the shipped tables' output."""
    import triton.testing

    layers = [la.mlp.experts for la in model.model.layers]
    gen = torch.Generator("cuda").manual_seed(100 * tokens + 10 * experts + k)
    hidden = layers[0].gate_up_proj.shape[1]
    ws = [(ex.gate_up_proj[:experts], ex.gate_up_proj_bias[:experts], ex.down_proj[:experts],
           ex.down_proj_bias[:experts]) for ex in layers]
    xs = [torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in layers]
    topis = [torch.rand(tokens, experts, device="cuda", generator=gen).argsort(-1)[:, :k].to(torch.int32).contiguous()
             for _ in layers]
    topw = torch.softmax(torch.randn(tokens, k, device="cuda", generator=gen), -1)
    per = layers[0].gate_up_proj[0].numel() + layers[0].down_proj[0].numel()
    nbytes = sum(t.unique().numel() for t in topis) * per * 2

    def run(tiles):
        return [gk.moe(x, gu, gub, dn, dnb, ti, topw, 1.702, 7.0, tiles=tiles)
                for x, (gu, gub, dn, dnb), ti in zip(xs, ws, topis, strict=True)]

    ref = [o.float() for o in run(None)]

    def measure(tiles) -> tuple[float, float, float]:
        err = max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(run(tiles), ref, strict=True))
        ms = float(triton.testing.do_bench_cudagraph(lambda: run(tiles), rep=20, return_mode="median"))
        return ms, err, nbytes / ms / 1e9

    return measure


def sweep_class(model, name: str) -> dict | None:
    """Coordinate sweep of one class: gate_up candidates with the shipped down tile, then down candidates with the
    best gate_up; score = mean over the class's cases of ms / the shipped table's ms; the shipped table is timed
    first and last (its spread). Returns the pick if it beats the shipped table by KEEP, else None."""
    _, _, cases, gus, dns = CLASSES[name]
    if name == "few_wide":
        gus, dns = FEW_GATE_UP, FEW_DOWN
    base = class_base(name)
    benches = [(c, moe_bench(model, *c)) for c in cases]
    base_ms: dict = {}

    def score(tiles: dict, tag: str) -> float:
        ratios = []
        for case, measure in benches:
            try:
                ms, err, tbs = measure(tiles)
            except Exception as exc:
                emit({"sec": "tiles", "class": name, "case": case, "tiles": str(tiles), "error": repr(exc)[:300]})
                return float("inf")
            base_ms.setdefault(case, ms)
            emit({"sec": "tiles", "class": name, "case": case, "tag": tag,
                  "tiles": {n: list(v) for n, v in tiles.items()}, "us_layer": round(1000 * ms / 24, 2),
                  "tb_s": round(tbs, 3), "rel_err": err})
            ratios.append(ms / base_ms[case] if err < 1e-2 else float("inf"))
        return mean(ratios)

    first = score(base, "shipped")
    best_t, best = first, dict(base)
    for gu in gus:
        if tuple(gu) == tuple(base["gate_up"]):
            continue
        cand = {"gate_up": tuple(gu), "down": base["down"]}
        t = score(cand, "gate_up")
        if t < best_t:
            best_t, best = t, cand
    for dn in dns:
        if tuple(dn) == tuple(best["down"]):
            continue
        cand = {"gate_up": best["gate_up"], "down": tuple(dn)}
        t = score(cand, "down")
        if t < best_t:
            best_t, best = t, cand
    for gemm in ("gate_up", "down"):  # the same tiles with the N-tile-major grid (kernels._moe_kernel NB_MAJOR)
        cand = {**best, gemm: (*tuple(best[gemm])[:4], 1)}
        t = score(cand, f"{gemm} N-major")
        if t < best_t:
            best_t, best = t, cand
    again = score(base, "shipped again")
    keep = best != base and best_t < KEEP * min(first, again)
    emit({"sec": "tiles_pick", "class": name, "pick": {n: list(v) for n, v in best.items()}, "ratio": round(best_t, 4),
          "shipped_again": round(again, 4), "kept": keep})
    return best if keep else None


def router_sweep(model) -> tuple:
    """The split router (`kernels.router`, all 24 layers' weights) at 8 / 32 / 256 tokens with slice widths
    64 (shipped) / 32 / 16 / 128; returns ROUTER_BH_BY_TOKENS for the widths >= 5% faster than 64."""
    import triton.testing

    routers = [la.mlp.router for la in model.model.layers]
    hidden = routers[0].weight.shape[1]
    table = []
    for tokens, most in ((8, 16), (32, 64), (256, 256)):
        gen = torch.Generator("cuda").manual_seed(tokens)
        xs = [torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in routers]
        res = {}
        ref = None
        for bh in (64, 32, 16, 128):
            def run(bh=bh, xs=xs):
                return [gk.router(x, r.weight, r.bias, 4, bh=bh) for x, r in zip(xs, routers, strict=True)]
            try:
                out = torch.cat([t for t, _ in run()])
                ref = out if ref is None else ref
                ms = float(triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median"))
                res[bh] = ms
                emit({"sec": "router", "tokens": tokens, "bh": bh, "us_layer": round(1000 * ms / 24, 2),
                      "topi_equal": round((out == ref).float().mean().item(), 5)})
            except Exception as exc:
                emit({"sec": "router", "tokens": tokens, "bh": bh, "error": repr(exc)[:300]})
        best = min(res, key=res.get) if res else 64
        if best != 64 and res[best] < 0.95 * res[64]:
            table.append((most, best))
        elif table:
            table.append((most, 64))
    emit({"sec": "router_pick", "ROUTER_BH_BY_TOKENS": table})
    return tuple(table)


def attn_sweep(model) -> tuple:
    """Decode attention (`kernels.attn_decode`) over 24 layers' caches (alternating sliding 128 / full, context 272,
    synthetic gpt-oss-20b's heads) at 1 / 8 / 32 / 256 streams: ATTN_CANDIDATES; returns ATTN_CONFIG_BY_BATCH for
    the batch sizes where a candidate is >= 3% faster than the shipped (64, 4, default)."""
    import triton.testing

    cfg = model.config
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    pos = torch.tensor([271], device="cuda", dtype=torch.int64)
    table = []
    for bsz, most in ((1, 1), (8, 16), (32, 64), (256, 1 << 20)):
        gen = torch.Generator("cuda").manual_seed(bsz)
        caches = []
        for i in range(len(model.model.layers)):
            s_cache = 128 if i % 2 == 0 else PROMPT + NEW
            kc = torch.randn(bsz, hkv, s_cache, d, device="cuda", dtype=torch.bfloat16, generator=gen)
            caches.append((kc, torch.randn_like(kc)))
        q = torch.randn(bsz, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        sinks = torch.randn(hq, device="cuda", dtype=torch.bfloat16, generator=gen)
        res = {}
        ref = None
        for c in ATTN_CANDIDATES:
            def run(c=c, q=q, sinks=sinks, caches=caches):
                return [gk.attn_decode(q, kc, vc, sinks, pos, d ** -0.5, config=c) for kc, vc in caches]
            try:
                out = torch.cat(run()).float()
                ref = out if ref is None else ref
                err = ((out - ref).norm() / ref.norm()).item()
                ms = float(triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median"))
                res[c] = ms if err < 1e-2 else float("inf")
                emit({"sec": "attn", "batch": bsz, "config": list(c), "us_layer": round(1000 * ms / 24, 2),
                      "rel_err": err})
            except Exception as exc:
                emit({"sec": "attn", "batch": bsz, "config": list(c), "error": repr(exc)[:300]})
        caches.clear()
        torch.cuda.empty_cache()
        best = min(res, key=res.get) if res else ATTN_CANDIDATES[0]
        if best != ATTN_CANDIDATES[0] and res[best] < 0.97 * res[ATTN_CANDIDATES[0]]:
            table.append((most, best))
        else:
            table.append((most, ATTN_CANDIDATES[0]))
    if all(c == ATTN_CANDIDATES[0] for _, c in table):
        table = []
    emit({"sec": "attn_pick", "ATTN_CONFIG_BY_BATCH": table})
    return tuple(table)


def sweep_main(args, model, bandwidth: float) -> int:
    """Session 6: profile, the tile / router / attention sweeps, picks.json, then the engine with the shipped tables
    (label "main" in session 6's call 1, when they were main's) and with the picks, interleaved (E32, then the model
    pruned to E16)."""
    from gpu_ab import _table

    from bench.models.pruning import prune_model
    from bench.roofline import ArchSummary

    left = lambda: args.budget_s - (time.time() - T0)  # noqa: E731
    gk.PDL_MAX_TOKENS = 1  # as shipped
    shipped = {n: getattr(gk, n) for n in ("MOE_CONFIG_BM", "MOE_CONFIG_COMPACT", "MOE_CONFIG_BIG", "MOE_CONFIG_FEW",
                                           "ROUTER_BH_BY_TOKENS", "ATTN_CONFIG_BY_BATCH")}
    from gpu_check_graph import profile_step

    from bench.models.pruning import set_top_k

    def prof(batch: int, label: str) -> None:
        set_top_k(model, 4)
        try:
            p = profile_step(model, batch, PROMPT, GraphOptions(), top_n=16)
            emit({"sec": "profile", "label": label, "batch": batch, "kernels": p["kernels_per_step"],
                  "kernel_us": round(p["kernel_time_us"], 1),
                  "top": [[t["name"], t["total_us"], t["count"]] for t in p["top"]]})
        except Exception as exc:
            emit({"sec": "profile", "label": label, "batch": batch, "error": repr(exc)[:300]})

    for b in () if args.tiles_only else (8, 32):
        prof(b, "shipped tables")
    picks: dict = {}
    scan: dict = {}
    for name in args.classes.split(","):
        if left() < 140:
            emit({"sec": "skip", "class": name, "left_s": round(left())})
            continue
        try:
            pick = sweep_class(model, name)
        except Exception as exc:
            emit({"sec": "tiles_pick", "class": name, "error": repr(exc)[:300], "tb": traceback.format_exc()[-800:]})
            pick = None
        if pick is None:
            continue
        table, key, *_ = CLASSES[name]
        if table == "MOE_CONFIG_BM":
            scan[key] = pick
        else:
            picks[table] = pick
    if scan:
        picks["MOE_CONFIG_BM"] = {**gk.MOE_CONFIG_BM, **scan}
    if left() > 125 and not args.tiles_only:
        rb = router_sweep(model)
        if rb:
            picks["ROUTER_BH_BY_TOKENS"] = rb
    if left() > 115 and not args.tiles_only:
        at = attn_sweep(model)
        if at:
            picks["ATTN_CONFIG_BY_BATCH"] = at
    (OUT / "picks.json").write_text(json.dumps(picks))
    emit({"sec": "picks", **picks})

    def apply(which: str) -> None:
        for n, v in shipped.items():
            setattr(gk, n, v)
        if which == "picks":
            for n, v in picks.items():
                setattr(gk, n, _table(json.loads(json.dumps(v))))

    arch = ArchSummary.from_model(model)
    e32 = [tuple(int(v) for v in c.split("x")) for c in args.engine_cases.split(",") if c]
    e16 = [tuple(int(v) for v in c.split("x")) for c in args.engine_cases16.split(",") if c]
    again = {(8, 4), (32, 4), (1, 4)}

    def signature(b: int, k: int, experts: int) -> tuple:
        """The tables a (batch, top_k, experts) step takes: the expert tiles, the router slice, the attention."""
        plan = gk.routing_plan(torch.zeros((b, k), dtype=torch.int32, device="cuda"), experts)
        return str(gk.moe_tiles(plan)), gk.router_bh(b), gk.attn_config(b)

    def engine(cases, arch, experts: int) -> None:
        for b, k in cases:
            sig = []
            for which in ("shipped", "picks"):
                apply(which)
                sig.append(signature(b, k, experts))
            if sig[0] == sig[1]:
                emit({"sec": "engine", "skip": "same tables", "experts": experts, "batch": b, "top_k": k})
                continue
            for rep in range(2 if (b, k) in again else 1):
                for which in (("shipped", "picks") if rep == 0 else ("picks", "shipped")):
                    if left() < 20:
                        return
                    apply(which)
                    rec = time_case(model, b, k, arch, bandwidth, which)
                    emit({**rec, "experts": experts, "rep": rep})

    if picks:
        engine(e32, arch, 32)
        apply("picks")
        if not args.tiles_only:
            prof(32, "picks")
        if e16 and left() > 40:
            prune_model(model, [list(range(16))] * len(model.model.layers))
            torch.cuda.empty_cache()
            engine(e16, ArchSummary.from_model(model), 16)
    apply("shipped")
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


# ---- session 7 (--prefetch): the one-row norm + router tail, the split-K GEMVs' early start and L2 prefetch ----
# (call 1 of session 7, commit 89c2e1f, also timed extra prefetch-only programs in rope_kv / attn_decode / the norm
# kernels over o_proj and the next qkv: every variant 1.1-2.5% slower; call 2, e76d69b, the split-K programs
# prefetching their own weight block before their wait (SPLITK_EARLY 2 then): +0.7%; both removed, docs/PERF.md)
S7_BASE = {"NORM_ROUTER_ONE_ROW": False, "SPLITK_EARLY": False, "PDL_EARLY_MORE": ()}  # = main's code path
SHIPPED7 = {"NORM_ROUTER_ONE_ROW": True, "SPLITK_EARLY": True}  # call 2's pick (call 3 measured the sites on top)
EARLY_SITES = ("rope", "splitk", "norm_router", "moe_down")  # --early: kernels.PDL_EARLY_MORE candidates
S7_CONFIGS = {"base": {}, "one_row": {"NORM_ROUTER_ONE_ROW": True}, "early": {"SPLITK_EARLY": True},
              "one_row_early": {"NORM_ROUTER_ONE_ROW": True, "SPLITK_EARLY": True}}


def s7_apply(cfg: dict) -> None:
    for n, v in {**S7_BASE, **cfg}.items():
        setattr(gk, n, v)


def s7_exact(model, name: str, cfg: dict, ref: tuple | None) -> tuple[bool, tuple | None]:
    """Configuration `cfg` at batch 1 k4: whether its tokens and last-step logits equal `ref` (the first run's when
    `ref` is None); returns (exact, ref)."""
    s7_apply(cfg)
    try:
        res, logits = run_engine(model, 1, 4, keep_logits=True)
        toks = res[-1].tokens
        ref = ref or (toks, logits)
        same = bool(torch.equal(toks, ref[0])) and bool(torch.equal(logits, ref[1]))
        emit({"sec": "exact", "config": name, "tokens_equal": bool(torch.equal(toks, ref[0])),
              "logits_max_abs_diff": round((logits - ref[1]).abs().max().item(), 5)})
        return same, ref
    except Exception as exc:
        emit({"sec": "exact", "config": name, "error": repr(exc)[:400], "tb": traceback.format_exc()[-1200:]})
        return False, ref


def s7_profile(model, label: str) -> None:
    """One eager step at batch 1 k4 under torch.profiler, kernels in launch order: per family, and the split-K
    launches apart (qkv = even, o_proj = odd)."""
    from torch.profiler import ProfilerActivity, profile

    from bench.models.pruning import set_top_k

    set_top_k(model, 4)
    try:
        ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), device="cuda")
        eng = GraphEngine(GraphOptions(capture="off"))
        eng.prepare(model, ids, 8)
        with torch.inference_mode():
            eng.decoder.decode_step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                eng.decoder.decode_step()
                torch.cuda.synchronize()
        evs = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
        fam: dict[str, list[float]] = {}
        for ev in evs:
            fam.setdefault(ev.name[:48], []).append(getattr(ev, "device_time", None) or ev.cuda_time)
        sk = fam.get("_splitk_gemv_kernel", [])
        emit({"sec": "profile", "label": label, "batch": 1, "kernels": len(evs),
              "kernel_us": round(sum(sum(v) for v in fam.values()), 1),
              "qkv_us": round(sum(sk[0::2]), 1), "oproj_us": round(sum(sk[1::2]), 1),
              "families": {k: [round(sum(v), 1), len(v)] for k, v in sorted(fam.items(), key=lambda x: -sum(x[1]))}})
        eng.release()
    except Exception as exc:
        emit({"sec": "profile", "label": label, "error": repr(exc)[:300], "tb": traceback.format_exc()[-800:]})


def graph_timeline(model, label: str, batch: int, k: int) -> None:
    """Session 9: one CUDA-graph replay of a decode step under torch.profiler (CUPTI reports the graph's kernels with
    their start and end), kernels in time order. Per kernel family: summed duration, count and "exposed" time (how far
    each kernel moves the step's end past every earlier kernel's end), and the idle gaps before them; the step span is
    exposed + gaps. PDL overlap shows as duration > exposed. The two expert launches of a layer are apart
    ("_moe_kernel gate_up" / "_moe_kernel down", by their order); MOE_FUSED's one launch is `_moe_fused_kernel`."""
    from torch.profiler import ProfilerActivity, profile

    from bench.models.pruning import set_top_k

    set_top_k(model, k)
    try:
        ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                            generator=torch.Generator("cuda").manual_seed(batch))
        eng = GraphEngine(GraphOptions())
        eng.prepare(model, ids, NEW)
        with torch.inference_mode():
            eng.decoder.prefill(ids)
            for _ in range(3):
                eng.step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                eng.step()
                torch.cuda.synchronize()
        evs = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda x: x[0])
        fam: dict[str, list[float]] = {}
        end = evs[0][0] if evs else 0.0
        gaps = 0.0
        moe_seen = 0
        for s, e, name in evs:
            key = name[:40]
            if key == "_moe_kernel":  # the expert GEMMs launch in pairs, gate_up then down: tell them apart by order
                key = "_moe_kernel " + ("gate_up" if moe_seen % 2 == 0 else "down")
                moe_seen += 1
            f = fam.setdefault(key, [0.0, 0, 0.0, 0.0])  # duration, count, exposed, gap before
            gap = max(0.0, s - end)
            f[0] += e - s
            f[1] += 1
            f[2] += max(0.0, e - max(s, end))
            f[3] += gap
            gaps += gap
            end = max(end, e)
        span = (evs[-1][1] - evs[0][0]) if evs else 0.0
        emit({"sec": "timeline", "label": label, "batch": batch, "top_k": k, "kernels": len(evs),
              "span_us": round(span, 1), "gaps_us": round(gaps, 1),
              "families": {n: [round(v[0], 1), v[1], round(v[2], 1), round(v[3], 1)]
                           for n, v in sorted(fam.items(), key=lambda x: -x[1][2])}})
        eng.release()
    except Exception as exc:
        emit({"sec": "timeline", "label": label, "error": repr(exc)[:300], "tb": traceback.format_exc()[-800:]})


def early_main(args, model, bandwidth: float) -> int:
    """--early: main's path, the shipped session-7 configuration, and that plus each EARLY_SITES site in PDL mode 2
    (kernels.PDL_EARLY_MORE): --rounds interleaved rounds at 1x4 / 1x2; then main, shipped and the
    sites >= 0.3% faster than shipped together (exactness against main: tokens and last logits at 1x4), --rounds
    rounds; picks.json = the combination if exact, >= 0.5% faster than shipped and slower in neither case, else
    shipped."""
    from bench.roofline import ArchSummary

    arch = ArchSummary.from_model(model)
    cfgs = {"main": {}, "shipped": dict(SHIPPED7)}
    for site in EARLY_SITES:
        cfgs[f"+{site}"] = {**SHIPPED7, "PDL_EARLY_MORE": (site,)}
    exact: dict[str, bool] = {}
    ref = None

    def check(name: str) -> None:
        nonlocal ref
        exact[name], ref = s7_exact(model, name, cfgs[name], ref)

    check("main")  # the reference; only what can ship (the combination, below) must equal it
    check("shipped")
    cases = [(1, 4), (1, 2)]
    times: dict[tuple[str, int, int], list[float]] = {}

    def rounds(names: list[str], tag: str) -> None:
        for rnd in range(args.rounds):
            for b, k in cases:
                for name in (names if rnd % 2 == 0 else names[::-1]):
                    s7_apply(cfgs[name])
                    rec = time_case(model, b, k, arch, bandwidth, f"{tag}{name}")
                    emit({**rec, "rnd": rnd})
                    if "ms_step" in rec:
                        times.setdefault((f"{tag}{name}", b, k), []).append(rec["ms_step"])

    t = lambda n, b, k: mean(times.get((n, b, k), []))  # noqa: E731
    names = list(cfgs)
    rounds(names, "")
    ratio = {n: mean([t(n, b, k) / t("shipped", b, k) for b, k in cases]) for n in names}
    emit({"sec": "early_round1", "ratio_to_shipped": {n: round(r, 4) for n, r in ratio.items()}})
    sites = tuple(s for s in EARLY_SITES if ratio.get(f"+{s}", 9) < 0.997)
    pick = "shipped"
    if sites:
        cfgs["combo"] = {**SHIPPED7, "PDL_EARLY_MORE": sites}
        check("combo")
        if exact.get("combo"):
            rounds(["main", "shipped", "combo"], "r2-")
            r2 = mean([t("r2-combo", b, k) / t("r2-shipped", b, k) for b, k in cases])
            worst = max(t("r2-combo", b, k) / t("r2-shipped", b, k) for b, k in cases)
            emit({"sec": "early_round2", "sites": sites, "ratio": round(r2, 4), "worst": round(worst, 4)})
            if r2 < 0.995 and worst < 1.0:
                pick = "combo"
    emit({"sec": "early_pick", "pick": pick,
          "means": {f"{n}|{b}x{k}": round(mean(v), 4) for (n, b, k), v in times.items()}})
    picked = {**S7_BASE, **cfgs[pick]}
    (OUT / "picks.json").write_text(json.dumps(picked))
    emit({"sec": "picks", **picked})
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


# --pruned (session 7's open question): which batch-1 option makes pruned models slower (docs/PERF.md session 7).
BF7_PICK = {"NORM_ROUTER_ONE_ROW": True, "SPLITK_EARLY": True, "PDL_EARLY_MORE": ("rope", "splitk", "moe_down")}
PRUNED_CONFIGS = {
    "main": {},
    "one_row": {"NORM_ROUTER_ONE_ROW": True},
    "splitk_early": {"SPLITK_EARLY": True},
    "+rope": {"PDL_EARLY_MORE": ("rope",)},
    "+splitk_qkv": {"PDL_EARLY_MORE": ("splitk_qkv",)},
    "+splitk_o_proj": {"PDL_EARLY_MORE": ("splitk_o_proj",)},
    "+moe_down": {"PDL_EARLY_MORE": ("moe_down",)},
    "bf7": BF7_PICK,
    "bf7_no_o_proj": {**BF7_PICK, "PDL_EARLY_MORE": ("rope", "splitk_qkv", "moe_down")},
}


def timed_rounds(model, arch, bandwidth: float, names: list[str], apply, cases, rounds: int, experts: int,
                 times: dict, weights: str = "bf16") -> None:
    """`rounds` interleaved rounds (every other one in reverse order) of each case under each named configuration
    (`apply(name)` sets it): each timing emitted, its ms a step appended to times[(name, experts, batch, top_k)]."""
    for rnd in range(rounds):
        for b, k in cases:
            for name in (names if rnd % 2 == 0 else names[::-1]):
                apply(name)
                rec = time_case(model, b, k, arch, bandwidth, name, weights, roofline=True)
                emit({**rec, "experts": experts, "rnd": rnd})
                if "ms_step" in rec:
                    times.setdefault((name, experts, b, k), []).append(rec["ms_step"])


def pruned_main(args, model, bandwidth: float) -> int:
    """--pruned: every PRUNED_CONFIGS entry at 1x4 and 1x2, --rounds interleaved rounds, on the E32 model and then
    (pruned in place to its first --experts experts) on the smaller one; per configuration the pruned / E32 step-time
    ratio beside main's. A configuration whose ratio is above main's is one that slows pruned models."""
    from bench.models.pruning import prune_model
    from bench.roofline import ArchSummary

    cases = [(1, 4), (1, 2)]
    times: dict[tuple[str, int, int, int], list[float]] = {}
    big, small = model.config.num_local_experts, args.experts
    for experts in (big, small):
        if experts < model.config.num_local_experts:
            prune_model(model, [list(range(experts))] * len(model.model.layers))
        arch = ArchSummary.from_model(model)
        timed_rounds(model, arch, bandwidth, list(PRUNED_CONFIGS), lambda n: s7_apply(PRUNED_CONFIGS[n]), cases,
                     args.rounds, experts, times)
    t = lambda n, e, b, k: mean(times.get((n, e, b, k), [float("nan")]))  # noqa: E731
    table = {f"{n}|{b}x{k}": {f"e{big}_ms": round(t(n, big, b, k), 4), f"e{small}_ms": round(t(n, small, b, k), 4),
                              "ratio": round(t(n, small, b, k) / t(n, big, b, k), 4)}
             for n in PRUNED_CONFIGS for b, k in cases}
    emit({"sec": "pruned_ratio", "table": table})
    s7_apply({})
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


SHIPPED = {n: getattr(gk, n) for n in dir(gk) if n.isupper()}  # the kernels module's settings as imported
SHIPPED_MX = {f"mx.{n}": getattr(gmx, n) for n in dir(gmx) if n.isupper()}  # mxfp4_kernels' ("mx." + name)


def compare_apply(cfg: dict) -> None:
    """The shipped settings, then `cfg`'s: a name of the kernels module, or "mx." + a name of mxfp4_kernels (a JSON
    list stands for a frozenset or a tuple where the shipped setting is one; a dict's lists become tuples)."""
    shipped = {**SHIPPED, **SHIPPED_MX}
    for n, v in {**shipped, **cfg}.items():
        if n not in shipped:
            raise SystemExit(f"--compare: kernels has no setting {n!r} (mxfp4_kernels' settings take the prefix 'mx.')")
        old = shipped[n]
        if isinstance(old, frozenset | tuple) and isinstance(v, list):
            v = type(old)(v)
        elif isinstance(old, dict) and isinstance(v, dict) and v is not old:
            v = {key: tuple(x) if isinstance(x, list) else x for key, x in v.items()}
        module, name = (gmx, n[3:]) if n.startswith("mx.") else (gk, n)
        setattr(module, name, v)


def compare_main(args, model, bandwidth: float) -> int:
    """--compare: each named configuration (kernels settings on top of the shipped ones; the first is the reference)
    gets an exactness check against the first (tokens and last logits at the first case), then --rounds interleaved
    rounds of every --cases case on the E32 model and then on the model pruned in place to --experts; per
    configuration and case the mean ms a step and its ratio to the first configuration's (`compare`); with --profile
    an eager batch-1 step of each configuration under torch.profiler (`s7_profile`: kernel time by family)."""
    from bench.models.pruning import prune_model
    from bench.roofline import ArchSummary

    raw = args.compare[1:] if args.compare.startswith("@") else None
    configs = json.loads(Path(raw).read_text() if raw else args.compare)
    names = list(configs)
    cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",") if c]
    times: dict[tuple[str, int, int, int], list[float]] = {}
    for experts in ((args.experts,) if args.pruned_only else dict.fromkeys((model.config.num_local_experts,
                                                                             args.experts))):
        if experts < model.config.num_local_experts:
            prune_model(model, [list(range(experts))] * len(model.model.layers))
        arch = ArchSummary.from_model(model)
        ref = None
        for name in names:
            compare_apply(configs[name])
            try:
                res, logits = run_engine(model, *cases[0], keep_logits=True)
            except Exception as exc:
                emit({"sec": "exact", "config": name, "experts": experts, "error": repr(exc)[:400],
                      "tb": traceback.format_exc()[-1200:]})
                continue
            ref = ref or (res[-1].tokens, logits)
            emit({"sec": "exact", "config": name, "experts": experts, "case": "{}x{}".format(*cases[0]),
                  "tokens_equal": bool(torch.equal(res[-1].tokens, ref[0])),
                  "logits_max_abs_diff": round((logits - ref[1]).abs().max().item(), 5),
                  "moe_fused_failed": gk.moe_fused_failed(torch.device("cuda"))})
            for rep in range(1, args.exact_repeats):  # the same configuration again: is it deterministic?
                again, again_logits = run_engine(model, *cases[0], keep_logits=True)
                emit({"sec": "repeat", "config": name, "experts": experts, "repeat": rep,
                      "same_tokens": bool(torch.equal(again[-1].tokens, res[-1].tokens)),
                      "same_logits": bool(torch.equal(again_logits, logits)),
                      "within_run_same": bool(torch.equal(again[0].tokens, again[-1].tokens)),
                      "logits_max_abs_diff": round((again_logits - logits).abs().max().item(), 5)})
        timed_rounds(model, arch, bandwidth, names, lambda n: compare_apply(configs[n]), cases, args.rounds, experts,
                     times, args.weights)
        for name in names if args.profile else ():  # one eager batch-1 step per configuration, kernels by family
            compare_apply(configs[name])
            s7_profile(model, f"{name}|E{experts}")
        for name in names if args.timeline else ():  # one graph replay per configuration and case, time-ordered
            compare_apply(configs[name])
            for b, k in cases:
                graph_timeline(model, f"{name}|E{experts}", b, k)
    compare_apply({})
    first = names[0]
    table = {f"{n}|E{e}|{b}x{k}": {"ms": round(mean(v), 4),
                                   "ratio": round(mean(v) / mean(times.get((first, e, b, k), [float("nan")])), 4)}
             for (n, e, b, k), v in sorted(times.items())}
    emit({"sec": "compare", "table": table})
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


def prefetch_main(args, model, bandwidth: float) -> int:
    """Each S7_CONFIGS entry: exactness at batch 1 k4 (tokens and last logits against base), then 3 interleaved
    rounds at 1x4 and 1x2; the pick is the fastest exact configuration >= 0.5% faster than base on the mean ratio
    and not slower in either case; eager profiles of base and the pick; $OUT/picks.json."""
    from bench.roofline import ArchSummary

    arch = ArchSummary.from_model(model)
    exact: dict[str, bool] = {}
    ref = None
    for name, cfg in S7_CONFIGS.items():
        exact[name], ref = s7_exact(model, name, cfg, ref)
    cases = [(1, 4), (1, 2)]
    times: dict[tuple[str, int, int], list[float]] = {}
    names = [n for n in S7_CONFIGS if exact.get(n)]
    for rnd in range(args.rounds):
        for b, k in cases:
            for name in (names if rnd % 2 == 0 else names[::-1]):
                s7_apply(S7_CONFIGS[name])
                rec = time_case(model, b, k, arch, bandwidth, name)
                emit({**rec, "rnd": rnd})
                if "ms_step" in rec:
                    times.setdefault((name, b, k), []).append(rec["ms_step"])
    t = lambda n, b, k: mean(times.get((n, b, k), []))  # noqa: E731
    ratio = {n: mean([t(n, b, k) / t("base", b, k) for b, k in cases]) for n in names}
    worst = {n: max(t(n, b, k) / t("base", b, k) for b, k in cases) for n in names}
    cand = [n for n in names if n != "base" and ratio[n] < 0.995 and worst[n] < 1.0]
    pick = min(cand, key=ratio.get) if cand else "base"
    emit({"sec": "ratio", "ratio": {n: round(r, 4) for n, r in ratio.items()},
          "worst": {n: round(r, 4) for n, r in worst.items()}, "pick": pick,
          "means": {f"{n}|{b}x{k}": round(mean(v), 4) for (n, b, k), v in times.items()}})
    picked = {**S7_BASE, **S7_CONFIGS[pick]}
    (OUT / "picks.json").write_text(json.dumps(picked))
    emit({"sec": "picks", **picked})
    for name in dict.fromkeys(["base", pick]):
        s7_apply(S7_CONFIGS[name])
        s7_profile(model, name)
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefetch", action="store_true",
                    help="session 7: L2 prefetch sites and the one-row norm + router tail (prefetch_main)")
    ap.add_argument("--early", action="store_true",
                    help="session 7: more one-token kernels in PDL mode 2 (kernels.PDL_EARLY_MORE; early_main)")
    ap.add_argument("--rounds", type=int, default=3, help="--prefetch / --early: interleaved timing rounds")
    ap.add_argument("--pruned", action="store_true",
                    help="session 7: each batch-1 option on E32 and on the model pruned to --experts (pruned_main)")
    ap.add_argument("--experts", type=int, default=16,
                    help="--pruned / --compare: the pruned model's experts a layer")
    ap.add_argument("--compare", default=None, metavar="JSON|@FILE",
                    help='session 8: {"name": {kernels setting: value}, ...} at --cases, E32 and pruned (compare_main)')
    ap.add_argument("--profile", action="store_true", help="--compare: also profile each configuration at batch 1")
    ap.add_argument("--pruned-only", action="store_true", help="--compare: only the model pruned to --experts")
    ap.add_argument("--exact-repeats", type=int, default=1,
                    help="--compare: run each configuration's exactness case this many times (determinism)")
    ap.add_argument("--weights", choices=("bf16", "mxfp4"), default="bf16",
                    help="--compare: the experts' format (mxfp4: quantized on the device after loading)")
    ap.add_argument("--timeline", action="store_true",
                    help="--compare: also one profiled CUDA-graph replay of each configuration and case")
    ap.add_argument("--sweep", action="store_true",
                    help="session 6: per-batch expert tiles, router slices, attention blocks (sweep_main)")
    ap.add_argument("--classes", default="scan32,scan16,compact,big,few", help="--sweep: tile classes (CLASSES)")
    ap.add_argument("--engine-cases", default="8x4,32x4,8x2,32x2,1x4,1x2,256x4,64x4,128x4",
                    help="--sweep: E32 engine cases, the shipped tables vs the picks")
    ap.add_argument("--engine-cases16", default="8x4,32x4,8x2,32x2,256x4", help="--sweep: the same at E16")
    ap.add_argument("--budget-s", type=float, default=270, help="--sweep: sections stop once this is spent")
    ap.add_argument("--tiles-only", action="store_true",
                    help="--sweep: only the tile classes and the engine (no profiles, router or attention sweeps)")
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
    if args.sweep:
        return sweep_main(args, model, bandwidth)
    if args.compare:
        gk.PDL_MAX_TOKENS = SHIPPED["PDL_MAX_TOKENS"] = PDL_MAX_SHIPPED  # as shipped
        if args.weights == "mxfp4":  # the experts quantized on the device, as bench does for weights = "mxfp4"
            from bench.models import mxfp4

            mxfp4.quantize_model(model)
        return compare_main(args, model, bandwidth)
    if args.pruned:
        gk.PDL_MAX_TOKENS = 1  # as shipped
        return pruned_main(args, model, bandwidth)
    if args.prefetch or args.early:
        gk.PDL_MAX_TOKENS = 1  # as shipped
        return (early_main if args.early else prefetch_main)(args, model, bandwidth)
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
