"""`python -m bench rerun RUN_ID`: the same resolved config as a new run (in a new sweep) with rerun_of set."""

from __future__ import annotations

import argparse
import json

from bench.commands.sweep import add_run_options
from bench.errors import EXIT_OK, EXIT_RUN_FAILED, BadInputError
from bench.paths import resolve_db_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerun", help="rerun one run's exact config as a new run")
    p.add_argument("run_id")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.runner import SweepRunner, spec_for_rerun
    from bench.store import reads

    db = resolve_db_path(args.db)
    if not reads.has_run(db, args.run_id):  # read-only: a refused command writes nothing
        raise BadInputError(f"rerun: no run {args.run_id!r} in {db}; `python -m bench ls --runs` lists the runs")
    spec, name = spec_for_rerun(db, args.run_id)
    outcome = SweepRunner(db, progress=not args.quiet, gpu_mem_cap_gib=args.gpu_mem_cap_gib).run(
        spec, sweep_id=args.sweep_id, rerun_of={name: args.run_id}
    )
    summary = outcome.summary()
    summary["rerun_of"] = args.run_id
    print(json.dumps(summary))
    return EXIT_OK if summary["ok"] else EXIT_RUN_FAILED
