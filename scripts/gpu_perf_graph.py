"""H200 measurement for issue 12 (one call): kernel micro-benchmarks, the graph engine before/after side by side,
a step profile, and the teacher-forced accuracy check against float32.

    PYTHONUNBUFFERED=1 python scripts/gpu_perf_graph.py [--budget-s 240]

Sections, in order of importance, each skipped once the budget is spent; every record is appended to
$OUT/perf_graph.jsonl as it is made (so a killed run still returns what it measured):
1. micro: the Triton GEMV (qkv, o_proj, lm_head over all 24 layers' weights, M = 1 and 8) against F.linear, and the
   expert GEMM tiles at 64/128/256 tokens, each timed in a CUDA graph (triton.testing.do_bench_cudagraph, median);
   the fastest choices become the "after" engine's tables.
2. engine: synthetic gpt-oss-20b bf16, prompt 256, 33 new tokens (32 timed steps), best of 2 generations;
   "before" = GraphOptions() with the shipped tables, "after" = gemv on + the picked tiles + the split router up to
   256 tokens; roofline % with the measured copy bandwidth and the counted distinct experts (bench/roofline.py).
3. accuracy: batch 4, 96 steps: the after engine's tokens vs a float32 HF forward (teacher forced), against HF
   bf16's agreement with the same float32 forward (pass: graph >= HF bf16).
4. profile: one eager decode step per case under torch.profiler (kernel count and time per kernel family).
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

from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph import kernels as gk

T0 = time.time()
OUT = Path(os.environ.get("OUT", "."))
LOG = OUT / "perf_graph.jsonl"
PROMPT = 256
NEW = 33


def emit(rec: dict) -> None:
    rec = {"t": round(time.time() - T0, 1), **rec}
    line = json.dumps(rec)
    print(line, flush=True)
    with LOG.open("a") as f:
        f.write(line + "\n")


def bench_graph(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))


def micro_gemv(model) -> dict:
    layers = model.model.layers
    wqkv = [torch.cat([lay.self_attn.q_proj.weight, lay.self_attn.k_proj.weight, lay.self_attn.v_proj.weight])
            for lay in layers]
    bqkv = [torch.cat([lay.self_attn.q_proj.bias, lay.self_attn.k_proj.bias, lay.self_attn.v_proj.bias])
            for lay in layers]
    shapes = {
        "qkv": [(w, b) for w, b in zip(wqkv, bqkv, strict=True)],
        "o_proj": [(lay.self_attn.o_proj.weight, lay.self_attn.o_proj.bias) for lay in layers],
        "lm_head": [(model.lm_head.weight, None)],
    }
    configs = [(16, 256, 4, 4), (32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4), (16, 512, 4, 3)]
    totals: dict[tuple[str, object], float] = {}  # (class, cfg) -> summed ms over shapes and M = 1, 8
    for m in (1, 8):
        for name, ws in shapes.items():
            key = "vocab" if name == "lm_head" else "small"
            k = ws[0][0].shape[1]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            nbytes = sum(w.numel() * w.element_size() for w, _ in ws)
            ms = bench_graph(lambda x=x, ws=ws: [torch.nn.functional.linear(x, w, b) for w, b in ws])
            totals[(key, None)] = totals.get((key, None), 0.0) + ms
            emit({"sec": "gemv", "m": m, "shape": name, "impl": "F.linear", "us": round(ms * 1000, 1),
                  "tb_s": round(nbytes / ms / 1e9, 3)})
            for cfg in configs:
                try:
                    ref = torch.nn.functional.linear(x, ws[0][0], ws[0][1]).float()
                    err = ((gk.gemv(x, ws[0][0], ws[0][1], cfg).float() - ref).norm() / ref.norm()).item()
                    ms2 = bench_graph(lambda x=x, ws=ws, cfg=cfg: [gk.gemv(x, w, b, cfg) for w, b in ws])
                    emit({"sec": "gemv", "m": m, "shape": name, "impl": str(cfg), "us": round(ms2 * 1000, 1),
                          "tb_s": round(nbytes / ms2 / 1e9, 3), "rel_err": err})
                    totals[(key, cfg)] = totals.get((key, cfg), 0.0) + (ms2 if err < 1e-2 else float("inf"))
                except Exception as exc:
                    totals[(key, cfg)] = float("inf")
                    emit({"sec": "gemv", "m": m, "shape": name, "impl": str(cfg), "error": repr(exc)[:300]})
    best: dict[str, object] = {}
    for key in ("small", "vocab"):
        cands = {cfg: t for (kk, cfg), t in totals.items() if kk == key}
        best[key] = min(cands, key=cands.get)  # None: cuBLAS stays faster for this class
        emit({"sec": "gemv_pick", "key": key, "pick": str(best[key]),
              "totals_us": {str(c): round(t * 1000, 1) for c, t in cands.items()}})
    return best


def micro_moe(model) -> dict:
    ex = model.model.layers[0].mlp.experts
    configs = [None, {"gate_up": (64, 64, 4, 3), "down": (64, 64, 4, 3)},
               {"gate_up": (128, 64, 8, 3), "down": (64, 64, 8, 3)},
               {"gate_up": (64, 128, 8, 3), "down": (32, 128, 8, 3)}]
    scores: dict[str, float] = {}
    last_ms: dict[int, float] = {}
    for tokens in (64, 128, 256):
        x = torch.randn(tokens, ex.gate_up_proj.shape[1], device="cuda", dtype=torch.bfloat16)
        topi = torch.stack([torch.randperm(32, device="cuda")[:4] for _ in range(tokens)]).to(torch.int32)
        topw = torch.softmax(torch.randn(tokens, 4, device="cuda"), -1)
        args = (x, ex.gate_up_proj, ex.gate_up_proj_bias, ex.down_proj, ex.down_proj_bias, topi, topw, 1.702, 7.0)
        ref = gk.moe(*args)
        used = topi.unique().numel()
        nbytes = used * (ex.gate_up_proj[0].numel() + ex.down_proj[0].numel()) * 2
        for sbm in (64, 128):  # 64 first: its scan-mode times also count for 128 (no sorted tile at 64 tokens)
            for i, cfg in enumerate(configs):
                if sbm != 64 and (tokens <= gk.SCAN_MAX_TOKENS or i == 0):
                    if tokens <= gk.SCAN_MAX_TOKENS and i and f"64|{i}" in scores:  # scan: no sorted M tile
                        scores[f"{sbm}|{i}"] = scores.get(f"{sbm}|{i}", 0.0) + last_ms[i]
                    continue
                old = gk.SORTED_BM
                gk.SORTED_BM = sbm
                try:
                    err = (gk.moe(*args, tiles=cfg).float() - ref.float()).norm() / ref.float().norm()
                    ms = bench_graph(lambda cfg=cfg, args=args: gk.moe(*args, tiles=cfg))
                    emit({"sec": "moe", "tokens": tokens, "sorted_bm": sbm, "cfg": str(cfg), "us": round(ms * 1000, 1),
                          "tb_s": round(nbytes / ms / 1e9, 3), "rel_err": float(err)})
                    last_ms[i] = ms / (tokens / 64)
                    if err < 1e-2:
                        key = f"{sbm}|{i}"
                        scores[key] = scores.get(key, 0.0) + ms / (tokens / 64)
                except Exception as exc:
                    emit({"sec": "moe", "tokens": tokens, "sorted_bm": sbm, "cfg": str(cfg), "error": repr(exc)[:300]})
                finally:
                    gk.SORTED_BM = old
    return {"scores": scores, "configs": configs}


def time_case(model, batch: int, k: int, opts: GraphOptions, arch, bandwidth: float, label: str) -> dict:
    from bench.models.pruning import set_top_k
    from bench.roofline import ceiling_tps, mean_decode_context

    set_top_k(model, k)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(batch))
    eng = GraphEngine(opts)
    try:
        eng.prepare(model, ids, NEW)
        res = [eng.generate(model, ids, NEW) for _ in range(2)]
        r = min(res, key=lambda r: r.decode_s)
        ms = 1000 * r.decode_s / (NEW - 1)
        tps = batch * (NEW - 1) / r.decode_s
        ceil = ceiling_tps(arch, batch, k, mean_decode_context(PROMPT, NEW), bandwidth, distinct=r.distinct_experts)
        steps = sorted(1000 * s for s in r.step_s)
        return {"sec": "engine", "label": label, "experts": arch.num_experts, "batch": batch, "top_k": k,
                "ms_step": round(ms, 3), "step_p50_ms": round(steps[len(steps) // 2], 3), "tok_s": round(tps, 1),
                "ceiling_tok_s": round(ceil, 1), "roofline_pct": round(100 * tps / ceil, 1),
                "U": r.distinct_experts, "spread_pct": round(100 * (max(x.decode_s for x in res) / r.decode_s - 1), 2)}
    except Exception as exc:
        return {"sec": "engine", "label": label, "batch": batch, "top_k": k, "error": repr(exc)[:400],
                "tb": traceback.format_exc()[-800:]}
    finally:
        eng.release()


def profile_case(model, batch: int, k: int, opts: GraphOptions, label: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from bench.models.pruning import set_top_k

    set_top_k(model, k)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda")
    eng = GraphEngine(GraphOptions(**{**opts.to_dict(), "capture": "off"}))
    eng.prepare(model, ids, 8)
    dec = eng.decoder
    with torch.inference_mode():
        dec.decode_step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.decode_step()
            torch.cuda.synchronize()
    fam: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            t = getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0)
            fam.setdefault(ev.name[:50], []).append(t)
    eng.release()
    top = sorted(((sum(v), len(v), n) for n, v in fam.items()), reverse=True)[:14]
    return {"sec": "profile", "label": label, "batch": batch, "top_k": k,
            "kernels": sum(len(v) for v in fam.values()), "kernel_us": round(sum(sum(v) for v in fam.values()), 1),
            "top": [[n, round(t, 1), c] for t, c, n in top]}


def accuracy(model, opts: GraphOptions, batch: int = 4, steps: int = 96) -> dict:
    from bench.models.loading import set_experts_implementation
    from bench.models.pruning import set_top_k

    set_top_k(model, 4)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(7))
    eng = GraphEngine(opts)
    toks = eng.generate(model, ids, steps + 1).tokens.cuda()
    eng.release()
    full = torch.cat([ids, toks], dim=1)
    sl = slice(PROMPT - 1, PROMPT - 1 + steps + 1)
    with torch.inference_mode():
        bf16 = model(full).logits[:, sl].argmax(-1)
    model.float()
    torch.cuda.empty_cache()
    set_experts_implementation(model, "eager")
    with torch.inference_mode():
        fp32 = model(full).logits[:, sl].argmax(-1)
    return {"sec": "accuracy", "batch": batch, "steps": steps + 1,
            "graph_vs_fp32": round((toks == fp32).float().mean().item(), 4),
            "hf_bf16_vs_fp32": round((bf16 == fp32).float().mean().item(), 4),
            "graph_vs_hf_bf16": round((toks == bf16).float().mean().item(), 4)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--accuracy-only", type=int, metavar="BATCH", default=None,
                    help="only the accuracy check, with BATCH sequences of 96 steps (a larger sample than the 4 of "
                         "the full run: one standard error of the agreement is ~2 points at 4, ~1 at 16)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    left = lambda: args.budget_s - (time.time() - T0)  # noqa: E731
    from bench.measure.bandwidth import measure_bandwidth
    from bench.models.loading import load_model
    from bench.roofline import ArchSummary

    model = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0).model
    if args.accuracy_only:
        emit({"sec": "env", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "commit": os.environ.get("MOE_BENCH_GIT_COMMIT")})
        emit(accuracy(model, GraphOptions(), batch=args.accuracy_only))
        return 0
    bandwidth = measure_bandwidth("cuda")
    arch = ArchSummary.from_model(model)
    emit({"sec": "env", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "bandwidth_gbs": round(bandwidth / 1e9, 1), "commit": os.environ.get("MOE_BENCH_GIT_COMMIT")})
    try:
        picks = micro_gemv(model)
    except Exception as exc:
        picks = {}
        emit({"sec": "gemv", "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]})
    try:
        mo = micro_moe(model)
    except Exception as exc:
        mo = {"scores": {}}
        emit({"sec": "moe", "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]})
    big = None
    if mo["scores"]:
        key = min(mo["scores"], key=mo["scores"].get)
        sbm, idx = key.split("|")
        big = (int(sbm), mo["configs"][int(idx)])
        emit({"sec": "moe_pick", "sorted_bm": big[0], "cfg": str(big[1]), "scores": mo["scores"]})
    before = GraphOptions()
    after = GraphOptions(gemv=any(v is not None for v in picks.values()))
    shipped = (dict(gk.GEMV_CONFIG), gk.MOE_CONFIG_BIG, gk.SORTED_BM, gk.ROUTER_SPLIT_MAX_TOKENS)

    def set_tables(new: bool) -> None:
        if new:
            gk.GEMV_CONFIG.update(picks)
            if big is not None:
                gk.SORTED_BM, gk.MOE_CONFIG_BIG = big[0], big[1]
            gk.ROUTER_SPLIT_MAX_TOKENS = 256
        else:
            gk.GEMV_CONFIG.clear()
            gk.GEMV_CONFIG.update(shipped[0])
            gk.MOE_CONFIG_BIG, gk.SORTED_BM, gk.ROUTER_SPLIT_MAX_TOKENS = shipped[1], shipped[2], shipped[3]

    cases = [(1, 4), (1, 2), (8, 4), (32, 4), (64, 4), (128, 4), (256, 4), (8, 2), (32, 2)]
    for b, k in cases:
        for label, opts, new in (("before", before, False), ("after", after, True)):
            if left() < 60:
                break
            set_tables(new)
            emit(time_case(model, b, k, opts, arch, bandwidth, label))
    # ablation at batch 1 / 256: one change at a time
    for b, label in ((1, "gemv only"), (256, "moe tiles only"), (256, "router split only")):
        if left() < 60:
            break
        set_tables(False)
        if label == "gemv only":
            gk.GEMV_CONFIG.update(picks)
            emit(time_case(model, b, 4, after, arch, bandwidth, label))
        elif label == "moe tiles only" and big is not None:
            gk.SORTED_BM, gk.MOE_CONFIG_BIG = big[0], big[1]
            emit(time_case(model, b, 4, before, arch, bandwidth, label))
        elif label == "router split only":
            gk.ROUTER_SPLIT_MAX_TOKENS = 256
            emit(time_case(model, b, 4, before, arch, bandwidth, label))
    for b in (1, 256):
        for label, opts, new in (("before", before, False), ("after", after, True)):
            if left() < 45:
                break
            set_tables(new)
            try:
                emit(profile_case(model, b, 4, opts, label))
            except Exception as exc:
                emit({"sec": "profile", "label": label, "batch": b, "error": repr(exc)[:300]})
    set_tables(True)
    if left() > 25:
        try:
            emit(accuracy(model, after))
        except Exception as exc:
            emit({"sec": "accuracy", "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]})
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
