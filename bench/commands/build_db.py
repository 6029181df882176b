"""`python -m bench build-db [--db PATH]`: create the database and import data/reports/*.md and
data/results/*.jsonl (what `make run` shows on a fresh machine).

A new database is built in a temporary file beside the target and renamed into place only when every
import succeeded, so a failed build never leaves a half-filled database that `make` would take as done.
An existing database is updated in place (re-imports replace the same runs). Temporary files of a build that
was killed (their pid is gone) are removed by the next build.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import store
from bench.locks import pid_alive
from bench.paths import REPORTS_DIR, RESULTS_DIR, resolve_db_path
from bench.report.importer import import_files


def default_files(reports_dir: Path = REPORTS_DIR, results_dir: Path = RESULTS_DIR) -> list[Path]:
    return sorted(reports_dir.glob("*.md")) + sorted(results_dir.glob("*.jsonl"))


def clean_stale_builds(db: Path) -> list[Path]:
    """Remove `.NAME.building-PID` files (and their .wal) left by a build-db whose process is gone (killed)."""
    removed = []
    for leftover in sorted(db.parent.glob(f".{db.name}.building-*")):
        pid = leftover.name.rsplit("-", 1)[-1].removesuffix(".wal")
        if pid.isdigit() and not pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def build(db: Path, files: list[Path]) -> dict:
    if db.parent.is_dir():
        for stale in clean_stale_builds(db):
            print(f"note: removed {stale}, left by a build-db that was killed", file=sys.stderr)
    fresh = not db.exists()
    target = db.with_name(f".{db.name}.building-{os.getpid()}") if fresh else db
    try:
        store.init_db(target)
        summary = import_files(target, files) if files else None
        if fresh:
            os.replace(target, db)
    finally:
        if fresh:
            for leftover in (target, target.with_name(target.name + ".wal")):
                leftover.unlink(missing_ok=True)
    return {
        "files": summary.files if summary else [],
        "runs": summary.runs if summary else 0,
        "points": summary.points if summary else 0,
        "created": fresh,
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-db", help="create the database and import data/reports and data/results")
    p.add_argument("--db", default=None, help="database file (default: $BENCH_DB, else data/bench.duckdb)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    db = resolve_db_path(args.db)
    result = build(db, default_files())
    print(json.dumps({"ok": True, "db": str(db), **result}))
    return 0
