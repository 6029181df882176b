"""`python -m bench ls [--json] [--runs]`: the sweeps (with crashed ones detected) or the runs in the database."""

from __future__ import annotations

import argparse
import json

from bench import store
from bench.errors import EXIT_OK
from bench.locks import effective_state
from bench.paths import resolve_db_path
from bench.records import to_jsonable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list sweeps (or runs) in the database")
    p.add_argument("--db")
    p.add_argument("--json", action="store_true", help="one JSON array on stdout")
    p.add_argument("--runs", action="store_true", help="list runs instead of sweeps")
    p.set_defaults(func=run)


def list_sweeps(db) -> list[dict]:
    con = store.connect(db, read_only=True)
    try:
        store.check_version(db, store.schema_version_of(con))
        rows = store.fetch_dicts(
            con,
            "SELECT sweep_id AS id, title, state, points_done, points_planned, current_variant, device_key, pid, "
            "lock_path, created_at, started_at, finished_at, heartbeat_at, message FROM sweeps ORDER BY created_at",
        )
    finally:
        con.close()
    for r in rows:
        r["state"] = effective_state(r["state"], r.pop("lock_path"))
    return rows


def list_runs(db) -> list[dict]:
    con = store.connect(db, read_only=True)
    try:
        store.check_version(db, store.schema_version_of(con))
        return store.fetch_dicts(
            con,
            "SELECT r.run_id AS id, r.sweep_id, r.name, r.model, r.top_k, r.experts, r.engine, r.device_name, "
            "r.source, r.state, r.rerun_of, r.started_at, count(p.run_id) AS points "
            "FROM runs r LEFT JOIN points p USING (run_id) "
            "GROUP BY ALL ORDER BY r.started_at NULLS FIRST, r.name",
        )
    finally:
        con.close()


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
            print(f"{r['id']}  {r['state']:<10} {r['points_done']:>4}/{r['points_planned']:<4} {r['title']}")
    print(json.dumps({"ok": True, "count": len(rows)}))
    return EXIT_OK
