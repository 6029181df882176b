"""Triton kernels of the `graph` engine's decode step (CUDA; also runs under TRITON_INTERPRET=1 on CPU for tests).

Each kernel replaces a run of small torch ops with one launch, and takes every step-dependent value (the
position) from device memory, so that one decode step can be captured as a CUDA graph:

- `add_rmsnorm`: residual add (optionally summing the top_k expert rows of each token) + RMSNorm.
- `rope_kv`: rotary embedding of q and k, and the write of k and v into the static cache (ring slot on
  sliding-window layers).
- `attn_decode`: one-token attention with sinks over the static cache (online softmax, GQA, one program per
  (stream, kv head)).
- `rope_attn_decode`: `rope_kv` and `attn_decode` in one launch (FUSE_ROPE_ATTN, what the decoder runs): each
  (stream, kv head) program ropes its query heads in registers, writes its k and v, then attends.
- `add_rmsnorm_route`: the post-attention `add_rmsnorm` and the decode router in one launch for a step of
  <= NORM_ROUTER_MAX_TOKENS tokens (FUSE_NORM_ROUTER): each program recomputes the rows' RMS, normalizes its slice
  and computes that slice's router partials; the last program to finish (an atomic count) picks the top-k and
  writes the residual. With one row (NORM_ROUTER_ONE_ROW) the last program keeps the residual row from its RMS pass
  and picks the top-k by rank.
- `splitk_norm_route`: o_proj's one-row split-K GEMV with the residual add, RMSNorm and router folded into its tail
  (FOLD_NORM_ROUTER, one row): the last program of each N tile (an
  atomic count per tile) sums the tile's partials, updates h and stores the tile's sum of squares and router partial
  logits; the last tile (a second count) takes the RMS, the logits and the top-k, and writes the normed row. One
  launch where o_proj and `add_rmsnorm_route` took two.
- `router`: router linear + top-k + softmax over the k logits. Decode (<= ROUTER_SPLIT_MAX_TOKENS tokens): split-K
  partial logits (one program per slice of the hidden size and tile of tokens, every expert; bf16 inputs on the
  tensor cores at the step sizes in ROUTER_TC_BY_TOKENS), then one program per token sums the slices in a fixed
  order and picks the top-k; prefill: one program per token.
- `splitk_norm_linear`: the qkv GEMV at one row with the residual add and RMSNorm before it folded in (LAZY_NORM):
  partials of W (w_ln * h) plus each K slice's sum of squares; `rope_attn_decode` applies the RMS factor.
- `splitk_linear`: y = x W^T (+ b) for decode steps of <= SPLITK_MAX_ROWS rows (GraphOptions.splitk), as split-K
  fp32 partials (more programs than output tiles, no tensor cores) that the next kernel (`rope_attn_decode` or
  `rope_kv` for qkv, `add_rmsnorm` / `add_rmsnorm_route` for o_proj) sums, biases and rounds: no reduce kernel,
  one launch per linear.
- `splitk_mma_linear`: the same Partials for 2..SPLITK_MMA_MAX_ROWS rows on the tensor cores (swap-AB `tl.dot`: the
  weight tile is the MMA's 64-row operand, the rows padded to 16 / 32 / 64 its narrow one), tiles per row class and
  site in SPLITK_MMA_CONFIG (None: cuBLAS); replaces cuBLAS's GEMM (and its split-K reduce for o_proj) at 2-32 rows.
- `gemv`: y = x W^T (+ b) for a few rows (decode, M <= GEMV_MAX_ROWS): qkv, o_proj and lm_head. One program per
  BN output features streams its (BN, K) weight rows once (K-contiguous loads, M padded to 16 for tl.dot); one
  launch where cuBLAS takes a split-K GEMM and a reduce at batch 1.
- `moe`: the expert GEMMs. One program per (expert, N tile) reads that tile of the expert's weights once and
  multiplies it by every row routed to the expert. The gate_up GEMM applies the clamped SwiGLU in its epilogue,
  the down GEMM the bias and routing weight. In scan mode (decode) each program finds its rows in the (B, k)
  routing table itself, so no sort is needed (with fewer pairs than experts, program row i takes the i-th distinct
  routed expert: the compact grid); in sorted mode (prefill) rows come from an expert-sorted list.
  A tile may split K over S programs in scan mode (a 6th tile entry; fp32 partials summed by each tile's last
  program). MOE_FUSED (off): a one-token step's two expert GEMMs in one persistent launch (`_moe_fused_kernel`:
  down tiles wait on per-expert counters for their gate_up tiles).
  `routing_plan` (host side) and `routed_rows` (@triton.jit) are that row logic, shared with any other expert
  weight format's kernels; in decode the sorted list comes from `_routing_sort_kernel` (a one-program counting
  sort, one program per expert) instead of torch.sort + searchsorted. `moe_tiles` picks the tiles per launch class
  (compact few / compact many pairs, M tile 16 / 32 / 64, larger); a table may put the N tiles on the fast grid
  axis (NB_MAJOR), so that the CTAs resident together read adjacent column strips of one expert's weight rows.

Programmatic dependent launch (PDL, Hopper): in decode steps of up to PDL_MAX_TOKENS tokens (mode PDL at one
token, PDL_ROWS past it) each decode kernel here is launched with `launch_pdl` and waits (`griddepcontrol.wait`,
`_gdc`) before touching anything an earlier kernel writes, so its launch overlaps the end of the kernel before it
(`PDL`, `pdl_launch`). The kernels right before a
split-K GEMV (decode attention before o_proj, the one-row add_rmsnorm before qkv), rope_kv and the bf16 down expert
GEMM let the next kernel launch right after their own wait (PDL mode 2: `SPLITK_EARLY`, `PDL_EARLY_MORE`,
`early_pdl`); the split-K GEMVs do not: o_proj's early trigger slowed pruned models, qkv's the fused rope + attention
(docs/PERF.md, session 8). Kernels launched that way may load, before their own wait, what no kernel since the one
two back writes: weights (the lazy qkv GEMV's first tiles, LAZY_PRE; the one-token down GEMM's, MOE_DOWN_PRE, which
gate_up launches early at up to GATE_UP_EARLY_MAX_PAIRS pairs) and routing two kernels old.

Greedy decoding's end (`gemv_greedy`, `argmax_step`, GEMV_GREEDY): the vocabulary GEMV (or, past GEMV_MAX_ROWS rows,
one launch after cuBLAS's logits) takes each row's argmax as an atomic max of packed (value, ~id) keys, and its last
program writes the tokens and the output column and advances the step and the position (`_greedy_tail`).

A program that loads a value and then stores over it (a residual tile, the step counter) puts a barrier between:
Triton may load it once per register layout or once per warp, and without the barrier one warp's store can land
before another warp's load (docs/PERF.md, sessions 10 and 11).
"""

# ruff: noqa: SIM102, SIM108  (Triton JIT code keeps explicit if-blocks on constexpr flags)
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


# Programmatic dependent launch (Hopper and later; `pdl_launch()`): every kernel of this module launched with it
# calls `_gdc` before its first access to memory that an earlier kernel of the step may write (only weights and
# constants are read before), so its launch and prologue overlap the end of the kernel before it. PDL = 0: plain
# launches; 1: the next kernel may start once every program of this one has exited (the implicit trigger); 2: it
# may start once every program of this one has passed its wait (the explicit trigger right after the wait). In
# both modes, when kernel N starts, kernel N-2 has completed (N-1's programs had passed their wait). Only for steps
# of <= PDL_MAX_TOKENS tokens. H200 (docs/PERF.md, session 5): mode 1 at batch 1 (with the norm + router fusion)
# 2.502 -> 2.484 ms (top_k 4), 1.933 -> 1.899 (top_k 2); at 8 / 32 / 128 tokens it was not faster (+0.1 / +0.2 /
# +0.6%), mode 2 mixed (-0.9% at 8, +2.0% at 128, +1.7% at batch 1 top_k 2 without the fusion).
PDL = 1
PDL_MAX_TOKENS = 32
# The PDL mode of steps of 2..PDL_MAX_TOKENS tokens (one-token steps take PDL and the per-site `early_pdl`). H200
# (docs/PERF.md, session 9, `gpu_step_ablation.py --compare`, against PDL_MAX_TOKENS = 1, the same tokens and
# logits): mode 2 at 8 tokens E16 k2 -1.9%, k4 -1.5%, E32 k2 -1.7%, k4 -1.6% (mode 1 -1.1 / -0.8 / -1.0 / -0.3%);
# at 32 tokens (another call, against PDL_MAX_TOKENS = 8) mode 2 E16 k4 -0.7%, k2 -1.0%, E32 k4 -0.2%, k2 -0.7%
# (mode 1 -0.4 / -0.8 / -0.1 / -0.6%).
PDL_ROWS = 2
_PDL_OK: bool | None = None


def pdl_launch(tokens: int = 1) -> int:
    """The PDL mode of a decode launch for a step of `tokens` tokens: PDL at one token, PDL_ROWS up to
    PDL_MAX_TOKENS, else 0; always 0 without a CUDA device of compute capability >= 9 or under the Triton
    interpreter."""
    global _PDL_OK
    if _PDL_OK is None:
        import os

        _PDL_OK = (os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()
                   and torch.cuda.get_device_capability()[0] >= 9)
    if not _PDL_OK or tokens > PDL_MAX_TOKENS:
        return 0
    return int(PDL) if tokens <= 1 else int(PDL_ROWS)


def _pdl_kw(mode: int) -> dict:
    return {"launch_pdl": True} if mode > 0 else {}


def _k_slices(kdim: int, splits: int, bk: int) -> tuple[int, int]:
    """A split-K launch's K slices: `splits` asked for, each a multiple of bk wide -> (slice width, slices used)."""
    ksplit = triton.cdiv(triton.cdiv(kdim, splits), bk) * bk
    return ksplit, triton.cdiv(kdim, ksplit)


def _zeros_once(cache: dict, key, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """cache[key], zero-filled on first use: the counts and keys that every launch leaves at zero for the next one
    (and for CUDA-graph replays); one buffer per key, never freed (a captured graph keeps using it)."""
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = torch.zeros(shape, dtype=dtype, device=device)
    return buf


@triton.jit
def _gdc(PDL: tl.constexpr):
    """Wait for the kernel before (all its memory visible); mode 2: then let the next kernel launch."""
    if PDL > 0:
        tl.extra.cuda.gdc_wait()
    if PDL > 1:
        tl.extra.cuda.gdc_launch_dependents()


@dataclass(frozen=True)
class Partials:
    """A linear's output y = x W^T + b (M, N) left as split-K fp32 partial sums (S, M, N) and the bias: the
    consumer (rope_attn_decode or rope_kv, add_rmsnorm, add_rmsnorm_route) sums the S slices in a fixed order, adds
    the bias and rounds to `dtype`, as F.linear's epilogue would, so no reduce kernel runs in between. From
    `splitk_linear` (one row) and `splitk_mma_linear` (2..SPLITK_MMA_MAX_ROWS rows)."""

    part: torch.Tensor
    bias: torch.Tensor | None
    dtype: torch.dtype
    # lazy RMSNorm (`splitk_norm_linear`, LAZY_NORM): the partials are of W (w_ln * h), unscaled; ss holds the input
    # row's sum of squares per K slice (S,), and the consumer multiplies the summed partials by
    # rsqrt(sum(ss) / hidden + eps) before the bias
    ss: torch.Tensor | None = None
    eps: float = 0.0
    hidden: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.part.shape[1]), int(self.part.shape[2]))

    def materialize(self) -> torch.Tensor:
        y = self.part.sum(0)
        if self.ss is not None:
            y = y * torch.rsqrt(self.ss.sum() / self.hidden + self.eps)
        return (y + self.bias.float() if self.bias is not None else y).to(self.dtype)


def _plain_partials(parts: Partials | None, where: str) -> None:
    """Only rope_attn_decode applies a lazy-norm scale; every other consumer takes plain partials."""
    if parts is not None and parts.ss is not None:
        raise ValueError(f"{where}: lazy-norm partials (splitk_norm_linear) go to rope_attn_decode only")


@triton.jit
def _lin_load(y_ptr, part_ptr, bias_ptr, row, idx, M, N, mask, NSPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
              rstd=1.0, LAZY: tl.constexpr = False):
    """Element idx of row `row` of a linear's output, as float32: from y (NSPLIT = 0), or the sum of NSPLIT split-K
    partials (S, M, N) (times `rstd` with LAZY: `splitk_norm_linear`'s unscaled partials) + bias, rounded to y's
    dtype (what F.linear would have stored)."""
    if NSPLIT == 0:
        v = tl.load(y_ptr + row * N + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros(idx.shape, dtype=tl.float32)
        for s in tl.static_range(NSPLIT):
            v += tl.load(part_ptr + (s * M + row) * N + idx, mask=mask, other=0.0)
        if LAZY:
            v = v * rstd
        if HAS_BIAS:
            v += tl.load(bias_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        v = v.to(y_ptr.dtype.element_ty).to(tl.float32)
    return v


@triton.jit
def _splitk_w_tile(w_ptr, offs_n, nmask, k0, k_lo, K, KSPLIT, BK: tl.constexpr):
    """The [BN, BK] weight tile at k0 of slice [k_lo, k_lo + KSPLIT), as float32, and its K offsets and mask."""
    offs_k, kmask = _pre_k(k0, k_lo, K, KSPLIT, BK)
    return _splitk_w_raw(w_ptr, offs_n, nmask, k0, k_lo, K, KSPLIT, BK).to(tl.float32), offs_k, kmask


@triton.jit
def _splitk_acc(acc, w, x_ptr, offs_k, kmask, mm, M, stride_xm, BM: tl.constexpr):
    """acc += the weight tile w times the rows' K slice (float32, no tensor cores)."""
    if BM == 1:
        x = tl.load(x_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)
        acc += w * x[None, :]
    else:
        x = tl.load(x_ptr + mm[:, None] * stride_xm + offs_k[None, :], mask=(mm < M)[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        acc += w[None, :, :] * x[:, None, :]
    return acc


@triton.jit
def _splitk_w_raw(w_ptr, offs_n, nmask, k0, k_lo, K, KSPLIT, BK: tl.constexpr):
    """The [BN, BK] weight tile at k0 of slice [k_lo, k_lo + KSPLIT) in the weight's own dtype (held in registers
    across a PDL wait: half the registers of float32)."""
    offs_k, kmask = _pre_k(k0, k_lo, K, KSPLIT, BK)
    return tl.load(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :], mask=nmask[:, None] & kmask[None, :],
                   other=0.0)


@triton.jit
def _pre_k(k0, k_lo, K, KSPLIT, BK: tl.constexpr):
    """K offsets and mask of the split-K tile at k0 of slice [k_lo, k_lo + KSPLIT)."""
    offs_k = k0 + tl.arange(0, BK)
    return offs_k, (offs_k < K) & (offs_k < k_lo + KSPLIT)


@triton.jit
def _pre_load(w_ptr, offs_n, nmask, k_lo, K, KSPLIT, BK: tl.constexpr, PRE: tl.constexpr):
    """The slice's first PRE (0..4) weight tiles, raw, for a kernel to load before its PDL wait (weights never depend
    on an earlier kernel, so their loads overlap the kernel before); the tiles past PRE are unused zeros."""
    w0 = tl.zeros([1], dtype=tl.float32)
    w1 = w0
    w2 = w0
    w3 = w0
    if PRE >= 1:
        w0 = _splitk_w_raw(w_ptr, offs_n, nmask, k_lo, k_lo, K, KSPLIT, BK)
    if PRE >= 2:
        w1 = _splitk_w_raw(w_ptr, offs_n, nmask, k_lo + BK, k_lo, K, KSPLIT, BK)
    if PRE >= 3:
        w2 = _splitk_w_raw(w_ptr, offs_n, nmask, k_lo + 2 * BK, k_lo, K, KSPLIT, BK)
    if PRE >= 4:
        w3 = _splitk_w_raw(w_ptr, offs_n, nmask, k_lo + 3 * BK, k_lo, K, KSPLIT, BK)
    return w0, w1, w2, w3


@triton.jit
def _splitk_gemv_kernel(x_ptr, w_ptr, part_ptr, M, N, K, KSPLIT, stride_xm, BM: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr, PDL: tl.constexpr):
    """part[s, m, n] = sum over k in slice s of x[m, k] w[n, k] (fp32, no tensor cores). Grid (N / BN, S)."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    s = tl.program_id(1)
    nmask = offs_n < N
    mm = tl.arange(0, BM)
    k_lo = s * KSPLIT
    acc = tl.zeros([BM, BN, BK], dtype=tl.float32) if BM > 1 else tl.zeros([BN, BK], dtype=tl.float32)
    _gdc(PDL)
    for k0 in range(k_lo, k_lo + KSPLIT, BK):
        w, offs_k, kmask = _splitk_w_tile(w_ptr, offs_n, nmask, k0, k_lo, K, KSPLIT, BK)
        acc = _splitk_acc(acc, w, x_ptr, offs_k, kmask, mm, M, stride_xm, BM)
    if BM == 1:
        tl.store(part_ptr + (s * M) * N + offs_n, tl.sum(acc, axis=1), mask=nmask)
    else:
        tl.store(part_ptr + (s * M + mm[:, None]) * N + offs_n[None, :], tl.sum(acc, axis=2),
                 mask=(mm < M)[:, None] & nmask[None, :])


# Split-K linears for decode steps of <= SPLITK_MAX_ROWS rows (GraphOptions.splitk): (BN, BK, S, num_warps) per
# weight class; "small" = qkv and o_proj (N < 16384). Their output stays as Partials for the next kernel.
# H200, 24 layers at M = 1 (docs/PERF.md): qkv 249 -> 241 us, o_proj 289 -> 187 us against cuBLAS.
SPLITK_MAX_ROWS = 1
# (Session 9 measured the split-K GEMVs loading their first weight tile before their PDL wait: within noise, mixed,
# E32 k4 +0.25%, k2 -0.5%; removed, docs/PERF.md.)
SPLITK_CONFIG: dict[str, tuple[int, ...]] = {"small": (16, 256, 4, 4)}
# The split-K GEMVs' early start in one-token PDL steps (session 7): the kernel before each split-K GEMV
# (attn_decode before o_proj, the add_rmsnorm of one row before qkv or lm_head) triggers its dependents right after
# its own wait (PDL mode 2), so the GEMV's launch and prologue overlap that kernel, not only its tail. H200
# (docs/PERF.md, session 7, with NORM_ROUTER_ONE_ROW): batch 1 k4 2.462 -> 2.439 ms, k2 1.888 -> 1.865; the same
# bits. (Having the GEMV's programs also prefetch their own weight block into L2 before their wait made both split-K
# launches ~1.9 us slower: k4 2.501 ms, not kept.) False: mode 1 as every other kernel (ablation).
SPLITK_EARLY = True
# Session 7 shipped these with "splitk_o_proj" in PDL_EARLY_MORE: the base model ran 4-5% faster at batch 1 but every
# pruned variant 3-6% slower (a ~0.19 ms a step penalty that made pruned models look slower than the base, where the
# model says they are equal). Session 8's ablation on one H200 (docs/PERF.md; `gpu_step_ablation.py --pruned
# --rounds 3`, E32 then pruned to E16 in-process) found the site: o_proj in mode 2 alone makes E16 7.8% (k4) / 10.2%
# (k2) slower and E32 no slower; every other option leaves the E16 / E32 ratio at main's (1.005-1.008). Shipped: every
# option but o_proj's early trigger: E32 k4 2.484 -> 2.407 ms, k2 1.902 -> 1.834; E16 k4 2.498 -> 2.421, k2 1.917 ->
# 1.846 (-3.1 / -3.6%, both models alike).
# More one-token kernels that trigger their dependents right after their wait (PDL mode 2), by site: "rope"
# (rope_kv, before attention), "splitk" (qkv and o_proj, before rope_kv and the norm + router), "moe_down" (the bf16
# down expert GEMM, before add_rmsnorm); "norm_router" (before the gate_up expert GEMM) and "moe_gate_up" (the bf16
# gate_up expert GEMM, before the down one) are candidates left out.
# H200 (docs/PERF.md, session 7, on top of SPLITK_EARLY and NORM_ROUTER_ONE_ROW, alone: rope -0.6 / -0.8%, splitk
# -1.2 / -1.6%, moe_down -0.7 / -0.8%, norm_router +0.2 / +2.1% at batch 1 k4 / k2): the three together 2.409 ->
# 2.351 ms (k4), 1.852 -> 1.793 (k2); the same bits. Every kernel reads what an earlier kernel wrote only after its
# own wait (the down GEMM's routing: two kernels back, complete once it runs), so an early launch cannot race.
PDL_EARLY_MORE: frozenset[str] = frozenset({"rope", "moe_down", "splitk_qkv"})
# "splitk" names both split-K GEMVs; "splitk_qkv" / "splitk_o_proj" one of them. "splitk_o_proj" is left out (see
# SPLITK_EARLY). "splitk_qkv" (the lazy qkv GEMV, whose consumer is the fused rope + attention) was left out from
# session 8 (-0.3% before the fusion, +3.9% with it) to 12; with the lazy GEMV's 2-slice tile and pre-loads it is
# faster (session 13, H200, two same-card --compare calls, E32 / E16, the same bits: top_k 4 -0.3 / -0.7% and -0.1 /
# -0.2%, top_k 2 -0.5 / -0.5% and -0.7 / -0.8%). "rope" acts only on the unfused path.
# Why o_proj's trigger hurts only pruned models is
# a hypothesis, not measured: o_proj in mode 2 lets the norm + router kernel's programs be placed while o_proj still
# runs, and how many of them share an SM then depends on their register count, which depends on the expert count
# (sm_90: 167 registers at 32 experts, 78 at 16: one program an SM against up to three).


def early_pdl(pdl: int, rows: int, site: str) -> int:
    """The PDL mode of a one-token kernel at `site`: 2 for "attn" and "norm" (the kernels before the split-K GEMVs)
    with SPLITK_EARLY and for the sites in PDL_EARLY_MORE ("splitk" standing for "splitk_qkv" and "splitk_o_proj"),
    else `pdl`."""
    if pdl <= 0:
        return pdl
    if SPLITK_EARLY and site in ("attn", "norm") and rows <= SPLITK_MAX_ROWS:
        return 2
    if site in PDL_EARLY_MORE or (site.startswith("splitk_") and "splitk" in PDL_EARLY_MORE):
        return 2
    return pdl


def splitk_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  config: tuple[int, int, int, int] | None = None, site: str = "splitk") -> Partials:
    """x (M, K) @ weight (N, K)^T (+ bias) as split-K partials (S, M, N) fp32; weight contiguous. `site` names the
    launch for `early_pdl` ("splitk_qkv", "splitk_o_proj")."""
    m, k = x.shape
    n = weight.shape[0]
    bn, bk, splits, warps = config or SPLITK_CONFIG["small"]
    ksplit, splits = _k_slices(k, splits, bk)
    part = torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    pdl = early_pdl(pdl_launch(m), m, site)
    _splitk_gemv_kernel[(triton.cdiv(n, bn), splits)](
        x, weight, part, m, n, k, ksplit, x.stride(0), BM=_p2(m), BN=bn, BK=bk, PDL=pdl,
        num_warps=warps, **_pdl_kw(pdl),
    )
    return Partials(part=part, bias=bias, dtype=x.dtype)


@triton.jit
def _lazy_step(acc, sq, w, k0, h_ptr, y_ptr, nw_ptr, hm_ptr, pid_n, k_lo, K, KSPLIT, KS: tl.constexpr,
               BK: tl.constexpr):
    """One K step of `_splitk_norm_gemv_kernel`: hm = h + the KS rows of y on the step's K range (rounded as
    `_add_rmsnorm_kernel` rounds them), acc += w * (nw * hm); N tile 0 also stores hm and adds its squares to sq."""
    offs_k, kmask = _pre_k(k0, k_lo, K, KSPLIT, BK)
    hv = tl.load(h_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)
    if KS > 0:
        d = tl.zeros([BK], dtype=tl.float32)
        for j in tl.static_range(KS):
            d += tl.load(y_ptr + j * K + offs_k, mask=kmask, other=0.0).to(tl.float32)
        hv = (hv + d.to(h_ptr.dtype.element_ty).to(tl.float32)).to(h_ptr.dtype.element_ty).to(tl.float32)
    x = tl.load(nw_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32) * hv
    acc += w * x[None, :]
    if pid_n == 0:
        tl.store(hm_ptr + offs_k, hv.to(hm_ptr.dtype.element_ty), mask=kmask)
        sq += hv * hv
    return acc, sq


@triton.jit
def _splitk_norm_gemv_kernel(h_ptr, y_ptr, nw_ptr, w_ptr, part_ptr, hm_ptr, ss_ptr, N, K, KSPLIT, KS: tl.constexpr,
                             BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr, PRE: tl.constexpr = 0):
    """One row, lazy RMSNorm: part[s, 0, n] = sum over k in slice s of w[n, k] nw[k] hm[k] with hm = h + the KS
    rows of y (rounded as `_add_rmsnorm_kernel` rounds them), unscaled; the N tile 0 programs also store hm's slice
    (into hm, not h: every program reads h) and its sum of squares ss[s]. Grid (N / BN, S)."""
    pid_n = tl.program_id(0)
    offs_n = pid_n * BN + tl.arange(0, BN)
    s = tl.program_id(1)
    nmask = offs_n < N
    k_lo = s * KSPLIT
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    sq = tl.zeros([BK], dtype=tl.float32)
    pre = _pre_load(w_ptr, offs_n, nmask, k_lo, K, KSPLIT, BK, PRE)
    _gdc(PDL)
    for i in tl.static_range(PRE):  # the pre-loaded tiles first, in K order
        acc, sq = _lazy_step(acc, sq, pre[i].to(tl.float32), k_lo + i * BK, h_ptr, y_ptr, nw_ptr, hm_ptr, pid_n, k_lo,
                             K, KSPLIT, KS, BK)
    for k0 in range(k_lo + PRE * BK, k_lo + KSPLIT, BK):
        w = _splitk_w_tile(w_ptr, offs_n, nmask, k0, k_lo, K, KSPLIT, BK)[0]
        acc, sq = _lazy_step(acc, sq, w, k0, h_ptr, y_ptr, nw_ptr, hm_ptr, pid_n, k_lo, K, KSPLIT, KS, BK)
    tl.store(part_ptr + s * N + offs_n, tl.sum(acc, axis=1), mask=nmask)
    if pid_n == 0:
        tl.store(ss_ptr + s, tl.sum(sq, axis=0))


# Lazy RMSNorm at one row (built session 10, measured and shipped session 11): the qkv split-K GEMV takes the
# residual h, the previous layer's expert outputs and the norm weight instead of the normed row
# (`splitk_norm_linear`), and its consumer (the fused rope + attention) scales the summed partials by rsqrt(mean of
# squares + eps): no add_rmsnorm launch between the down expert GEMM and qkv (147 -> 123 kernels a step). The updated
# residual goes to a scratch row that the fold reads (TritonOps.norm_linear / linear_norm_route). Not bit-equal to
# add_rmsnorm + qkv (the normed row is not rounded to bf16 before the GEMV; the sum of squares is per K slice).
# H200 (docs/PERF.md session 11, same-card --compare): batch 1 E32 k4 2.288 -> 2.243 ms (-2.0%), k2 -1.4%; E16 -1.9 /
# -1.2%; deterministic; teacher-forced check at batch 1 over 96 sequences 27.42% vs HF bf16 26.69% (pass; off:
# 26.79 vs 26.11). False: add_rmsnorm then the split-K GEMV (bit-equal to the two-kernel path).
LAZY_NORM = True
# The lazy GEMV's (BN, BK, S, num_warps); None: qkv's split-K tile (SPLITK_CONFIG["small"], 4 K slices). H200
# (docs/PERF.md session 12, same-card --compare against None): 2 K slices (640 programs, not 1,280) -0.5 to -0.7% at
# batch 1 E32 / E16 k4 / k2; (32, 256, 4, 4) +0.1 / +0.5%, (16, 256, 4, 8) +0.6 / +1.0%, (16, 128, 8, 4) +0.1 / +0.3%.
# Another summation order than qkv's tile (each slice's partial and sum of squares): teacher-forced check at batch 1
# over 96 sequences 27.37% vs HF bf16 26.27% (pass).
LAZY_NORM_CONFIG: tuple[int, int, int, int] | None = (16, 256, 2, 4)
# The lazy GEMV's first LAZY_PRE (0..4) weight tiles of each K slice are loaded before its PDL wait (`_pre_load`: the
# down expert GEMM before it triggers early, "moe_down" in PDL_EARLY_MORE), so that they stream under that GEMM's
# tail; only after a down GEMM of >= LAZY_PRE_MIN_KS rows (the ks expert rows it sums: top_k at one token). The same
# bits as 0. H200 (docs/PERF.md session 12, same-card --compare): LAZY_PRE 1 with qkv's tile at E32 / E16 top_k 4
# -0.7 / -0.7%; at top_k 2 0.0 / -0.1% (the lazy GEMV 1.1 us a layer faster, the 90-program down GEMM as much
# slower), hence LAZY_PRE_MIN_KS; LAZY_PRE 2 with LAZY_NORM_CONFIG's 2 slices (6 tiles each) is the shipped pair.
LAZY_PRE = 2
LAZY_PRE_MIN_KS = 3


def lazy_pre_tiles(ks: int, pre_min_ks: int | None = None) -> int:
    """The weight tiles the lazy qkv GEMV loads before its PDL wait after a down GEMM of `ks` rows a token: LAZY_PRE
    from pre_min_ks rows on (None: LAZY_PRE_MIN_KS; the experts before it decide, Experts.qkv_pre_min_ks), else 0."""
    return _pre_tiles(LAZY_PRE) if ks >= (LAZY_PRE_MIN_KS if pre_min_ks is None else pre_min_ks) else 0


def _pre_tiles(pre: int) -> int:
    """The weight tiles a one-row split-K kernel loads before its PDL wait (0..4; without PDL the wait is a no-op and
    they are the loop's first steps, unpipelined)."""
    if not 0 <= int(pre) <= 4:
        raise ValueError(f"pre-wait weight tiles must be 0..4, got {pre}")
    return int(pre)


def splitk_norm_linear(h: torch.Tensor, y: torch.Tensor | None, ks: int, nweight: torch.Tensor, eps: float,
                       weight: torch.Tensor, bias: torch.Tensor | None,
                       config: tuple[int, int, int, int] | None = None,
                       early: bool = True, pre_min_ks: int | None = None) -> tuple[Partials, torch.Tensor]:
    """One row: what `add_rmsnorm(h, y, ks, nweight, eps)` then `splitk_linear(normed, weight, bias)` give, in one
    launch and without writing h: returns (Partials of weight @ (nweight * hm), unscaled, with the per-slice sums of
    squares for the consumer's rsqrt; hm (1, H), the updated residual row). early: the launch is the "splitk_qkv"
    site of `early_pdl` (False: the plain PDL mode, whatever PDL_EARLY_MORE says; the experts before it decide,
    Experts.qkv_early). pre_min_ks: see `lazy_pre_tiles`."""
    if h.shape[0] != 1 or not h.is_contiguous() or (y is not None and (ks < 1 or y.shape != (ks, h.shape[1]))):
        raise ValueError(f"splitk_norm_linear: one contiguous row and ks rows of y, got h {tuple(h.shape)}, "
                         f"y {None if y is None else tuple(y.shape)}, ks {ks}")
    n, kdim = weight.shape
    if kdim != h.shape[1]:
        raise ValueError(f"splitk_norm_linear: weight {tuple(weight.shape)} for rows of {h.shape[1]}")
    bn, bk, splits, warps = config or SPLITK_CONFIG["small"]
    ksplit, splits = _k_slices(kdim, splits, bk)
    part = torch.empty((splits, 1, n), dtype=torch.float32, device=h.device)
    ss = torch.empty((splits,), dtype=torch.float32, device=h.device)
    hm = torch.empty_like(h)
    pdl = early_pdl(pdl_launch(1), 1, "splitk_qkv") if early else pdl_launch(1)
    _splitk_norm_gemv_kernel[(triton.cdiv(n, bn), splits)](
        h, y if y is not None else h, nweight, weight, part, hm, ss, n, kdim, ksplit,
        KS=ks if y is not None else 0, BN=bn, BK=bk, PDL=pdl,
        PRE=lazy_pre_tiles(ks, pre_min_ks) if y is not None else 0, num_warps=warps,
        **_pdl_kw(pdl),
    )
    return Partials(part=part, bias=bias, dtype=h.dtype, ss=ss, eps=eps, hidden=kdim), hm



@triton.jit
def _splitk_mma_kernel(x_ptr, w_ptr, part_ptr, M, N, K, KSPLIT, stride_xm, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr):
    """part[s, m, n] = sum over k in slice s of x[m, k] w[n, k] on the tensor cores, swap-AB: acc (BN, BM) = the
    weight tile (BN, BK) @ the rows transposed (BK, BM), so the weight is the MMA's big operand and the few rows (padded
    to BM >= 16) its narrow one. Grid (N / BN, S); the K loop is pipelined (num_stages). IEEE: float32 products
    (float32 weights: the interpreter tests, a float32 model) instead of tf32."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    s = tl.program_id(1)
    nmask = offs_n < N
    mm = tl.arange(0, BM)
    mmask = mm < M
    k_lo = s * KSPLIT
    k_hi = tl.minimum(k_lo + KSPLIT, K)
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * K
    _gdc(PDL)
    for k0 in range(k_lo, k_hi, BK):
        offs_k = k0 + tl.arange(0, BK)
        kmask = offs_k < k_hi
        w = tl.load(w_rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        x = tl.load(x_ptr + mm[None, :] * stride_xm + offs_k[:, None], mask=mmask[None, :] & kmask[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(w, x.to(w.dtype), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, x.to(w.dtype), acc)
    tl.store(part_ptr + (s * M + mm[None, :]) * N + offs_n[:, None], acc, mask=nmask[:, None] & mmask[None, :])


# Tensor-core split-K linears (`splitk_mma_linear`) for decode steps of 2..SPLITK_MMA_MAX_ROWS rows
# (GraphOptions.splitk): qkv and o_proj as Partials, as `splitk_linear` at one row (which stays as it is), instead of
# cuBLAS's GEMM (+ its split-K reduce for o_proj). (BN, BK, S, num_warps, num_stages) by M tile (rows padded to 16 /
# 32 / 64) and site ("qkv", "o_proj"); a missing or None entry keeps cuBLAS for that class.
SPLITK_MMA_MAX_ROWS = 64
# H200 (docs/PERF.md, session 8; the linear + its consumer over 24 layers' weights, us a layer, cuBLAS -> picked):
# 8 rows qkv 12.43 -> 11.54, o_proj 14.36 -> 11.80; 32 rows qkv 13.57 -> 13.21, o_proj 15.17 -> 12.60; at 64 rows
# every tile lost to cuBLAS (qkv 15.19 vs >= 15.60, o_proj 13.09 vs >= 13.86), so M tile 64 keeps cuBLAS.
SPLITK_MMA_CONFIG: dict[int, dict[str, tuple[int, ...] | None]] = {
    16: {"qkv": (64, 64, 4, 4, 4), "o_proj": (64, 128, 6, 4, 3)},
    32: {"qkv": (64, 128, 3, 4, 3), "o_proj": (64, 128, 6, 4, 3)},
    64: {"qkv": None, "o_proj": None},
}


def splitk_mma_bm(rows: int) -> int:
    """The M tile (padded row count) of a tensor-core split-K launch of `rows` rows."""
    return max(16, _p2(rows))


def splitk_mma_config(rows: int, site: str) -> tuple[int, ...] | None:
    """SPLITK_MMA_CONFIG's tile for `rows` rows at `site`, or None (cuBLAS) past SPLITK_MMA_MAX_ROWS / not listed."""
    if rows < 2 or rows > SPLITK_MMA_MAX_ROWS:
        return None
    return (SPLITK_MMA_CONFIG.get(splitk_mma_bm(rows)) or {}).get(site)


def splitk_mma_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      config: tuple[int, ...]) -> Partials:
    """x (M, K) @ weight (N, K)^T (+ bias) as split-K partials (S, M, N) fp32 on the tensor cores; weight contiguous,
    x rows unit-stride. config (BN, BK, S, num_warps, num_stages)."""
    m, k = x.shape
    n = weight.shape[0]
    bn, bk, splits, warps, stages = config
    ksplit, splits = _k_slices(k, splits, bk)
    part = torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    pdl = pdl_launch(m)
    _splitk_mma_kernel[(triton.cdiv(n, bn), splits)](
        x, weight, part, m, n, k, ksplit, x.stride(0), BM=splitk_mma_bm(m), BN=bn, BK=bk,
        IEEE=weight.dtype == torch.float32, PDL=pdl, num_warps=warps, num_stages=stages, **_pdl_kw(pdl),
    )
    return Partials(part=part, bias=bias, dtype=x.dtype)


@triton.jit
def _add_rmsnorm_kernel(h_ptr, d_ptr, w_ptr, out_ptr, part_ptr, bias_ptr, H, eps, KS: tl.constexpr,
                        BLOCK: tl.constexpr, NSPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < H
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    _gdc(PDL)
    x = tl.load(h_ptr + row * H + offs, mask=m, other=0.0).to(tl.float32)
    if NSPLIT > 0:  # delta = one linear's output, as split-K partials (KS = 1)
        d = _lin_load(h_ptr, part_ptr, bias_ptr, row, offs, tl.num_programs(0), H, m, NSPLIT, HAS_BIAS)
        x = (x + d).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * H + offs, x, mask=m)
        x = x.to(tl.float32)
    elif KS > 0:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(KS):
            acc += tl.load(d_ptr + (row * KS + j) * H + offs, mask=m, other=0.0).to(tl.float32)
        x = (x + acc.to(h_ptr.dtype.element_ty).to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * H + offs, x, mask=m)
        x = x.to(tl.float32)
    var = tl.sum(x * x, axis=0) / H
    y = x * tl.rsqrt(var + eps)
    tl.store(out_ptr + row * H + offs, (w * y).to(out_ptr.dtype.element_ty), mask=m)


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | Partials | None, ks: int, weight: torch.Tensor,
                eps: float) -> torch.Tensor:
    """h (R, H) += sum of the ks rows of delta per row (in place, rounded to h's dtype); returns RMSNorm(h).
    delta may be a linear's Partials (ks = 1): summed, biased and rounded here."""
    rows, hidden = h.shape
    out = torch.empty_like(h)
    parts = delta if isinstance(delta, Partials) else None
    _plain_partials(parts, "add_rmsnorm")
    if parts is not None and (ks != 1 or parts.shape != (rows, hidden)):
        raise ValueError(f"add_rmsnorm: partials of shape {parts.shape} for h {tuple(h.shape)} (ks {ks})")
    pdl = pdl_launch(rows)
    if parts is None:  # the norm before qkv (or lm_head): the next GEMV may start early (SPLITK_EARLY)
        pdl = early_pdl(pdl, rows, "norm")
    _add_rmsnorm_kernel[(rows,)](
        h, delta if isinstance(delta, torch.Tensor) else h, weight, out,
        parts.part if parts is not None else h, parts.bias if parts is not None and parts.bias is not None else h,
        hidden, eps, KS=ks if delta is not None else 0, BLOCK=_p2(hidden), num_warps=8 if hidden >= 2048 else 4,
        NSPLIT=int(parts.part.shape[0]) if parts is not None else 0,
        HAS_BIAS=parts is not None and parts.bias is not None, PDL=pdl, **_pdl_kw(pdl),
    )
    return out


@triton.jit
def _ordered_key(v, idx):
    """A uint64 whose unsigned order is (v ascending, then idx descending): the float32 v's bits made monotone in
    the high word, ~idx in the low one, so that an atomic max picks the largest v and, among equal v, the lowest idx
    (torch.argmax's first maximum)."""
    bits = v.to(tl.uint32, bitcast=True)
    mono = tl.where((bits >> 31) != 0, ~bits, bits | 0x80000000)
    return (mono.to(tl.uint64) << 32) | (~idx.to(tl.uint32)).to(tl.uint64)


@triton.jit
def _greedy_tail(key_ptr, cnt_ptr, tok_ptr, out_ptr, step_ptr, pos_ptr, M, stride_out, BM: tl.constexpr):
    """The last program of the vocabulary GEMV (an atomic count): each row's token from its packed key (the low word
    is ~id), stored into tok and into out[:, step]; then step += 1 and pos += 1; keys and count reset for the next
    step (CUDA-graph replays)."""
    rows = tl.arange(0, BM)
    rmask = rows < M
    key = tl.atomic_xchg(key_ptr + rows, tl.zeros([BM], dtype=tl.uint64), mask=rmask, sem="acq_rel", scope="gpu")
    tok = (~(key & 0xFFFFFFFF).to(tl.uint32)).to(tl.int64)
    step = tl.load(step_ptr)
    pos = tl.load(pos_ptr)
    tl.store(tok_ptr + rows, tok, mask=rmask)
    tl.store(out_ptr + rows * stride_out + step, tok, mask=rmask)
    # every warp loads step; one thread stores step + 1. Without this barrier a warp could read the new step and
    # write its rows' tokens one column late (session 11: at 256 rows, where each warp holds 32 rows of its own,
    # whole 32-row blocks of the recorded tokens went wrong from one step on, a different step each run)
    tl.debug_barrier()
    tl.store(step_ptr, step + 1)
    tl.store(pos_ptr, pos + 1)
    tl.store(cnt_ptr, 0)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym, HAS_BIAS: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr,
                 GREEDY: tl.constexpr = False, key_ptr=None, cnt_ptr=None, tok_ptr=None, out_ptr=None, step_ptr=None,
                 pos_ptr=None, stride_out=0):
    """y = x w^T (+ b) for M <= BM rows. GREEDY (`gemv_greedy`): also each row's argmax over N (of the stored,
    rounded values) by an atomic max of packed keys (`_ordered_key`); the last program finishes the step
    (`_greedy_tail`)."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = offs_n < N
    offs_m = tl.arange(0, BM)
    mmask = offs_m < M
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    _gdc(PDL)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        kmask = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mmask[:, None] & kmask[None, :],
                    other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=mmask[:, None] & nmask[None, :])
    if GREEDY:
        v = tl.where(nmask[None, :], y.to(tl.float32), float("-inf"))
        best = tl.max(v, axis=1)
        first = tl.min(tl.where(v == best[:, None], offs_n[None, :], N), axis=1)
        tl.atomic_max(key_ptr + offs_m, _ordered_key(best, first), mask=mmask, sem="relaxed", scope="gpu")
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
        if done == tl.num_programs(0) - 1:
            _greedy_tail(key_ptr, cnt_ptr, tok_ptr, out_ptr, step_ptr, pos_ptr, M, stride_out, BM)


GEMV_MAX_ROWS = 8
# (BN, BK, num_warps, num_stages) per weight shape class: "small" (N < 16384: qkv, o_proj) and "vocab" (lm_head);
# None keeps cuBLAS. Measured on the H200 (docs/PERF.md, 2026-11-30): for qkv and o_proj every tile tried was
# slower than cuBLAS (best 1198 vs 1085 us over 24 layers at M = 1 and 8); lm_head 262 vs 276 us at M = 1.
GEMV_CONFIG: dict[str, tuple[int, int, int, int] | None] = {"small": None, "vocab": (64, 128, 4, 4)}


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias for M <= GEMV_MAX_ROWS; weight contiguous, x rows unit-stride."""
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    # the class's tile; a class that keeps cuBLAS in the decoder (None) still runs here with the generic tile
    bn, bk, warps, stages = config or GEMV_CONFIG.get("vocab" if n >= 16384 else "small") or (32, 128, 4, 4)
    pdl = pdl_launch(m)
    _gemv_kernel[(triton.cdiv(n, bn),)](
        x, weight, bias if bias is not None else weight, y, m, n, k, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BM=16, BN=bn, BK=bk, PDL=pdl, num_warps=warps, num_stages=stages,
        **_pdl_kw(pdl),
    )
    return y


# The decode step's greedy token in the vocabulary GEMV itself (`gemv_greedy`, session 9): each program's per-row
# argmax goes into a packed atomic max, the last program writes the tokens, the output column and advances pos and
# the step index; that replaces torch.argmax (a reduce kernel, ~9 us at batch 1 on the H200) and four tiny
# bookkeeping kernels (copy, index_copy, two adds). The same tokens as torch.argmax (ties: the lowest id). Past
# GEMV_MAX_ROWS rows (cuBLAS logits) `argmax_step` does the same after the linear. H200 (docs/PERF.md, session 9,
# against False): batch 1 k4 -0.6% (E16) / -0.7% (E32), batch 8 k2 -0.4 / -0.3%. False: F.linear / gemv, then
# torch.argmax and the torch ops (ablation).
GEMV_GREEDY = True
_GREEDY_KEYS: dict[tuple[torch.device, int], torch.Tensor] = {}
_GREEDY_COUNTS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _greedy_state(device: torch.device, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed keys (one per row, zero between launches) and the count of a greedy launch of up to `rows` rows;
    one pair per (device, row class), never freed (a captured graph keeps using its pair)."""
    size = max(16, _p2(rows))
    return (_zeros_once(_GREEDY_KEYS, (device, size), (size,), torch.uint64, device),
            _zeros_once(_GREEDY_COUNTS, (device, size), (1,), torch.int32, device))


@triton.jit
def _argmax_step_kernel(y_ptr, N, stride_y, key_ptr, cnt_ptr, tok_ptr, out_ptr, step_ptr, pos_ptr, M, stride_out,
                        BN: tl.constexpr, BM: tl.constexpr, PDL: tl.constexpr):
    """Grid (N / BN, M): the argmax of one row's N tile into the row's packed key; the last program finishes the
    step (`_greedy_tail`)."""
    row = tl.program_id(1)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    _gdc(PDL)
    v = tl.load(y_ptr + row * stride_y + offs, mask=offs < N, other=float("-inf")).to(tl.float32)
    best = tl.max(v, axis=0)
    first = tl.min(tl.where(v == best, offs, N), axis=0)
    tl.atomic_max(key_ptr + row, _ordered_key(best, first), sem="relaxed", scope="gpu")
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    if done == tl.num_programs(0) * tl.num_programs(1) - 1:
        _greedy_tail(key_ptr, cnt_ptr, tok_ptr, out_ptr, step_ptr, pos_ptr, M, stride_out, BM)


ARGMAX_BN = 4096


def argmax_step(y: torch.Tensor, tok: torch.Tensor, out: torch.Tensor, step: torch.Tensor,
                pos: torch.Tensor) -> None:
    """Greedy decoding's end for logits y (M, N) from another kernel (rows past GEMV_MAX_ROWS: cuBLAS): tok (M,) =
    torch.argmax(y, -1), out[:, step] = tok, step += 1, pos += 1, in one launch instead of torch.argmax and four
    bookkeeping kernels."""
    m, n = y.shape
    if tok.shape != (m,) or out.shape[0] != m or out.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError(f"argmax_step: logits {tuple(y.shape)}, tok {tuple(tok.shape)}, out {tuple(out.shape)}")
    keys, cnt = _greedy_state(y.device, m)
    pdl = pdl_launch(m)
    _argmax_step_kernel[(triton.cdiv(n, ARGMAX_BN), m)](
        y, n, y.stride(0), keys, cnt, tok, out, step, pos, m, out.stride(0), BN=ARGMAX_BN, BM=keys.shape[0], PDL=pdl,
        num_warps=8, **_pdl_kw(pdl),
    )


def gemv_greedy(x: torch.Tensor, weight: torch.Tensor, tok: torch.Tensor, out: torch.Tensor, step: torch.Tensor,
                pos: torch.Tensor, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """logits = x (M, K) @ weight (N, K)^T (no bias) for M <= GEMV_MAX_ROWS, and greedy decoding's bookkeeping in
    the same launch: tok (M,) = each row's argmax (int64), out[:, step] = tok, then step += 1 and pos += 1 (0-d
    int64 device tensors). Returns the logits (M, N)."""
    m, k = x.shape
    n = weight.shape[0]
    if m > 16 or tok.shape != (m,) or out.shape[0] != m or out.stride(1) != 1:
        raise ValueError(f"gemv_greedy: {m} rows, tok {tuple(tok.shape)}, out {tuple(out.shape)}")
    keys, cnt = _greedy_state(x.device, m)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bn, bk, warps, stages = config or GEMV_CONFIG.get("vocab") or (64, 128, 4, 4)
    pdl = pdl_launch(m)
    _gemv_kernel[(triton.cdiv(n, bn),)](
        x, weight, weight, y, m, n, k, x.stride(0), y.stride(0), HAS_BIAS=False, BM=16, BN=bn, BK=bk, PDL=pdl,
        GREEDY=True, key_ptr=keys, cnt_ptr=cnt, tok_ptr=tok, out_ptr=out, step_ptr=step, pos_ptr=pos,
        stride_out=out.stride(0), num_warps=warps, num_stages=stages, **_pdl_kw(pdl),
    )
    return y


@triton.jit
def _rope_kv_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, kc_ptr, vc_ptr, part_ptr, bias_ptr, HQ, HKV, S_CACHE, WINDOW,
    stride_row, D: tl.constexpr, SLIDING: tl.constexpr, NSPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    PDL: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    _gdc(PDL)
    pos = tl.load(pos_ptr)
    half = tl.arange(0, D // 2)
    c = tl.load(cos_ptr + pos * (D // 2) + half).to(tl.float32)
    s = tl.load(sin_ptr + pos * (D // 2) + half).to(tl.float32)
    base = qkv_ptr + b * stride_row
    NQKV = (HQ + 2 * HKV) * D  # qkv as split-K partials (NSPLIT > 0): summed, biased, rounded as F.linear would
    mp = tl.num_programs(0)
    if h < HQ:
        if NSPLIT > 0:
            x1 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, h * D + half, mp, NQKV, half < D, NSPLIT, HAS_BIAS)
            x2 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, h * D + D // 2 + half, mp, NQKV, half < D, NSPLIT,
                           HAS_BIAS)
        else:
            x1 = tl.load(base + h * D + half).to(tl.float32)
            x2 = tl.load(base + h * D + D // 2 + half).to(tl.float32)
        dst = q_ptr + (b * HQ + h) * D
        tl.store(dst + half, (x1 * c - x2 * s).to(q_ptr.dtype.element_ty))
        tl.store(dst + D // 2 + half, (x2 * c + x1 * s).to(q_ptr.dtype.element_ty))
    else:
        kh = h - HQ
        if SLIDING:
            slot = pos % WINDOW
        else:
            slot = pos
        dd = tl.arange(0, D)
        if NSPLIT > 0:
            k1 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, (HQ + kh) * D + half, mp, NQKV, half < D, NSPLIT, HAS_BIAS)
            k2 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, (HQ + kh) * D + D // 2 + half, mp, NQKV, half < D, NSPLIT,
                           HAS_BIAS)
            v = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, (HQ + HKV + kh) * D + dd, mp, NQKV, dd < D, NSPLIT,
                          HAS_BIAS)
        else:
            k1 = tl.load(base + (HQ + kh) * D + half).to(tl.float32)
            k2 = tl.load(base + (HQ + kh) * D + D // 2 + half).to(tl.float32)
            v = tl.load(base + (HQ + HKV + kh) * D + dd)
        off = ((b * HKV + kh) * S_CACHE + slot) * D
        tl.store(kc_ptr + off + half, (k1 * c - k2 * s).to(kc_ptr.dtype.element_ty))
        tl.store(kc_ptr + off + D // 2 + half, (k2 * c + k1 * s).to(kc_ptr.dtype.element_ty))
        tl.store(vc_ptr + off + dd, v.to(vc_ptr.dtype.element_ty))


def rope_kv(
    qkv: torch.Tensor | Partials, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, kc: torch.Tensor,
    vc: torch.Tensor, hq: int, sliding: bool, window: int,
) -> torch.Tensor:
    """qkv (B, (hq+2hkv)*D) -> roped q (B, hq, D); writes roped k and v at the step's cache slot. qkv may be the
    qkv linear's Partials (summed, biased and rounded here)."""
    bsz = qkv.shape[0]
    _, hkv, s_cache, d = kc.shape
    parts = qkv if isinstance(qkv, Partials) else None
    _plain_partials(parts, "rope_kv")
    dtype = parts.dtype if parts is not None else qkv.dtype
    q = torch.empty((bsz, hq, d), dtype=dtype, device=kc.device)
    pdl = early_pdl(pdl_launch(bsz), bsz, "rope")
    if parts is not None:  # q stands in for the qkv pointer: never read, it carries the dtype of the rounding
        _rope_kv_kernel[(bsz, hq + hkv)](
            q, cos, sin, pos, q, kc, vc, parts.part, parts.bias if parts.bias is not None else q, hq, hkv,
            s_cache, max(1, window), 0, D=d, SLIDING=sliding, NSPLIT=int(parts.part.shape[0]),
            HAS_BIAS=parts.bias is not None, PDL=pdl, num_warps=1, **_pdl_kw(pdl),
        )
        return q
    _rope_kv_kernel[(bsz, hq + hkv)](
        qkv, cos, sin, pos, q, kc, vc, qkv, qkv, hq, hkv, s_cache, max(1, window), qkv.stride(0), D=d,
        SLIDING=sliding, NSPLIT=0, HAS_BIAS=False, PDL=pdl, num_warps=1, **_pdl_kw(pdl),
    )
    return q


@triton.jit
def _attend_cache(q, m_i, kc_ptr, vc_ptr, kv, end, scale, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr):
    """Online softmax of q [GP, D] against cache slots [0, end) of one (stream, kv head) (its offset `kv`), the running
    max starting at the sinks m_i (the sink's own weight is the initial 1): returns the attention output [GP, D]
    (float32). Shared by `_attn_decode_kernel` and `_rope_attn_decode_kernel`."""
    d = tl.arange(0, D)
    l_i = tl.full([GP], 1.0, dtype=tl.float32)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    for start in range(0, end, BS):
        s = start + tl.arange(0, BS)
        sm = s < end
        k = tl.load(kc_ptr + kv + s[:, None] * D + d[None, :], mask=sm[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k)) * scale
        qk = tl.where(sm[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(vc_ptr + kv + s[:, None] * D + d[None, :], mask=sm[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc / l_i[:, None]


@triton.jit
def _attn_decode_kernel(
    q_ptr, kc_ptr, vc_ptr, sinks_ptr, pos_ptr, out_ptr, scale, HKV, S_CACHE,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, PDL: tl.constexpr,
):
    b = tl.program_id(0)
    kh = tl.program_id(1)
    _gdc(PDL)
    pos = tl.load(pos_ptr)
    g = tl.arange(0, GP)
    gm = g < G
    d = tl.arange(0, D)
    hq = HKV * G
    qrow = (b * hq + kh * G + g) * D
    q = tl.load(q_ptr + qrow[:, None] + d[None, :], mask=gm[:, None], other=0.0)
    m_i = tl.load(sinks_ptr + kh * G + g, mask=gm, other=0.0).to(tl.float32)  # the sink starts the softmax
    # Slot s is valid iff s <= pos: on full layers slot = position; on sliding layers the ring of size
    # <= window holds exactly the last `window` positions once pos >= window - 1.
    end = tl.minimum(pos + 1, S_CACHE)
    out = _attend_cache(q, m_i, kc_ptr, vc_ptr, (b * HKV + kh) * S_CACHE * D, end, scale, GP, D, BS)
    tl.store(out_ptr + qrow[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty), mask=gm[:, None])


# decode attention's (cache block BS, num_warps, num_stages or None for Triton's default) by batch size:
# ((max streams, config), ...), first match wins, else ATTN_CONFIG. H200 (session 6, 24 layers' caches): no candidate
# beat (64, 4) by 3% at 8 / 32 / 256 streams. Session 10 (docs/PERF.md, `gpu_step_ablation.py --compare`, 2 rounds,
# against (64, 4), E32 / E16): BS 128 1x4 -0.5% / -0.4%, 1x2 -0.6% / -0.7%, 8x2 -0.7% / -0.5%, 8x4 -0.7% / -0.6%,
# 32x4 -0.7% / -0.5%; past 32 streams it is slower (E32 64x4 +0.3%, 128x4 +0.2%, 256x4 +0.8%), so (64, 4) stays
# there. BS 128 rounds the softmax another way; the teacher-forced check passes at batch 1 (bf16 27.90% vs HF bf16
# 26.80%; MXFP4, 32 sequences, 27.38% vs 26.99%), 8 (32 sequences in batches of 8: 26.19% vs 25.55%) and 32 (25.93%
# vs 25.16%).
ATTN_CONFIG: tuple[int, int, int | None] = (64, 4, None)
ATTN_CONFIG_BY_BATCH: tuple[tuple[int, tuple[int, int, int | None]], ...] = ((32, (128, 4, None)),)


def attn_config(bsz: int) -> tuple[int, int, int | None]:
    for most, cfg in ATTN_CONFIG_BY_BATCH:
        if bsz <= most:
            return cfg
    return ATTN_CONFIG


def attn_decode(
    q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, sinks: torch.Tensor, pos: torch.Tensor, scale: float,
    config: tuple[int, int, int | None] | None = None,
) -> torch.Tensor:
    """q (B, hq, D) against the cache (B, hkv, S, D) up to `pos`, with sinks -> (B, hq*D)."""
    bsz, hq, d = q.shape
    _, hkv, s_cache, _ = kc.shape
    g = hq // hkv
    out = torch.empty((bsz, hq * d), dtype=q.dtype, device=q.device)
    pdl = early_pdl(pdl_launch(bsz), bsz, "attn")  # o_proj (split-K) follows
    bs, warps, stages = config or attn_config(bsz)
    extra = {"num_stages": stages} if stages else {}
    _attn_decode_kernel[(bsz, hkv)](
        q, kc, vc, sinks, pos, out, scale, hkv, s_cache, G=g, GP=max(16, _p2(g)), D=d, BS=bs, PDL=pdl,
        num_warps=warps, **extra, **_pdl_kw(pdl),
    )
    return out


@triton.jit
def _rope_attn_decode_kernel(
    qkv_ptr, part_ptr, bias_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, sinks_ptr, out_ptr, scale, HKV, S_CACHE,
    WINDOW, N, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, SLIDING: tl.constexpr,
    NSPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr, ss_ptr=None, eps=0.0, HID=1,
    LAZY: tl.constexpr = False,
):
    """`_rope_kv_kernel` and `_attn_decode_kernel` in one launch, one program per (stream, kv head): the rope of the
    group's G query heads stays in registers (rounded to the activations' dtype, as rope_kv stores it), the roped k
    and v are written into the step's cache slot, and after a barrier the program attends over its cache as
    `_attn_decode_kernel` does, on the same values (the query's rotated halves joined back into one [GP, D] tile).
    qkv: the linear's output (rows of N elements) or, with NSPLIT > 0, its split-K partials (S, B, N) + bias (qkv_ptr
    then only carries the dtype); LAZY (one row, `splitk_norm_linear`): the summed partials times
    rsqrt(sum of the NSPLIT ss / HID + eps)."""
    b = tl.program_id(0)
    kh = tl.program_id(1)
    mp = tl.num_programs(0)
    g = tl.arange(0, GP)
    gm = g < G
    half = tl.arange(0, D // 2)
    hm = half < D // 2
    d = tl.arange(0, D)
    hq = HKV * G
    m_i = tl.load(sinks_ptr + kh * G + g, mask=gm, other=0.0).to(tl.float32)  # the sink starts the softmax
    kv = (b * HKV + kh) * S_CACHE * D
    _gdc(PDL)
    pos = tl.load(pos_ptr)
    c = tl.load(cos_ptr + pos * (D // 2) + half).to(tl.float32)
    s = tl.load(sin_ptr + pos * (D // 2) + half).to(tl.float32)
    rstd = 1.0
    if LAZY:
        tot = 0.0
        for j in tl.static_range(NSPLIT):
            tot += tl.load(ss_ptr + j)
        rstd = tl.rsqrt(tot / HID + eps)
    qh = (kh * G + g) * D
    qm = gm[:, None] & hm[None, :]
    x1 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, qh[:, None] + half[None, :], mp, N, qm, NSPLIT, HAS_BIAS, rstd,
                   LAZY)
    x2 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, qh[:, None] + D // 2 + half[None, :], mp, N, qm, NSPLIT, HAS_BIAS,
                   rstd, LAZY)
    q_lo = (x1 * c[None, :] - x2 * s[None, :]).to(out_ptr.dtype.element_ty)
    q_hi = (x2 * c[None, :] + x1 * s[None, :]).to(out_ptr.dtype.element_ty)
    q = tl.reshape(tl.permute(tl.join(q_lo, q_hi), (0, 2, 1)), (GP, D))  # [lo | hi] per row
    kb = (hq + kh) * D
    k1 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, kb + half, mp, N, hm, NSPLIT, HAS_BIAS, rstd, LAZY)
    k2 = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, kb + D // 2 + half, mp, N, hm, NSPLIT, HAS_BIAS, rstd, LAZY)
    v = _lin_load(qkv_ptr, part_ptr, bias_ptr, b, (hq + HKV + kh) * D + d, mp, N, d < D, NSPLIT, HAS_BIAS, rstd,
                  LAZY)
    if SLIDING:
        slot = pos % WINDOW
    else:
        slot = pos
    tl.store(kc_ptr + kv + slot * D + half, (k1 * c - k2 * s).to(kc_ptr.dtype.element_ty))
    tl.store(kc_ptr + kv + slot * D + D // 2 + half, (k2 * c + k1 * s).to(kc_ptr.dtype.element_ty))
    tl.store(vc_ptr + kv + slot * D + d, v.to(vc_ptr.dtype.element_ty))
    tl.debug_barrier()  # the slot just written is read back below by other threads of this program
    out = _attend_cache(q, m_i, kc_ptr, vc_ptr, kv, tl.minimum(pos + 1, S_CACHE), scale, GP, D, BS)
    tl.store(out_ptr + (b * hq + kh * G + g)[:, None] * D + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=gm[:, None])


# Decode attention with the rope and the cache write in the same launch (`rope_attn_decode`, session 8) for steps of
# at least FUSE_ROPE_ATTN_MIN_ROWS streams: one launch a layer fewer. H200 (docs/PERF.md, session 8,
# `gpu_step_ablation.py --compare`, fused against rope_kv + attn_decode, E32 / E16): batch 8 k4 -0.3% / -0.7%, batch
# 8 k2 -1.0% / -1.1%, batch 32 k4 -0.7% / -1.0%. At batch 1 it was 3.9% (k4) / 5.0% (k2) slower while the qkv GEMV
# before it triggered it early (PDL mode 2, "splitk_qkv" in PDL_EARLY_MORE), and 0.4% / 0.7% faster without that
# trigger (2.375 -> 2.367 ms, 1.819 -> 1.807 at E32), so the qkv GEMV stayed in mode 1 until session 13 (the lazy
# GEMV's trigger is faster now: PDL_EARLY_MORE). Same cache writes;
# the output is not bit-identical to the two kernels' (the softmax compiles differently), so the GPU accuracy check
# covers it (batch 1, 8, 32). False: rope_kv, then attn_decode (ablation).
FUSE_ROPE_ATTN = True
FUSE_ROPE_ATTN_MIN_ROWS = 1


def rope_attn_decode(
    qkv: torch.Tensor | Partials, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, kc: torch.Tensor,
    vc: torch.Tensor, sinks: torch.Tensor, scale: float, hq: int, sliding: bool, window: int,
    config: tuple[int, int, int | None] | None = None,
) -> torch.Tensor:
    """rope_kv + attn_decode in one launch: qkv (B, (hq+2hkv)*D) or the qkv linear's Partials -> (B, hq*D); writes
    the roped k and v at the step's cache slot."""
    bsz = qkv.shape[0]
    _, hkv, s_cache, d = kc.shape
    parts = qkv if isinstance(qkv, Partials) else None
    dtype = parts.dtype if parts is not None else qkv.dtype
    if parts is None and qkv.stride(1) != 1:
        raise ValueError("rope_attn_decode: qkv rows must be unit-stride")
    lazy = parts is not None and parts.ss is not None
    if lazy and bsz != 1:
        raise ValueError(f"rope_attn_decode: lazy-norm partials are one row, got {bsz}")
    out = torch.empty((bsz, hq * d), dtype=dtype, device=kc.device)
    g = hq // hkv
    pdl = early_pdl(pdl_launch(bsz), bsz, "attn")  # o_proj (split-K) follows
    bs, warps, stages = config or attn_config(bsz)
    extra = {"num_stages": stages} if stages else {}
    src = out if parts is not None else qkv  # with partials: only the dtype of the rounding
    _rope_attn_decode_kernel[(bsz, hkv)](
        src, parts.part if parts is not None else src, parts.bias if parts is not None and parts.bias is not None
        else src, cos, sin, pos, kc, vc, sinks, out, scale, hkv, s_cache, max(1, window),
        (hq + 2 * hkv) * d if parts is not None else qkv.stride(0), G=g, GP=max(16, _p2(g)), D=d, BS=bs,
        SLIDING=sliding, NSPLIT=int(parts.part.shape[0]) if parts is not None else 0,
        HAS_BIAS=parts is not None and parts.bias is not None, PDL=pdl, num_warps=warps, **extra, **_pdl_kw(pdl),
        **({"ss_ptr": parts.ss, "eps": parts.eps, "HID": parts.hidden, "LAZY": True} if lazy else {}),
    )
    return out


@triton.jit
def _topk_softmax_store(logits, e, em, topi_ptr, topw_ptr, t, K: tl.constexpr, KP: tl.constexpr, EP: tl.constexpr):
    """Top-k of one token's router logits (ties: the lower expert id, as torch.topk) and the softmax over the k
    kept logits; stores ids (int32) and weights (float32) at row t. Shared by both router paths."""
    logits = tl.where(em, logits, float("-inf"))
    kk = tl.arange(0, KP)
    vals = tl.full([KP], float("-inf"), dtype=tl.float32)
    idxs = tl.zeros([KP], dtype=tl.int32)
    for j in tl.static_range(K):
        mx = tl.max(logits, axis=0)
        idx = tl.min(tl.where(logits == mx, e, EP), axis=0)
        vals = tl.where(kk == j, mx, vals)
        idxs = tl.where(kk == j, idx, idxs)
        logits = tl.where(e == idx, float("-inf"), logits)
    km = kk < K
    p = tl.exp(vals - tl.max(vals, axis=0))
    p = tl.where(km, p, 0.0)
    p = p / tl.sum(p, axis=0)
    tl.store(topi_ptr + t * K + kk, idxs, mask=km)
    tl.store(topw_ptr + t * K + kk, p, mask=km)


@triton.jit
def _topk_rank_softmax_store(logits, e, em, topi_ptr, topw_ptr, t, K: tl.constexpr, KP: tl.constexpr,
                             EP: tl.constexpr):
    """`_topk_softmax_store` by rank: expert e's rank is the number of experts before it (a larger logit, or an equal
    one with a lower id: torch.topk's order, as the max-then-lowest-id loop), and slot j takes the expert of rank j.
    The k kept logits are gathered exactly (one nonzero term a sum), so the softmax sees the same values in the same
    slots: the same ids and weights, bit for bit."""
    logits = tl.where(em, logits, float("-inf"))
    before = (logits[None, :] > logits[:, None]) | ((logits[None, :] == logits[:, None]) & (e[None, :] < e[:, None]))
    rank = tl.sum(before.to(tl.int32), axis=1)
    kk = tl.arange(0, KP)
    km = kk < K
    sel = rank[None, :] == kk[:, None]
    vals = tl.sum(tl.where(sel, logits[None, :], 0.0), axis=1)
    idxs = tl.sum(tl.where(sel, e[None, :], 0), axis=1)
    vals = tl.where(km, vals, float("-inf"))
    p = tl.exp(vals - tl.max(vals, axis=0))
    p = tl.where(km, p, 0.0)
    p = p / tl.sum(p, axis=0)
    tl.store(topi_ptr + t * K + kk, idxs.to(tl.int32), mask=km)
    tl.store(topw_ptr + t * K + kk, p, mask=km)


@triton.jit
def _router_kernel(
    x_ptr, w_ptr, b_ptr, topi_ptr, topw_ptr, H, E, K: tl.constexpr, KP: tl.constexpr, EP: tl.constexpr,
    BH: tl.constexpr,
):
    t = tl.program_id(0)
    e = tl.arange(0, EP)
    em = e < E
    acc = tl.zeros([EP], dtype=tl.float32)
    for h0 in range(0, H, BH):
        hh = h0 + tl.arange(0, BH)
        hm = hh < H
        x = tl.load(x_ptr + t * H + hh, mask=hm, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + e[:, None] * H + hh[None, :], mask=em[:, None] & hm[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    logits = acc + tl.load(b_ptr + e, mask=em, other=0.0).to(tl.float32)
    logits = logits.to(x_ptr.dtype.element_ty).to(tl.float32)  # the router linear's output dtype, as in HF
    _topk_softmax_store(logits, e, em, topi_ptr, topw_ptr, t, K, KP, EP)


@triton.jit
def _router_partial_kernel(
    x_ptr, w_ptr, part_ptr, T, H, E, stride_x, TP: tl.constexpr, EP: tl.constexpr, BH: tl.constexpr,
    PDL: tl.constexpr, BT: tl.constexpr, TC: tl.constexpr,
):
    """Split-K router logits: program (s, j) computes x[token tile j, chunk s] @ w[:, chunk s]^T (BT tokens a tile;
    BT = TP: every token in one program)."""
    s = tl.program_id(0)
    hh = s * BH + tl.arange(0, BH)
    hm = hh < H
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    e = tl.arange(0, EP)
    w = tl.load(w_ptr + e[:, None] * H + hh[None, :], mask=(e < E)[:, None] & hm[None, :], other=0.0)
    _gdc(PDL)
    x = tl.load(x_ptr + t[:, None] * stride_x + hh[None, :], mask=(t < T)[:, None] & hm[None, :], other=0.0)
    if TC:  # bf16 tensor cores: the same exact products, summed in float32 in the MMA's order (ROUTER_TC_BY_TOKENS)
        acc = tl.dot(x, tl.trans(w), tl.zeros([BT, EP], dtype=tl.float32))
    else:
        # float32 products and sums (exact products of bf16 inputs, as `_router_kernel`); tiny, so no tensor cores
        acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
    tl.store(part_ptr + (s * TP + t[:, None]) * EP + e[None, :], acc)


@triton.jit
def _router_topk_kernel(
    part_ptr, x_ptr, b_ptr, topi_ptr, topw_ptr, S, E, TP: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    EP: tl.constexpr, SP: tl.constexpr, PDL: tl.constexpr,
):
    """Sums the split-K partials of one token in a fixed order, then bias, top-k and softmax as `_router_kernel`."""
    t = tl.program_id(0)
    _gdc(PDL)
    e = tl.arange(0, EP)
    em = e < E
    ss = tl.arange(0, SP)
    parts = tl.load(part_ptr + (ss[:, None] * TP + t) * EP + e[None, :], mask=(ss < S)[:, None], other=0.0)
    acc = tl.sum(parts, axis=0)
    logits = acc + tl.load(b_ptr + e, mask=em, other=0.0).to(tl.float32)
    logits = logits.to(x_ptr.dtype.element_ty).to(tl.float32)  # the router linear's output dtype (x's), as in HF
    _topk_softmax_store(logits, e, em, topi_ptr, topw_ptr, t, K, KP, EP)


# Decode steps (<= this many tokens) use the split-K router: (H / bh) programs each read one slice of the
# router weight for all tokens, then one small program per token sums the slices and picks the top-k. The
# one-program-per-token kernel read the whole weight in one CTA per token (0.75 ms per step at batch 1 on the
# H100). `router(split=False)` (GraphOptions.router_split) turns the split path off (ablation).
ROUTER_SPLIT_MAX_TOKENS = 256  # was 64; at batch 256 the split path measured 0.2% faster (noise level)
ROUTER_BH = 64
# the split router's slice width by step size: ((max tokens, BH), ...), first match wins, else ROUTER_BH (more,
# narrower slices for many tokens: each program's float32 products grow with the tokens)
# H200 (docs/PERF.md, session 6): BH 32 at 8 / 32 / 256 tokens 6.3 -> 5.4 / 6.6 -> 5.7 / 27.1 -> 10.9 us a layer
# (16 and 128 slower). Another slice width rounds the float32 logits differently (the teacher-forced accuracy check
# passed with BH 32 at 8, 32 and 64 tokens), so 2-7 tokens keep BH 64, bit for bit main's routing there.
ROUTER_BH_BY_TOKENS: tuple[tuple[int, int], ...] = ((7, 64), (256, 32))


# The split router with a token-tile grid axis, on tensor cores for bf16 / fp16 inputs (session 11), by step size:
# ((max tokens, BH, BT), ...), first match wins; BT tokens a program, BH the slice width; empty: every token in one
# program, float32 (ieee) products. The products are exact either way (bf16 x bf16 in float32); the float32 sums run
# in the MMA's order, so a near-tie's routing may differ from the ieee path's. H200 (docs/PERF.md session 11,
# same-card --compare against the ieee path): E32 8x4 / 8x2 / 32x4 / 256x4 -0.4 / -0.7 / -0.3 / -1.0%, E16 -0.4 /
# -0.3 / -0.6 / -0.7% (the other tiles tried, BH 32 / 128 at 8-32 tokens and BH 64 with BT 64 / 32 at 256, within
# 0.4% of these); the teacher-forced check passes at batch 8, 32 and 256 (256 sequences: 27.03% vs HF bf16 26.23%).
ROUTER_TC_BY_TOKENS: tuple[tuple[int, int, int], ...] = ((32, 64, 32), (256, 128, 64))


def router_tc(tokens: int) -> tuple[int, int] | None:
    """(BH, BT) of the token-tiled split router at this step size, or None (every token in one program)."""
    for most, bh, bt in ROUTER_TC_BY_TOKENS:
        if tokens <= most:
            return int(bh), int(bt)
    return None


def router_bh(tokens: int) -> int:
    for most, bh in ROUTER_BH_BY_TOKENS:
        if tokens <= most:
            return int(bh)
    return ROUTER_BH


def router(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, split: bool = True, bh: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, H) -> top-k expert ids (T, k) int32 and their softmax weights (T, k) float32."""
    tokens, hidden = x.shape
    experts = weight.shape[0]
    topi = torch.empty((tokens, k), dtype=torch.int32, device=x.device)
    topw = torch.empty((tokens, k), dtype=torch.float32, device=x.device)
    ep = _p2(experts)
    tiles = router_tc(tokens)
    bh = bh or (tiles[0] if tiles else router_bh(tokens))
    if split and tokens <= ROUTER_SPLIT_MAX_TOKENS and x.stride(1) == 1 and weight.is_contiguous():
        tp, epd = max(16, _p2(tokens)), max(16, ep)
        bt = min(_p2(max(16, tiles[1])), tp) if tiles else tp
        # tensor cores for 16-bit inputs (not under the interpreter: its bf16 tl.dot returns garbage, triton 3.9)
        tc = (tiles is not None and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
              and not _interpreting())
        splits = triton.cdiv(hidden, bh)
        part = torch.empty((splits, tp, epd), dtype=torch.float32, device=x.device)
        pdl = pdl_launch(tokens)
        _router_partial_kernel[(splits, tp // bt)](
            x, weight, part, tokens, hidden, experts, x.stride(0), TP=tp, EP=epd, BH=bh, PDL=pdl, BT=bt,
            TC=tc, num_warps=4, **_pdl_kw(pdl),
        )
        _router_topk_kernel[(tokens,)](
            part, x, bias, topi, topw, splits, experts, TP=tp, K=k, KP=_p2(k), EP=epd, SP=_p2(splits), PDL=pdl,
            num_warps=4, **_pdl_kw(pdl),
        )
        return topi, topw
    _router_kernel[(tokens,)](
        x, weight, bias, topi, topw, hidden, experts, K=k, KP=_p2(k), EP=ep, BH=max(32, 4096 // ep), num_warps=4
    )
    return topi, topw


@triton.jit
def _residual(h_ptr, d_ptr, part_ptr, bias_ptr, row, idx, T, H, mask, NSPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """h[row, idx] + delta[row, idx] rounded to h's dtype, as float32 (what `_add_rmsnorm_kernel` stores with
    KS = 1); delta from d_ptr, or a linear's split-K partials (NSPLIT > 0)."""
    x = tl.load(h_ptr + row * H + idx, mask=mask, other=0.0).to(tl.float32)
    if NSPLIT > 0:
        d = _lin_load(h_ptr, part_ptr, bias_ptr, row, idx, T, H, mask, NSPLIT, HAS_BIAS)
    else:
        d = tl.load(d_ptr + row * H + idx, mask=mask, other=0.0).to(tl.float32)
    return (x + d).to(h_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _norm_router_kernel(
    h_ptr, d_ptr, part_ptr, bias_ptr, nw_ptr, out_ptr, rw_ptr, rb_ptr, rpart_ptr, cnt_ptr, topi_ptr, topw_ptr,
    T, H, E, S, eps, TP: tl.constexpr, EP: tl.constexpr, BH: tl.constexpr, BLOCK: tl.constexpr, K: tl.constexpr,
    KP: tl.constexpr, SP: tl.constexpr, NSPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
    ONE: tl.constexpr = False,
):
    """`add_rmsnorm` (KS = 1) + the split-K router in one launch. Program s: every row's RMS (the whole row), its
    slice of the normed rows (stored) and of the router logits (partials, as `_router_partial_kernel`); the last
    program to finish (an atomic count) sums the partials, picks the top-k (`_router_topk_kernel`) and writes the
    updated residual rows h (no program reads h after that), then resets the count for the next launch. ONE (one
    row, NORM_ROUTER_ONE_ROW): the last program stores the residual row kept from the RMS pass and picks the top-k
    by rank (`_topk_rank_softmax_store`)."""
    s = tl.program_id(0)
    hh = s * BH + tl.arange(0, BH)
    hm = hh < H
    e = tl.arange(0, EP)
    em = e < E
    rw = tl.load(rw_ptr + e[:, None] * H + hh[None, :], mask=em[:, None] & hm[None, :], other=0.0)
    nw = tl.load(nw_ptr + hh, mask=hm, other=0.0).to(tl.float32)
    _gdc(PDL)
    offs = tl.arange(0, BLOCK)
    m = offs < H
    tt = tl.arange(0, TP)
    tm = tt < T
    rinv = tl.zeros([TP], dtype=tl.float32)
    if ONE:  # one row: its residual stays in registers for the last program's store
        x1 = _residual(h_ptr, d_ptr, part_ptr, bias_ptr, 0, offs, T, H, m, NSPLIT, HAS_BIAS)
        rinv = tl.where(tt == 0, tl.rsqrt(tl.sum(x1 * x1, axis=0) / H + eps), rinv)
    else:
        for t in range(T):
            x = _residual(h_ptr, d_ptr, part_ptr, bias_ptr, t, offs, T, H, m, NSPLIT, HAS_BIAS)
            var = tl.sum(x * x, axis=0) / H
            rinv = tl.where(tt == t, tl.rsqrt(var + eps), rinv)
    m2 = tm[:, None] & hm[None, :]
    xs = _residual(h_ptr, d_ptr, part_ptr, bias_ptr, tt[:, None], hh[None, :], T, H, m2, NSPLIT, HAS_BIAS)
    normed = (nw[None, :] * (xs * rinv[:, None])).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + tt[:, None] * H + hh[None, :], normed, mask=m2)
    normed = tl.where(m2, normed, 0.0)
    acc = tl.dot(normed.to(tl.float32), tl.trans(rw.to(tl.float32)), input_precision="ieee")
    tl.store(rpart_ptr + (s * TP + tt[:, None]) * EP + e[None, :], acc)
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    if done == S - 1:
        ss = tl.arange(0, SP)
        if ONE:  # the top-k by rank (fewer reductions, the same ids and weights) and the kept residual row
            parts = tl.load(rpart_ptr + ss[:, None] * TP * EP + e[None, :], mask=(ss < S)[:, None], other=0.0,
                            cache_modifier=".cg")
            logits = tl.sum(parts, axis=0) + tl.load(rb_ptr + e, mask=em, other=0.0).to(tl.float32)
            logits = logits.to(out_ptr.dtype.element_ty).to(tl.float32)
            tl.store(h_ptr + offs, x1.to(h_ptr.dtype.element_ty), mask=m)
            _topk_rank_softmax_store(logits, e, em, topi_ptr, topw_ptr, 0, K, KP, EP)
        for t in range(T if not ONE else 0):
            parts = tl.load(rpart_ptr + (ss[:, None] * TP + t) * EP + e[None, :], mask=(ss < S)[:, None], other=0.0,
                            cache_modifier=".cg")
            logits = tl.sum(parts, axis=0) + tl.load(rb_ptr + e, mask=em, other=0.0).to(tl.float32)
            logits = logits.to(out_ptr.dtype.element_ty).to(tl.float32)  # the router linear's output dtype
            _topk_softmax_store(logits, e, em, topi_ptr, topw_ptr, t, K, KP, EP)
            x = _residual(h_ptr, d_ptr, part_ptr, bias_ptr, t, offs, T, H, m, NSPLIT, HAS_BIAS)
            tl.store(h_ptr + t * H + offs, x.to(h_ptr.dtype.element_ty), mask=m)
        tl.store(cnt_ptr, 0)


# The post-attention add_rmsnorm and the decode router as one launch (`add_rmsnorm_route`) for steps of up to
# NORM_ROUTER_MAX_TOKENS tokens (each program reads every row for its RMS: at 8 tokens the step was 4% slower on
# the H200, docs/PERF.md); False: add_rmsnorm, then router (two launches; ablation).
FUSE_NORM_ROUTER = True
NORM_ROUTER_MAX_TOKENS = 1
# One row (session 7): the last program stores the residual row its RMS pass kept in registers (no second read of h
# and the partials) and picks the top-k by rank (`_topk_rank_softmax_store`: 5 reductions instead of 2 k + 2). The
# same bits; False: the loop over rows (ablation). H200 (docs/PERF.md, session 7): the kernel 7.7 -> 7.0 us a layer,
# batch 1 k4 2.453 -> 2.434 ms, k2 1.892 -> 1.882 (E32); on E16 alike (session 8, see SPLITK_EARLY).
NORM_ROUTER_ONE_ROW = True
_COUNTERS: dict[torch.device, torch.Tensor] = {}


def add_rmsnorm_route(
    h: torch.Tensor, delta: torch.Tensor | Partials, weight: torch.Tensor, eps: float, rweight: torch.Tensor,
    rbias: torch.Tensor, k: int, bh: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """add_rmsnorm(h, delta, 1, weight, eps) and router(normed, rweight, rbias, k) in one launch, for few rows:
    h (T, H) += delta (in place), returns (normed, topi (T, k) int32, topw (T, k) float32). delta: (T, H) or a
    linear's Partials."""
    rows, hidden = h.shape
    experts = rweight.shape[0]
    parts = delta if isinstance(delta, Partials) else None
    _plain_partials(parts, "add_rmsnorm_route")
    if parts is not None and parts.shape != (rows, hidden):
        raise ValueError(f"add_rmsnorm_route: partials of shape {parts.shape} for h {tuple(h.shape)}")
    bh = bh or ROUTER_BH
    tp, ep = max(16, _p2(rows)), max(16, _p2(experts))
    splits = triton.cdiv(hidden, bh)
    cnt = _zeros_once(_COUNTERS, h.device, (1,), torch.int32, h.device)
    out = torch.empty_like(h)
    topi = torch.empty((rows, k), dtype=torch.int32, device=h.device)
    topw = torch.empty((rows, k), dtype=torch.float32, device=h.device)
    rpart = torch.empty((splits, tp, ep), dtype=torch.float32, device=h.device)
    pdl = early_pdl(pdl_launch(rows), rows, "norm_router")
    _norm_router_kernel[(splits,)](
        h, delta if parts is None else h, parts.part if parts is not None else h,
        parts.bias if parts is not None and parts.bias is not None else h, weight, out, rweight, rbias, rpart, cnt,
        topi, topw, rows, hidden, experts, splits, eps, TP=tp, EP=ep, BH=bh, BLOCK=_p2(hidden), K=k, KP=_p2(k),
        SP=_p2(splits), NSPLIT=int(parts.part.shape[0]) if parts is not None else 0,
        HAS_BIAS=parts is not None and parts.bias is not None, PDL=pdl, ONE=rows == 1 and NORM_ROUTER_ONE_ROW,
        num_warps=8, **_pdl_kw(pdl),
    )
    return out, topi, topw


# o_proj + residual + RMSNorm + router in one launch at one row (FOLD_NORM_ROUTER, session 9; TritonOps.
# linear_norm_route): the split-K GEMV's programs reduce their own output ("last arriver" counts, as
# `_norm_router_kernel`), so no norm + router kernel runs between o_proj and the gate_up expert GEMM. Not bit-equal to
# the two kernels: the RMS is summed per N tile and the router sees w * h * rstd unrounded (the teacher-forced check
# passes). H200 (docs/PERF.md, session 9, `gpu_step_ablation.py --compare`, 3 interleaved rounds): batch 1 E32 k4
# 2.371 -> 2.293 ms (-3.3%), k2 1.814 -> 1.737 (-4.2%); E16 k4 2.390 -> 2.297 (-3.9%), k2 1.833 -> 1.741 (-5.1%);
# in the graph replay o_proj + norm + router 386 - 218 + 167 = 335 -> 266 us exposed a step (E32 k4). False: o_proj's
# split-K GEMV, then `add_rmsnorm_route` (ablation).
# Session 9 turned it off: on the model pruned to 16 experts the engine gave different tokens from one generation to
# the next with it on. Session 10 found the race (docs/PERF.md; scripts/gpu_fold_trace.py checks every launch of a
# decode): the tile's last program needs the old residual tile in three layouts and Triton loads it once per layout,
# so without a barrier one warp could store the new tile before another warp had read the old one; the router's
# partial logits of experts 4-15 were then wrong on ~4% of the tiles. The barrier before the store fixed it: every
# launch's partials within 2e-7 of float64, the same tokens in every repeat. On against off after the fix (same card,
# 3 rounds): E32 k4 2.380 -> 2.302 ms (-3.3%), k2 1.806 -> 1.728 (-4.3%); E16 k4 -4.0%, k2 -5.1%; the teacher-forced
# check passes (batch 1: bf16 25.64% vs HF bf16 25.13%, MXFP4 25.20% vs 24.54%).
FOLD_NORM_ROUTER = True
# The last program's chunks: FOLD_TILES tiles of router partial logits and FOLD_BLOCK elements of the normed row per
# load round (fewer rounds: fewer dependent L2 round trips; wider: more registers for the whole GEMV kernel).
FOLD_TILES = 256
FOLD_BLOCK = 4096
# The folded launch's (BN, BK, S, num_warps); None: o_proj's split-K tile (SPLITK_CONFIG["small"]). (Session 16
# measured S = 1 with the partials and the tile count skipped, `4241f09`: every one-slice tile slower on the H200, the
# best (8, 512, 1, 4) +0.9 / +0.5% at batch 1 k4, +1.0 / +0.7% at k2, E32 / E16; docs/PERF.md. Removed.)
FOLD_CONFIG: tuple[int, int, int, int] | None = None
# (Session 12 measured the fold loading its first 1 / 2 / 4 weight tiles of each K slice before its PDL wait, so that
# o_proj's weight streams while decode attention runs: the fold's own time fell by 1.2 / 2.2 / 2.4 us a layer, but
# attention's rose by 1.3 / 2.5 / 4.7 us (its latency-bound loads queue behind the weight stream), the step +0.1 /
# +0.4 / +2.6% at E32 k4; docs/PERF.md. Removed.)
# (Session 12 measured the fold loading its tail's inputs (o_proj bias, residual, norm and router weights, router
# bias) before its PDL wait, the router weights in registers or into L2: +1.4 to +2.8% at batch 1, the fold 1.5 us a
# layer slower (80 -> 96 registers a thread, fewer programs resident). Removed; docs/PERF.md.)
# Every fold program issues the tile-last path's loads (router and norm weights, router and o_proj biases, the
# residual before) right after its K loop, before it stores its partial and counts itself in, so that the tile's last
# program does not wait a memory round trip for them after the count. Unlike loading them before the PDL wait (above),
# no register is held across the K loop. The same bits either way. H200 (docs/PERF.md, session 13, same card,
# `gpu_step_ablation.py --compare '{"main": {}, "tail": {"FOLD_TAIL_LOADS": true}}' --cases 1x4,1x2 --rounds 3`):
# E32 / E16 k4 -0.4 / -0.4%, k2 -0.7 / -0.7%. False: the tail's loads after the count (ablation).
FOLD_TAIL_LOADS = True
_FOLD_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


@triton.jit
def _fold_tail_inputs(rw_ptr, nw_ptr, rb_ptr, b_ptr, hin_ptr, offs_n, nmask, e, em, N, HAS_BIAS: tl.constexpr):
    """What a fold tile's last program reads besides the split-K partials: the router weight tile [EP, BN], the norm
    weight, the router bias (for the last tile), the o_proj bias (0 without one) and the residual before (h, or
    lazy RMSNorm's scratch row hm: written two or more kernels back, and by this launch only in the tile's last
    program, after every program of the tile has counted itself in)."""
    rw = tl.load(rw_ptr + e[:, None] * N + offs_n[None, :], mask=em[:, None] & nmask[None, :], other=0.0)
    nw = tl.load(nw_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    rb = tl.load(rb_ptr + e, mask=em, other=0.0).to(tl.float32)
    bv = tl.zeros(offs_n.shape, dtype=tl.float32)
    if HAS_BIAS:
        bv = tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    xh0 = tl.load(hin_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    return rw, nw, rb, bv, xh0


@triton.jit
def _splitk_norm_router_kernel(
    x_ptr, w_ptr, b_ptr, part_ptr, h_ptr, hin_ptr, nw_ptr, out_ptr, rw_ptr, rb_ptr, ss_ptr, rl_ptr, cnt_ptr, topi_ptr,
    topw_ptr, N, K, KSPLIT, E, eps, S: tl.constexpr, NT: tl.constexpr, NTP: tl.constexpr, FT: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr,
    BLOCK: tl.constexpr, FB: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr, TAIL: tl.constexpr = False,
):
    """One row: y = x W^T + b (split-K, as `_splitk_gemv_kernel`), h += y, normed = RMSNorm(h) * nw and the router's
    top-k over normed, in one launch. Grid (NT N tiles, S K slices). Each program stores its tile's partial; the last
    of a tile's S programs (count cnt[tile]) sums the S partials in slice order + bias, rounds to h's dtype (F.linear's
    output), adds it to h (rounded: `_residual`), stores h's tile, the tile's sum of squares and its router partial
    logits sum_n rw[e, n] nw[n] h[n] (the RMS factor comes out of the router's linear); the last tile (count cnt[NT])
    takes rstd from the NT sums, logits = rstd * (sum of the NT partials) + bias rounded to h's dtype (the router
    linear's output), the top-k by rank and its softmax, and writes normed; each last arriver resets its count, so
    the next launch (and a CUDA-graph replay) starts from zero."""
    pid_n = tl.program_id(0)
    s = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    k_lo = s * KSPLIT
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    _gdc(PDL)
    for k0 in range(k_lo, k_lo + KSPLIT, BK):
        w, offs_k, kmask = _splitk_w_tile(w_ptr, offs_n, nmask, k0, k_lo, K, KSPLIT, BK)
        acc = _splitk_acc(acc, w, x_ptr, offs_k, kmask, offs_k, 1, 0, 1)
    if TAIL:  # FOLD_TAIL_LOADS: the tile-last path's inputs, issued now (after the weight stream, before the count)
        e = tl.arange(0, EP)
        em = e < E
        rw, nw, rb, bv, xh0 = _fold_tail_inputs(rw_ptr, nw_ptr, rb_ptr, b_ptr, hin_ptr, offs_n, nmask, e, em, N,
                                                HAS_BIAS)
    tl.store(part_ptr + s * N + offs_n, tl.sum(acc, axis=1), mask=nmask)
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
    if done == S - 1:  # the tile's last program: its output, residual, sum of squares and router partials
        v = tl.zeros([BN], dtype=tl.float32)
        for j in tl.static_range(S):
            v += tl.load(part_ptr + j * N + offs_n, mask=nmask, other=0.0, cache_modifier=".cg")
        if TAIL:
            if HAS_BIAS:
                v += bv
            v = v.to(h_ptr.dtype.element_ty).to(tl.float32)
            xh = (xh0 + v).to(h_ptr.dtype.element_ty)
        else:  # FOLD_TAIL_LOADS off (ablation): the loads after the count, inline as before session 13
            if HAS_BIAS:
                v += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
            v = v.to(h_ptr.dtype.element_ty).to(tl.float32)
            xh = tl.load(hin_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)  # the residual before (h, or hm)
            xh = (xh + v).to(h_ptr.dtype.element_ty)
        # Triton loads the old residual tile once per layout it needs (here: the store's, the sum of squares' and
        # the router product's); without this barrier a warp could store the new tile before another warp's load
        # of the old one, which then adds the update twice (session 10: router partials of experts 4-15 wrong on
        # ~4% of tiles at 16 experts, docs/PERF.md)
        tl.debug_barrier()
        tl.store(h_ptr + offs_n, xh, mask=nmask)
        xh = xh.to(tl.float32)
        if not TAIL:
            e = tl.arange(0, EP)
            em = e < E
            rw = tl.load(rw_ptr + e[:, None] * N + offs_n[None, :], mask=em[:, None] & nmask[None, :], other=0.0)
            nw = tl.load(nw_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
            rb = tl.load(rb_ptr + e, mask=em, other=0.0).to(tl.float32)  # for the last tile, loaded with this round
        tl.store(ss_ptr + pid_n, tl.sum(xh * xh, axis=0))
        tl.store(rl_ptr + pid_n * EP + e, tl.sum(rw.to(tl.float32) * (nw * xh)[None, :], axis=1))
        tl.store(cnt_ptr + pid_n, 0)
        tl.debug_barrier()
        fin = tl.atomic_add(cnt_ptr + NT, 1, sem="acq_rel", scope="gpu")
        if fin == NT - 1:  # the last tile: rstd, the router's logits and top-k, the normed row
            offs = tl.arange(0, FB)  # FB = BLOCK by default: the row's loads issued with the partials' (one round)
            hv = tl.load(h_ptr + offs, mask=offs < N, other=0.0, cache_modifier=".cg")
            wv = tl.load(nw_ptr + offs, mask=offs < N, other=0.0)
            tt = tl.arange(0, NTP)
            ssv = tl.load(ss_ptr + tt, mask=tt < NT, other=0.0, cache_modifier=".cg")
            lg = tl.zeros([EP], dtype=tl.float32)
            for t0 in tl.static_range(0, NT, FT):
                ft = t0 + tl.arange(0, FT)
                lg += tl.sum(tl.load(rl_ptr + ft[:, None] * EP + e[None, :], mask=(ft < NT)[:, None], other=0.0,
                                     cache_modifier=".cg"), axis=0)
            rstd = tl.rsqrt(tl.sum(ssv, axis=0) / N + eps)
            logits = rstd * lg + rb
            logits = logits.to(h_ptr.dtype.element_ty).to(tl.float32)  # the router linear's output dtype
            _topk_rank_softmax_store(logits, e, em, topi_ptr, topw_ptr, 0, TOPK, KP, EP)
            tl.store(out_ptr + offs, (wv.to(tl.float32) * (hv.to(tl.float32) * rstd)).to(out_ptr.dtype.element_ty),
                     mask=offs < N)
            for b0 in tl.static_range(FB, BLOCK, FB):  # the rest of the row, when FB < BLOCK
                offs = b0 + tl.arange(0, FB)
                m = offs < N
                hv = tl.load(h_ptr + offs, mask=m, other=0.0, cache_modifier=".cg").to(tl.float32)
                wv = tl.load(nw_ptr + offs, mask=m, other=0.0).to(tl.float32)
                tl.store(out_ptr + offs, (wv * (hv * rstd)).to(out_ptr.dtype.element_ty), mask=m)
            tl.store(cnt_ptr + NT, 0)


def splitk_norm_route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                      nweight: torch.Tensor, eps: float, rweight: torch.Tensor, rbias: torch.Tensor, k: int,
                      config: tuple[int, int, int, int] | None = None, h_in: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row: h (1, N) += x (1, K) @ weight (N, K)^T + bias (in place), returns (RMSNorm(h) * nweight, the router's
    top-k ids (1, k) int32 and softmax weights (1, k) float32) from one launch (`_splitk_norm_router_kernel`): what
    add_rmsnorm_route(h, splitk_linear(x, weight, bias), ...) gives, up to the summation order of the RMS and of the
    router's logits (the router sees w * h * rstd unrounded, not the bf16 normed row). h_in: the residual before,
    when it is not h (lazy RMSNorm's scratch row): h = h_in + the linear."""
    return fold_launch(x, weight, bias, h, nweight, eps, rweight, rbias, k, config, h_in)[:3]


def fold_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                nweight: torch.Tensor, eps: float, rweight: torch.Tensor, rbias: torch.Tensor, k: int,
                config: tuple[int, int, int, int] | None = None,
                h_in: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """`splitk_norm_route`'s launch; returns (normed, topi, topw) and its scratch: the split-K partials (S, 1, N), each
    N tile's sum of squares (NT,) and router partial logits (NT, EP) (scripts/gpu_fold_trace.py checks them)."""
    h_in = h if h_in is None else h_in
    if (x.shape[0] != 1 or h.shape != (1, weight.shape[0]) or not h.is_contiguous() or h_in.shape != h.shape
            or not h_in.is_contiguous()):
        raise ValueError(f"splitk_norm_route: one contiguous row, got x {tuple(x.shape)}, h {tuple(h.shape)}, "
                         f"h_in {tuple(h_in.shape)}, weight {tuple(weight.shape)}")
    n, kdim = weight.shape
    experts = rweight.shape[0]
    bn, bk, splits, warps = config or SPLITK_CONFIG["small"]
    ksplit, splits = _k_slices(kdim, splits, bk)
    nt = triton.cdiv(n, bn)
    ep = max(16, _p2(experts))
    cnt = _zeros_once(_FOLD_COUNTERS, (h.device, nt), (nt + 1,), torch.int32, h.device)
    part = torch.empty((splits, 1, n), dtype=torch.float32, device=x.device)
    ss = torch.empty((nt,), dtype=torch.float32, device=x.device)
    rl = torch.empty((nt, ep), dtype=torch.float32, device=x.device)
    out = torch.empty_like(h)
    topi = torch.empty((1, k), dtype=torch.int32, device=h.device)
    topw = torch.empty((1, k), dtype=torch.float32, device=h.device)
    ntp = _p2(nt)
    block = _p2(n)
    pdl = early_pdl(pdl_launch(1), 1, "splitk_o_proj")
    _splitk_norm_router_kernel[(nt, splits)](
        x, weight, bias if bias is not None else h, part, h, h_in, nweight, out, rweight, rbias, ss, rl, cnt, topi,
        topw,
        n, kdim, ksplit, experts, eps, S=splits, NT=nt, NTP=ntp, FT=min(ntp, _p2(FOLD_TILES)), BN=bn, BK=bk,
        EP=ep, TOPK=k, KP=_p2(k), BLOCK=block, FB=min(block, _p2(FOLD_BLOCK)), HAS_BIAS=bias is not None, PDL=pdl,
        TAIL=bool(FOLD_TAIL_LOADS), num_warps=warps, **_pdl_kw(pdl),
    )
    return out, topi, topw, part, ss, rl


@triton.jit
def routed_rows(topi_ptr, offs_ptr, P, SCAN: tl.constexpr, PB: tl.constexpr, COMPACT: tl.constexpr,
                EPAD: tl.constexpr, BM: tl.constexpr):
    """`routed_rows_at` for program row tl.program_id(0) (the expert / compact slot axis of the grid)."""
    return routed_rows_at(tl.program_id(0), topi_ptr, offs_ptr, P, SCAN, PB, COMPACT, EPAD, BM)


@triton.jit
def routed_rows_at(pid, topi_ptr, offs_ptr, P, SCAN: tl.constexpr, PB: tl.constexpr, COMPACT: tl.constexpr,
                   EPAD: tl.constexpr, BM: tl.constexpr):
    """Which expert program row `pid` serves and its (token, slot) rows: (e, start, end, scan_rows).

    Scan mode (decode): the rows are found in the flat (T*k) routing table itself; scan_rows[i] is the i-th pair
    routed to e (valid for i < end), start = 0. Compact: program row i takes the i-th distinct routed expert
    (ascending id); rows past the count get end = 0. Sorted mode (prefill): rows offs[e]..offs[e+1] of an
    expert-sorted pair list. Shared by every expert kernel (any weight format) so that they route identically."""
    mm = tl.arange(0, BM)
    if SCAN:
        p = tl.arange(0, PB)
        pe = tl.load(topi_ptr + p, mask=p < P, other=-1)
        if COMPACT:
            slot = pid
            ee = tl.arange(0, EPAD)
            present = tl.max((pe[None, :] == ee[:, None]).to(tl.int32), axis=1)
            prank = tl.cumsum(present, axis=0) - 1
            e = tl.sum(tl.where((present > 0) & (prank == slot), ee, 0), axis=0)
            live = (slot < tl.sum(present, axis=0)).to(tl.int32)
            hit = (pe == e).to(tl.int32) * live
        else:
            e = pid
            hit = (pe == e).to(tl.int32)
        rank = tl.cumsum(hit, axis=0) - 1
        sel = (rank[None, :] == mm[:, None]) & (hit[None, :] > 0)
        scan_rows = tl.sum(tl.where(sel, p[None, :], 0), axis=1)
        start = 0
        end = tl.sum(hit, axis=0)
    else:
        e = pid
        start = tl.load(offs_ptr + e)
        end = tl.load(offs_ptr + e + 1)
        scan_rows = mm
    return e, start, end, scan_rows


@triton.jit
def tile_pairs(rows_ptr, m0, end, scan_rows, SCAN: tl.constexpr, BM: tl.constexpr):
    """The (token, slot) pairs of the M tile at row m0 of an expert's rows, and which of them are real (< end).
    Scan mode: every row of the expert fits one M tile (scan_rows); else the rows come from the sorted list."""
    rm = m0 + tl.arange(0, BM)
    rmask = rm < end
    if SCAN:
        pair = scan_rows
    else:
        pair = tl.load(rows_ptr + rm, mask=rmask, other=0)
    return pair, rmask


@triton.jit
def activation_rows(pair, TOPK: tl.constexpr, GATE_UP: tl.constexpr):
    """The input row each routed (token, slot) pair reads: gate_up its token's hidden state (pair // TOPK), down the
    pair's own gate_up output row."""
    rows = pair
    if GATE_UP:
        rows = pair // TOPK
    return rows


@triton.jit
def moe_early_bias(EB: tl.constexpr, bias_ptr, e, stride_be, offs_n, nmask, start, end):
    """MOE_EARLY_BIAS: the epilogue's bias tile, loaded where this is called (before the K loop) for an expert that has
    rows; 0.0 (unused) without EB."""
    bv = 0.0
    if EB:
        bv = tl.load(bias_ptr + e * stride_be + offs_n, mask=nmask & ((offs_n * 0 + end) > start), other=0.0)
    return bv


@triton.jit
def moe_early_rw(EB: tl.constexpr, GATE_UP: tl.constexpr, rw_ptr, pair, rmask):
    """MOE_EARLY_BIAS: the down GEMM's routing weights of rows `pair`, loaded where this is called (before the K
    loop); 0.0 (unused) for gate_up or without EB."""
    rwv = 0.0
    if EB:
        if not GATE_UP:
            rwv = tl.load(rw_ptr + pair, mask=rmask, other=0.0)
    return rwv


@triton.jit
def moe_epilogue(acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit, offs_n, nmask,
                  N, GATE_UP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, bv=0.0, rwv=0.0,
                  EB: tl.constexpr = False, PERM: tl.constexpr = False):
    """`moe_epilogue_at` for N tile tl.program_id(1)."""
    moe_epilogue_at(tl.program_id(1), acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha,
                    limit, offs_n, nmask, N, GATE_UP, BM, BN, bv, rwv, EB, PERM)


@triton.jit
def moe_epilogue_at(nb, acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit, offs_n,
                    nmask, N, GATE_UP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, bv=0.0, rwv=0.0,
                    EB: tl.constexpr = False, PERM: tl.constexpr = False):
    """Bias; gate_up: clamped SwiGLU over interleaved (gate, up) columns; down: routing weight. Store the rows of
    N tile `nb`. EB: the bias tile `bv` and the rows' routing weights `rwv` were loaded before the K loop
    (`_moe_kernel` with MOE_EARLY_BIAS), not here after it. PERM (gate_up; BN a multiple of 64, N / 2 of 32): output
    column c is stored at position mxfp4 dq's MMA K order within its block of 32 (c = 32g + 8c' + 4b0 + b3 + 2b4 ->
    32g + 16b4 + 8b3 + 2c' + b0; the tile permuted in registers, then stored as usual), so that the MXFP4 down
    GEMM's dq loop reads its activations contiguously (its DQV bit 3)."""
    if EB:
        acc += bv.to(tl.float32)[None, :]
    else:
        acc += tl.load(bias_ptr + e * stride_be + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if GATE_UP:
        gate, up = tl.split(tl.reshape(acc, (BM, BN // 2, 2)))
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        glu = gate * tl.sigmoid(gate * alpha)
        y = (up + 1.0) * glu
        offs_o = nb * (BN // 2) + tl.arange(0, BN // 2)
        omask = rmask[:, None] & (offs_o < N // 2)[None, :]
        if PERM:  # (m, g, c', b0, b4, b3) -> (m, g, b4, b3, c', b0): the tile in destination order, stored contiguously
            y = tl.reshape(tl.permute(tl.reshape(y, (BM, BN // 64, 4, 2, 2, 2)), (0, 1, 4, 5, 2, 3)), (BM, BN // 2))
        tl.store(out_ptr + pair[:, None] * stride_o + offs_o[None, :], y.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        if EB:
            rw = rwv.to(tl.float32)
        else:
            rw = tl.load(rw_ptr + pair, mask=rmask, other=0.0).to(tl.float32)
        y = acc.to(out_ptr.dtype.element_ty).to(tl.float32) * rw[:, None]
        omask = rmask[:, None] & nmask[None, :]
        tl.store(out_ptr + pair[:, None] * stride_o + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def moe_pre_load(w_base, stride_wk, offs_n, nmask, K, rows, BK: tl.constexpr, PRE: tl.constexpr):
    """The first PRE (0..4) [BK, BN] weight tiles of an expert's N tile (masked off where the program serves no
    expert: `rows` 0), for the down GEMM to load before its PDL wait (`MOE_DOWN_PRE`); unused tiles are zeros."""
    k_end = tl.where(rows > 0, K, 0)
    w0 = tl.zeros([1], dtype=tl.float32)
    w1 = w0
    w2 = w0
    w3 = w0
    if PRE >= 1:
        w0 = _moe_w_tile(w_base, stride_wk, offs_n, nmask, 0, k_end, BK)
    if PRE >= 2:
        w1 = _moe_w_tile(w_base, stride_wk, offs_n, nmask, BK, k_end, BK)
    if PRE >= 3:
        w2 = _moe_w_tile(w_base, stride_wk, offs_n, nmask, 2 * BK, k_end, BK)
    if PRE >= 4:
        w3 = _moe_w_tile(w_base, stride_wk, offs_n, nmask, 3 * BK, k_end, BK)
    return w0, w1, w2, w3


@triton.jit
def _moe_w_tile(w_base, stride_wk, offs_n, nmask, k0, k_end, BK: tl.constexpr):
    """The [BK, BN] weight tile at K offset k0 (rows past k_end zero)."""
    offs_k = k0 + tl.arange(0, BK)
    return tl.load(w_base + offs_k[:, None] * stride_wk + offs_n[None, :],
                   mask=(offs_k < k_end)[:, None] & nmask[None, :], other=0.0)


@triton.jit
def _moe_kernel(
    x_ptr, w_ptr, bias_ptr, topi_ptr, rows_ptr, offs_ptr, rw_ptr, out_ptr, cnt_ptr,
    P, N, K, stride_x, stride_we, stride_wk, stride_be, stride_o, alpha, limit, part_ptr, sync_ptr, NT,
    TOPK: tl.constexpr, GATE_UP: tl.constexpr, SCAN: tl.constexpr, PB: tl.constexpr, COUNT: tl.constexpr,
    COMPACT: tl.constexpr, EPAD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PDL: tl.constexpr, NB_MAJOR: tl.constexpr, SPLIT: tl.constexpr, EB: tl.constexpr = False,
    PRE: tl.constexpr = 0,
):
    # grid (expert rows, N tiles), or (N tiles, expert rows) with NB_MAJOR: then the CTAs launched together
    # cover the N tiles of one expert (adjacent columns of the same weight rows) instead of one N tile of many.
    # SPLIT > 1 (scan mode): the N axis holds SPLIT x NT programs, K slice ks = axis // NT of N tile axis % NT
    if NB_MAJOR:
        nb = tl.program_id(0)
        pid = tl.program_id(1)
    else:
        nb = tl.program_id(1)
        pid = tl.program_id(0)
    if SPLIT > 1:
        ks = nb // NT
        nb = nb % NT
    offs_n = nb * BN + tl.arange(0, BN)
    nmask = offs_n < N
    if GATE_UP:
        _gdc(PDL)
    # the down GEMM's routing was written two kernels back (complete once this kernel runs, see PDL): read it
    # before the wait for gate_up's activations
    e, start, end, scan_rows = routed_rows_at(pid, topi_ptr, offs_ptr, P, SCAN, PB, COMPACT, EPAD, BM)
    # the epilogue's bias tile now, not after the K loop (a weight: the down GEMM loads it before its wait)
    bv = moe_early_bias(EB, bias_ptr, e, stride_be, offs_n, nmask, start, end)
    w_base = w_ptr + e * stride_we
    # MOE_DOWN_PRE (down, scan mode, unsplit: one M tile an expert): its first weight tiles before the wait
    pre = moe_pre_load(w_base, stride_wk, offs_n, nmask, K, end - start, BK, PRE)
    if not GATE_UP:
        _gdc(PDL)
    if COUNT:
        if nb == 0:
            if end > start:
                if SPLIT > 1:
                    if ks == 0:
                        tl.atomic_add(cnt_ptr, 1)
                else:
                    tl.atomic_add(cnt_ptr, 1)
    for m0 in range(start, end, BM):
        pair, rmask = tile_pairs(rows_ptr, m0, end, scan_rows, SCAN, BM)
        xrow = activation_rows(pair, TOPK, GATE_UP)
        rwv = moe_early_rw(EB, GATE_UP, rw_ptr, pair, rmask)  # the fold's, two kernels back
        if SPLIT > 1:
            acc, last = _moe_split_acc(x_ptr, stride_x, xrow, rmask, w_base, stride_wk, offs_n, nmask, K, ks,
                                       pid * NT + nb, part_ptr, sync_ptr, SPLIT, BM, BN, BK)
            if last:  # the last of the tile's K slices to finish: the summed tile, biased and stored as unsplit
                moe_epilogue_at(nb, acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha,
                                limit, offs_n, nmask, N, GATE_UP, BM, BN, bv, rwv, EB)
        else:
            acc = _moe_tile_acc(x_ptr, stride_x, xrow, rmask, w_base, stride_wk, offs_n, nmask, 0, K, False, BM, BN,
                                BK, pre, PRE)
            moe_epilogue_at(nb, acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit,
                            offs_n, nmask, N, GATE_UP, BM, BN, bv, rwv, EB)


@triton.jit
def _moe_split_acc(x_ptr, stride_x, xrow, rmask, w_base, stride_wk, offs_n, nmask, K, ks, tile, part_ptr, sync_ptr,
                   SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Split-K of one (M tile, N tile): K slice `ks` (whole BK steps, the last one masked) into an fp32 partial in
    part[tile, ks]; the last of the tile's SPLIT programs to finish (an atomic count per tile, reset by it) sums the
    SPLIT partials in slice order (so the same bits whoever finishes last) and returns (sum, True); the others
    return (their partial, False)."""
    kchunk = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK
    k_lo = ks * kchunk
    acc = _moe_tile_acc(x_ptr, stride_x, xrow, rmask, w_base, stride_wk, offs_n, nmask, k_lo,
                        tl.minimum(K, k_lo + kchunk), False, BM, BN, BK)
    tile_at = part_ptr + tile * (SPLIT * BM * BN) + tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    tl.store(tile_at + ks * (BM * BN), acc, mask=rmask[:, None])
    tl.debug_barrier()  # every thread's partial precedes the count (release)
    done = tl.atomic_add(sync_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = done == SPLIT - 1
    if last:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(tile_at + s * (BM * BN), mask=rmask[:, None], other=0.0, cache_modifier=".cg")
        tl.store(sync_ptr + tile, 0)
    return acc, last


@triton.jit
def _moe_tile_acc(x_ptr, stride_x, xrow, rmask, w_base, stride_wk, offs_n, nmask, k_lo, k_hi, CG: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, pre=None, PRE: tl.constexpr = 0):
    """One (M tile, N tile) of an expert GEMM over K in [k_lo, k_hi) (the whole K, or one split-K slice), in K order,
    fp32 accumulation on the tensor cores: the one K loop of every expert-tile path. CG: the activation rows are read
    through L2 only (written by other programs of the same launch). PRE: the first PRE weight tiles are `pre`
    (loaded before the kernel's PDL wait: `moe_pre_load`), the loop loads the rest."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for i in tl.static_range(PRE):
        acc = tl.dot(_moe_x_tile(x_ptr, stride_x, xrow, rmask, k_lo + i * BK, k_hi, CG, BK), pre[i], acc)
    for k0 in range(k_lo + PRE * BK, k_hi, BK):
        a = _moe_x_tile(x_ptr, stride_x, xrow, rmask, k0, k_hi, CG, BK)
        acc = tl.dot(a, _moe_w_tile(w_base, stride_wk, offs_n, nmask, k0, k_hi, BK), acc)
    return acc


@triton.jit
def _moe_x_tile(x_ptr, stride_x, xrow, rmask, k0, k_end, CG: tl.constexpr, BK: tl.constexpr):
    """The [BM, BK] activation tile of rows xrow (masked by rmask) at K offset k0 (columns past k_end zero); CG:
    read through L2 only."""
    offs_k = k0 + tl.arange(0, BK)
    mask = rmask[:, None] & (offs_k < k_end)[None, :]
    if CG:
        return tl.load(x_ptr + xrow[:, None] * stride_x + offs_k[None, :], mask=mask, other=0.0, cache_modifier=".cg")
    return tl.load(x_ptr + xrow[:, None] * stride_x + offs_k[None, :], mask=mask, other=0.0)


@triton.jit
def _moe_fused_kernel(
    x_ptr, wg_ptr, bg_ptr, wd_ptr, bd_ptr, topi_ptr, rw_ptr, act_ptr, out_ptr, cnt_ptr, sync_ptr,
    P, H, N2, INTER, stride_x, stride_wge, stride_wgk, stride_bge, stride_wde, stride_wdk, stride_bde, stride_a,
    stride_o, alpha, limit, ROWS, NTG, NTD, ITEMS,
    TOPK: tl.constexpr, PB: tl.constexpr, COUNT: tl.constexpr, EPAD: tl.constexpr, BM: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr, GU_NMAJOR: tl.constexpr, FLAG: tl.constexpr,
    MAX_SPIN: tl.constexpr,
):
    """Both expert GEMMs of a compact one-token launch in one persistent launch (MOE_FUSED). Work items: the
    ROWS x NTG gate_up tiles first (expert-major, or N-tile-major with GU_NMAJOR), then the ROWS x NTD down tiles
    (expert-major); program p takes items p, p + G, p + 2G, ... (G = the grid, <= the CTAs resident at once).
    Each gate_up tile, once stored, adds 1 to its slot's counter (release); a down tile of slot j waits until the
    counter reaches NTG (acquire), reads the activation rows through L2, and adds 1 again; the slot's last down
    tile resets the counter to 0 for the next launch. A program waits only for items of lower index, which
    programs already running (all resident) or earlier programs (the interpreter runs one item per program, in
    order) complete, so the wait cannot deadlock (should it ever spin MAX_SPIN times, it sets sync[FLAG] and goes
    on: a wrong result, not a hung GPU). Tiles, K order and epilogues are `_moe_kernel`'s."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    _gdc(PDL)
    NG = ROWS * NTG
    for it in range(pid, ITEMS, G):
        if it < NG:
            if GU_NMAJOR:
                nb = it // ROWS
                slot = it % ROWS
            else:
                slot = it // NTG
                nb = it % NTG
            e, start, end, scan_rows = routed_rows_at(slot, topi_ptr, topi_ptr, P, True, PB, True, EPAD, BM)
            if COUNT:
                if nb == 0:
                    if end > start:
                        tl.atomic_add(cnt_ptr, 1)
            offs_n = nb * BN + tl.arange(0, BN)
            nmask = offs_n < N2
            if end > start:
                pair, rmask = tile_pairs(topi_ptr, 0, end, scan_rows, True, BM)
                xrow = activation_rows(pair, TOPK, True)
                acc = _moe_tile_acc(x_ptr, stride_x, xrow, rmask, wg_ptr + e * stride_wge, stride_wgk, offs_n,
                                    nmask, 0, H, False, BM, BN, BK)
                moe_epilogue_at(nb, acc, e, pair, rmask, bg_ptr, rw_ptr, act_ptr, stride_bge, stride_a, alpha, limit,
                                offs_n, nmask, N2, True, BM, BN)
            tl.debug_barrier()  # every thread's stores of this tile precede the release
            tl.atomic_add(sync_ptr + slot, 1, sem="release", scope="gpu")
        else:
            j = it - NG
            slot = j // NTD
            nb = j % NTD
            e, start, end, scan_rows = routed_rows_at(slot, topi_ptr, topi_ptr, P, True, PB, True, EPAD, BM)
            seen = tl.atomic_add(sync_ptr + slot, 0, sem="acquire", scope="gpu")
            spins = 0
            while (seen < NTG) & (spins < MAX_SPIN):
                seen = tl.atomic_add(sync_ptr + slot, 0, sem="acquire", scope="gpu")
                spins += 1
            if seen < NTG:  # a safety net, never expected: flag it (`moe_fused_failed`) rather than hang the GPU
                tl.atomic_max(sync_ptr + FLAG, 1)
            tl.debug_barrier()
            offs_n = nb * BN + tl.arange(0, BN)
            nmask = offs_n < H
            if end > start:
                pair, rmask = tile_pairs(topi_ptr, 0, end, scan_rows, True, BM)
                acc = _moe_tile_acc(act_ptr, stride_a, pair, rmask, wd_ptr + e * stride_wde, stride_wdk, offs_n,
                                    nmask, 0, INTER, True, BM, BN, BK)
                moe_epilogue_at(nb, acc, e, pair, rmask, bd_ptr, rw_ptr, out_ptr, stride_bde, stride_o, alpha, limit,
                                offs_n, nmask, H, False, BM, BN)
            done = tl.atomic_add(sync_ptr + slot, 1, sem="relaxed", scope="gpu")
            if done == NTG + NTD - 1:
                tl.store(sync_ptr + slot, 0)

# Decode with fewer (token, slot) pairs than experts (batch 1, 2, ...) launches one program row per pair instead of
# one per expert: program i takes the i-th distinct routed expert, so no CTA is launched for the (E - U) experts
# nobody routed to. `moe(compact=False)` (GraphOptions.moe_compact) launches one row per expert (ablation).
SCAN_MAX_TOKENS = 64  # scan mode holds every row of an expert in one M tile (<= T rows): bounded for shared memory
# (BN, BK, num_warps, num_stages[, 1 = N-tile-major grid]) per GEMM; tuned on the H100 (see docs/PERF.md),
# overridable for experiments.
MOE_CONFIG: dict[str, tuple[int, ...]] = {"gate_up": (64, 128, 4, 4), "down": (32, 128, 4, 4)}
# the same for compact launches (fewer pairs than experts: batch 1, where few CTAs share the whole chip). H200
# (docs/PERF.md, session 5): down BN 64 (was 32) 65.3 -> 62.8 us a layer at one token; batch 1 top_k 4 2.534 ->
# 2.502 ms; no gate_up tile tried beat (64, 128, 4, 4). A 6th entry S > 1 (after the NB_MAJOR 5th) splits the GEMM's
# K over S programs in scan mode (`_moe_split_acc`: fp32 partials, the tile's last program sums them in slice order:
# another rounding than S = 1, which compiles to the unsplit kernel). Session 9 (moe9) timeline at one token: the down
# GEMM's 90 programs (k2) stream 2.6 TB/s, its 180 (k4) 3.4, gate_up's 180 (k2) 3.35 and 360 (k4) 3.74: e.g.
# {"down": (64, 128, 4, 4, 0, 2)} would double the programs. Measured (lead, docs/PERF.md session 9, batch 1, E32 /
# E16): down S 2 k4 +1.2 / +1.8%, k2 -0.3 / -0.3%; gate_up and down S 2 +4.4 / +5.1%, +2.6 / +1.9%; down S 4 +3.5 /
# +4.2%, +0.9 / +0.1% (deterministic): S = 1 everywhere.
MOE_CONFIG_FEW: dict[str, tuple[int, ...]] = {"gate_up": (64, 128, 4, 4), "down": (64, 128, 4, 4)}
# the same for M tiles of >= 64 rows not in MOE_CONFIG_BM (sorted mode's SORTED_BM_LARGE); None: MOE_CONFIG.
# H200 (docs/PERF.md): one E32 k4 expert layer at 64 / 128 / 256 tokens 565 / 590 / 612 us with MOE_CONFIG (BM 64:
# 128 KB of shared memory for 4 stages, one CTA per SM) -> 419 / 444 / 456 us with these tiles (BM 64).
# Re-picked on the H200 at 128 / 256 tokens with M tile 64 (docs/PERF.md): gate_up BN 128 (395 / 413 us a layer
# against 412 / 431 with BN 64).
MOE_CONFIG_BIG: dict[str, tuple[int, ...]] | None = {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 3)}
# Per M tile (non-compact launches, scan or sorted: batch 2-16 -> M tile 16, 17-32 -> 32, 33-64 and sorted mode with
# SORTED_BM -> 64), {BM: {"gate_up": ..., "down": ...}}; an M tile not listed takes MOE_CONFIG_BIG (>= 64 rows) or
# MOE_CONFIG. The 5th entry 1 = the N-tile-major grid: the CTAs that run together read adjacent column strips of one
# expert's weight rows. H200 (docs/PERF.md, session 6; one expert layer over the 24 layers' weights, E32 k4): 32
# tokens 453 -> 369 us (3.44 -> 4.23 TB/s), 8 tokens 295 -> 254 us (3.61 -> 4.20), 256 tokens 391 -> 378 us (4.07
# -> 4.21); the step: batch 32 k4 12.12 -> 10.16 ms, batch 8 8.00 -> 7.12, batch 256 13.01 -> 12.00. Most of it is
# the down GEMM's BN 32 -> 128 (64 -> 256-byte rows); the N-tile-major grid adds 2-3%.
MOE_CONFIG_BM: dict[int, dict[str, tuple[int, ...]]] = {
    16: {"gate_up": (128, 128, 4, 3, 1), "down": (128, 64, 4, 4)},
    32: {"gate_up": (128, 64, 4, 4, 1), "down": (128, 64, 4, 4, 1)},
    64: {"gate_up": (128, 64, 4, 3, 1), "down": (128, 64, 4, 3, 1)},
}
# Compact launches of more than COMPACT_FEW_PAIRS (token, slot) pairs (batch 3-7 at E32 top_k 4, batch 8 top_k 2:
# 16 pairs, ~13 distinct experts) take MOE_CONFIG_COMPACT (None: MOE_CONFIG_FEW, tuned at one token). H200 (session
# 6): E32 batch 8 top_k 2, one expert layer 166 -> 158 us (3.91 -> 4.12 TB/s), the step 5.20 -> 4.97 ms.
MOE_CONFIG_COMPACT: dict[str, tuple[int, ...]] | None = {"gate_up": (64, 64, 4, 6, 1), "down": (128, 64, 4, 4)}
COMPACT_FEW_PAIRS = 8
# M tile in sorted mode (more tokens than SCAN_MAX_TOKENS): SORTED_BM while an expert gets at most
# SORTED_BM_ROWS rows on average (pairs / experts), else SORTED_BM_LARGE, so that most experts still fit one M tile
# and their weights are read once. H200 (docs/PERF.md): E32 at 128 / 256 tokens (16 / 32 rows per expert) one
# expert layer 395 / 413 us with M tile 64 against 470 / 493 with 128; E16 at 256 tokens (64 rows per expert) the
# whole step was slower with 64 (11.06 vs 10.56 ms).
SORTED_BM = 64
SORTED_BM_LARGE = 128
SORTED_BM_ROWS = 40
# Sorted mode's expert-sorted pair list: "triton" (`_routing_sort_kernel`, one program per expert, up to
# ROUTING_SORT_MAX_PAIRS pairs: every decode step) or "torch" (torch.sort + searchsorted: 39-40 us a layer at 128 and
# 256 tokens on the H200, 0.74 ms of a batch-256 step).
ROUTING_SORT = "triton"
ROUTING_SORT_MAX_PAIRS = 4096


@triton.jit
def _routing_sort_kernel(flat_ptr, rows_ptr, offs_ptr, P, PB: tl.constexpr):
    """Stable counting sort of the (token, slot) pairs by expert, one program per expert e: rows[offs[e] + r] = the
    r-th pair routed to e (pair order kept, as a stable torch.sort), offs[e] = pairs routed to lower experts,
    offs[E] = P."""
    e = tl.program_id(0)
    p = tl.arange(0, PB)
    pm = p < P
    pe = tl.load(flat_ptr + p, mask=pm, other=-1)
    hit = (pe == e).to(tl.int32)
    first = tl.sum(((pe < e) & pm).to(tl.int32), axis=0)
    rank = tl.cumsum(hit, axis=0) - 1
    tl.store(rows_ptr + first + rank, p, mask=hit > 0)
    tl.store(offs_ptr + e, first)
    if e == tl.num_programs(0) - 1:
        tl.store(offs_ptr + e + 1, P)


@dataclass(frozen=True)
class RoutingPlan:
    """How an expert kernel finds its rows for one routing (T, k): shared by every expert weight format.

    scan: decode (T <= SCAN_MAX_TOKENS); each program scans the flat routing table (`flat`) for its expert.
    compact: scan with fewer pairs than experts; the grid has `pairs` program rows, one per distinct routed expert.
    Otherwise (prefill) `rows` lists the pairs sorted by expert and `offs` (E + 1) bounds each expert's run."""

    flat: torch.Tensor  # (T*k,) int32 expert id per (token, slot)
    rows: torch.Tensor
    offs: torch.Tensor
    pairs: int
    scan: bool
    compact: bool
    bm: int  # M tile: >= every expert's row count in scan mode
    grid_rows: int  # program rows of the expert grid
    pb: int  # power of two >= pairs
    epad: int  # power of two >= experts


def routing_plan(topi: torch.Tensor, experts: int, compact: bool = True) -> RoutingPlan:
    tokens, k = topi.shape
    pairs = tokens * k
    flat = topi.reshape(-1)
    scan = tokens <= SCAN_MAX_TOKENS
    compact = scan and compact and pairs < experts
    if scan:
        bm = max(16, _p2(tokens))
        rows = offs = flat
    else:
        bm = SORTED_BM if pairs <= SORTED_BM_ROWS * experts else SORTED_BM_LARGE
        if ROUTING_SORT == "triton" and pairs <= ROUTING_SORT_MAX_PAIRS:
            flat = flat.to(torch.int32)
            rows = torch.empty((pairs,), dtype=torch.int32, device=topi.device)
            offs = torch.empty((experts + 1,), dtype=torch.int32, device=topi.device)
            _routing_sort_kernel[(experts,)](flat, rows, offs, pairs, PB=_p2(pairs), num_warps=4)
        else:
            sorted_e, order = torch.sort(flat.to(torch.int64), stable=True)
            bounds = torch.arange(experts + 1, device=topi.device, dtype=sorted_e.dtype)
            offs = torch.searchsorted(sorted_e, bounds).to(torch.int32)
            rows = order.to(torch.int32)
    return RoutingPlan(flat=flat, rows=rows, offs=offs, pairs=pairs, scan=scan, compact=compact, bm=bm,
                       grid_rows=pairs if compact else experts, pb=_p2(pairs), epad=_p2(experts))


def moe_tiles(plan: RoutingPlan) -> dict[str, tuple[int, ...]]:
    """The (BN, BK, num_warps, num_stages[, N-tile-major]) table of both expert GEMMs for one routing plan: compact
    launches MOE_CONFIG_FEW (MOE_CONFIG_COMPACT past COMPACT_FEW_PAIRS pairs); others MOE_CONFIG_BM[M tile], else
    MOE_CONFIG_BIG for M tiles of >= 64 rows, else MOE_CONFIG."""
    if plan.compact:
        return MOE_CONFIG_COMPACT if MOE_CONFIG_COMPACT and plan.pairs > COMPACT_FEW_PAIRS else MOE_CONFIG_FEW
    table = MOE_CONFIG_BM.get(plan.bm)
    if table:
        return table
    if plan.bm >= 64 and MOE_CONFIG_BIG:
        return MOE_CONFIG_BIG
    return MOE_CONFIG


# Both expert GEMMs of a compact launch of <= COMPACT_FEW_PAIRS pairs (one token) in ONE persistent launch
# (`_moe_fused_kernel`): a grid of at most MOE_FUSED_CTAS programs an SM (capped by the compiled kernel's
# occupancy, so that every program is resident at once: a down tile spins until its expert's gate_up tiles are
# stored) walks the gate_up tiles, then the down tiles. One launch, one ramp and one tail per layer instead of two.
# MOE_FUSED_CONFIG: (BN, BK, num_warps, num_stages) of both GEMMs' tiles (the same for both: every work item reads
# K x BN weights, K = 2880 for both). MOE_FUSED_NMAJOR: the gate_up tiles N-tile-major (the experts' tile 0, then
# tile 1, ...) instead of expert-major. MOE_FUSED_EVEN: a grid that divides the work items evenly and ends the gate_up
# tiles with a round (`moe_fused_grid`; at top_k 4 with BN 64: 180 programs for 360 + 180 tiles, three rounds).
# H200 (docs/PERF.md, session 9, moe9; the same bits as the two launches): batch 1 ms/step against main, E32 k4 / k2,
# E16 k4 / k2: (64, 128, 4, 4) with EVEN 0.9988 / 0.9994 / 0.997 / 0.997; without EVEN (264 programs) 1.015 / 0.999 /
# 1.013 / 0.996; 6 stages 1.04-1.06. The one launch saves no time: the two launches' expert kernel time is 1,323 us a
# step (k4), the fused one 1,316. Off; EVEN is the best grid found, should it be turned on.
MOE_FUSED = False
MOE_FUSED_CONFIG: tuple[int, int, int, int] = (64, 128, 4, 4)
MOE_FUSED_CTAS = 2
MOE_FUSED_NMAJOR = False
MOE_FUSED_EVEN = True
_MOE_SYNC: dict[torch.device, torch.Tensor] = {}
_MOE_SYNC_SLOTS = 64
_MOE_FUSED_CAP: dict[tuple, int] = {}


def moe_fused_applies(plan: RoutingPlan) -> bool:
    """Whether `moe` runs this routing plan as one persistent launch (MOE_FUSED, compact, <= COMPACT_FEW_PAIRS)."""
    return bool(MOE_FUSED) and plan.compact and plan.pairs <= min(COMPACT_FEW_PAIRS, _MOE_SYNC_SLOTS - 1)


def moe_fused_failed(device: torch.device) -> bool:
    """Whether a persistent expert launch on `device` ever gave up waiting for its gate_up tiles (its output was
    then wrong); reads device memory (synchronizes)."""
    sync = _MOE_SYNC.get(torch.device(device))
    return bool(sync is not None and int(sync[_MOE_SYNC_SLOTS - 1]) != 0)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _resident_ctas(kernel, args: tuple, kw: dict, device: torch.device) -> int:
    """How many programs of `kernel` (compiled for these arguments, not launched) fit on the device at once:
    SMs x min(MOE_FUSED_CTAS, what registers, shared memory and threads allow an SM)."""
    key = (device, tuple(sorted((n, v) for n, v in kw.items())))
    per_sm = _MOE_FUSED_CAP.get(key)
    if per_sm is None:
        ck = kernel.warmup(*args, grid=(1,), **kw)
        ck._init_handles()
        props = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)
        warps = int(kw["num_warps"])
        regs_warp = -(-int(ck.n_regs) * 32 // 256) * 256
        by_regs = 65536 // max(1, warps * regs_warp)
        by_smem = (int(props["max_shared_mem"]) + 1024) // (int(ck.metadata.shared) + 1024)
        per_sm = _MOE_FUSED_CAP[key] = max(1, min(by_regs, by_smem, 2048 // (32 * warps), 32))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return sms * max(1, min(int(MOE_FUSED_CTAS), per_sm))


def moe_fused_grid(items: int, gate_up_items: int, cap: int) -> int:
    """Programs of the persistent expert launch: min(items, cap); with MOE_FUSED_EVEN the largest common divisor of
    `items` and `gate_up_items` <= cap when it is at least cap / 2: every program then takes as many tiles, and the
    gate_up tiles end with a round of the programs (the down tiles of the next round then wait only for the gate_up
    round before theirs to drain, not for tiles started beside them)."""
    g = min(items, cap)
    if MOE_FUSED_EVEN and g < items:
        div = next((d for d in range(g, 0, -1) if items % d == 0 and gate_up_items % d == 0), g)
        g = div if 2 * div >= g else g
    return max(1, g)


def _moe_fused(x, gate_up, gate_up_bias, down, down_bias, plan: RoutingPlan, rw, act, out, counter, alpha, limit,
               k: int, pdl: int) -> None:
    hidden, n2 = x.shape[1], gate_up.shape[2]
    inter = n2 // 2
    bn, bk, warps, stages = MOE_FUSED_CONFIG
    sync = _zeros_once(_MOE_SYNC, x.device, (_MOE_SYNC_SLOTS,), torch.int32, x.device)
    ntg, ntd = triton.cdiv(n2, bn), triton.cdiv(hidden, bn)
    rows = plan.grid_rows
    items = rows * (ntg + ntd)
    args = (x, gate_up, gate_up_bias, down, down_bias, plan.flat, rw, act, out,
            counter if counter is not None else plan.flat, sync, plan.pairs, hidden, n2, inter, x.stride(0),
            gate_up.stride(0), gate_up.stride(1), gate_up_bias.stride(0), down.stride(0), down.stride(1),
            down_bias.stride(0), act.stride(0), out.stride(0), alpha, limit, rows, ntg, ntd, items)
    kw = dict(TOPK=k, PB=plan.pb, COUNT=counter is not None, EPAD=plan.epad, BM=plan.bm, BN=bn, BK=bk, PDL=pdl,
              GU_NMAJOR=bool(MOE_FUSED_NMAJOR), FLAG=_MOE_SYNC_SLOTS - 1, MAX_SPIN=1 << 20, num_warps=warps,
              num_stages=stages, **_pdl_kw(pdl))
    if _interpreting() or x.device.type != "cuda":
        grid = items  # one item a program, gate_up items first: the interpreter runs programs in order
    else:
        grid = moe_fused_grid(items, rows * ntg, _resident_ctas(_moe_fused_kernel, args, kw, x.device))
    _moe_fused_kernel[(grid,)](*args, **kw)


def moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_bias: torch.Tensor,
    down: torch.Tensor,
    down_bias: torch.Tensor,
    topi: torch.Tensor,
    topw: torch.Tensor,
    alpha: float,
    limit: float,
    counter: torch.Tensor | None = None,
    compact: bool = True,
    tiles: dict[str, tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """Routed bf16/float32 experts for x (T, H) with routing (T, k) -> per (token, slot) outputs (T*k, H), weighted.

    T <= SCAN_MAX_TOKENS (decode) uses scan mode, one M tile of >= T rows per expert; larger T (prefill) sorts.
    counter (int32 scalar): += the number of distinct experts routed (decode statistics).
    """
    hidden = x.shape[1]
    k = topi.shape[1]
    experts, _, n2 = gate_up.shape
    plan = routing_plan(topi, experts, compact)
    act = torch.empty((plan.pairs, n2 // 2), dtype=x.dtype, device=x.device)
    out = torch.empty((plan.pairs, hidden), dtype=x.dtype, device=x.device)
    rw = topw.reshape(-1)
    cnt = counter if counter is not None else plan.flat
    pdl = pdl_launch(x.shape[0])
    if tiles is None and moe_fused_applies(plan):
        _moe_fused(x, gate_up, gate_up_bias, down, down_bias, plan, rw, act, out, counter, alpha, limit, k,
                   early_pdl(pdl, x.shape[0], "moe_down"))
        return out
    for name, src, w, bias, dst, n in (
        ("gate_up", x, gate_up, gate_up_bias, act, n2),
        ("down", act, down, down_bias, out, hidden),
    ):
        table = tiles or moe_tiles(plan)
        # optional 5th entry: 1 = N-tile-major grid (NB_MAJOR); optional 6th: K split (scan mode only)
        bn, bk, warps, stages, *extra = table[name]
        nb_major = bool(extra and extra[0])
        split = int(extra[1]) if len(extra) > 1 and plan.scan else 1
        gu = name == "gate_up"
        nt = triton.cdiv(n, bn)
        grid = (nt * split, plan.grid_rows) if nb_major else (plan.grid_rows, nt * split)
        part, sync = dst, cnt
        if split > 1:
            part = torch.empty((plan.grid_rows * nt * split * plan.bm * bn,), dtype=torch.float32, device=x.device)
            sync = _split_counters(x.device, name, plan.grid_rows * nt)
        _moe_kernel[grid](
            src, w, bias, plan.flat, plan.rows, plan.offs, rw, dst, cnt,
            plan.pairs, n, src.shape[1], src.stride(0), w.stride(0), w.stride(1), bias.stride(0), dst.stride(0),
            alpha, limit, part, sync, nt,
            TOPK=k, GATE_UP=gu, SCAN=plan.scan, PB=plan.pb, COUNT=counter is not None and gu, COMPACT=plan.compact,
            EPAD=plan.epad, BM=plan.bm, BN=bn, BK=bk, PDL=moe_pdl(pdl, x.shape[0], name, plan.pairs),
            NB_MAJOR=nb_major, SPLIT=split, EB=moe_early_bias_on(x.shape[0]),
            PRE=moe_down_pre(x.shape[0], plan) if not gu and split == 1 else 0, num_warps=warps, num_stages=stages,
            **_pdl_kw(pdl),
        )
    return out


# The one-token gate_up expert GEMM triggers its dependents right after its wait (PDL mode 2: the down GEMM's
# programs launch while gate_up runs) when it has at most GATE_UP_EARLY_MAX_PAIRS (token, slot) pairs (0: never;
# "moe_gate_up" in PDL_EARLY_MORE: always). Always (session 11, "gu2"): batch 1 top_k 2 -0.6% (E32) / -1.0% (E16), top_k
# 4 +0.9 / +0.6%; so only at top_k <= 2. H200 (docs/PERF.md session 12, same-card --compare, the same bits): E32 / E16
# top_k 2 -1.1 / -1.0%, top_k 4 unchanged. (Its down GEMM prefetching its first 256 / 1,024 weight rows into L2
# before its wait, as the MXFP4 down GEMM does, was slower: +0.5 / +1.7% at top_k 2. Removed.) Since session 18 also
# at top_k 4 (4 pairs), where the down GEMM then loads its first weight tiles into registers before its wait
# (MOE_DOWN_PRE, MOE_DOWN_PRE_MIN_PAIRS): together -1.8 / -1.3% at batch 1 top_k 4; the early launch alone +1.7 / +2.3%.
GATE_UP_EARLY_MAX_PAIRS = 4
# The expert GEMMs load their epilogue's bias tile (and the down GEMM its rows' routing weights) before the K loop,
# the down GEMM before its PDL wait, instead of after the loop, where each program's end waited a memory round
# trip for them. The same bits either way. H200 (docs/PERF.md session 12, same-card --compare, E32 / E16): batch 1
# top_k 4 -0.3 / -0.3%, top_k 2 -1.1 / -1.1%, batch 8 -0.5 / -0.5%, batch 32 -0.6 / -0.1%. Only in launches of at
# most MOE_EARLY_BIAS_MAX_TOKENS tokens (scan-mode decode): in sorted mode it was slower (session 13, E32,
# MOE_EARLY_BIAS off against on at every size: batch 128 -2.1%, batch 256 -1.7%, the same bits).
MOE_EARLY_BIAS = True
MOE_EARLY_BIAS_MAX_TOKENS = 64
# The down GEMM of a one-token step with at least MOE_DOWN_PRE_MIN_PAIRS pairs loads its first MOE_DOWN_PRE (0..4)
# weight tiles before its PDL wait (its routing is two kernels old), so that they stream under gate_up's tail, which
# since session 18 lets it launch early at top_k 4 too (GATE_UP_EARLY_MAX_PAIRS 4); the same bits. H200 (docs/PERF.md
# session 18, same-card --compare, E32 / E16 batch 1, ms a step against main = no pre-loads, early at <= 2 pairs):
# top_k 4 early + 1 / 2 / 3 / 4 tiles -1.2 / -0.8%, -1.5 / -1.0%, -1.8 / -1.3%, +5.6 / +6.0% (4 tiles: 255 registers
# and spills); early alone +1.7 / +2.3%; at top_k 2 (early already) 1 / 2 tiles +0.4..+0.6%, +0.9..+1.1%: hence
# 3 tiles from 3 pairs. The down GEMM's exposed time at top_k 4 20.75 -> 18.95 us a layer (E32). 0: none.
MOE_DOWN_PRE = 3
MOE_DOWN_PRE_MIN_PAIRS = 3


def moe_down_pre(tokens: int, plan: RoutingPlan) -> int:
    """MOE_DOWN_PRE (checked: 0..4) for a down GEMM launch of `tokens` tokens (one token, scan mode, enough pairs;
    else 0)."""
    pre = _pre_tiles(MOE_DOWN_PRE)
    return pre if tokens <= 1 and plan.scan and plan.pairs >= MOE_DOWN_PRE_MIN_PAIRS else 0


def moe_early_bias_on(tokens: int) -> bool:
    """Whether an expert GEMM launch of `tokens` tokens loads its epilogue's inputs before the K loop (EB)."""
    return bool(MOE_EARLY_BIAS) and tokens <= MOE_EARLY_BIAS_MAX_TOKENS


def moe_pdl(pdl: int, rows: int, gemm: str, pairs: int) -> int:
    """The PDL mode of an expert GEMM launch ("gate_up" / "down") of a step of `rows` tokens and `pairs` pairs:
    `early_pdl` at the site, and mode 2 for a one-token gate_up of <= GATE_UP_EARLY_MAX_PAIRS pairs."""
    mode = early_pdl(pdl, rows, f"moe_{gemm}")
    if gemm == "gate_up" and mode == 1 and rows <= 1 and pairs <= GATE_UP_EARLY_MAX_PAIRS:
        return 2
    return mode


_SPLIT_SYNC: dict[tuple[torch.device, str], torch.Tensor] = {}
_SPLIT_SYNC_TILES = 16384


def _split_counters(device: torch.device, gemm: str, tiles: int) -> torch.Tensor:
    """The per-(expert row, N tile) counts of a split-K expert GEMM (zero between launches: each tile's last K slice
    resets its count), one buffer per device and GEMM."""
    if tiles > _SPLIT_SYNC_TILES:
        raise ValueError(f"moe: {tiles} split-K tiles in one launch, more than {_SPLIT_SYNC_TILES}; use a wider BN")
    return _zeros_once(_SPLIT_SYNC, (device, gemm), (_SPLIT_SYNC_TILES,), torch.int32, device)
