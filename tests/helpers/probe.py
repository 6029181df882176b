"""A worker target for tests/test_processes.py: reports what the started process sees, through its pipe."""

from __future__ import annotations

import os
import sys
from typing import Any


def report(conn: Any) -> None:
    conn.send({
        "pid": os.getpid(),
        "parent": os.getppid(),
        "preloaded": sorted(m for m in ("torch", "transformers", "bench.worker") if m in sys.modules),
        "probe_env": os.environ.get("MOE_BENCH_PROBE"),
        "main_file": getattr(sys.modules.get("__main__"), "__file__", None),
    })
    conn.close()
