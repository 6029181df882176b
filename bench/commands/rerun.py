"""`python -m bench rerun RUN_ID`: the same resolved config as a new run (in a new sweep) with rerun_of set."""

from __future__ import annotations

import argparse
import json

from bench.commands.sweep import add_run_options
from bench.errors import EXIT_OK, EXIT_RUN_FAILED
from bench.paths import resolve_db_path
from bench.spec import DEVICES, DTYPES, check_id


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rerun", help="rerun one run's exact config as a new run",
        description="Rerun a run's resolved config (same device and dtype) as a new run in a new sweep. A device "
        "this machine lacks is refused, never swapped silently: --device/--dtype or --allow-device-change say "
        "so explicitly.",
    )
    p.add_argument("run_id")
    p.add_argument("--device", choices=DEVICES, help="run on this device instead of the original one")
    p.add_argument("--dtype", choices=DTYPES, help="use this dtype instead of the original one")
    p.add_argument("--allow-device-change", action="store_true",
                   help="let this machine pick the device and dtype (auto) when the original ones differ")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.runner import SweepRunner, spec_for_rerun

    check_id(args.run_id, "rerun RUN_ID")
    if args.sweep_id is not None:
        check_id(args.sweep_id, "--sweep-id")
    db = resolve_db_path(args.db)
    spec, name = spec_for_rerun(db, args.run_id, device=args.device, dtype=args.dtype,
                                allow_device_change=args.allow_device_change)
    outcome = SweepRunner(db, progress=not args.quiet, gpu_mem_cap_gib=args.gpu_mem_cap_gib,
                          check_memory=args.check_memory).run(
        spec, sweep_id=args.sweep_id, rerun_of={name: args.run_id}
    )
    summary = outcome.summary()
    summary["rerun_of"] = args.run_id
    print(json.dumps(summary))
    return EXIT_OK if summary["ok"] else EXIT_RUN_FAILED
