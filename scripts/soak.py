"""Soak test (not in CI): one long tiny CPU sweep writes ~1,000 points while reader processes hammer the database
with every query the dashboard pages make. Reports lost points (must be 0), reader errors and the elapsed time.

    .venv/bin/python scripts/soak.py                      # 1,000 points, 4 readers, temp database
    .venv/bin/python scripts/soak.py --readers 8 --json   # one JSON line at the end

`read_all_pages(db)` is also what tests/test_reliability_concurrency.py runs in its reader loop.
Exit code: 0 when nothing was lost and no reader saw an error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import locks  # noqa: E402
from bench.analysis import compare, labels  # noqa: E402
from bench.store import queries  # noqa: E402

VARIANTS = [
    ("base_topk2", 2, None),
    ("base_topk1", 1, None),
    ("half_topk2", 2, {"experts": 4, "method": "first"}),
    ("half_topk1", 1, {"experts": 4, "method": "first"}),
    ("quarter_topk1", 1, {"experts": 2, "method": "first"}),
]


@dataclass
class ReaderStats:
    reads: int = 0  # complete passes over the page queries
    skipped: int = 0  # passes before the database had its tables
    errors: list[str] = field(default_factory=list)
    max_points_seen: int = 0
    went_backwards: int = 0  # a pass saw fewer points than an earlier one (a lost or hidden point)


def read_all_pages(db: Path) -> int | None:
    """One pass over every public bench.store.queries function the dashboard pages call. Returns the number of points
    the database held (None while it has no tables yet). Raises on any reader error."""
    info = queries.db_info(db)
    if info.error:
        raise RuntimeError(info.error)
    if not info.exists or info.schema_version is None:
        return None
    queries.file_version(db)
    runs = queries.runs(db)
    labels.filter_options(runs)
    shown = labels.apply_filters(runs, labels.Filters())
    ids = labels.default_runs(shown)
    summary = queries.point_summary(db)
    compare.summary_for(summary, runs, ids)
    queries.points(db, ids[:3])
    sweeps = queries.sweeps(db)
    for row in sweeps.to_dict("records"):
        queries.sweep(db, row["sweep_id"])
        locks.pid_alive(row.get("pid"))
    queries.overview(db)
    pruned = [r for r in ids if r in set(runs.loc[runs["pruned"], "run_id"])]
    for rid in pruned[:2]:
        base = compare.base_for(runs, rid)
        if base:
            compare.env_differences(runs, base, rid)
            compare.deltas(summary, runs, base, [rid])
            compare.memory_saved(summary, runs, [(rid, base)])
    return info.n_points


def reader_loop(db: str, stop, pause_s: float, out) -> None:
    """Run read_all_pages until `stop` is set; put ReaderStats (as a dict) on `out`."""
    stats = ReaderStats()
    while not stop.is_set():
        try:
            n = read_all_pages(Path(db))
        except Exception as exc:
            stats.errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"[:2000])
            n = None
        if n is None:
            stats.skipped += 1
        else:
            stats.reads += 1
            if n < stats.max_points_seen:
                stats.went_backwards += 1
            stats.max_points_seen = max(stats.max_points_seen, n)
        if pause_s:
            time.sleep(pause_s)
    out.put(asdict(stats))


def spec_text(batches: list[int], repeats: int, new_tokens: int, n_variants: int) -> str:
    lines = ['title = "soak"', "", "[sweep]", "prompt_len = 8", f"new_tokens = {new_tokens}",
             f"batch_sizes = {batches}", f"repeats = {repeats}", 'device = "cpu"', 'dtype = "float32"',
             "seed = 0", "warmup = false"]
    for name, top_k, prune in VARIANTS[:n_variants]:
        lines += ["", "[[variants]]", f'name = "{name}"', 'model = "synthetic:tiny-moe"', f"top_k = {top_k}"]
        if prune:
            lines.append(f'prune = {{ experts = {prune["experts"]}, method = "{prune["method"]}" }}')
    return "\n".join(lines) + "\n"


def check_points(db: Path, sweep_id: str) -> dict:
    """Planned vs present points of the sweep: lost = planned (run, batch, repeat) keys without a row."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        sweep = con.execute("SELECT points_planned, points_done, state, spec_json FROM sweeps WHERE sweep_id = ?",
                            [sweep_id]).fetchone()
        rows = con.execute('SELECT r.name, p.batch, p."repeat", p.status FROM points p JOIN runs r USING (run_id) '
                           "WHERE r.sweep_id = ?", [sweep_id]).fetchall()
    finally:
        con.close()
    if sweep is None:
        return {"planned": None, "present": 0, "lost": None, "state": None, "statuses": {}}
    spec = json.loads(sweep[3])
    planned = {(v["name"], b, r) for v in spec["variants"] for b in spec["sweep"]["batch_sizes"]
               for r in range(spec["sweep"]["repeats"])}
    present = {(n, b, r) for n, b, r, _ in rows}
    statuses: dict[str, int] = {}
    for *_, s in rows:
        statuses[s] = statuses.get(s, 0) + 1
    return {"planned": sweep[0], "points_done": sweep[1], "present": len(present & planned),
            "lost": len(planned - present), "state": sweep[2], "statuses": statuses}


def soak(db: Path, points: int, readers: int, new_tokens: int, pause_s: float, lock_dir: str | None) -> dict:
    n_variants = len(VARIANTS)
    batches = list(range(1, 11))
    repeats = max(1, -(-points // (n_variants * len(batches))))
    spec = db.parent / "soak.toml"
    spec.write_text(spec_text(batches, repeats, new_tokens, n_variants))
    sweep_id = "soak-" + time.strftime("%Y%m%d-%H%M%S")
    if lock_dir:  # the bench and the readers must share it (device locks and the store's writer gate)
        os.environ["MOE_BENCH_LOCK_DIR"] = lock_dir
    env = dict(os.environ)
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=reader_loop, args=(str(db), stop, pause_s, out), daemon=True) for _ in range(readers)]
    started = time.monotonic()
    for p in procs:
        p.start()
    bench = subprocess.run([sys.executable, "-m", "bench", "sweep", "--spec", str(spec), "--db", str(db), "--quiet",
                            "--sweep-id", sweep_id], cwd=ROOT, env=env, capture_output=True, text=True)
    sweep_s = time.monotonic() - started
    stop.set()
    stats = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    result = check_points(db, sweep_id)
    errors = [e for s in stats for e in s["errors"]]
    return {
        "sweep_id": sweep_id, "bench_exit": bench.returncode, "bench_stderr_tail": bench.stderr[-1500:],
        "sweep_s": round(sweep_s, 1), "readers": readers, "reader_passes": sum(s["reads"] for s in stats),
        "reader_errors": len(errors), "reader_error_samples": errors[:3],
        "reader_saw_fewer_points": sum(s["went_backwards"] for s in stats),
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1000, help="points to run (rounded up to whole repeats)")
    ap.add_argument("--readers", type=int, default=4, help="reader processes")
    ap.add_argument("--new-tokens", type=int, default=3)
    ap.add_argument("--reader-pause", type=float, default=0.0, help="seconds between a reader's passes")
    ap.add_argument("--db", help="database file (default: a new one in a temp folder)")
    ap.add_argument("--lock-dir", help="device-lock folder (default: the machine's; see bench/paths.py)")
    ap.add_argument("--json", action="store_true", help="print only one JSON line")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moe-soak-") as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "soak.duckdb"
        db.parent.mkdir(parents=True, exist_ok=True)
        res = soak(db, args.points, args.readers, args.new_tokens, args.reader_pause, args.lock_dir)
    ok = res["lost"] == 0 and res["reader_errors"] == 0 and res["bench_exit"] == 0
    res["ok"] = ok
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            if k not in ("bench_stderr_tail", "reader_error_samples") or v:
                print(f"{k:>24}: {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
