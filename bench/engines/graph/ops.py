"""The two ops backends of the `graph` decoder: `TorchOps` (reference torch ops; the CPU path) and `TritonOps`
(bench/engines/graph/kernels.py). Both implement the same eight calls, so the decoder's layer body names no backend:

    add_rmsnorm(h, delta, ks, w, eps) -> normed   h (R, H) += delta summed over ks rows per row (in place),
                                                 returns RMSNorm(h) * w (delta None: norm only)
    route(x, router) -> (topi (T, k) int32/int64, topw (T, k) float32)   router linear, top-k, softmax over k
    norm_route(h, delta, w, eps, router) -> (normed, topi, topw)   add_rmsnorm(h, delta, 1, w, eps), then route
                                                 (TritonOps: one launch for few rows, kernels.add_rmsnorm_route)
    norm_linear(h, delta, ks, w, eps, weight, bias, partials=False, site, early=True, pre_min_ks=None) -> (y, h_src)
                                 linear(add_rmsnorm(h, delta, ks, w, eps), weight, bias), and where the updated
                                 residual is (h; with TritonOps and LAZY_NORM at one row: one launch, h untouched, a
                                 scratch row, triggering its consumer early unless early=False, pre-loading weight
                                 tiles from pre_min_ks rows of delta on: kernels.splitk_norm_linear)
    linear_norm_route(x, wo, bo, h, w, eps, router, partials=False, h_src=None) -> (normed, topi, topw)   norm_route(h,
                                 linear(x, wo, bo, partials, "o_proj"), w, eps, router): the decoder's o_proj and
                                 what follows it; TritonOps at one row with FOLD_NORM_ROUTER and partials: one
                                 launch (kernels.splitk_norm_route), else exactly those two calls
    decode_attention(qkv, kc, vc, sinks, sliding, geom, state) -> (B, hq*D)   rope of q and k at `state.pos`,
                                                 k/v written into the cache slot, one-token attention with sinks
    linear(x, w, b, partials=False) -> x w^T + b   F.linear; TritonOps with gemv: the Triton GEMV for <= GEMV_MAX_ROWS
                                 rows; with splitk and partials=True (the decoder's qkv and o_proj in decode),
                                 <= SPLITK_MAX_ROWS rows (kernels.splitk_linear) and 2..SPLITK_MMA_MAX_ROWS rows
                                 (kernels.splitk_mma_linear, tensor cores, tile by site) return kernels.Partials,
                                 which only decode_attention (qkv) and add_rmsnorm / norm_route (o_proj, ks = 1)
                                 of TritonOps take

    greedy_step(x, w, logits, tok, out, step, pos)   the decode step's end: x w^T (logits copied into `logits` if
                                 given), tok = argmax per row, out[:, step] = tok, step += 1, pos += 1 (device
                                 tensors, so it stays capturable); TritonOps with GEMV_GREEDY: one launch
                                 (kernels.gemv_greedy) for <= GEMV_MAX_ROWS rows with gemv, else the linear and
                                 kernels.argmax_step

`make_ops(options, geom)` picks one from the resolved GraphOptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bench.engines.graph.options import GraphOptions

if TYPE_CHECKING:
    from bench.engines.graph.kernels import Partials


@dataclass(frozen=True)
class Geometry:
    hq: int
    hkv: int
    head_dim: int
    window: int  # sliding window (0: none)
    scale: float


@dataclass
class Router:
    weight: torch.Tensor  # (E, H)
    bias: torch.Tensor  # (E,)
    top_k: int


@dataclass
class StepState:
    """Device-side position of the token being fed (0-d long) and the rope tables (max_len, D/2)."""

    pos: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (w * xf).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def greedy_step_torch(ops: TorchOps | TritonOps, x: torch.Tensor, w: torch.Tensor, logits: torch.Tensor | None,
                      tok: torch.Tensor, out: torch.Tensor, step: torch.Tensor, pos: torch.Tensor) -> None:
    """`greedy_step` as separate ops: the linear (ops.linear), torch.argmax and the bookkeeping."""
    y = ops.linear(x, w, None)
    if logits is not None:
        logits.copy_(y)
    tok.copy_(torch.argmax(y, dim=-1))
    out.index_copy_(1, step.view(1), tok.unsqueeze(1))
    pos.add_(1)
    step.add_(1)


class TorchOps:
    name = "torch"

    def greedy_step(self, x: torch.Tensor, w: torch.Tensor, logits: torch.Tensor | None, tok: torch.Tensor,
                    out: torch.Tensor, step: torch.Tensor, pos: torch.Tensor) -> None:
        greedy_step_torch(self, x, w, logits, tok, out, step, pos)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, partials: bool = False,
               site: str = "") -> torch.Tensor:
        return F.linear(x, w, b)

    def add_rmsnorm(self, h: torch.Tensor, delta: torch.Tensor | None, ks: int, w: torch.Tensor,
                    eps: float) -> torch.Tensor:
        if delta is not None:
            d = delta.view(h.shape[0], ks, -1).sum(1) if ks > 1 else delta.view_as(h)
            h.add_(d.to(h.dtype))
        return rmsnorm(h, w, eps)

    def norm_route(self, h: torch.Tensor, delta: torch.Tensor, w: torch.Tensor, eps: float,
                   router: Router) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed = self.add_rmsnorm(h, delta, 1, w, eps)
        return (normed, *self.route(normed, router))

    def linear_norm_route(self, x: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor | None, h: torch.Tensor,
                          w: torch.Tensor, eps: float, router: Router, partials: bool = False,
                          h_src: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if h_src is not None and h_src is not h:
            h.copy_(h_src)
        return self.norm_route(h, self.linear(x, wo, bo, partials, "o_proj"), w, eps, router)

    def norm_linear(self, h: torch.Tensor, delta: torch.Tensor | None, ks: int, w: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: torch.Tensor | None, partials: bool = False,
                    site: str = "", early: bool = True,
                    pre_min_ks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(self.add_rmsnorm(h, delta, ks, w, eps), weight, bias, partials, site), h

    def route(self, x: torch.Tensor, router: Router) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x, router.weight, router.bias)
        top_v, top_i = torch.topk(logits, router.top_k, dim=-1)
        return top_i, torch.softmax(top_v, dim=1, dtype=top_v.dtype)

    def decode_attention(self, qkv: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, sinks: torch.Tensor,
                         sliding: bool, geom: Geometry, state: StepState) -> torch.Tensor:
        b, hq, hkv, d = qkv.shape[0], geom.hq, geom.hkv, geom.head_dim
        qkv = qkv.view(b, hq + 2 * hkv, d)
        cos = state.cos.index_select(0, state.pos.view(1))
        sin = state.sin.index_select(0, state.pos.view(1))
        q = rope(qkv[:, :hq], cos, sin)
        k = rope(qkv[:, hq : hq + hkv], cos, sin)
        v = qkv[:, hq + hkv :]
        slot = state.pos % kc.shape[2] if sliding else state.pos
        kc.index_copy_(2, slot.view(1), k.unsqueeze(2).to(kc.dtype))
        vc.index_copy_(2, slot.view(1), v.unsqueeze(2).to(vc.dtype))
        # slot s is valid iff s <= pos (see kernels._attn_decode_kernel)
        g = hq // hkv
        qg = q.view(b, hkv, g, d)
        scores = torch.matmul(qg, kc.transpose(2, 3)) * geom.scale
        valid = torch.arange(kc.shape[2], device=q.device) <= state.pos
        scores = scores.masked_fill(~valid, float("-inf"))
        sink = sinks.reshape(1, hkv, g, 1).expand(b, -1, -1, -1).to(scores.dtype)
        comb = torch.cat([scores, sink], dim=-1)
        comb = comb - comb.max(dim=-1, keepdim=True).values
        probs = torch.softmax(comb, dim=-1)[..., :-1].to(vc.dtype)
        return torch.matmul(probs, vc).reshape(b, hq * d)


class TritonOps:
    name = "triton"

    def __init__(self, router_split: bool = True, gemv: bool = False, splitk: bool = False) -> None:
        from bench.engines.graph import kernels

        self.k = kernels
        self.router_split = router_split
        self.gemv = gemv
        self.splitk = splitk

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
               partials: bool = False, site: str = "") -> torch.Tensor | Partials:
        """`site` ("qkv", "o_proj") names a split-K launch for kernels.early_pdl and picks the tensor-core split-K
        tile (kernels.SPLITK_MMA_CONFIG) past one row."""
        rows = x.shape[0]
        if self._splitk_gemv(x, w, partials):
            return self.k.splitk_linear(x, w, b, self.k.SPLITK_CONFIG["small"],
                                        site=f"splitk_{site}" if site else "splitk")
        if self._splitk_shape(x, w, partials):
            cfg = self.k.splitk_mma_config(rows, site)
            if cfg is not None:  # 2..SPLITK_MMA_MAX_ROWS rows: tensor-core split-K (None: cuBLAS for this class)
                return self.k.splitk_mma_linear(x, w, b, cfg)
        if self.gemv and x.shape[0] <= self.k.GEMV_MAX_ROWS and x.stride(1) == 1 and w.is_contiguous():
            cfg = self.k.GEMV_CONFIG.get("vocab" if w.shape[0] >= 16384 else "small")
            if cfg is not None:  # None: cuBLAS measured faster for this weight class
                return self.k.gemv(x, w, b, cfg)
        return F.linear(x, w, b)

    def _splitk_shape(self, x: torch.Tensor, w: torch.Tensor, partials: bool) -> bool:
        """Whether `linear` may leave split-K partials for this input and weight ("small" weights: qkv, o_proj)."""
        return partials and self.splitk and w.shape[0] < 16384 and x.stride(1) == 1 and w.is_contiguous()

    def _splitk_gemv(self, x: torch.Tensor, w: torch.Tensor, partials: bool) -> bool:
        """Whether `linear` takes the CUDA-core split-K GEMV (kernels.splitk_linear, <= SPLITK_MAX_ROWS rows), on
        which the one-row folds (`norm_linear`, `linear_norm_route`) build."""
        k = self.k
        return (self._splitk_shape(x, w, partials) and x.shape[0] <= k.SPLITK_MAX_ROWS
                and k.SPLITK_CONFIG.get("small") is not None)

    def greedy_step(self, x: torch.Tensor, w: torch.Tensor, logits: torch.Tensor | None, tok: torch.Tensor,
                    out: torch.Tensor, step: torch.Tensor, pos: torch.Tensor) -> None:
        k = self.k
        cfg = k.GEMV_CONFIG.get("vocab" if w.shape[0] >= 16384 else "small")  # the class's tile, as `linear`
        if (self.gemv and k.GEMV_GREEDY and cfg is not None and x.shape[0] <= k.GEMV_MAX_ROWS and x.stride(1) == 1
                and w.is_contiguous() and out.stride(1) == 1):
            y = k.gemv_greedy(x, w, tok, out, step, pos, cfg)
        elif k.GEMV_GREEDY and out.stride(1) == 1:  # another kernel's logits (cuBLAS), then one launch
            y = self.linear(x, w, None)
            k.argmax_step(y, tok, out, step, pos)
        else:
            greedy_step_torch(self, x, w, logits, tok, out, step, pos)
            return
        if logits is not None:
            logits.copy_(y)

    def add_rmsnorm(self, h: torch.Tensor, delta: torch.Tensor | None, ks: int, w: torch.Tensor,
                    eps: float) -> torch.Tensor:
        return self.k.add_rmsnorm(h, delta, ks, w, eps)

    def norm_route(self, h: torch.Tensor, delta: torch.Tensor | Partials, w: torch.Tensor, eps: float,
                   router: Router) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.k
        if (k.FUSE_NORM_ROUTER and self.router_split and h.shape[0] <= k.NORM_ROUTER_MAX_TOKENS
                and h.is_contiguous() and router.weight.is_contiguous()
                and (isinstance(delta, k.Partials) or delta.is_contiguous())):
            return k.add_rmsnorm_route(h, delta, w, eps, router.weight, router.bias, router.top_k)
        normed = self.add_rmsnorm(h, delta, 1, w, eps)
        return (normed, *self.route(normed, router))

    def linear_norm_route(self, x: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor | None, h: torch.Tensor,
                          w: torch.Tensor, eps: float, router: Router, partials: bool = False,
                          h_src: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """o_proj, residual, norm and router: one launch (kernels.splitk_norm_route) where o_proj would be the
        one-row split-K GEMV and the norm + router its fused kernel and FOLD_NORM_ROUTER is on; else `linear`
        (partials) then `norm_route`. h_src: the residual before, where `norm_linear` left it outside h."""
        k = self.k
        h_src = h if h_src is None else h_src
        if (k.FOLD_NORM_ROUTER and k.FUSE_NORM_ROUTER and self.router_split and x.shape[0] == 1
                and self._splitk_gemv(x, wo, partials) and k.NORM_ROUTER_MAX_TOKENS >= 1 and h.is_contiguous()
                and router.weight.is_contiguous()):
            return k.splitk_norm_route(x, wo, bo, h, w, eps, router.weight, router.bias, router.top_k,
                                       k.FOLD_CONFIG or k.SPLITK_CONFIG["small"], h_in=h_src)
        if h_src is not h:
            h.copy_(h_src)
        return self.norm_route(h, self.linear(x, wo, bo, partials, "o_proj"), w, eps, router)

    def norm_linear(self, h: torch.Tensor, delta: torch.Tensor | None, ks: int, w: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: torch.Tensor | None, partials: bool = False,
                    site: str = "", early: bool = True,
                    pre_min_ks: int | None = None) -> tuple[torch.Tensor | Partials, torch.Tensor]:
        """add_rmsnorm then `linear`; with kernels.LAZY_NORM at one row, where the linear is the split-K GEMV and the
        fused rope + attention its consumer: one launch (kernels.splitk_norm_linear) that leaves h as it was and
        returns the updated residual as a scratch row, for linear_norm_route's h_src."""
        k = self.k
        if (k.LAZY_NORM and h.shape[0] == 1 and self._splitk_gemv(h, weight, partials) and k.FUSE_ROPE_ATTN
                and k.FUSE_ROPE_ATTN_MIN_ROWS <= 1 and h.is_contiguous() and (delta is None or delta.is_contiguous())):
            return k.splitk_norm_linear(h, delta.view(ks, -1) if delta is not None else None, ks, w, eps, weight,
                                        bias, k.LAZY_NORM_CONFIG or k.SPLITK_CONFIG["small"], early=early,
                                        pre_min_ks=pre_min_ks)
        return self.linear(self.add_rmsnorm(h, delta, ks, w, eps), weight, bias, partials, site), h

    def route(self, x: torch.Tensor, router: Router) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k.router(x, router.weight, router.bias, router.top_k, split=self.router_split)

    def decode_attention(self, qkv: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, sinks: torch.Tensor,
                         sliding: bool, geom: Geometry, state: StepState) -> torch.Tensor:
        if self.k.FUSE_ROPE_ATTN and qkv.shape[0] >= self.k.FUSE_ROPE_ATTN_MIN_ROWS:  # kernels.rope_attn_decode
            return self.k.rope_attn_decode(qkv, state.cos, state.sin, state.pos, kc, vc, sinks, geom.scale, geom.hq,
                                           sliding, geom.window)
        q = self.k.rope_kv(qkv, state.cos, state.sin, state.pos, kc, vc, geom.hq, sliding, geom.window)
        return self.k.attn_decode(q, kc, vc, sinks, state.pos, geom.scale)


def make_ops(options: GraphOptions) -> TorchOps | TritonOps:
    """The backend for resolved options (kernels = torch | triton)."""
    if options.kernels == "triton":
        return TritonOps(router_split=options.router_split, gemv=options.gemv, splitk=options.splitk)
    return TorchOps()
