"""MXFP4, the expert weight format of the released gpt-oss checkpoints: codes, quantize/dequantize, the experts
module that holds them, and model-level conversion (see docs/MXFP4.md for the layout and its sources).

Layout (per MoE layer, as in `openai/gpt-oss-20b` and transformers' `integrations/mxfp4.py`):
- `gate_up_proj_blocks` uint8 [E, 2I, H/32, 16], `gate_up_proj_scales` uint8 [E, 2I, H/32];
- `down_proj_blocks` uint8 [E, H, I/32, 16], `down_proj_scales` uint8 [E, H, I/32];
- rows are the OUTPUT features (the transpose of the bf16 module's [E, in, out] parameters); each row's input
  features are cut into blocks of 32 values; a block is 16 bytes, element 2j in the low nibble of byte j and
  element 2j+1 in the high nibble; a block's scale is an e8m0 exponent with bias 127 (value 2^(s-127));
- an element is an e2m1 code: sign bit 3, exponent bits 2..1, mantissa bit 0, values
  0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (codes 8..15).
Biases (`*_bias`) and every non-expert weight stay in the model dtype (bf16).

Quantization (ours; the released weights came from training): per block of 32, the scale is the smallest power
of two with max|x| / scale <= 6 (no clipping), each value rounds to the nearest e2m1 value (ties to the even
mantissa); an all-zero block gets scale code 0.

Worker-side: torch only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BLOCK = 32  # values per scale
BYTES_PER_BLOCK = BLOCK // 2
SCALE_BIAS = 127
# e2m1 code -> value (index = 4-bit code)
FP4_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                                 -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP4_MAX = 6.0
BITS_PER_WEIGHT = 4 + 8 / BLOCK  # 4.25
PROJECTIONS: tuple[str, ...] = ("gate_up_proj", "down_proj")
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)  # between consecutive magnitudes of FP4_VALUES[:8]


def bytes_per_weight() -> float:
    """Bytes one MXFP4 weight costs, its share of the block scale included (4.25 bits)."""
    return BITS_PER_WEIGHT / 8


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., rows, cols] (cols % 32 == 0) -> blocks uint8 [..., rows, cols/32, 16], scales [..., rows, cols/32]"""
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got {tuple(w.shape)}")
    *lead, cols = w.shape
    x = w.detach().to(torch.float32).contiguous().reshape(*lead, cols // BLOCK, BLOCK)
    amax = x.abs().amax(dim=-1)
    # smallest e with amax / 2^e <= 6: e = ceil(log2(amax / 6)); frexp is exact where log2 may round
    mant, exp = torch.frexp(amax / FP4_MAX)  # amax/6 = mant * 2^exp, mant in [0.5, 1)
    e = torch.where(mant == 0.5, exp - 1, exp)
    e = torch.where(amax > 0, e, torch.full_like(e, -SCALE_BIAS)).clamp(-SCALE_BIAS, 254 - SCALE_BIAS)
    scales = (e + SCALE_BIAS).to(torch.uint8)
    y = torch.ldexp(x, -e.to(torch.float32).unsqueeze(-1)).clamp(-FP4_MAX, FP4_MAX)
    mag = y.abs()
    mids = torch.tensor(_MIDPOINTS, dtype=torch.float32, device=w.device)
    down = torch.bucketize(mag, mids, right=False)  # ties round down
    up = torch.bucketize(mag, mids, right=True)  # ties round up
    idx = torch.where(down == up, down, torch.where(down % 2 == 0, down, up))  # ties: the even code (mantissa 0)
    codes = (idx | ((y < 0) & (idx > 0)).to(idx.dtype) * 8).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), scales.contiguous()


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(blocks [..., rows, G, 16], scales [..., rows, G]) -> values [..., rows, G*32] in `dtype`."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match")
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    b = blocks.to(torch.int64)
    vals = torch.stack((lut[b & 0x0F], lut[b >> 4]), dim=-1).flatten(-2)  # [..., rows, G, 32]
    vals = torch.ldexp(vals, (scales.to(torch.float32) - SCALE_BIAS).unsqueeze(-1))
    return vals.flatten(-2).to(dtype)


class Mxfp4Experts(nn.Module):
    """gpt-oss experts with MXFP4 weights: the checkpoint's blocks and scales as uint8 buffers, biases in the model
    dtype. `forward` has GptOssExperts' signature and math; it dequantizes each routed expert on the fly, so the
    weights stay 4.25 bits in memory (a reference path, not a fast one)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, alpha: float, limit: float,
                 dtype: torch.dtype = torch.bfloat16, device: Any = None) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.alpha = alpha
        self.limit = limit
        h, i, e = hidden_size, intermediate_size, num_experts
        u8 = {"dtype": torch.uint8, "device": device}
        self.register_buffer("gate_up_proj_blocks", torch.zeros(e, 2 * i, h // BLOCK, BYTES_PER_BLOCK, **u8))
        self.register_buffer("gate_up_proj_scales", torch.zeros(e, 2 * i, h // BLOCK, **u8))
        self.register_buffer("down_proj_blocks", torch.zeros(e, h, i // BLOCK, BYTES_PER_BLOCK, **u8))
        self.register_buffer("down_proj_scales", torch.zeros(e, h, i // BLOCK, **u8))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(e, 2 * i, dtype=dtype, device=device), requires_grad=False)
        self.down_proj_bias = nn.Parameter(torch.zeros(e, h, dtype=dtype, device=device), requires_grad=False)

    def expert_weights(self, e: int | torch.Tensor | slice, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized (gate_up [.., H, 2I], down [.., I, H]) of expert(s) `e`, in the bf16 module's orientation."""
        gu = dequantize(self.gate_up_proj_blocks[e], self.gate_up_proj_scales[e], dtype).transpose(-1, -2)
        dn = dequantize(self.down_proj_blocks[e], self.down_proj_scales[e], dtype).transpose(-1, -2)
        return gu, dn

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))

    def forward(self, hidden_states: torch.Tensor, router_indices=None, routing_weights=None) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            hit = torch.unique(router_indices.reshape(-1)).tolist()
        for e in hit:
            if e >= self.num_experts:
                continue
            token_idx, slot = torch.where(router_indices == e)
            gu_w, dn_w = self.expert_weights(e, hidden_states.dtype)
            x = hidden_states[token_idx]
            h = self._apply_gate(x @ gu_w + self.gate_up_proj_bias[e])
            y = h @ dn_w + self.down_proj_bias[e]
            out.index_add_(0, token_idx, (y * routing_weights[token_idx, slot, None]).to(hidden_states.dtype))
        return out

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}, mxfp4"


def is_mxfp4_experts(module: Any) -> bool:
    return isinstance(module, Mxfp4Experts)


def model_is_mxfp4(model: Any) -> bool:
    return any(isinstance(m, Mxfp4Experts) for m in model.modules())


def _mlps(model: Any) -> list[Any]:
    base = getattr(model, "model", model)
    return [layer.mlp for layer in getattr(base, "layers", []) if hasattr(getattr(layer, "mlp", None), "experts")]


def empty_experts_like(experts: Any, config: Any, device: Any = None) -> Mxfp4Experts:
    """An Mxfp4Experts shaped like a bf16 GptOssExperts module (zeros), on `device` (default: the module's)."""
    p = experts.gate_up_proj_bias
    return Mxfp4Experts(
        num_experts=int(p.shape[0]), hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        alpha=float(getattr(experts, "alpha", getattr(config, "swiglu_alpha", 1.702))),
        limit=float(getattr(experts, "limit", config.swiglu_limit)), dtype=p.dtype,
        device=p.device if device is None else device,
    )


@torch.no_grad()
def quantize_experts(experts: Any, config: Any) -> Mxfp4Experts:
    """A bf16 GptOssExperts -> an Mxfp4Experts holding its weights quantized, in the checkpoint's layout."""
    q = empty_experts_like(experts, config)
    for proj in PROJECTIONS:
        blocks, scales = quantize(getattr(experts, proj).data.transpose(-1, -2))
        getattr(q, f"{proj}_blocks").copy_(blocks)
        getattr(q, f"{proj}_scales").copy_(scales)
        getattr(q, f"{proj}_bias").copy_(getattr(experts, f"{proj}_bias").data)
    return q


@torch.no_grad()
def quantize_model(model: Any) -> int:
    """Replace every layer's bf16 experts by MXFP4 ones, layer by layer (freeing each bf16 copy as it goes, so the
    peak is one layer above the bf16 model). Returns the number of layers converted."""
    n = 0
    for mlp in _mlps(model):
        if isinstance(mlp.experts, Mxfp4Experts):
            continue
        mlp.experts = quantize_experts(mlp.experts, model.config)
        n += 1
    model.config.quantization_config = checkpoint_quantization_config()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n


@torch.no_grad()
def dequantize_model(model: Any, dtype: torch.dtype | None = None) -> int:
    """Replace every Mxfp4Experts by the model's own bf16 experts module holding the dequantized weights (exactly
    the values the MXFP4 codes stand for). Returns the number of layers converted."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    n = 0
    for mlp in _mlps(model):
        q = mlp.experts
        if not isinstance(q, Mxfp4Experts):
            continue
        dt = dtype or q.gate_up_proj_bias.dtype
        dev = q.gate_up_proj_blocks.device
        with torch.device("meta"):
            ex = GptOssExperts(model.config)
        gu, dn = q.expert_weights(slice(None), dt)
        ex.gate_up_proj = nn.Parameter(gu.contiguous(), requires_grad=False)
        ex.down_proj = nn.Parameter(dn.contiguous(), requires_grad=False)
        ex.gate_up_proj_bias = nn.Parameter(q.gate_up_proj_bias.data.to(dev, dt), requires_grad=False)
        ex.down_proj_bias = nn.Parameter(q.down_proj_bias.data.to(dev, dt), requires_grad=False)
        ex.num_experts = q.num_experts
        mlp.experts = ex
        n += 1
    if n and getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return n


def checkpoint_quantization_config() -> dict[str, Any]:
    """The `quantization_config` of the released gpt-oss config.json."""
    return {"quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                       "lm_head"]}


def save_checkpoint(model: Any, path: Any) -> None:
    """Write `model` (MXFP4 experts) as a checkpoint in the released layout: config.json with the MXFP4
    quantization_config, model.safetensors with *_blocks / *_scales (uint8) and everything else in its dtype."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    if not model_is_mxfp4(model):
        raise ValueError("save_checkpoint writes MXFP4 models; quantize the experts first (quantize_model)")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen and name.endswith("lm_head.weight"):
            continue  # tied to the embedding: stored once
        seen.add(t.data_ptr())
        state[name] = t.detach().to("cpu").contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["quantization_config"] = checkpoint_quantization_config()
    cfg.pop("_name_or_path", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
