"""The expert path of the `graph` decoder: one `Experts` object per layer, built from the HF experts module by the
first registered factory that recognises its weight format.

Interface (what a weight format implements; see the package docstring):
    experts(x, topi, topw, counter) -> (T*k, H)
        x (T, H) normed hidden states; topi (T, k) int expert ids; topw (T, k) float32 routing weights;
        counter: None, or an int32 scalar tensor to add the number of distinct experts routed to (decode steps).
        Returns each (token, slot)'s expert output times its routing weight, in x's dtype, row t*k + j.
        The gate_up GEMM's output goes through the clamped SwiGLU: gate = min(gate, limit),
        up = clamp(up, -limit, limit), (up + 1) * gate * sigmoid(alpha * gate), with gate/up interleaved.
        Must be capturable in a CUDA graph when the engine captures (no host reads of routing).
    experts.num_experts: int; experts.weight_format: str (stored with the run, e.g. "bf16").
    experts.qkv_early: bool, whether the one-row qkv GEMV that follows these experts' down GEMM may trigger its
        consumer early (PDL mode 2, kernels.splitk_norm_linear's `early`; measured per format on the H200).
    experts.qkv_pre_min_ks: int | None, the fewest rows per token of their down GEMM at which that GEMV loads its
        first weight tiles before its PDL wait (kernels.splitk_norm_linear's `pre_min_ks`; None:
        kernels.LAZY_PRE_MIN_KS).

`register_experts(factory)` adds a format: factory(module, options) returns an Experts or None (not mine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from bench.engines.graph.options import GraphOptions


class Experts(Protocol):
    num_experts: int
    weight_format: str
    qkv_early: bool
    qkv_pre_min_ks: int | None

    def __call__(
        self, x: torch.Tensor, topi: torch.Tensor, topw: torch.Tensor, counter: torch.Tensor | None
    ) -> torch.Tensor: ...


ExpertsFactory = Callable[[torch.nn.Module, GraphOptions], "Experts | None"]
_FACTORIES: list[ExpertsFactory] = []


def register_experts(factory: ExpertsFactory) -> ExpertsFactory:
    """Add a weight format; later registrations are tried first (a specific format before the dense fallback)."""
    _FACTORIES.insert(0, factory)
    return factory


def build_experts(module: torch.nn.Module, options: GraphOptions) -> Experts:
    for factory in _FACTORIES:
        experts = factory(module, options)
        if experts is not None:
            return experts
    from bench.errors import BadInputError

    raise BadInputError(
        f"engine 'graph' has no expert backend for {type(module).__name__} (supported: bf16/float16/float32 "
        "gate_up_proj/down_proj tensors); use engine = \"hf\" for this model"
    )


def swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss's clamped SwiGLU over interleaved (gate, up) columns, as HF's GptOssExperts."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(min=None, max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def count_distinct(topi: torch.Tensor, num_experts: int, counter: torch.Tensor) -> None:
    """counter += number of distinct experts in topi (device-side, capturable)."""
    hit = torch.zeros(num_experts, dtype=torch.int32, device=topi.device)
    hit.index_fill_(0, topi.reshape(-1).long(), 1)
    counter.add_(hit.sum())


class DenseExperts:
    """Experts stored as dense bf16/float16/float32 tensors (HF GptOssExperts): gate_up (E, H, 2I) with bias
    (E, 2I), down (E, I, H) with bias (E, H). Holds references to the HF parameters (never modifies them).

    mode: "loop" (per-expert torch loop: the CPU reference; reads routing on the host, not capturable),
    "grouped_mm" (torch._grouped_mm over expert-sorted rows; CUDA bf16) or "triton" (kernels.moe)."""

    weight_format = "dense"
    qkv_early = True  # the bf16 expert GEMMs: kernels.PDL_EARLY_MORE's "splitk_qkv" (docs/PERF.md session 13)
    qkv_pre_min_ks = None  # kernels.LAZY_PRE_MIN_KS (docs/PERF.md session 12)

    def __init__(self, module: torch.nn.Module, mode: str, compact: bool, alpha: float, limit: float) -> None:
        self.gate_up = module.gate_up_proj
        self.gate_up_bias = module.gate_up_proj_bias
        self.down = module.down_proj
        self.down_bias = module.down_proj_bias
        self.num_experts = int(self.gate_up.shape[0])
        self.weight_format = str(self.gate_up.dtype).removeprefix("torch.")
        self.alpha, self.limit = alpha, limit
        self.mode, self.compact = mode, compact
        if mode == "triton":
            from bench.engines.graph import kernels

            self._kernels = kernels

    def __call__(
        self, x: torch.Tensor, topi: torch.Tensor, topw: torch.Tensor, counter: torch.Tensor | None
    ) -> torch.Tensor:
        if self.mode == "triton":
            return self._kernels.moe(x, self.gate_up, self.gate_up_bias, self.down, self.down_bias, topi, topw,
                                     self.alpha, self.limit, counter, compact=self.compact)
        if counter is not None:
            count_distinct(topi, self.num_experts, counter)
        if self.mode == "grouped_mm":
            return self._grouped(x, topi, topw)
        return self._loop(x, topi, topw)

    def _loop(self, x: torch.Tensor, topi: torch.Tensor, topw: torch.Tensor) -> torch.Tensor:
        k = topi.shape[1]
        out = torch.zeros((x.shape[0] * k, x.shape[1]), dtype=x.dtype, device=x.device)
        flat = topi.reshape(-1).long()
        for e in torch.unique(flat).tolist():
            pairs = torch.nonzero(flat == e).squeeze(1)
            h = swiglu(x[pairs // k] @ self.gate_up[e] + self.gate_up_bias[e], self.alpha, self.limit)
            y = h @ self.down[e] + self.down_bias[e]
            out[pairs] = (y * topw.reshape(-1)[pairs, None]).to(x.dtype)
        return out

    def _grouped(self, x: torch.Tensor, topi: torch.Tensor, topw: torch.Tensor) -> torch.Tensor:
        k = topi.shape[1]
        flat = topi.reshape(-1).long()
        sorted_e, order = torch.sort(flat, stable=True)
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        gu = torch._grouped_mm(x[order // k], self.gate_up, offs=offs) + self.gate_up_bias[sorted_e]
        h = swiglu(gu, self.alpha, self.limit)
        y = torch._grouped_mm(h, self.down, offs=offs) + self.down_bias[sorted_e]
        y = y * topw.reshape(-1)[order, None].to(y.dtype)
        out = torch.empty((flat.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
        out[order] = y.to(x.dtype)
        return out


def _swiglu_params(module: torch.nn.Module) -> tuple[float, float]:
    cfg = getattr(module, "config", None)
    alpha = float(getattr(module, "alpha", getattr(cfg, "swiglu_alpha", 1.702)))
    limit = float(getattr(module, "limit", getattr(cfg, "swiglu_limit", 7.0)))
    return alpha, limit


@register_experts
def _dense_factory(module: torch.nn.Module, options: GraphOptions) -> Experts | None:
    w = getattr(module, "gate_up_proj", None)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dim() != 3:
        return None
    alpha, limit = _swiglu_params(module)
    return DenseExperts(module, options.experts, options.moe_compact, alpha, limit)


class Mxfp4Experts:
    """Experts in the released MXFP4 layout (bench.models.mxfp4.Mxfp4Experts: uint8 blocks [E, N, K/32, 16] and
    e8m0 scales [E, N, K/32] per projection, biases in the model dtype). mode "triton": the MXFP4 kernels
    (mxfp4_kernels.moe_mxfp4: blocks and scales read once per step, decoded in registers, MMA); any other mode:
    the torch reference (dequantize the layer, then the dense path of that mode)."""

    weight_format = "mxfp4"

    @property
    def qkv_early(self) -> bool:
        """mxfp4_kernels.MXFP4_QKV_EARLY with the MXFP4 kernels (measured slower with them: docs/MXFP4.md round
        13); True otherwise (the torch reference launches no PDL kernels)."""
        return self.mode != "triton" or bool(self._kernels.MXFP4_QKV_EARLY)

    @property
    def qkv_pre_min_ks(self) -> int | None:
        """mxfp4_kernels.MXFP4_LAZY_PRE_MIN_KS with the MXFP4 kernels (their down GEMM triggers the GEMV early,
        MXFP4_DOWN_EARLY: docs/MXFP4.md round 14); None otherwise."""
        return int(self._kernels.MXFP4_LAZY_PRE_MIN_KS) if self.mode == "triton" else None

    def __init__(self, module: torch.nn.Module, mode: str, compact: bool, alpha: float, limit: float) -> None:
        self.module = module
        self.num_experts = int(module.gate_up_proj_blocks.shape[0])
        self.alpha, self.limit = alpha, limit
        self.mode, self.compact = mode, compact
        if mode == "triton":
            from bench.engines.graph import mxfp4_kernels

            self._kernels = mxfp4_kernels
            # the dq loop may fold 2^126 into the scale (one bf16 multiply by 2^(s-1)) when every scale <= 128
            self.fold = max(int(module.gate_up_proj_scales.max()), int(module.down_proj_scales.max())) <= 128

    def __call__(
        self, x: torch.Tensor, topi: torch.Tensor, topw: torch.Tensor, counter: torch.Tensor | None
    ) -> torch.Tensor:
        m = self.module
        if self.mode == "triton":
            return self._kernels.moe_mxfp4(
                x, m.gate_up_proj_blocks, m.gate_up_proj_scales, m.gate_up_proj_bias, m.down_proj_blocks,
                m.down_proj_scales, m.down_proj_bias, topi, topw, self.alpha, self.limit, counter, compact=self.compact,
                fold=self.fold,
            )
        from types import SimpleNamespace

        gu, dn = m.expert_weights(slice(None), x.dtype)
        dense = SimpleNamespace(gate_up_proj=gu, gate_up_proj_bias=m.gate_up_proj_bias, down_proj=dn,
                                down_proj_bias=m.down_proj_bias)
        return DenseExperts(dense, self.mode, self.compact, self.alpha, self.limit)(x, topi, topw, counter)


@register_experts
def _mxfp4_factory(module: torch.nn.Module, options: GraphOptions) -> Experts | None:
    if not isinstance(getattr(module, "gate_up_proj_blocks", None), torch.Tensor):
        return None
    alpha, limit = _swiglu_params(module)
    return Mxfp4Experts(module, options.experts, options.moe_compact, alpha, limit)
