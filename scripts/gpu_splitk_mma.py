"""Tile sweep of the tensor-core split-K linear (`kernels.splitk_mma_linear`) for decode steps of 2-64 rows, on the
GPU machine (issue 12, session 8): qkv (5120 x 2880) and o_proj (2880 x 4096) of gpt-oss-20b, each timed WITH its
consumer, since the partials change what the consumer reads: qkv -> rope_kv (q roped, k / v written to the cache),
o_proj -> add_rmsnorm (residual add + norm). One row class (M tile 16 / 32 / 64) at a time, at its representative
row count; per launch the 24 layers' weights in turn (no L2 reuse), a CUDA graph, the median
(triton.testing.do_bench_cudagraph), us a layer. Against cuBLAS (F.linear + the same consumer), which is the current
path at 2-64 rows (split-K CUDA-core GEMV only at one row). Candidates (BN, BK, S, num_warps, num_stages); S is a
run-time value, so the S sweep of a tile costs one compile.

    PYTHONUNBUFFERED=1 OUT=... python3 scripts/gpu_splitk_mma.py [--rows 8,32,64] [--check-rows 2,4,20,40]
        [--class-budget 25,25,12] [--budget-s 70]

Writes $OUT/splitk_mma.jsonl (every timing, as it is made) and $OUT/picks.json ({"SPLITK_MMA_CONFIG": table}, for
scripts/gpu_ab.py / gpu_perf_graph.py `--set @picks.json`), rewritten after each site: each (class, site) takes
its fastest candidate if that beats cuBLAS by >= 1%, else None (cuBLAS); classes not reached keep the committed
table. Then --check-rows: the picks against cuBLAS at other row counts of the classes.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jsonl_log import JsonlLog

from bench.engines.graph import kernels as gk

T0 = time.time()
OUT = Path(os.environ.get("OUT", "."))
LAYERS = 24
HIDDEN, HQ, HKV, D = 2880, 64, 8, 64
SITES = {"qkv": ((HQ + 2 * HKV) * D, HIDDEN), "o_proj": (HIDDEN, HQ * D)}
# (BN, BK, num_warps, num_stages): one compile each per M tile; S from SPLITS, kept where the grid has 100-1100 CTAs
# (K and N are run-time values: both sites share a class's compiles). Likeliest first: the budget may cut the tail.
TILES = [(64, 128, 4, 3), (128, 64, 8, 4), (64, 64, 4, 4), (128, 128, 8, 3), (64, 256, 4, 2), (64, 64, 4, 6),
         (128, 64, 4, 4)]
SPLITS = (2, 3, 4, 6, 8, 12)
KEEP = 0.99

emit = JsonlLog(OUT / "splitk_mma.jsonl", T0).emit


def bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=10, return_mode="median"))


class Site:
    """One site's 24 layers of weights, rows and consumer state at `rows` rows; `run(cfg)` = the linear and its
    consumer over every layer (cfg None: cuBLAS)."""

    def __init__(self, site: str, rows: int, gen: torch.Generator) -> None:
        n, k = SITES[site]
        bf = {"device": "cuda", "dtype": torch.bfloat16}
        self.site, self.rows, self.n, self.k = site, rows, n, k
        self.ws = [torch.randn(n, k, generator=gen, **bf) * 0.02 for _ in range(LAYERS)]
        self.bs = [torch.randn(n, generator=gen, **bf) * 0.1 for _ in range(LAYERS)]
        self.xs = [torch.randn(rows, k, generator=gen, **bf) for _ in range(LAYERS)]
        if site == "qkv":
            self.cos = torch.randn(512, D // 2, generator=gen, device="cuda")
            self.sin = torch.randn(512, D // 2, generator=gen, device="cuda")
            self.pos = torch.tensor(300, device="cuda")
            self.kc = [torch.zeros(rows, HKV, 512, D, **bf) for _ in range(LAYERS)]
            self.vc = [torch.zeros(rows, HKV, 512, D, **bf) for _ in range(LAYERS)]
        else:
            self.h = [torch.randn(rows, n, generator=gen, **bf) for _ in range(LAYERS)]
            self.ln = torch.randn(n, generator=gen, **bf)

    def linear(self, i: int, cfg):
        if cfg is None:
            return torch.nn.functional.linear(self.xs[i], self.ws[i], self.bs[i])
        return gk.splitk_mma_linear(self.xs[i], self.ws[i], self.bs[i], cfg)

    def run(self, cfg) -> None:
        for i in range(LAYERS):
            y = self.linear(i, cfg)
            if self.site == "qkv":
                gk.rope_kv(y, self.cos, self.sin, self.pos, self.kc[i], self.vc[i], HQ, False, 0)
            else:
                gk.add_rmsnorm(self.h[i], y, 1, self.ln, 1e-5)

    def error(self, cfg) -> float:
        """Relative error of the linear's output (bf16, as the consumer rounds it) against cuBLAS's."""
        errs = []
        for i in (0, LAYERS - 1):
            ref = self.linear(i, None).float()
            got = self.linear(i, cfg).materialize().float()
            errs.append(((got - ref).norm() / ref.norm()).item())
        return max(errs)

    def time_us(self, cfg) -> float:
        return 1000 * bench(lambda: self.run(cfg)) / LAYERS


def candidates(site: str, bm: int) -> list[tuple[int, ...]]:
    """Per tile, the (up to) three S whose grids come nearest 2, 3 and 4 CTAs an SM (132 SMs)."""
    n, _ = SITES[site]
    out = []
    for bn, bk, warps, stages in TILES:
        if bm == 64 and bn == 128 and warps == 4:
            continue  # a 128 x 64 fp32 accumulator on 4 warps: 64 registers a thread for it alone
        tiles = -(-n // bn)
        near = {min(SPLITS, key=lambda s, t=t: abs(tiles * s - t)) for t in (264, 396, 528)}
        out += [(bn, bk, s, warps, stages) for s in sorted(near)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="8,32,64", help="one row count per M-tile class (16 / 32 / 64)")
    ap.add_argument("--check-rows", default="2,4,20,40", help="then these row counts: cuBLAS vs the class's pick")
    ap.add_argument("--class-budget", default="25,25,12",
                    help="seconds of candidates per class of --rows (half to qkv, the rest to o_proj)")
    ap.add_argument("--budget-s", type=float, default=70, help="no --check-rows past this (+10 s)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    table = {bm: dict(v) for bm, v in gk.SPLITK_MMA_CONFIG.items()}
    picks_path = OUT / "picks.json"

    def save() -> None:
        picks_path.write_text(json.dumps({"SPLITK_MMA_CONFIG": {str(b): v for b, v in table.items()}}))

    save()
    emit({"sec": "env", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "commit": os.environ.get("MOE_BENCH_GIT_COMMIT"), "committed": {str(b): v for b, v in table.items()}})
    gen = torch.Generator("cuda").manual_seed(0)
    row_list = [int(r) for r in args.rows.split(",") if r]
    budgets = [float(b) for b in args.class_budget.split(",")]
    for rows, per_class in zip(row_list, budgets, strict=True):
        bm = gk.splitk_mma_bm(rows)
        t_class = time.time()
        for site in SITES:
            st = Site(site, rows, gen)
            nbytes = st.n * st.k * 2
            base = st.time_us(None)
            emit({"sec": "time", "rows": rows, "bm": bm, "site": site, "cfg": "cublas", "us": round(base, 2),
                  "tb_s": round(nbytes / base / 1e6, 2)})
            committed = table.get(bm, {}).get(site)
            cands = ([committed] if committed else []) + [c for c in candidates(site, bm) if c != committed]
            best, best_us = None, base
            for cfg in cands:
                if time.time() - t_class > per_class / 2 * (1 if site == "qkv" else 2):
                    emit({"sec": "skip", "rows": rows, "site": site, "left": len(cands)})
                    break
                try:
                    us, err = st.time_us(cfg), st.error(cfg)
                except Exception as exc:  # a tile that does not compile / fit
                    emit({"sec": "error", "rows": rows, "site": site, "cfg": cfg, "error": repr(exc)[:300]})
                    continue
                emit({"sec": "time", "rows": rows, "bm": bm, "site": site, "cfg": cfg, "us": round(us, 2),
                      "tb_s": round(nbytes / us / 1e6, 2), "vs_cublas": round(us / base, 4), "rel_err": err})
                if err < 2e-2 and us < best_us:
                    best, best_us = cfg, us
            pick = best if best is not None and best_us <= KEEP * base else None
            table.setdefault(bm, {})[site] = pick
            emit({"sec": "pick", "rows": rows, "bm": bm, "site": site, "cfg": pick, "us": round(best_us, 2),
                  "cublas_us": round(base, 2)})
            save()
            del st
            torch.cuda.empty_cache()
    for rows in [int(r) for r in args.check_rows.split(",") if r]:
        if time.time() - T0 > args.budget_s + 10:
            break
        for site in SITES:
            cfg = table.get(gk.splitk_mma_bm(rows), {}).get(site)
            st = Site(site, rows, gen)
            base = st.time_us(None)
            us = st.time_us(cfg) if cfg else base
            emit({"sec": "check", "rows": rows, "site": site, "cfg": cfg, "us": round(us, 2),
                  "cublas_us": round(base, 2)})
            del st
    emit({"sec": "done", "table": {str(b): v for b, v in table.items()}, "total_s": round(time.time() - T0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
