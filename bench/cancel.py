"""Cancelling a running sweep: the one path `python -m bench cancel SWEEP_ID` and the dashboard's Cancel button
share. The bench process is sent SIGTERM (its whole process group when it leads one, as a dashboard launch does,
so the worker goes too; otherwise the bench alone, whose SIGTERM handler terminates its worker); the runner then
marks the sweep `cancelled` and keeps every finished point.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BadInputError
from bench.locks import ACTIVE_STATES, shown_state
from bench.spec import check_id


def signal_bench(pid: int) -> bool:
    """SIGTERM the bench process `pid` (its process group when it leads one). False when it is gone."""
    try:
        pid = int(pid)
        if pid <= 1:
            return False
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


@dataclass
class CancelOutcome:
    sweep_id: str
    state: str  # the sweep's state when we stopped waiting
    signalled: bool

    @property
    def ok(self) -> bool:
        return self.state == "cancelled"


def cancel_sweep(db: Path, sweep_id: str, wait_s: float = 30.0) -> CancelOutcome:
    """Cancel sweep `sweep_id` of database `db` and wait up to `wait_s` for the runner to mark it cancelled.

    BadInputError (exit 2) for an unknown id, a sweep that is not running, or one running on another host.
    """
    from bench import store

    check_id(sweep_id, "cancel SWEEP_ID")
    db = Path(db)
    if not db.is_file():
        raise BadInputError(f"cancel: database {db} does not exist; pass --db (or $BENCH_DB) of the sweep's database")
    row = store.read_sweep(db, sweep_id)
    if row is None:
        raise BadInputError(f"cancel: no sweep {sweep_id!r} in {db}; `python -m bench ls` lists the sweeps")
    state = shown_state(row)
    if state not in ACTIVE_STATES:
        raise BadInputError(f"cancel: sweep {sweep_id} is {state}, not running; there is nothing to cancel")
    host = row.get("host")
    if host and host != socket.gethostname():
        raise BadInputError(f"cancel: sweep {sweep_id} runs on host {host}, not here; cancel it there")
    signalled = bool(row.get("pid")) and signal_bench(int(row["pid"]))
    deadline = time.monotonic() + wait_s
    while True:
        row = store.read_sweep(db, sweep_id) or {}
        state = shown_state(row)
        if state not in ACTIVE_STATES or time.monotonic() >= deadline:
            return CancelOutcome(sweep_id=sweep_id, state=state, signalled=signalled)
        time.sleep(0.25)
