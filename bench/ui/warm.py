"""Warm-up: modules a page needs but that are slow to import (scipy.stats for the History page's Mann–Whitney
verdict: about a second of CPU) are imported once per dashboard process, in a background thread started by
app.py, so no page's first view pays for them. Nothing else happens here."""

from __future__ import annotations

import contextlib
import importlib
import threading

SLOW_IMPORTS: tuple[str, ...] = ("scipy.stats",)
_started = False
_lock = threading.Lock()


def _load() -> None:
    for name in SLOW_IMPORTS:
        with contextlib.suppress(ImportError):  # the page that needs it says so when it runs
            importlib.import_module(name)


def start() -> None:
    """Start the background imports (once per process; later calls do nothing)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_load, name="moe-bench-warm-imports", daemon=True).start()
