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


def device_locks_dir() -> Path:
    """Device locks are per machine, not per database: `$MOE_BENCH_LOCK_DIR`, else ~/.cache/moe-bench/locks."""
    env = os.environ.get("MOE_BENCH_LOCK_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moe-bench" / "locks"
