"""H200 measurement for issue 12 (one call): kernel micro-benchmarks, the graph engine before/after side by side
(E32 and E16), a step profile, and the teacher-forced accuracy check against float32 with a paired statistic.

    PYTHONUNBUFFERED=1 python scripts/gpu_perf_graph.py [--budget-s 240] [--micro] [--accuracy-only]
        [--accuracy-batch 32] [--accuracy-one-by-one | --accuracy-rows 8]

Sections, in order, each skipped once the budget is spent; every record is appended to $OUT/perf_graph.jsonl as it
is made (so a killed run still returns what it measured):
1. micro (--micro): the expert layer (`kernels.moe`) at 128/256 tokens (sorted mode) with sorted M tile 64 / 128,
   the tile candidates, and the torch vs Triton routing sort; qkv and o_proj (24 layers, M = 1) with cuBLAS vs
   `kernels.splitk_linear` tiles. Each timed in a CUDA graph (triton.testing.do_bench_cudagraph, median); the
   fastest replace the committed tables in "after" ($OUT/picks_bf16.json). Without --micro, "after" is the
   committed tables.
2. engine: synthetic gpt-oss-20b bf16, prompt 256, 33 new tokens (32 timed steps), best of 2 generations;
   "before" = what main shipped (de7112e: sorted M tile 128, torch.sort routing, cuBLAS qkv/o_proj), "after" =
   this commit's (M tile 64, or 128 past 40 rows per expert; Triton counting sort; sorted-mode tiles; split-K
   qkv/o_proj at batch 1). Batches 2..64 run code no change touches: measured once ("same"). Then the same with
   the model pruned to its first 16 experts. Roofline % with the measured copy bandwidth and the counted distinct
   experts (bench/roofline.py).
3. profile: one eager decode step at batch 1 and 256 under torch.profiler (kernel count, time per kernel family).
4. accuracy (--accuracy-only): --accuracy-batch sequences (a list: each) x 96 steps: the engine's tokens vs a
   float32 HF forward (teacher forced), against HF bf16's agreement with the same float32 forward, with a paired test
   (`paired_agreement`).
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
LOG = OUT / "perf_graph.jsonl"
PROMPT = 256
NEW = 33


emit = JsonlLog(LOG, T0).emit


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
    """One layer's expert GEMMs at 128 / 256 tokens (sorted mode): M tile x tiles x routing sort; scores summed."""
    ex = model.model.layers[0].mlp.experts
    experts = ex.gate_up_proj.shape[0]
    configs = [None, {"gate_up": (64, 64, 4, 3), "down": (64, 64, 4, 3)},
               {"gate_up": (128, 64, 8, 3), "down": (64, 64, 8, 3)},
               {"gate_up": (64, 64, 4, 4), "down": (64, 64, 4, 4)},
               {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 3)}]
    scores: dict[str, float] = {}
    old = (gk.SORTED_BM, gk.ROUTING_SORT)
    for tokens in (128, 256):
        x = torch.randn(tokens, ex.gate_up_proj.shape[1], device="cuda", dtype=torch.bfloat16)
        topi = torch.stack([torch.randperm(experts, device="cuda")[:4] for _ in range(tokens)]).to(torch.int32)
        topw = torch.softmax(torch.randn(tokens, 4, device="cuda"), -1)
        args = (x, ex.gate_up_proj, ex.gate_up_proj_bias, ex.down_proj, ex.down_proj_bias, topi, topw, 1.702, 7.0)
        gk.SORTED_BM, gk.ROUTING_SORT = old
        ref = gk.moe(*args).float()
        used = topi.unique().numel()
        nbytes = used * (ex.gate_up_proj[0].numel() + ex.down_proj[0].numel()) * 2
        for sort in ("torch", "triton"):
            gk.ROUTING_SORT = sort
            ms = bench_graph(lambda topi=topi: gk.routing_plan(topi, experts))
            emit({"sec": "routing_sort", "tokens": tokens, "sort": sort, "us": round(ms * 1000, 1)})
            for sbm in (64, 128):
                for i, cfg in enumerate(configs):
                    if sort == "torch" and i > 1:
                        continue  # the sort's effect is the same for every tile: two suffice
                    gk.SORTED_BM = sbm
                    key = f"{sbm}|{i}|{sort}"
                    try:
                        err = ((gk.moe(*args, tiles=cfg).float() - ref).norm() / ref.norm()).item()
                        ms = bench_graph(lambda cfg=cfg, args=args: gk.moe(*args, tiles=cfg))
                        emit({"sec": "moe", "tokens": tokens, "sorted_bm": sbm, "sort": sort, "cfg": str(cfg),
                              "us": round(ms * 1000, 1), "tb_s": round(nbytes / ms / 1e9, 3), "rel_err": err})
                        scores[key] = scores.get(key, 0.0) + (ms if err < 1e-2 else float("inf"))
                    except Exception as exc:
                        scores[key] = float("inf")
                        emit({"sec": "moe", "tokens": tokens, "sorted_bm": sbm, "cfg": str(cfg),
                              "error": repr(exc)[:300]})
    gk.SORTED_BM, gk.ROUTING_SORT = old
    return {"scores": scores, "configs": configs}


def micro_splitk(model) -> tuple[int, int, int, int] | None:
    """qkv and o_proj of all 24 layers at M = 1: F.linear (cuBLAS) against kernels.splitk_linear tiles, plus the
    consumers' extra reads; returns the fastest tile if it beats cuBLAS on the sum, else None."""
    layers = model.model.layers
    mats = {
        "qkv": [(torch.cat([la.self_attn.q_proj.weight, la.self_attn.k_proj.weight, la.self_attn.v_proj.weight]),
                 torch.cat([la.self_attn.q_proj.bias, la.self_attn.k_proj.bias, la.self_attn.v_proj.bias]))
                for la in layers],
        "o_proj": [(la.self_attn.o_proj.weight, la.self_attn.o_proj.bias) for la in layers],
    }
    cands = [(32, 128, 4, 4), (16, 256, 4, 4), (64, 128, 4, 4), (32, 256, 2, 4), (16, 128, 8, 4), (64, 64, 8, 4),
             (32, 128, 8, 8), (128, 64, 4, 8)]
    totals: dict[object, float] = {}
    for name, ws in mats.items():
        x = torch.randn(1, ws[0][0].shape[1], device="cuda", dtype=torch.bfloat16)
        nbytes = sum(w.numel() * 2 for w, _ in ws)
        ms = bench_graph(lambda x=x, ws=ws: [torch.nn.functional.linear(x, w, b) for w, b in ws])
        totals[None] = totals.get(None, 0.0) + ms
        emit({"sec": "splitk", "shape": name, "impl": "F.linear", "us": round(ms * 1000, 1),
              "tb_s": round(nbytes / ms / 1e9, 3)})
        ref = torch.nn.functional.linear(x, ws[0][0], ws[0][1]).float()
        for cfg in cands:
            try:
                err = ((gk.splitk_linear(x, ws[0][0], ws[0][1], cfg).materialize().float() - ref).norm()
                       / ref.norm()).item()
                ms2 = bench_graph(lambda x=x, ws=ws, cfg=cfg: [gk.splitk_linear(x, w, b, cfg) for w, b in ws])
                emit({"sec": "splitk", "shape": name, "impl": str(cfg), "us": round(ms2 * 1000, 1),
                      "tb_s": round(nbytes / ms2 / 1e9, 3), "rel_err": err})
                totals[cfg] = totals.get(cfg, 0.0) + (ms2 if err < 1e-2 else float("inf"))
            except Exception as exc:
                totals[cfg] = float("inf")
                emit({"sec": "splitk", "shape": name, "impl": str(cfg), "error": repr(exc)[:300]})
    best = min(totals, key=totals.get)
    emit({"sec": "splitk_pick", "pick": str(best),
          "totals_us": {str(c): round(t * 1000, 1) for c, t in totals.items()}})
    return best


def time_case(model, batch: int, k: int, opts: GraphOptions, arch, bandwidth: float, label: str) -> dict:
    from bench.models.pruning import set_top_k
    from bench.roofline import mean_decode_context, roofline_point

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
        ceil = roofline_point(arch, batch, k, mean_decode_context(PROMPT, NEW), bandwidth,
                              distinct=r.distinct_experts).ceiling_tps
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
    """gpu_check_graph.profile_step at top_k `k`, as one JSON line."""
    from gpu_check_graph import profile_step

    from bench.models.pruning import set_top_k

    set_top_k(model, k)
    prof = profile_step(model, batch, PROMPT, opts, top_n=14)
    return {"sec": "profile", "label": label, "batch": batch, "top_k": k, "kernels": prof["kernels_per_step"],
            "kernel_us": round(prof["kernel_time_us"], 1),
            "top": [[t["name"], t["total_us"], t["count"]] for t in prof["top"]]}


def paired_agreement(graph: torch.Tensor, bf16: torch.Tensor, fp32: torch.Tensor) -> dict:
    """Agreement of the graph engine's tokens and of HF bf16's argmax with the float32 argmax on the same
    (sequence, position) tokens, and a paired test of the difference: token level (McNemar: only the tokens
    where exactly one of the two agrees count) and sequence level (mean of per-sequence differences, its
    standard error over sequences: positions of one sequence are not independent)."""
    g = (graph == fp32).float()
    h = (bf16 == fp32).float()
    n = g.numel()
    b = int(((g == 1) & (h == 0)).sum())  # graph right, HF bf16 wrong
    c = int(((g == 0) & (h == 1)).sum())
    diff = (b - c) / n
    se_tok = ((b + c - (b - c) ** 2 / n) ** 0.5) / n if n else 0.0
    per_seq = (g - h).mean(dim=1)
    nseq = per_seq.numel()
    se_seq = float(per_seq.std(unbiased=True) / nseq**0.5) if nseq > 1 else float("nan")
    return {"tokens": n, "sequences": nseq, "graph_vs_fp32": round(g.mean().item(), 4),
            "hf_bf16_vs_fp32": round(h.mean().item(), 4),
            "graph_vs_hf_bf16": round((graph == bf16).float().mean().item(), 4),
            "graph_only_right": b, "hf_bf16_only_right": c, "diff": round(diff, 4),
            "se_token_paired": round(se_tok, 4), "z_token": round(diff / se_tok, 2) if se_tok else None,
            "se_sequence": round(se_seq, 4), "z_sequence": round(diff / se_seq, 2) if se_seq else None,
            "ci95_sequence": [round(diff - 1.96 * se_seq, 4), round(diff + 1.96 * se_seq, 4)],
            "pass_point": g.mean().item() >= h.mean().item(),
            "not_worse_at_95": diff + 1.96 * se_seq >= 0,
            # where a gap sits: the first token (from the prefill's logits), the next 7, the rest; sequences in
            # four blocks of rows (graph, HF bf16 agreement with float32 each)
            "by_position": {name: [round(g[:, sl].mean().item(), 4), round(h[:, sl].mean().item(), 4)]
                            for name, sl in (("0", slice(0, 1)), ("1-7", slice(1, 8)), ("8-", slice(8, None)))},
            "by_row_quarter": [[round(gq.mean().item(), 4), round(hq.mean().item(), 4)]
                               for gq, hq in zip(g.chunk(4), h.chunk(4), strict=True)] if nseq >= 4 else []}


def hf_argmax(model, full: torch.Tensor, sl: slice, chunk: int = 8) -> torch.Tensor:
    """Argmax of HF's logits at positions `sl`, in chunks of sequences (the float32 logits of 32 x 352 positions
    over a 201k vocabulary are 9 GB)."""
    outs = []
    with torch.inference_mode():
        for i in range(0, full.shape[0], chunk):
            outs.append(model(full[i : i + chunk]).logits[:, sl].argmax(-1))
    return torch.cat(outs)


def graph_tokens(model, opts: GraphOptions, ids: torch.Tensor, new: int, one_by_one: bool,
                 rows_per_batch: int | None = None) -> torch.Tensor:
    """The graph engine's greedy tokens for `ids`: as one batch, one sequence at a time (batch 1: the split-K
    qkv/o_proj and batch-1 expert loops), or in batches of `rows_per_batch` sequences."""
    step = 1 if one_by_one else (rows_per_batch or ids.shape[0])
    rows = [ids[i : i + step] for i in range(0, ids.shape[0], step)]
    out = []
    for row in rows:
        eng = GraphEngine(opts)
        out.append(eng.generate(model, row, new).tokens.cuda())
        eng.release()
    return torch.cat(out)


def accuracy(model, opts: GraphOptions, batches: list[int], steps: int = 96, one_by_one: bool = False,
             rows_per_batch: int | None = None) -> list[dict]:
    """One record per batch size b: the engine's tokens for the first b of max(batches) prompts, generated as one
    batch of b (or one by one, or in batches of `rows_per_batch`), against HF bf16 and float32 teacher-forced on those
    tokens. The model is float32 afterwards."""
    from bench.models.loading import set_experts_implementation
    from bench.models.pruning import set_top_k

    set_top_k(model, 4)
    ids = torch.randint(0, model.config.vocab_size, (max(batches), PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(7))
    toks = {b: graph_tokens(model, opts, ids[:b], steps + 1, one_by_one, rows_per_batch) for b in batches}
    full = {b: torch.cat([ids[:b], t], dim=1) for b, t in toks.items()}
    sl = slice(PROMPT - 1, PROMPT - 1 + steps + 1)
    bf16 = {b: hf_argmax(model, f, sl) for b, f in full.items()}
    model.float()
    torch.cuda.empty_cache()
    set_experts_implementation(model, "eager")
    fp32 = {b: hf_argmax(model, f, sl) for b, f in full.items()}
    return [{"sec": "accuracy", "batch": 1 if one_by_one else min(b, rows_per_batch or b), "sequences": b,
             "steps": steps + 1,
             **paired_agreement(toks[b], bf16[b], fp32[b])} for b in batches]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--accuracy-batch", default="32",
                    help="sequences in the accuracy check (96 steps each; 32: 3,104 tokens); a comma-separated "
                         "list checks each batch size on the first that many prompts, in one process")
    ap.add_argument("--accuracy-only", action="store_true", help="only the accuracy check")
    ap.add_argument("--accuracy-one-by-one", action="store_true",
                    help="the accuracy check's sequences generated one at a time (batch 1's kernels)")
    ap.add_argument("--accuracy-rows", type=int, default=None,
                    help="the accuracy check's sequences generated in batches of this many (e.g. 32 sequences as "
                         "four batches of 8: batch 8's kernels with four times the tokens)")
    ap.add_argument("--gemv-micro", action="store_true", help="also the dense GEMV micro-benchmark")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                    help="set kernels.NAME (a flag or a tile table, JSON) first (scripts/gpu_ab.py); repeatable")
    ap.add_argument("--micro", action="store_true",
                    help="micro-benchmarks first (sorted-mode tiles, split-K tiles); their picks replace the "
                         "committed tables in 'after'")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    from gpu_ab import set_kernel_tables

    set_kernel_tables(args.set)
    left = lambda: args.budget_s - (time.time() - T0)  # noqa: E731
    from bench.measure.bandwidth import measure_bandwidth
    from bench.models.loading import load_model
    from bench.models.pruning import prune_model
    from bench.roofline import ArchSummary

    model = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0).model
    emit({"sec": "env", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "commit": os.environ.get("MOE_BENCH_GIT_COMMIT"), "set": args.set, "load_s": round(time.time() - T0, 1)})
    if args.accuracy_only:
        for rec in accuracy(model, GraphOptions(), [int(b) for b in str(args.accuracy_batch).split(",")],
                            one_by_one=args.accuracy_one_by_one, rows_per_batch=args.accuracy_rows):
            emit(rec)
        return 0
    bandwidth = measure_bandwidth("cuda")
    emit({"sec": "bandwidth", "bandwidth_gbs": round(bandwidth / 1e9, 1)})
    if args.gemv_micro:
        try:
            micro_gemv(model)
        except Exception as exc:
            emit({"sec": "gemv", "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]})
    mo: dict = {"scores": {}}
    if args.micro:
        try:
            mo = micro_moe(model)
        except Exception as exc:
            emit({"sec": "moe", "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]})
    committed = (dict(gk.MOE_CONFIG_BIG), gk.SORTED_BM, gk.SORTED_BM_LARGE, gk.ROUTING_SORT,
                 dict(gk.SPLITK_CONFIG))
    main_tables = ({"gate_up": (64, 64, 4, 3), "down": (64, 64, 4, 3)}, 128, 128, "torch", dict(gk.SPLITK_CONFIG))
    picks: dict = {}
    if args.micro:
        if mo["scores"]:
            key = min((k for k in mo["scores"] if k.endswith("triton") and k.startswith("64|")),
                      key=mo["scores"].get)
            picks["moe_config_big"] = mo["configs"][int(key.split("|")[1])] or committed[0]
            emit({"sec": "moe_pick", "cfg": str(picks["moe_config_big"]),
                  "scores": {k: round(v * 1000, 1) for k, v in mo["scores"].items()}})
        try:
            picks["splitk"] = micro_splitk(model)
        except Exception as exc:
            emit({"sec": "splitk", "error": repr(exc)[:400], "tb": traceback.format_exc()[-800:]})
        (OUT / "picks_bf16.json").write_text(json.dumps(picks, default=list))
    before = GraphOptions(splitk=False)  # main (de7112e) had no split-K linears
    after = GraphOptions(splitk=picks.get("splitk", True) is not None)

    def set_tables(new: bool) -> None:
        t = committed if new else main_tables
        gk.MOE_CONFIG_BIG, gk.SORTED_BM, gk.SORTED_BM_LARGE, gk.ROUTING_SORT = dict(t[0]), t[1], t[2], t[3]
        gk.SPLITK_CONFIG.update(t[4])
        if new and picks.get("moe_config_big"):
            gk.MOE_CONFIG_BIG = dict(picks["moe_config_big"])
        if new and picks.get("splitk"):
            gk.SPLITK_CONFIG["small"] = tuple(picks["splitk"])

    def run_cases(cases, arch) -> None:
        for b, k in cases:
            if left() < 45:
                return
            # 2..64 tokens: scan mode, no change touches it (split-K is for 1 row): measured once
            same = 1 < b <= gk.SCAN_MAX_TOKENS
            for label, new in ((("same", True),) if same else (("before", False), ("after", True))):
                set_tables(new)
                emit(time_case(model, b, k, after if new else before, arch, bandwidth, label))

    arch = ArchSummary.from_model(model)
    run_cases([(1, 4), (1, 2)], arch)
    run_cases([(128, 4), (256, 4), (8, 4), (32, 4), (64, 4), (8, 2), (32, 2)], arch)
    set_tables(True)
    for b in (1, 256):
        if left() < 60:
            break
        try:
            emit(profile_case(model, b, 4, after, "after"))
        except Exception as exc:
            emit({"sec": "profile", "batch": b, "error": repr(exc)[:300]})
    if left() > 90:  # E16: the first 16 experts of every layer (as `bench perf --experts 16`)
        prune_model(model, [list(range(16))] * len(model.model.layers))
        torch.cuda.empty_cache()
        arch16 = ArchSummary.from_model(model)
        run_cases([(256, 4), (128, 4), (8, 4), (32, 4), (64, 4), (8, 2), (32, 2)], arch16)
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
