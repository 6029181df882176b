"""The environment fingerprint of a run: device, driver, CUDA, library versions, git commit, host, python."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

from bench import __version__
from bench.measure.nvml import driver_version
from bench.paths import PROJECT_ROOT
from bench.records import EnvFingerprint

GIT_COMMIT_ENV = "MOE_BENCH_GIT_COMMIT"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Resolve "auto"/None to cuda when available else cpu, and "cuda" to the current CUDA device."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what platform can tell."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """$MOE_BENCH_GIT_COMMIT when set, else HEAD of the project checkout (+ "-dirty" when tracked files changed).

    The variable wins: a copy of the tree sent to a GPU machine can carry a stale .git whose HEAD is not the code
    that runs (seen on the lent H200: every run claimed the session's first commit, "-dirty")."""
    explicit = os.environ.get(GIT_COMMIT_ENV)
    if explicit:
        return explicit

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head:
        status = git("status", "--porcelain", "--untracked-files=no")
        return f"{head}-dirty" if status else head
    return None


def fingerprint(device: str | torch.device = "auto") -> EnvFingerprint:
    """Describe where `device` runs. Works without a GPU (device_name "cpu: <model>", driver/cuda None)."""
    dev = resolve_device(device)
    try:
        import transformers

        transformers_version: str | None = transformers.__version__
    except Exception:
        transformers_version = None
    fp = EnvFingerprint(
        device_kind=dev.type,
        torch=torch.__version__,
        transformers=transformers_version,
        bench_version=__version__,
        git_commit=git_commit(),
        host=socket.gethostname(),
        python=platform.python_version(),
    )
    if dev.type == "cuda":
        fp.device_name = torch.cuda.get_device_name(dev)
        fp.cuda = torch.version.cuda
        fp.driver = driver_version()
    else:
        fp.device_name = f"{dev.type}: {cpu_model()}"
    return fp
