"""Launching, watching and cancelling bench processes from the dashboard.

The dashboard never writes the database: it starts `python -m bench sweep|rerun ... --sweep-id ID` as a
background process (argument list, no shell, its own session so Cancel can signal the whole group), with output
in a log file beside the database: the bench's per-point progress lines (no `--quiet`), which the Runs page tails.
A small launch record (JSON) in the same folder lets any tab, and a reloaded page, find a launch before the bench
has registered its sweep row.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cancel import signal_bench
from bench.paths import PROJECT_ROOT, logs_dir_for, sweep_file
from bench.spec import SweepSpec, spec_to_toml

# Popen objects of this server process, polled so finished children are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass
class Launch:
    sweep_id: str
    pid: int
    log_path: str
    argv: list[str]
    kind: str  # "sweep" | "rerun" | "retry"
    label: str  # spec title or the rerun run's name
    started: float


def new_sweep_id() -> str:
    return "ui-" + uuid.uuid4().hex[:12]


def _launch(db: Path, args: list[str], kind: str, label: str, sweep_id: str | None = None) -> Launch:
    sweep_id = sweep_id or new_sweep_id()
    log_path = sweep_file(Path(db), sweep_id, ".log")  # refuses an id that would leave the logs folder
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench", *args, "--db", str(db), "--sweep-id", sweep_id]
    env = dict(os.environ, MOE_BENCH_LOG_PATH=str(log_path), PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    _CHILDREN[proc.pid] = proc
    launch = Launch(sweep_id=sweep_id, pid=proc.pid, log_path=str(log_path), argv=argv, kind=kind, label=label,
                    started=time.time())
    sweep_file(Path(db), sweep_id, ".launch.json").write_text(json.dumps(asdict(launch)))
    return launch


def launch_sweep(db: Path, spec_path: Path, label: str = "", cluster: str | None = None) -> Launch:
    """Start `python -m bench sweep --spec FILE [--cluster WHERE]` in the background."""
    extra = ["--cluster", cluster] if cluster else []
    return _launch(db, ["sweep", "--spec", str(spec_path), *extra], "sweep", label or Path(spec_path).stem)


def launch_spec(db: Path, spec: SweepSpec) -> Launch:
    """Write a validated spec as TOML beside the logs, then launch it."""
    sweep_id = new_sweep_id()
    spec_path = sweep_file(Path(db), sweep_id, ".toml")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec_to_toml(spec))
    return _launch(db, ["sweep", "--spec", str(spec_path)], "sweep", spec.title, sweep_id)


def launch_rerun(db: Path, run_id: str, name: str = "") -> Launch:
    """Start `python -m bench rerun RUN_ID` in the background."""
    return _launch(db, ["rerun", run_id], "rerun", name or run_id)


def launch_retry(db: Path, sweep_id: str, label: str = "") -> Launch:
    """Start `python -m bench sweep --resume SWEEP_ID --retry-errors`: measure the sweep's error/oom/skipped
    points again (and any still missing), under the same sweep id."""
    return _launch(db, ["sweep", "--resume", sweep_id, "--retry-errors"], "retry", label or sweep_id, sweep_id)


def exit_code(pid: int) -> int | None:
    """The exit code of a child of this server process, when it has finished (None otherwise/unknown); the
    Routing and Compare pages' calibrate/quality launches show it."""
    proc = _CHILDREN.get(pid)
    return None if proc is None else proc.poll()


def reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def launches(db: Path, limit: int = 20) -> list[Launch]:
    """Launch records beside the database, newest first."""
    logs = logs_dir_for(Path(db))
    if not logs.is_dir():
        return []
    out = []
    for p in sorted(logs.glob("*.launch.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
        try:
            out.append(Launch(**json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def cancel(pid: int) -> bool:
    """SIGTERM the bench (its process group: a launch leads one), through bench.cancel.signal_bench, the path
    `python -m bench cancel` takes too; the runner marks the sweep cancelled. False if it is gone."""
    return signal_bench(pid)


def log_tail(path: str | None, lines: int = 15) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


_GPU: list[bool] = []


def has_gpu() -> bool:
    """True when `nvidia-smi -L` lists a GPU (checked once per server process; torch is never imported)."""
    if not _GPU:
        found = False
        exe = shutil.which("nvidia-smi")
        if exe:
            try:
                res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
                found = res.returncode == 0 and "GPU" in res.stdout
            except (OSError, subprocess.SubprocessError):
                found = False
        _GPU.append(found)
    return _GPU[0]
