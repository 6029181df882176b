"""Bandwidth roofline of MoE decode: bytes read per step, ceiling tok/s and MBU (see docs/METHOD.md, "Roofline").

One decode step of a batch of B streams reads, at best once each:
- every non-expert weight (attention, router, norms, lm_head), except the input embedding table, of which only
  the B looked-up rows are read (a tied embedding is read in full anyway, as the lm_head);
- in each MoE layer, the U distinct experts routed by any of the B tokens: U = E·(1 − (1 − k/E)^B) for
  uniform routing, or the distinct count the engine measured;
- the KV cache: B × context tokens on full-attention layers, B × min(context, window) on sliding layers.

Every tensor counts at its own width: MXFP4 experts at their blocks + scales (4.25 bits per weight), the other
weights at their dtype, the KV cache at the cache's dtype (the activation dtype). `roofline_point` is the one
ceiling computation; it also says whether U was measured and which bandwidth it divided by.

Ceiling tok/s = B / (bytes / bandwidth). MBU = measured tok/s / ceiling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EXPERT_INDEX_RE = re.compile(r"(?:^|\.)experts\.(\d+)\.")
BYTES_PER_MXFP4_WEIGHT = (4 + 8 / 32) / 8  # e2m1 code + its share of the block's e8m0 scale


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _first_positive_int(config: Any, names: tuple[str, ...]) -> int:
    cfg = _text_config(config)
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def config_num_experts(config: Any) -> int:
    return _first_positive_int(config, ("num_local_experts", "num_experts", "n_routed_experts"))


def config_top_k(config: Any) -> int:
    return _first_positive_int(config, ("num_experts_per_tok", "top_k", "moe_topk"))


def _layer_types(cfg: Any, num_layers: int) -> list[str]:
    types = getattr(cfg, "layer_types", None)
    if types:
        return [str(t) for t in types]
    sliding = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
    return ["sliding_attention" if sliding else "full_attention"] * num_layers


@dataclass
class ArchSummary:
    """What the roofline needs to know about a (possibly pruned) MoE model."""

    num_layers: int
    num_experts: int  # experts per MoE layer (after pruning)
    top_k: int  # the config's top_k; a point's top_k is passed separately
    expert_params: float  # parameters of one expert in one layer
    non_expert_params: int  # everything else, input embedding and lm_head included
    kv_heads: int
    head_dim: int
    layer_types: list[str] = field(default_factory=list)  # "sliding_attention" | "full_attention" per layer
    sliding_window: int | None = None
    dtype_bytes: float = 2.0
    hidden_size: int = 0
    embedding_params: int = 0  # input embedding table (vocab x hidden)
    tied_embeddings: bool = False  # the lm_head is the embedding table
    moe_layers: int | None = None  # layers that have experts; None = all num_layers
    # bytes at each tensor's own width (None: params x dtype_bytes, the single-width model)
    expert_bytes: float | None = None  # one expert in one layer (MXFP4: blocks + scales + biases)
    non_expert_bytes: float | None = None  # everything else, input embedding and lm_head included
    embedding_bytes: float | None = None  # the input embedding table
    kv_dtype_bytes: float | None = None  # one K or V element in the cache
    weights: str = "bf16"  # expert weight format: bf16 | mxfp4

    @property
    def expert_bytes_each(self) -> float:
        return self.expert_params * self.dtype_bytes if self.expert_bytes is None else self.expert_bytes

    @property
    def kv_bytes_per_element(self) -> float:
        return self.dtype_bytes if self.kv_dtype_bytes is None else self.kv_dtype_bytes

    def streamed_non_expert_bytes(self) -> float:
        """Bytes of the non-expert weights read wholesale each step (all but an untied embedding table)."""
        if self.non_expert_bytes is None:
            return self.streamed_non_expert_params() * self.dtype_bytes
        emb = self.embedding_params * self.dtype_bytes if self.embedding_bytes is None else self.embedding_bytes
        return self.non_expert_bytes - (0 if self.tied_embeddings else emb)

    def embedding_row_bytes(self) -> float:
        if self.embedding_bytes is None or not self.embedding_params:
            return self.hidden_size * self.dtype_bytes
        return self.hidden_size * self.embedding_bytes / self.embedding_params

    @property
    def expert_layers(self) -> int:
        return self.num_layers if self.moe_layers is None else self.moe_layers

    @property
    def total_params(self) -> float:
        return self.non_expert_params + self.expert_layers * self.num_experts * self.expert_params

    @property
    def expert_params_total(self) -> float:
        return self.expert_layers * self.num_experts * self.expert_params

    def active_params(self, top_k: int | None = None) -> float:
        """Parameters one token uses: non-expert weights (minus the embedding table) + L × k experts."""
        k = self.top_k if top_k is None else top_k
        return self.streamed_non_expert_params() + self.expert_layers * k * self.expert_params

    def streamed_non_expert_params(self) -> int:
        """Non-expert parameters read wholesale each step (all but an untied embedding table)."""
        return self.non_expert_params - (0 if self.tied_embeddings else self.embedding_params)

    @classmethod
    def from_model(cls, model: Any, dtype_bytes: float | None = None, weights: str | None = None) -> ArchSummary:
        """Count a built model's real tensors (works on the meta device), each at its own width. Experts =
        `*.experts.*` tensors; MXFP4 experts are their uint8 `*_blocks` (two weights a byte) and `*_scales`.

        dtype_bytes: count every floating tensor, and the KV cache, at this width instead of their own (a meta
        build standing for a bf16 model). weights="mxfp4": count the expert matrices of a bf16 build at MXFP4's
        4.25 bits (what the model costs once quantized).
        """
        cfg = _text_config(model.config)
        non_expert = 0
        expert_total = 0
        non_expert_b = 0.0
        expert_b = 0.0
        expert_layer_ids: set[int] = set()
        stacked_experts: int | None = None  # leading dim of fused expert tensors (gpt-oss style)
        listed_experts: set[tuple[int, int]] = set()  # (layer, expert) of ModuleList experts (experts.<i>.*)
        tensors = list(model.named_parameters())  # tied parameters are listed once
        tensors += [(n, b) for n, b in model.named_buffers() if n.endswith(("_blocks", "_scales"))]
        holds_mxfp4 = any(n.endswith("_blocks") for n, _ in tensors)

        def width(t: Any) -> float:
            return float(dtype_bytes) if dtype_bytes is not None and t.is_floating_point() else float(t.element_size())

        for name, param in tensors:
            if ".experts." not in f".{name}":
                non_expert += param.numel()
                non_expert_b += param.numel() * width(param)
                continue
            if name.endswith("_scales"):
                expert_b += param.numel()  # one e8m0 byte per 32 weights
                continue
            blocks = name.endswith("_blocks")
            count = param.numel() * (2 if blocks else 1)
            expert_total += count
            if blocks:
                expert_b += param.numel()  # one byte holds two e2m1 weights
            elif weights == "mxfp4" and param.dim() >= 3:
                expert_b += count * BYTES_PER_MXFP4_WEIGHT
            else:
                expert_b += count * width(param)
            match = _LAYER_RE.search(name)
            layer = int(match.group(1)) if match else -1
            expert_layer_ids.add(layer)
            listed = _EXPERT_INDEX_RE.search(name)
            if listed:
                listed_experts.add((layer, int(listed.group(1))))
            elif stacked_experts is None and param.dim() >= 2:
                stacked_experts = int(param.shape[0])
        num_layers = int(getattr(cfg, "num_hidden_layers", 0) or len(expert_layer_ids))
        # the tensors, not the config, say how many experts a (pruned) model holds
        if listed_experts:
            num_experts = len(listed_experts) // max(1, len(expert_layer_ids))
        else:
            num_experts = stacked_experts or config_num_experts(cfg)
        moe_layers = len(expert_layer_ids) or (num_layers if expert_total else 0)
        per_expert = moe_layers * num_experts
        expert_params = expert_total / per_expert if expert_total and num_experts else 0.0
        emb = model.get_input_embeddings()
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        emb_weight = getattr(emb, "weight", None)
        tied = out is not None and getattr(out, "weight", None) is emb_weight
        act_bytes = width(emb_weight) if emb_weight is not None else float(dtype_bytes or 2.0)
        num_heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
        hidden = int(getattr(cfg, "hidden_size", 0) or 0)
        head_dim = getattr(cfg, "head_dim", None) or (hidden // num_heads if hidden else 0)
        emb_numel = int(emb_weight.numel()) if emb_weight is not None else 0
        return cls(
            num_layers=num_layers,
            num_experts=num_experts,
            top_k=config_top_k(cfg),
            expert_params=expert_params,
            non_expert_params=non_expert,
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or num_heads),
            head_dim=int(head_dim),
            layer_types=_layer_types(cfg, num_layers),
            sliding_window=getattr(cfg, "sliding_window", None),
            dtype_bytes=act_bytes,
            hidden_size=hidden,
            embedding_params=emb_numel,
            tied_embeddings=bool(tied),
            moe_layers=moe_layers if moe_layers != num_layers else None,
            expert_bytes=expert_b / per_expert if expert_total and num_experts else 0.0,
            non_expert_bytes=non_expert_b,
            embedding_bytes=emb_numel * act_bytes,
            kv_dtype_bytes=act_bytes,  # the engines' caches hold K/V in the activation dtype
            weights="mxfp4" if holds_mxfp4 or weights == "mxfp4" else "bf16",
        )

    @classmethod
    def from_config(cls, config: Any, dtype_bytes: float = 2.0, weights: str = "bf16") -> ArchSummary:
        """Build the architecture on the meta device (no memory) and count its tensors exactly."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.from_model(model, dtype_bytes=dtype_bytes, weights=weights)


def expected_distinct_experts(num_experts: int, top_k: int, batch: int) -> float:
    """Expected distinct experts touched in one layer by `batch` tokens routing uniformly to `top_k` each."""
    if num_experts <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** batch)


def kv_bytes_per_step(arch: ArchSummary, batch: int, context_len: float) -> float:
    """KV cache bytes read in one decode step for the whole batch, at the cache's dtype."""
    per_token_layer = 2 * arch.kv_heads * arch.head_dim * arch.kv_bytes_per_element  # K and V
    window = arch.sliding_window
    tokens = 0.0
    for kind in arch.layer_types or ["full_attention"] * arch.num_layers:
        if "sliding" in kind and window:
            tokens += min(context_len, window)
        else:
            tokens += context_len
    return batch * tokens * per_token_layer


def bytes_per_step(
    arch: ArchSummary,
    batch: int,
    top_k: int,
    context_len: float,
    distinct_experts: float | None = None,
) -> float:
    """Bytes one decode step must read: non-expert weights + L × U × expert bytes + KV (whole batch), every
    tensor at its own width.

    `distinct_experts` is U, the measured mean distinct experts per layer per step; None = uniform expectation.
    """
    u = expected_distinct_experts(arch.num_experts, top_k, batch) if distinct_experts is None else distinct_experts
    weights = arch.streamed_non_expert_bytes()
    embedding_rows = 0.0 if arch.tied_embeddings else batch * arch.embedding_row_bytes()
    experts = arch.expert_layers * u * arch.expert_bytes_each
    return weights + embedding_rows + experts + kv_bytes_per_step(arch, batch, context_len)


def mbu(measured_tps: float | None, ceiling: float | None) -> float | None:
    """Model bandwidth utilisation: measured / ceiling (None when either is unknown)."""
    if measured_tps is None or not ceiling:
        return None
    return measured_tps / ceiling


def mean_decode_context(prompt_len: int, new_tokens: int) -> float:
    """Mean context length over the decode steps (prompt 256 + 2048 new -> 1280)."""
    return prompt_len + new_tokens / 2


@dataclass
class RooflinePoint:
    """The roofline of one (batch, top_k, context) point: what a point records about its ceiling."""

    batch: int
    top_k: int
    context_len: float
    distinct_experts: float
    bytes_per_step: float
    ceiling_tps: float
    kv_bytes: float = 0.0
    experts_measured: bool = False  # U counted by the engine (True) or the uniform-routing expectation
    bandwidth_source: str = "measured"  # measured (device copy) | datasheet

    @property
    def per_stream_tps(self) -> float:
        return self.ceiling_tps / self.batch


def roofline_point(
    arch: ArchSummary,
    batch: int,
    top_k: int,
    context_len: float,
    bandwidth_bytes_s: float,
    distinct: float | None = None,
    bandwidth_source: str = "measured",
) -> RooflinePoint:
    """Ceiling tok/s = B / (bytes / bandwidth) for one point; `distinct` is the measured U (None: assumed)."""
    u = expected_distinct_experts(arch.num_experts, top_k, batch) if distinct is None else distinct
    nbytes = bytes_per_step(arch, batch, top_k, context_len, u)
    return RooflinePoint(batch, top_k, context_len, u, nbytes, batch * bandwidth_bytes_s / nbytes,
                         kv_bytes=kv_bytes_per_step(arch, batch, context_len), experts_measured=distinct is not None,
                         bandwidth_source=bandwidth_source)
