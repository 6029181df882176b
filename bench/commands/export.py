"""`python -m bench export --format markdown|csv|jsonl|html [--run NAME ...] [--usd-per-gpu-hour FAM=USD ...]
[--out FILE]`.

`--run NAME` held by several runs takes the latest and says so on stderr (pass a run_id to pick another).
`--format html` writes one self-contained report (interactive charts, plotly.js inlined, and the markdown's tables).

With --out the file gets exactly the bytes of `bench.report.export_selection` (what the dashboard
downloads) and the JSON summary is the last line of stdout. Without --out the export itself goes to stdout
and the JSON summary to stderr, so that stdout can be redirected into a file unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import BadInputError
from bench.paths import resolve_db_path
from bench.report.selection import EXPORT_FORMATS, build_export


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export runs as markdown (report format), csv, jsonl or a self-contained html")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="markdown", dest="fmt")
    p.add_argument(
        "--run",
        action="extend",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run name or run_id (repeatable; default: every run). A name several runs share means the latest "
        "of them (a note on stderr lists the others)",
    )
    p.add_argument("--usd-per-gpu-hour", action="extend", nargs="+", default=None, metavar="FAMILY=USD",
                   help="$/GPU-hour for the cost columns, per card family (e.g. H100=2.50 cpu=0.10); others use "
                        "the defaults of bench.analysis.cost")
    p.add_argument("--out", default=None, help="write here instead of stdout")
    p.add_argument("--db", default=None, help="database file (default: $BENCH_DB, else data/bench.duckdb)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    db = resolve_db_path(args.db)
    from bench.report.energy import parse_prices

    result = build_export(db, args.run, args.fmt, parse_prices(args.usd_per_gpu_hour) or None)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    summary = {
        "ok": True,
        "format": result.fmt,
        "runs": result.runs,
        "points": result.points,
        "bytes": len(result.text.encode("utf-8")),
        "out": args.out,
        "notes": result.notes,
    }
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise BadInputError(f"--out {out}: is a folder; give a file name")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(result.text.encode("utf-8"))
        except OSError as exc:
            raise BadInputError(f"--out {out}: cannot write ({exc.strerror})") from None
        print(json.dumps(summary))
    else:
        sys.stdout.write(result.text)
        sys.stdout.flush()
        print(json.dumps(summary), file=sys.stderr)
    return 0
