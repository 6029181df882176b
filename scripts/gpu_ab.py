"""Same-card A/B of two source trees (e.g. main's checkout and this branch): the graph engine's ms/step at a few
batch sizes, run with the `bench` package of --root, so that two processes on one GPU compare code, not cards.

    PYTHONUNBUFFERED=1 python scripts/gpu_ab.py --root PATH --label NAME [--cases 1x4,8x4,32x4] [--experts 16]
        [--cases16 8x2,32x4] [--splitk-rows N] [--set NAME=JSON ...]

Uses only APIs both trees have (GraphEngine, GraphOptions, load_model, measure_bandwidth, ArchSummary,
roofline_point). Prompt 256, 33 new tokens (32 timed steps), best of 2 generations, E32 (or --experts 16); then
--cases16 with every layer pruned to its first 16 experts, in the same process; one JSON line per case appended to
$OUT/ab.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROMPT, NEW = 256, 33


def _table(value):
    """JSON -> the kernels module's table types: lists become tuples, digit keys ints (MOE_CONFIG_BM's M tiles)."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _table(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_table(v) for v in value)
    return value


def set_kernel_tables(assignments: list[str]) -> None:
    """NAME=JSON -> bench.engines.graph.kernels.NAME (lists inside a table become tuples); @FILE: every NAME: value
    of a JSON object in FILE (scripts/gpu_step_ablation.py's picks.json)."""
    from bench.engines.graph import kernels

    pairs = []
    for item in assignments:
        if item.startswith("@"):
            pairs += list(json.loads(Path(item[1:]).read_text()).items())
        else:
            name, _, raw = item.partition("=")
            pairs.append((name, json.loads(raw)))
    for name, value in pairs:
        value = _table(value)
        if not hasattr(kernels, name):
            raise SystemExit(f"--set {name}: kernels has no such name")
        setattr(kernels, name, value)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="source tree whose `bench` package runs")
    ap.add_argument("--label", required=True)
    ap.add_argument("--cases", default="1x4,8x4,32x4", help="BATCHxTOP_K, comma-separated")
    ap.add_argument("--experts", type=int, default=32, help="prune every layer to its first N experts (16: E16)")
    ap.add_argument("--cases16", default="", help="after --cases: these cases with the model pruned to 16 experts")
    ap.add_argument("--splitk-rows", type=int, default=None,
                    help="set kernels.SPLITK_MAX_ROWS (split-K qkv/o_proj up to this many rows) before measuring")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                    help="set kernels.NAME (a flag or a tile table, JSON) before measuring; repeatable; "
                         "@FILE: every entry of a JSON object")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.root).resolve()))
    import torch

    import bench
    from bench.engines.graph import GraphEngine, GraphOptions
    from bench.measure.bandwidth import measure_bandwidth
    from bench.models.loading import load_model
    from bench.models.pruning import set_top_k
    from bench.roofline import ArchSummary, mean_decode_context, roofline_point

    if args.splitk_rows is not None:
        from bench.engines.graph import kernels

        kernels.SPLITK_MAX_ROWS = args.splitk_rows
    set_kernel_tables(args.set)
    model = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0).model
    if args.experts < model.config.num_local_experts:
        from bench.models.pruning import prune_model

        prune_model(model, [list(range(args.experts))] * len(model.model.layers))
        torch.cuda.empty_cache()
    bandwidth = measure_bandwidth("cuda")
    arch = ArchSummary.from_model(model)
    out = Path(os.environ.get("OUT", ".")) / "ab.jsonl"
    experts = args.experts
    todo = [(c, False) for c in args.cases.split(",") if c] + [(c, True) for c in args.cases16.split(",") if c]
    for case, e16 in todo:
        if e16 and experts != 16:
            from bench.models.pruning import prune_model

            prune_model(model, [list(range(16))] * len(model.model.layers))
            torch.cuda.empty_cache()
            experts, arch = 16, ArchSummary.from_model(model)
        batch, k = (int(v) for v in case.split("x"))
        set_top_k(model, k)
        ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                            generator=torch.Generator("cuda").manual_seed(batch))
        eng = GraphEngine(GraphOptions())
        eng.prepare(model, ids, NEW)
        r = min((eng.generate(model, ids, NEW) for _ in range(2)), key=lambda r: r.decode_s)
        eng.release()
        tps = batch * (NEW - 1) / r.decode_s
        ceil = roofline_point(arch, batch, k, mean_decode_context(PROMPT, NEW), bandwidth,
                              distinct=r.distinct_experts).ceiling_tps
        rec = {"label": args.label, "bench": str(Path(bench.__file__).parent), "experts": experts,
               "batch": batch, "top_k": k, "ms_step": round(1000 * r.decode_s / (NEW - 1), 3), "tok_s": round(tps, 1),
               "roofline_pct": round(100 * tps / ceil, 1), "bandwidth_gbs": round(bandwidth / 1e9, 1),
               "splitk_rows": args.splitk_rows, "set": args.set, "t": round(time.time(), 1)}
        print(json.dumps(rec), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
