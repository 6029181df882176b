"""The MXFP4 expert loops on a CUDA device (bench/engines/graph/mxfp4_kernels.py): the inline-PTX e2m1 decode ("dq"
= decode + bf16 MMA; "dqf": the scale folded into the one multiply) and the batch-1 "gemv4" loop as compiled for
the GPU (its integer-multiply decode also runs in the interpreter cases) and round 7's Gluon loop "dqa"
(mxfp4_dq_ws.py) on random blocks. Skipped on CPU, where
the Triton interpreter cannot run PTX (tests/interpreter/mxfp4_cases.py covers the other loops). Run on the GPU
machine with `python3 -m pytest -q tests/test_mxfp4_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from bench.models import mxfp4

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (inline PTX)")


def _experts(scale_range: tuple[int, int], seed: int = 0, hidden: int = 256, inter: int = 128) -> mxfp4.Mxfp4Experts:
    """Every byte value in the blocks (all 16 codes in both nibbles), scales drawn from scale_range."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    ex = mxfp4.Mxfp4Experts(4, hidden, inter, 1.702, 7.0, device="cuda")
    for name in ("gate_up_proj_blocks", "down_proj_blocks"):
        buf = getattr(ex, name)
        buf.copy_(torch.randint(0, 256, buf.shape, generator=gen, device="cuda").to(torch.uint8))
    for name in ("gate_up_proj_scales", "down_proj_scales"):
        buf = getattr(ex, name)
        buf.copy_(torch.randint(*scale_range, buf.shape, generator=gen, device="cuda").to(torch.uint8))
    ex.gate_up_proj_bias.normal_(0, 0.1, generator=gen)
    ex.down_proj_bias.normal_(0, 0.1, generator=gen)
    return ex


def _reference(ex, x, topi, topw) -> torch.Tensor:
    """float32: dequantize (exact), then the per-expert loop; (T*k, H) per (token, slot) like moe_mxfp4."""
    k = topi.shape[1]
    out = torch.zeros((x.shape[0] * k, x.shape[1]), dtype=torch.float32, device=x.device)
    flat = topi.reshape(-1).long()
    for e in torch.unique(flat).tolist():
        pairs = torch.nonzero(flat == e).squeeze(1)
        gu, dn = ex.expert_weights(e, torch.float32)
        h = ex._apply_gate(x[pairs // k].float() @ gu + ex.gate_up_proj_bias[e].float())
        out[pairs] = (h @ dn + ex.down_proj_bias[e].float()) * topw.reshape(-1)[pairs, None].float()
    return out


CASES = [(t, k, impl, sc) for t, k in [(1, 2), (1, 4), (3, 2), (40, 4), (80, 2)]  # compact, scan, sorted
         for impl, sc in [("dq", (100, 150)), ("dqf", (100, 129))]]  # dqf needs scales <= 128
# gemv4 (integer-multiply decode, fp32 FMA; decode only): the batch-1 loop, and several rows per expert
CASES += [(t, k, "gemv4", sc) for t, k in [(1, 2), (1, 4), (3, 2)] for sc in [(100, 150), (0, 171)]]
# gemv4 at one token under each PDL mode of the expert launches (0 plain; 1 wait; 2: gate_up lets the down GEMM
# launch early, which prefetches its weight rows into L2 before its wait), several K steps (K 256, 64 a step)
CASES += [(1, 4, f"gemv4-pdl{m}", (100, 150)) for m in (0, 1, 2)]
# round 6a's dq variants (DQ_VARIANT bit 0: integer-multiply decode, bit 1: activations in natural K order reordered
# in registers, bit 2: unmasked weight loads where K % BK == 0 and N % BN == 0), M sub-tiles of 16 rows in scan mode
# (DQ_BMQ: 40 tokens top-4 over 4 experts = 40 rows an expert, 3 sub-tiles), sorted mode (80 tokens), the
# auto pick of dq for sorted decode (DQ_SORTED_MAX_TOKENS), "odd" shapes (H 320, I 96: K and N not multiples
# of the tiles, so the masked loads run), and a register cap (a class's "maxnreg")
CASES += [(t, k, f"{impl}-v{v}{extra}", sc) for t, k, impl, v, extra, sc in [
    (3, 2, "dq", 7, "", (100, 150)), (40, 4, "dq", 1, "", (100, 150)), (40, 4, "dq", 2, "-bmq16", (100, 150)),
    (40, 4, "dq", 7, "-bmq16", (100, 150)), (40, 4, "dqf", 3, "-bmq16", (100, 129)), (80, 2, "dq", 7, "", (100, 150)),
    (40, 4, "dq", 7, "-bmq16-odd", (100, 150)), (40, 4, "dq", 0, "-odd", (100, 150)),
    (80, 2, "dqf", 7, "-auto", (100, 129)), (40, 4, "dq", 6, "-r96", (100, 150)),
    # session 17: bit 3, the down GEMM's activations in the MMA's K order in memory (written so by gate_up's
    # epilogue) and loaded through the cp.async pipeline; bit 4, gate_up's input too (gathered so first): every bit,
    # 16-row sub-tiles, the compact grid, "odd" shapes (masked K tails: gate_up K 320 in steps of 128, down K 96 in
    # steps of 64), a register cap
    (40, 4, "dq", 31, "", (100, 150)), (40, 4, "dqf", 14, "-bmq16", (100, 129)), (3, 2, "dq", 8, "", (100, 150)),
    (3, 2, "dq", 24, "", (100, 150)), (40, 4, "dq", 8, "-odd", (100, 150)), (40, 4, "dq", 24, "-odd", (100, 150)),
    (32, 4, "dqf", 14, "-r96", (100, 129)), (32, 4, "dqf", 30, "-bmq16", (100, 129))]]

# round 7's Gluon loop "dqa" (mxfp4_dq_ws.py: decode into shared memory, asynchronous wgmma) in scan mode on the
# full grid: 4 to 64 tokens (M tiles of 16 to 64 rows), top-2, "odd" shapes (N not a multiple of BN: masked weight
# loads; the down GEMM's K = 96 runs steps of 32), "-auto": moe_mxfp4 picks it by itself (DQA_MAX_TOKENS), "-h16":
# the weights read as 16-bit halves (weight unit 1) instead of 32-bit words, "-ring3": the loads through a 3-step
# shared-memory ring filled by cp.async (DQA_RING)
CASES += [(t, k, f"dqa{extra}", sc) for t, k, extra, sc in [
    (4, 4, "", (100, 150)), (32, 4, "", (100, 150)), (40, 4, "", (100, 150)), (64, 4, "", (100, 150)),
    (32, 2, "", (0, 171)), (40, 4, "-odd", (100, 150)), (32, 4, "-auto", (100, 150)), (32, 4, "-h16", (100, 150)),
    (4, 4, "-ring3", (100, 150)), (32, 4, "-ring3", (100, 150)), (40, 4, "-odd-ring3", (100, 150)),
    (64, 4, "-h16-ring3", (100, 150))]]


@pytest.mark.parametrize("tokens,k,impl,scales", CASES)
def test_dq_loop_matches_the_float32_reference(tokens, k, impl, scales, monkeypatch):
    from bench.engines.graph import mxfp4_kernels as mk

    if impl.startswith("gemv4-pdl"):
        monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4", {"gate_up": (16, 64, 2, 1), "down": (32, 64, 4, 1)})
        monkeypatch.setattr(mk, "MXFP4_PDL", int(impl[-1]))
        impl = "gemv4"
    shape, fold = {}, False
    if "-v" in impl:  # dq variants: "dq-v3-bmq16-odd"
        parts = impl.split("-")
        impl = parts[0]
        monkeypatch.setattr(mk, "DQ_VARIANT", int(parts[1][1:]))
        monkeypatch.setattr(mk, "DQ_BMQ", 16 if "bmq16" in parts else 0)
        # no per-class entry overrides the variant under test; "-r96": a class capping registers at 96 a thread
        monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T", {1024: {"maxnreg": 96}} if "r96" in parts else {})
        monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T_BY_TOPK", {})  # nor a top_k's own class (round 15)
        # K steps of 64 (several a row), N tiles of 128 / 64
        monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ", {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 3)})
        if "odd" in parts:
            shape = {"hidden": 320, "inter": 96}
            monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ", {"gate_up": (128, 128, 4, 3), "down": (64, 64, 4, 3)})
        if "auto" in parts:  # sorted decode (80 tokens > SCAN_MAX_TOKENS) picks dq by itself
            monkeypatch.setattr(mk, "DQ_SORTED_MAX_TOKENS", 128)
            monkeypatch.setattr(mk, "MMA_IMPL", "dq")
            assert mk.pick_impl(tokens, False, True) == "dq"
            assert mk.pick_impl(129, False, True) == mk.SORTED_IMPL
            impl, fold = None, True
    if impl is not None and impl.startswith("dqa"):  # "dqa[-odd][-auto][-h16][-ring3]"; None: pick_impl's choice
        parts = impl.split("-")[1:]
        if "odd" in parts:
            shape = {"hidden": 320, "inter": 96}
        if "h16" in parts:
            monkeypatch.setattr(mk, "MXFP4_CONFIG_DQA", {"gate_up": (128, 64, 4, 1), "down": (128, 64, 4, 1)})
        if "ring3" in parts:
            monkeypatch.setattr(mk, "DQA_RING", 3)
        impl = "dqa"
        if "auto" in parts:
            monkeypatch.setattr(mk, "DQA_MAX_TOKENS", 64)
            impl = None
    ex = _experts(scales, seed=tokens, **shape)
    gen = torch.Generator(device="cuda").manual_seed(tokens + 1)
    hidden = ex.hidden_size
    # small activations keep the clamped SwiGLU in its live range for these large random weights
    x = torch.randn(tokens, hidden, generator=gen, device="cuda") * 2.0 ** (120 - min(scales[1], 150))
    x = x.to(torch.bfloat16)
    v, i = torch.topk(torch.randn(tokens, 4, generator=gen, device="cuda"), k, dim=-1)
    w = torch.softmax(v, dim=-1).to(torch.bfloat16)
    want = _reference(ex, x, i, w)
    cnt = torch.zeros((), dtype=torch.int32, device="cuda")
    got = mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                       ex.down_proj_scales, ex.down_proj_bias, i.to(torch.int32), w, ex.alpha, ex.limit, cnt, impl=impl,
                       fold=fold)
    assert not got.isnan().any()
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < 1e-2, err  # bf16 activations and outputs; a wrong code or scale gives O(1)
    assert int(cnt) == i.unique().numel()


def _bit_case(tokens: int, k: int, seed: int):
    """A moe_mxfp4 call on fixed inputs for the same-bits tests: experts with every byte value and scales 100..128
    (seeded by `tokens`), small activations and a top-k routing from `seed`; returns run(**moe_mxfp4 keywords)."""
    from bench.engines.graph import mxfp4_kernels as mk

    ex = _experts((100, 129), seed=tokens)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(tokens, ex.hidden_size, generator=gen, device="cuda") * 2.0 ** -9).to(torch.bfloat16)
    v, i = torch.topk(torch.randn(tokens, 4, generator=gen, device="cuda"), k, dim=-1)
    w = torch.softmax(v, dim=-1).to(torch.bfloat16)

    def run(**kw) -> torch.Tensor:
        return mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias,
                            ex.down_proj_blocks, ex.down_proj_scales, ex.down_proj_bias, i.to(torch.int32), w,
                            ex.alpha, ex.limit, **kw)

    return run


@pytest.mark.parametrize("tokens,k,impl", [(1, 4, "gemv4"), (1, 2, "dq"), (40, 4, "dq"), (80, 2, "dq"),
                                          (32, 4, "dqf")])
def test_early_bias_gives_the_same_bits_on_cuda(tokens, k, impl, monkeypatch):
    """MXFP4_EARLY_BIAS (the bias tile and the down GEMM's routing weights loaded before the K loop) on the PTX loops
    as compiled for the GPU (gemv4 with PDL mode 2 at one token; dq compact, scan and sorted; dqf): the outputs bit for
    bit as with the loads after the loop (the interpreter cases cover gemv, gemv2, gemv4 and mma)."""
    from bench.engines.graph import mxfp4_kernels as mk

    run = _bit_case(tokens, k, seed=tokens + 2)
    outs = []
    monkeypatch.setattr(mk, "MXFP4_EARLY_BIAS_MAX_TOKENS", 1 << 20)  # the early path at every size, sorted too
    for early in (False, True):
        monkeypatch.setattr(mk, "MXFP4_EARLY_BIAS", early)
        outs.append(run(impl=impl.rstrip("f"), fold=impl == "dqf"))
    assert not outs[0].isnan().any()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("tokens,k,variant", [(8, 4, 0), (3, 2, 1), (40, 4, 7), (64, 4, 7), (32, 4, 6)])
def test_dq_activation_order_gives_the_same_bits(tokens, k, variant, monkeypatch):
    """DQ_VARIANT bit 3 (the down GEMM's activations written by gate_up's epilogue in the MMA's K order and read
    through the cp.async pipeline) and bit 4 (gate_up's input gathered into that order too) change where the
    activations travel, not the products or their order: the outputs bit for bit as without, in scan mode (compact
    grid at 3 tokens, 16-row sub-tiles at 40 and 64)."""
    from bench.engines.graph import mxfp4_kernels as mk

    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T", {})
    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T_BY_TOPK", {})
    monkeypatch.setattr(mk, "DQ_BMQ", 16 if tokens > 32 else 0)
    run = _bit_case(tokens, k, seed=tokens + 4)
    outs = []
    for bits in (0, 8, 24):
        monkeypatch.setattr(mk, "DQ_VARIANT", variant | bits)
        outs.append(run(impl="dq", fold=True))
    assert not outs[0].isnan().any()
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[2])


def test_ptx_loops_reject_float32_activations():
    from bench.engines.graph import mxfp4_kernels as mk

    ex = _experts((110, 126))
    x = torch.randn(1, 256, device="cuda")
    i = torch.tensor([[0, 1]], dtype=torch.int32, device="cuda")
    w = torch.tensor([[0.5, 0.5]], device="cuda")
    with pytest.raises(ValueError, match="bf16"):
        mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                     ex.down_proj_scales, ex.down_proj_bias, i, w, ex.alpha, ex.limit, impl="dq")


def test_dqa_loop_refuses_the_compact_grid():
    from bench.engines.graph import mxfp4_kernels as mk

    ex = _experts((110, 126))
    x = torch.randn(1, 256, device="cuda").to(torch.bfloat16)
    i = torch.tensor([[0, 1]], dtype=torch.int32, device="cuda")
    w = torch.tensor([[0.5, 0.5]], device="cuda").to(torch.bfloat16)
    with pytest.raises(ValueError, match="compact"):
        mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                     ex.down_proj_scales, ex.down_proj_bias, i, w, ex.alpha, ex.limit, impl="dqa")


def test_down_early_trigger_replay_gives_the_same_tokens_and_logits():
    """Batch-1 decode of an MXFP4 tiny-moe as a CUDA graph with the down expert GEMM letting the lazy qkv GEMV launch
    right after its wait (MXFP4_DOWN_EARLY) and that GEMV's weight tiles loaded before its own wait from 1 / 2 rows
    a token (MXFP4_LAZY_PRE_MIN_KS, LAZY_PRE 2 and 4), against both off: the same tokens and last logits (a GEMV that
    read the down GEMM's output before its wait would change them)."""
    from bench.engines.graph import kernels as gk
    from bench.engines.graph import mxfp4_kernels as mk
    from bench.models.loading import load_model
    from tests.test_graph_kernels_gpu import graph_tokens_and_logits

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    mxfp4.quantize_model(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(5))
    saved = (mk.MXFP4_DOWN_EARLY, mk.MXFP4_LAZY_PRE_MIN_KS, gk.LAZY_PRE, gk.LAZY_NORM)
    out = {}
    try:
        gk.LAZY_NORM = True
        for cfg in ((False, 99, 2), (True, 99, 2), (True, 2, 2), (True, 1, 4), (False, 1, 4)):
            mk.MXFP4_DOWN_EARLY, mk.MXFP4_LAZY_PRE_MIN_KS, gk.LAZY_PRE = cfg
            out[cfg] = graph_tokens_and_logits(model, ids)
    finally:
        mk.MXFP4_DOWN_EARLY, mk.MXFP4_LAZY_PRE_MIN_KS, gk.LAZY_PRE, gk.LAZY_NORM = saved
    plain = out[(False, 99, 2)]
    assert plain[0].unique().numel() > 2
    for key, (toks, logits) in out.items():
        assert torch.equal(toks, plain[0]), key
        assert torch.equal(logits, plain[1]), key
