"""Dashboard render time per page on a large database (default 100,000 points), measured with AppTest.

    .venv/bin/python scripts/perf_dashboard.py [--points 100000] [--db /tmp/perf.duckdb] [--keep]

Builds the database through bench.store (50 sweeps x 10 variants x 10 batch sizes x N repeats), then opens
each page in a fresh AppTest session twice: "cold" (first render after the database changed, so the cached
queries run) and "warm" (same session, cache hit). Prints a markdown table and a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from bench import store  # noqa: E402
from bench.records import EnvFingerprint, PointRecord, RunRecord, SweepRecord  # noqa: E402

PAGES = ["pages/overview.py", "pages/scaling.py", "pages/memory.py", "pages/compare.py", "pages/history.py",
         "pages/runs.py", "pages/export.py"]
# The views drawn on request (issue 13): page, the query parameter that opens the view, its value.
VIEWS = [("pages/scaling.py", "scaling_view", "Pareto"), ("pages/scaling.py", "scaling_view", "Energy & cost"),
         ("pages/compare.py", "cmp_view", "Pareto"), ("pages/compare.py", "cmp_view", "Heatmap: many variants"),
         ("pages/compare.py", "cmp_view", "Energy & cost")]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
VARIANTS = [("base_topk4", 32, 4), ("base_topk2", 32, 2), ("prune24_topk4", 24, 4), ("prune24_topk2", 24, 2),
            ("prune16_topk4", 16, 4), ("prune16_topk2", 16, 2), ("union50_topk4", 16, 4), ("union50_topk2", 16, 2),
            ("prune8_topk4", 8, 4), ("prune8_topk2", 8, 2)]


def build(db: Path, n_points: int, sweeps: int = 50) -> int:
    rng = random.Random(0)
    repeats = max(1, n_points // (sweeps * len(VARIANTS) * len(BATCHES)))
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    runs, points = [], []
    for s in range(sweeps):
        when = t0 + timedelta(hours=6 * s)
        sid = f"perf-{s:03d}"
        store.insert_sweep(db, SweepRecord(sweep_id=sid, title=f"perf sweep {s}", spec_json="{}", state="done",
                                           points_planned=len(VARIANTS) * len(BATCHES) * repeats,
                                           points_done=len(VARIANTS) * len(BATCHES) * repeats, created_at=when,
                                           started_at=when, finished_at=when + timedelta(hours=1)))
        card = "NVIDIA H100 80GB HBM3" if s % 2 else "NVIDIA H200"
        for v, (name, experts, top_k) in enumerate(VARIANTS):
            rid = f"{sid}-{name}"
            runs.append(RunRecord(
                run_id=rid, sweep_id=sid, name=name, model="synthetic:gpt-oss-20b", top_k=top_k, engine="graph",
                dtype="bfloat16", device="cuda", prompt_len=256, new_tokens=256, repeats=repeats, seed=0,
                experts=experts, base_experts=32, prune=None if experts == 32 else {"experts": experts,
                                                                                   "method": "frequency"},
                env=EnvFingerprint(device_name=card, device_kind="cuda", torch="2.11.0", transformers="5.17.0"),
                config_json="{}", state="done", started_at=when + timedelta(minutes=5 * v),
                finished_at=when + timedelta(minutes=5 * v + 4)))
            weights = 3.0 + 36.0 * experts / 32
            for b in BATCHES:
                ceiling = 400.0 * b / (1 + b * 0.02) * (32 / experts) ** 0.5
                for r in range(repeats):
                    tps = ceiling * 0.5 * (1 + rng.gauss(0, 0.03))
                    mem = weights + 0.02 * b
                    points.append(PointRecord(
                        run_id=rid, batch=b, repeat=r, status="ok", total_tps=tps, per_stream_tps=tps / b,
                        decode_s=b * 255 / tps, prefill_s=0.05, tpot_p50_ms=1000 * b / tps, mem_weights_gib=weights,
                        mem_peak_alloc_gib=mem, mem_peak_reserved_gib=mem + 1, mem_nvml_peak_gib=mem + 1.6,
                        mem_used_gib=mem + 1.6, ceiling_tps=ceiling, mbu=tps / ceiling,
                        energy_j_per_token=700.0 / tps))
    store.insert_imported(db, runs, [])
    # 100,000 single-row INSERTs take many minutes; load the points in one bulk insert through the store's writer.
    frame = pd.DataFrame([store.point_row(p) for p in points])
    with store.writer(db) as con:
        con.register("new_points", frame)
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        con.execute(f"INSERT INTO points ({cols}) SELECT {cols} FROM new_points")
        con.unregister("new_points")
    return len(points)


def render_times(db: Path) -> dict[str, dict[str, float]]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["BENCH_DB"] = str(db)
    out: dict[str, dict[str, float]] = {}
    for page in PAGES:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.run()
        st.cache_data.clear()  # cold: no cached DataFrames
        t = time.perf_counter()
        at.switch_page(page).run()
        cold = time.perf_counter() - t
        if at.exception:
            raise SystemExit(f"{page}: {at.exception[0].value}")
        warm = []
        for _ in range(3):
            t = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - t)
        out[page] = {"cold_s": cold, "warm_s": statistics.median(warm)}
    out.update(view_times())
    # Export with every run selected (all points): the page must stay fast; the files are built on click.
    from bench.store import queries

    all_ids = queries.runs(db)["run_id"].tolist()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/export.py").run()
    st.cache_data.clear()
    t = time.perf_counter()
    at.multiselect(key="export_runs").set_value(all_ids).run()
    cold = time.perf_counter() - t
    if at.exception:
        raise SystemExit(f"export (all runs): {at.exception[0].value}")
    t = time.perf_counter()
    at.run()
    out["pages/export (all runs).py"] = {"cold_s": cold, "warm_s": time.perf_counter() - t}
    return out


def view_times() -> dict[str, dict[str, float]]:
    """The on-request views, opened as a shared link opens them (the query parameter set from the first run)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    out: dict[str, dict[str, float]] = {}
    for page, key, value in VIEWS:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.query_params[key] = value
        at.run()
        st.cache_data.clear()
        t = time.perf_counter()
        at.switch_page(page).run()
        cold = time.perf_counter() - t
        if at.exception:
            raise SystemExit(f"{page} {value}: {at.exception[0].value}")
        t = time.perf_counter()
        at.run()
        out[f"{Path(page).stem}: {value}.py"] = {"cold_s": cold, "warm_s": time.perf_counter() - t}
    return out


def export_times(db: Path) -> dict[str, float]:
    """Seconds to build each export of every run (what a download button does when clicked)."""
    from bench.report import export_selection
    from bench.store import queries

    ids = queries.runs(db)["run_id"].tolist()
    out = {}
    for fmt in ("markdown", "csv", "jsonl", "html"):
        t = time.perf_counter()
        export_selection(db, ids, fmt)
        out[fmt] = time.perf_counter() - t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--db", default=None, help="database to (re)build; default: a temporary file")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moe-bench-perf-"))
    db = Path(args.db) if args.db else tmp / "perf.duckdb"
    if db.exists():
        db.unlink()
    t = time.perf_counter()
    n = build(db, args.points)
    build_s = time.perf_counter() - t
    times = render_times(db)
    print(f"database: {n:,} points, built in {build_s:.1f} s ({db})\n")
    print("| page | cold render (s) | warm render (s) |\n|---|---:|---:|")
    for page, t in times.items():
        print(f"| {Path(page).stem} | {t['cold_s']:.2f} | {t['warm_s']:.2f} |")
    built = export_times(db)
    print("\nexport of all runs, built on click: " + ", ".join(f"{k} {v:.2f} s" for k, v in built.items()))
    worst = max(t["cold_s"] for t in times.values())
    print(json.dumps({"ok": worst < 1.0, "points": n, "worst_cold_s": round(worst, 3),
                      "pages": {Path(p).stem: {k: round(v, 3) for k, v in t.items()} for p, t in times.items()},
                      "export_build_s": {k: round(v, 2) for k, v in built.items()}}))
    if not args.keep and not args.db:
        for p in tmp.iterdir():
            p.unlink() if p.is_file() else None
        tmp.rmdir() if not any(tmp.iterdir()) else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
