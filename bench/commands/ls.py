"""`python -m bench ls [--json] [--runs]`: the sweeps (with crashed ones detected) or the runs in the database."""

from __future__ import annotations

import argparse
import json

from bench.errors import EXIT_OK
from bench.locks import effective_state
from bench.paths import resolve_db_path
from bench.records import to_jsonable
from bench.store import reads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list sweeps (or runs) in the database")
    p.add_argument("--db")
    p.add_argument("--json", action="store_true", help="one JSON array on stdout")
    p.add_argument("--runs", action="store_true", help="list runs instead of sweeps")
    p.set_defaults(func=run)


def list_sweeps(db) -> list[dict]:
    rows = reads.list_sweeps(db)
    for r in rows:
        r["state"] = effective_state(r["state"], r.pop("lock_path"))
    return rows


def list_runs(db) -> list[dict]:
    return reads.list_runs(db)


def _origin(source: str | None) -> str:
    """'' for a measured sweep, else 'imported from <file>'."""
    source = source or "measured"
    return "" if source == "measured" else f"  [imported from {source.split(':', 1)[-1]}]"


def run(args: argparse.Namespace) -> int:
    db = resolve_db_path(args.db)
    rows = list_runs(db) if args.runs else list_sweeps(db)
    if args.json:
        print(json.dumps(to_jsonable(rows)))
        return EXIT_OK
    for r in rows:
        if args.runs:
            print(f"{r['id']}  {r['name']:<24} {r['engine']:<6} {r['source']:<24} {r['points']:>4} points")
        else:
            print(f"{r['id']}  {r['state']:<10} {r['points_done']:>4}/{r['points_planned']:<4} {r['title']}"
                  f"{_origin(r['source'])}")
    print(json.dumps({"ok": True, "count": len(rows)}))
    return EXIT_OK
