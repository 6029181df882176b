"""Which GPU a Dask worker owns, and whether a variant fits on it.

`worker_gpu()` runs inside a Dask worker (no torch import): the worker's GPU is the first entry of its
CUDA_VISIBLE_DEVICES (LocalCUDACluster and `dask cuda worker` give each worker its own), described through NVML
(name, UUID, total memory). On a host without GPUs it describes the CPU slot instead.
Whether a variant fits is bench.models.footprint's estimate, the same one the serial runner uses.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30


@dataclass
class WorkerGpu:
    """One Dask worker's device: a GPU (index/uuid/name/memory) or, on a CPU-only host, its CPU slot."""

    host: str
    kind: str  # "cuda" | "cpu"
    index: int | None = None  # physical CUDA index on its host (NVML numbering)
    uuid: str | None = None
    name: str | None = None
    total_gib: float | None = None
    visible: str | None = None  # the CUDA_VISIBLE_DEVICES entry the child process gets

    def lock_key(self, worker_name: str) -> str:
        """Device-lock key on this host: cuda-<index> (shared with serial sweeps), else cpu-<worker>."""
        if self.kind == "cuda":
            return f"cuda-{self.index if self.index is not None else self.visible}"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(worker_name))
        return f"cpu-{safe}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nvml_describe(entry: str) -> WorkerGpu | None:
    try:
        import pynvml
    except Exception:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        if entry.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
        name = pynvml.nvmlDeviceGetName(handle)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        index = int(pynvml.nvmlDeviceGetIndex(handle))
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total / GIB
        return WorkerGpu(host=socket.gethostname(), kind="cuda", index=index,
                         uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                         name=name.decode() if isinstance(name, bytes) else str(name), total_gib=float(total),
                         visible=entry)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def gpu_count() -> int:
    """GPUs NVML sees on this host (0 without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def worker_gpu() -> WorkerGpu:
    """This process's GPU: the first CUDA_VISIBLE_DEVICES entry (else GPU 0 when the host has one), else CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    if visible is not None and not entries:
        return WorkerGpu(host=socket.gethostname(), kind="cpu", name="cpu")  # CUDA_VISIBLE_DEVICES="" hides all
    entry = entries[0] if entries else "0"
    gpu = _nvml_describe(entry)
    if gpu is not None:
        return gpu
    return WorkerGpu(host=socket.gethostname(), kind="cpu", name="cpu")
