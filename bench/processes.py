"""How the bench starts the processes that load models: one new process per variant (and per research job).

Each worker is a fresh process, as `spawn` gives, but forked from a `forkserver` that imported torch, transformers'
model code and the worker modules once. A spawned worker spends ~7 CPU-s on those imports before it loads a model;
a forked one starts with them done, so a sweep of N variants pays the imports once instead of N times. The server
is a clean interpreter started by the bench process: it never initialises CUDA, so each worker still gets its own
CUDA context, memory and failure domain.

A forked child sees the server's environment, so the server is restarted whenever the parent's environment has
changed since it started: a worker always runs with the parent's environment as of its start, as with `spawn`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

# What every worker imports before it measures anything (bench.worker.run_job, bench.research_worker); a name that
# fails to import in the server is skipped there and imported by the worker as before.
PRELOAD = [
    "torch",
    "transformers",
    "transformers.models.gpt_oss.modeling_gpt_oss",
    "bench.worker",
    "bench.research_worker",
    "bench.models.loading",
    "bench.models.pruning",
    "bench.engines",
    "bench.measure.env",
    "bench.measure.memory",
    "bench.measure.nvml",
    "bench.measure.bandwidth",
    "bench.roofline",
]

_server_env: dict[str, str] | None = None  # the environment the running forkserver was started with


def start_process(
    target: Callable[..., None], args: tuple[Any, ...], name: str,
) -> tuple[mp.process.BaseProcess, Connection]:
    """Start `target(*args, conn)` in a new daemon process; return it and the read end of its message pipe."""
    ctx = mp.get_context("forkserver")
    _server_for(dict(os.environ))
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child), name=name, daemon=True)
    with main_script_hidden():
        proc.start()
    child.close()
    return proc, parent


def _server_for(env: dict[str, str]) -> None:
    """Make sure the forkserver that starts next was started with `env`: preload set, restarted if env changed."""
    global _server_env
    if _server_env is not None and _server_env != env:
        forkserver._forkserver._stop()  # the next start launches a new server with the current environment
        _server_env = None
    if _server_env is None:
        forkserver.set_forkserver_preload(PRELOAD)
        _server_env = env


@contextmanager
def main_script_hidden() -> Iterator[None]:
    """Hide the parent's __main__ script while a worker is started, so the child never re-runs it.

    The worker's target lives in bench.worker and needs nothing from __main__, but `spawn` and `forkserver`
    re-import the parent's main script in the child when it has a file (AppTest, for one, makes app.py the __main__
    module, which would put streamlit into the worker).
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
