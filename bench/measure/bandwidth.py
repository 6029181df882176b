"""Memory bandwidth by a large copy: device-to-device on a GPU, a memcpy on CPU. Counts read + write bytes."""

from __future__ import annotations

import statistics
import time

import torch

CUDA_COPY_BYTES = 2 * 2**30  # 2 GiB source, as docs/METHOD.md records (3.0 TB/s on an H100 80GB HBM3)
CUDA_MIN_COPY_BYTES = 256 * 2**20
CPU_COPY_BYTES = 256 * 2**20
CUDA_WARMUP_S = 0.5  # copies before timing (see _cuda_bandwidth)
CUDA_ROUNDS = 3  # rounds of `repeats` timed copies; the fastest round's median counts


def _cuda_bandwidth(device: torch.device, size_bytes: int, repeats: int, warmup: int) -> float:
    size = size_bytes
    while True:
        try:
            src = torch.empty(size, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            break
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if size // 2 < CUDA_MIN_COPY_BYTES:
                raise
            size //= 2
    try:
        src.fill_(1)
        # Warm up for CUDA_WARMUP_S, not a few copies: right after memory goes back to the driver (empty_cache after
        # pruning) copies run ~14% slower for tens of ms (H100: 2590 vs 3010 GB/s; docs/PERF.md), and idle clocks
        # need time to rise. Then the best of CUDA_ROUNDS medians.
        torch.cuda.synchronize(device)
        t_end = time.perf_counter() + CUDA_WARMUP_S
        done = 0
        while done < warmup or time.perf_counter() < t_end:
            dst.copy_(src)
            torch.cuda.synchronize(device)
            done += 1
        medians: list[float] = []
        for _ in range(CUDA_ROUNDS):
            times: list[float] = []
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000.0)
            medians.append(statistics.median(times))
        return 2 * size / min(medians)
    finally:
        del src, dst
        torch.cuda.empty_cache()


def _cpu_bandwidth(size_bytes: int, repeats: int, warmup: int) -> float:
    n = size_bytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.zeros(n, dtype=torch.float32)  # touched, so no page faults inside the timed copies
    for _ in range(warmup):
        dst.copy_(src)
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * n * 4 / statistics.median(times)


def measure_bandwidth(
    device: str | torch.device = "cpu",
    size_bytes: int | None = None,
    repeats: int | None = None,
    warmup: int = 2,
) -> float:
    """Bytes per second (read + write) of a large copy on `device`; the median of `repeats` copies.

    CUDA: a 2 GiB device-to-device copy timed with events (halved on out-of-memory, down to 256 MiB), after
    0.5 s of warm-up copies; the best median of 3 rounds.
    CPU: a 256 MiB tensor copy timed with perf_counter; well under a second on a laptop.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return _cuda_bandwidth(dev, size_bytes or CUDA_COPY_BYTES, repeats or 10, warmup)
    return _cpu_bandwidth(size_bytes or CPU_COPY_BYTES, repeats or 5, max(1, warmup - 1))
