"""The gemvh loop's inline PTX (bench/engines/graph/mxfp4_kernels._gemvh_asm) run on CPU by a small evaluator of the
few PTX instructions it uses, so that its decode is checked in `make test` too (tests/test_mxfp4_gpu.py runs the
compiled loop on the GPU machine only): every code in every nibble position, both decode variants."""

from __future__ import annotations

import numpy as np
import pytest

from bench.engines.graph import mxfp4_kernels as mk

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _e2m1(code: int) -> float:
    return -E2M1[code & 7] if code & 8 else E2M1[code & 7]


def _f16x2(word: int) -> tuple[float, float]:
    lo, hi = np.array([word], dtype=np.uint32).view(np.float16).astype(np.float64)
    return float(lo), float(hi)


def run_ptx(asm: str, args: dict[int, int]) -> int:
    """$0 of `asm` given $1.. (32-bit registers); integer ops wrap at 32 bits, fma.rn.f16x2 rounds once per half."""
    regs = {f"${i}": v & 0xFFFFFFFF for i, v in args.items()}

    def val(tok: str) -> int:
        return regs[tok] if tok in regs else int(tok, 0) & 0xFFFFFFFF

    for stmt in asm.replace("{", "").replace("}", "").split(";"):
        stmt = stmt.strip()
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        dst, *src = (t.strip() for t in rest.split(","))
        a = [val(t) for t in src] if op != "shl.b32" and op != "shr.u32" else [val(src[0]), int(src[1])]
        if op == "mov.b32":
            r = a[0]
        elif op == "shl.b32":
            r = a[0] << a[1]
        elif op == "shr.u32":
            r = a[0] >> a[1]
        elif op == "and.b32":
            r = a[0] & a[1]
        elif op == "or.b32":
            r = a[0] | a[1]
        elif op == "mul.lo.u32":
            r = a[0] * a[1]
        elif op == "mad.lo.u32":
            r = a[0] * a[1] + a[2]
        elif op == "fma.rn.f16x2":
            x, y, z = (np.array(_f16x2(v)) for v in a)
            r = int(np.array((x * y + z).astype(np.float16)).view(np.uint32)[0])
        else:
            raise AssertionError(f"the evaluator does not know {op!r}: extend it with the loop's new instruction")
        regs[dst] = r & 0xFFFFFFFF
    return regs["$0"]


@pytest.mark.parametrize("variant", [0, 1])
def test_gemvh_ptx_decodes_every_code_of_a_word_as_e2m1_times_2_to_the_minus_14(variant):
    """One word through the loop's asm with activation pair p = (1, 1) and the others 0 gives codes (p, p + 4) of
    the word as fp16 e2m1 * 2^-14, exactly; words cover every code in every position (all 16 repeated nibbles, then
    random words), and a running sum passed in is added."""
    asm = mk._gemvh_asm(variant)
    rng = np.random.default_rng(variant)
    words = [int(f"{c:x}" * 8, 16) for c in range(16)] + [int(w) for w in rng.integers(0, 2**32, 400)]
    one = 0x3C003C00  # fp16 (1.0, 1.0)
    for w in words:
        for p in range(4):
            pairs = {3 + q: one if q == p else 0 for q in range(4)}
            lo, hi = _f16x2(run_ptx(asm, {1: 0, 2: w, **pairs}))
            want = (_e2m1((w >> 4 * p) & 15), _e2m1((w >> (4 * p + 16)) & 15))
            assert (lo * 2**14, hi * 2**14) == want, (hex(w), p)
    # all four pairs and a running sum: (1, 1) + sum_p decode(p) * (p + 1)
    w = words[20]
    pairs = {3 + q: int(np.array([q + 1.0, q + 1.0], dtype=np.float16).view(np.uint32)[0]) for q in range(4)}
    lo, hi = _f16x2(run_ptx(asm, {1: one, 2: w, **pairs}))
    want_lo = 1 + sum(_e2m1((w >> 4 * p) & 15) * 2.0**-14 * (p + 1) for p in range(4))
    want_hi = 1 + sum(_e2m1((w >> (4 * p + 16)) & 15) * 2.0**-14 * (p + 1) for p in range(4))
    assert abs(lo - want_lo) <= 2**-10 and abs(hi - want_hi) <= 2**-10  # one fp16 rounding a FMA near 1


def test_the_evaluator_fails_a_wrong_decode():
    """A mask that drops the top magnitude bit must be caught (the check above is not vacuous)."""
    asm = mk._gemvh_asm(0).replace("0x0E000E00", "0x06000600", 1)
    w = 0x000F000F  # code 15 at position 0 and 4: -6
    lo, _ = _f16x2(run_ptx(asm, {1: 0, 2: w, 3: 0x3C003C00, 4: 0, 5: 0, 6: 0}))
    assert lo * 2**14 != _e2m1(15)


def test_gemvh_is_cuda_only_and_picks_gemv2_off_cuda(monkeypatch):
    """GEMV_IMPL "gemvh" (inline PTX) falls back to gemv2 for launches the PTX cannot run (CPU, float32), and a
    forced impl="gemvh" off CUDA says why; its tiles per top_k come from the GEMVH tables."""
    import torch

    monkeypatch.setattr(mk, "GEMV_IMPL", "gemvh")
    assert mk.pick_impl(1, True, True) == "gemvh"
    assert mk.pick_impl(1, True, False) == "gemv2"
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMVH", {"gate_up": (32, 512, 2, 1), "down": (32, 1024, 4, 1)})
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMVH_BY_TOPK", {"2": {"down": [16, 512, 1, 1]}})
    assert mk.gemv4_tiles(2, "gemvh") == {"gate_up": (32, 512, 2, 1), "down": (16, 512, 1, 1)}
    assert mk.gemv4_tiles(4, "gemvh") == mk.MXFP4_CONFIG_GEMVH
    x = torch.zeros(1, 64)
    blocks, scales = torch.zeros(2, 64, 2, 16, dtype=torch.uint8), torch.zeros(2, 64, 2, dtype=torch.uint8)
    bias = torch.zeros(2, 64)
    topi, topw = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 1)
    with pytest.raises(ValueError, match="'gemvh' loop .* CUDA"):
        mk.moe_mxfp4(x, blocks, scales, bias, blocks[:, :, :1].contiguous(), scales, bias, topi, topw, 1.702, 7.0,
                     impl="gemvh")
