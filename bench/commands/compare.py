"""`python -m bench compare RUN_A RUN_B [--metric total_tps|per_stream_tps] [--db FILE]`: is RUN_B slower than
RUN_A beyond noise?

RUN_A is the older/reference run, RUN_B the newer one; each is a run_id or a name (a name several runs share means
the latest of them, said on stderr). The verdict is the History page's (`bench.analysis.history.verdict`: a
two-sided Mann–Whitney U test at α = 0.05 on the repeats, normalised per batch size and pooled). Prints a per-batch
table and the verdict; the last line of stdout is the JSON summary. Exit 1 when RUN_B is slower (a regression, so
CI pipelines can gate on it), 0 when faster or within noise, 2 when the runs cannot be compared.
"""

from __future__ import annotations

import argparse
import json

from bench.errors import EXIT_BAD_INPUT, BadInputError
from bench.paths import resolve_db_path

METRICS = ("total_tps", "per_stream_tps")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="regression verdict of RUN_B against RUN_A (Mann–Whitney U on the repeats); "
                                       "exit 1 when RUN_B is slower")
    p.add_argument("run_a", metavar="RUN_A", help="the reference (older) run: run_id or name (latest of that name)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to judge (newer): run_id or name (latest of that name)")
    p.add_argument("--metric", choices=METRICS, default="total_tps", help="throughput to test (default: total_tps)")
    p.add_argument("--db", default=None, help="database file (default: $BENCH_DB, else data/bench.duckdb)")
    p.set_defaults(func=run)


def _resolve(runs, want: str, flag: str) -> tuple[str, str | None]:
    """(run_id, note) for a run_id or a name (the latest run of that name)."""
    if want in set(runs["run_id"]):
        return want, None
    named = runs[runs["name"] == want]  # queries.runs is ordered newest first
    if named.empty:
        known = ", ".join(sorted(set(runs["name"]))) or "(none: the database holds no runs)"
        raise BadInputError(f"{flag} {want}: no run with that name or id in the database; runs: {known}")
    rid = str(named["run_id"].iloc[0])
    note = None
    if len(named) > 1:
        note = (f"{flag} {want}: {len(named)} runs have that name; using the latest, {rid} (others: "
                f"{', '.join(named['run_id'].iloc[1:])}; pass a run_id to pick one)")
    return rid, note


def run(args: argparse.Namespace) -> int:
    import sys

    from bench.analysis import compare as cmp
    from bench.analysis import history
    from bench.store import queries

    db = resolve_db_path(args.db)
    if not db.exists():
        raise BadInputError(f"--db {db}: no such database; build it with `python -m bench build-db` or run a sweep")
    runs = queries.runs(db)
    if runs.empty:
        raise BadInputError(f"--db {db}: the database holds no runs")
    old, note_a = _resolve(runs, args.run_a, "RUN_A")
    new, note_b = _resolve(runs, args.run_b, "RUN_B")
    for note in (note_a, note_b):
        if note:
            print(f"note: {note}", file=sys.stderr)
    if old == new:
        raise BadInputError(f"RUN_A and RUN_B are the same run ({old}); give two runs")
    labels = dict(zip(runs["run_id"], runs["label"], strict=True))
    v = history.verdict(queries.repeats(db, [old, new]), old, new, args.metric, names=labels)
    for diff in cmp.env_differences(runs, old, new):
        print(f"note: measured differently — {diff}", file=sys.stderr)
    print(f"{'batch':>6} {'A median':>12} {'B median':>12} {'change':>8} {'p (batch alone)':>16}")
    for row in v.per_batch:
        p = "-" if row["p_value"] is None else f"{row['p_value']:.3g}"
        print(f"{row['batch']:>6} {row['old_median']:>12.2f} {row['new_median']:>12.2f} "
              f"{row['change_pct']:>+7.1f}% {p:>16}")
    print(("REGRESSION: " if v.regression else "") + v.sentence())
    code = 1 if v.regression else (EXIT_BAD_INPUT if v.status == "not comparable" else 0)
    print(json.dumps({"ok": code == 0, "run_a": old, "run_b": new, "metric": args.metric, "verdict": v.status,
                      "p_value": v.p_value, "change_pct": v.change_pct, "batches": v.batches, "test": v.test,
                      "exit_code": code}))
    return code
