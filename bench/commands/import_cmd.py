"""`python -m bench import FILE ...`: import reports (.md) and results (.jsonl) into the database."""

from __future__ import annotations

import argparse
import json

from bench.paths import resolve_db_path
from bench.report.importer import import_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import report (.md) and results (.jsonl) files",
        description="Import files, all or nothing: a bad file imports nothing. Re-importing a file replaces its "
        "runs; an import that would remove stored points (a run re-imported with fewer points) is refused unless "
        "--replace is given.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="a report .md or a results .jsonl file")
    p.add_argument("--db", default=None, help="database file (default: $BENCH_DB, else data/bench.duckdb)")
    p.add_argument("--replace", action="store_true",
                   help="allow the import to remove stored points of the runs it replaces (they are counted first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    db = resolve_db_path(args.db)
    summary = import_files(db, list(args.files), replace=args.replace)
    print(json.dumps({"ok": True, "db": str(db), **summary.to_dict()}))
    return 0
