"""Triton MoE expert GEMMs of the `graph` engine for MXFP4 weights (the released gpt-oss layout, see
bench/models/mxfp4.py): the counterpart of `kernels.moe` for experts held as blocks + scales.

Rows come from `kernels.routed_rows` (the bf16 kernel's row logic: scan mode in decode, with the compact grid when
there are fewer pairs than experts; an expert-sorted list in prefill), so both formats route identically. Every
program reads its N tile of the expert's blocks (uint8, two e2m1 codes per byte, low nibble = even element) and
e8m0 scales once. gate_up applies the clamped SwiGLU in its epilogue, down the bias and routing weight, with the
bf16 kernel's own `kernels.moe_epilogue`. Every step-dependent value lives in device memory, so a decode step with
these kernels is CUDA-graph capturable. Inner loops (`IMPL`, picked per launch by `moe_mxfp4`):

- "gemv4" (decode at batch <= GEMV_MAX_TOKENS, the default GEMV_IMPL): no tensor cores; the blocks read as 32-bit
  words, codes i and i+4 of a word decoded together to two fp32 values by a mask, one integer multiply (two
  non-overlapping copies of each nibble: magnitude and sign land where fp32 holds e2m1 * 2^-126) and two masks
  (_e2m1_pair_f32), one fp32 FMA a weight against the activation * 2^64 in natural K order, the block scale on
  the block sum. Plain Triton (no PTX): the interpreter runs the same code.
- "gemv"/"gemv2" (round 2's batch-1 loops): no tensor cores. One program per (expert,
  BN output rows) loads [BN, NB, 16] bytes (16 contiguous bytes = one block per thread vector), decodes both
  nibbles, multiplies by the even / odd activations in fp32, sums each block, applies the block's scale to the
  block sum, and keeps per-block partials until the end (one cross-thread reduction per program, not per step).
- "mma": per block of 32 weights, low nibbles x even activations and high nibbles x odd ones (two tl.dot), the
  block's scale applied to the fp32 partial product.
- "scaled": `tl.dot_scaled` (bf16 activations x e2m1 weights with e8m0 scales): Triton lowers the decode itself
  (on Hopper it upcasts to bf16 in registers before the MMA). Prefill (sorted mode, past DQ_SORTED_MAX_TOKENS
  tokens) on CUDA.
- "dq" (decode launches past GEMV_MAX_TOKENS on CUDA with bf16 activations): the weights are read as 16-bit
  halves and decoded to bf16 by inline PTX (_e2m1_asm: shifts and masks put each code's bits where bf16 holds
  e2m1 * 2^-126, then one bf16x2 multiply by the block scale times 2^126), then one bf16 MMA (wgmma) per BK with
  the weights as the register operand. K is reordered inside each 32-value block so that the decoded registers
  are already the MMA's operand layout; the activations are gathered in the same order. Per batch class
  (MXFP4_CONFIG_DQ_T, round 6a) it picks its tiles and variant: the integer-multiply decode of gemv4 in bf16x2 form
  (_dq_asm_mul), the activations loaded in natural K order with vector loads and reordered in registers instead of
  gathered one by one, M sub-tiles of 16 rows (_dq_pairs), a register cap; and it also runs sorted-mode decode up
  to DQ_SORTED_MAX_TOKENS tokens. GPU-only: covered by tests/test_mxfp4_gpu.py on the device; the CPU interpreter
  cannot run PTX.
- "dqa" (round 7, mxfp4_dq_ws.py, Gluon): the dq decode into shared memory and an asynchronous wgmma, for scan-mode
  launches on the full grid with DQA_MIN_TOKENS..DQA_MAX_TOKENS tokens (0 = never: slower than dq on the H200,
  docs/MXFP4.md round 7); `impl="dqa"` forces it.
Programmatic dependent launch (MXFP4_PDL, one-token steps as kernels.pdl_launch decides): both GEMMs wait
(griddepcontrol.wait) before reading what an earlier kernel wrote; in mode 2 gate_up lets the down GEMM launch once
all its programs have passed their wait, and down prefetches its weight rows into L2 (_prefetch_rows_l2) before
its own wait, so its first reads overlap gate_up's last programs; with MXFP4_DOWN_EARLY down in turn lets the next
kernel (the lazy qkv GEMV, which pre-loads its weight tiles before its own wait) launch right after its wait.
In gemv / mma, CUDA with bf16 activations decodes codes to fp16 by bit placement (value * 2^-14, folded into the
scale); otherwise (the CPU interpreter, float32 tests) the decode is float arithmetic in the activation dtype, exact.
Runs under TRITON_INTERPRET=1 on CPU for tests (tests/interpreter/mxfp4_cases.py).
"""

# ruff: noqa: SIM102, SIM108  (Triton JIT code keeps explicit if-blocks on constexpr flags)
from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl

from bench.engines.graph.kernels import (
    _gdc,
    _pdl_kw,
    activation_rows,
    moe_early_bias,
    moe_early_rw,
    moe_epilogue,
    pdl_launch,
    routed_rows,
    routing_plan,
    tile_pairs,
)


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


@triton.jit
def _e2m1(code):
    """e2m1 code (int32, 0..15) -> float32 value: sign bit 3, exponent bits 2..1, mantissa bit 0."""
    ex = (code >> 1) & 3
    m = (code & 1).to(tl.float32)
    mag = tl.where(ex == 0, m * 0.5, (2.0 + m) * tl.exp2(ex.to(tl.float32) - 2.0))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _e2m1_f16(code):
    """e2m1 codes (int32) -> fp16 holding value * 2^-14, exactly, in three integer ops: the sign goes to bit 15
    and exponent+mantissa (3 bits) to bits 11..9, so exponent field e and top mantissa bit m give
    (1 + m/2) * 2^(e-15) for e >= 1 and the subnormal m * 2^-15 for e = 0: the e2m1 value times 2^-14."""
    bits = ((code & 8) << 12) | ((code & 7) << 9)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _prefetch_rows_l2(w_e, offs_n, nmask, K, BN: tl.constexpr):
    """L2 prefetch (PTX prefetch.global.L2, no registers held) of the expert's N tile rows (K / 2 bytes each, any
    element type of w_e: addresses are taken in bytes), one instruction a 128-byte line: the down GEMM's weights,
    fetched while it waits for the gate_up GEMM (PDL mode 2). CUDA only."""
    rb = K // 2  # bytes a row
    LINES: tl.constexpr = 16  # lines a row per pass (128 bytes each)
    base = w_e.to(tl.pointer_type(tl.uint8)) + offs_n.to(tl.int64)[:, None] * rb
    for l0 in range(0, tl.cdiv(rb, 128), LINES):
        ln = l0 + tl.arange(0, LINES)
        m = nmask[:, None] & (ln < tl.cdiv(rb, 128))[None, :]
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.b32 $0, 0; }", "=r,l,r",
            [base + (ln * 128)[None, :], m.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _moe_mxfp4_kernel(
    x_ptr, wb_ptr, ws_ptr, bias_ptr, topi_ptr, rows_ptr, offs_ptr, rw_ptr, out_ptr, cnt_ptr,
    P, N, K, stride_x, stride_wbe, stride_wse, stride_be, stride_o, alpha, limit,
    TOPK: tl.constexpr, GATE_UP: tl.constexpr, SCAN: tl.constexpr, PB: tl.constexpr, COUNT: tl.constexpr,
    COMPACT: tl.constexpr, EPAD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    FAST: tl.constexpr, IMPL: tl.constexpr, PDL: tl.constexpr = 0, DQV: tl.constexpr = 0, BMQ: tl.constexpr = 0,
    EB: tl.constexpr = False, DE: tl.constexpr = False, PERM_OUT: tl.constexpr = False,
):
    nb = tl.program_id(1)
    offs_n = nb * BN + tl.arange(0, BN)
    nmask = offs_n < N
    mm = tl.arange(0, BM)
    if GATE_UP:  # the routing and x come from the kernel right before; mode 2 lets the down GEMM launch now
        _gdc(PDL)
    e, start, end, scan_rows = routed_rows(topi_ptr, offs_ptr, P, SCAN, PB, COMPACT, EPAD, BM)
    bv = moe_early_bias(EB, bias_ptr, e, stride_be, offs_n, nmask, start, end)  # MXFP4_EARLY_BIAS
    if not GATE_UP:  # the routing is two kernels old (complete once this kernel runs); the activations are not
        if PDL > 1:
            if end > start:
                _prefetch_rows_l2(wb_ptr + e.to(tl.int64) * stride_wbe, offs_n, nmask, K, BN)
        if PDL > 0:
            if DE:  # MXFP4_DOWN_EARLY: the next kernel (the lazy qkv GEMV) launches now and pre-loads its weights
                _gdc(2)
            else:
                _gdc(1)  # the wait only, no early trigger: the next kernel starts when this one has exited
    if COUNT:
        if nb == 0:
            if end > start:
                tl.atomic_add(cnt_ptr, 1)
    if end > start:
        e64 = e.to(tl.int64)
        rws = moe_early_rw(EB, GATE_UP, rw_ptr, scan_rows, mm < end)  # the gemv loops' rows
        if IMPL == 0 or IMPL == 3:  # gemv (scan mode only; BM >= every expert's row count)
            acc = _gemv_rows(x_ptr, wb_ptr + e64 * stride_wbe, ws_ptr + e64 * stride_wse, scan_rows, end, K,
                             stride_x, offs_n, nmask, TOPK, GATE_UP, BM, BN, BK, FAST, IMPL == 3)
            moe_epilogue(acc, e, scan_rows, mm < end, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit,
                         offs_n, nmask, N, GATE_UP, BM, BN, bv, rws, EB)
        elif IMPL == 6:  # gemv4: integer-multiply decode, fp32 FMA (scan mode only, like gemv)
            acc = _gemv4_rows(x_ptr, wb_ptr + e64 * stride_wbe, ws_ptr + e64 * stride_wse, scan_rows, end, K, stride_x,
                              offs_n, nmask, TOPK, GATE_UP, BM, BN, BK)
            moe_epilogue(acc, e, scan_rows, mm < end, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit,
                         offs_n, nmask, N, GATE_UP, BM, BN, bv, rws, EB)
        elif IMPL == 4 or IMPL == 5:  # dq: dequantize in registers (inline PTX), bf16 MMA; 5 = FOLD
            MT: tl.constexpr = BMQ if BMQ > 0 and BMQ < BM else BM  # M tiles of BMQ rows: slices of scan_rows
            for m0 in range(start, end, MT):
                pair, rmask = _dq_pairs(rows_ptr, m0, end, scan_rows, SCAN, BM, MT)
                xrow = activation_rows(pair, TOPK, GATE_UP)
                rwv = moe_early_rw(EB, GATE_UP, rw_ptr, pair, rmask)
                acc = _dq_tile(x_ptr, wb_ptr + e64 * stride_wbe, ws_ptr + e64 * stride_wse, xrow, rmask, K,
                               stride_x, offs_n, nmask, MT, BN, BK, IMPL == 5, DQV)
                moe_epilogue(acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit,
                             offs_n, nmask, N, GATE_UP, MT, BN, bv, rwv, EB, PERM_OUT)
        else:
            wb_base = wb_ptr + e64 * stride_wbe + offs_n[None, :].to(tl.int64) * (K // 2)
            ws_base = ws_ptr + e64 * stride_wse + offs_n.to(tl.int64) * (K // 32)
            for m0 in range(start, end, BM):
                pair, rmask = tile_pairs(rows_ptr, m0, end, scan_rows, SCAN, BM)
                rwv = moe_early_rw(EB, GATE_UP, rw_ptr, pair, rmask)
                acc = _mma_tile(x_ptr, wb_base, ws_base, pair, rmask, K, stride_x, offs_n, nmask, TOPK, GATE_UP,
                                BM, BN, BK, FAST, IMPL)
                moe_epilogue(acc, e, pair, rmask, bias_ptr, rw_ptr, out_ptr, stride_be, stride_o, alpha, limit,
                             offs_n, nmask, N, GATE_UP, BM, BN, bv, rwv, EB)


@triton.jit
def _dq_pairs(rows_ptr, m0, end, scan_rows, SCAN: tl.constexpr, BM: tl.constexpr, BMQ: tl.constexpr):
    """tile_pairs for M tiles of BMQ <= BM rows: scan mode takes rows m0..m0+BMQ-1 of scan_rows (BM of them, every
    row of the expert), sorted mode loads them from the sorted list; BMQ = BM is tile_pairs itself."""
    if BMQ == BM:
        return tile_pairs(rows_ptr, m0, end, scan_rows, SCAN, BM)
    rq = m0 + tl.arange(0, BMQ)
    rmask = rq < end
    if SCAN:
        mm = tl.arange(0, BM)
        pair = tl.sum(tl.where(mm[None, :] == rq[:, None], scan_rows[None, :], 0), axis=1)
    else:
        pair = tl.load(rows_ptr + rq, mask=rmask, other=0)
    return pair, rmask


@triton.jit
def _gemv_rows(x_ptr, wb_e, ws_e, rows, end, K, stride_x, offs_n, nmask, TOPK: tl.constexpr, GATE_UP: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, FAST: tl.constexpr, PAIRS: tl.constexpr):
    """[BM, BN] fp32 = rows of x (the expert's `end` routed rows) times the expert's N tile, without tensor cores.

    PAIRS ("gemv2"): the two nibbles of a byte are joined into a trailing pair axis and the activations loaded as
    [NB, 16, 2] (32 contiguous values a block, vector loads) instead of two stride-2 loads of even / odd values."""
    NB: tl.constexpr = BK // 32  # blocks of 32 weights per iteration
    KG = K // 32
    mm = tl.arange(0, BM)
    xrow = activation_rows(rows, TOPK, GATE_UP)
    blk = tl.arange(0, NB)
    j16 = tl.arange(0, 16)
    wrow = wb_e + tl.multiple_of(offs_n.to(tl.int64) * (KG * 16), 16)[:, None, None]  # rows start 16-byte blocks
    srow = ws_e + offs_n.to(tl.int64)[:, None] * KG
    part = tl.zeros([BM, BN, NB], dtype=tl.float32)  # scaled block sums, reduced over NB at the end
    for g0 in range(0, KG, NB):
        g = g0 + blk
        gm = g < KG
        byt = tl.load(wrow + (g * 16)[None, :, None] + j16[None, None, :],
                      mask=nmask[:, None, None] & gm[None, :, None], other=0).to(tl.int32)
        sc = tl.load(srow + g[None, :], mask=nmask[:, None] & gm[None, :], other=0).to(tl.float32)
        if FAST:
            wlo = _e2m1_f16(byt & 15).to(tl.float32)
            whi = _e2m1_f16(byt >> 4).to(tl.float32)
            scale = tl.exp2(sc - 113.0)  # 2^(s - 127) * 2^14
        else:
            wlo = _e2m1(byt & 15)
            whi = _e2m1(byt >> 4)
            scale = tl.exp2(sc - 127.0)
        if PAIRS:
            w2 = tl.join(wlo, whi)  # [BN, NB, 16, 2]: weight 2j + h of each block
            xoff2 = (g * 32)[:, None, None] + 2 * j16[None, :, None] + tl.arange(0, 2)[None, None, :]
        xoff = (g * 32)[:, None] + 2 * j16[None, :]
        for r in tl.static_range(BM):
            xr = tl.sum(tl.where(mm == r, xrow, 0), axis=0)
            # rows past `end` read row 0 (scan_rows is 0 there, a valid row) and are masked at the store
            if PAIRS:
                xv = tl.load(x_ptr + xr * stride_x + xoff2, mask=gm[:, None, None], other=0.0).to(tl.float32)
                s = tl.sum(tl.sum(w2 * xv[None, :, :, :], axis=3), axis=2) * scale
            else:
                xe = tl.load(x_ptr + xr * stride_x + xoff, mask=gm[:, None], other=0.0).to(tl.float32)
                xo = tl.load(x_ptr + xr * stride_x + xoff + 1, mask=gm[:, None], other=0.0).to(tl.float32)
                s = tl.sum(wlo * xe[None, :, :] + whi * xo[None, :, :], axis=2) * scale  # [BN, NB]
            if BM == 1:
                part += s[None, :, :]
            else:
                part = tl.where((mm == r)[:, None, None], part + s[None, :, :], part)
    return tl.sum(part, axis=2)


@triton.jit
def _e2m1_pair_f32(t, MUL: tl.constexpr):
    """Two e2m1 codes of a uint32 word, masked to the nibbles at bits p..p+3 and p+16..p+19 (p = 0 with MUL 4160,
    p = 4 with MUL 260), -> two float32 holding each code's value * 2^-126, exactly. One integer multiply by
    2^(6-p) + 2^(12-p) makes two copies of each nibble that do not overlap (no carries): in the first the
    magnitude bits (e1 e0 m) land at bits 8..6 (24..22 for the high nibble), in the second the sign at bit 15
    (31). The high code is then one mask (sign 31, exponent field e1 e0, top mantissa bit m: an fp32 whose value is
    e2m1 * 2^-126, subnormal for e = 0), the low code a shift by 16 and the same mask."""
    m = t * MUL
    hi = (m & 0x81C00000).to(tl.float32, bitcast=True)
    lo = ((m << 16) & 0x81C00000).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def _x64(xp, wm, j: tl.constexpr):
    """Activation j of each word (K offset 8 * word + j) as float32 times 2^64."""
    return tl.load(xp + j, mask=wm, other=0.0).to(tl.float32) * 18446744073709551616.0


@triton.jit
def _gemv4_rows(x_ptr, wb_e, ws_e, rows, end, K, stride_x, offs_n, nmask, TOPK: tl.constexpr, GATE_UP: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """[BM, BN] fp32 = rows of x times the expert's N tile without tensor cores, from the released layout read as
    uint32 words (wb_e: an int32 view of the blocks; word c of a block = codes 8c..8c+7, code i in bits 4i..4i+3).

    Per word: codes (i, i+4) for i = 0..3 decode as a pair (_e2m1_pair_f32: mask, one integer multiply, two masks
    and a shift: ~2.6 integer instructions a weight, about half of them multiplies, which run on the FMA pipe),
    each an fp32 value * 2^-126; one fp32 FMA a weight with the activation * 2^64 (so that products stay far from
    fp32 subnormals); the block sum times the block scale 2^(s-127), then 2^62 once at the end. Activations are
    loaded in natural K order (32 contiguous values a block)."""
    NB: tl.constexpr = BK // 32
    NW: tl.constexpr = BK // 8  # words per step
    KG = K // 32
    mm = tl.arange(0, BM)
    xrow = activation_rows(rows, TOPK, GATE_UP)
    blk = tl.arange(0, NB)
    wi = tl.arange(0, NW)
    wrow = wb_e + tl.multiple_of(offs_n.to(tl.int64) * (KG * 4), 4)[:, None]  # 4 words a block
    srow = ws_e + offs_n.to(tl.int64)[:, None] * KG
    part = tl.zeros([BM, BN, NB], dtype=tl.float32)
    for g0 in range(0, KG, NB):
        w0 = g0 * 4
        wm = (w0 + wi) < KG * 4
        g = g0 + blk
        wd = tl.load(wrow + w0 + wi[None, :], mask=nmask[:, None] & wm[None, :], other=0).to(tl.uint32, bitcast=True)
        sc = tl.load(srow + g[None, :], mask=nmask[:, None] & (g < KG)[None, :], other=0).to(tl.int32)
        scale = tl.where(sc == 0, 0x00400000, sc << 23).to(tl.float32, bitcast=True)  # 2^(s-127), s = 0 subnormal
        lo0, hi0 = _e2m1_pair_f32(wd & 0x000F000F, 4160)  # codes 0, 4 of each word
        lo1, hi1 = _e2m1_pair_f32(wd & 0x00F000F0, 260)  # codes 1, 5
        v = wd >> 8
        lo2, hi2 = _e2m1_pair_f32(v & 0x000F000F, 4160)  # codes 2, 6
        lo3, hi3 = _e2m1_pair_f32(v & 0x00F000F0, 260)  # codes 3, 7
        xoff = (w0 + wi) * 8
        for r in tl.static_range(BM):
            if r < end:  # the expert's own rows (BM is the launch's p2(tokens); the rest are masked at the store)
                xr = tl.sum(tl.where(mm == r, xrow, 0), axis=0)
                xp = x_ptr + xr * stride_x + xoff
                s = lo0 * _x64(xp, wm, 0)[None, :]
                s = tl.fma(hi0, _x64(xp, wm, 4)[None, :], s)
                s = tl.fma(lo1, _x64(xp, wm, 1)[None, :], s)
                s = tl.fma(hi1, _x64(xp, wm, 5)[None, :], s)
                s = tl.fma(lo2, _x64(xp, wm, 2)[None, :], s)
                s = tl.fma(hi2, _x64(xp, wm, 6)[None, :], s)
                s = tl.fma(lo3, _x64(xp, wm, 3)[None, :], s)
                s = tl.fma(hi3, _x64(xp, wm, 7)[None, :], s)  # [BN, NW]
                s = tl.sum(tl.reshape(s, (BN, NB, 4)), axis=2) * scale  # [BN, NB]
                if BM == 1:
                    part += s[None, :, :]
                else:
                    part = tl.where((mm == r)[:, None, None], part + s[None, :, :], part)
    return tl.sum(part, axis=2) * 4611686018427387904.0  # 2^62: 2^-126 of the codes, 2^64 of the activations


@triton.jit
def _mma_tile(x_ptr, wb_base, ws_base, pair, rmask, K, stride_x, offs_n, nmask, TOPK: tl.constexpr,
              GATE_UP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, FAST: tl.constexpr,
              IMPL: tl.constexpr):
    """[BM, BN] fp32 for one M tile of rows `pair` (masked by rmask) against the expert's N tile, with tl.dot.

    IMPL 1 ("mma"): per block of 32 weights (16 bytes of a row, one scale), the low nibbles multiply the even
    activations and the high nibbles the odd ones (two MMAs, no interleave in registers); weight tiles are loaded
    K-major ([16, BN]) and the block's scale multiplies the fp32 partial product of the block. IMPL 2 ("scaled"):
    tl.dot_scaled over BK weights per step (CUDA bf16 only)."""
    KG = K // 32
    xrow = activation_rows(pair, TOPK, GATE_UP)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    xbase = x_ptr + xrow[:, None] * stride_x
    if IMPL == 2:
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            a = tl.load(xbase + offs_k[None, :], mask=rmask[:, None] & (offs_k < K)[None, :], other=0.0)
            kb = k0 // 2 + tl.arange(0, BK // 2)
            b = tl.load(wb_base + kb[:, None], mask=(kb < K // 2)[:, None] & nmask[None, :], other=0)
            sg = k0 // 32 + tl.arange(0, BK // 32)
            s = tl.load(ws_base[:, None] + sg[None, :], mask=nmask[:, None] & (sg < KG)[None, :], other=127)
            acc = tl.dot_scaled(a.to(tl.bfloat16), None, "bf16", b, s, "e2m1", acc)
    else:
        j16 = tl.arange(0, 16)
        for k0 in range(0, KG, BK // 32):
            for gi in tl.static_range(BK // 32):
                g = k0 + gi
                offs_b = g * 16 + j16
                live = offs_b < KG * 16  # the block exists (K is a multiple of 32)
                amask = rmask[:, None] & live[None, :]
                a_even = tl.load(xbase + 2 * offs_b[None, :], mask=amask, other=0.0)
                a_odd = tl.load(xbase + 2 * offs_b[None, :] + 1, mask=amask, other=0.0)
                byt = tl.load(wb_base + offs_b[:, None], mask=live[:, None] & nmask[None, :], other=0).to(tl.int32)
                sc = tl.load(ws_base + g, mask=nmask & ((offs_n * 0 + g) < KG), other=0).to(tl.float32)
                if FAST:
                    part = tl.dot(a_even.to(tl.float16), _e2m1_f16(byt & 15))
                    part = tl.dot(a_odd.to(tl.float16), _e2m1_f16(byt >> 4), part)
                    acc += part * tl.exp2(sc - 113.0)[None, :]  # 2^(s - 127) * 2^14
                else:
                    part = tl.dot(a_even, _e2m1(byt & 15).to(x_ptr.dtype.element_ty))
                    part = tl.dot(a_odd, _e2m1(byt >> 4).to(x_ptr.dtype.element_ty), part)
                    acc += part * tl.exp2(sc - 127.0)[None, :]
    return acc


def _e2m1_asm(fold: bool) -> str:
    """PTX: a 32-bit register of two 16-bit elements, each 4 e2m1 codes (code j in bits 4j..4j+3 of its half), and
    their block scales (bf16x2) -> 4 bf16x2 registers, register j = (code j of element 0, code j of element 1),
    each times its scale, exactly.

    Both halves move together: one shift puts the magnitude bits (e1 e0 m) of code j at bf16 bits 8..6 (the bf16
    value is then e2m1 * 2^-126, subnormal for e = 0), another its sign at bit 15; a bf16x2 multiply by 2^126 and
    one by the scale make the value (FOLD: one multiply by 2^(s-1), valid for s <= 128). bf16 multiplies keep
    subnormals and powers of two are exact. Each output half depends only on its own input half, so the op is
    elementwise (pack=2) whatever register layout Triton picks."""
    out = ["{", ".reg .b32 t, u;"]
    if not fold:
        out += [".reg .b32 b;", "mov.b32 b, 0x7E807E80;"]  # 2^126 in both halves
    for j in range(4):
        mag, sign = 6 - 4 * j, 12 - 4 * j
        out.append(f"shl.b32 t, $4, {mag};" if mag >= 0 else f"shr.u32 t, $4, {-mag};")
        out.append("and.b32 t, t, 0x01C001C0;")
        out.append(f"shl.b32 u, $4, {sign};" if sign else "mov.b32 u, $4;")
        out.append("and.b32 u, u, 0x80008000;")
        out.append("or.b32 t, t, u;")
        if not fold:
            out.append("mul.rn.bf16x2 t, t, b;")
        out.append(f"mul.rn.bf16x2 ${j}, t, $5;")
    out.append("}")
    return "\n".join(out)


def _dq_asm_mul(fold: bool) -> str:
    """PTX, the same contract as _e2m1_asm (a register of two 16-bit elements of 4 codes each, and their bf16x2
    scales -> 4 bf16x2 registers, register j = code j of both elements, times the scale), with the integer-multiply
    decode of gemv4 in bf16x2 form: for codes j = 0, 1 (j = 2, 3 after one shift right by 8), one mask keeps the
    two nibbles (bits 4j..4j+3 of each half), one multiply by 2^(6-4j) + 2^(12-4j) makes two non-overlapping copies
    of each (no carries: the low half's reach bits 6..9 and 12..15, the high half's 22..25 and 28..31), and one
    mask 0x81C081C0 keeps the magnitude (e1 e0 m) at bits 8..6 and the sign at bit 15 of each half: the bf16
    e2m1 * 2^-126. 3 integer instructions a register (+ one shift per 2) against 4 for shifts and masks."""
    out = ["{", ".reg .b32 t, v;"]
    if not fold:
        out += [".reg .b32 b;", "mov.b32 b, 0x7E807E80;"]  # 2^126 in both halves
    for j in range(4):
        if j == 2:
            out.append("shr.u32 v, $4, 8;")
        src = "$4" if j < 2 else "v"
        mask, mul = ("0x000F000F", 4160) if j % 2 == 0 else ("0x00F000F0", 260)
        out += [f"and.b32 t, {src}, {mask};", f"mul.lo.u32 t, t, {mul};", "and.b32 t, t, 0x81C081C0;"]
        if not fold:
            out.append("mul.rn.bf16x2 t, t, b;")
        out.append(f"mul.rn.bf16x2 ${j}, t, $5;")
    out.append("}")
    return "\n".join(out)


_E2M1_ASM = tl.constexpr(_e2m1_asm(False))
_E2M1_ASM_FOLD = tl.constexpr(_e2m1_asm(True))
_DQ_ASM_MUL = tl.constexpr(_dq_asm_mul(False))
_DQ_ASM_MUL_FOLD = tl.constexpr(_dq_asm_mul(True))


@triton.jit
def _dq_tile(x_ptr, wb_e, ws_e, xrow, rmask, K, stride_x, offs_n, nmask, BM: tl.constexpr, BN: tl.constexpr,
             BK: tl.constexpr, FOLD: tl.constexpr, DQV: tl.constexpr = 0):
    """[BM, BN] fp32 with the weights dequantized to bf16 in registers (inline PTX, CUDA only) and one bf16 MMA per
    BK: the expert's N tile [BN, BK] as A, the rows' activations [BK, BM] as B.

    Weights are read as 16-bit halves of 32-bit words (4 codes each; 4 words = one 32-value block = one scale).
    Inside the tile, K is reordered so that the decoded values land where the MMA's register layout holds them
    (pairs of adjacent K in one register, a word in one thread): position 32g + 16*b4 + 8*b3 + 2c + b0 holds code
    (b3 + 2*b4) of half b0 of word c of block g, i.e. K offset 32g + 8c + 4*b0 + b3 + 2*b4; the activations are
    gathered in the same order, so the dot product is unchanged.

    DQV (DQ_VARIANT) bit 0: the integer-multiply decode (_dq_asm_mul); bit 1: the activations loaded in natural K
    order (vector loads of whole rows) and reordered in registers (reshape + permute) instead of gathered; bit 2
    (kept by moe_mxfp4 only when K % BK == 0 and N % BN == 0): the weight loads without masks; bit 3 (XPERM): the
    activations are stored in this MMA order already (dq_order; gate_up's epilogue writes down's input so), so
    each step loads them as contiguous rows and Triton's cp.async pipeline feeds them to the MMA from shared memory
    (no register round trip, no CTA fence a step); bit 1 is then moot."""
    MUL: tl.constexpr = (DQV & 1) != 0
    XNAT: tl.constexpr = (DQV & 2) != 0
    EVEN: tl.constexpr = (DQV & 4) != 0
    XPERM: tl.constexpr = (DQV & 8) != 0
    NG: tl.constexpr = BK // 32
    KG = K // 32
    wrow = wb_e + tl.multiple_of(offs_n.to(tl.int64) * (KG * 8), 8)  # wb_e: int16 view of the blocks
    srow = ws_e + offs_n.to(tl.int64) * KG
    gg = tl.arange(0, NG)
    hh = tl.arange(0, 8)  # 8 halves = 4 words = one block
    pos = tl.arange(0, BK)
    perm = (pos // 32) * 32 + ((pos >> 1) & 3) * 8 + (pos & 1) * 4 + ((pos >> 3) & 1) + ((pos >> 4) & 1) * 2
    xb = x_ptr + xrow[None, :].to(tl.int64) * stride_x
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    # the scales and the gathered activations are loaded one step ahead (the weights go through Triton's
    # cp.async pipeline; these small loads would otherwise wait a memory round trip every step)
    s_nxt = tl.load(srow[:, None] + gg[None, :], mask=nmask[:, None] & (gg < KG)[None, :], other=127)
    x_nxt = tl.zeros([BK, BM], dtype=x_ptr.dtype.element_ty)
    if XPERM:
        pass  # the activations are loaded in the step (Triton's cp.async pipeline)
    elif XNAT:
        x_nxt = tl.load(xb + pos[:, None], mask=(pos < K)[:, None] & rmask[None, :], other=0.0)
    else:
        x_nxt = tl.load(xb + perm[:, None], mask=(perm < K)[:, None] & rmask[None, :], other=0.0)
    for k0 in range(0, K, BK):
        g = k0 // 32 + gg
        gm = g < KG
        wm = nmask[:, None, None] & gm[None, :, None]
        if EVEN:  # K % BK == 0 and N % BN == 0: every word of the step exists
            wd = tl.load(wrow[:, None, None] + (g * 8)[None, :, None] + hh[None, None, :])
        else:
            wd = tl.load(wrow[:, None, None] + (g * 8)[None, :, None] + hh[None, None, :], mask=wm, other=0)
        s = s_nxt.to(tl.int32)
        xt = x_nxt
        g2 = g + NG
        s_nxt = tl.load(srow[:, None] + g2[None, :], mask=nmask[:, None] & (g2 < KG)[None, :], other=127)
        if XPERM:  # stored by the producer in this order already (gate_up's epilogue with PERM): contiguous rows
            kx = k0 + pos
            xt = tl.load(xb + kx[:, None], mask=(kx < K)[:, None] & rmask[None, :], other=0.0)
        elif XNAT:  # natural order: K offset 32g + 8c + 4*b0 + 2*b4 + b3 -> MMA position (g, b4, b3, c, b0)
            kx = k0 + BK + pos
            x_nxt = tl.load(xb + kx[:, None], mask=(kx < K)[:, None] & rmask[None, :], other=0.0)
            xt = tl.reshape(tl.permute(tl.reshape(xt, (NG, 4, 2, 2, 2, BM)), (0, 3, 4, 1, 2, 5)), (BK, BM))
        else:
            kx = k0 + BK + perm
            x_nxt = tl.load(xb + kx[:, None], mask=(kx < K)[:, None] & rmask[None, :], other=0.0)
        if FOLD:  # 2^(s - 127) * 2^126 = 2^(s - 1): bf16 exponent field s + 126 (s <= 128)
            sbits = (s + 126) << 7
        else:  # 2^(s - 127); s = 0 is the subnormal 2^-127
            sbits = tl.where(s == 0, 64, s << 7)
        sc = tl.broadcast_to(sbits.to(tl.int16).to(tl.bfloat16, bitcast=True)[:, :, None], (BN, NG, 8))
        if MUL:
            o0, o1, o2, o3 = tl.inline_asm_elementwise(
                _DQ_ASM_MUL_FOLD if FOLD else _DQ_ASM_MUL, "=r,=r,=r,=r,r,r", [wd, sc], dtype=(tl.bfloat16,) * 4,
                is_pure=True, pack=2)
        else:
            o0, o1, o2, o3 = tl.inline_asm_elementwise(
                _E2M1_ASM_FOLD if FOLD else _E2M1_ASM, "=r,=r,=r,=r,r,r", [wd, sc], dtype=(tl.bfloat16,) * 4,
                is_pure=True, pack=2)
        t = tl.join(tl.join(o0, o1), tl.join(o2, o3))  # [BN, NG, 8 = (c, b0), b3, b4]
        t = tl.reshape(t, (BN, NG, 4, 2, 2, 2))  # (n, g, c, b0, b3, b4)
        w = tl.reshape(tl.permute(t, (0, 1, 5, 4, 2, 3)), (BN, BK))  # -> (n, g, b4, b3, c, b0)
        acc = tl.dot(w, xt.to(tl.bfloat16), acc)
    return tl.trans(acc)


IMPLS = {"gemv": 0, "mma": 1, "scaled": 2, "gemv2": 3, "dq": 4, "dqf": 5, "gemv4": 6}  # "dqa": _moe_dqa
# Decode with at most this many tokens uses the gemv loop (every expert then has <= this many rows; one M "tile"
# of p2(tokens) rows, the weights decoded once per program and reused for each row). H200, one E32 k4 layer
# (docs/MXFP4.md): 1 token gemv4 30 us, gemv2 49, dq 54, scaled 77, mma 120; 4 tokens dq 114, gemv4 181, gemv 275.
GEMV_MAX_TOKENS = 1
# (BN, BK, num_warps, num_stages) per GEMM; BK is a multiple of 32 (one scale per 32 values).
# "gemv": decode with <= GEMV_MAX_TOKENS tokens; "few": other compact launches (fewer pairs than experts);
# "full": every other launch (scan over all experts, or sorted prefill). Picked on the H200 (docs/MXFP4.md).
MXFP4_CONFIG_GEMV: dict[str, tuple[int, int, int, int]] = {"gate_up": (16, 512, 4, 3), "down": (16, 512, 4, 3)}
MXFP4_CONFIG: dict[str, tuple[int, int, int, int]] = {"gate_up": (64, 256, 4, 3), "down": (64, 256, 4, 3)}
MXFP4_CONFIG_FEW: dict[str, tuple[int, int, int, int]] = {"gate_up": (64, 256, 4, 3), "down": (64, 256, 4, 3)}
# the inner loop of the other decode (scan-mode) launches on CUDA with bf16 activations, and of prefill (sorted
# mode). H200, one E32 k4 layer, 32 tokens: dq 346 us, scaled 512, mma 787; 4 tokens: dq 115, scaled 176
# (docs/MXFP4.md); prefill keeps tl.dot_scaled (dq there is checked, not timed)
MMA_IMPL = "dq"
SORTED_IMPL = "scaled"
# the "dq" loop's tiles: decode with <= GEMV_MAX_TOKENS tokens ("dq1"), every other launch ("dq")
MXFP4_CONFIG_DQ1: dict[str, tuple[int, int, int, int]] = {"gate_up": (64, 64, 4, 3), "down": (64, 128, 4, 3)}
MXFP4_CONFIG_DQ: dict[str, tuple[int, int, int, int]] = {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 4)}
# the dq loop per batch class (round 6a): a launch with at most `key` tokens (the smallest key >= tokens) takes that
# class's "gate_up" / "down" tiles, its "variant" / "bmq" (DQ_VARIANT / DQ_BMQ) and "maxnreg" (a register cap a
# thread for both GEMMs, 0 = none); what a class does not name, or past the largest key, comes from
# MXFP4_CONFIG_DQ, DQ_VARIANT and DQ_BMQ
# H200 (docs/MXFP4.md round 6a), E32 top-4: 2-8 tokens keep main's loop (no variant measured faster than main's own
# code in the engine); 9-32 tokens: engine batch 32 3,330 -> 4,367 tok/s (main's code, same call), one layer
# 365.5 -> 245.8 us; 33-64: batch 64 3,879 -> 6,645 tok/s; sorted decode 65-256 (dq instead of tl.dot_scaled):
# batch 128 7,938 -> 11,308 tok/s. Session 17 (docs/MXFP4.md round 17): variant bit 3 (the down GEMM's activations
# in the MMA's K order, through the cp.async pipeline) on the 33-64 class: engine E32 / E16 batch 64 k4 -2.3 / -1.5%
# (final call, `82fec27`), the same bits; per top_k classes below
MXFP4_CONFIG_DQ_T: dict[int, dict[str, tuple[int, int, int, int] | int]] = {
    8: {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 4), "variant": 0, "bmq": 0},
    32: {"gate_up": (128, 64, 4, 4), "down": (128, 64, 4, 3), "variant": 6, "bmq": 0, "maxnreg": 128},
    64: {"gate_up": (128, 64, 4, 4), "down": (128, 64, 4, 3), "variant": 15, "bmq": 16},
    256: {"gate_up": (64, 64, 4, 3), "down": (64, 64, 4, 3), "variant": 7, "bmq": 0},
}
# per top_k: {top_k: {class: {...}}}, a top_k's class entries (the keys above) over those of the shared class that
# holds it (the smallest MXFP4_CONFIG_DQ_T key >= the class's; a top_k's classes may split a shared one). The shared
# classes were tuned at top_k 4; at top_k 2 a launch of 2-8 tokens routes to about half the experts. H200 (docs/
# MXFP4.md round 15, one E32 layer, same card): 4 tokens the integer-multiply decode (variant 1) 78.9 -> 76.8 us;
# 8 tokens with the down tile (128, 64, 4, 3) too 131.5 -> 123.8 us (at 4 tokens that tile is slower: 80.2).
# Session 17 (round 17, final call at `82fec27`, same card, the same tokens and logits): variant bit 3 (the down
# GEMM's activations in the MMA's K order, see MXFP4_CONFIG_DQ_T) at top_k 4 on the 2-8 class, engine E32 / E16
# batch 4 -2.9 / -3.6%, batch 8 -3.0 / -3.9%; at top_k 2 on the 2-8 class batch 8 -3.9 / -2.9%, and on 17-32 tokens
# (the shared 9-32 class split at 16: 9-16 unchanged, unmeasured with the bit) batch 32 -9.8 / -5.2%. Not at top_k 4
# on 9-32 tokens: batch 16 +7.4 / +10.3%, batch 32 -0.2 / -0.2%
MXFP4_CONFIG_DQ_T_BY_TOPK: dict[int, dict[int, dict[str, tuple[int, int, int, int] | int]]] = {
    2: {4: {"variant": 1}, 8: {"variant": 9, "down": (128, 64, 4, 3)}, 16: {}, 32: {"variant": 14}},
    4: {8: {"variant": 8}},
}
# the dq loop's variant (_dq_tile's DQV; round 6a): bit 0 the integer-multiply decode (_dq_asm_mul), bit 1 the
# activations loaded in natural K order and reordered in registers (no scalar gather), bit 2 the weight loads
# without K/N masks (applied only to a launch where K % BK == 0 and N % BN == 0). 0 = main's loop before round 6a.
# The classes above name their own; this is for launches past them (and MOE_MXFP4_TILES experiments). Session 17,
# scan mode only: bit 3, the down GEMM's activations in the loop's MMA K order in memory (gate_up's epilogue writes
# them so), read through Triton's cp.async pipeline (_dq_tile's DQV bit 3); bit 4, with bit 3, gate_up's input too
# (gathered into that order by one extra kernel)
DQ_VARIANT = 0
# scan-mode dq launches of at most this many tokens take bit 3 whatever their class's variant (0: none)
DQ_XPERM_MAX_TOKENS = 0
# the dq loop's M tile in scan mode (rows of one expert per MMA; 0 = the routing plan's BM, max(16, p2(tokens)))
DQ_BMQ = 0
# decode launches past SCAN_MAX_TOKENS (sorted mode) with at most this many tokens run MMA_IMPL (dq) instead of
# SORTED_IMPL; prefill (more tokens) keeps SORTED_IMPL. 0: never. H200 (round 6a): dq 1.5x tl.dot_scaled at 128
# and 256 tokens
DQ_SORTED_MAX_TOKENS = 256
# round 7 (docs/MXFP4.md): scan-mode decode launches on the full grid (not compact) with DQA_MIN_TOKENS to
# DQA_MAX_TOKENS tokens run the Gluon loop "dqa" (mxfp4_dq_ws.py: the decode of step i+1 overlaps the asynchronous
# wgmma of step i) with MXFP4_CONFIG_DQA's (BN, BK, 4 warps, weight unit: 2 = 32-bit words, 1 = 16-bit halves) and
# DQA_MAXNREG; DQA_MAX_TOKENS 0 = never
DQA_MIN_TOKENS = 9
DQA_MAX_TOKENS = 0
MXFP4_CONFIG_DQA: dict[str, tuple[int, int, int, int]] = {"gate_up": (128, 64, 4, 2), "down": (128, 64, 4, 2)}
DQA_MAXNREG = 0
# the dqa loop's loads: 0 = into registers about two steps ahead; >= 2 = a shared-memory ring of that many steps
# filled by cp.async (so that the per-step fence before the MMA does not wait for them)
DQA_RING = 0
# with a ring: the scales through it too (32-bit words; BK 64 and even K/32 only), else plain loads one step ahead
DQA_RING_SCALES = True
# the batch-1 loop: "gemv4" (integer-multiply decode of 32-bit words, fp32 FMA); "gemv2": float decode, activations
# loaded in (even, odd) pairs; "gemv": two stride-2 loads
GEMV_IMPL = "gemv4"
# the "gemv4" loop's tiles (BN, BK, warps, stages; no loads are pipelined in it), picked on the H200 (call 3 of
# docs/MXFP4.md round 4): one E32 k4 layer at one token 30.3 us (gemv2 49.1, dq 54.9)
MXFP4_CONFIG_GEMV4: dict[str, tuple[int, int, int, int]] = {"gate_up": (32, 512, 2, 1), "down": (32, 1024, 4, 1)}
# per top_k (one token routes to top_k experts, so the grid has top_k times the N tiles): a top_k named here takes
# these tiles over MXFP4_CONFIG_GEMV4's (picked at top_k 4). H200 (docs/MXFP4.md round 15): at top_k 2 the top_k-4
# tiles leave half the programs (1.4 warps a scheduler in gate_up); gate_up (16, 1024, 4, 1) there: one layer 21.2 ->
# 17.4 us, engine E32 / E16 batch 1 k2 -6.1 / -6.0% a step, the same tokens and logits (down: a tie, kept)
MXFP4_CONFIG_GEMV4_BY_TOPK: dict[int, dict[str, tuple[int, int, int, int]]] = {2: {"gate_up": (16, 1024, 4, 1)}}
# Programmatic dependent launch of the expert GEMMs in one-token steps (where kernels.pdl_launch applies PDL):
# 0 plain launches; 1 both GEMMs wait (griddepcontrol.wait) before reading what an earlier kernel wrote, so their
# launch overlaps the end of the kernel before (kernels.PDL mode 1); 2 as 1, and gate_up lets the down GEMM launch
# as soon as all its programs have passed their wait: down then prefetches its weight rows into L2 while gate_up
# finishes, before its own wait for the activations. H200 (docs/MXFP4.md round 5), E32 top_k 4 batch 1: 515.8 /
# 520.6 / 526.2 tok/s with modes 0 / 1 / 2.
MXFP4_PDL = 2
# The expert GEMMs load their epilogue's bias tile (the down GEMM also its rows' routing weights) before the K loop,
# as the bf16 kernel does with kernels.MOE_EARLY_BIAS (there: -0.3 to -1.1%, docs/PERF.md session 12). Bit for bit
# (tests/interpreter/mxfp4_cases.py; tests/test_mxfp4_gpu.py on the H200). H200 (docs/MXFP4.md round 13, same card,
# `gpu_step_ablation.py --weights mxfp4 --compare '{"main": {}, "eb": {"mx.MXFP4_EARLY_BIAS": true}}' --cases
# 1x4,1x2,32x4 --rounds 3`): E32 / E16 batch 1 k4 -0.8 / -0.9%, k2 -0.8 / -1.1%, batch 32 k4 +0.1 / -1.1%, the same
# tokens and logits. False: the epilogue's loads after the K loop (ablation). Unlike the bf16 kernel (slower in
# sorted mode), at every size: session 13 (same card, --weights mxfp4, 2 rounds, E32 / E16, the same bits) batch 64
# on against off (MXFP4_EARLY_BIAS_MAX_TOKENS 32) -0.7 / -0.7%, batch 128 (sorted dq) -8.0 / -6.2%.
MXFP4_EARLY_BIAS = True
MXFP4_EARLY_BIAS_MAX_TOKENS = 1 << 30
# Whether the one-row qkv GEMV after these expert GEMMs triggers the fused rope + attention early (kernels'
# "splitk_qkv" site, on for bf16 experts). H200 (docs/MXFP4.md round 13, same card, `gpu_step_ablation.py --weights
# mxfp4 --compare '{"main": {}, "noqkvE": {"PDL_EARLY_MORE": ["rope", "moe_down"]}}' --cases 1x4,1x2 --rounds 3`):
# with the trigger batch 1 E32 / E16 k4 +2.0 / +1.9%, k2 +2.3 / +2.3% slower, the same bits. So off here.
MXFP4_QKV_EARLY = False
# Whether the down GEMM (PDL mode >= 1) lets the kernel after it, the lazy qkv GEMV, launch right after its own wait
# (PDL mode 2, as "moe_down" in kernels.PDL_EARLY_MORE does for the bf16 down GEMM), so that the GEMV's pre-loaded
# weight tiles (kernels.LAZY_PRE) stream under the down GEMM's tail; and from how many down rows a token (top_k) the
# GEMV pre-loads them after these kernels (Experts.qkv_pre_min_ks; bf16: kernels.LAZY_PRE_MIN_KS, 3). The same bits
# either way: the GEMV reads the down GEMM's output only after its own wait. H200 (docs/MXFP4.md round 14, two
# same-card calls, `gpu_step_ablation.py --weights mxfp4 --compare '{"main": {}, "de": {"mx.MXFP4_DOWN_EARLY": true},
# ...}' --cases 1x4,1x2 --rounds 3`, E32 / E16, the same tokens and logits): down early alone k4 -2.5 / -2.5%, k2
# -0.7 / -0.6% (the GEMV pre-loads nothing at 2 rows); with pre-loads from 2 rows k4 -2.5 / -2.6% and -2.6 / -2.5%,
# k2 -3.5 / -3.2% and -3.0 / -3.2%; down early without pre-loads (LAZY_PRE 0) k4 -0.5 / -0.6%; with LAZY_PRE 3 / 4
# instead of 2 k4 +0.9 / +0.7% and +1.5 / +1.4% against main. False: the next kernel launches once down has exited.
MXFP4_DOWN_EARLY = True
MXFP4_LAZY_PRE_MIN_KS = 2
# MOE_MXFP4_TILES='{"gemv": {...}, "few": {"gate_up": [BN, BK, warps, stages], ...}, "full": {...}, "pdl": 2}'
# overrides these tables and MXFP4_PDL (experiments, or the tiles scripts/gpu_mxfp4.py tuned in the same session)
TILES_ENV = "MOE_MXFP4_TILES"
if os.environ.get(TILES_ENV):
    _tiles = json.loads(os.environ[TILES_ENV])
    MXFP4_CONFIG_GEMV.update({k: tuple(v) for k, v in _tiles.get("gemv", {}).items()})
    MXFP4_CONFIG_GEMV4.update({k: tuple(v) for k, v in _tiles.get("gemv4", {}).items()})
    for _k, _cfg in _tiles.get("gemv4_by_topk", {}).items():
        MXFP4_CONFIG_GEMV4_BY_TOPK.setdefault(int(_k), {}).update({g: tuple(v) for g, v in _cfg.items()})
    MXFP4_CONFIG_FEW.update({k: tuple(v) for k, v in _tiles.get("few", {}).items()})
    MXFP4_CONFIG.update({k: tuple(v) for k, v in _tiles.get("full", {}).items()})
    MXFP4_CONFIG_DQ1.update({k: tuple(v) for k, v in _tiles.get("dq1", {}).items()})
    MXFP4_CONFIG_DQ.update({k: tuple(v) for k, v in _tiles.get("dq", {}).items()})
    for _t, _cfg in _tiles.get("dq_t", {}).items():
        MXFP4_CONFIG_DQ_T.setdefault(int(_t), {}).update(
            {k: tuple(v) if isinstance(v, list | tuple) else int(v) for k, v in _cfg.items()})
    for _k, _classes in _tiles.get("dq_t_by_topk", {}).items():
        for _t, _cfg in _classes.items():
            MXFP4_CONFIG_DQ_T_BY_TOPK.setdefault(int(_k), {}).setdefault(int(_t), {}).update(
                {k: tuple(v) if isinstance(v, list | tuple) else int(v) for k, v in _cfg.items()})
    DQ_VARIANT = int(_tiles.get("dq_variant", DQ_VARIANT))
    DQ_BMQ = int(_tiles.get("dq_bmq", DQ_BMQ))
    DQ_XPERM_MAX_TOKENS = int(_tiles.get("dq_xperm_max_tokens", DQ_XPERM_MAX_TOKENS))
    DQ_SORTED_MAX_TOKENS = int(_tiles.get("dq_sorted_max_tokens", DQ_SORTED_MAX_TOKENS))
    MMA_IMPL = _tiles.get("mma_impl", MMA_IMPL)
    SORTED_IMPL = _tiles.get("sorted_impl", SORTED_IMPL)
    GEMV_IMPL = _tiles.get("gemv_impl", GEMV_IMPL)
    GEMV_MAX_TOKENS = int(_tiles.get("gemv_max_tokens", GEMV_MAX_TOKENS))
    MXFP4_PDL = int(_tiles.get("pdl", MXFP4_PDL))
    MXFP4_EARLY_BIAS = bool(_tiles.get("early_bias", MXFP4_EARLY_BIAS))
    MXFP4_EARLY_BIAS_MAX_TOKENS = int(_tiles.get("early_bias_max_tokens", MXFP4_EARLY_BIAS_MAX_TOKENS))
    MXFP4_DOWN_EARLY = bool(_tiles.get("down_early", MXFP4_DOWN_EARLY))
    MXFP4_LAZY_PRE_MIN_KS = int(_tiles.get("lazy_pre_min_ks", MXFP4_LAZY_PRE_MIN_KS))
    MXFP4_CONFIG_DQA.update({k: tuple(v) for k, v in _tiles.get("dqa", {}).items()})
    DQA_MIN_TOKENS = int(_tiles.get("dqa_min_tokens", DQA_MIN_TOKENS))
    DQA_MAX_TOKENS = int(_tiles.get("dqa_max_tokens", DQA_MAX_TOKENS))
    DQA_MAXNREG = int(_tiles.get("dqa_maxnreg", DQA_MAXNREG))
    DQA_RING = int(_tiles.get("dqa_ring", DQA_RING))
    DQA_RING_SCALES = bool(_tiles.get("dqa_ring_scales", DQA_RING_SCALES))


_DQ_ORDER: dict[tuple[int, torch.device], torch.Tensor] = {}


def dq_order(k: int, device: torch.device) -> torch.Tensor:
    """The K offsets in the dq loop's MMA order (_dq_tile's `perm`, within each block of 32): position p of a row in
    that order holds K offset dq_order[p]. Cached per (K, device)."""
    key = (k, torch.device(device))
    if key not in _DQ_ORDER:
        pos = torch.arange(k, device=device)
        _DQ_ORDER[key] = ((pos // 32) * 32 + ((pos >> 1) & 3) * 8 + (pos & 1) * 4 + ((pos >> 3) & 1)
                          + ((pos >> 4) & 1) * 2)
    return _DQ_ORDER[key]


def mxfp4_early_bias_on(tokens: int) -> bool:
    """Whether an MXFP4 expert GEMM launch of `tokens` tokens loads its epilogue's inputs before the K loop (EB)."""
    return bool(MXFP4_EARLY_BIAS) and tokens <= MXFP4_EARLY_BIAS_MAX_TOKENS


def mxfp4_down_early(gemm: str) -> bool:
    """Whether an expert GEMM launch ("gate_up" / "down") lets the next kernel launch right after its PDL wait
    through the DE flag: the down GEMM with MXFP4_DOWN_EARLY (gate_up's early trigger is MXFP4_PDL 2's)."""
    return gemm == "down" and bool(MXFP4_DOWN_EARLY)


def _for_topk(table: dict, topk: int) -> dict:
    """`table`'s entry for `topk` ({} if none): int keys, or string keys where a JSON override (gpu_step_ablation's
    --compare "mx.NAME") set the table whole."""
    return table.get(topk) or table.get(str(topk)) or {}


def gemv4_tiles(topk: int) -> dict[str, tuple[int, int, int, int]]:
    """The gemv4 loop's (BN, BK, warps, stages) per GEMM at one token routed to `topk` experts: the top_k's entry
    of MXFP4_CONFIG_GEMV4_BY_TOPK over MXFP4_CONFIG_GEMV4."""
    return {**MXFP4_CONFIG_GEMV4, **{g: tuple(v) for g, v in _for_topk(MXFP4_CONFIG_GEMV4_BY_TOPK, topk).items()}}


def dq_class(tokens: int, topk: int = 0) -> tuple[dict[str, tuple[int, int, int, int]], int, int, int]:
    """The dq loop's (tiles, variant, M sub-tile, register cap) for a launch of `tokens` tokens routed to `topk`
    experts each: its batch class in MXFP4_CONFIG_DQ_T (with that top_k's entries of MXFP4_CONFIG_DQ_T_BY_TOPK over
    it) over MXFP4_CONFIG_DQ, DQ_VARIANT and DQ_BMQ ("maxnreg": ptxas' register cap
    a thread, so that more programs fit an SM; 0 = none)."""
    by = {int(t): c for t, c in _for_topk(MXFP4_CONFIG_DQ_T_BY_TOPK, topk).items()}
    for t in sorted(set(MXFP4_CONFIG_DQ_T) | set(by)):
        if tokens <= t:
            # a top_k's own class (it may split a shared one: its key need not be one of MXFP4_CONFIG_DQ_T's) over
            # the shared class that holds it
            shared = next((MXFP4_CONFIG_DQ_T[u] for u in sorted(MXFP4_CONFIG_DQ_T) if u >= t), {})
            c = {**shared, **by.get(t, {})}
            tiles = {**MXFP4_CONFIG_DQ, **{g: tuple(c[g]) for g in ("gate_up", "down") if g in c}}
            return tiles, int(c.get("variant", DQ_VARIANT)), int(c.get("bmq", DQ_BMQ)), int(c.get("maxnreg", 0))
    return MXFP4_CONFIG_DQ, DQ_VARIANT, DQ_BMQ, 0


def pick_impl(tokens: int, scan: bool, fast: bool) -> str:
    """The inner loop moe_mxfp4 runs for a launch of `tokens` tokens (scan: decode-size routing; fast: CUDA with
    bf16 activations): GEMV_IMPL up to GEMV_MAX_TOKENS, MMA_IMPL for the other scan launches and for sorted ones
    up to DQ_SORTED_MAX_TOKENS, SORTED_IMPL past that (prefill); "mma" / "gemv2" where the PTX loops cannot run."""
    if scan and tokens <= GEMV_MAX_TOKENS:
        return GEMV_IMPL if fast or GEMV_IMPL in ("gemv", "gemv2", "gemv4") else "gemv2"  # dq: CUDA only
    if not fast:
        return "mma"
    return MMA_IMPL if scan or tokens <= DQ_SORTED_MAX_TOKENS else SORTED_IMPL


def moe_mxfp4(
    x: torch.Tensor,
    gate_up_blocks: torch.Tensor,
    gate_up_scales: torch.Tensor,
    gate_up_bias: torch.Tensor,
    down_blocks: torch.Tensor,
    down_scales: torch.Tensor,
    down_bias: torch.Tensor,
    topi: torch.Tensor,
    topw: torch.Tensor,
    alpha: float,
    limit: float,
    counter: torch.Tensor | None = None,
    compact: bool = True,
    impl: str | None = None,
    fold: bool = False,
) -> torch.Tensor:
    """Routed MXFP4 experts for x (T, H), routing (T, k) -> weighted per (token, slot) outputs (T*k, H).

    gate_up_blocks [E, 2I, H/32, 16], gate_up_scales [E, 2I, H/32], down_blocks [E, H, I/32, 16],
    down_scales [E, H, I/32] (uint8, contiguous); biases [E, 2I] and [E, H]. impl: a key of IMPLS forces the inner
    loop (tests, benchmarks; "dqa" the Gluon loop, scan mode on the full grid only); None lets `pick_impl` choose it
    (GEMV_IMPL for <= GEMV_MAX_TOKENS tokens in decode, MMA_IMPL for the other decode launches and sorted ones up to
    DQ_SORTED_MAX_TOKENS on CUDA bf16, SORTED_IMPL past that, "mma" off CUDA; then DQA_MIN_TOKENS..DQA_MAX_TOKENS
    turns dq into "dqa").
    """
    tokens, hidden = x.shape
    k = topi.shape[1]
    experts, n2 = gate_up_blocks.shape[0], gate_up_blocks.shape[1]
    plan = routing_plan(topi, experts, compact)
    fast = x.dtype == torch.bfloat16 and x.is_cuda
    few = plan.scan and tokens <= GEMV_MAX_TOKENS
    if impl is None:
        impl = pick_impl(tokens, plan.scan, fast)
    scan_full = plan.scan and not plan.compact
    if impl in ("dq", "dqf") and scan_full and DQA_MIN_TOKENS <= tokens <= DQA_MAX_TOKENS:
        impl = "dqa"
    if impl == "dqa":
        if not (fast and scan_full):
            raise ValueError("the MXFP4 'dqa' loop (Gluon, Hopper) runs scan-mode decode on the full expert grid "
                             "(not compact) with bf16 activations on CUDA only")
        return _moe_dqa(x, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias, topw,
                        alpha, limit, counter, plan, k, fold)
    dq = impl in ("dq", "dqf")
    if dq and not fast:
        raise ValueError(f"the MXFP4 '{impl}' loop (inline PTX decode) runs on CUDA with bf16 activations only")
    if fold and impl == "dq":
        impl = "dqf"  # every scale <= 128: one multiply by 2^(s-1) instead of 2^126 then 2^(s-127)
    gemv = impl in ("gemv", "gemv2", "gemv4")
    if gemv and not plan.scan:
        raise ValueError("the MXFP4 gemv loop is for decode (scan mode) only")
    if impl == "scaled" and x.dtype != torch.bfloat16:
        raise ValueError("the MXFP4 'scaled' loop (tl.dot_scaled) takes bf16 activations")
    bm = _p2(tokens) if gemv else plan.bm
    if not gemv and not plan.scan:
        bm = 64
    act = torch.empty((plan.pairs, n2 // 2), dtype=x.dtype, device=x.device)
    out = torch.empty((plan.pairs, hidden), dtype=x.dtype, device=x.device)
    rw = topw.reshape(-1)
    cnt = counter if counter is not None else plan.flat
    pdl = MXFP4_PDL if plan.scan and tokens == 1 and pdl_launch(tokens) else 0  # multi-token PDL: bf16 measured only
    variant, sub, maxnreg = DQ_VARIANT, DQ_BMQ, 0
    if dq and few:
        table = MXFP4_CONFIG_DQ1
    elif dq:
        table, variant, sub, maxnreg = dq_class(tokens, k)
    elif impl == "gemv4":
        table = gemv4_tiles(k)
    else:
        table = MXFP4_CONFIG_GEMV if gemv else (MXFP4_CONFIG_FEW if plan.compact else MXFP4_CONFIG)
    # variant bit 3: down reads its activations in dq's K order, as gate_up's epilogue writes them (PERM_OUT: whole
    # blocks of 32 a gate_up tile, so BN % 64 == 0); bit 4: gate_up reads its input so too (one gather first). Scan
    # mode only.
    down_xperm = (dq and plan.scan and (bool(variant & 8) or tokens <= DQ_XPERM_MAX_TOKENS)
                  and table["gate_up"][0] % 64 == 0)
    gu_xperm = down_xperm and bool(variant & 16)
    for name, src, wb, ws, bias, dst, n in (
        ("gate_up", x, gate_up_blocks, gate_up_scales, gate_up_bias, act, n2),
        ("down", act, down_blocks, down_scales, down_bias, out, hidden),
    ):
        bn, bk, warps, stages = table[name]
        if dq and not plan.scan:
            bn = min(bn, 64)  # sorted mode's 64-row M tiles: a wider N tile spills registers
        kdim = src.shape[1]
        if kdim % 32:
            raise ValueError(f"MXFP4 GEMM needs K % 32 == 0, got K={kdim}")
        bk = min(bk, max(32, _p2(kdim)))
        if impl == "gemv4":
            bn = min(bn, max(16, 128 // bm))  # the rows' partial sums: a wider N tile spills registers past 2 rows
        gu = name == "gate_up"
        if dq:
            wb = wb.view(torch.int16)  # the dq loop reads 16-bit halves of the blocks' words
        elif impl == "gemv4":
            wb = wb.view(torch.int32)  # gemv4 reads the blocks' 32-bit words
        dqv = bmq = 0
        if dq:
            dqv = variant & (7 if kdim % bk == 0 and n % bn == 0 else 3)  # bit 2 only where the tiles divide
            if down_xperm and not gu:
                dqv |= 8
            if gu_xperm and gu:  # gate_up's input gathered into dq's K order
                dqv |= 8
                src = src.index_select(1, dq_order(kdim, src.device))
            bmq = sub if plan.scan and 16 <= sub < bm else 0
        _moe_mxfp4_kernel[(plan.grid_rows, triton.cdiv(n, bn))](
            src, wb, ws, bias, plan.flat, plan.rows, plan.offs, rw, dst, cnt,
            plan.pairs, n, kdim, src.stride(0), wb.stride(0), ws.stride(0), bias.stride(0), dst.stride(0),
            alpha, limit,
            TOPK=k, GATE_UP=gu, SCAN=plan.scan, PB=plan.pb, COUNT=counter is not None and gu, COMPACT=plan.compact,
            EPAD=plan.epad, BM=bm, BN=bn, BK=bk, FAST=fast, IMPL=IMPLS[impl], PDL=pdl, DQV=dqv, BMQ=bmq,
            EB=mxfp4_early_bias_on(x.shape[0]), DE=mxfp4_down_early(name), PERM_OUT=down_xperm and gu,
            num_warps=warps, num_stages=stages, **_pdl_kw(pdl), **({"maxnreg": maxnreg} if maxnreg else {}),
        )
    return out


def _moe_dqa(x, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias, topw, alpha,
             limit, counter, plan, k, fold) -> torch.Tensor:
    """moe_mxfp4 with the "dqa" loop (mxfp4_dq_ws.dqa_gemm) for both GEMMs: same inputs, epilogues and outputs."""
    from bench.engines.graph import mxfp4_dq_ws

    hidden = x.shape[1]
    experts, n2 = gate_up_blocks.shape[0], gate_up_blocks.shape[1]
    act = torch.empty((plan.pairs, n2 // 2), dtype=x.dtype, device=x.device)
    out = torch.empty((plan.pairs, hidden), dtype=x.dtype, device=x.device)
    rw = topw.reshape(-1)
    cnt = counter if counter is not None else plan.flat
    for name, src, wb, ws, bias, dst, n in (
        ("gate_up", x, gate_up_blocks, gate_up_scales, gate_up_bias, act, n2),
        ("down", act, down_blocks, down_scales, down_bias, out, hidden),
    ):
        bn, bk, warps, unit = MXFP4_CONFIG_DQA[name]
        if src.shape[1] % bk:
            bk = 32  # K is a multiple of 32
        mxfp4_dq_ws.dqa_gemm(src, wb, ws, bias, plan.flat, rw, dst, cnt, plan.pairs, experts, n, k, alpha, limit,
                             name == "gate_up", counter is not None and name == "gate_up", plan.bm,
                             (bn, bk, warps, unit), DQA_MAXNREG, fold, ring=DQA_RING, ring_scales=DQA_RING_SCALES)
    return out
