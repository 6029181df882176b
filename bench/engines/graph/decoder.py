"""The `graph` engine's own gpt-oss forward over the Hugging Face module's parameters, with static KV tensors.

`GptOssDecoder(model, batch, prompt_len, new_tokens, options)` holds per-layer references to the HF weights (q/k/v are
re-bound as views of one fused tensor, so no memory is added), static K/V caches (full layers: max_len slots,
sliding layers: a ring of min(window, max_len) slots), a rope table, and the device-side state of a decode:
`pos` (position of the token being fed), `tok` (that token per stream), `step_idx`, `out_tokens`, and a
counter of (layer, step, expert) hits. `prefill(input_ids)` runs the prompt; `decode_step()` feeds `tok`,
writes the greedy next token back into `tok` and `out_tokens[:, step_idx]`, and advances `pos`, all on the
device, so the same call can be captured once as a CUDA graph and replayed.

Kernels: "torch" (reference ops; the CPU path) or "triton" (bench/engines/graph/kernels.py) for norm, rope +
cache write, attention and router; MoE "loop" (HF-style per-expert loop, not capturable), "grouped_mm"
(torch._grouped_mm over expert-sorted rows, capturable, CUDA bf16) or "triton".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class DecoderOptions:
    kernels: str = "torch"  # torch | triton: norm, rope/cache write, attention, router
    moe: str = "loop"  # loop | grouped_mm | triton
    keep_logits: bool = False  # copy each step's logits into `decoder.logits` (for checks)

    @classmethod
    def for_device(cls, device: torch.device | str) -> DecoderOptions:
        if torch.device(device).type == "cuda":
            return cls(kernels="triton", moe="triton")
        return cls()


@dataclass
class _Layer:
    sliding: bool
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps: float
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    sinks: torch.Tensor
    wr: torch.Tensor
    br: torch.Tensor
    top_k: int
    gate_up: torch.Tensor | None  # bf16/float experts [E, H, 2I]; None when the experts are MXFP4
    gate_up_bias: torch.Tensor
    down: torch.Tensor | None  # [E, I, H]; None when MXFP4
    down_bias: torch.Tensor
    alpha: float
    limit: float
    kc: torch.Tensor | None = None
    vc: torch.Tensor | None = None
    mx: Any = None  # MXFP4 experts module (blocks + scales, bench.models.mxfp4.Mxfp4Experts) or None


def _fuse_qkv(attn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (q+k+v, hidden) weight; the HF q/k/v parameters are re-bound as views into it (no extra memory)."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    w0 = projs[0].weight
    fused_w = getattr(attn, "_graph_wqkv", None)
    if fused_w is not None and w0.data_ptr() == fused_w.data_ptr():
        return fused_w, getattr(attn, "_graph_bqkv", None)
    with torch.no_grad():
        fused_w = torch.cat([p.weight.data for p in projs], dim=0)
        has_bias = all(p.bias is not None for p in projs)
        fused_b = torch.cat([p.bias.data for p in projs], dim=0) if has_bias else None
        start = 0
        for p in projs:
            n = p.weight.shape[0]
            p.weight.data = fused_w[start : start + n]
            if fused_b is not None:
                p.bias.data = fused_b[start : start + n]
            start += n
    attn._graph_wqkv = fused_w
    attn._graph_bqkv = fused_b
    return fused_w, fused_b


def _rope_table(model: torch.nn.Module, max_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (max_len, head_dim/2) exactly as the model's rotary embedding computes them."""
    inner = model.model
    ref = inner.embed_tokens.weight
    pos = torch.arange(max_len, device=ref.device).unsqueeze(0)
    cos, sin = inner.rotary_emb(ref[:1].unsqueeze(0), pos)
    cos, sin = cos.reshape(max_len, -1), sin.reshape(max_len, -1)
    if cos.shape[-1] == head_dim:  # a version that returns the duplicated halves
        cos, sin = cos[:, : head_dim // 2], sin[:, : head_dim // 2]
    return cos.contiguous(), sin.contiguous()


class GptOssDecoder:
    def __init__(
        self, model: torch.nn.Module, batch: int, prompt_len: int, new_tokens: int, options: DecoderOptions
    ) -> None:
        cfg = model.config
        self.options = options
        self.batch = batch
        self.new_tokens = new_tokens
        self.max_len = max_len = prompt_len + new_tokens
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.device = self.embed.device
        self.dtype = self.embed.dtype
        self.final_norm = inner.norm.weight
        self.final_eps = float(getattr(inner.norm, "variance_epsilon", cfg.rms_norm_eps))
        self.lm_head = model.lm_head.weight
        self.hq = cfg.num_attention_heads
        self.hkv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.window = int(cfg.sliding_window or 0)
        self.scale = self.head_dim**-0.5
        layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)
        self.layers: list[_Layer] = []
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            wqkv, bqkv = _fuse_qkv(attn)
            ex = mlp.experts
            mx = ex if hasattr(ex, "gate_up_proj_blocks") else None
            self.layers.append(
                _Layer(
                    sliding=layer_types[i] == "sliding_attention" and self.window > 0,
                    ln1=layer.input_layernorm.weight,
                    ln2=layer.post_attention_layernorm.weight,
                    eps=float(getattr(layer.input_layernorm, "variance_epsilon", cfg.rms_norm_eps)),
                    wqkv=wqkv,
                    bqkv=bqkv,
                    wo=attn.o_proj.weight,
                    bo=attn.o_proj.bias,
                    sinks=attn.sinks,
                    wr=mlp.router.weight,
                    br=mlp.router.bias,
                    top_k=int(mlp.router.top_k),
                    gate_up=None if mx is not None else ex.gate_up_proj,
                    gate_up_bias=ex.gate_up_proj_bias,
                    down=None if mx is not None else ex.down_proj,
                    down_bias=ex.down_proj_bias,
                    alpha=float(getattr(ex, "alpha", getattr(cfg, "swiglu_alpha", 1.702))),
                    limit=float(getattr(ex, "limit", cfg.swiglu_limit)),
                    mx=mx,
                )
            )
        self.num_experts = int(self.layers[0].gate_up_bias.shape[0])
        self.mxfp4 = self.layers[0].mx is not None
        dev, dt = self.device, self.dtype
        for lay in self.layers:
            slots = min(self.window, max_len) if lay.sliding else max_len
            lay.kc = torch.zeros((batch, self.hkv, slots, self.head_dim), dtype=dt, device=dev)
            lay.vc = torch.zeros_like(lay.kc)
        self.cos, self.sin = _rope_table(model, max_len, self.head_dim)
        self.pos = torch.zeros((), dtype=torch.long, device=dev)
        self.step_idx = torch.zeros((), dtype=torch.long, device=dev)
        self.tok = torch.zeros((batch,), dtype=torch.long, device=dev)
        self.out_tokens = torch.zeros((batch, new_tokens), dtype=torch.long, device=dev)
        self.expert_hits = torch.zeros((), dtype=torch.int32, device=dev)
        self.logits = torch.zeros((batch, self.lm_head.shape[0]), dtype=dt, device=dev) if options.keep_logits else None
        if options.kernels == "triton" or options.moe == "triton":
            from bench.engines.graph import kernels as graph_kernels

            self.tk = graph_kernels
        else:
            self.tk = None
        self.mk = None
        if self.mxfp4 and options.moe == "triton":
            from bench.engines.graph import mxfp4_kernels

            self.mk = mxfp4_kernels

    # ------------------------------------------------------------------ building blocks

    def _rmsnorm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (w * xf).to(x.dtype)

    def _add_norm(self, h: torch.Tensor, delta: torch.Tensor | None, ks: int, w: torch.Tensor, eps: float):
        """h += delta (ks rows per row of h summed); returns the normed h. h is (R, H) and updated in place."""
        if self.options.kernels == "triton":
            return self.tk.add_rmsnorm(h, delta, ks, w, eps)
        if delta is not None:
            d = delta.view(h.shape[0], ks, -1).sum(1) if ks > 1 else delta.view_as(h)
            h.add_(d.to(h.dtype))
        return self._rmsnorm(h, w, eps)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.chunk(x, 2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _route(self, x: torch.Tensor, lay: _Layer) -> tuple[torch.Tensor, torch.Tensor]:
        if self.options.kernels == "triton":
            return self.tk.router(x, lay.wr, lay.br, lay.top_k)
        logits = F.linear(x, lay.wr, lay.br)
        top_v, top_i = torch.topk(logits, lay.top_k, dim=-1)
        return top_i, torch.softmax(top_v, dim=1, dtype=top_v.dtype)

    def _moe(self, x: torch.Tensor, lay: _Layer, topi: torch.Tensor, topw: torch.Tensor, count: bool) -> torch.Tensor:
        """x (T, H) -> weighted expert outputs per (token, slot), (T*k, H)."""
        mode = self.options.moe
        if lay.mx is not None:
            if mode == "triton":
                mx = lay.mx
                return self.mk.moe_mxfp4(x, mx.gate_up_proj_blocks, mx.gate_up_proj_scales, lay.gate_up_bias,
                                         mx.down_proj_blocks, mx.down_proj_scales, lay.down_bias, topi, topw,
                                         lay.alpha, lay.limit, self.expert_hits if count else None)
            # torch reference: dequantize the layer's experts, then the bf16 code path
            gu, dn = lay.mx.expert_weights(slice(None), x.dtype)
            lay = dataclasses.replace(lay, gate_up=gu, down=dn, mx=None)
        if mode == "triton":
            counter = self.expert_hits if count else None
            return self.tk.moe(x, lay.gate_up, lay.gate_up_bias, lay.down, lay.down_bias, topi, topw,
                               lay.alpha, lay.limit, counter)
        if count:
            hit = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
            hit.index_fill_(0, topi.reshape(-1).long(), 1)
            self.expert_hits.add_(hit.sum())
        if mode == "grouped_mm":
            return self._moe_grouped(x, lay, topi, topw)
        return self._moe_loop(x, lay, topi, topw)

    def _swiglu(self, gate_up: torch.Tensor, lay: _Layer) -> torch.Tensor:
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=lay.limit)
        up = up.clamp(min=-lay.limit, max=lay.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * lay.alpha))

    def _moe_loop(self, x: torch.Tensor, lay: _Layer, topi: torch.Tensor, topw: torch.Tensor) -> torch.Tensor:
        k = topi.shape[1]
        out = torch.zeros((x.shape[0] * k, x.shape[1]), dtype=x.dtype, device=x.device)
        flat = topi.reshape(-1).long()
        for e in torch.unique(flat).tolist():
            pairs = torch.nonzero(flat == e).squeeze(1)
            cur = x[pairs // k]
            h = self._swiglu(cur @ lay.gate_up[e] + lay.gate_up_bias[e], lay)
            y = h @ lay.down[e] + lay.down_bias[e]
            out[pairs] = (y * topw.reshape(-1)[pairs, None]).to(x.dtype)
        return out

    def _moe_grouped(self, x: torch.Tensor, lay: _Layer, topi: torch.Tensor, topw: torch.Tensor) -> torch.Tensor:
        k = topi.shape[1]
        flat = topi.reshape(-1).long()
        sorted_e, order = torch.sort(flat, stable=True)
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        xs = x[order // k]
        gu = torch._grouped_mm(xs, lay.gate_up, offs=offs) + lay.gate_up_bias[sorted_e]
        h = self._swiglu(gu, lay)
        y = torch._grouped_mm(h, lay.down, offs=offs) + lay.down_bias[sorted_e]
        y = y * topw.reshape(-1)[order, None].to(y.dtype)
        out = torch.empty((flat.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
        out[order] = y.to(x.dtype)
        return out

    def _attend_torch(self, q: torch.Tensor, lay: _Layer) -> torch.Tensor:
        """q (B, hq, D) against the cache: slot s valid iff s <= pos (see graph_kernels._attn_decode_kernel)."""
        b = q.shape[0]
        kc, vc = lay.kc, lay.vc
        g = self.hq // self.hkv
        qg = q.view(b, self.hkv, g, self.head_dim)
        scores = torch.matmul(qg, kc.transpose(2, 3)) * self.scale
        valid = torch.arange(kc.shape[2], device=q.device) <= self.pos
        scores = scores.masked_fill(~valid, float("-inf"))
        sinks = lay.sinks.reshape(1, self.hkv, g, 1).expand(b, -1, -1, -1).to(scores.dtype)
        comb = torch.cat([scores, sinks], dim=-1)
        comb = comb - comb.max(dim=-1, keepdim=True).values
        probs = torch.softmax(comb, dim=-1)[..., :-1].to(vc.dtype)
        return torch.matmul(probs, vc).reshape(b, self.hq * self.head_dim)

    # ------------------------------------------------------------------ prefill and one decode step

    def _layer_norm_weights(self, i: int) -> tuple[torch.Tensor, float]:
        if i + 1 < len(self.layers):
            return self.layers[i + 1].ln1, self.layers[i + 1].eps
        return self.final_norm, self.final_eps

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt, fill the caches, pick the first token; resets all decode state. Not capturable."""
        b, t = input_ids.shape
        if b != self.batch or t + self.new_tokens > self.max_len:
            raise ValueError(f"decoder built for batch {self.batch}, max_len {self.max_len}; got {b}x{t}")
        d, hq, hkv = self.head_dim, self.hq, self.hkv
        h = F.embedding(input_ids, self.embed).reshape(b * t, -1)
        normed = self._add_norm(h, None, 0, self.layers[0].ln1, self.layers[0].eps)
        cos, sin = self.cos[:t], self.sin[:t]
        i_idx = torch.arange(t, device=h.device)
        causal = i_idx[None, :] <= i_idx[:, None]
        g = hq // hkv
        for i, lay in enumerate(self.layers):
            qkv = F.linear(normed, lay.wqkv, lay.bqkv).view(b, t, hq + 2 * hkv, d)
            q = self._rope(qkv[:, :, :hq].transpose(1, 2), cos, sin)  # (b, hq, t, d)
            k = self._rope(qkv[:, :, hq : hq + hkv].transpose(1, 2), cos, sin)
            v = qkv[:, :, hq + hkv :].transpose(1, 2)
            mask = causal
            if lay.sliding:
                mask = causal & (i_idx[None, :] > i_idx[:, None] - self.window)
                keep = min(t, lay.kc.shape[2])
                slots = torch.arange(t - keep, t, device=h.device) % lay.kc.shape[2]
                lay.kc.zero_()
                lay.vc.zero_()
                lay.kc[:, :, slots] = k[:, :, t - keep :].to(lay.kc.dtype)
                lay.vc[:, :, slots] = v[:, :, t - keep :].to(lay.vc.dtype)
            else:
                lay.kc[:, :, :t] = k.to(lay.kc.dtype)
                lay.vc[:, :, :t] = v.to(lay.vc.dtype)
            qg = q.reshape(b, hkv, g * t, d)
            scores = torch.matmul(qg, k.transpose(2, 3)).view(b, hkv, g, t, t) * self.scale
            scores = scores.masked_fill(~mask, float("-inf"))
            sinks = lay.sinks.reshape(1, hkv, g, 1, 1).expand(b, -1, -1, t, -1).to(scores.dtype)
            comb = torch.cat([scores, sinks], dim=-1)
            comb = comb - comb.max(dim=-1, keepdim=True).values
            probs = torch.softmax(comb, dim=-1)[..., :-1].to(v.dtype)
            att = torch.matmul(probs.reshape(b, hkv, g * t, t), v).view(b, hq, t, d)
            att = att.permute(0, 2, 1, 3).reshape(b * t, hq * d)
            o = F.linear(att, lay.wo, lay.bo)
            normed = self._add_norm(h, o, 1, lay.ln2, lay.eps)
            topi, topw = self._route(normed, lay)
            y = self._moe(normed, lay, topi, topw, count=False)
            w, eps = self._layer_norm_weights(i)
            normed = self._add_norm(h, y, lay.top_k, w, eps)
        last = normed.view(b, t, -1)[:, -1]
        logits = F.linear(last, self.lm_head)
        first = torch.argmax(logits, dim=-1)
        if self.logits is not None:
            self.logits.copy_(logits)
        self.out_tokens.zero_()
        self.out_tokens[:, 0] = first
        self.tok.copy_(first)
        self.pos.fill_(t)
        self.step_idx.fill_(1)
        self.expert_hits.zero_()
        return logits

    @torch.no_grad()
    def decode_step(self) -> None:
        """Feed `tok` at `pos`; greedy next token into `tok` and `out_tokens[:, step_idx]`; advance. Capturable
        (with kernels=triton or torch, moe=triton or grouped_mm)."""
        triton_k = self.options.kernels == "triton"
        b, d, hq, hkv = self.batch, self.head_dim, self.hq, self.hkv
        h = F.embedding(self.tok, self.embed)
        normed = self._add_norm(h, None, 0, self.layers[0].ln1, self.layers[0].eps)
        cos = self.cos.index_select(0, self.pos.view(1))
        sin = self.sin.index_select(0, self.pos.view(1))
        for i, lay in enumerate(self.layers):
            qkv = F.linear(normed, lay.wqkv, lay.bqkv)
            if triton_k:
                q = self.tk.rope_kv(qkv, self.cos, self.sin, self.pos, lay.kc, lay.vc, hq, lay.sliding, self.window)
                att = self.tk.attn_decode(q, lay.kc, lay.vc, lay.sinks, self.pos, self.scale)
            else:
                qkv = qkv.view(b, hq + 2 * hkv, d)
                q = self._rope(qkv[:, :hq], cos, sin)
                k = self._rope(qkv[:, hq : hq + hkv], cos, sin)
                v = qkv[:, hq + hkv :]
                slot = self.pos % lay.kc.shape[2] if lay.sliding else self.pos
                lay.kc.index_copy_(2, slot.view(1), k.unsqueeze(2).to(lay.kc.dtype))
                lay.vc.index_copy_(2, slot.view(1), v.unsqueeze(2).to(lay.vc.dtype))
                att = self._attend_torch(q, lay)
            o = F.linear(att, lay.wo, lay.bo)
            normed = self._add_norm(h, o, 1, lay.ln2, lay.eps)
            topi, topw = self._route(normed, lay)
            y = self._moe(normed, lay, topi, topw, count=True)
            w, eps = self._layer_norm_weights(i)
            normed = self._add_norm(h, y, lay.top_k, w, eps)
        logits = F.linear(normed, self.lm_head)
        nxt = torch.argmax(logits, dim=-1)
        if self.logits is not None:
            self.logits.copy_(logits)
        self.tok.copy_(nxt)
        self.out_tokens.index_copy_(1, self.step_idx.view(1), nxt.unsqueeze(1))
        self.pos.add_(1)
        self.step_idx.add_(1)
