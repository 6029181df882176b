"""Project locations: the repository root, data/ folders and the database path resolution."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
PRESETS_DIR = DATA_DIR / "presets"
SPECS_DIR = DATA_DIR / "specs"
KEEP_DIR = DATA_DIR / "keep"
RESULTS_DIR = DATA_DIR / "results"
REPORTS_DIR = DATA_DIR / "reports"
DEFAULT_DB = DATA_DIR / "bench.duckdb"


def resolve_db_path(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """`--db PATH`, else `$BENCH_DB`, else `data/bench.duckdb`."""
    if cli_value:
        return Path(cli_value).expanduser().resolve()
    env = os.environ.get("BENCH_DB")
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_DB


def logs_dir_for(db_path: Path) -> Path:
    """Sweep logs and lock files live beside the database they belong to."""
    return db_path.parent / (db_path.stem + ".logs")


def contained(base: Path, name: str) -> Path:
    """`base / name`, refused (ValueError) unless it is a plain file name that stays inside `base` once resolved:
    every path derived from an id (logs, locks, launch records) goes through here."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"{name!r} is not a plain file name")
    path = base / name
    if not path.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"{name!r} resolves outside {base}")
    return path


def sweep_file(db_path: Path, sweep_id: str, suffix: str) -> Path:
    """A file of one sweep in the logs folder beside the database (`<id>.log`, `sweep-<id>.lock`, ...), with the
    id checked against the id pattern and the path checked to stay in that folder."""
    from bench.errors import BadInputError
    from bench.spec import check_id

    check_id(sweep_id, "sweep id")
    name = suffix.replace("{id}", sweep_id) if "{id}" in suffix else sweep_id + suffix
    try:
        return contained(logs_dir_for(Path(db_path)), name)
    except ValueError as exc:
        raise BadInputError(f"sweep id {sweep_id!r}: {exc}; use a plain id such as s20261130-120000-abc123") from None


def device_locks_dir() -> Path:
    """Device locks are per machine, not per database: `$MOE_BENCH_LOCK_DIR`, else ~/.cache/moe-bench/locks."""
    env = os.environ.get("MOE_BENCH_LOCK_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moe-bench" / "locks"
