"""The `python -m bench` front door: builds the parser from bench/commands/ and maps errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import os
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
    "compare",
    "roofline",
    "env",
    "prune",
    "perf",
    "cancel",
    "calibrate",
    "quality",
)
# Command names whose module name differs (a module that cannot be imported still gets its command, with a message).
COMMAND_NAMES: dict[str, str] = {"import_cmd": "import", "build_db": "build-db"}
DUCKDB_MISSING = (
    "duckdb is not installed in this Python ({exe}); `{cmd}` needs it for the results database. Install it with "
    "`{exe} -m pip install duckdb==2.0.1` (or `pip install -e .` / `make test` in the repository). perf, env and "
    "roofline run without it."
)


def _duckdb_missing(cmd: str) -> BenchError:
    err = BenchError(DUCKDB_MISSING.format(exe=sys.executable, cmd=cmd))
    err.exit_code = EXIT_BAD_INPUT
    return err


def _register_missing(sub: argparse._SubParsersAction, name: str) -> None:
    """A command whose module needs duckdb, on a machine without it: it exists and says what is missing."""
    p = sub.add_parser(name, help="(needs duckdb, not installed here)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def refuse(args: argparse.Namespace) -> int:
        raise _duckdb_missing(name)

    p.set_defaults(func=refuse)


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
                # A GPU box may have torch but no duckdb: commands that need the store say so there, while
                # sweep workers, perf, roofline and env still run.
                _register_missing(sub, COMMAND_NAMES.get(name, name))
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `python -m bench ls | head -1`: the reader left; stop quietly (and keep Python's exit flush quiet too).
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


def entry() -> None:
    """Console-script entry point (`moe-bench ...` after `pip install -e .`)."""
    sys.exit(main())


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad flags, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        try:
            return int(args.func(args))
        except ModuleNotFoundError as exc:
            if exc.name != "duckdb":
                raise
            raise _duckdb_missing(args.command) from None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.exit_code}))
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_RUN_FAILED
