"""NVML access for the worker: device handles, driver version, and a sampling thread over a timed window.

Every NVML call is guarded: without a GPU, without the driver library, or when a query is not supported, the
affected field becomes None and the reason goes into `NvmlWindow.notes`. Nothing here raises on NVML failure.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

try:  # package nvidia-ml-py
    import pynvml
except Exception:  # pragma: no cover - the package is a requirement, but the worker must survive without it
    pynvml = None  # type: ignore[assignment]


@dataclass
class NvmlWindow:
    """What NVML saw during one timed window. None = not available (CPU run, no NVML, query unsupported)."""

    peak_process_mem_bytes: int | None = None  # this process's used GPU memory, max over samples
    sm_clock_mhz: float | None = None  # median SM clock over samples
    throttle_reasons: int | None = (
        None  # bitwise OR of clock-event reasons over samples (raw: 0x1 = idle, 0x4 = power cap)
    )
    energy_j: float | None = None  # total-energy counter difference over the window, joules
    seconds: float = 0.0  # window length (wall clock)
    samples: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def peak_process_mem_gib(self) -> float | None:
        return None if self.peak_process_mem_bytes is None else self.peak_process_mem_bytes / 2**30


def _nvml_error_types() -> tuple[type[BaseException], ...]:
    if pynvml is None:
        return (OSError,)
    return (pynvml.NVMLError, OSError, AttributeError, TypeError, ValueError)


class _Nvml:
    """Reference-counted nvmlInit/nvmlShutdown; `ok` tells whether NVML could be initialised."""

    def __init__(self) -> None:
        self.ok = False
        self.error: str | None = None

    def __enter__(self) -> _Nvml:
        if pynvml is None:
            self.error = "nvidia-ml-py (pynvml) is not installed"
            return self
        try:
            pynvml.nvmlInit()
            self.ok = True
        except _nvml_error_types() as exc:
            self.error = f"NVML unavailable: {exc}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ok:
            try:
                pynvml.nvmlShutdown()
            except _nvml_error_types():
                pass
            self.ok = False


def _torch_device_ids(device_index: int) -> tuple[str | None, str | None]:
    """(NVML UUID string, PCI bus id) of a torch CUDA device, where torch can tell them."""
    uuid = pci = None
    try:
        import torch

        props = torch.cuda.get_device_properties(device_index)
        raw = getattr(props, "uuid", None)
        if raw is not None:
            text = str(raw)
            uuid = text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
        bus = getattr(props, "pci_bus_id", None)
        dev = getattr(props, "pci_device_id", None)
        dom = getattr(props, "pci_domain_id", None)
        if bus is not None and dev is not None:
            pci = f"{int(dom or 0):08x}:{int(bus):02x}:{int(dev):02x}.0"
    except Exception:
        pass
    return uuid, pci


def device_handle(device_index: int) -> Any | None:
    """NVML handle of torch's CUDA device `device_index` (NVML must be initialised), or None.

    torch's index is relative to CUDA_VISIBLE_DEVICES while NVML's is not, so match by UUID, then by PCI bus
    id, then through CUDA_VISIBLE_DEVICES, and only then by the bare index.
    """
    if pynvml is None:
        return None
    errors = _nvml_error_types()
    uuid, pci = _torch_device_ids(device_index)
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except errors:
            pass
    if pci:
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(pci)
        except errors:
            pass
    index = device_index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        if device_index < len(entries):
            entry = entries[device_index]
            if entry.isdigit():
                index = int(entry)
            else:
                try:
                    return pynvml.nvmlDeviceGetHandleByUUID(entry)
                except errors:
                    pass
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except errors:
        return None


def driver_version() -> str | None:
    """The NVIDIA driver version, or None without NVML."""
    with _Nvml() as nv:
        if not nv.ok:
            return None
        try:
            value = pynvml.nvmlSystemGetDriverVersion()
        except _nvml_error_types():
            return None
        return value.decode() if isinstance(value, bytes) else str(value)


def _process_memory(handle: Any, pid: int) -> tuple[int | None, bool]:
    """(used bytes of `pid` on the device or None, whether the query itself worked)."""
    getter = getattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", None)
    if getter is None:
        return None, False
    try:
        procs = getter(handle)
    except _nvml_error_types():
        return None, False
    for proc in procs:
        if getattr(proc, "pid", None) == pid:
            used = getattr(proc, "usedGpuMemory", None)
            return (int(used) if used is not None else None), True
    return None, True


def _throttle_reasons(handle: Any) -> int | None:
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        getter = getattr(pynvml, name, None)
        if getter is None:
            continue
        try:
            return int(getter(handle))
        except _nvml_error_types():
            continue
    return None


def _energy_mj(handle: Any) -> int | None:
    try:
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except _nvml_error_types():
        return None


def _sm_clock(handle: Any) -> int | None:
    try:
        return int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
    except _nvml_error_types():
        return None


class NvmlSampler:
    """Context manager: samples NVML in a background thread for the duration of a `with` block.

    `device_index` is torch's CUDA index; None (a CPU run) gives an all-None window. The result is
    `sampler.window` after the block ends.
    """

    def __init__(self, device_index: int | None, pid: int | None = None, interval_s: float = 0.05) -> None:
        self.device_index = device_index
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self.window = NvmlWindow()
        self._nvml = _Nvml()
        self._handle: Any | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._mem_peak: int | None = None
        self._proc_query_ok = False
        self._clocks: list[int] = []
        self._reasons: int | None = None
        self._samples = 0
        self._energy_start: int | None = None
        self._t0 = 0.0

    @property
    def result(self) -> NvmlWindow:
        """Alias of `window` (filled when the `with` block ends)."""
        return self.window

    # -- sampling -----------------------------------------------------------------------------------------
    def _sample(self) -> None:
        handle = self._handle
        if handle is None:
            return
        used, query_ok = _process_memory(handle, self.pid)
        clock = _sm_clock(handle)
        reasons = _throttle_reasons(handle)
        with self._lock:
            self._samples += 1
            self._proc_query_ok = self._proc_query_ok or query_ok
            if used is not None:
                self._mem_peak = used if self._mem_peak is None else max(self._mem_peak, used)
            if clock is not None:
                self._clocks.append(clock)
            if reasons is not None:
                self._reasons = reasons if self._reasons is None else (self._reasons | reasons)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # never let the sampler take the run down
                self._sample()

    # -- context manager ----------------------------------------------------------------------------------
    def __enter__(self) -> NvmlSampler:
        self._t0 = time.perf_counter()
        if self.device_index is None:
            self.window.notes.append("cpu: no NVML sampling")
            return self
        self._nvml.__enter__()
        if not self._nvml.ok:
            self.window.notes.append(self._nvml.error or "NVML unavailable")
            return self
        self._handle = device_handle(self.device_index)
        if self._handle is None:
            self.window.notes.append(f"NVML has no handle for cuda:{self.device_index}")
            return self
        self._energy_start = _energy_mj(self._handle)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        seconds = time.perf_counter() - self._t0
        energy_j = None
        if self._handle is not None:
            with contextlib.suppress(Exception):
                self._sample()
            end = _energy_mj(self._handle)
            if self._energy_start is not None and end is not None and end >= self._energy_start:
                energy_j = (end - self._energy_start) / 1000.0
            elif self._handle is not None:
                self.window.notes.append("energy counter not available")
        self._nvml.__exit__()
        with self._lock:
            w = self.window
            w.seconds = seconds
            w.samples = self._samples
            w.peak_process_mem_bytes = self._mem_peak
            w.sm_clock_mhz = float(statistics.median(self._clocks)) if self._clocks else None
            w.throttle_reasons = self._reasons
            w.energy_j = energy_j
            if self._handle is not None and self._mem_peak is None:
                if self._proc_query_ok:
                    w.notes.append(f"pid {self.pid} not in NVML's process list (container pid namespace?)")
                else:
                    w.notes.append("NVML per-process memory query failed")
