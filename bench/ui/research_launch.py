"""Launching `python -m bench calibrate` and `python -m bench quality` from the dashboard: an argument list (never
a shell), a new session, output to a log beside the database. Records go to <logs>/<id>.research.json so the
Runs page's sweep launches are not mixed with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.paths import PROJECT_ROOT, logs_dir_for
from bench.ui.launch import _CHILDREN


@dataclass
class ResearchLaunch:
    launch_id: str
    pid: int
    log_path: str
    argv: list[str]
    kind: str  # "calibrate" | "quality"
    label: str
    started: float


def _launch(db: Path, args: list[str], kind: str, label: str) -> ResearchLaunch:
    launch_id = f"{kind}-{uuid.uuid4().hex[:10]}"
    logs = logs_dir_for(Path(db))
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{launch_id}.log"
    argv = [sys.executable, "-m", "bench", *args, "--db", str(db)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    _CHILDREN[proc.pid] = proc
    launch = ResearchLaunch(launch_id, proc.pid, str(log_path), argv, kind, label, time.time())
    (logs / f"{launch_id}.research.json").write_text(json.dumps(asdict(launch)))
    return launch


def calibrate_args(model: str, domains: list[str], tokens: int | None, seed: int = 0) -> list[str]:
    """`calibrate` arguments: each domain is a built-in name or NAME=PATH (validated by the command itself)."""
    args = ["calibrate", "--model", model, "--seed", str(int(seed))]
    for d in domains:
        args += ["--domain", d]
    if tokens:
        args += ["--tokens", str(int(tokens))]
    return args


def launch_calibrate(db: Path, model: str, domains: list[str], tokens: int | None, seed: int = 0) -> ResearchLaunch:
    return _launch(db, calibrate_args(model, domains, tokens, seed), "calibrate",
                   f"calibrate {model}: {', '.join(domains)}")


def launch_quality(db: Path, run_ids: list[str], domains: list[str], tokens: int | None) -> ResearchLaunch:
    args = ["quality"] + [a for r in run_ids for a in ("--run", r)] + [a for d in domains for a in ("--domain", d)]
    if tokens:
        args += ["--tokens", str(int(tokens))]
    return _launch(db, args, "quality", f"quality of {len(run_ids)} run(s): {', '.join(domains)}")


def research_launches(db: Path, kind: str, limit: int = 5) -> list[ResearchLaunch]:
    logs = logs_dir_for(Path(db))
    if not logs.is_dir():
        return []
    out = []
    for p in sorted(logs.glob(f"{kind}-*.research.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
        try:
            out.append(ResearchLaunch(**json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out
