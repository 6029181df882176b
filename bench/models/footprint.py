"""Memory preflight: a model's bytes estimated before it is built, against the target device's free memory.

The estimate is the roofline's `ArchSummary` (built on the meta device: no memory) × the dtype's width for the
whole unpruned model (pruning happens after loading, so the full model is resident first), plus the KV cache of
the largest batch at the full context (prompt_len + new_tokens), plus a 10% margin for activations, logits and
the allocator (a quick estimate from the config's sizes skips that count when the model clearly fits, so a
small model costs no extra start-up time). Free memory is the device's free memory from NVML (torch's
`mem_get_info` where NVML cannot see the card) on CUDA, and `MemAvailable` from /proc/meminfo on the CPU. A
variant that does not fit is refused with exit code 2 before anything is built or written (the 20B preset in
float32 on a CPU box: ~84 GB).
Runs in the bench process (not the dashboard): imports torch and transformers lazily.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BadInputError

GIB = 2**30
MARGIN = 1.10
DTYPE_BYTES: dict[str, float] = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
_ARCH_CACHE: dict[tuple[str, float], object] = {}


@dataclass
class MemoryNeed:
    """Estimated bytes of one variant on its device."""

    model: str
    dtype: str
    weights_bytes: float
    kv_bytes: float
    batch: int
    context: int

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.kv_bytes) * MARGIN


def estimate(model: str, dtype: str, max_batch: int, prompt_len: int, new_tokens: int) -> MemoryNeed:
    """Bytes `model` needs in `dtype` (a resolved name: bfloat16 | float16 | float32) at `max_batch` streams."""
    from bench.models.loading import resolve_config
    from bench.roofline import ArchSummary, kv_bytes_per_step

    width = DTYPE_BYTES.get(dtype, 4.0)
    key = (model, width)
    if key not in _ARCH_CACHE:  # a spec often names one model in several variants
        _ARCH_CACHE[key] = ArchSummary.from_config(resolve_config(model), dtype_bytes=width)
    arch = _ARCH_CACHE[key]
    context = prompt_len + new_tokens
    return MemoryNeed(model=model, dtype=dtype, weights_bytes=arch.total_params * width,
                      kv_bytes=kv_bytes_per_step(arch, max_batch, context), batch=max_batch, context=context)


def rough_bytes(model: str, dtype: str, max_batch: int, context: int) -> float | None:
    """A quick upper-bound-ish estimate from the config's sizes (no model built): embeddings and lm_head, every
    layer's attention and experts (3 matrices each), KV cache without sliding windows. None when the config
    lacks a size. Only used to skip the exact count when the model clearly fits."""
    from bench.models.loading import resolve_config

    cfg = resolve_config(model)
    cfg = getattr(cfg, "text_config", None) or cfg
    try:
        h, n_layers, vocab = int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.vocab_size)
        heads = int(cfg.num_attention_heads)
        kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
        hd = int(getattr(cfg, "head_dim", None) or h // heads)
        inter = int(getattr(cfg, "intermediate_size", None) or 4 * h)
        experts = int(getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None) or 1)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    width = DTYPE_BYTES.get(dtype, 4.0)
    attn = h * hd * (2 * heads + 2 * kv) + hd * (heads + 2 * kv) + heads
    mlp = experts * (3 * h * inter + 3 * inter + h) + experts * (h + 1)
    params = 2 * vocab * h + n_layers * (attn + mlp + 4 * h) + h
    kv_cache = max_batch * context * n_layers * 2 * kv * hd * width
    return (params * width + kv_cache) * MARGIN


def free_bytes(device: str, cap_gib: float | None = None) -> tuple[int | None, str]:
    """(free bytes, where the figure comes from) on `device`; None when it cannot be told."""
    free: int | None = None
    source = "unknown"
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        from bench.measure.nvml import _Nvml, _nvml_error_types, device_handle, pynvml

        with _Nvml() as nv:
            handle = device_handle(index) if nv.ok else None
            if handle is not None:
                try:
                    free, source = int(pynvml.nvmlDeviceGetMemoryInfo(handle).free), "NVML free memory"
                except _nvml_error_types():
                    free = None
        if free is None:
            import torch

            free, source = int(torch.cuda.mem_get_info(index)[0]), "CUDA free memory"
        if cap_gib:
            free, source = min(free, int(cap_gib * GIB)), source + f" (capped at {cap_gib} GiB)"
        return free, source
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    return None, source


def check_fits(need: MemoryNeed, device: str, free: int | None, source: str, where: str, flag: str) -> None:
    """Raise BadInputError (exit 2) when `need` exceeds `free`; the message names the need, what is free, and
    the ways out (`flag` is the command's switch to skip the check)."""
    if free is None or need.total_bytes <= free:
        return
    ways = ["a smaller model (e.g. synthetic:tiny-moe)", "smaller batch sizes or a shorter prompt/new_tokens"]
    if device == "cpu":
        ways.insert(0, "a GPU machine (--device cuda)")
        if need.dtype == "float32":
            ways.append("--dtype bfloat16 (half the bytes)")
    ways.append(f"{flag} to try anyway")
    raise BadInputError(
        f"{where}: {need.model} needs about {need.total_bytes / GIB:.1f} GiB on {device} "
        f"({need.weights_bytes / GIB:.1f} GiB of {need.dtype} weights + {need.kv_bytes / GIB:.2f} GiB KV cache at "
        f"batch {need.batch}, context {need.context}, + {round((MARGIN - 1) * 100)}% margin), but only "
        f"{free / GIB:.1f} GiB is free ({source}). Nothing was built or written. Use " + ", or ".join(ways)
    )


def preflight_memory(model: str, device: str, dtype: str, max_batch: int, prompt_len: int, new_tokens: int,
                     where: str, flag: str = "--no-memory-check", cap_gib: float | None = None) -> MemoryNeed | None:
    """Estimate, compare, refuse: the one memory check for sweeps, reruns and perf."""
    try:
        free, source = free_bytes(device, cap_gib)
        if free is None:
            return None
        rough = rough_bytes(model, dtype, max_batch, prompt_len + new_tokens)
        if rough is not None and 2 * rough <= free:
            return None  # fits with room to spare: no need to build the architecture for the exact count
        need = estimate(model, dtype, max_batch, prompt_len, new_tokens)
    except BadInputError:
        raise
    except Exception as exc:  # an estimator that cannot read this model must not block the run: say so, go on
        print(f"note: memory preflight skipped for {model} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    check_fits(need, device, free, source, where, flag)
    return need
