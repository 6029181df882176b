"""The `graph` engine's own gpt-oss forward over the Hugging Face module's weights, with static KV tensors.

`GptOssDecoder(model, batch, prompt_len, new_tokens, options)` holds per-layer references to the HF weights (never
modifying them: q/k/v are concatenated into the decoder's own buffer, a copy of 3 small matrices per layer), the
layer's `Experts` object (bench/engines/graph/experts.py), static K/V caches (full layers: max_len slots, sliding
layers: a ring of min(window, max_len) slots), a rope table, and the device-side state of a decode: `pos`
(position of the token being fed), `tok` (that token per stream), `step_idx`, the output tokens and a counter of
(layer, step, expert) hits.

`prefill(input_ids)` runs the prompt; `decode_step()` feeds `tok`, writes the greedy next token back into `tok`
and into output column `step_idx`, and advances `pos`, all on the device, so that the same call can be captured
once as a CUDA graph and replayed. Both run the one layer body (`_layer`); they differ only in the attention
function they pass it (prefill: causal attention over the prompt that also fills the caches; decode: the ops
backend's one-token attention).

`extra_steps`: decode steps the caller may run beyond the new_tokens - 1 of a generation (the engine's warm-up
before capture); the caches and output columns are sized for them, and `out_tokens` shows the first new_tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.engines.graph.experts import Experts, build_experts
from bench.engines.graph.ops import Geometry, Router, StepState, make_ops, rope
from bench.engines.graph.options import GraphOptions


@dataclass
class _Layer:
    sliding: bool
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps: float
    wqkv: torch.Tensor  # the decoder's own (q+k+v, hidden) copy
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    sinks: torch.Tensor
    router: Router
    experts: Experts
    kc: torch.Tensor
    vc: torch.Tensor


def _fused_qkv(attn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (q+k+v, hidden) weight and bias, copied (the HF parameters stay as they are)."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    with torch.no_grad():
        w = torch.cat([p.weight for p in projs], dim=0)
        has_bias = all(p.bias is not None for p in projs)
        b = torch.cat([p.bias for p in projs], dim=0) if has_bias else None
    return w, b


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


AttendFn = Callable[[torch.Tensor, _Layer], torch.Tensor]


class GptOssDecoder:
    def __init__(
        self, model: torch.nn.Module, batch: int, prompt_len: int, new_tokens: int,
        options: GraphOptions | None = None, keep_logits: bool = False, extra_steps: int = 0,
    ) -> None:
        cfg = model.config
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.options = (options or GraphOptions()).resolve(self.device.type)
        self.ops = make_ops(self.options)
        self.batch = batch
        self.new_tokens = new_tokens
        self.max_steps = max(new_tokens - 1, extra_steps)  # decode steps after prefill that may run
        self.max_len = max_len = prompt_len + 1 + self.max_steps
        self.final_norm = inner.norm.weight
        self.final_eps = float(getattr(inner.norm, "variance_epsilon", cfg.rms_norm_eps))
        self.lm_head = model.lm_head.weight
        hq = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
        self.geom = Geometry(hq=hq, hkv=cfg.num_key_value_heads, head_dim=head_dim,
                             window=int(cfg.sliding_window or 0), scale=head_dim**-0.5)
        layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)
        dev, dt = self.device, self.dtype
        self.layers: list[_Layer] = []
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            sliding = layer_types[i] == "sliding_attention" and self.geom.window > 0
            slots = min(self.geom.window, max_len) if sliding else max_len
            kc = torch.zeros((batch, self.geom.hkv, slots, head_dim), dtype=dt, device=dev)
            wqkv, bqkv = _fused_qkv(attn)
            self.layers.append(
                _Layer(
                    sliding=sliding,
                    ln1=layer.input_layernorm.weight,
                    ln2=layer.post_attention_layernorm.weight,
                    eps=float(getattr(layer.input_layernorm, "variance_epsilon", cfg.rms_norm_eps)),
                    wqkv=wqkv,
                    bqkv=bqkv,
                    wo=attn.o_proj.weight,
                    bo=attn.o_proj.bias,
                    sinks=attn.sinks,
                    router=Router(weight=mlp.router.weight, bias=mlp.router.bias, top_k=int(mlp.router.top_k)),
                    experts=build_experts(mlp.experts, self.options),
                    kc=kc,
                    vc=torch.zeros_like(kc),
                )
            )
        self.num_experts = self.layers[0].experts.num_experts
        cos, sin = _rope_table(model, max_len, head_dim)
        self.state = StepState(pos=torch.zeros((), dtype=torch.long, device=dev), cos=cos, sin=sin)
        self.step_idx = torch.zeros((), dtype=torch.long, device=dev)
        self.tok = torch.zeros((batch,), dtype=torch.long, device=dev)
        self._out = torch.zeros((batch, 1 + self.max_steps), dtype=torch.long, device=dev)
        self.expert_hits = torch.zeros((), dtype=torch.int32, device=dev)
        self.logits = torch.zeros((batch, self.lm_head.shape[0]), dtype=dt, device=dev) if keep_logits else None

    @property
    def pos(self) -> torch.Tensor:
        return self.state.pos

    @property
    def out_tokens(self) -> torch.Tensor:
        """(batch, new_tokens): the prefill's token, then one column per decode step."""
        return self._out[:, : self.new_tokens]

    # ------------------------------------------------------------------ the layer body (prefill and decode)

    def _layer(self, i: int, h: torch.Tensor, y: torch.Tensor | None, ks: int, attend: AttendFn,
               counter: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """One transformer layer on rows h (R, H) (updated in place) after the previous layer's expert outputs y (ks
        rows per row; None before the first layer): add them, norm, attention, o_proj, norm, router, experts;
        returns this layer's expert outputs and their rows per row."""
        lay = self.layers[i]
        ops = self.ops
        # in decode, qkv and o_proj may come back as split-K partials that their consumers sum (ops docstring)
        fuse = attend == self._decode_attention
        qkv, h_src = ops.norm_linear(h, y, ks, lay.ln1, lay.eps, lay.wqkv, lay.bqkv, partials=fuse, site="qkv",
                                     early=lay.experts.qkv_early, pre_min_ks=lay.experts.qkv_pre_min_ks)
        normed, topi, topw = ops.linear_norm_route(attend(qkv, lay), lay.wo, lay.bo, h, lay.ln2, lay.eps, lay.router,
                                                   partials=fuse, h_src=h_src)
        return lay.experts(normed, topi, topw, counter), lay.router.top_k

    def _forward(self, ids: torch.Tensor, attend: AttendFn, counter: torch.Tensor | None) -> torch.Tensor:
        """Embedding, every layer, final norm: ids (R,) -> normed last hidden states (R, H)."""
        h = F.embedding(ids, self.embed)
        y, ks = None, 0
        for i in range(len(self.layers)):
            y, ks = self._layer(i, h, y, ks, attend, counter)
        return self.ops.add_rmsnorm(h, y, ks, self.final_norm, self.final_eps)

    def _emit(self, normed: torch.Tensor) -> torch.Tensor:
        logits = self.ops.linear(normed, self.lm_head, None)
        if self.logits is not None:
            self.logits.copy_(logits)
        return torch.argmax(logits, dim=-1)

    # ------------------------------------------------------------------ prefill and one decode step

    def _prefill_attention(self, b: int, t: int) -> AttendFn:
        """Causal attention with sinks over the prompt (window-masked on sliding layers); fills the caches."""
        geom = self.geom
        d, hq, hkv, g = geom.head_dim, geom.hq, geom.hkv, geom.hq // geom.hkv
        cos, sin = self.state.cos[:t], self.state.sin[:t]
        i_idx = torch.arange(t, device=self.device)
        causal = i_idx[None, :] <= i_idx[:, None]
        windowed = causal & (i_idx[None, :] > i_idx[:, None] - geom.window)

        def attend(qkv: torch.Tensor, lay: _Layer) -> torch.Tensor:
            qkv = qkv.view(b, t, hq + 2 * hkv, d)
            q = rope(qkv[:, :, :hq].transpose(1, 2), cos, sin)  # (b, hq, t, d)
            k = rope(qkv[:, :, hq : hq + hkv].transpose(1, 2), cos, sin)
            v = qkv[:, :, hq + hkv :].transpose(1, 2)
            if lay.sliding:
                keep = min(t, lay.kc.shape[2])
                slots = torch.arange(t - keep, t, device=self.device) % lay.kc.shape[2]
                lay.kc.zero_()
                lay.vc.zero_()
                lay.kc[:, :, slots] = k[:, :, t - keep :].to(lay.kc.dtype)
                lay.vc[:, :, slots] = v[:, :, t - keep :].to(lay.vc.dtype)
            else:
                lay.kc[:, :, :t] = k.to(lay.kc.dtype)
                lay.vc[:, :, :t] = v.to(lay.vc.dtype)
            scores = torch.matmul(q.reshape(b, hkv, g * t, d), k.transpose(2, 3)).view(b, hkv, g, t, t) * geom.scale
            scores = scores.masked_fill(~(windowed if lay.sliding else causal), float("-inf"))
            sinks = lay.sinks.reshape(1, hkv, g, 1, 1).expand(b, -1, -1, t, -1).to(scores.dtype)
            comb = torch.cat([scores, sinks], dim=-1)
            comb = comb - comb.max(dim=-1, keepdim=True).values
            probs = torch.softmax(comb, dim=-1)[..., :-1].to(v.dtype)
            att = torch.matmul(probs.reshape(b, hkv, g * t, t), v).view(b, hq, t, d)
            return att.permute(0, 2, 1, 3).reshape(b * t, hq * d)

        return attend

    def _decode_attention(self, qkv: torch.Tensor, lay: _Layer) -> torch.Tensor:
        return self.ops.decode_attention(qkv, lay.kc, lay.vc, lay.sinks, lay.sliding, self.geom, self.state)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt, fill the caches, pick the first token; resets all decode state. Not capturable."""
        b, t = input_ids.shape
        if b != self.batch or t + 1 + self.max_steps > self.max_len:
            raise ValueError(f"decoder built for batch {self.batch}, max_len {self.max_len}; got {b}x{t}")
        normed = self._forward(input_ids.reshape(-1), self._prefill_attention(b, t), None)
        first = self._emit(normed.view(b, t, -1)[:, -1])
        self._out.zero_()
        self._out[:, 0] = first
        self.tok.copy_(first)
        self.state.pos.fill_(t)
        self.step_idx.fill_(1)
        self.expert_hits.zero_()
        return first

    @torch.no_grad()
    def decode_step(self) -> None:
        """Feed `tok` at `pos`; greedy next token into `tok` and output column `step_idx`; advance. Capturable
        (unless experts = loop). At most `max_steps` steps after a prefill."""
        normed = self._forward(self.tok, self._decode_attention, self.expert_hits)
        self.ops.greedy_step(normed, self.lm_head, self.logits, self.tok, self._out, self.step_idx, self.state.pos)
