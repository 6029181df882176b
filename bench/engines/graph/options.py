"""Typed options of the `graph` engine: what a spec's `[sweep.engine_options]` may say, validated, and what is stored
with the run (runs.engine_options). Torch-free, so that the spec (and the dashboard's form) can validate them.

Every field has an `auto` value that `resolve(device)` turns into the concrete choice for that device (CUDA:
Triton kernels, Triton experts, CUDA graph; CPU: torch ops, the per-expert loop, no capture). The stored dict is
the resolved one, so a run says exactly what ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bench.errors import BadInputError

KERNELS = ("auto", "torch", "triton")
EXPERTS = ("auto", "loop", "grouped_mm", "triton")
CAPTURE = ("auto", "on", "off")


@dataclass(frozen=True)
class GraphOptions:
    """kernels: the ops backend for norm, rope + KV write, decode attention and router (torch | triton).
    experts: the expert path (loop: per-expert torch loop, CPU reference, not capturable; grouped_mm:
    torch._grouped_mm, CUDA bf16; triton: bench/engines/graph/kernels.py `moe`).
    capture: one decode step captured as a CUDA graph (CUDA only).
    router_split: decode router as split-K partials + a per-token top-k kernel (off: one program per token).
    moe_compact: with fewer (token, slot) pairs than experts, one program row per distinct routed expert.
    gemv: with kernels = triton, the dense linears of decode steps of <= 8 rows use the Triton GEMV where
    kernels.GEMV_CONFIG has a tile for their shape class (today lm_head only; cuBLAS measured faster for qkv/o_proj).
    splitk: with kernels = triton, qkv and o_proj of decode steps of <= kernels.SPLITK_MAX_ROWS rows run as split-K
    partials that rope_attn_decode / add_rmsnorm sum (kernels.splitk_linear) instead of cuBLAS (H200 batch 1: 2.71
    -> 2.63 ms/step); from 2 to kernels.SPLITK_MMA_MAX_ROWS rows the same on the tensor cores
    (kernels.splitk_mma_linear) where kernels.SPLITK_MMA_CONFIG has a tile for the row class."""

    kernels: str = "auto"
    experts: str = "auto"
    capture: str = "auto"
    router_split: bool = True
    moe_compact: bool = True
    gemv: bool = True
    splitk: bool = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, where: str = "sweep.engine_options") -> GraphOptions:
        """Validate a table of options; BadInputError names the field and the allowed values."""
        if raw is not None and not isinstance(raw, dict):
            raise BadInputError(f"{where}: must be a table such as {{kernels = \"triton\"}}, got {raw!r}")
        raw = dict(raw or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise BadInputError(f"{where}.{unknown[0]}: unknown option; the graph engine's options are "
                                f"{', '.join(sorted(names))}")
        for key, choices in (("kernels", KERNELS), ("experts", EXPERTS), ("capture", CAPTURE)):
            value = raw.get(key, "auto")
            if isinstance(value, bool) and key == "capture":
                value = raw[key] = "on" if value else "off"
            if value not in choices:
                raise BadInputError(f"{where}.{key}: must be one of {', '.join(choices)}; got {value!r}")
        for key in ("router_split", "moe_compact", "gemv", "splitk"):
            if key in raw and not isinstance(raw[key], bool):
                raise BadInputError(f"{where}.{key}: must be true or false; got {raw[key]!r}")
        return cls(**raw)

    def resolve(self, device_type: str) -> GraphOptions:
        """The concrete choices on a device type ("cuda" | "cpu"); raises BadInputError for impossible ones."""
        cuda = device_type == "cuda"
        kernels = self.kernels if self.kernels != "auto" else ("triton" if cuda else "torch")
        experts = self.experts if self.experts != "auto" else ("triton" if cuda else "loop")
        capture = self.capture if self.capture != "auto" else ("on" if cuda else "off")
        if capture == "on" and not cuda:
            capture = "off"  # nothing to capture on CPU: the same decoder runs eagerly
        if capture == "on" and experts == "loop":
            raise BadInputError("engine_options.experts: \"loop\" is not capturable (it reads routing on the host); "
                                "use experts = \"triton\" or \"grouped_mm\", or capture = \"off\"")
        gemv = self.gemv and kernels == "triton"
        splitk = self.splitk and kernels == "triton"
        return dataclasses.replace(self, kernels=kernels, experts=experts, capture=capture, gemv=gemv, splitk=splitk)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def non_default(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults (what a spec file needs to say)."""
        base = GraphOptions()
        return {k: v for k, v in self.to_dict().items() if getattr(base, k) != v}
