"""Where does the folded o_proj + norm + router (`kernels.splitk_norm_route`, FOLD_NORM_ROUTER) go wrong inside the
decode of gpt-oss-20b? Session 9 found the decode with the fold on gave different tokens from one generation to the
next on the model pruned to 16 experts (docs/PERF.md); this script records, for every fold launch of a generation,
its inputs (the attention row, the residual row before) and outputs (the residual row after, normed, top-k ids and
weights) and the fold's counters right after it, then checks each launch against:

- the same fold re-run alone on the recorded inputs (`alone`): a launch that differs raced with its neighbours;
- the two-kernel path (`splitk_linear` + `add_rmsnorm_route`) on the same inputs (`two_kernel`): the residual row
  must be bit-identical (the same slice order), the ids equal;
- the counters: every count must be back at zero after a launch.

Two modes per model: `eager` (no CUDA graph, the recorded copies run right after each fold) and `graph` (the copies
are captured into the step's CUDA graph, so each replay refreshes them; read back after every replay).

    OUT=$OUT python3 scripts/gpu_fold_trace.py [--experts 32,16] [--top-k 4] [--steps 8]

Records (JSON lines) go to stdout and $OUT/fold_trace.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jsonl_log import JsonlLog

from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph import kernels as gk

OUT = Path(os.environ.get("OUT", "."))
T0 = time.time()
emit = JsonlLog(OUT / "fold_trace.jsonl", T0).emit
FOLD = gk.splitk_norm_route
PROMPT = 256
DEVICE = "cuda"


class Recorder:
    """Wraps kernels.splitk_norm_route: each launch's inputs and outputs copied into tensors of its own (inside a
    capture, the copies are part of the graph)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, x, weight, bias, h, nweight, eps, rweight, rbias, k, config=None):
        h_in = h.clone()
        normed, topi, topw, _, ss, rl = gk.fold_launch(x, weight, bias, h, nweight, eps, rweight, rbias, k, config)
        cnt = torch.cat([c.view(-1) for c in gk._FOLD_COUNTERS.values()])
        self.calls.append({"x": x.clone(), "h_in": h_in, "h": h.clone(), "normed": normed.clone(),
                           "topi": topi.clone(), "topw": topw.clone(), "cnt": cnt.clone(), "ss": ss.clone(),
                           "rl": rl.clone(),
                           "args": (weight, bias, nweight, eps, rweight, rbias, k, config)})
        return normed, topi, topw


def snapshot(calls: list[dict]) -> list[dict]:
    return [{n: (v.clone() if isinstance(v, torch.Tensor) else v) for n, v in c.items()} for c in calls]


def check(calls: list[dict]) -> dict:
    """Each recorded launch against the fold alone and the two-kernel path on its inputs."""
    out = {"launches": len(calls), "cnt_nonzero": 0, "alone_h": 0, "alone_normed": 0, "alone_topi": 0,
           "alone_topw": 0, "two_kernel_h": 0, "two_kernel_topi": 0, "alone_two_kernel_topi": 0, "alone_ss": 0,
           "alone_rl": 0, "rl_tiles_moved": 0, "rl_err_insitu": 0.0, "rl_err_alone": 0.0, "rl_cols_moved": [],
           "first_bad": None}
    cols: set[int] = set()
    for i, c in enumerate(calls):
        weight, bias, nweight, eps, rweight, rbias, k, config = c["args"]
        bad = []
        if int(c["cnt"].abs().sum()):
            out["cnt_nonzero"] += 1
            bad.append("cnt")
        h = c["h_in"].clone()
        normed, topi, topw, _, ss, rl = gk.fold_launch(c["x"], weight, bias, h, nweight, eps, rweight, rbias, k, config)
        # each tile's router partial logits in float64 from the residual row after the launch
        e = rweight.shape[0]
        nt = rl.shape[0]
        bn = -(-h.shape[1] // nt)
        prod = (rweight.double() * (nweight.double() * c["h"].double().view(-1))[None, :])
        ref = torch.zeros(nt, e, dtype=torch.float64, device=h.device)
        ref.index_add_(0, torch.arange(h.shape[1], device=h.device) // bn, prod.t())
        out["rl_err_insitu"] = max(out["rl_err_insitu"], float((c["rl"][:, :e].double() - ref).abs().max()))
        out["rl_err_alone"] = max(out["rl_err_alone"], float((rl[:, :e].double() - ref).abs().max()))
        moved = (c["rl"] != rl).any(dim=1)
        out["rl_tiles_moved"] += int(moved.sum())
        cols.update((c["rl"] != rl).any(dim=0).nonzero().view(-1).tolist())
        for name, mine, alone in (("h", c["h"], h), ("normed", c["normed"], normed), ("topi", c["topi"], topi),
                                  ("topw", c["topw"], topw), ("ss", c["ss"], ss), ("rl", c["rl"], rl)):
            if not torch.equal(mine, alone):
                out[f"alone_{name}"] += 1
                bad.append(f"alone_{name}")
        h2 = c["h_in"].clone()
        _, topi2, _ = gk.add_rmsnorm_route(h2, gk.splitk_linear(c["x"], weight, bias), nweight, eps, rweight, rbias, k)
        if not torch.equal(h2, c["h"]):
            out["two_kernel_h"] += 1
            bad.append("two_kernel_h")
        if not torch.equal(topi2, c["topi"]):
            out["two_kernel_topi"] += 1
            bad.append("two_kernel_topi")
        out["alone_two_kernel_topi"] += int(not torch.equal(topi2, topi))
        if bad and out["first_bad"] is None:
            out["first_bad"] = {"launch": i, "what": bad, "cnt": c["cnt"].nonzero().view(-1).tolist()[:8],
                                "h_max_abs": float((c["h"].float() - h.float()).abs().max()),
                                "normed_max_abs": float((c["normed"].float() - normed.float()).abs().max()),
                                "rl_tiles": moved.nonzero().view(-1).tolist()[:12]}
    out["rl_cols_moved"] = sorted(cols)
    return out


def run(model, experts: int, k: int, steps: int, mode: str) -> None:
    from bench.models.pruning import set_top_k

    set_top_k(model, k)
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), device=DEVICE,
                        generator=torch.Generator(DEVICE).manual_seed(1))
    rec = Recorder()
    gk.splitk_norm_route = rec
    try:
        opts = {"capture": "on" if mode == "graph" else "off"}
        if DEVICE == "cpu":
            opts.update(kernels="triton", experts="triton")
        eng = GraphEngine(GraphOptions(**opts))
        before = [int(c.abs().sum()) for c in gk._FOLD_COUNTERS.values()]
        eng.prepare(model, ids, steps + 1)
        tokens = []
        if mode == "graph":
            captured = rec.calls[-len(model.model.layers):]  # the copies inside the graph
            with torch.inference_mode():  # as GraphEngine.generate
                for gen in range(2):
                    eng.decoder.prefill(ids)
                    per_step = []
                    for _ in range(steps):
                        eng.step()
                        torch.cuda.synchronize()
                        per_step.append(snapshot(captured))
                    tokens.append(eng.decoder.out_tokens.cpu().clone())
                    res = check([c for s in per_step for c in s])
                    emit({"sec": "check", "mode": mode, "experts": experts, "top_k": k, "gen": gen, **res})
        else:
            for gen in range(2):
                rec.calls.clear()
                r = eng.generate(model, ids, steps + 1)
                tokens.append(r.tokens.clone())
                res = check(snapshot(rec.calls))
                emit({"sec": "check", "mode": mode, "experts": experts, "top_k": k, "gen": gen, **res})
        emit({"sec": "tokens", "mode": mode, "experts": experts, "top_k": k, "counters_before": before,
              "same_tokens": bool(torch.equal(tokens[0], tokens[1])),
              "counters_after": [int(c.abs().sum()) for c in gk._FOLD_COUNTERS.values()]})
        eng.release()
    except Exception as exc:  # a record, then the next case
        import traceback

        emit({"sec": "error", "mode": mode, "experts": experts, "top_k": k, "error": repr(exc)[:300],
              "tb": traceback.format_exc()[-1500:]})
    finally:
        gk.splitk_norm_route = FOLD


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", default="32,16")
    ap.add_argument("--top-k", default="4")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--modes", default="graph,eager")
    ap.add_argument("--model", default="synthetic:gpt-oss-20b")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run under TRITON_INTERPRET=1 (eager mode only)")
    args = ap.parse_args()
    global DEVICE, PROMPT
    DEVICE = args.device
    if DEVICE == "cpu":
        PROMPT = 8
    OUT.mkdir(parents=True, exist_ok=True)
    from bench.models.loading import load_model
    from bench.models.pruning import prune_model

    gk.FOLD_NORM_ROUTER = True
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = load_model(args.model, device=DEVICE, dtype=dtype, seed=0).model
    emit({"sec": "env", "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
          "commit": os.environ.get("MOE_BENCH_GIT_COMMIT")})
    for experts in (int(e) for e in args.experts.split(",")):
        if experts < model.config.num_local_experts:
            prune_model(model, [list(range(experts))] * len(model.model.layers))
        for k in (int(v) for v in args.top_k.split(",")):
            for mode in args.modes.split(","):
                run(model, experts, k, args.steps, mode)
    emit({"sec": "done", "total_s": round(time.time() - T0, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
