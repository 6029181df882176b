"""Determinism across engines and batch sizes in one process (session 11): the graph engine's greedy tokens for the
same prompts at one batch size, generated again after engines of other batch sizes ran and were released. Every run
of a batch size should give the same tokens bit for bit; a run that differs names state one engine left to the next
(or a race). Synthetic gpt-oss-20b bf16, prompt 256, E32 top_k 4.

    OUT=dir python3 scripts/gpu_batch_repeat.py [--plan 256,256,128,256,32,256] [--new 97]

Writes $OUT/batch_repeat.jsonl: per run, the rows equal to the first run of its batch size and the first
differing position of each differing row."""

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
from bench.models.loading import load_model

PROMPT = 256


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="256,256,128,256,32,256", help="batch sizes, in order")
    ap.add_argument("--new", type=int, default=97)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=JSON")
    args = ap.parse_args()
    from gpu_ab import set_kernel_tables

    set_kernel_tables(args.set)
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "batch_repeat.jsonl")
    t0 = time.time()

    model = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0).model
    plan = [int(b) for b in args.plan.split(",")]
    ids = torch.randint(0, model.config.vocab_size, (max(plan), PROMPT), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(7))
    first: dict[int, torch.Tensor] = {}
    for i, b in enumerate(plan):
        eng = GraphEngine(GraphOptions())
        toks = eng.generate(model, ids[:b], args.new).tokens
        eng.release()
        rec = {"sec": "run", "i": i, "batch": b, "t": round(time.time() - t0, 1)}
        if b in first:
            diff = (toks != first[b])
            rows = diff.any(dim=1)
            firsts = diff.float().argmax(dim=1)[rows]
            rec.update(same_rows=int((~rows).sum()), differing_rows=torch.nonzero(rows).squeeze(1).tolist()[:40],
                       first_diff_pos=firsts.tolist()[:40])
        else:
            first[b] = toks
        log.emit(rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
