"""Triton MoE expert GEMMs of the `graph` engine for MXFP4 weights (the released gpt-oss layout, see
bench/models/mxfp4.py): the counterpart of `kernels.moe` for experts held as blocks + scales.

One program per (expert, N tile) reads that tile of the expert's blocks (uint8, two e2m1 codes per byte) and
e8m0 scales once, decodes them in registers to the activation dtype, and runs `tl.dot` (bf16 MMA on Hopper)
against every row routed to the expert. gate_up applies the clamped SwiGLU in its epilogue, down the bias and
routing weight, exactly like the bf16 kernel. Decode uses scan mode (each program finds its rows in the (T, k)
routing table, compact grid when there are fewer pairs than experts), prefill an expert-sorted row list. Every
step-dependent value lives in device memory, so a decode step with these kernels is CUDA-graph capturable.
Runs under TRITON_INTERPRET=1 on CPU for tests (tests/test_mxfp4.py).
"""

# ruff: noqa: SIM102, SIM108  (Triton JIT code keeps explicit if-blocks on constexpr flags)
from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl


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
def _moe_mxfp4_kernel(
    x_ptr, wb_ptr, ws_ptr, bias_ptr, topi_ptr, rows_ptr, offs_ptr, rw_ptr, out_ptr, cnt_ptr,
    P, N, K, stride_x, stride_wbe, stride_wse, stride_be, stride_o, alpha, limit,
    TOPK: tl.constexpr, GATE_UP: tl.constexpr, SCAN: tl.constexpr, PB: tl.constexpr, COUNT: tl.constexpr,
    COMPACT: tl.constexpr, EPAD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    FAST: tl.constexpr,
):
    nb = tl.program_id(1)
    offs_n = nb * BN + tl.arange(0, BN)
    nmask = offs_n < N
    mm = tl.arange(0, BM)
    if SCAN:
        p = tl.arange(0, PB)
        pe = tl.load(topi_ptr + p, mask=p < P, other=-1)
        if COMPACT:
            slot = tl.program_id(0)
            ee = tl.arange(0, EPAD)
            present = tl.max((pe[None, :] == ee[:, None]).to(tl.int32), axis=1)
            prank = tl.cumsum(present, axis=0) - 1
            e = tl.sum(tl.where((present > 0) & (prank == slot), ee, 0), axis=0)
            live = (slot < tl.sum(present, axis=0)).to(tl.int32)
            hit = (pe == e).to(tl.int32) * live
        else:
            e = tl.program_id(0)
            hit = (pe == e).to(tl.int32)
        cnt = tl.sum(hit, axis=0)
        rank = tl.cumsum(hit, axis=0) - 1
        sel = (rank[None, :] == mm[:, None]) & (hit[None, :] > 0)
        scan_rows = tl.sum(tl.where(sel, p[None, :], 0), axis=1)
        start = 0
        end = cnt
    else:
        e = tl.program_id(0)
        start = tl.load(offs_ptr + e)
        end = tl.load(offs_ptr + e + 1)
    if COUNT:
        if nb == 0:
            if end > start:
                tl.atomic_add(cnt_ptr, 1)
    wb_base = wb_ptr + e.to(tl.int64) * stride_wbe + offs_n[None, :].to(tl.int64) * (K // 2)
    ws_base = ws_ptr + e.to(tl.int64) * stride_wse + offs_n.to(tl.int64) * (K // 32)
    if SCAN:  # every row of the expert fits one M tile (T <= SCAN_MAX_TOKENS)
        _mxfp4_tile(x_ptr, wb_base, ws_base, bias_ptr, rw_ptr, out_ptr, e, scan_rows, mm < end, N, K, stride_x,
                    stride_be, stride_o, alpha, limit, offs_n, nmask, TOPK, GATE_UP, BM, BN, BK, FAST)
    else:
        for m0 in range(start, end, BM):
            rm = m0 + mm
            rmask = rm < end
            pair = tl.load(rows_ptr + rm, mask=rmask, other=0)
            _mxfp4_tile(x_ptr, wb_base, ws_base, bias_ptr, rw_ptr, out_ptr, e, pair, rmask, N, K, stride_x,
                        stride_be, stride_o, alpha, limit, offs_n, nmask, TOPK, GATE_UP, BM, BN, BK, FAST)


@triton.jit
def _e2m1_f16(code):
    """e2m1 codes (int32) -> fp16 holding value * 2^-14, exactly, in three integer ops: the sign goes to bit 15
    and exponent+mantissa (3 bits) to bits 11..9, so exponent field e and top mantissa bit m give
    (1 + m/2) * 2^(e-15) for e >= 1 and the subnormal m * 2^-15 for e = 0: the e2m1 value times 2^-14."""
    bits = ((code & 8) << 12) | ((code & 7) << 9)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _mxfp4_tile(
    x_ptr, wb_base, ws_base, bias_ptr, rw_ptr, out_ptr, e, pair, rmask, N, K, stride_x, stride_be, stride_o,
    alpha, limit, offs_n, nmask, TOPK: tl.constexpr, GATE_UP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, FAST: tl.constexpr,
):
    """One M tile of rows `pair` (masked by rmask) against the expert's N tile: decode, MMA, epilogue, store.

    Per block of 32 weights (16 bytes of a row, one scale): byte j holds weights 2j (low nibble) and 2j+1 (high
    nibble), so the low nibbles multiply the even activations and the high nibbles the odd ones (two MMAs, no
    interleave in registers); weight tiles are loaded K-major ([16, BN], 16 contiguous bytes per row) and the
    block's scale multiplies the fp32 partial product of the block ([BM, BN]), not every weight. FAST (CUDA,
    bf16 activations): codes decode to fp16 by bit placement (value * 2^-14, folded into the scale) and the MMA
    runs in fp16; otherwise (the CPU interpreter) decode is float arithmetic in the activation dtype."""
    nb = tl.program_id(1)
    KG = K // 32
    if GATE_UP:
        xrow = pair // TOPK
    else:
        xrow = pair
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    j16 = tl.arange(0, 16)
    xbase = x_ptr + xrow[:, None] * stride_x
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
    acc += tl.load(bias_ptr + e * stride_be + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if GATE_UP:
        gate, up = tl.split(tl.reshape(acc, (BM, BN // 2, 2)))
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        glu = gate * tl.sigmoid(gate * alpha)
        y = (up + 1.0) * glu
        offs_o = nb * (BN // 2) + tl.arange(0, BN // 2)
        omask = rmask[:, None] & (offs_o < N // 2)[None, :]
        tl.store(out_ptr + pair[:, None] * stride_o + offs_o[None, :], y.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        rw = tl.load(rw_ptr + pair, mask=rmask, other=0.0).to(tl.float32)
        y = acc.to(out_ptr.dtype.element_ty).to(tl.float32) * rw[:, None]
        omask = rmask[:, None] & nmask[None, :]
        tl.store(out_ptr + pair[:, None] * stride_o + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=omask)


MOE_COMPACT = True
SCAN_MAX_TOKENS = 64
# (BN, BK, num_warps, num_stages) per GEMM; BK is a multiple of 32 (one scale per 32 values).
MXFP4_CONFIG: dict[str, tuple[int, int, int, int]] = {"gate_up": (128, 128, 8, 3), "down": (128, 128, 8, 3)}
MXFP4_CONFIG_FEW: dict[str, tuple[int, int, int, int]] = {"gate_up": (64, 128, 4, 3), "down": (64, 128, 4, 3)}
# MOE_MXFP4_TILES='{"few": {"gate_up": [BN, BK, warps, stages], ...}, "full": {...}}' overrides them (experiments,
# or the tiles scripts/gpu_mxfp4.py tuned in the same session)
TILES_ENV = "MOE_MXFP4_TILES"
if os.environ.get(TILES_ENV):
    _tiles = json.loads(os.environ[TILES_ENV])
    MXFP4_CONFIG_FEW.update({k: tuple(v) for k, v in _tiles.get("few", {}).items()})
    MXFP4_CONFIG.update({k: tuple(v) for k, v in _tiles.get("full", {}).items()})


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
) -> torch.Tensor:
    """Routed MXFP4 experts for x (T, H), routing (T, k) -> weighted per (token, slot) outputs (T*k, H).

    gate_up_blocks [E, 2I, H/32, 16], gate_up_scales [E, 2I, H/32], down_blocks [E, H, I/32, 16],
    down_scales [E, H, I/32] (uint8, contiguous); biases [E, 2I] and [E, H].
    """
    tokens, hidden = x.shape
    k = topi.shape[1]
    experts, n2 = gate_up_blocks.shape[0], gate_up_blocks.shape[1]
    inter = n2 // 2
    pairs = tokens * k
    flat = topi.reshape(-1)
    scan = tokens <= SCAN_MAX_TOKENS
    compact = scan and compact and MOE_COMPACT and pairs < experts
    if scan:
        bm = max(16, _p2(tokens))
        rows = offs = flat
    else:
        bm = 64
        sorted_e, rows = torch.sort(flat.to(torch.int64), stable=True)
        bounds = torch.arange(experts + 1, device=x.device, dtype=sorted_e.dtype)
        offs = torch.searchsorted(sorted_e, bounds).to(torch.int32)
        rows = rows.to(torch.int32)
    act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    out = torch.empty((pairs, hidden), dtype=x.dtype, device=x.device)
    rw = topw.reshape(-1)
    count = counter is not None
    cnt = counter if counter is not None else flat
    for name, src, wb, ws, bias, dst, n in (
        ("gate_up", x, gate_up_blocks, gate_up_scales, gate_up_bias, act, n2),
        ("down", act, down_blocks, down_scales, down_bias, out, hidden),
    ):
        bn, bk, warps, stages = (MXFP4_CONFIG_FEW if compact else MXFP4_CONFIG)[name]
        kdim = src.shape[1]
        if kdim % 32:
            raise ValueError(f"MXFP4 GEMM needs K % 32 == 0, got K={kdim}")
        bk = min(bk, max(32, _p2(kdim)))
        gu = name == "gate_up"
        _moe_mxfp4_kernel[(pairs if compact else experts, triton.cdiv(n, bn))](
            src, wb, ws, bias, flat, rows, offs, rw, dst, cnt,
            pairs, n, kdim, src.stride(0), wb.stride(0), ws.stride(0), bias.stride(0), dst.stride(0),
            alpha, limit,
            TOPK=k, GATE_UP=gu, SCAN=scan, PB=_p2(pairs), COUNT=count and gu, COMPACT=compact, EPAD=_p2(experts),
            BM=bm, BN=bn, BK=bk, FAST=x.dtype == torch.bfloat16 and x.is_cuda, num_warps=warps,
            num_stages=stages,
        )
    return out
