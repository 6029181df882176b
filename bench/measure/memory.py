"""Memory of one run in the worker: weights, peak allocated/reserved, NVML per-process peak, or RSS on CPU.

Sequence: `baseline()` before the model is built, `after_load()` once it is, then per point `reset_peak()`
before and `point_stats(nvml_window)` after. GiB = 2**30 bytes.

On CUDA, "used" is the NVML per-process peak (includes the CUDA context) when NVML can see this process,
else the peak reserved by torch's caching allocator. On CPU it is the peak resident set (VmHWM), reset per
point by writing "5" to /proc/self/clear_refs; weights are the RSS growth over loading.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

from bench.measure.nvml import NvmlWindow

GIB = 2**30
MEMORY_FIELDS: tuple[str, ...] = (
    "mem_weights_gib",
    "mem_peak_alloc_gib",
    "mem_peak_reserved_gib",
    "mem_nvml_peak_gib",
    "mem_used_gib",
)


def _proc_status_bytes(key: str) -> int | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in bytes, or None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    return _proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set since the last reset (VmHWM); getrusage's lifetime peak where /proc is missing."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux). False where the kernel refuses; the peak is then lifetime."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _gib(value: int | None) -> float | None:
    return None if value is None else value / GIB


class MemoryTracker:
    """Tracks one worker's memory for one model on `device` ("cpu", "cuda", "cuda:N")."""

    def __init__(self, device: str | torch.device) -> None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        self.is_cuda = dev.type == "cuda"
        self.baseline_bytes: int | None = None
        self.weights_bytes: int | None = None
        self.weights_source: str | None = None  # "allocated" | "rss" | "params"
        self.peak_resettable = True
        self.used_source: str | None = None  # "nvml" | "reserved" | "rss" | "rss-lifetime" after point_stats

    def _sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def baseline(self) -> None:
        """Record what is in use before the model is built."""
        self._sync()
        self.baseline_bytes = torch.cuda.memory_allocated(self.device) if self.is_cuda else rss_bytes()

    def after_load(self, model: torch.nn.Module | None = None) -> int | None:
        """Weights bytes (allocated, or RSS on CPU, now minus baseline); resets the peak counters.

        On CPU, RSS growth over loading also counts library code imported lazily while loading; pass `model`
        to count its parameter and buffer bytes instead (`weights_source` says which was used).
        """
        self._sync()
        if not self.is_cuda and model is not None:
            tensors = [*model.parameters(), *model.buffers()]
            self.weights_bytes = sum(t.numel() * t.element_size() for t in tensors)
            self.weights_source = "params"
        else:
            now = torch.cuda.memory_allocated(self.device) if self.is_cuda else rss_bytes()
            if now is not None:
                self.weights_bytes = max(0, now - (self.baseline_bytes or 0))
            self.weights_source = "allocated" if self.is_cuda else "rss"
        self.reset_peak()
        return self.weights_bytes

    def reset_peak(self) -> None:
        """Start a new peak window (before each point). torch resets to the current value, not zero."""
        self._sync()
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_resettable = reset_peak_rss()

    def point_stats(self, nvml: NvmlWindow | None = None) -> dict[str, float | None]:
        """The PointRecord memory fields (GiB) for the window since `reset_peak()`."""
        self._sync()
        weights = _gib(self.weights_bytes)
        if self.is_cuda:
            peak_alloc = _gib(torch.cuda.max_memory_allocated(self.device))
            peak_reserved = _gib(torch.cuda.max_memory_reserved(self.device))
            nvml_peak = nvml.peak_process_mem_gib if nvml is not None else None
            if nvml_peak is not None:
                used, self.used_source = nvml_peak, "nvml"
            else:
                used, self.used_source = peak_reserved, "reserved"
            return {
                "mem_weights_gib": weights,
                "mem_peak_alloc_gib": peak_alloc,
                "mem_peak_reserved_gib": peak_reserved,
                "mem_nvml_peak_gib": nvml_peak,
                "mem_used_gib": used,
            }
        self.used_source = "rss" if self.peak_resettable else "rss-lifetime"
        return {
            "mem_weights_gib": weights,
            "mem_peak_alloc_gib": None,
            "mem_peak_reserved_gib": None,
            "mem_nvml_peak_gib": None,
            "mem_used_gib": _gib(peak_rss_bytes()),
        }
