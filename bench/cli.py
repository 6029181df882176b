"""The `python -m bench` front door: builds the parser from bench/commands/ and maps errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from bench import __version__
from bench.errors import EXIT_BAD_INPUT, EXIT_RUN_FAILED, BenchError

# Each module in bench/commands/ provides register(subparsers) and run(args) -> int.
COMMAND_MODULES: tuple[str, ...] = (
    "sweep",
    "rerun",
    "ls",
    "import_cmd",
    "build_db",
    "export",
    "roofline",
    "env",
    "prune",
    "perf",
    "calibrate",
    "quality",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="moe-bench: decode throughput of base and expert-pruned MoE models.",
    )
    parser.add_argument("--version", action="version", version=f"moe-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"bench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == "duckdb":
                # A GPU box may have torch but no duckdb: commands that need the store are left out there,
                # while sweep workers, perf, roofline and env still run.
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad flags, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.exit_code}))
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_RUN_FAILED
