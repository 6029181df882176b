"""GPU check of the `graph` engine on synthetic gpt-oss-20b (bf16): logits of the first 32 decode steps against
a Hugging Face forward of the same tokens, a kernel profile of one decode step (batch 1 top_k 4 and 2, batch 32),
and ablation timings (one kernel choice changed at a time: router, MoE grid, MoE tiles at batch 1).

    PYTHONUNBUFFERED=1 python scripts/gpu_check_graph.py [--out DIR] [--skip-ablation] [--sharp]

Writes check.json (and prints it) to --out (default $OUT or .). Exit 1 if the logits disagree.

bf16 tolerance: random-weight routers have near-ties that bf16 rounding flips, so even two Hugging Face
expert kernels (grouped_mm vs eager) disagree noticeably. The check reports HF eager vs HF grouped_mm as the
yardstick and requires graph vs HF to be no worse (mean cosine within 0.02, min cosine within 0.05). It also
can report a run with routers sharpened x10 (--sharp; information only: HF's own kernels diverge there as well).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph import kernels as graph_kernels
from bench.models.loading import load_model, set_experts_implementation
from bench.models.pruning import set_top_k

STEPS = 32


def _graph_logits(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Graph-engine logits of the first STEPS steps (prefill + STEPS-1 replays) and the tokens it chose."""
    eng = GraphEngine(keep_logits=True)
    eng.prepare(model, ids, STEPS + 1)
    dec = eng.decoder
    got = []
    with torch.inference_mode():
        dec.prefill(ids)
        got.append(dec.logits.float().clone())
        for _ in range(STEPS - 1):
            eng.step()
            got.append(dec.logits.float().clone())
        torch.cuda.synchronize()
        toks = dec.out_tokens[:, :STEPS].clone()
    eng.release()
    return torch.stack(got, dim=1), toks


def _hf_logits(model, full: torch.Tensor, prompt_len: int, experts_impl: str) -> torch.Tensor:
    set_experts_implementation(model, experts_impl)
    with torch.inference_mode():
        return model(full).logits[:, prompt_len - 1 : prompt_len - 1 + STEPS].float()


def _compare(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = (got - want).abs()
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1), dim=-1)
    top5 = want.topk(5, dim=-1).indices
    return {
        "max_abs_diff": round(diff.max().item(), 4),
        "mean_abs_diff": round(diff.mean().item(), 4),
        "max_abs_logit": round(want.abs().amax().item(), 3),
        "min_cosine": round(cos.min().item(), 5),
        "mean_cosine": round(cos.mean().item(), 5),
        "argmax_agreement": round((got.argmax(-1) == want.argmax(-1)).float().mean().item(), 4),
        "argmax_in_top5": round((got.argmax(-1).unsqueeze(-1) == top5).any(-1).float().mean().item(), 4),
    }


def check_logits(model, prompt_len: int, router_scale: float) -> dict:
    """Graph vs HF (grouped_mm experts, the default) and, as the bf16 yardstick, HF eager experts vs HF
    grouped_mm. router_scale > 1 sharpens the routers so that bf16 noise cannot flip expert choices."""
    if router_scale != 1.0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.router.weight.mul_(router_scale)
    try:
        torch.manual_seed(1)
        ids = torch.randint(0, model.config.vocab_size, (2, prompt_len), device="cuda")
        got, toks = _graph_logits(model, ids)
        full = torch.cat([ids, toks], dim=1)
        ref = _hf_logits(model, full, prompt_len, "grouped_mm")
        try:
            alt = _hf_logits(model, full, prompt_len, "eager")
        except Exception as exc:  # the yardstick is optional
            print(f"hf eager experts failed: {exc}", flush=True)
            alt = ref
        set_experts_implementation(model, "grouped_mm")
    finally:
        if router_scale != 1.0:
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.mlp.router.weight.div_(router_scale)
    return {
        "steps": STEPS,
        "batch": 2,
        "prompt_len": prompt_len,
        "router_scale": router_scale,
        "graph_vs_hf": _compare(got, ref),
        "hf_eager_vs_hf": _compare(alt, ref),
        "graph_vs_hf_eager": _compare(got, alt),
    }


def profile_step(model, batch: int, prompt_len: int, opts: GraphOptions | None = None, top_n: int = 12) -> dict:
    """One eager decode step (`opts` with capture off) under torch.profiler: kernels per step, their total time,
    and the `top_n` kernel families by time."""
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device="cuda")
    eng = GraphEngine(GraphOptions(**{**(opts or GraphOptions()).to_dict(), "capture": "off"}))
    eng.prepare(model, ids, 8)
    dec = eng.decoder
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        dec.decode_step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.decode_step()
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            t = getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0)
            kernels.setdefault(ev.name[:60], []).append(t)
    count = sum(len(v) for v in kernels.values())
    top = sorted(((sum(v), len(v), k) for k, v in kernels.items()), reverse=True)[:top_n]
    eng.release()
    return {
        "batch": batch,
        "kernels_per_step": count,
        "kernel_time_us": sum(sum(v) for v in kernels.values()),
        "top": [{"name": k, "total_us": round(t, 1), "count": n} for t, n, k in top],
    }


def time_engine(model, batch: int, prompt_len: int, new_tokens: int, **kw) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device="cuda")
    eng = GraphEngine(GraphOptions(**kw))
    try:
        eng.prepare(model, ids, new_tokens)
        res = [eng.generate(model, ids, new_tokens) for _ in range(2)]
        ms = min(1000 * r.decode_s / (new_tokens - 1) for r in res)
        return {"batch": batch, **{k: str(v) for k, v in kw.items()}, "ms_per_step": round(ms, 3),
                "tok_s": round(batch * 1000 / ms, 1), "distinct": res[-1].distinct_experts}
    except Exception as exc:
        return {"batch": batch, **{k: str(v) for k, v in kw.items()}, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        eng.release()


def ablation(model, prompt_len: int) -> list[dict]:
    """Batch-1 and batch-32 step times with one choice changed at a time (GraphOptions, or a kernels table)."""
    rows: list[dict] = []

    def timed(label: str, batch: int, k: int, _engine: dict | None = None, **patch) -> None:
        set_top_k(model, k)
        saved = {name: getattr(graph_kernels, name) for name in patch}
        for name, value in patch.items():
            setattr(graph_kernels, name, value)
        try:
            r = time_engine(model, batch, prompt_len, 64, **(_engine or {}))
        finally:
            for name, value in saved.items():
                setattr(graph_kernels, name, value)
        r.update(label=label, top_k=k)
        rows.append(r)
        print(json.dumps(r), flush=True)

    few = [
        {"gate_up": (32, 128, 4, 4), "down": (16, 128, 4, 4)},
        {"gate_up": (64, 256, 4, 3), "down": (32, 256, 4, 3)},
        {"gate_up": (32, 128, 4, 6), "down": (16, 256, 4, 4)},
    ]
    for k in (4, 2):
        timed("shipped", 1, k)
        timed("per-token router", 1, k, _engine={"router_split": False})
        timed("MoE grid over all experts", 1, k, _engine={"moe_compact": False})
        timed("previous engine (per-token router, all-expert grid)", 1, k,
              _engine={"router_split": False, "moe_compact": False})
        for cfg in few:
            timed(f"MOE_CONFIG_FEW {cfg}", 1, k, MOE_CONFIG_FEW=cfg)
    timed("router BH 32", 1, 4, ROUTER_BH=32)
    timed("router BH 128", 1, 4, ROUTER_BH=128)
    timed("shipped", 32, 4)
    timed("per-token router", 32, 4, _engine={"router_split": False})
    timed("torch ops + grouped_mm (no Triton)", 1, 4, _engine={"kernels": "torch", "experts": "grouped_mm"})
    set_top_k(model, 4)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--sharp", action="store_true", help="also compare with routers sharpened x10 (information)")
    args = ap.parse_args()
    t0 = time.time()
    loaded = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0)
    model = loaded.model
    set_top_k(model, 4)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "build_s": time.time() - t0,
                    "commit": os.environ.get("MOE_BENCH_GIT_COMMIT")}
    report["logits"] = check_logits(model, args.prompt_len, 1.0)
    print(json.dumps(report["logits"]), flush=True)
    plain, yard = report["logits"]["graph_vs_hf"], report["logits"]["hf_eager_vs_hf"]
    # Pass: graph vs HF no worse than HF's own two expert kernels against each other. The sharpened run is
    # reported only: on the 24-layer model HF eager vs HF grouped_mm diverge there too (mean cosine 0.72).
    report["ok"] = (
        plain["mean_cosine"] >= yard["mean_cosine"] - 0.02 and plain["min_cosine"] >= yard["min_cosine"] - 0.05
    )
    if args.sharp:
        report["logits_sharp"] = check_logits(model, args.prompt_len, 10.0)
        print(json.dumps(report["logits_sharp"]), flush=True)
    for b, k in ((1, 4), (1, 2), (32, 4)):
        set_top_k(model, k)
        try:
            report[f"profile_b{b}_k{k}"] = profile_step(model, b, args.prompt_len)
            print(json.dumps(report[f"profile_b{b}_k{k}"]), flush=True)
        except Exception as exc:
            report[f"profile_b{b}_k{k}"] = {"error": f"{type(exc).__name__}: {exc}"}
    set_top_k(model, 4)
    if not args.skip_ablation:
        report["ablation"] = ablation(model, args.prompt_len)
    report["total_s"] = time.time() - t0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "check.json").write_text(json.dumps(report, indent=1))
    print("ABLATION SUMMARY")
    for r in report.get("ablation", []):
        print(f"  b{r['batch']:<2d} k{r['top_k']} {r.get('ms_per_step', r.get('error'))!s:>8} ms  {r['label']}")
    print(json.dumps({"ok": report["ok"], "logits": plain, "yardstick": yard, "total_s": report["total_s"]}))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
