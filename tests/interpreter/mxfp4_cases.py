"""The graph engine's MXFP4 expert kernels (bench/engines/graph/mxfp4_kernels.py) on CPU under the Triton
interpreter: against the torch reference (dequantize, then the per-expert loop) in the compact, full-scan and
sorted (prefill) modes, with the distinct-expert count; and a whole decode with them equals the reference path's
tokens. Run by tests/test_triton_interpreter.py in a child pytest with TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

from bench.engines import get_engine
from bench.engines.graph import GraphOptions
from bench.engines.graph.experts import build_experts
from bench.engines.graph.kernels import routed_rows
from bench.engines.graph.mxfp4_kernels import _dq_pairs
from bench.models import mxfp4
from tests.test_graph_engine import _lively_tiny_model


@pytest.fixture(scope="module")
def model():
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_triton_interpreter.py"
    m = _lively_tiny_model()
    mxfp4.quantize_model(m)
    return m


@pytest.mark.parametrize("tokens,k", [(1, 2), (3, 2), (5, 4), (80, 2)])  # compact, full scan, scan, sorted
def test_mxfp4_kernels_match_the_torch_reference(model, tokens, k):
    mod = model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, model.config.hidden_size, generator=gen)
    v, i = torch.topk(torch.randn(tokens, mod.num_experts, generator=gen), k, dim=-1)
    w = torch.softmax(v, dim=-1)
    ref = build_experts(mod, GraphOptions(experts="loop").resolve("cpu"))
    tri = build_experts(mod, GraphOptions(experts="triton").resolve("cpu"))
    assert ref.weight_format == tri.weight_format == "mxfp4"
    want = ref(x, i, w, None)
    cnt = torch.zeros((), dtype=torch.int32)
    got = tri(x, i.to(torch.int32), w, cnt)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert int(cnt) == i.unique().numel()


def test_mxfp4_triton_decode_equals_the_reference_tokens(model):
    ids = torch.randint(2, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    ref = get_engine("graph").generate(model, ids, 6)  # 5 decode steps: each interpreted kernel launch is slow
    res = get_engine("graph", {"experts": "triton"}).generate(model, ids, 6)
    assert ref.tokens.unique().numel() > 4
    assert torch.equal(res.tokens, ref.tokens)
    assert res.distinct_experts == pytest.approx(ref.distinct_experts)


def test_mxfp4_decode_keeps_the_qkv_launch_in_its_plain_pdl_mode(model, monkeypatch):
    """After the MXFP4 expert kernels the lazy qkv GEMV does not trigger attention early (Experts.qkv_early ->
    ops.norm_linear -> kernels.splitk_norm_linear(early=False)) unless MXFP4_QKV_EARLY, and pre-loads its weight tiles
    from MXFP4_LAZY_PRE_MIN_KS rows a token (Experts.qkv_pre_min_ks -> pre_min_ks); the tokens are the same."""
    from bench.engines.graph import kernels as gk
    from bench.engines.graph import mxfp4_kernels as mk

    ids = torch.randint(2, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(3))
    calls = []
    real = gk.splitk_norm_linear
    monkeypatch.setattr(gk, "LAZY_NORM", True)
    monkeypatch.setattr(gk, "splitk_norm_linear",
                        lambda *a, **kw: calls.append((kw.get("early"), kw.get("pre_min_ks"))) or real(*a, **kw))
    tokens = []
    for early, min_ks in ((False, 2), (True, 5)):
        monkeypatch.setattr(mk, "MXFP4_QKV_EARLY", early)
        monkeypatch.setattr(mk, "MXFP4_LAZY_PRE_MIN_KS", min_ks)
        calls.clear()
        tokens.append(get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids, 3).tokens)
        assert calls and set(calls) == {(early, min_ks)}, (early, calls)
    assert torch.equal(tokens[0], tokens[1])


@pytest.mark.parametrize("tokens,k,impl,dtype", [
    (1, 2, "gemv", torch.float32),  # batch 1 decode: one row per expert, exact
    (3, 4, "gemv", torch.float32),  # several rows per expert share the decoded weights
    (2, 2, "gemv", torch.bfloat16),  # the CUDA path's fp16 bit-placement decode
    (3, 2, "gemv2", torch.float32),  # activations loaded in (even, odd) pairs
    (1, 2, "gemv4", torch.float32),  # integer-multiply decode of the 32-bit words, fp32 FMA: exact
    (3, 4, "gemv4", torch.float32),  # several rows per expert
    (1, 4, "gemv4", torch.bfloat16),  # batch 1 on the GPU: bf16 activations
    (2, 2, "gemv4-steps", torch.float32),  # one or two blocks a step: several steps
    (5, 4, "scaled", torch.bfloat16),  # tl.dot_scaled, compact grid
    (70, 2, "scaled", torch.bfloat16),  # tl.dot_scaled, sorted (prefill)
])
def test_mxfp4_inner_loops_match_the_torch_reference(model, tokens, k, impl, dtype, monkeypatch):
    """Each inner loop of moe_mxfp4 (gemv without tensor cores, tl.dot_scaled) against the float32 torch reference:
    exact in float32, within bf16 rounding in bf16."""
    from bench.engines.graph import mxfp4_kernels as mk

    mod = model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, model.config.hidden_size, generator=gen)
    v, i = torch.topk(torch.randn(tokens, mod.num_experts, generator=gen), k, dim=-1)
    w = torch.softmax(v, dim=-1)
    want = build_experts(mod, GraphOptions(experts="loop").resolve("cpu"))(x, i, w, None)
    cnt = torch.zeros((), dtype=torch.int32)
    if impl == "gemv4-steps":
        impl = "gemv4"
        monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4", {"gate_up": (16, 64, 4, 1), "down": (8, 32, 4, 1)})
    got = mk.moe_mxfp4(x.to(dtype), mod.gate_up_proj_blocks, mod.gate_up_proj_scales, mod.gate_up_proj_bias.to(dtype),
                       mod.down_proj_blocks, mod.down_proj_scales, mod.down_proj_bias.to(dtype), i.to(torch.int32), w,
                       mod.alpha, mod.limit, cnt, impl=impl)
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 2e-2), err
    assert int(cnt) == i.unique().numel()


@pytest.mark.parametrize("tokens,k,impl", [(1, 4, "gemv4"), (3, 2, "gemv"), (3, 4, "gemv2"), (5, 4, "mma"),
                                          (70, 2, "mma")])
def test_mxfp4_early_bias_gives_the_same_bits(model, tokens, k, impl, monkeypatch):
    """MXFP4_EARLY_BIAS (the bias tile and the down GEMM's routing weights loaded before the K loop): the outputs of
    the gemv loops (scan mode) and the mma loop (compact, scan and sorted) bit for bit as with the loads after it."""
    from bench.engines.graph import mxfp4_kernels as mk

    mod = model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(40 + tokens)
    x = torch.randn(tokens, model.config.hidden_size, generator=gen)
    v, i = torch.topk(torch.randn(tokens, mod.num_experts, generator=gen), k, dim=-1)
    w = torch.softmax(v, dim=-1)
    outs = []
    monkeypatch.setattr(mk, "MXFP4_EARLY_BIAS_MAX_TOKENS", 1 << 20)  # the early path at every size, sorted too
    for early in (False, True):
        monkeypatch.setattr(mk, "MXFP4_EARLY_BIAS", early)
        assert mk.mxfp4_early_bias_on(tokens) is early
        outs.append(mk.moe_mxfp4(x, mod.gate_up_proj_blocks, mod.gate_up_proj_scales, mod.gate_up_proj_bias,
                                 mod.down_proj_blocks, mod.down_proj_scales, mod.down_proj_bias, i.to(torch.int32), w,
                                 mod.alpha, mod.limit, impl=impl))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("scales", [(100, 150), (0, 171)])
def test_gemv4_decodes_every_byte_and_scale(scales, monkeypatch):
    """gemv4's integer-multiply decode on random blocks holding every byte value (all 16 codes in both nibbles of
    every word position) and scales across (100, 150) or 0..170 (0 = the subnormal 2^-127; 2^43 at the top, so
    that float32 outputs stay finite): equal to dequantize + a float64 per-expert loop. K = 96 = 3 blocks with two
    blocks a step: the second step is half masked, as at the real K = 2880 (90 blocks, 16 a step)."""
    from bench.engines.graph import mxfp4_kernels as mk

    gen = torch.Generator().manual_seed(scales[0])
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4", {"gate_up": (32, 64, 4, 1), "down": (32, 64, 4, 1)})
    ex = mxfp4.Mxfp4Experts(4, 96, 96, 1.702, 7.0, dtype=torch.float32)
    for name in ("gate_up_proj_blocks", "down_proj_blocks"):
        buf = getattr(ex, name)
        buf.copy_(torch.randint(0, 256, buf.shape, generator=gen).to(torch.uint8))
        assert buf.unique().numel() == 256
    lo, hi = scales
    for name in ("gate_up_proj_scales", "down_proj_scales"):
        buf = getattr(ex, name)
        buf.copy_(torch.randint(lo, hi, buf.shape, generator=gen).to(torch.uint8))
    ex.gate_up_proj_bias.normal_(0, 0.1, generator=gen)
    ex.down_proj_bias.normal_(0, 0.1, generator=gen)
    # small activations keep gate_up's outputs near the clamped SwiGLU's live range for these large weights
    x = torch.randn(1, 96, generator=gen) * 2.0 ** (-10 if hi <= 150 else -50)
    i = torch.tensor([[0, 3]], dtype=torch.int32)
    w = torch.tensor([[0.75, 0.25]])
    k = 2
    want = torch.zeros((k, 96), dtype=torch.float64)
    for j in range(k):
        e = int(i[0, j])
        gu, dn = ex.expert_weights(e, torch.float64)
        h = ex._apply_gate(x.double() @ gu + ex.gate_up_proj_bias[e].double())
        want[j] = (h @ dn + ex.down_proj_bias[e].double()) * float(w[0, j])
    got = mk.moe_mxfp4(x, ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
                       ex.down_proj_scales, ex.down_proj_bias, i, w, ex.alpha, ex.limit, impl="gemv4")
    assert torch.isfinite(got).all()
    err = ((got.double() - want).norm() / want.norm()).item()
    assert err < 1e-5, err



def test_gemv4_launch_takes_the_tiles_of_its_top_k(monkeypatch):
    """moe_mxfp4 runs gemv4 with gemv4_tiles(top_k): a deliberately invalid tile (BK 48, not a power of two) named
    for top_k 2 only breaks top_k-2 launches; top_k 4 keeps the shipped tiles and matches the torch reference."""
    from bench.engines.graph import mxfp4_kernels as mk

    ex = mxfp4.Mxfp4Experts(4, 64, 64, 1.702, 7.0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    ex.gate_up_proj_blocks.copy_(torch.randint(0, 256, ex.gate_up_proj_blocks.shape, generator=gen).to(torch.uint8))
    ex.down_proj_blocks.copy_(torch.randint(0, 256, ex.down_proj_blocks.shape, generator=gen).to(torch.uint8))
    ex.gate_up_proj_scales.fill_(120)
    ex.down_proj_scales.fill_(120)
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4", {"gate_up": (16, 64, 4, 1), "down": (16, 64, 4, 1)})
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4_BY_TOPK", {2: {"down": (16, 48, 4, 1)}})
    x = torch.randn(1, 64, generator=gen)
    args = (ex.gate_up_proj_blocks, ex.gate_up_proj_scales, ex.gate_up_proj_bias, ex.down_proj_blocks,
            ex.down_proj_scales, ex.down_proj_bias)
    i4, w4 = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), torch.full((1, 4), 0.25)
    got = mk.moe_mxfp4(x, *args, i4, w4, ex.alpha, ex.limit, impl="gemv4")
    want = torch.stack([(ex._apply_gate(x[0] @ ex.expert_weights(e, torch.float32)[0] + ex.gate_up_proj_bias[e])
                         @ ex.expert_weights(e, torch.float32)[1] + ex.down_proj_bias[e]) * 0.25 for e in range(4)])
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    with pytest.raises(Exception, match=r"power of (2|two)"):
        mk.moe_mxfp4(x, *args, i4[:, :2], w4[:, :2] * 2, ex.alpha, ex.limit, impl="gemv4")

@triton.jit
def _dq_sub_tiles(topi_ptr, pairs_ptr, live_ptr, P, PB: tl.constexpr, BM: tl.constexpr, BMQ: tl.constexpr,
                  NT: tl.constexpr):
    """Every 16-row sub-tile of expert program_id(0)'s rows (scan mode, not compact): pairs and liveness."""
    e, start, end, scan_rows = routed_rows(topi_ptr, topi_ptr, P, True, PB, False, 4, BM)
    for t in tl.static_range(NT):
        pair, rmask = _dq_pairs(topi_ptr, start + t * BMQ, end, scan_rows, True, BM, BMQ)
        out = (e * NT + t) * BMQ + tl.arange(0, BMQ)
        tl.store(pairs_ptr + out, pair)
        tl.store(live_ptr + out, rmask.to(tl.int32))


def test_dq_sub_tiles_cover_each_experts_rows_once():
    """The dq loop's 16-row M sub-tiles in scan mode (mxfp4_kernels._dq_pairs over kernels.routed_rows' scan_rows,
    plain Triton; the dq loop around it is inline PTX and runs on the GPU only, tests/test_mxfp4_gpu.py): for 40
    tokens top-4 over 4 experts (40 rows an expert, 3 sub-tiles) every routed (token, slot) pair of an expert comes
    out exactly once, in routing order, and the masked tail of the last sub-tile is marked as such."""
    gen = torch.Generator().manual_seed(3)
    tokens, k, experts, bm, bmq = 40, 4, 4, 64, 16
    topi = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(tokens)]).to(torch.int32)
    nt = bm // bmq
    pairs = torch.full((experts * nt * bmq,), -1, dtype=torch.int32)
    live = torch.zeros_like(pairs)
    _dq_sub_tiles[(experts,)](topi, pairs, live, tokens * k, PB=256, BM=bm, BMQ=bmq, NT=nt)
    flat = topi.reshape(-1)
    for e in range(experts):
        want = torch.nonzero(flat == e).squeeze(1).to(torch.int32)
        got_pairs = pairs.view(experts, nt * bmq)[e]
        got_live = live.view(experts, nt * bmq)[e].bool()
        assert int(got_live.sum()) == want.numel()
        assert torch.equal(got_pairs[got_live], want)
        assert not got_live[want.numel():].any()


def test_dq_batch_classes_and_loop_choice(monkeypatch):
    """MXFP4_CONFIG_DQ_T: a launch takes the class with the smallest key >= its tokens, what a class leaves out comes
    from MXFP4_CONFIG_DQ / DQ_VARIANT / DQ_BMQ; pick_impl: gemv at one token, the MMA loop for scan mode and for
    sorted decode up to DQ_SORTED_MAX_TOKENS, SORTED_IMPL past it, "mma" off CUDA."""
    from bench.engines.graph import mxfp4_kernels as mk

    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ", {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 4)})
    monkeypatch.setattr(mk, "DQ_VARIANT", 1)
    monkeypatch.setattr(mk, "DQ_BMQ", 0)
    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T", {8: {"variant": 0}, 32: {"down": (128, 64, 4, 3), "variant": 6,
                                                                          "maxnreg": 128}})
    tiles, variant, bmq, cap = mk.dq_class(4)
    assert (tiles["down"], variant, bmq, cap) == ((64, 64, 4, 4), 0, 0, 0)
    tiles, variant, bmq, cap = mk.dq_class(9)
    assert (tiles["gate_up"], tiles["down"], variant, cap) == ((128, 64, 4, 3), (128, 64, 4, 3), 6, 128)
    assert mk.dq_class(33) == (mk.MXFP4_CONFIG_DQ, 1, 0, 0)
    # a top_k's own class entries (MXFP4_CONFIG_DQ_T_BY_TOPK, int or JSON string keys) over the shared ones
    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T_BY_TOPK", {2: {8: {"gate_up": (64, 64, 4, 3), "variant": 7}}})
    tiles, variant, bmq, cap = mk.dq_class(4, 2)
    assert (tiles["gate_up"], tiles["down"], variant, cap) == ((64, 64, 4, 3), (64, 64, 4, 4), 7, 0)
    assert mk.dq_class(4, 4) == mk.dq_class(4)
    assert mk.dq_class(9, 2) == mk.dq_class(9, 4)
    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T_BY_TOPK", {"2": {"8": {"maxnreg": 96}}})
    assert mk.dq_class(4, 2)[3] == 96
    # a top_k's class may split a shared one: 2-4 tokens take its key-4 entry over the shared class 8, 5-8 its 8
    monkeypatch.setattr(mk, "MXFP4_CONFIG_DQ_T_BY_TOPK", {2: {4: {"variant": 1}, 8: {"down": (128, 64, 4, 3)}}})
    assert mk.dq_class(3, 2) == ({"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 4)}, 1, 0, 0)
    assert mk.dq_class(5, 2) == ({"gate_up": (128, 64, 4, 3), "down": (128, 64, 4, 3)}, 0, 0, 0)
    assert mk.dq_class(20, 2) == mk.dq_class(20, 4)
    monkeypatch.setattr(mk, "DQ_SORTED_MAX_TOKENS", 256)
    monkeypatch.setattr(mk, "GEMV_MAX_TOKENS", 1)
    monkeypatch.setattr(mk, "GEMV_IMPL", "gemv4")
    assert mk.pick_impl(1, True, True) == "gemv4"
    assert mk.pick_impl(32, True, True) == mk.MMA_IMPL
    assert mk.pick_impl(256, False, True) == mk.MMA_IMPL
    assert mk.pick_impl(257, False, True) == mk.SORTED_IMPL
    assert mk.pick_impl(32, True, False) == "mma"


@triton.jit
def _epilogue_probe(acc_ptr, pair_ptr, bias_ptr, out_ptr, N, alpha, limit, BM: tl.constexpr, BN: tl.constexpr,
                    PERM: tl.constexpr):
    """moe_epilogue_at for gate_up on one [BM, BN] fp32 tile (N tile program_id(0)), with or without PERM."""
    from bench.engines.graph.kernels import moe_epilogue_at

    nb = tl.program_id(0)
    offs_n = nb * BN + tl.arange(0, BN)
    nmask = offs_n < N
    mm = tl.arange(0, BM)
    acc = tl.load(acc_ptr + mm[:, None] * N + offs_n[None, :], mask=nmask[None, :], other=0.0)
    pair = tl.load(pair_ptr + mm)
    moe_epilogue_at(nb, acc, 0, pair, mm < BM, bias_ptr, bias_ptr, out_ptr, 0, N // 2, alpha, limit, offs_n, nmask,
                    N, True, BM, BN, PERM=PERM)


@pytest.mark.parametrize("bn", [64, 128])
def test_gate_up_epilogue_writes_the_dq_loop_order(bn):
    """The gate_up epilogue's PERM (DQ_VARIANT bit 3: the MXFP4 down GEMM then reads its activations contiguously)
    stores exactly the plain epilogue's row permuted by mxfp4_kernels.dq_order: position p holds column
    dq_order[p]. The dq loop gathers its activations in that order (_dq_tile's perm), so a mismatch here would feed
    the down GEMM's MMA the wrong activations on the GPU."""
    from bench.engines.graph.mxfp4_kernels import dq_order

    gen = torch.Generator().manual_seed(bn)
    rows, n = 4, 256  # 128 outputs a row = 4 blocks of 32
    acc = torch.randn(rows, n, generator=gen)
    bias = torch.randn(n, generator=gen)
    pair = torch.tensor([2, 0, 3, 1], dtype=torch.int32)
    outs = []
    for perm in (False, True):
        out = torch.full((rows, n // 2), float("nan"))
        _epilogue_probe[(n // bn,)](acc, pair, bias, out, n, 1.702, 7.0, BM=rows, BN=bn, PERM=perm)
        outs.append(out)
    plain, permuted = outs
    assert not plain.isnan().any() and not permuted.isnan().any()
    order = dq_order(n // 2, torch.device("cpu"))
    assert sorted(order.tolist()) == list(range(n // 2))
    assert torch.equal(permuted, plain[:, order])
