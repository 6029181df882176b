"""`python -m bench cancel SWEEP_ID`: stop a running sweep (the same path as the dashboard's Cancel button)."""

from __future__ import annotations

import argparse
import json
import sys

from bench.errors import EXIT_OK, EXIT_RUN_FAILED
from bench.paths import resolve_db_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="cancel a running sweep; its finished points are kept")
    p.add_argument("sweep_id", metavar="SWEEP_ID", help="the sweep to cancel (`python -m bench ls` lists them)")
    p.add_argument("--db", help="DuckDB file (default: $BENCH_DB or data/bench.duckdb)")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the sweep to stop (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.cancel import cancel_sweep

    outcome = cancel_sweep(resolve_db_path(args.db), args.sweep_id, wait_s=max(0.0, args.wait))
    if outcome.ok:
        print(f"sweep {outcome.sweep_id} cancelled", file=sys.stderr)
    else:
        print(f"sweep {outcome.sweep_id} is still {outcome.state} after {args.wait:g} s; check `python -m bench ls`",
              file=sys.stderr)
    print(json.dumps({"ok": outcome.ok, "sweep_id": outcome.sweep_id, "state": outcome.state,
                      "signalled": outcome.signalled}))
    return EXIT_OK if outcome.ok else EXIT_RUN_FAILED
