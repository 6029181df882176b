"""Is the folded o_proj + residual + norm + router launch (`kernels.splitk_norm_route`, FOLD_NORM_ROUTER) deterministic
on its own? Session 9 found the decode with the fold on gave different tokens from one generation to the next on
gpt-oss-20b pruned to 16 experts (docs/PERF.md); this script runs the kernel alone, many times at the real shapes
(x (1, 4096), o_proj (2880, 4096), h (1, 2880), router (E, 2880)), eagerly and as CUDA-graph replays, alternating two
input sets (so that a launch reading anything the launch before it left behind shows), and reports which output
moves (h, normed, topi, topw) and how often, against the first run and against the two-kernel path
(`splitk_linear` + `add_rmsnorm_route`).

    OUT=$OUT python3 scripts/gpu_fold_repeat.py [--repeats 200] [--experts 16,32] [--top-k 2,4]
    TRITON_INTERPRET=1 python scripts/gpu_fold_repeat.py --device cpu --repeats 2   (a dry run of the script itself)

Records (JSON lines) go to stdout and $OUT/fold_repeat.jsonl.
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

from bench.engines.graph import kernels as gk

OUT = Path(os.environ.get("OUT", "."))


def emit(rec: dict) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    with open(OUT / "fold_repeat.jsonl", "a") as fh:
        fh.write(line + "\n")


def inputs(experts: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device).manual_seed(seed)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    kw = {"device": device, "dtype": dt}
    hidden, kdim = 2880, 4096
    return {"att": torch.randn(1, kdim, generator=g, **kw), "wo": torch.randn(hidden, kdim, generator=g, **kw) * 0.02,
            "bo": torch.randn(hidden, generator=g, **kw), "h": torch.randn(1, hidden, generator=g, **kw),
            "ln": torch.randn(hidden, generator=g, **kw), "rw": torch.randn(experts, hidden, generator=g, **kw) * 0.05,
            "rb": torch.randn(experts, generator=g, **kw)}


def fold(t: dict[str, torch.Tensor], h: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """One launch on input set t (its router and o_proj weights; the residual row h, updated in place)."""
    normed, topi, topw = gk.splitk_norm_route(t["att"], t["wo"], t["bo"], h, t["ln"], 1e-5, t["rw"], t["rb"], k)
    return h, normed, topi, topw


def compare(name: str, runs: list[tuple[torch.Tensor, ...]]) -> dict:
    first = runs[0]
    moved = {out: sum(not torch.equal(r[i], first[i]) for r in runs[1:]) for i, out in
             enumerate(("h", "normed", "topi", "topw"))}
    return {"mode": name, "runs": len(runs), "moved": moved}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--experts", default="16,32")
    ap.add_argument("--top-k", default="2,4")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for experts in (int(e) for e in args.experts.split(",")):
        for k in (int(v) for v in args.top_k.split(",")):
            # two input sets, alternated (A, B, A, B, ...): a launch that read anything left over by the launch
            # before it (a partial, a residual tile, a count) moves away from its set's first result
            sets = [inputs(experts, args.device, seed=experts * 10 + k), inputs(experts, args.device, seed=7 + k)]
            t = sets[0]
            eager: list[list[tuple[torch.Tensor, ...]]] = [[], []]
            cnt_bad = 0
            for i in range(args.repeats):
                s = sets[i % 2]
                eager[i % 2].append(tuple(o.clone() for o in fold(s, s["h"].clone(), k)))
                cnt_bad += int(sum(int(c.abs().sum()) for c in gk._FOLD_COUNTERS.values()) > 0)
            rec = {"experts": experts, "top_k": k, "counts_left_nonzero": cnt_bad,
                   **compare("eager", eager[0]), "moved_b": compare("eager", eager[1])["moved"]}
            h_ref = t["h"].clone()
            want = gk.add_rmsnorm_route(h_ref, gk.splitk_linear(t["att"], t["wo"], t["bo"]), t["ln"], 1e-5, t["rw"],
                                        t["rb"], k)
            first = eager[0][0]
            rec["vs_two_kernels"] = {"h_equal": bool(torch.equal(first[0], h_ref)),
                                     "normed_max_abs": float((first[1].float() - want[0].float()).abs().max()),
                                     "topi_equal": bool(torch.equal(first[2], want[1])),
                                     "topw_max_abs": float((first[3] - want[2]).abs().max())}
            if args.device == "cuda":  # the same launch captured once and replayed, inputs alternated
                xin, hin = t["att"].clone(), t["h"].clone()
                h = hin.clone()
                g = dict(t, att=xin)
                fold(g, h, k)  # warm-up (compile) outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outs = fold(g, h, k)
                replays: list[list[tuple[torch.Tensor, ...]]] = [[], []]
                for i in range(args.repeats):
                    s = sets[i % 2]
                    xin.copy_(s["att"])
                    h.copy_(s["h"])
                    graph.replay()
                    replays[i % 2].append(tuple(o.clone() for o in outs))
                torch.cuda.synchronize()
                rec["graph"] = compare("graph", replays[0])["moved"]
                rec["graph_vs_eager_first"] = {out: bool(torch.equal(replays[0][0][i], eager[0][0][i]))
                                               for i, out in enumerate(("h", "normed", "topi", "topw"))}
            rec["t"] = round(time.time() - t0, 1)
            emit(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
