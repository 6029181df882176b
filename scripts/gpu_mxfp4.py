"""GPU checks of MXFP4 on synthetic gpt-oss-20b: the Triton MXFP4 expert kernels against the torch reference at
the real shapes, a tile sweep of those kernels, and the teacher-forced accuracy check of the graph engine.

    PYTHONUNBUFFERED=1 python scripts/gpu_mxfp4.py [--out DIR] [--skip-probe] [--skip-accuracy]
        [--perf "ARGS for bench perf"]

probe: moe_mxfp4 vs dequantize + torch loop (bf16) for T = 1, 4, 32 tokens (decode) and 300 (prefill, sorted);
then the (BN, BK, warps, stages) of each GEMM is timed at T=1 (compact grid) and T=32 (full grid), the best are
set for the rest of the run and written out, with the bytes each call streams and the GB/s it reached.

accuracy (docs/METHOD.md "teacher-forced agreement"): greedy tokens from the graph engine on the MXFP4 model (batch 4,
prompt 256, 96 steps), then the same sequences through Hugging Face on the dequantized weights in bf16 and in
float32; reports how often the graph engine's token and HF bf16's argmax equal the float32 argmax. The graph
engine passes when its agreement is at least HF bf16's.

--perf runs `bench perf` in this process afterwards (with the tuned tiles), e.g.
    --perf "--engines graph --weights bf16,mxfp4 --experts 32,16 --top-k 4 --batch-sizes 1,32"
Writes mxfp4_check.json to --out (default $OUT or .).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engines.graph import GraphEngine
from bench.engines.graph import mxfp4_kernels as mk
from bench.models import mxfp4
from bench.models.loading import load_model, set_experts_implementation
from bench.models.pruning import set_top_k

MODEL = "synthetic:gpt-oss-20b"
TILE_CANDIDATES = {
    "few": [(32, 128, 4, 3), (64, 128, 4, 3), (64, 256, 4, 3)],
    "full": [(64, 128, 4, 3), (128, 128, 8, 3), (64, 256, 4, 3)],
}


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


def _call(x, ex, topi, topw, cnt=None):
    return mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                        ex.down_proj_scales, ex.down_proj_bias, topi, topw, ex.alpha, ex.limit, cnt)


def _time(fn, iters: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1000  # us


def probe(model) -> dict:
    ex = model.model.layers[0].mlp.experts
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = ex.hidden_size
    checks = []
    for tokens in (1, 4, 32, 300):
        x = torch.randn(tokens, hidden, generator=gen, device="cuda").to(torch.bfloat16)
        topi, topw = _routing(tokens, ex.num_experts, 4, gen)
        cnt = torch.zeros((), dtype=torch.int32, device="cuda")
        got = _call(x, ex, topi, topw, cnt).float()
        want = _ref_moe(x, ex, topi, topw).float()
        rel = ((got - want).norm() / want.norm()).item()
        checks.append({"tokens": tokens, "rel_l2_err": round(rel, 5),
                       "max_abs": round((got - want).abs().max().item(), 4), "count": int(cnt),
                       "distinct": int(topi.unique().numel())})
        print("probe check", checks[-1], flush=True)
    per_expert = sum(getattr(ex, n)[0].numel() for n in ("gate_up_proj_blocks", "gate_up_proj_scales",
                                                          "down_proj_blocks", "down_proj_scales"))
    tuning = {}
    for mode, tokens in (("few", 1), ("full", 32)):
        x = torch.randn(tokens, hidden, generator=gen, device="cuda").to(torch.bfloat16)
        topi, topw = _routing(tokens, ex.num_experts, 4, gen)
        nbytes = per_expert * int(topi.unique().numel())
        table = mk.MXFP4_CONFIG_FEW if mode == "few" else mk.MXFP4_CONFIG
        best = {}
        results = []
        for gemm in ("gate_up", "down"):
            timings = []
            for cand in TILE_CANDIDATES[mode]:
                saved = table[gemm]
                table[gemm] = cand
                try:
                    us = _time(lambda x=x, topi=topi, topw=topw: _call(x, ex, topi, topw))
                except Exception as exc:  # a tile that does not compile (shared memory) is skipped
                    print(f"  {mode} {gemm} {cand}: {type(exc).__name__}", flush=True)
                    table[gemm] = saved
                    continue
                timings.append((us, cand))
                table[gemm] = saved
            us, cand = min(timings)
            table[gemm] = cand
            best[gemm] = cand
            results.append({"gemm": gemm, "timings_us": [(round(t, 1), c) for t, c in sorted(timings)]})
        us = _time(lambda x=x, topi=topi, topw=topw: _call(x, ex, topi, topw))
        tuning[mode] = {"tokens": tokens, "best": best, "us_per_layer": round(us, 2), "bytes": nbytes,
                        "gb_s": round(nbytes / us / 1e3, 1), "sweep": results}
        print("probe tuning", mode, json.dumps({k: v for k, v in tuning[mode].items() if k != "sweep"}), flush=True)
    return {"checks": checks, "tuning": tuning}


def accuracy(model, batch: int = 4, prompt_len: int = 256, steps: int = 96) -> dict:
    """Teacher-forced agreement with the float32 argmax: the graph engine (MXFP4) and HF bf16 (dequantized)."""
    set_top_k(model, 4)
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device="cuda")
    eng = GraphEngine()
    t0 = time.time()
    res = eng.generate(model, ids, steps)
    eng.release()
    toks = res.tokens.to("cuda")
    full = torch.cat([ids, toks], dim=1)
    print(f"accuracy: graph generated {tuple(toks.shape)} in {time.time() - t0:.1f}s", flush=True)
    mxfp4.dequantize_model(model, torch.bfloat16)
    torch.cuda.empty_cache()

    def argmaxes() -> torch.Tensor:
        with torch.inference_mode():
            logits = model(full[:, :-1]).logits[:, prompt_len - 1 :]
        return logits.argmax(-1)

    set_experts_implementation(model, "grouped_mm")
    bf16 = argmaxes()
    model.float()
    torch.cuda.empty_cache()
    set_experts_implementation(model, "eager")
    fp32 = argmaxes()
    graph_agree = (toks == fp32).float().mean().item()
    bf16_agree = (bf16 == fp32).float().mean().item()
    out = {"batch": batch, "prompt_len": prompt_len, "steps": steps,
           "graph_mxfp4_vs_fp32": round(graph_agree, 4), "hf_bf16_vs_fp32": round(bf16_agree, 4),
           "graph_vs_hf_bf16": round((toks == bf16).float().mean().item(), 4),
           "pass": graph_agree >= bf16_agree}
    print("accuracy", json.dumps(out), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--accuracy-batch", type=int, default=4,
                    help="sequences in the accuracy check (4: one standard error ~2 points; 16: ~1)")
    ap.add_argument("--perf", default=None, help="arguments for bench perf, run afterwards in this process")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.time()
    loaded = load_model(MODEL, device="cuda", dtype=torch.bfloat16, seed=0, weights="mxfp4")
    torch.cuda.synchronize()
    report["load_quantize_s"] = round(time.time() - t0, 2)
    report["allocated_after_load_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    print("loaded", report, flush=True)
    if not args.skip_probe:
        report["probe"] = probe(loaded.model)
        report["tiles"] = {"few": dict(mk.MXFP4_CONFIG_FEW), "full": dict(mk.MXFP4_CONFIG)}
        (out_dir / "tiles.json").write_text(json.dumps(report["tiles"]))  # for MOE_MXFP4_TILES
    if not args.skip_accuracy:
        report["accuracy"] = accuracy(loaded.model, batch=args.accuracy_batch)
    del loaded
    torch.cuda.empty_cache()
    (out_dir / "mxfp4_check.json").write_text(json.dumps(report, indent=1, default=str))
    rc = 0
    if args.perf:
        from bench.commands.perf import main as perf_main

        rc = perf_main(shlex.split(args.perf))
    acc = report.get("accuracy")
    return rc or (1 if acc and not acc["pass"] else 0)


if __name__ == "__main__":
    raise SystemExit(main())
