"""The MXFP4 expert loop "dqa" of the `graph` engine (round 7): a Gluon (triton.experimental.gluon) Hopper kernel
for decode launches in scan mode, the counterpart of `mxfp4_kernels._dq_tile`'s loop with the MMA made asynchronous.

One program per (expert, N tile), as `_moe_mxfp4_kernel` in scan mode (non-compact grid): it finds its expert's
(token, slot) rows in the flat routing table (the same rule as kernels.routed_rows_at), then per K step of BK:
- the weights' 16-bit halves (4 e2m1 codes each, 8 halves = one 32-value block), the e8m0 scales and the rows'
  activations are loaded LOOK steps ahead into registers (plain loads, natural K order);
- the step's codes are decoded to bf16 with the dq loop's integer-multiply PTX (`_dq_asm_mul`, exact: powers of
  two) and stored, in natural K order, into one of two shared-memory tiles [BN, BK] (the wgmma A operand); the
  activations go to the matching [BM, BK] tile (the B operand, read transposed);
- one asynchronous wgmma (`warpgroup_mma(..., is_async=True)`) and `warpgroup_mma_wait(1)`: the MMA of step i
  runs while step i+1 is decoded (the dq loop waits for every MMA before the next decode).
The epilogue is kernels.moe_epilogue's: bias; gate_up the clamped SwiGLU over interleaved (gate, up) columns; down
the routing weight (bf16 rounding first, as the bf16 kernel).

Gluon is imported lazily (`available()`): the CPU venv's triton may lack it or differ; the kernel is CUDA-only and
covered by tests/test_mxfp4_gpu.py on the device.
"""

# ruff: noqa: SIM102, SIM108  (Gluon JIT code keeps explicit if-blocks on constexpr flags)
from __future__ import annotations

import functools

import torch
import triton


@functools.cache
def _build():
    """Define the Gluon kernel (imports triton.experimental.gluon; raises ImportError where it is missing)."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from bench.engines.graph.mxfp4_kernels import _dq_asm_mul

    asm = (_dq_asm_mul(False), _dq_asm_mul(True))

    @gluon.jit
    def _add(a, b):
        return a + b

    @gluon.jit
    def _dqa_load(wrow, srow, xb, k0, K, nmask, rmask, hh, gg, kx,
                  NG: gl.constexpr, BK: gl.constexpr, EVEN: gl.constexpr, HW: gl.constexpr):
        """The weights' [BN, NG, HW] (HW = 4 32-bit words or 8 16-bit halves a block), scales [BN, NG] and
        activations [BM, BK] of the step at K offset k0 (clamped to the last step: the look-ahead past the end
        re-reads it)."""
        k0 = gl.minimum(k0, K - BK)
        g = k0 // 32 + gg
        wp = wrow[:, None, None] + (g * HW)[None, :, None] + hh[None, None, :]
        sp = srow[:, None] + g[None, :]
        xp = xb + (k0 + kx)[None, :]
        if EVEN:
            wd = gl.load(wp)
            sc = gl.load(sp)
        else:
            wd = gl.load(wp, mask=nmask[:, None, None], other=0)
            sc = gl.load(sp, mask=nmask[:, None], other=127)
        xt = gl.load(xp, mask=rmask[:, None], other=0.0)
        return wd, sc, xt

    @gluon.jit
    def _dqa_step(wd, sc, xt, w_t, x_t, acc, USE: gl.constexpr, ASM: gl.constexpr, BM: gl.constexpr,
                  BN: gl.constexpr, BK: gl.constexpr, NG: gl.constexpr, W_SL: gl.constexpr, FOLD: gl.constexpr,
                  W32: gl.constexpr):
        """Decode one step's weights to bf16 into w_t, its activations into x_t, and issue the asynchronous MMA."""
        s = sc.to(gl.int32)
        if FOLD:  # every scale <= 128: 2^(s - 127) * 2^126 = 2^(s - 1), one multiply in the decode
            sbits = (s + 126) << 7
        else:  # bf16 2^(s - 127); s = 0 the subnormal 2^-127
            sbits = gl.where(s == 0, 64, s << 7)
        if W32:  # 32-bit words: register j = code j of the word's two halves, a bf16 pair of the tile
            sb = gl.broadcast((sbits * 65537)[:, :, None], wd)[0]  # in both halves of a word
            o0, o1, o2, o3 = gl.inline_asm_elementwise(
                ASM, "=r,=r,=r,=r,r,r", [wd, sb], dtype=(gl.int32,) * 4, is_pure=True, pack=1)
        else:  # 16-bit halves, two a register (pack 2): bf16 outputs
            sb = gl.broadcast(sbits.to(gl.int16).to(gl.bfloat16, bitcast=True)[:, :, None], wd)[0]
            o0, o1, o2, o3 = gl.inline_asm_elementwise(
                ASM, "=r,=r,=r,=r,r,r", [wd, sb], dtype=(gl.bfloat16,) * 4, is_pure=True, pack=2)
        # W32: o_j[n, g, c] = code j of word c's halves h = 2c, 2c + 1 (K = 32g + 4h + j, j = a + 2b) as a bf16
        # pair; else o_j[n, g, h] = code j of half h. The tile's K order is (g, j, h), so the decoded registers are
        # pairs of adjacent bf16 there; the activations are put in the same order (a permute of their in-thread
        # layout)
        t = gl.join(gl.join(o0, o1), gl.join(o2, o3))  # [BN, NG, 4 (c) or 8 (h), 2 (a), 2 (b)]
        xq = gl.reshape(gl.permute(gl.reshape(xt, (BM, NG, 8, 4)), (0, 1, 3, 2)), (BM, BK))
        if W32:
            w_t.store(gl.reshape(gl.permute(t, (0, 1, 4, 3, 2)), (BN, BK // 2)))
            x_t.store(xq)
            fence_async_shared()
            w_b = w_t._reinterpret(gl.bfloat16, [BN, BK], W_SL)  # the same bytes (same swizzle width)
        else:
            w_t.store(gl.reshape(gl.permute(t, (0, 1, 4, 3, 2)), (BN, BK)))
            x_t.store(xq)
            fence_async_shared()
            w_b = w_t
        return warpgroup_mma(w_b, x_t.permute((1, 0)), acc, use_acc=USE, is_async=True)

    @gluon.jit
    def _dqb_issue(w_slot, x_slot, s_slot, wrow, xb, ws32, soff, k0, K, nmask, rmask, hh, gg, kx,
                   NG: gl.constexpr, BK: gl.constexpr, EVEN: gl.constexpr, HW: gl.constexpr, SCA: gl.constexpr):
        """cp.async of the step at K offset k0 (clamped to the last step) into a ring slot: the weights
        [BN, NG, HW], the rows' activations [BM, BK] and (SCA) each row's 32-bit word holding the step's two scale
        bytes (NG 2 and an even byte offset: they never straddle a word); one commit group."""
        k0 = gl.minimum(k0, K - BK)
        g = k0 // 32 + gg
        wp = wrow[:, None, None] + (g * HW)[None, :, None] + hh[None, None, :]
        if EVEN:
            async_copy.async_copy_global_to_shared(w_slot, wp)
        else:
            async_copy.async_copy_global_to_shared(w_slot, wp, mask=nmask[:, None, None])
        async_copy.async_copy_global_to_shared(x_slot, xb + (k0 + kx)[None, :], mask=rmask[:, None])
        if SCA:
            async_copy.async_copy_global_to_shared(s_slot, ws32 + ((soff + k0 // 32) >> 2), mask=nmask)
        async_copy.commit_group()

    @gluon.jit
    def _dqb_words(s_slot, soff, k0, K, gg, NL: gl.constexpr, BK: gl.constexpr):
        """The step's scales [BN, NG] from the ring's 32-bit words (byte (soff + k0 / 32) % 4 and the next)."""
        k0 = gl.minimum(k0, K - BK)
        w = s_slot.load(NL)
        sh = ((soff + k0 // 32) & 3).to(gl.int32) * 8
        return (w[:, None] >> (sh[:, None] + 8 * gg[None, :])) & 255

    @gluon.jit
    def _dqb_scales(srow, k0, K, nmask, gg, BK: gl.constexpr, EVEN: gl.constexpr):
        """The step's scales [BN, NG] (plain loads: a row's scales of 16 steps share one 32-byte sector)."""
        k0 = gl.minimum(k0, K - BK)
        sp = srow[:, None] + (k0 // 32 + gg)[None, :]
        if EVEN:
            sc = gl.load(sp)
        else:
            sc = gl.load(sp, mask=nmask[:, None], other=127)
        return sc

    @gluon.jit
    def _dqa_kernel(
        x_ptr, wb_ptr, ws_ptr, bias_ptr, topi_ptr, rw_ptr, out_ptr, cnt_ptr,
        P, N, K, stride_x, stride_wbe, stride_wse, stride_be, stride_o, alpha, limit,
        TOPK: gl.constexpr, GATE_UP: gl.constexpr, PB: gl.constexpr, COUNT: gl.constexpr, BM: gl.constexpr,
        BN: gl.constexpr, BK: gl.constexpr, EVEN: gl.constexpr, W_SL: gl.constexpr, W_SL32: gl.constexpr,
        X_SL: gl.constexpr, ASM: gl.constexpr, FOLD: gl.constexpr = False, W32: gl.constexpr = True,
        RING: gl.constexpr = 0, SCA: gl.constexpr = False, OUTST: gl.constexpr = 1,
    ):
        NG: gl.constexpr = BK // 32
        HW: gl.constexpr = 4 if W32 else 8  # weight words (halves) a block
        TK: gl.constexpr = 32 if BK // 8 > 32 else BK // 8
        # layouts (4 warps): weights one block (16 bytes) a thread; activations 8 values a thread; routing rows
        WL: gl.constexpr = gl.BlockedLayout([1, 1, HW], [32 // NG, NG, 1], [4, 1, 1], [2, 1, 0])
        SL: gl.constexpr = gl.SliceLayout(2, WL)
        NL: gl.constexpr = gl.SliceLayout(1, SL)
        XL: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TK, TK], [4, 1], [1, 0])
        RL: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [4, 1], [1, 0])
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BM, 16])
        EL: gl.constexpr = gl.BlockedLayout([2, 1], [16, 2], [4, 1], [0, 1])

        e = gl.program_id(0)
        nb = gl.program_id(1)
        # the expert's rows: scan_rows[m] = the m-th (token, slot) pair routed to e (kernels.routed_rows_at)
        p1 = gl.arange(0, PB, layout=gl.BlockedLayout([1], [32], [4], [0]))
        hit1 = (gl.load(topi_ptr + p1, mask=p1 < P, other=-1) == e).to(gl.int32)
        rank = gl.convert_layout(gl.associative_scan(hit1, 0, _add) - 1, gl.SliceLayout(0, RL))
        hit = gl.convert_layout(hit1, gl.SliceLayout(0, RL))
        p = gl.convert_layout(p1, gl.SliceLayout(0, RL))
        mr = gl.arange(0, BM, layout=gl.SliceLayout(1, RL))
        sel = (rank[None, :] == mr[:, None]) & (hit[None, :] > 0)
        scan_rows = gl.sum(gl.where(sel, p[None, :], 0), axis=1)
        end = gl.sum(hit, axis=0)
        if COUNT:
            if nb == 0:
                if end > 0:
                    gl.atomic_add(cnt_ptr, 1)
        if end > 0:
            e64 = e.to(gl.int64)
            offs_n = nb * BN + gl.arange(0, BN, layout=NL)
            nmask = offs_n < N
            KG = K // 32
            wrow = wb_ptr + e64 * stride_wbe + offs_n.to(gl.int64) * (KG * HW)
            srow = ws_ptr + e64 * stride_wse + offs_n.to(gl.int64) * KG
            gg = gl.arange(0, NG, layout=gl.SliceLayout(0, SL))
            hh = gl.arange(0, HW, layout=gl.SliceLayout(0, gl.SliceLayout(1, WL)))
            pair = gl.convert_layout(scan_rows, gl.SliceLayout(1, XL))
            mx = gl.arange(0, BM, layout=gl.SliceLayout(1, XL))
            rmask = mx < end
            xrow = pair
            if GATE_UP:
                xrow = pair // TOPK
            kx = gl.arange(0, BK, layout=gl.SliceLayout(0, XL))
            xb = x_ptr + xrow.to(gl.int64)[:, None] * stride_x

            if W32:
                w_s = gl.allocate_shared_memory(gl.int32, [2, BN, BK // 2], W_SL32)
            else:
                w_s = gl.allocate_shared_memory(gl.bfloat16, [2, BN, BK], W_SL)
            x_s = gl.allocate_shared_memory(gl.bfloat16, [2, BM, BK], X_SL)
            acc = gl.zeros([BN, BM], gl.float32, layout=MMA)
            if RING > 0:
                # RING-slot shared-memory ring filled by cp.async (weights, activations and, with SCA, the scales'
                # words), RING - 1 steps ahead; without SCA the scales by plain loads one step ahead
                WRL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
                XRL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
                SRL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
                w_r = gl.allocate_shared_memory(wb_ptr.dtype.element_ty, [RING, BN, NG, HW], WRL)
                x_r = gl.allocate_shared_memory(gl.bfloat16, [RING, BM, BK], XRL)
                s_r = gl.allocate_shared_memory(gl.int32, [RING, BN], SRL)
                ws32 = ws_ptr.to(gl.pointer_type(gl.int32))
                soff = e64 * stride_wse + offs_n.to(gl.int64) * KG  # byte offset of each row's scales
                for s in gl.static_range(RING):
                    _dqb_issue(w_r.index(s), x_r.index(s), s_r.index(s), wrow, xb, ws32, soff, s * BK, K, nmask,
                               rmask, hh, gg, kx, NG, BK, EVEN, HW, SCA)
                async_copy.wait_group(RING - 1)
                wd = w_r.index(0).load(WL)
                xt = x_r.index(0).load(XL)
                if SCA:
                    sc = _dqb_words(s_r.index(0), soff, 0, K, gg, NL, BK)
                else:
                    sc = _dqb_scales(srow, 0, K, nmask, gg, BK, EVEN)
                    sc_n = _dqb_scales(srow, BK, K, nmask, gg, BK, EVEN)
                # step 0 outside the loop (use_acc False): every path to the last wait then leaves the accumulator
                # to wgmma alone (ptxas serializes the MMAs when a zero-initialised accumulator reaches that wait)
                acc = _dqa_step(wd, sc, xt, w_s.index(0), x_s.index(0), acc, False, ASM, BM, BN, BK, NG, W_SL, FOLD,
                                W32)
                acc = warpgroup_mma_wait(num_outstanding=OUTST, deps=(acc,))
                if not SCA:
                    sc = sc_n
                for i in range(1, K // BK):
                    j = (i + RING - 1) % RING  # the slot of step i - 1, read by the last step: step i + RING - 1
                    _dqb_issue(w_r.index(j), x_r.index(j), s_r.index(j), wrow, xb, ws32, soff, (i + RING - 1) * BK,
                               K, nmask, rmask, hh, gg, kx, NG, BK, EVEN, HW, SCA)
                    async_copy.wait_group(RING - 1)
                    wd = w_r.index(i % RING).load(WL)
                    xt = x_r.index(i % RING).load(XL)
                    if SCA:
                        sc = _dqb_words(s_r.index(i % RING), soff, i * BK, K, gg, NL, BK)
                    else:
                        sc_n = _dqb_scales(srow, (i + 1) * BK, K, nmask, gg, BK, EVEN)
                    acc = _dqa_step(wd, sc, xt, w_s.index(i % 2), x_s.index(i % 2), acc, True, ASM, BM, BN, BK, NG,
                                    W_SL, FOLD, W32)
                    acc = warpgroup_mma_wait(num_outstanding=OUTST, deps=(acc,))
                    if not SCA:
                        sc = sc_n
                async_copy.wait_group(0)
            else:
                # two register sets of loads (A: even steps, B: odd), each refilled right after its step is decoded, so
                # a step's loads are issued about two steps ahead; shared-memory tile i % 2 for step i
                wa, sa, xa = _dqa_load(wrow, srow, xb, 0, K, nmask, rmask, hh, gg, kx, NG, BK, EVEN, HW)
                wb, sb, xc = _dqa_load(wrow, srow, xb, BK, K, nmask, rmask, hh, gg, kx, NG, BK, EVEN, HW)
                # step 0 outside the loop (use_acc False): every path to the last wait then leaves the accumulator
                # to wgmma alone (ptxas serializes the MMAs when a zero-initialised accumulator reaches that wait)
                acc = _dqa_step(wa, sa, xa, w_s.index(0), x_s.index(0), acc, False, ASM, BM, BN, BK, NG,
                                W_SL, FOLD, W32)
                acc = warpgroup_mma_wait(num_outstanding=OUTST, deps=(acc,))
                wa, sa, xa = _dqa_load(wrow, srow, xb, 2 * BK, K, nmask, rmask, hh, gg, kx, NG, BK, EVEN, HW)
                nsteps = K // BK
                for i in range(1, nsteps - 1, 2):
                    acc = _dqa_step(wb, sb, xc, w_s.index(1), x_s.index(1), acc, True, ASM, BM, BN, BK, NG,
                                    W_SL, FOLD, W32)
                    acc = warpgroup_mma_wait(num_outstanding=OUTST, deps=(acc,))
                    wb, sb, xc = _dqa_load(wrow, srow, xb, (i + 2) * BK, K, nmask, rmask, hh, gg, kx, NG, BK, EVEN, HW)
                    acc = _dqa_step(wa, sa, xa, w_s.index(0), x_s.index(0), acc, True, ASM, BM, BN, BK, NG,
                                    W_SL, FOLD, W32)
                    acc = warpgroup_mma_wait(num_outstanding=OUTST, deps=(acc,))
                    wa, sa, xa = _dqa_load(wrow, srow, xb, (i + 3) * BK, K, nmask, rmask, hh, gg, kx, NG, BK, EVEN, HW)
                if nsteps % 2 == 0:  # the last (odd) step
                    acc = _dqa_step(wb, sb, xc, w_s.index(1), x_s.index(1), acc, True, ASM, BM, BN, BK, NG,
                                    W_SL, FOLD, W32)
                    acc = warpgroup_mma_wait(num_outstanding=OUTST, deps=(acc,))
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))

            # epilogue (kernels.moe_epilogue_at), acc [BN, BM] = (output column, row)
            y = gl.convert_layout(acc, EL)
            en = nb * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, EL))
            enm = en < N
            em = gl.arange(0, BM, layout=gl.SliceLayout(0, EL))
            emask = em < end
            epair = gl.convert_layout(scan_rows, gl.SliceLayout(0, EL))
            y = y + gl.load(bias_ptr + e64 * stride_be + en, mask=enm, other=0.0).to(gl.float32)[:, None]
            if GATE_UP:
                gate, up = gl.split(gl.permute(gl.reshape(y, (BN // 2, 2, BM)), (0, 2, 1)))  # [BN/2, BM]
                gate = gl.minimum(gate, limit)
                up = gl.minimum(gl.maximum(up, -limit), limit)
                glu = gate / (1.0 + gl.exp(-(gate * alpha)))
                r = (up + 1.0) * glu
                OL: gl.constexpr = r.type.layout
                oo = nb * (BN // 2) + gl.arange(0, BN // 2, layout=gl.SliceLayout(1, OL))
                om = gl.arange(0, BM, layout=gl.SliceLayout(0, OL))
                opair = gl.convert_layout(epair, gl.SliceLayout(0, OL))
                omask = (oo < N // 2)[:, None] & (om < end)[None, :]
                gl.store(out_ptr + opair.to(gl.int64)[None, :] * stride_o + oo[:, None],
                         r.to(out_ptr.dtype.element_ty), mask=omask)
            else:
                rw = gl.load(rw_ptr + epair, mask=emask, other=0.0).to(gl.float32)
                r = y.to(out_ptr.dtype.element_ty).to(gl.float32) * rw[None, :]
                gl.store(out_ptr + epair.to(gl.int64)[None, :] * stride_o + en[:, None],
                         r.to(out_ptr.dtype.element_ty), mask=enm[:, None] & emask[None, :])

    return gl, _dqa_kernel, asm


def available() -> bool:
    """Gluon's Hopper API imports (the card's triton 3.6); False where it does not (e.g. other triton versions)."""
    try:
        _build()
    except (ImportError, AttributeError, TypeError):
        return False
    return True


def dqa_gemm(src: torch.Tensor, wb: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor, flat: torch.Tensor,
             rw: torch.Tensor, dst: torch.Tensor, cnt: torch.Tensor, pairs: int, experts: int, n: int, topk: int,
             alpha: float, limit: float, gate_up: bool, count: bool, bm: int, tiles: tuple[int, int, int, int],
             maxnreg: int = 0, fold: bool = False, w32: bool = True, ring: int = 0, ring_scales: bool = True) -> None:
    """One expert GEMM (gate_up or down) of a scan-mode (non-compact) decode launch with the "dqa" loop.

    src (rows, K) bf16; wb (E, N, K/32, 16) uint8 blocks; ws (E, N, K/32) scales; dst written as
    _moe_mxfp4_kernel writes it. tiles = (BN, BK, warps, w32): warps must be 4 (one warpgroup); w32 (the tile's
    last entry, 2 = 32-bit words, 1 = 16-bit halves): how the blocks are read and decoded (words store the decoded
    bf16 pairs as they come; halves go through byte permutes). ring: 0 = the weights and activations loaded into
    registers about two steps ahead; >= 2 = a shared-memory ring of that many steps filled by cp.async (with
    ring_scales also the scales, as 32-bit words, where BK is 64 and their byte offsets are even)."""
    gl, kernel, asm = _build()
    bn, bk, warps, unit = tiles
    w32 = w32 and unit != 1
    kdim = src.shape[1]
    if warps != 4:
        raise ValueError(f"the dqa loop runs one warpgroup (4 warps), got {warps}")
    if ring == 1 or ring < 0:
        raise ValueError(f"the dqa loop's ring has 0 (registers) or >= 2 slots, got {ring}")
    if kdim % bk or bk % 32:
        raise ValueError(f"the dqa loop needs K % BK == 0 and BK % 32 == 0, got K={kdim}, BK={bk}")
    wv = wb.view(torch.int32 if w32 else torch.int16)
    w_sl = gl.NVMMASharedLayout.get_default_for([bn, bk], gl.bfloat16)
    # the scales through the ring as 32-bit words: two bytes a row and step at an even offset, a 4-byte-aligned base
    sca = (ring_scales and ring >= 2 and bk == 64 and (kdim // 32) % 2 == 0 and ws.stride(0) % 2 == 0
           and ws.data_ptr() % 4 == 0)
    x_sl = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.bfloat16)
    w_sl32 = gl.NVMMASharedLayout(swizzle_byte_width=w_sl.swizzle_byte_width, element_bitwidth=32, rank=2)
    kernel[(experts, triton.cdiv(n, bn))](
        src, wv, ws, bias, flat, rw, dst, cnt,
        pairs, n, kdim, src.stride(0), wv.stride(0), ws.stride(0), bias.stride(0), dst.stride(0),
        alpha, limit,
        TOPK=topk, GATE_UP=gate_up, PB=triton.next_power_of_2(pairs), COUNT=count, BM=bm, BN=bn, BK=bk,
        EVEN=n % bn == 0, W_SL=w_sl, W_SL32=w_sl32, X_SL=x_sl, ASM=asm[int(fold)], FOLD=fold, W32=w32, RING=ring,
        SCA=sca, num_warps=4,
        **({"maxnreg": maxnreg} if maxnreg else {}),
    )
