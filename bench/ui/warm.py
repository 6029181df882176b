"""Warm-up: modules a page needs but that are slow to import (scipy.stats for the History page's Mann–Whitney
verdict: about a second of CPU) are imported once per dashboard process, in a background thread started by
app.py, so no page's first view pays for them.

Then every object alive (the imported modules: ~180,000 objects of pandas, plotly, duckdb, scipy, Streamlit) is
moved out of the cyclic garbage collector's reach (`gc.freeze()`). Streamlit runs a full collection after every
script run (`runner.postScriptGC`) and holds the GIL while it does, so the server sends nothing meanwhile: it cost
0.1-0.14 s per page view and per widget change (the script_finished message waited for it), and about 2 ms once
the long-lived objects are frozen (docs/PERF.md). Frozen objects are still freed by reference counting; only cycles
among objects alive at that moment are never collected, a bounded, one-time amount."""

from __future__ import annotations

import contextlib
import gc
import importlib
import threading

SLOW_IMPORTS: tuple[str, ...] = ("scipy.stats",)
_started = False
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _load() -> None:
    for name in SLOW_IMPORTS:
        with contextlib.suppress(ImportError):  # the page that needs it says so when it runs
            importlib.import_module(name)
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()


def start() -> None:
    """Start the background imports (once per process; later calls do nothing)."""
    global _started, _thread
    with _lock:
        if _started:
            return
        _started = True
        _thread = threading.Thread(target=_load, name="moe-bench-warm-imports", daemon=True)
        _thread.start()
