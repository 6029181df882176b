"""GPU measurement of MXFP4 on synthetic gpt-oss-20b (issue 9), one call: the Triton MXFP4 expert kernels against
the torch reference at the real shapes, a sweep of their inner loops and tiles, the graph engine before/after side
by side with bf16, and the teacher-forced accuracy check with a paired statistic.

    PYTHONUNBUFFERED=1 python scripts/gpu_mxfp4.py [--out DIR] [--budget-s 300] [--accuracy-batch 32]
        [--skip-probe] [--skip-engine] [--skip-bf16] [--skip-accuracy] [--sweep-dq] [--engine-cases 1x4,32x4]
        [--engine-pdl 0,1,2] [--dq-sweep [--dq-sweep-s 100]] [--dqa] [--perf "ARGS for bench perf"]

1. load: the seeded bf16 model; bf16 graph engine at batch 1 and 32 (E32, top_k 4), the side-by-side reference
   (not with --skip-bf16); then the experts are quantized in place (what `weights = "mxfp4"` builds).
2. probe: `moe_mxfp4` against dequantize + torch loop (bf16) for T = 1, 4, 32 (decode) and 300 (prefill, sorted)
   in every inner loop that applies (gemv2, gemv4, scaled, dq); the read floor at T = 1 and 32; then one layer is
   timed with plain launches: gemv4 at main's tiles, gemv4 with its tiles swept per GEMM, dq at T = 1 (with
   --sweep-dq also scaled vs dq at T = 32, dq's tiles swept), then gemv4's picks under each MXFP4_PDL mode; the
   fastest T = 1 loop whose check passed (relative error < 2%) and its tiles become the module's tables (and
   tiles.json, the MOE_MXFP4_TILES of later runs).
2b. --dq-sweep (round 6a, docs/MXFP4.md): the dq loop per batch class, one E32 top-4 layer at 32, 4, 64, 8 tokens
   (scan mode) and 128, 256 (sorted mode, against tl.dot_scaled): main's dq, its variants (DQ_VARIANT, DQ_BMQ),
   then each GEMM's tiles; the winners become the per-class table (MXFP4_CONFIG_DQ_T) of "after" and tiles.json.
2c. --dqa (round 7): the Gluon loop "dqa" against main's dq, one layer at 32 tokens per DQA_CONFIGS entry, the
   fastest at 16, 64, 8 tokens; engine E32 batch 32 (64) and E16 batch 32 before/after; accuracy; then stops.
3. engine: mxfp4 graph engine "before" (main's loops and tiles: gemv4 under PDL mode 2 at batch 1, dq
   elsewhere) and "after" (the picks; at batch 1 once per --engine-pdl mode, the fastest at 1x4 kept), one after
   the other in the same process, the --engine-cases (batch x top_k); prompt 256, 33 new tokens (32 timed steps),
   best of 2; roofline % against the MXFP4 ceiling (every tensor at its own width, U counted). Each case runs
   only while more than 60 s (120 with the accuracy check) of --budget-s are left.
4. accuracy (docs/METHOD.md "teacher-forced agreement"): greedy tokens from the graph engine on the MXFP4 model
   (--accuracy-batch sequences, prompt 256, 96 steps), then the same sequences through HF on the dequantized
   weights in bf16 and in float32; agreement of each with the float32 argmax and a paired test of the difference
   (scripts/gpu_perf_graph.paired_agreement: token-level McNemar and sequence-level standard error).
--perf runs `bench perf` in this process afterwards (with the tuned tiles).
Every record is appended to DIR/mxfp4.jsonl as it is made; mxfp4_check.json holds the probe and the picks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_perf_graph import graph_tokens, hf_argmax, paired_agreement
from jsonl_log import JsonlLog

from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph import mxfp4_kernels as mk
from bench.models import mxfp4
from bench.models.loading import load_model, set_experts_implementation
from bench.models.pruning import set_top_k

MODEL = "synthetic:gpt-oss-20b"
PROMPT = 256
NEW = 33
T0 = time.time()
CANDIDATES = {
    "gemv": [(16, 256, 4, 3), (8, 256, 4, 3), (16, 512, 4, 3), (16, 256, 2, 3), (8, 512, 4, 2), (16, 128, 4, 3)],
    "gemv4": [(32, 512, 2, 1), (16, 512, 2, 1), (64, 512, 4, 1), (32, 512, 4, 1), (16, 1024, 4, 1),
              (32, 1024, 4, 1), (8, 1024, 2, 1), (16, 1024, 2, 1), (32, 1024, 8, 1), (32, 256, 2, 1)],
    "dq1": [(64, 128, 4, 3), (64, 128, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4), (128, 128, 4, 3), (128, 64, 4, 3),
            (64, 256, 4, 3), (128, 128, 8, 3)],
    "dq": [(128, 128, 4, 3), (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3), (128, 256, 8, 3), (64, 64, 4, 4)],
    "few": [(64, 256, 4, 3), (32, 256, 4, 3), (64, 512, 4, 2)],
    "full": [(64, 256, 4, 3), (32, 256, 4, 3), (64, 512, 4, 2), (64, 256, 8, 3), (128, 256, 4, 3)],
}
# main's kernel before round 6a (commits 04f45f0 to 97dd2b5): gemv4 at batch 1 under PDL mode 2 (main's batch-1
# path today), the dq loop for the other decode launches with these tiles (round 6a's per-class dq is "after")
BEFORE = {"gemv_max_tokens": 1, "gemv_impl": "gemv4", "mma_impl": "dq", "pdl": 2,
          "gemv4": {"gate_up": (32, 512, 2, 1), "down": (32, 1024, 4, 1)},
          "gemv": {"gate_up": (16, 512, 4, 3), "down": (16, 512, 4, 3)},
          "few": {"gate_up": (64, 256, 4, 3), "down": (64, 256, 4, 3)},
          "full": {"gate_up": (64, 256, 4, 3), "down": (64, 256, 4, 3)},
          "dq1": {"gate_up": (64, 64, 4, 3), "down": (64, 128, 4, 3)},
          "dq": {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 4)},
          "dq_variant": 0, "dq_bmq": 0, "dq_t": {}, "dq_sorted_max_tokens": 0}
# --dq-sweep (round 6a): the dq loop per batch class. Variants (DQ_VARIANT, DQ_BMQ) at main's tiles, then each
# GEMM's tiles (BN, BK, warps, stages) for the best variant; 128 / 256 tokens (sorted mode): scaled vs dq
DQ_CLASSES = (32, 4, 64, 8)  # the order they are swept in (the engine's cases first)
DQ_SORTED_CLASSES = (128, 256)
# (variant, bmq); call 1 of round 6a ran variants 1-3 with bit 2 (unmasked loads) always on where the tiles divide
DQ_VARIANTS = {4: [(1, 0), (3, 0), (7, 0)], 8: [(3, 0), (7, 0)], 32: [(2, 0), (3, 0), (6, 0), (7, 0)],
               64: [(7, 16), (3, 16)], 128: [(7, 0)], 256: [(7, 0)]}
DQ_TILES = {
    "gate_up": [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 4, 1), (64, 64, 4, 3), (128, 128, 4, 3),
                (128, 128, 8, 3), (256, 64, 8, 3), (128, 64, 8, 3)],
    "down": [(64, 64, 4, 4), (64, 64, 4, 3), (64, 64, 4, 1), (128, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3),
             (64, 32, 4, 4)],
}
DQ_SORTED_TILES = {"gate_up": [(64, 64, 4, 3), (64, 128, 4, 3)], "down": [(64, 64, 4, 3), (64, 128, 4, 3)]}
# round 7 (--dqa): the Gluon loop's tiles (gate_up, down: BN, BK, 4 warps, weight unit 2 = 32-bit words / 1 = 16-bit
# halves), register cap and ring (0 = loads into registers two steps ahead, >= 2 = cp.async ring slots, the scales
# through it unless dqa_ring_scales is off), timed at 32 tokens; the fastest whose error is < 2% is then timed at
# DQA_TOKENS' other counts against main's dq. Round 7's call 1 ran the entries without a ring: all slower than main
# at 32 tokens. DQA_ONLY (a comma list of labels) picks entries
W64, H64, W64D = (128, 64, 4, 2), (128, 64, 4, 1), (64, 64, 4, 2)
DQA_CONFIGS = [  # (label, tables keys over "dqa" (gate_up, down) = (128, 64) words, no cap, no ring)
    ("dqa-128x64", {}),
    ("dqa-128x64-h16", {"dqa": {"gate_up": H64, "down": H64}}),
    ("dqa-128x64-d64", {"dqa": {"gate_up": W64, "down": W64D}}),
    ("dqa-64x64", {"dqa": {"gate_up": W64D, "down": W64D}}),
    ("dqa-64x128", {"dqa": {"gate_up": (64, 128, 4, 2), "down": (64, 128, 4, 2)}}),
    ("dqa-128x128", {"dqa": {"gate_up": (128, 128, 4, 2), "down": (128, 128, 4, 2)}}),
    ("dqa-ring3", {"dqa_ring": 3}),
    ("dqa-ring4", {"dqa_ring": 4}),
    ("dqa-ring3-lds", {"dqa_ring": 3, "dqa_ring_scales": False}),
    ("dqa-ring3-h16", {"dqa_ring": 3, "dqa": {"gate_up": H64, "down": H64}}),
    ("dqa-ring3-d64", {"dqa_ring": 3, "dqa": {"gate_up": W64, "down": W64D}}),
    ("dqa-ring3-r128", {"dqa_ring": 3, "dqa_maxnreg": 128}),
]
DQA_TOKENS = (32, 16, 64, 8)
TABLES = {"gemv": "MXFP4_CONFIG_GEMV", "gemv4": "MXFP4_CONFIG_GEMV4", "few": "MXFP4_CONFIG_FEW",
          "full": "MXFP4_CONFIG", "dq1": "MXFP4_CONFIG_DQ1", "dq": "MXFP4_CONFIG_DQ"}


LOG = JsonlLog(None, T0)  # main() points it at $OUT/mxfp4.jsonl
emit = LOG.emit


def _ref_moe(x, ex, topi, topw):
    """Dequantize + the bf16 per-expert loop (what the graph engine's torch path computes)."""
    k = topi.shape[1]
    out = torch.zeros((x.shape[0] * k, x.shape[1]), dtype=x.dtype, device=x.device)
    flat = topi.reshape(-1).long()
    for e in torch.unique(flat).tolist():
        pairs = torch.nonzero(flat == e).squeeze(1)
        gu, dn = ex.expert_weights(e, x.dtype)
        h = ex._apply_gate(x[pairs // k] @ gu + ex.gate_up_proj_bias[e])
        y = h @ dn + ex.down_proj_bias[e]
        out[pairs] = (y * topw.reshape(-1)[pairs, None]).to(x.dtype)
    return out


def _routing(tokens: int, experts: int, k: int, gen: torch.Generator):
    v, i = torch.topk(torch.randn(tokens, experts, generator=gen, device="cuda"), k, dim=-1)
    return i.to(torch.int32), torch.softmax(v, dim=-1).to(torch.bfloat16)


def _call(x, ex, topi, topw, cnt=None, impl=None, fold=False):
    return mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                        ex.down_proj_scales, ex.down_proj_bias, topi, topw, ex.alpha, ex.limit, cnt, impl=impl,
                        fold=fold)


def random_experts(experts: int, hidden: int, inter: int, gen: torch.Generator,
                   gate_up_scales: tuple[int, int] = (118, 124),
                   down_scales: tuple[int, int] = (118, 124)) -> mxfp4.Mxfp4Experts:
    """MXFP4 experts on the GPU with random blocks (every byte value), scales drawn from [lo, hi) per GEMM and small
    random biases (no model)."""
    ex = mxfp4.Mxfp4Experts(experts, hidden, inter, 1.702, 7.0, device="cuda")
    for name in ("gate_up_proj_blocks", "down_proj_blocks"):
        buf = getattr(ex, name)
        buf.copy_(torch.randint(0, 256, buf.shape, generator=gen, device="cuda", dtype=torch.int32).to(torch.uint8))
    for name, (lo, hi) in (("gate_up_proj_scales", gate_up_scales), ("down_proj_scales", down_scales)):
        buf = getattr(ex, name)
        buf.copy_(torch.randint(lo, hi, buf.shape, generator=gen, device="cuda", dtype=torch.int32).to(torch.uint8))
    ex.gate_up_proj_bias.normal_(0, 0.1, generator=gen)
    ex.down_proj_bias.normal_(0, 0.1, generator=gen)
    return ex


def decode_check() -> None:
    """The dq loop's decode on every byte value and on scales past 128 (where FOLD does not apply), against the
    torch reference, at small shapes (the real-shape check below covers the tiles)."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    ex = random_experts(4, 256, 128, gen, gate_up_scales=(112, 140), down_scales=(100, 130))
    for tokens in (1, 5, 40, 80):
        x = (torch.randn(tokens, 256, generator=gen, device="cuda") * 1e-3).to(torch.bfloat16)
        topi, topw = _routing(tokens, 4, 2, gen)
        want = _ref_moe(x, ex, topi, topw).float()
        for impl in ("dq", "scaled"):
            got = _call(x, ex, topi, topw, impl=impl).float()
            rel = ((got - want).norm() / want.norm()).item()
            emit({"sec": "decode_check", "tokens": tokens, "impl": impl, "rel_l2_err": round(rel, 6),
                  "nan": bool(got.isnan().any())})


@triton.jit
def _read_kernel(w_ptr, e_ptr, out_ptr, N, KW, stride_e, BN: tl.constexpr, BW: tl.constexpr):
    """Reads rows [BN, KW] int32 of the routed experts (program_id(0) -> e_ptr) BW words a step; stores an xor."""
    e = tl.load(e_ptr + tl.program_id(0)).to(tl.int64)
    rows = tl.program_id(1) * BN + tl.arange(0, BN)
    base = w_ptr + e * stride_e + tl.multiple_of(rows.to(tl.int64) * KW, 4)
    acc = tl.zeros([BN, BW], dtype=tl.int32)
    for k0 in range(0, KW, BW):
        cols = tl.max_contiguous(tl.multiple_of(k0 + tl.arange(0, BW), 4), 4)
        acc ^= tl.load(base[:, None] + cols[None, :], mask=(rows < N)[:, None] & (cols < KW)[None, :], other=0)
    tl.store(out_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(acc, 1), 0))


def read_floor(ex, topi) -> None:
    """How fast a kernel with the expert loop's grid and tiles can only *read* the routed experts' blocks (int32
    words, 16 bytes a thread vector, no decode, no math but an xor): the floor of this launch structure, to set
    beside gemv2 / dq at the same tokens (an estimate of what the decode costs, not a counter reading)."""
    experts = topi.reshape(-1).unique().to(torch.int32)
    gu = ex.gate_up_proj_blocks.view(torch.int32)
    dn = ex.down_proj_blocks.view(torch.int32)
    nbytes = (gu[0].numel() + dn[0].numel()) * 4 * experts.numel()
    out = torch.empty(4096 * 64, dtype=torch.int32, device="cuda")
    for bn, bw, warps, stages in ((16, 128, 4, 3), (64, 64, 4, 3), (64, 128, 4, 4), (32, 128, 4, 3), (16, 64, 4, 4)):
        def run(bn=bn, bw=bw, warps=warps, stages=stages):
            for w in (gu, dn):
                n, kw = w.shape[1], w.shape[2] * w.shape[3]
                _read_kernel[(experts.numel(), triton.cdiv(n, bn))](w, experts, out, n, kw, w.stride(0), BN=bn, BW=bw,
                                                             num_warps=warps, num_stages=stages)
        us = _time(run)
        emit({"sec": "read_floor", "tokens": int(topi.shape[0]), "tile": (bn, bw * 8, warps, stages),
              "us_per_layer": round(us, 2), "bytes": nbytes, "gb_s": round(nbytes / us / 1e3, 1)})


def _time(fn) -> float:
    """Median µs of fn replayed in a CUDA graph (launch overhead excluded, as in the engine)."""
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")) * 1000


def set_tables(cfg: dict) -> None:
    mk.GEMV_MAX_TOKENS = int(cfg["gemv_max_tokens"])
    mk.MMA_IMPL = cfg["mma_impl"]
    mk.GEMV_IMPL = cfg.get("gemv_impl", "gemv")
    mk.MXFP4_PDL = int(cfg.get("pdl", 0))
    for key, attr in TABLES.items():
        getattr(mk, attr).update({g: tuple(v) for g, v in cfg.get(key, {}).items()})
    # round 6a's dq knobs: absent keys (an older tiles.json) mean main's path before this round
    mk.DQ_VARIANT = int(cfg.get("dq_variant", 0))
    mk.DQ_BMQ = int(cfg.get("dq_bmq", 0))
    mk.DQ_SORTED_MAX_TOKENS = int(cfg.get("dq_sorted_max_tokens", 0))
    mk.MXFP4_CONFIG_DQ_T.clear()
    mk.MXFP4_CONFIG_DQ_T.update({int(t): {g: tuple(v) if isinstance(v, list | tuple) else int(v) for g, v in c.items()}
                                 for t, c in cfg.get("dq_t", {}).items()})
    # round 7's Gluon loop: absent keys mean off (main before this round)
    mk.DQA_MAX_TOKENS = int(cfg.get("dqa_max_tokens", 0))
    mk.DQA_MIN_TOKENS = int(cfg.get("dqa_min_tokens", 9))
    mk.DQA_MAXNREG = int(cfg.get("dqa_maxnreg", 0))
    mk.DQA_RING = int(cfg.get("dqa_ring", 0))
    mk.DQA_RING_SCALES = bool(cfg.get("dqa_ring_scales", True))
    mk.MXFP4_CONFIG_DQA.update({g: tuple(v) for g, v in cfg.get("dqa", {}).items()})


def current_tables() -> dict:
    return {"gemv_max_tokens": mk.GEMV_MAX_TOKENS, "mma_impl": mk.MMA_IMPL, "gemv_impl": mk.GEMV_IMPL,
            "pdl": mk.MXFP4_PDL,
            **{key: dict(getattr(mk, attr)) for key, attr in TABLES.items()},
            "dq_variant": mk.DQ_VARIANT, "dq_bmq": mk.DQ_BMQ, "dq_sorted_max_tokens": mk.DQ_SORTED_MAX_TOKENS,
            "dq_t": {t: dict(c) for t, c in mk.MXFP4_CONFIG_DQ_T.items()},
            "dqa_max_tokens": mk.DQA_MAX_TOKENS, "dqa_min_tokens": mk.DQA_MIN_TOKENS, "dqa_maxnreg": mk.DQA_MAXNREG,
            "dqa_ring": mk.DQA_RING, "dqa_ring_scales": mk.DQA_RING_SCALES,
            "dqa": dict(mk.MXFP4_CONFIG_DQA)}


def dq_sweep(model, left) -> dict:
    """Round 6a: one E32 top-4 layer per batch class (CUDA-graph medians, plain launches, the engine's own pick of
    the loop: impl None, fold on). Per class: main's dq (variant 0, main's tiles), then the variants of DQ_VARIANTS
    at main's tiles, then each GEMM's tiles for the best variant (gate_up first, then down). Sorted classes: scaled
    (main) against dq. Returns the picks as tables keys (dq_variant, dq_bmq, dq_t, dq_sorted_max_tokens); every
    timing is emitted as it is made, and the picked configuration's error against the torch reference."""
    ex = model.model.layers[0].mlp.experts
    gen = torch.Generator(device="cuda").manual_seed(5)
    per_expert = sum(getattr(ex, n)[0].numel() for n in ("gate_up_proj_blocks", "gate_up_proj_scales",
                                                          "down_proj_blocks", "down_proj_scales"))
    base = {**current_tables(), "dq_variant": 0, "dq_bmq": 0, "dq_t": {}, "dq_sorted_max_tokens": 0}
    main_tiles = dict(base["dq"])
    picks: dict = {"dq_t": {}, "wins": {}}
    pdl_saved = mk.MXFP4_PDL

    def run(x, topi, topw):
        return mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                            ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, topi, topw, ex.alpha,
                            ex.limit, None, fold=True)

    def timed(tokens, inp, cfg, label):
        set_tables(cfg)
        mk.MXFP4_PDL = 0
        try:
            us = _time(lambda: run(*inp))
        except Exception as exc:  # a tile that does not compile (shared memory, registers) is skipped
            emit({"sec": "dq_sweep", "tokens": tokens, "label": label, "error": repr(exc)[:300]})
            return float("inf")
        nbytes = per_expert * int(inp[1].unique().numel())
        cls = cfg.get("dq_t", {}).get(tokens, cfg.get("dq"))
        emit({"sec": "dq_sweep", "tokens": tokens, "label": label, "cls": cls,
              "sorted_dq": cfg.get("dq_sorted_max_tokens", 0) >= tokens, "us_per_layer": round(us, 2),
              "gb_s": round(nbytes / us / 1e3, 1)})
        return us

    for tokens in DQ_CLASSES + DQ_SORTED_CLASSES:
        if left() < 8:
            emit({"sec": "dq_sweep", "tokens": tokens, "skipped": "budget"})
            continue
        sorted_mode = tokens in DQ_SORTED_CLASSES
        x = torch.randn(tokens, ex.hidden_size, generator=gen, device="cuda").to(torch.bfloat16)
        inp = (x, *_routing(tokens, ex.num_experts, 4, gen))
        t_main = timed(tokens, inp, base, "main")  # scaled in sorted mode, dq (variant 0) otherwise
        best = (t_main, None)
        tiles0 = {g: DQ_SORTED_TILES[g][0] for g in ("gate_up", "down")} if sorted_mode else main_tiles
        for v, bmq in DQ_VARIANTS[tokens]:
            cfg = {**base, "dq_t": {tokens: {**tiles0, "variant": v, "bmq": bmq}},
                   "dq_sorted_max_tokens": tokens if sorted_mode else 0}
            us = timed(tokens, inp, cfg, f"v{v}-bmq{bmq}")
            if best[1] is None or us < best[0]:  # the first variant is taken even when slower than main
                best = (us, cfg)
        if best[1] is None:
            continue
        cfg = best[1]
        cands = DQ_SORTED_TILES if sorted_mode else DQ_TILES
        for gemm in ("gate_up", "down"):
            for tile in cands[gemm]:
                if tile == cfg["dq_t"][tokens][gemm] or left() < 2:
                    continue
                trial = {**cfg, "dq_t": {tokens: {**cfg["dq_t"][tokens], gemm: tile}}}
                us = timed(tokens, inp, trial, f"{gemm}-{tile}")
                if us < best[0]:
                    best, cfg = (us, trial), trial
        win = best[0] < t_main
        picks["wins"][tokens] = {"main_us": round(t_main, 2), "best_us": round(best[0], 2), "dq_wins": win,
                                 "cls": cfg["dq_t"][tokens], "speedup": round(t_main / best[0], 3)}
        # a class where main's path stays faster keeps it explicitly (variant 0, main's tiles; scaled if sorted)
        picks["dq_t"][tokens] = cfg["dq_t"][tokens] if win else {**main_tiles, "variant": 0, "bmq": 0}
        if win:
            set_tables(cfg)
            want = _ref_moe(x, ex, inp[1], inp[2]).float()
            got = run(*inp).float()
            picks["wins"][tokens]["rel_l2_err"] = round(((got - want).norm() / want.norm()).item(), 5)
        emit({"sec": "dq_pick", "tokens": tokens, **picks["wins"][tokens]})
    wins = picks["wins"]
    variants = [w["cls"]["variant"] for t, w in wins.items() if t in DQ_CLASSES and w["dq_wins"]]
    sorted_max = 0  # dq in sorted decode up to the largest class below which every sorted class won
    for t in DQ_SORTED_CLASSES:
        if not wins.get(t, {}).get("dq_wins"):
            break
        sorted_max = t
    out = {"dq_variant": max(set(variants), key=variants.count) if variants else 0, "dq_bmq": 0,
           "dq_t": {t: c for t, c in picks["dq_t"].items() if t in DQ_CLASSES or t <= sorted_max},
           "dq_sorted_max_tokens": sorted_max}
    set_tables(base)
    mk.MXFP4_PDL = pdl_saved
    emit({"sec": "dq_picks", **out, "wins": wins})
    return out


def dq_recheck(model, classes: list[int]) -> dict:
    """Each listed class's committed tiles under each DQ_VARIANT (0-7) and main's path (variant 0, main's tiles), one
    E32 top-4 layer; a variant more than 1% faster than the class's own replaces it; then a register cap (maxnreg
    128, 96) is kept where it is more than 1% faster. Returns the dq_t table."""
    ex = model.model.layers[0].mlp.experts
    gen = torch.Generator(device="cuda").manual_seed(6)
    cur = current_tables()
    table = {int(t): dict(c) for t, c in cur["dq_t"].items()}
    pdl_saved = mk.MXFP4_PDL
    for tokens in classes:
        cls_key = min((t for t in table if t >= tokens), default=None)
        if cls_key is None:
            continue
        x = torch.randn(tokens, ex.hidden_size, generator=gen, device="cuda").to(torch.bfloat16)
        topi, topw = _routing(tokens, ex.num_experts, 4, gen)
        times = {}
        for v in ("main", 0, 1, 2, 3, 4, 5, 6, 7):
            if v == "main":
                cfg = {**cur, "dq_variant": 0, "dq_bmq": 0, "dq_t": {}, "dq_sorted_max_tokens": 0}
            else:
                cfg = {**cur, "dq_t": {**table, cls_key: {**table[cls_key], "variant": v}}}
            set_tables(cfg)
            mk.MXFP4_PDL = 0
            times[v] = _time(lambda x=x, topi=topi, topw=topw: mk.moe_mxfp4(
                x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                ex.down_proj_scales, ex.down_proj_bias, topi, topw, ex.alpha, ex.limit, None, fold=True))
        own = table[cls_key].get("variant", mk.DQ_VARIANT)
        best = min((v for v in times if v != "main"), key=times.get)
        if times[best] < 0.99 * times[own]:
            table[cls_key]["variant"] = best
        t_var = min(times[best], times[own])
        for cap in (128, 96):  # a register cap for more programs an SM, with the kept variant
            set_tables({**cur, "dq_t": {**table, cls_key: {**table[cls_key], "maxnreg": cap}}})
            mk.MXFP4_PDL = 0
            times[f"maxnreg{cap}"] = us = _time(lambda x=x, topi=topi, topw=topw: mk.moe_mxfp4(
                x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                ex.down_proj_scales, ex.down_proj_bias, topi, topw, ex.alpha, ex.limit, None, fold=True))
            if us < 0.99 * t_var:
                table[cls_key]["maxnreg"], t_var = cap, us
        emit({"sec": "dq_recheck", "tokens": tokens, "class": cls_key, "own": own, "kept": table[cls_key],
              "us": {str(k): round(t, 2) for k, t in times.items()}})
    set_tables(cur)
    mk.MXFP4_PDL = pdl_saved
    return table


def dqa_ab(model, bandwidth: float, left, accuracy_batch: int, skip_accuracy: bool) -> dict:
    """Round 7: the Gluon loop "dqa" (mxfp4_dq_ws.py) against main's dq loop, same process. One E32 top-4 layer
    (CUDA-graph medians, the engine's fold) at 32 tokens for main's tables and each DQA_CONFIGS entry (with its error
    against the torch reference), then main vs the fastest entry at 16, 64 and 8 tokens; dqa is kept for the classes
    where it is faster (9-32 tokens, and 33-64 if it wins at 64 too; 8 tokens only reported). Then the engine before
    (main's tables) / after (the picks) at E32 batch 32 (and 64 where kept), E16 batch 32 on a pruned copy, and the
    teacher-forced accuracy at `accuracy_batch` with the picks. Returns the picks as tables keys."""
    import copy

    from bench.models.pruning import prune_model
    from bench.roofline import ArchSummary

    ex = model.model.layers[0].mlp.experts
    gen = torch.Generator(device="cuda").manual_seed(7)
    per_expert = sum(getattr(ex, n)[0].numel() for n in ("gate_up_proj_blocks", "gate_up_proj_scales",
                                                          "down_proj_blocks", "down_proj_scales"))
    fold = max(int(ex.gate_up_proj_scales.max()), int(ex.down_proj_scales.max())) <= 128
    main_cfg = current_tables()
    pdl_saved = mk.MXFP4_PDL

    def run(x, topi, topw):
        return mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                            ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, topi, topw, ex.alpha,
                            ex.limit, None, fold=fold)

    def dqa_cfg(extra, lo=1):
        return {**main_cfg, "dqa_max_tokens": 64, "dqa_min_tokens": lo, "dqa_maxnreg": 0, "dqa_ring": 0,
                "dqa_ring_scales": True, "dqa": {"gate_up": W64, "down": W64}, **extra}

    def timed(tokens, inp, cfg, label, check=False):
        set_tables(cfg)
        mk.MXFP4_PDL = 0
        rec = {"sec": "dqa_layer", "tokens": tokens, "label": label}
        try:
            us = _time(lambda: run(*inp))
            if check:
                want = _ref_moe(inp[0], ex, inp[1], inp[2]).float()
                got = run(*inp).float()
                rec["rel_l2_err"] = round(((got - want).norm() / want.norm()).item(), 5)
        except Exception as exc:
            emit({**rec, "error": repr(exc)[:400], "tb": traceback.format_exc()[-1200:]})
            return float("inf")
        nbytes = per_expert * int(inp[1].unique().numel())
        emit({**rec, "us_per_layer": round(us, 2), "gb_s": round(nbytes / us / 1e3, 1)})
        return us if rec.get("rel_l2_err", 0.0) < 0.02 else float("inf")  # a wrong result never wins

    inputs = {}
    for tokens in DQA_TOKENS:
        x = torch.randn(tokens, ex.hidden_size, generator=gen, device="cuda").to(torch.bfloat16)
        inputs[tokens] = (x, *_routing(tokens, ex.num_experts, 4, gen))
    times: dict = {}
    t_main = timed(32, inputs[32], main_cfg, "main", check=True)
    best = (float("inf"), None)
    only = [s for s in os.environ.get("DQA_ONLY", "").split(",") if s]
    for label, extra in DQA_CONFIGS:
        if left() < 100:
            break
        if only and label not in only:
            continue
        us = timed(32, inputs[32], dqa_cfg(extra), label, check=True)
        times[label] = us
        if us < best[0]:
            best = (us, (label, extra))
    wins = {32: {"main_us": round(t_main, 2), "dqa_us": round(best[0], 2), "cfg": best[1]}}
    if best[1] is None:
        set_tables(main_cfg)
        return {}
    label, extra = best[1]
    for tokens in (16, 64, 8):
        if left() < 80:
            break
        tm = timed(tokens, inputs[tokens], main_cfg, "main")
        td = timed(tokens, inputs[tokens], dqa_cfg(extra), label, check=True)
        wins[tokens] = {"main_us": round(tm, 2), "dqa_us": round(td, 2)}
    win = {t: w["dqa_us"] < 0.99 * w["main_us"] for t, w in wins.items()}
    picks = {k: v for k, v in dqa_cfg(extra).items() if k.startswith("dqa")}
    picks.update({"dqa_max_tokens": 0, "dqa_min_tokens": 9})
    if win[32]:
        picks["dqa_max_tokens"] = 64 if win.get(64) else 32
        picks["dqa_min_tokens"] = 9 if win.get(16, True) else 17
    emit({"sec": "dqa_pick", **picks, "wins": wins, "win": win})
    after = {**main_cfg, **picks}
    mk.MXFP4_PDL = pdl_saved
    arch = ArchSummary.from_model(model)
    cases = [32] + ([64] if picks["dqa_max_tokens"] >= 64 else [])
    for b in cases if picks["dqa_max_tokens"] else []:
        for lbl, cfg in (("main", main_cfg), ("dqa", after)):
            if left() < 45:
                break
            set_tables(cfg)
            emit(time_case(model, b, 4, arch, bandwidth, lbl, "mxfp4", splitk=True))
    if picks["dqa_max_tokens"] and left() > 55:  # E16 batch 32 on a pruned copy (the accuracy needs the full model)
        m16 = copy.deepcopy(model)
        prune_model(m16, [list(range(16))] * len(m16.model.layers))
        arch16 = ArchSummary.from_model(m16)
        for lbl, cfg in (("main", main_cfg), ("dqa", after)):
            set_tables(cfg)
            emit(time_case(m16, 32, 4, arch16, bandwidth, lbl, "mxfp4", splitk=True))
        del m16
        torch.cuda.empty_cache()
    set_tables(after)
    if picks["dqa_max_tokens"] and not skip_accuracy and left() > 15:
        try:
            emit(accuracy(model, batch=accuracy_batch))
        except Exception as exc:
            emit({"sec": "accuracy", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
    return picks


def probe(model, sweep_dq: bool = True, sweep_gemv4: bool = True) -> dict:
    ex = model.model.layers[0].mlp.experts
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = ex.hidden_size
    per_expert = sum(getattr(ex, n)[0].numel() for n in ("gate_up_proj_blocks", "gate_up_proj_scales",
                                                          "down_proj_blocks", "down_proj_scales"))
    inputs = {}
    wrong = set()  # loops whose check failed at one token: never picked
    for tokens in (1, 4, 32, 300):
        x = torch.randn(tokens, hidden, generator=gen, device="cuda").to(torch.bfloat16)
        topi, topw = _routing(tokens, ex.num_experts, 4, gen)
        inputs[tokens] = (x, topi, topw)
        want = _ref_moe(x, ex, topi, topw).float()
        for impl in (("gemv2", "gemv4", "scaled", "dq", "dqf") if tokens <= 4 else ("scaled", "dq", "dqf")):
            try:
                cnt = torch.zeros((), dtype=torch.int32, device="cuda")
                got = _call(x, ex, topi, topw, cnt, impl=impl).float()
                rel = ((got - want).norm() / want.norm()).item()
                emit({"sec": "check", "tokens": tokens, "impl": impl, "rel_l2_err": round(rel, 5),
                      "count": int(cnt), "distinct": int(topi.unique().numel())})
                if not rel < 0.02:  # every loop lands near 0.5% (bf16 outputs); NaN fails too
                    wrong.add(impl)
            except Exception as exc:
                wrong.add(impl)
                emit({"sec": "check", "tokens": tokens, "impl": impl, "error": repr(exc)[:400],
                      "tb": traceback.format_exc()[-1200:]})
    for tokens in (1, 32):
        try:
            read_floor(ex, inputs[tokens][1])
        except Exception as exc:
            emit({"sec": "read_floor", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1200:]})
    # timing: every (loop, tiles) candidate per GEMM, the other GEMM at the loop's current tile
    results: dict[tuple[int, str], tuple[float, tuple]] = {}
    # (tokens, loop, table, sweep the table's candidates): main's loops at main's tiles, then the dq loop's tiles
    plan = [(1, "gemv4", "gemv4", False), (1, "gemv4", "gemv4", sweep_gemv4), (1, "dqf", "dq1", False)]
    pdl_saved = mk.MXFP4_PDL
    mk.MXFP4_PDL = 0  # the tiles are swept with plain launches (main's); the PDL modes are timed after
    if sweep_dq:
        plan += [(32, "scaled", "full", False), (32, "dqf", "dq", True), (4, "scaled", "few", False)]
    for tokens, impl, mode, sweep in plan:
        x, topi, topw = inputs[tokens]
        nbytes = per_expert * int(topi.unique().numel())
        table = getattr(mk, TABLES[mode])
        saved = dict(table)
        best = {}
        for gemm in ("gate_up", "down") if sweep else ():
            timings = []
            for cand in CANDIDATES[mode]:
                table[gemm] = cand
                try:
                    us = _time(lambda x=x, topi=topi, topw=topw, impl=impl: _call(x, ex, topi, topw, impl=impl))
                    timings.append((us, cand))
                except Exception as exc:  # a tile that does not compile (shared memory) is skipped
                    emit({"sec": "tile", "tokens": tokens, "impl": impl, "gemm": gemm, "cand": cand,
                          "error": repr(exc)[:200]})
            table[gemm] = saved[gemm]
            if timings:
                us, cand = min(timings)
                table[gemm] = best[gemm] = cand
                emit({"sec": "tile", "tokens": tokens, "impl": impl, "gemm": gemm,
                      "timings_us": [(round(t, 1), c) for t, c in sorted(timings)]})
        try:
            us = _time(lambda x=x, topi=topi, topw=topw, impl=impl: _call(x, ex, topi, topw, impl=impl))
        except Exception:
            us = float("inf")
        results[(tokens, impl)] = (us, best)
        emit({"sec": "layer", "tokens": tokens, "impl": impl, "tiles": dict(table), "us_per_layer": round(us, 2),
              "bytes": nbytes, "gb_s": round(nbytes / us / 1e3, 1), "pdl": mk.MXFP4_PDL, "swept": sweep})
        if sweep and tokens == 1 and impl == "gemv4":  # the picked tiles under each PDL mode (graph replay)
            for mode in (0, 1, 2):
                mk.MXFP4_PDL = mode
                us = _time(lambda x=x, topi=topi, topw=topw, impl=impl: _call(x, ex, topi, topw, impl=impl))
                emit({"sec": "layer_pdl", "tokens": 1, "impl": impl, "pdl": mode, "us_per_layer": round(us, 2),
                      "gb_s": round(nbytes / us / 1e3, 1)})
            mk.MXFP4_PDL = 0
        table.clear()
        table.update(saved)
    mk.MXFP4_PDL = pdl_saved
    # picks: gemv2 vs dq at 1 token; scaled vs dq at 32 (dq runs folded on this model: every scale <= 128)
    pick = current_tables()
    t1 = {i: results[(1, i)][0] for i in ("gemv2", "gemv4", "dqf") if (1, i) in results and i not in wrong}
    t32 = {i: results[(32, i)][0] for i in ("scaled", "dqf") if (32, i) in results}
    tile_key = {"dqf": "dq1", "gemv4": "gemv4"}
    if t1:
        best1 = min(t1, key=t1.get)
        pick["gemv_impl"] = {"dqf": "dq"}.get(best1, best1)
        if best1 in tile_key:
            pick[tile_key[best1]] = {**pick[tile_key[best1]], **results[(1, best1)][1]}
    t4 = {i: results[(4, i)][0] for i in ("gemv4", "dqf") if (4, i) in results}
    if pick["gemv_impl"] == "gemv4" and t4 and min(t4, key=t4.get) == "gemv4":
        pick["gemv_max_tokens"] = 4  # gemv4 also at 2-4 tokens (decoded once per program, one FMA per row)
    if t32 and min(t32, key=t32.get) != "scaled":
        best32 = min(t32, key=t32.get)
        pick["mma_impl"] = best32[:-1]
        pick["dq"] = {**pick["dq"], **results[(32, best32)][1]}
    emit({"sec": "pick", **pick})
    return {"results": {f"{t}|{i}": v for (t, i), v in results.items()}, "pick": pick}


# round 15 (--gemv4-topk): gemv4's tiles per top_k at one token (MXFP4_CONFIG_GEMV4_BY_TOPK)
GEMV4_TOPK_CANDIDATES = [
    (32, 512, 2, 1), (16, 512, 2, 1), (16, 512, 1, 1), (8, 512, 1, 1), (8, 1024, 2, 1), (16, 1024, 2, 1),
    (16, 1024, 4, 1), (32, 1024, 4, 1), (16, 256, 2, 1), (32, 256, 2, 1), (8, 512, 2, 1), (16, 512, 4, 1),
    (32, 512, 4, 1), (64, 512, 4, 1), (8, 256, 1, 1), (16, 256, 1, 1),
]


def random_layer(seed: int = 3) -> mxfp4.Mxfp4Experts:
    """One E32 gpt-oss-20b expert layer on the GPU with random blocks (every code) and scales 118..123 (no model)."""
    return random_experts(32, 2880, 2880, torch.Generator(device="cuda").manual_seed(seed))


def gemv4_topk_sweep(out_dir: Path, topks: list[int]) -> dict:
    """Per top_k: one E32 layer at one token (random_layer), gemv4 at the shipped tiles, then gate_up's tiles over
    GEMV4_TOPK_CANDIDATES (down at its shipped tile), then down's (gate_up at its pick), CUDA-graph medians under the
    shipped PDL mode; the picks (each GEMM's tile only where >= 2% faster than the shipped one) are checked against
    the torch reference. Writes $OUT/gemv4_compare.json: --compare configurations for scripts/gpu_step_ablation.py
    (main against MXFP4_CONFIG_GEMV4_BY_TOPK with the picks)."""
    ex = random_layer()
    gen = torch.Generator(device="cuda").manual_seed(11)
    per_expert = sum(getattr(ex, n)[0].numel() for n in ("gate_up_proj_blocks", "gate_up_proj_scales",
                                                          "down_proj_blocks", "down_proj_scales"))
    picks: dict[str, dict] = {}
    for k in topks:
        x = torch.randn(1, 2880, generator=gen, device="cuda").to(torch.bfloat16)
        topi, topw = _routing(1, 32, k, gen)
        want = _ref_moe(x, ex, topi, topw).float()
        nbytes = per_expert * k
        shipped = mk.gemv4_tiles(k)
        saved = dict(mk.MXFP4_CONFIG_GEMV4_BY_TOPK)

        def timed(tiles, k=k, x=x, topi=topi, topw=topw):
            mk.MXFP4_CONFIG_GEMV4_BY_TOPK[k] = tiles
            return _time(lambda: _call(x, ex, topi, topw, impl="gemv4"))

        base = timed(shipped)
        emit({"sec": "gemv4_topk", "k": k, "tiles": shipped, "us_per_layer": round(base, 2),
              "gb_s": round(nbytes / base / 1e3, 1), "label": "shipped"})
        best = dict(shipped)
        for gemm in ("gate_up", "down"):
            timings = []
            for cand in GEMV4_TOPK_CANDIDATES:
                try:
                    timings.append((timed({**best, gemm: cand}), cand))
                except Exception as exc:
                    emit({"sec": "gemv4_topk", "k": k, "gemm": gemm, "cand": cand, "error": repr(exc)[:200]})
            us, cand = min(timings)
            emit({"sec": "gemv4_topk_tiles", "k": k, "gemm": gemm,
                  "timings_us": [(round(t, 2), c) for t, c in sorted(timings)]})
            if us < 0.98 * timed(best):
                best[gemm] = cand
        us = timed(best)
        mk.MXFP4_CONFIG_GEMV4_BY_TOPK[k] = best
        rel = ((_call(x, ex, topi, topw, impl="gemv4").float() - want).norm() / want.norm()).item()
        emit({"sec": "gemv4_topk", "k": k, "tiles": best, "us_per_layer": round(us, 2),
              "gb_s": round(nbytes / us / 1e3, 1), "label": "picked", "rel_l2_err": round(rel, 5)})
        mk.MXFP4_CONFIG_GEMV4_BY_TOPK.clear()
        mk.MXFP4_CONFIG_GEMV4_BY_TOPK.update(saved)
        if best != shipped and rel < 0.02:
            picks[str(k)] = {g: list(v) for g, v in best.items()}
    compare = {"main": {}}
    if picks:
        compare["topk_tiles"] = {"mx.MXFP4_CONFIG_GEMV4_BY_TOPK": picks}
    (out_dir / "gemv4_compare.json").write_text(json.dumps(compare))
    emit({"sec": "gemv4_topk_pick", "picks": picks})
    return compare


# round 15 (--dq-topk): the dq loop's 2-8 token class (MXFP4_CONFIG_DQ_T[8]) for one top_k (MXFP4_CONFIG_DQ_T_BY_TOPK)
DQ_TOPK_VARIANTS = [0, 1, 3, 7]
DQ_TOPK_TILES = {
    "gate_up": [(128, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3), (128, 64, 4, 4), (128, 128, 4, 3),
                (32, 64, 4, 3), (64, 64, 2, 3)],
    "down": [(64, 64, 4, 4), (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (32, 64, 4, 4), (32, 128, 4, 3),
             (64, 64, 2, 4)],
}


def dq_topk_sweep(out_dir: Path, topk: int, token_counts: list[int]) -> dict:
    """The dq loop's 2-8 token class for one top_k: one E32 layer (random_layer), a launch at each of token_counts
    (top_k `topk`, fold on as in the engine on the synthetic model), scored by the sum of their CUDA-graph medians.
    The baseline ("shipped") is the shared class, without the top_k's own entries. Coordinate sweep over the entry:
    DQ_TOPK_VARIANTS at the baseline's tiles, gate_up's tiles, down's, a register cap of 128; kept only >= 2% below
    the baseline, checked against the torch reference. Writes $OUT/dq_compare.json (--compare configurations for
    scripts/gpu_step_ablation.py)."""
    ex = random_layer()
    gen = torch.Generator(device="cuda").manual_seed(13)
    inputs = []
    for t in token_counts:
        x = torch.randn(t, 2880, generator=gen, device="cuda").to(torch.bfloat16)
        inputs.append((x, *_routing(t, 32, topk, gen)))
    cls = min(c for c in mk.MXFP4_CONFIG_DQ_T if c >= max(token_counts))
    saved = dict(mk.MXFP4_CONFIG_DQ_T_BY_TOPK)

    def run(inp):
        return mk.moe_mxfp4(inp[0], ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                            ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, inp[1], inp[2], ex.alpha,
                            ex.limit, None, fold=True)

    def score(entry: dict, label: str) -> float:
        mk.MXFP4_CONFIG_DQ_T_BY_TOPK.clear()
        mk.MXFP4_CONFIG_DQ_T_BY_TOPK.update({**saved, topk: {cls: entry}})
        try:
            us = [_time(lambda inp=inp: run(inp)) for inp in inputs]
        except Exception as exc:  # a tile that does not compile (shared memory, registers, MMA shape) is skipped
            emit({"sec": "dq_topk", "k": topk, "label": label, "entry": str(entry), "error": repr(exc)[:300]})
            return float("inf")
        emit({"sec": "dq_topk", "k": topk, "label": label, "entry": {g: v for g, v in entry.items()},
              "us_per_layer": [round(u, 2) for u in us], "tokens": token_counts})
        return sum(us)

    tiles, variant, bmq, cap = mk.dq_class(cls)  # the shared class (no top_k's own entries): the baseline
    shipped = {**tiles, "variant": variant, "bmq": bmq, **({"maxnreg": cap} if cap else {})}
    base = score(shipped, "shipped")
    best, best_t = dict(shipped), base
    for v in DQ_TOPK_VARIANTS:
        if v != shipped["variant"]:
            t = score({**best, "variant": v}, f"v{v}")
            if t < best_t:
                best, best_t = {**best, "variant": v}, t
    for gemm in ("gate_up", "down"):
        for tile in DQ_TOPK_TILES[gemm]:
            if tuple(tile) != tuple(best[gemm]):
                t = score({**best, gemm: tile}, f"{gemm}-{tile}")
                if t < best_t:
                    best, best_t = {**best, gemm: tile}, t
    t = score({**best, "maxnreg": 128}, "maxnreg128")
    if t < best_t:
        best, best_t = {**best, "maxnreg": 128}, t
    again = score(shipped, "shipped again")
    keep = best != shipped and best_t < 0.98 * min(base, again)
    mk.MXFP4_CONFIG_DQ_T_BY_TOPK.clear()
    mk.MXFP4_CONFIG_DQ_T_BY_TOPK.update({**saved, topk: {cls: best}})
    errs = []
    for x, topi, topw in inputs:
        want = _ref_moe(x, ex, topi, topw).float()
        errs.append(round(((run((x, topi, topw)).float() - want).norm() / want.norm()).item(), 5))
    mk.MXFP4_CONFIG_DQ_T_BY_TOPK.clear()
    mk.MXFP4_CONFIG_DQ_T_BY_TOPK.update(saved)
    emit({"sec": "dq_topk_pick", "k": topk, "class": cls, "pick": {g: v for g, v in best.items()},
          "ratio": round(best_t / base, 4), "shipped_again": round(again / base, 4), "kept": keep, "rel_l2_err": errs})
    compare = {"main": {}}
    if keep and max(errs) < 0.02:
        entry = {g: list(v) if isinstance(v, tuple) else v for g, v in best.items()}
        compare[f"dq_k{topk}"] = {"mx.MXFP4_CONFIG_DQ_T_BY_TOPK": {str(topk): {str(cls): entry}}}
    (out_dir / "dq_compare.json").write_text(json.dumps(compare))
    return compare


# session 17 (--xperm): the dq loop with DQV bit 3 (activations in the MMA's K order, cp.async) against main's, per
# kernel, and the class entry's knobs under it. (DQ_XPERM_MAX_TOKENS turned both GEMMs' bit 3 on when session 17 ran
# this, at `6266337`; since then it sets the down GEMM's alone, and a class variant's bit 4 adds gate_up's)
XPERM_ENTRIES = [
    ("main", 0, {}), ("xp", 64, {}), ("xp v15 (mul)", 64, {"variant": 15}),
    ("xp gu st3", 64, {"gate_up": (128, 64, 4, 3)}), ("xp gu st5", 64, {"gate_up": (128, 64, 4, 5)}),
    ("xp dn st4", 64, {"down": (128, 64, 4, 4)}), ("xp dn st5", 64, {"down": (128, 64, 4, 5)}),
    ("xp no cap", 64, {"maxnreg": 0}), ("xp cap 168", 64, {"maxnreg": 168}),
    ("xp gu 64", 64, {"gate_up": (64, 64, 4, 4)}), ("xp dn 64", 64, {"down": (64, 64, 4, 4)}),
    ("main again", 0, {}),
]


def xperm_sweep(cases: list[tuple[int, int]]) -> None:
    """Per (tokens, top_k): one E32 layer (random_layer), scan-mode dq launches as the engine runs them (fold on: every
    scale <= 128), under each of XPERM_ENTRIES (label, DQ_XPERM_MAX_TOKENS, the top_k's class entry over the shared
    class): the pair of launches as a CUDA-graph median (with XPERM the gather of gate_up's input included) and
    each MXFP4 kernel's own duration from one profiled eager run (gate_up, down); the error against the torch
    reference. "xperm" records in $OUT/mxfp4.jsonl."""
    from torch.profiler import ProfilerActivity, profile

    ex = random_layer()
    gen = torch.Generator(device="cuda").manual_seed(19)
    saved = (mk.DQ_XPERM_MAX_TOKENS, {t: dict(c) for t, c in mk.MXFP4_CONFIG_DQ_T_BY_TOPK.items()})
    for tokens, k in cases:
        x = torch.randn(tokens, 2880, generator=gen, device="cuda").to(torch.bfloat16)
        topi, topw = _routing(tokens, 32, k, gen)
        want = _ref_moe(x, ex, topi, topw).float()
        cls = min(c for c in mk.MXFP4_CONFIG_DQ_T if c >= tokens)

        def run(x=x, topi=topi, topw=topw):
            return _call(x, ex, topi, topw, fold=True)

        for label, xp, entry in XPERM_ENTRIES:
            mk.DQ_XPERM_MAX_TOKENS = xp
            mk.MXFP4_CONFIG_DQ_T_BY_TOPK.clear()
            mk.MXFP4_CONFIG_DQ_T_BY_TOPK.update({t: dict(c) for t, c in saved[1].items()})
            if entry:
                mk.MXFP4_CONFIG_DQ_T_BY_TOPK.setdefault(k, {})[cls] = {**mk.MXFP4_CONFIG_DQ_T_BY_TOPK.get(k, {}).get(
                    cls, {}), **entry}
            try:
                us = _time(run)
                got = run().float()
                for _ in range(3):
                    run()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        run()
                    torch.cuda.synchronize()
                durs = [e.time_range.end - e.time_range.start for e in sorted(
                    (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                     and "mxfp4" in e.name), key=lambda e: e.time_range.start)]
                med = lambda v: round(sorted(v)[len(v) // 2], 2) if v else None  # noqa: E731
                emit({"sec": "xperm", "tokens": tokens, "k": k, "label": label, "us_per_layer": round(us, 2),
                      "gate_up_us": med(durs[0::2]), "down_us": med(durs[1::2]), "class": cls,
                      "entry": mk.dq_class(tokens, k),
                      "rel_l2_err": round(((got - want).norm() / want.norm()).item(), 5)})
            except Exception as exc:
                emit({"sec": "xperm", "tokens": tokens, "k": k, "label": label, "error": repr(exc)[:300]})
    mk.DQ_XPERM_MAX_TOKENS = saved[0]
    mk.MXFP4_CONFIG_DQ_T_BY_TOPK.clear()
    mk.MXFP4_CONFIG_DQ_T_BY_TOPK.update(saved[1])


def gemv4_intercept(out_dir: Path, topks: list[int]) -> None:
    """How gemv4's layer time grows with the routed experts (round 15: latency-bound up to two experts,
    issue-bound from four): one E32 layer (random_layer) at one token routed to k distinct experts, for each k in topks,
    the shipped tables (per top_k). Per k: the pair of launches as a CUDA-graph median (as the probe times it); each
    kernel's own duration from one profiled eager call (torch.profiler, CUPTI: gate_up, down, without launch gaps);
    and the read-only kernel over the same experts (read_floor). Records "intercept" lines in $OUT/mxfp4.jsonl."""
    from torch.profiler import ProfilerActivity, profile

    ex = random_layer()
    gen = torch.Generator(device="cuda").manual_seed(17)
    per_gu = ex.gate_up_proj_blocks[0].numel() + ex.gate_up_proj_scales[0].numel()
    per_dn = ex.down_proj_blocks[0].numel() + ex.down_proj_scales[0].numel()
    for k in topks:
        x = torch.randn(1, 2880, generator=gen, device="cuda").to(torch.bfloat16)
        topi = torch.randperm(32, generator=gen, device="cuda")[:k].to(torch.int32)[None, :].contiguous()
        topw = torch.softmax(torch.randn(1, k, generator=gen, device="cuda"), -1).to(torch.bfloat16)
        us = _time(lambda x=x, topi=topi, topw=topw: _call(x, ex, topi, topw, impl="gemv4"))
        for _ in range(3):
            _call(x, ex, topi, topw, impl="gemv4")
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                _call(x, ex, topi, topw, impl="gemv4")
            torch.cuda.synchronize()
        kern = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA and "mxfp4" in e.name)
        durs = [b - a for a, b in kern]  # alternating gate_up, down (launch order)
        gu = sorted(durs[0::2])[len(durs[0::2]) // 2] if durs else None
        dn = sorted(durs[1::2])[len(durs[1::2]) // 2] if durs else None
        emit({"sec": "intercept", "k": k, "graph_us_per_layer": round(us, 2),
              "gate_up_kernel_us": gu and round(gu, 2), "down_kernel_us": dn and round(dn, 2),
              "gate_up_gb_s": gu and round(per_gu * k / gu / 1e3, 1),
              "down_gb_s": dn and round(per_dn * k / dn / 1e3, 1),
              "tiles": mk.gemv4_tiles(k), "kernels_seen": len(durs)})
        read_floor(ex, topi)


def time_case(model, batch: int, k: int, arch, bandwidth: float, label: str, weights: str,
              splitk: bool = False) -> dict:
    from bench.roofline import mean_decode_context, roofline_point

    set_top_k(model, k)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(batch))
    eng = GraphEngine(GraphOptions(splitk=splitk))
    try:
        eng.prepare(model, ids, NEW)
        res = [eng.generate(model, ids, NEW) for _ in range(2)]
        r = min(res, key=lambda r: r.decode_s)
        tps = batch * (NEW - 1) / r.decode_s
        ceil = roofline_point(arch, batch, k, mean_decode_context(PROMPT, NEW), bandwidth,
                              distinct=r.distinct_experts).ceiling_tps
        return {"sec": "engine", "weights": weights, "label": label, "experts": arch.num_experts, "batch": batch,
                "top_k": k, "ms_step": round(1000 * r.decode_s / (NEW - 1), 3), "tok_s": round(tps, 1),
                "ceiling_tok_s": round(ceil, 1), "roofline_pct": round(100 * tps / ceil, 1), "U": r.distinct_experts,
                "spread_pct": round(100 * (max(x.decode_s for x in res) / r.decode_s - 1), 2)}
    except Exception as exc:
        return {"sec": "engine", "weights": weights, "label": label, "batch": batch, "top_k": k,
                "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]}
    finally:
        eng.release()


def accuracy(model, batch: int, steps: int = 96, one_by_one: bool = False) -> dict:
    """Teacher-forced agreement with the float32 argmax: the graph engine (MXFP4) and HF bf16 (dequantized)."""
    set_top_k(model, 4)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(1))
    toks = graph_tokens(model, GraphOptions(), ids, steps, one_by_one)
    full = torch.cat([ids, toks], dim=1)
    mxfp4.dequantize_model(model, torch.bfloat16)
    torch.cuda.empty_cache()
    sl = slice(PROMPT - 1, PROMPT - 1 + steps)
    set_experts_implementation(model, "grouped_mm")
    bf16 = hf_argmax(model, full[:, :-1], sl)
    model.float()
    torch.cuda.empty_cache()
    set_experts_implementation(model, "eager")
    fp32 = hf_argmax(model, full[:, :-1], sl)
    return {"sec": "accuracy", "weights": "mxfp4", "batch": 1 if one_by_one else batch, "sequences": batch,
            "prompt_len": PROMPT, "steps": steps,
            **paired_agreement(toks, bf16, fp32)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-bf16", action="store_true", help="no bf16 engine side-by-side before quantizing")
    ap.add_argument("--accuracy-batch", type=int, default=32,
                    help="sequences in the accuracy check (96 steps each; 32: 3,072 tokens)")
    ap.add_argument("--accuracy-one-by-one", action="store_true",
                    help="the accuracy check's sequences generated one at a time (batch 1's kernels: gemv2, split-K)")
    ap.add_argument("--no-picks", action="store_true",
                    help="'after' is the committed tables (the probe only measures), not the probe's picks")
    ap.add_argument("--sweep-dq", action="store_true", help="also time scaled vs dq at 32 tokens and sweep dq's tiles")
    ap.add_argument("--engine-cases", default="1x4,32x4,1x2,4x4",
                    help="engine before/after cases, BATCHxTOPK comma-separated")
    ap.add_argument("--engine-pdl", default="0,1,2",
                    help="batch-1 'after' runs under each of these MXFP4_PDL modes; the fastest at 1x4 is kept")
    ap.add_argument("--dq-sweep", action="store_true",
                    help="round 6a: the dq loop's variants and tiles per batch class (4/8/32/64, sorted 128/256)")
    ap.add_argument("--dq-recheck", default=None,
                    help="token counts (e.g. 4,8,32): each class's committed tiles under every DQ_VARIANT")
    ap.add_argument("--dq-sweep-s", type=float, default=100, help="seconds the --dq-sweep may take")
    ap.add_argument("--perf", default=None, help="arguments for bench perf, run afterwards in this process")
    ap.add_argument("--e16", action="store_true", help="then E16 at batch 32 (prunes the model: no accuracy after)")
    ap.add_argument("--gemv4-topk", default=None, metavar="K[,K]",
                    help="round 15: only gemv4's tile sweep per top_k at one token (gemv4_topk_sweep), no model")
    ap.add_argument("--dq-topk", type=int, default=0, metavar="K",
                    help="round 15: only the dq loop's 2-8 token class swept for top_k K (dq_topk_sweep), no model")
    ap.add_argument("--dq-topk-tokens", default="4,8", help="the launches --dq-topk scores (tokens, comma list)")
    ap.add_argument("--gemv4-intercept", default=None, metavar="K[,K]",
                    help="round 15: only gemv4's per-kernel times at one token for each top_k (gemv4_intercept)")
    ap.add_argument("--xperm", default=None, metavar="TxK[,TxK]",
                    help="session 17: only the dq loop with and without DQV bit 3, per kernel (xperm_sweep), no model")
    ap.add_argument("--dqa", action="store_true",
                    help="round 7: the Gluon dqa loop vs main's dq (layers, engine E32/E16 b32, accuracy), then stop")
    ap.add_argument("--bf16-picks", default=None,
                    help="picks_bf16.json of scripts/gpu_perf_graph.py: its split-K tile (if any) joins 'after'")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                    help="set kernels.NAME (a flag or a tile table, JSON) first (scripts/gpu_ab.py); repeatable")
    args = ap.parse_args()
    from gpu_ab import set_kernel_tables

    set_kernel_tables(args.set)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    LOG.path = out_dir / "mxfp4.jsonl"
    left = lambda: args.budget_s - (time.time() - T0)  # noqa: E731
    from bench.measure.bandwidth import measure_bandwidth
    from bench.roofline import ArchSummary

    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "commit": os.environ.get("MOE_BENCH_GIT_COMMIT")}
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    layer_only = (  # round 15's modes: one random layer, no model; the first one asked for runs, then it stops
        (args.gemv4_intercept, lambda: gemv4_intercept(out_dir, ints(args.gemv4_intercept))),
        (args.dq_topk, lambda: dq_topk_sweep(out_dir, args.dq_topk, ints(args.dq_topk_tokens))),
        (args.gemv4_topk, lambda: gemv4_topk_sweep(out_dir, ints(args.gemv4_topk))),
        (args.xperm, lambda: xperm_sweep([tuple(int(v) for v in c.split("x")) for c in args.xperm.split(",")])),
    )
    for asked, run_mode in layer_only:
        if asked:
            emit({"sec": "env", **report})
            run_mode()
            emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
            return 0
    model = load_model(MODEL, device="cuda", dtype=torch.bfloat16, seed=0).model
    bandwidth = measure_bandwidth("cuda")
    emit({"sec": "env", **report, "bandwidth_gbs": round(bandwidth / 1e9, 1), "load_s": round(time.time() - T0, 1)})
    if not args.skip_engine and not args.skip_bf16:  # bf16 side by side: batch 1 without / with split-K, and 32
        arch = ArchSummary.from_model(model)
        emit(time_case(model, 1, 4, arch, bandwidth, "before", "bf16", splitk=False))
        emit(time_case(model, 1, 4, arch, bandwidth, "after", "bf16", splitk=True))
        emit(time_case(model, 32, 4, arch, bandwidth, "same", "bf16", splitk=True))
    t1 = time.time()
    mxfp4.quantize_model(model)
    torch.cuda.empty_cache()
    emit({"sec": "quantize", "s": round(time.time() - t1, 1),
          "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2)})
    after = current_tables()
    if args.dqa:
        try:
            picks = dqa_ab(model, bandwidth, left, args.accuracy_batch, args.skip_accuracy)
            (out_dir / "tiles.json").write_text(json.dumps({**after, **picks}))
        except Exception as exc:
            emit({"sec": "dqa", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
        emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
        return 0
    try:
        decode_check()
    except Exception as exc:
        emit({"sec": "decode_check", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
    dq_picks: dict = {}
    if args.dq_sweep:
        try:
            sweep_end = time.time() + args.dq_sweep_s
            dq_picks = dq_sweep(model, lambda: sweep_end - time.time())
            after = {**after, **dq_picks}
        except Exception as exc:
            emit({"sec": "dq_sweep", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
        (out_dir / "tiles.json").write_text(json.dumps(after))
    if args.dq_recheck:
        try:
            after = {**after, "dq_t": dq_recheck(model, [int(t) for t in args.dq_recheck.split(",")])}
        except Exception as exc:
            emit({"sec": "dq_recheck", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
        (out_dir / "tiles.json").write_text(json.dumps(after))
    if not args.skip_probe:
        try:
            report["probe"] = probe(model, sweep_dq=args.sweep_dq and not args.no_picks,
                                    sweep_gemv4=not args.no_picks)
            if not args.no_picks:
                after = {**report["probe"]["pick"], **dq_picks}
        except Exception as exc:
            emit({"sec": "probe", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
        (out_dir / "tiles.json").write_text(json.dumps(after))  # for MOE_MXFP4_TILES
    splitk = True  # the committed default (GraphOptions.splitk)
    if args.bf16_picks and Path(args.bf16_picks).exists():
        from bench.engines.graph import kernels as gk

        splitk = json.loads(Path(args.bf16_picks).read_text()).get("splitk")
        if splitk:
            gk.SPLITK_CONFIG["small"] = tuple(splitk)
    if not args.skip_engine:
        arch = ArchSummary.from_model(model)
        modes = [int(m) for m in args.engine_pdl.split(",") if m]
        b1 = {}
        for b, k in (tuple(int(v) for v in c.split("x")) for c in args.engine_cases.split(",")):
            runs = [("before", BEFORE)]
            runs += [(f"after-pdl{m}", {**after, "pdl": m}) for m in modes] if b == 1 and modes else [("after", after)]
            for label, cfg in runs:
                if left() < 60 + (0 if args.skip_accuracy else 60):
                    break
                set_tables(cfg)
                rec = time_case(model, b, k, arch, bandwidth, label, "mxfp4", splitk=bool(splitk))
                emit(rec)
                if (b, k) == (1, 4) and label.startswith("after-pdl") and "tok_s" in rec:
                    b1[cfg["pdl"]] = rec["tok_s"]
        if b1:
            after = {**after, "pdl": max(b1, key=b1.get)}
            emit({"sec": "pick_pdl", "pdl": after["pdl"], "tok_s": b1})
            (out_dir / "tiles.json").write_text(json.dumps(after))
        if args.e16 and left() > 60:  # E16 at batch 32 (target: >= 1.5x E32), the first 16 experts per layer
            from bench.models.pruning import prune_model

            prune_model(model, [list(range(16))] * len(model.model.layers))
            torch.cuda.empty_cache()
            arch16 = ArchSummary.from_model(model)
            for label, cfg in (("before", BEFORE), ("after", after)):
                set_tables(cfg)
                emit(time_case(model, 32, 4, arch16, bandwidth, label, "mxfp4", splitk=bool(splitk)))
            args.skip_accuracy = True  # the accuracy check needs the unpruned model
    set_tables(after)
    if not args.skip_accuracy and left() > 40:
        try:
            emit(accuracy(model, batch=args.accuracy_batch, one_by_one=args.accuracy_one_by_one))
        except Exception as exc:
            emit({"sec": "accuracy", "error": repr(exc)[:400], "tb": traceback.format_exc()[-1500:]})
    del model
    torch.cuda.empty_cache()
    (out_dir / "mxfp4_check.json").write_text(json.dumps(report, indent=1, default=str))
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    if args.perf:
        from bench.commands.perf import main as perf_main

        return perf_main(shlex.split(args.perf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
