"""The `graph` engine's Triton kernels on CPU under the Triton interpreter: same tokens as `hf`, the sorted (prefill)
and compact MoE modes, the per-batch tile tables and the N-tile-major grid, the split-K router's top-k, decode
attention's configurations, rope + attention in one launch, the SwiGLU clamp and near-tie routing.

Not collected by the main test session: tests/test_triton_interpreter.py runs this folder in a child pytest with
TRITON_INTERPRET=1, which must be set before triton is first imported (the HF model code imports it)."""

from __future__ import annotations

import os

import pytest
import torch

from bench.engines import get_engine
from bench.engines.graph import GraphOptions
from bench.engines.graph.experts import DenseExperts, build_experts
from bench.engines.graph.ops import TorchOps, TritonOps
from tests.test_graph_engine import _hf_experts_out, _lively_tiny_model, _near_tie_router

PROMPT, TOKENS = 13, 5  # 13 + 5 > the sliding window of 16: decode writes position 16, the ring slot logic is
# exercised (few decode steps: every kernel launch is interpreted in Python)


def _expert_weights(gen: torch.Generator, experts: int, hidden: int, inter: int) -> tuple[torch.Tensor, ...]:
    """Random float32 expert weights in the graph engine's layout: gate_up (E, H, 2I) + bias, down (E, I, H) + bias."""
    return (torch.randn(experts, hidden, 2 * inter, generator=gen) * 0.2,
            torch.randn(experts, 2 * inter, generator=gen) * 0.5,
            torch.randn(experts, inter, hidden, generator=gen) * 0.2,
            torch.randn(experts, hidden, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def gk():
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_triton_interpreter.py"
    from bench.engines.graph import kernels

    return kernels


@pytest.fixture(scope="module")
def lively():
    model = _lively_tiny_model()
    ids = torch.randint(2, model.config.vocab_size, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    assert model.config.sliding_window <= PROMPT + TOKENS - 2  # the last decode step writes position 16
    ref = get_engine("hf").generate(model, ids, TOKENS)
    return model, ids, ref


def test_triton_kernels_match_hf_tokens(gk, lively, monkeypatch):
    """Every Triton kernel in the decoder (norm, rope + cache write, attention, split-K router, scan-mode MoE in
    decode, qkv and o_proj as tensor-core split-K partials at these 2 rows; per-token router in prefill): the same
    greedy tokens as hf."""
    model, ids, ref = lively
    assert ref.tokens.unique().numel() > 4
    calls = []
    real = gk.splitk_mma_linear
    monkeypatch.setattr(gk, "splitk_mma_linear", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids, TOKENS)
    assert torch.equal(res.tokens, ref.tokens)
    assert len(calls) >= 2 * model.config.num_hidden_layers, len(calls)


def test_triton_moe_sorted_mode_matches_loop(gk):
    """More tokens than SCAN_MAX_TOKENS (prefill): rows sorted by expert."""
    model = _lively_tiny_model()
    mlp = model.model.layers[0].mlp
    x = torch.randn(gk.SCAN_MAX_TOKENS + 6, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    v, i = torch.topk(torch.nn.functional.linear(x, mlp.router.weight, mlp.router.bias), 2, dim=-1)
    w = torch.softmax(v, dim=-1)
    want = build_experts(mlp.experts, GraphOptions(experts="loop").resolve("cpu"))(x, i, w, None)
    assert not gk.routing_plan(i.to(torch.int32), mlp.experts.num_experts).scan
    got = build_experts(mlp.experts, GraphOptions(experts="triton").resolve("cpu"))(x, i.to(torch.int32), w, None)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_triton_split_router_matches_torch_topk(gk):
    """The decode router (split-K partials + per-token top-k) and the per-token one pick torch's top-k and
    softmax."""
    gen = torch.Generator().manual_seed(5)
    for tokens, experts, hidden, k in ((1, 32, 2880, 4), (3, 8, 200, 2), (40, 16, 96, 4)):
        x = torch.randn(tokens, hidden, generator=gen)
        w = torch.randn(experts, hidden, generator=gen) * 0.1
        b = torch.randn(experts, generator=gen)
        v, i = torch.topk(torch.nn.functional.linear(x, w, b), k, dim=-1)
        assert tokens <= gk.ROUTER_SPLIT_MAX_TOKENS
        for split, bh in ((True, None), (False, None), (True, 16), (True, 32)):  # None: ROUTER_BH_BY_TOKENS
            got_i, got_w = gk.router(x, w, b, k, split=split, bh=bh)
            assert torch.equal(got_i.long(), i), (tokens, experts, hidden, split, bh)
            torch.testing.assert_close(got_w, torch.softmax(v, dim=-1), rtol=1e-5, atol=1e-6)
    assert [gk.router_bh(t) for t in (1, 7, 8, 256, 257)] == [64, 64, 32, 32, gk.ROUTER_BH]


@pytest.mark.parametrize("tokens", [8, 40])
def test_triton_token_tiled_router_matches_torch_topk(gk, monkeypatch, tokens):
    """The split router with a token-tile grid axis (ROUTER_TC_BY_TOKENS: BT tokens a program; float32 inputs take
    the ieee dot, bf16 ones the tensor cores, checked on the GPU): torch's top-k and softmax for every token."""
    gen = torch.Generator().manual_seed(11)
    experts, hidden, k = 16, 200, 4
    x = torch.randn(tokens, hidden, generator=gen)
    w = torch.randn(experts, hidden, generator=gen) * 0.1
    b = torch.randn(experts, generator=gen)
    v, i = torch.topk(torch.nn.functional.linear(x, w, b), k, dim=-1)
    monkeypatch.setattr(gk, "ROUTER_TC_BY_TOKENS", ((4, 32, 16), (256, 64, 16)))
    assert gk.router_tc(4) == (32, 16) and gk.router_tc(tokens) == (64, 16) and gk.router_tc(257) is None
    got_i, got_w = gk.router(x, w, b, k)
    assert torch.equal(got_i.long(), i)
    torch.testing.assert_close(got_w, torch.softmax(v, dim=-1), rtol=1e-5, atol=1e-6)


def test_triton_moe_compact_grid_matches_full_grid(gk):
    """Fewer pairs than experts: one program row per distinct routed expert gives the same outputs and the same
    distinct-expert count as one row per expert (both with the same tiles: MOE_CONFIG_FEW may differ from
    MOE_CONFIG, and a float32 tl.dot of another N tile may round differently)."""
    gen = torch.Generator().manual_seed(6)
    experts, hidden, inter = 16, 64, 32
    gu, gub = torch.randn(experts, hidden, 2 * inter, generator=gen) * 0.1, torch.randn(experts, 2 * inter) * 0.1
    dn, dnb = torch.randn(experts, inter, hidden, generator=gen) * 0.1, torch.randn(experts, hidden) * 0.1
    for tokens, k in ((1, 4), (3, 2)):
        x = torch.randn(tokens, hidden, generator=gen)
        v, i = torch.topk(torch.randn(tokens, experts, generator=gen), k, dim=-1)
        w = torch.softmax(v, dim=-1)
        outs, counts = [], []
        for compact in (True, False):
            cnt = torch.zeros((), dtype=torch.int32)
            outs.append(gk.moe(x, gu, gub, dn, dnb, i.to(torch.int32), w, 1.702, 7.0, cnt, compact=compact,
                               tiles=gk.MOE_CONFIG))
            counts.append(int(cnt))
        assert torch.equal(outs[0], outs[1])
        assert counts[0] == counts[1] == i.unique().numel()


@pytest.mark.parametrize(("inter", "k"), [(64, 4), (320, 2), (320, 4)])
def test_triton_down_pre_loads_give_the_same_bits(gk, monkeypatch, inter, k):
    """MOE_DOWN_PRE 1, 2 and 4 (the one-token down GEMM's first weight tiles loaded before its PDL wait, then used
    for its first K steps): the same expert outputs and distinct-expert count as 0, bit for bit; K of 64 (one masked
    tile of 128, and pre-loaded tiles past K) and 320 (the loop after the pre-loaded tiles, a masked tail; 4 tiles
    of 128 cover all of it); a pre-loaded tile used at the wrong K step fails it."""
    gen = torch.Generator().manual_seed(7 + inter + k)
    experts, hidden = 16, 96
    gu, gub = torch.randn(experts, hidden, 2 * inter, generator=gen) * 0.1, torch.randn(experts, 2 * inter) * 0.1
    dn, dnb = torch.randn(experts, inter, hidden, generator=gen) * 0.1, torch.randn(experts, hidden) * 0.1
    x = torch.randn(1, hidden, generator=gen)
    v, i = torch.topk(torch.randn(1, experts, generator=gen), k, dim=-1)
    w = torch.softmax(v, dim=-1)
    outs, counts = [], []
    for pre in (0, 1, 2, 4):
        monkeypatch.setattr(gk, "MOE_DOWN_PRE", pre)
        cnt = torch.zeros((), dtype=torch.int32)
        outs.append(gk.moe(x, gu, gub, dn, dnb, i.to(torch.int32), w, 1.702, 7.0, cnt))
        counts.append(int(cnt))
    for j in (1, 2, 3):
        assert torch.equal(outs[j], outs[0]), j
    assert counts == [k] * 4


@pytest.mark.parametrize("tokens", [1, 5, 20, 40, 70])
def test_triton_moe_tables_by_batch_match_hf(gk, tokens):
    """Each launch class with the shipped tables (kernels.moe_tiles: compact MOE_CONFIG_FEW at 1 token; scan M tile
    16 / 32 / 64 and sorted M tile 64 from MOE_CONFIG_BM, N-tile-major grids) gives HF's expert outputs."""
    model = _lively_tiny_model()
    mlp = model.model.layers[0].mlp
    gen = torch.Generator().manual_seed(20 + tokens)
    x = torch.randn(tokens, model.config.hidden_size, generator=gen)
    topv, topi = torch.topk(torch.randn(tokens, mlp.experts.num_experts, generator=gen), 2, dim=-1)
    topw = torch.softmax(topv, dim=-1)
    plan = gk.routing_plan(topi.to(torch.int32), mlp.experts.num_experts)
    want_table = gk.MOE_CONFIG_FEW if plan.compact else gk.MOE_CONFIG_BM[plan.bm]
    assert gk.moe_tiles(plan) is want_table, (tokens, plan.bm, plan.compact)
    assert tokens == 1 or any(len(t) > 4 and t[4] for t in want_table.values())  # an N-tile-major grid runs
    want = _hf_experts_out(model, mlp, x, topi, topw)
    experts = build_experts(mlp.experts, GraphOptions(experts="triton").resolve("cpu"))
    got = experts(x, topi.to(torch.int32), topw, None).view(tokens, 2, -1).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_triton_moe_n_major_grid_equals_expert_major(gk):
    """The N-tile-major grid (a 5th tile entry 1: `_moe_kernel` NB_MAJOR, program axes swapped) computes every row
    bit for bit as the expert-major grid and counts the same distinct experts: compact (few and past
    COMPACT_FEW_PAIRS), scan and sorted launches."""
    gen = torch.Generator().manual_seed(21)
    experts, hidden, inter = 16, 64, 32
    gu, gub = torch.randn(experts, hidden, 2 * inter, generator=gen) * 0.1, torch.randn(experts, 2 * inter) * 0.1
    dn, dnb = torch.randn(experts, inter, hidden, generator=gen) * 0.1, torch.randn(experts, hidden) * 0.1
    kinds = set()
    for tokens, k in ((1, 4), (3, 4), (8, 4), (20, 2), (gk.SCAN_MAX_TOKENS + 6, 2)):
        x = torch.randn(tokens, hidden, generator=gen)
        v, i = torch.topk(torch.randn(tokens, experts, generator=gen), k, dim=-1)
        w = torch.softmax(v, dim=-1)
        i = i.to(torch.int32)
        plan = gk.routing_plan(i, experts)
        kinds.add("sorted" if not plan.scan else ("compact" if plan.compact else "scan"))
        if plan.compact and plan.pairs > gk.COMPACT_FEW_PAIRS:
            assert gk.moe_tiles(plan) is gk.MOE_CONFIG_COMPACT
        outs, counts = [], []
        for order in (0, 1):
            cnt = torch.zeros((), dtype=torch.int32)
            tiles = {"gate_up": (32, 32, 4, 2, order), "down": (16, 32, 4, 2, order)}
            outs.append(gk.moe(x, gu, gub, dn, dnb, i, w, 1.702, 7.0, cnt, tiles=tiles))
            counts.append(int(cnt))
        assert torch.equal(outs[0], outs[1]), (tokens, k)
        assert counts[0] == counts[1] == i.unique().numel()
        assert outs[0].abs().sum(1).gt(0).all()  # every (token, slot) row written
    assert kinds == {"compact", "scan", "sorted"}



def _experts_ref(x, gu, gub, dn, dnb, topi, topw, alpha=1.702, limit=7.0, drop_bias=False):
    """float64 reference of the routed experts, summed over each token's k rows (what add_rmsnorm adds to h)."""
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j, e in enumerate(topi[t].tolist()):
            h = x[t].double() @ gu[e].double() + gub[e].double()
            gate, up = h[::2].clamp(max=limit), h[1::2].clamp(-limit, limit)
            y = ((up + 1) * gate * torch.sigmoid(gate * alpha)) @ dn[e].double()
            out[t] += (y + (0 if drop_bias else dnb[e].double())) * float(topw[t, j])
    return out


@pytest.mark.parametrize("experts,k", [(32, 4), (32, 2), (16, 4), (16, 2)])
def test_triton_moe_fused_one_launch_equals_two_launches(gk, monkeypatch, experts, k):
    """MOE_FUSED: both expert GEMMs of a compact launch in one persistent launch (gate_up tiles, then down tiles
    that wait on a per-slot counter) give `moe`'s two-launch rows bit for bit and, summed over each token's k rows
    as add_rmsnorm sums them, the float64 reference (which a dropped expert row or bias would miss); masked N and K
    tails (hidden 72, inter 40 against 32-wide tiles); one token and COMPACT_FEW_PAIRS // k tokens with a repeated
    routing (distinct experts < pairs: slots with no rows);
    three calls in a row, every slot counter back at 0 after each, the distinct-expert count as the two launches'."""
    gen = torch.Generator().manual_seed(40 + experts + k)
    hidden, inter = 72, 40
    gu, gub, dn, dnb = _expert_weights(gen, experts, hidden, inter)
    tile = (32, 32, 4, 2)
    monkeypatch.setattr(gk, "MOE_CONFIG_FEW", {"gate_up": tile, "down": tile})
    monkeypatch.setattr(gk, "MOE_FUSED_CONFIG", tile)
    multi = gk.COMPACT_FEW_PAIRS // k
    for tokens in (1, 1, multi, 1):
        x = torch.randn(tokens, hidden, generator=gen)
        v, i = torch.topk(torch.randn(tokens, experts, generator=gen), k, dim=-1)
        if tokens > 1:
            i[1] = i[0]  # repeated experts: fewer distinct experts than pairs, so some slots have no rows
        i = i.to(torch.int32)
        w = torch.softmax(v, dim=-1)
        plan = gk.routing_plan(i, experts)
        outs, counts = {}, {}
        for fused in (False, True):
            monkeypatch.setattr(gk, "MOE_FUSED", fused)
            assert gk.moe_fused_applies(plan) == fused
            cnt = torch.zeros((), dtype=torch.int32)
            outs[fused] = gk.moe(x, gu, gub, dn, dnb, i, w, 1.702, 7.0, cnt)
            counts[fused] = int(cnt)
        sync = gk._MOE_SYNC[x.device]
        assert int(sync.abs().sum()) == 0 and not gk.moe_fused_failed(x.device)  # counters reset, no give-up
        assert torch.equal(outs[True], outs[False]), (tokens, k)
        assert counts[True] == counts[False] == i.unique().numel()
        got = outs[True].view(tokens, k, hidden).double().sum(1)
        want = _experts_ref(x, gu, gub, dn, dnb, i, w)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert (got - _experts_ref(x, gu, gub, dn, dnb, i, w, drop_bias=True)).abs().max() > 1e-2
        assert (got - _experts_ref(x, gu, gub, dn, dnb, i[:, : k - 1], w)).abs().max() > 1e-2
    monkeypatch.setattr(gk, "MOE_FUSED", True)
    many = torch.arange(3 * 4, dtype=torch.int32).view(3, 4) % experts  # 12 pairs > COMPACT_FEW_PAIRS: two launches
    assert not gk.moe_fused_applies(gk.routing_plan(many, experts))



@pytest.mark.parametrize("experts,k", [(32, 4), (16, 2)])
def test_triton_moe_split_k_equals_unsplit(gk, experts, k):
    """A 6th tile entry S > 1 splits each expert GEMM's K over S programs (fp32 partials; the tile's last program
    sums them in slice order and runs the epilogue): the unsplit rows within float32 rounding and the float64
    reference summed over each token's k rows; masked K slices (hidden 72, inter 40, BK 16: slices of 32, 32, 8);
    compact (one token), scan (9 tokens at E16) and sorted launches (the split ignored there: bit for bit); two
    calls in a row bit for bit, every tile count back at 0, the distinct-expert count unchanged."""
    gen = torch.Generator().manual_seed(50 + experts + k)
    hidden, inter = 72, 40
    gu, gub, dn, dnb = _expert_weights(gen, experts, hidden, inter)
    plain = {"gate_up": (32, 16, 4, 2), "down": (32, 16, 4, 2)}
    for tokens in (1,) if experts == 32 else (1, 9, gk.SCAN_MAX_TOKENS + 1):
        x = torch.randn(tokens, hidden, generator=gen)
        v, i = torch.topk(torch.randn(tokens, experts, generator=gen), k, dim=-1)
        i = i.to(torch.int32)
        w = torch.softmax(v, dim=-1)
        plan = gk.routing_plan(i, experts)
        assert plan.compact == (tokens == 1) and plan.scan == (tokens <= gk.SCAN_MAX_TOKENS)
        want = _experts_ref(x, gu, gub, dn, dnb, i, w)
        cnt = torch.zeros((), dtype=torch.int32)
        ref = gk.moe(x, gu, gub, dn, dnb, i, w, 1.702, 7.0, cnt, tiles=plain)
        for split in ({"gate_up": 1, "down": 3}, {"gate_up": 3, "down": 2}):
            tiles = {g: (*t, 0, split[g]) for g, t in plain.items()}
            outs = []
            for _ in range(2):
                c = torch.zeros((), dtype=torch.int32)
                outs.append(gk.moe(x, gu, gub, dn, dnb, i, w, 1.702, 7.0, c, tiles=tiles))
                assert int(c) == int(cnt) == i.unique().numel()
                assert all(int(b.abs().sum()) == 0 for b in gk._SPLIT_SYNC.values())
            assert torch.equal(outs[0], outs[1]), (tokens, split)
            if plan.scan:
                torch.testing.assert_close(outs[0], ref, rtol=1e-5, atol=1e-5)
                assert all((x.device, g) in gk._SPLIT_SYNC for g in split if split[g] > 1)  # the split path ran
            else:
                assert torch.equal(outs[0], ref)
            got = outs[0].view(tokens, k, hidden).double().sum(1)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_triton_moe_fused_grid_choice(gk, monkeypatch):
    """The persistent launch's program count: every item up to the resident cap; MOE_FUSED_EVEN the largest common
    divisor of the item and gate_up item counts not above the cap, when it is at least half of it (gpt-oss-20b at
    one token, BN 64: 540 items, 360 gate_up, at top_k 4; 270 / 180 at top_k 2; an H200 at 2 programs an SM: cap
    264)."""
    monkeypatch.setattr(gk, "MOE_FUSED_EVEN", False)
    assert [gk.moe_fused_grid(n, g, 264) for n, g in ((540, 360), (270, 180), (100, 60))] == [264, 264, 100]
    monkeypatch.setattr(gk, "MOE_FUSED_EVEN", True)
    assert [gk.moe_fused_grid(n, g, 264) for n, g in ((540, 360), (270, 180), (100, 60), (526, 263))] == [
        180, 264, 100, 263]

def test_triton_attn_decode_configs_match_reference(gk):
    """Decode attention with sinks for every cache block / warp / stage choice (kernels.ATTN_CONFIG_BY_BATCH):
    the float32 softmax over [sink, q.k] of the valid slots, times v; a full cache and a sliding ring."""
    gen = torch.Generator().manual_seed(22)
    bsz, hq, hkv, d = 2, 4, 2, 16
    q = torch.randn(bsz, hq, d, generator=gen)
    sinks = torch.randn(hq, generator=gen)
    scale = d ** -0.5
    for s_cache, pos in ((40, 37), (16, 29)):  # full layer: slots 0..37 valid; ring of 16 past the window: all
        kc = torch.randn(bsz, hkv, s_cache, d, generator=gen)
        vc = torch.randn(bsz, hkv, s_cache, d, generator=gen)
        end = min(pos + 1, s_cache)
        k = kc[:, :, :end].repeat_interleave(hq // hkv, dim=1)
        v = vc[:, :, :end].repeat_interleave(hq // hkv, dim=1)
        scores = torch.einsum("bhd,bhsd->bhs", q, k) * scale
        p = torch.softmax(torch.cat([sinks.view(1, hq, 1).expand(bsz, hq, 1), scores], -1), -1)[..., 1:]
        want = torch.einsum("bhs,bhsd->bhd", p, v).reshape(bsz, hq * d)
        for cfg in ((64, 4, None), (128, 4, None), (16, 4, 2), (32, 8, None)):
            got = gk.attn_decode(q, kc, vc, sinks, torch.tensor([pos]), scale, config=cfg)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{cfg} {s_cache}")


@pytest.mark.parametrize("rows", [1, 3])
def test_triton_rope_attention_fused_equals_rope_then_attention(gk, rows):
    """`rope_attn_decode` (rope, cache write and attention in one launch) against `rope_kv` then `attn_decode`: the
    same cache writes and the same output, for qkv as a tensor and as split-K partials, on a full cache and on a
    sliding ring past its window, over three steps in a row (each step reads the slots the earlier ones wrote)."""
    gen = torch.Generator().manual_seed(31)
    hq, hkv, d, hidden = 4, 2, 16, 48
    sinks = torch.randn(hq, generator=gen)
    cos, sin = torch.randn(64, d // 2, generator=gen), torch.randn(64, d // 2, generator=gen)
    w = torch.randn((hq + 2 * hkv) * d, hidden, generator=gen) * 0.2
    b = torch.randn((hq + 2 * hkv) * d, generator=gen)
    for sliding, s_cache, first in ((False, 48, 30), (True, 16, 29)):
        for use_partials in (False, True):
            kc = torch.randn(rows, hkv, s_cache, d, generator=gen)
            vc = torch.randn(rows, hkv, s_cache, d, generator=gen)
            kc2, vc2 = kc.clone(), vc.clone()
            for pos in range(first, first + 3):
                x = torch.randn(rows, hidden, generator=gen)
                qkv = gk.splitk_linear(x, w, b, (16, 16, 2, 4)) if use_partials else torch.nn.functional.linear(x, w, b)
                p = torch.tensor(pos)
                q = gk.rope_kv(qkv, cos, sin, p, kc, vc, hq, sliding, s_cache if sliding else 0)
                want = gk.attn_decode(q, kc, vc, sinks, p, d ** -0.5)
                got = gk.rope_attn_decode(qkv, cos, sin, p, kc2, vc2, sinks, d ** -0.5, hq, sliding,
                                          s_cache if sliding else 0)
                assert torch.equal(kc2, kc) and torch.equal(vc2, vc), (sliding, use_partials, pos)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"{sliding} {use_partials} {pos}")


def test_triton_unfused_rope_attention_matches_hf_tokens(gk, lively, monkeypatch):
    """With rope + attention unfused (rope_kv, then attn_decode: the ablation path) the decode still gives hf's
    tokens (the fused kernel, the default, runs in test_triton_kernels_match_hf_tokens)."""
    model, ids, ref = lively
    monkeypatch.setattr(gk, "FUSE_ROPE_ATTN", False)
    res = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids, TOKENS)
    assert torch.equal(res.tokens, ref.tokens)


def test_triton_swiglu_clamp_matches_hf_with_large_activations(gk):
    """The gate_up kernel's epilogue clamps like HF (limit 7): activations far past it, outputs equal HF's."""
    model = _lively_tiny_model()
    mlp = model.model.layers[0].mlp
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, model.config.hidden_size, generator=gen) * 20
    topv, topi = torch.topk(torch.randn(6, mlp.experts.num_experts, generator=gen), 2, dim=-1)
    topw = torch.softmax(topv, dim=-1)
    want = _hf_experts_out(model, mlp, x, topi, topw)
    assert want.abs().max() > 50  # clamp-bound scale: (7 + 1) * 7 per unit of down weight
    experts = build_experts(mlp.experts, GraphOptions(experts="triton").resolve("cpu"))
    assert isinstance(experts, DenseExperts)
    got = experts(x, topi.to(torch.int32), topw, None).view(6, 2, -1).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [True, False])
def test_triton_router_near_tie_keeps_hf_experts(gk, dtype, split):
    """Both Triton router paths resolve a near-tie at the top-k boundary as HF's router (and TorchOps) do."""
    model = _lively_tiny_model()
    hf_router = model.model.layers[0].mlp.router.to(dtype)
    router, x, kept = _near_tie_router(model.config.hidden_size, hf_router.weight.shape[0], dtype)
    with torch.no_grad():
        hf_router.weight.copy_(router.weight)
        hf_router.bias.copy_(router.bias)
        _, _, want = hf_router(x)
    got, _ = TritonOps(router_split=split).route(x, router)
    assert sorted(got[0].tolist()) == kept
    assert torch.equal(got.long(), want.long())
    assert torch.equal(TorchOps().route(x, router)[0].long(), want.long())


def test_triton_gemv_matches_linear(gk):
    """The decode GEMV (qkv, o_proj, lm_head at <= 8 rows): x W^T + b for 1..8 rows, N not a multiple of the tile,
    with and without bias; and the decoder with gemv on gives hf's tokens."""
    gen = torch.Generator().manual_seed(9)
    for m, n, k in ((1, 200, 96), (3, 37, 300), (8, 64, 64)):
        x = torch.randn(m, k, generator=gen)
        w = torch.randn(n, k, generator=gen)
        b = torch.randn(n, generator=gen)
        torch.testing.assert_close(gk.gemv(x, w, b), torch.nn.functional.linear(x, w, b), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gk.gemv(x, w, None, config=(16, 64, 4, 2)), x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pairs,experts", [(7, 4), (140, 8), (1024, 32)])
def test_triton_routing_sort_is_a_stable_sort(gk, pairs, experts):
    """The one-program counting sort of sorted mode equals torch.sort(stable=True) + searchsorted."""
    flat = torch.randint(0, experts, (pairs,), dtype=torch.int32, generator=torch.Generator().manual_seed(pairs))
    plan = gk.routing_plan(flat.view(-1, 1).expand(-1, 1).contiguous(), experts)
    sorted_e, order = torch.sort(flat.long(), stable=True)
    if pairs > gk.SCAN_MAX_TOKENS:
        assert torch.equal(plan.rows.long(), order)
        assert torch.equal(plan.offs.long(), torch.searchsorted(sorted_e, torch.arange(experts + 1)))
    rows = torch.empty(pairs, dtype=torch.int32)
    offs = torch.empty(experts + 1, dtype=torch.int32)
    gk._routing_sort_kernel[(experts,)](flat, rows, offs, pairs, PB=gk._p2(pairs))
    assert torch.equal(rows.long(), order)
    assert torch.equal(offs.long(), torch.searchsorted(sorted_e, torch.arange(experts + 1)))


def test_triton_splitk_linear_partials_feed_rope_and_norm(gk):
    """splitk_linear's partials, summed by their consumers (rope_kv for qkv, add_rmsnorm for o_proj), give what
    F.linear's output gives them: the same roped q, cache writes and normed rows (float32, 1 and 2 rows)."""
    gen = torch.Generator().manual_seed(8)
    hq, hkv, d, hidden = 4, 2, 16, 96
    for rows in (1, 2):
        x = torch.randn(rows, hidden, generator=gen)
        w = torch.randn((hq + 2 * hkv) * d, hidden, generator=gen) * 0.1
        b = torch.randn((hq + 2 * hkv) * d, generator=gen)
        for cfg in ((16, 32, 2, 4), (32, 64, 4, 4)):
            part = gk.splitk_linear(x, w, b, cfg)
            ref = torch.nn.functional.linear(x, w, b)
            torch.testing.assert_close(part.materialize(), ref, rtol=1e-5, atol=1e-5)
            cos, sin = torch.randn(8, d // 2, generator=gen), torch.randn(8, d // 2, generator=gen)
            pos = torch.tensor(5)
            caches = [torch.zeros(rows, hkv, 8, d) for _ in range(4)]
            q_ref = gk.rope_kv(ref, cos, sin, pos, caches[0], caches[1], hq, False, 0)
            q_got = gk.rope_kv(part, cos, sin, pos, caches[2], caches[3], hq, False, 0)
            torch.testing.assert_close(q_got, q_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(caches[2], caches[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(caches[3], caches[1], rtol=1e-5, atol=1e-5)
        wo = torch.randn(hidden, hq * d, generator=gen) * 0.1
        bo = torch.randn(hidden, generator=gen)
        att = torch.randn(rows, hq * d, generator=gen)
        h1, h2 = torch.randn(rows, hidden, generator=gen), None
        h2 = h1.clone()
        ln = torch.randn(hidden, generator=gen)
        want = gk.add_rmsnorm(h1, torch.nn.functional.linear(att, wo, bo), 1, ln, 1e-5)
        got = gk.add_rmsnorm(h2, gk.splitk_linear(att, wo, bo, (16, 32, 2, 4)), 1, ln, 1e-5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("rows", [2, 5, 8, 20, 40])
def test_triton_splitk_mma_linear_partials_match_torch(gk, rows):
    """The tensor-core split-K linear (swap-AB `tl.dot`, rows padded to the M tile 16 / 32 / 64): each K slice's
    partial sums equal x[:, slice] @ w[:, slice]^T and the materialized output F.linear's, with an N tail (200 = 3 x
    64 + 8) and a K tail (176 split into slices of 64 / 128 with a shorter last one); fed to its consumers
    (add_rmsnorm for o_proj, rope_kv for qkv) it gives what F.linear's output gives them. float32 inputs (the
    interpreter's bf16 dot is not exact), so the kernel's IEEE products."""
    gen = torch.Generator().manual_seed(40 + rows)
    n, k = 200, 176
    x = torch.randn(rows, k, generator=gen)
    w = torch.randn(n, k, generator=gen) * 0.1
    b = torch.randn(n, generator=gen)
    ref = torch.nn.functional.linear(x, w, b)
    for cfg, slices in (((64, 32, 3, 4, 2), (0, 64, 128, 176)), ((16, 64, 2, 4, 3), (0, 128, 176))):
        got = gk.splitk_mma_linear(x, w, b, cfg)
        assert got.part.shape == (len(slices) - 1, rows, n) and got.shape == (rows, n)
        for s in range(len(slices) - 1):
            lo, hi = slices[s], slices[s + 1]
            torch.testing.assert_close(got.part[s], x[:, lo:hi] @ w[:, lo:hi].T, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.materialize(), ref, rtol=1e-5, atol=1e-5)
    if rows != 5:
        return
    hq, hkv, d, hidden = 4, 2, 16, 96
    wq = torch.randn((hq + 2 * hkv) * d, hidden, generator=gen) * 0.1
    bq = torch.randn((hq + 2 * hkv) * d, generator=gen)
    xq = torch.randn(rows, hidden, generator=gen)
    cos, sin = torch.randn(8, d // 2, generator=gen), torch.randn(8, d // 2, generator=gen)
    caches = [torch.zeros(rows, hkv, 8, d) for _ in range(4)]
    pos = torch.tensor(3)
    q_ref = gk.rope_kv(torch.nn.functional.linear(xq, wq, bq), cos, sin, pos, caches[0], caches[1], hq, True, 4)
    q_got = gk.rope_kv(gk.splitk_mma_linear(xq, wq, bq, (64, 32, 2, 4, 2)), cos, sin, pos, caches[2], caches[3], hq,
                       True, 4)
    torch.testing.assert_close(q_got, q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[2], caches[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[3], caches[1], rtol=1e-5, atol=1e-5)
    wo, bo = torch.randn(hidden, hq * d, generator=gen) * 0.1, torch.randn(hidden, generator=gen)
    att, ln = torch.randn(rows, hq * d, generator=gen), torch.randn(hidden, generator=gen)
    h1 = torch.randn(rows, hidden, generator=gen)
    h2 = h1.clone()
    want = gk.add_rmsnorm(h1, torch.nn.functional.linear(att, wo, bo), 1, ln, 1e-5)
    got = gk.add_rmsnorm(h2, gk.splitk_mma_linear(att, wo, bo, (32, 32, 3, 4, 2)), 1, ln, 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-5)


def test_triton_splitk_mma_gate_by_rows_and_site(gk, monkeypatch):
    """TritonOps.linear: one row takes `splitk_linear`, 2..SPLITK_MMA_MAX_ROWS rows with partials the tensor-core
    split-K (the site's tile of the row class), a class whose entry is None, more rows, no partials (lm_head) or a
    site without a tile take F.linear."""
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    monkeypatch.setattr(gk, "SPLITK_MMA_CONFIG", {16: {"qkv": (32, 32, 2, 4, 2), "o_proj": None},
                                                 32: {"qkv": (32, 32, 2, 4, 2)}})
    monkeypatch.setattr(gk, "SPLITK_MMA_MAX_ROWS", 32)
    ran = []
    for name in ("splitk_linear", "splitk_mma_linear"):
        real = getattr(gk, name)

        def spy(*a, _real=real, _name=name, **kw):
            ran.append((_name, a[3] if len(a) > 3 else None))
            return _real(*a, **kw)

        monkeypatch.setattr(gk, name, spy)
    ops = TritonOps(splitk=True)
    mma = ("splitk_mma_linear", (32, 32, 2, 4, 2))
    for rows, site, partials, want in ((1, "qkv", True, "splitk_linear"), (2, "qkv", True, mma),
                                       (16, "qkv", True, mma), (20, "qkv", True, mma), (2, "o_proj", True, None),
                                       (20, "o_proj", True, None), (33, "qkv", True, None), (8, "qkv", False, None),
                                       (8, "", True, None)):
        ran.clear()
        x = torch.randn(rows, 64, generator=gen)
        y = ops.linear(x, w, b, partials=partials, site=site)
        got = (ran[0] if ran[0][0] == "splitk_mma_linear" else ran[0][0]) if ran else None
        assert got == want and isinstance(y, torch.Tensor) == (want is None), (rows, site, partials, got)
        dense = y if isinstance(y, torch.Tensor) else y.materialize()
        torch.testing.assert_close(dense, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_triton_splitk_and_gemv_decode_matches_hf_tokens(gk, lively, monkeypatch):
    """Batch-1 decode with qkv and o_proj as split-K partials (GraphOptions.splitk, the default; batch 1 is where it
    applies) and the other dense linears (lm_head) through the Triton GEMV (GraphOptions.gemv; tiny-moe's 512-row
    lm_head is a "small" matrix, for which the committed table says cuBLAS, so the case forces a GEMV tile):
    the same greedy tokens as hf, and both kernels ran."""
    model, ids, _ = lively
    one = ids[:1]
    ref = get_engine("hf").generate(model, one, TOKENS)
    assert ref.tokens.unique().numel() > 2
    monkeypatch.setitem(gk.GEMV_CONFIG, "small", (16, 64, 4, 2))
    calls = {"gemv": 0, "splitk": 0}
    # qkv: splitk_norm_linear with LAZY_NORM (the norm folded in), else splitk_linear
    for name, fn in (("gemv", "gemv"), ("splitk", "splitk_linear"), ("splitk", "splitk_norm_linear")):
        real = getattr(gk, fn)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(gk, fn, counted)
    eng = get_engine("graph", {"kernels": "triton", "experts": "triton", "splitk": True, "gemv": True})
    res = eng.generate(model, one, TOKENS)
    assert calls["splitk"] > 0 and calls["gemv"] > 0, calls
    assert torch.equal(res.tokens, ref.tokens)


@pytest.mark.parametrize("rows", [1, 3])
def test_triton_norm_router_fused_equals_norm_then_router(gk, rows):
    """`add_rmsnorm_route` (post-attention norm + split-K router, one launch, the last program picks the top-k):
    the same residual update, normed rows, expert ids and weights as `add_rmsnorm` then `router`, with the delta as
    a tensor or as split-K partials; twice in a row, so the program count is reset after each launch."""
    gen = torch.Generator().manual_seed(12)
    hidden, experts, k = 200, 8, 2
    for use_partials in (False, True):
        for _ in range(2):
            h = torch.randn(rows, hidden, generator=gen)
            h2 = h.clone()
            att = torch.randn(rows, 24, generator=gen)
            wo, bo = torch.randn(hidden, 24, generator=gen) * 0.2, torch.randn(hidden, generator=gen)
            delta = (gk.splitk_linear(att, wo, bo, (16, 32, 2, 4)) if use_partials
                     else torch.nn.functional.linear(att, wo, bo))
            ln = torch.randn(hidden, generator=gen)
            rw, rb = torch.randn(experts, hidden, generator=gen) * 0.1, torch.randn(experts, generator=gen)
            normed = gk.add_rmsnorm(h, delta, 1, ln, 1e-5)
            want_i, want_w = gk.router(normed, rw, rb, k)
            got, got_i, got_w = gk.add_rmsnorm_route(h2, delta, ln, 1e-5, rw, rb, k)
            assert torch.equal(got, normed) and torch.equal(h2, h)
            assert torch.equal(got_i, want_i) and torch.equal(got_w, want_w)
            assert int(gk._COUNTERS[h.device].item()) == 0


def test_triton_unfused_norm_router_matches_hf_tokens(gk, lively, monkeypatch):
    """With the norm + router fusion off (add_rmsnorm, then router: the ablation path) the decode still gives hf's
    tokens, at batch 2 and batch 1 (split-K partials; batch 1 is where the fused kernel runs by default, see
    test_triton_splitk_and_gemv_decode_matches_hf_tokens)."""
    model, ids, ref = lively
    monkeypatch.setattr(gk, "FUSE_NORM_ROUTER", False)
    res = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids, TOKENS)
    assert torch.equal(res.tokens, ref.tokens)
    one = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids[:1], TOKENS)
    assert torch.equal(one.tokens, get_engine("hf").generate(model, ids[:1], TOKENS).tokens)


@pytest.mark.parametrize("one_row", [True, False])
def test_triton_norm_router_one_row_ties_and_residual(gk, monkeypatch, one_row):
    """One row through `add_rmsnorm_route` with NORM_ROUTER_ONE_ROW (the top-k by rank, the residual kept in
    registers) and without: with tied logits at the top-k boundary (a zero router weight, tied biases) the lower
    expert ids win, as torch.topk and `router`; the residual and the weights are those of add_rmsnorm + router."""
    monkeypatch.setattr(gk, "NORM_ROUTER_ONE_ROW", one_row)
    gen = torch.Generator().manual_seed(31)
    hidden, experts, k = 200, 8, 3
    h = torch.randn(1, hidden, generator=gen)
    h2 = h.clone()
    delta, ln = torch.randn(1, hidden, generator=gen), torch.randn(hidden, generator=gen)
    rw = torch.zeros(experts, hidden)
    rb = torch.tensor([0.5, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, -1.0])
    normed = gk.add_rmsnorm(h, delta, 1, ln, 1e-5)
    want_i, want_w = gk.router(normed, rw, rb, k)
    got, got_i, got_w = gk.add_rmsnorm_route(h2, delta, ln, 1e-5, rw, rb, k)
    assert got_i.tolist() == [[1, 3, 5]] and torch.equal(got_i, want_i) and torch.equal(got_w, want_w)
    assert torch.equal(got, normed) and torch.equal(h2, h)
    rb2 = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.0, 2.0, 1.0, 1.0])  # a tie at the boundary: 2 (lowest) of 2, 4, 6, 7
    _, got_i, got_w = gk.add_rmsnorm_route(h.clone(), delta, ln, 1e-5, rw, rb2, 4)
    want_i, want_w = gk.router(normed, rw, rb2, 4)
    assert got_i.tolist() == [[3, 1, 5, 2]] and torch.equal(got_w, want_w)


def test_triton_fold_norm_router_equals_splitk_then_norm_router(gk):
    """`splitk_norm_route` (o_proj's split-K GEMV, the residual, RMSNorm and the router in one launch: the last
    program of each N tile reduces it, the last tile the row) against `splitk_linear` then `add_rmsnorm_route`,
    float32: the same residual h (the S partials summed in slice order + bias, as the consumer does), the normed row
    and the router weights within float32 rounding (the RMS and the logits are summed per tile), the same expert
    ids; N tails (200 = 12 x 16 + 8, 200 = 6 x 32 + 8), a K tail, several rows of random data one after another
    (each launch leaves its counts at zero for the next), a model without the o_proj bias."""
    gen = torch.Generator().manual_seed(91)
    hidden = 200
    for kdim, experts, k, cfg, bias in ((96, 8, 2, (16, 32, 2, 4), True), (100, 12, 3, (32, 64, 4, 4), True),
                                        (64, 32, 4, (16, 32, 4, 4), False)):
        for _ in range(2):
            x = torch.randn(1, kdim, generator=gen)
            wo = torch.randn(hidden, kdim, generator=gen) * 0.2
            bo = torch.randn(hidden, generator=gen) if bias else None
            h = torch.randn(1, hidden, generator=gen)
            h0, h2 = h.clone(), h.clone()
            ln = torch.randn(hidden, generator=gen)
            rw, rb = torch.randn(experts, hidden, generator=gen) * 0.1, torch.randn(experts, generator=gen)
            want, want_i, want_w = gk.add_rmsnorm_route(h, gk.splitk_linear(x, wo, bo, cfg), ln, 1e-5, rw, rb, k)
            got, got_i, got_w = gk.splitk_norm_route(x, wo, bo, h2, ln, 1e-5, rw, rb, k, cfg)
            assert torch.equal(h2, h)
            torch.testing.assert_close(h2, h0 + torch.nn.functional.linear(x, wo, bo), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got_i, want_i), (got_i, want_i)
            torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
            nt = -(-hidden // cfg[0])
            assert not gk._FOLD_COUNTERS[(h.device, nt)].any()


def test_triton_fold_scratch_holds_each_tiles_sums_of_squares_and_router_partials(gk):
    """`fold_launch`'s scratch: each N tile's sum of squares of the updated residual and its router partial logits
    sum_n rw[e, n] w[n] h[n] (every expert, the padding columns zero), against float64 from the residual the launch
    left; the last tile builds the logits from exactly these (session 10's race corrupted them for experts 4-15)."""
    gen = torch.Generator().manual_seed(5)
    hidden, kdim, cfg = 200, 96, (16, 32, 2, 4)
    for experts in (8, 16, 20):
        x, wo = torch.randn(1, kdim, generator=gen), torch.randn(hidden, kdim, generator=gen) * 0.2
        h, ln = torch.randn(1, hidden, generator=gen), torch.randn(hidden, generator=gen)
        rw, rb = torch.randn(experts, hidden, generator=gen) * 0.1, torch.randn(experts, generator=gen)
        _, _, _, part, ss, rl = gk.fold_launch(x, wo, None, h, ln, 1e-5, rw, rb, 2, cfg)
        nt = -(-hidden // cfg[0])
        tile = torch.arange(hidden) // cfg[0]
        hv = h.double().view(-1)
        want_ss = torch.zeros(nt, dtype=torch.float64).index_add_(0, tile, hv * hv)
        prod = (rw.double() * (ln.double() * hv)).t()
        want_rl = torch.zeros(nt, experts, dtype=torch.float64).index_add_(0, tile, prod)
        assert part.shape[0] == cfg[2] and rl.shape == (nt, max(16, 1 << (experts - 1).bit_length()))
        torch.testing.assert_close(ss.double(), want_ss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rl[:, :experts].double(), want_rl, rtol=1e-5, atol=1e-5)
        assert not rl[:, experts:].any()


@pytest.mark.parametrize("ks", [0, 1, 4])
def test_triton_lazy_norm_linear_equals_add_rmsnorm_then_splitk(gk, ks):
    """`splitk_norm_linear` (lazy RMSNorm: the split-K GEMV of w_ln * (h + the ks rows of y), unscaled, with each K
    slice's sum of squares) against add_rmsnorm then splitk_linear, float32: the updated residual row bit for bit (in
    its scratch row; h itself untouched), the per-slice sums of squares adding up to the row's, the partials times the
    rsqrt equal to the normed linear's (materialize), and rope_attn_decode on the lazy partials equal to it on the
    plain ones (the consumer applies the scale); a K tail (hidden 200 = 3 slices of 96 at BK 32, the last short)."""
    gen = torch.Generator().manual_seed(44 + ks)
    hq, hkv, d, hidden = 4, 2, 16, 200
    n = (hq + 2 * hkv) * d
    cfg = (16, 32, 3, 4)
    for _ in range(2):
        h = torch.randn(1, hidden, generator=gen)
        y = torch.randn(ks, hidden, generator=gen) if ks else None
        ln = torch.randn(hidden, generator=gen)
        w, b = torch.randn(n, hidden, generator=gen) * 0.2, torch.randn(n, generator=gen)
        h_ref = h.clone()
        normed = gk.add_rmsnorm(h_ref, y, ks, ln, 1e-5)
        want = gk.splitk_linear(normed, w, b, cfg)
        h0 = h.clone()
        got, hm = gk.splitk_norm_linear(h, y, ks, ln, 1e-5, w, b, cfg)
        assert torch.equal(h, h0)  # every program reads h: the update goes to hm
        assert torch.equal(hm, h_ref)
        torch.testing.assert_close(got.ss.sum(), (h_ref * h_ref).sum(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.materialize(), want.materialize(), rtol=1e-5, atol=1e-5)
        cos, sin = torch.randn(64, d // 2, generator=gen), torch.randn(64, d // 2, generator=gen)
        sinks = torch.randn(hq, generator=gen)
        kc, vc = torch.randn(1, hkv, 48, d, generator=gen), torch.randn(1, hkv, 48, d, generator=gen)
        kc2, vc2 = kc.clone(), vc.clone()
        p = torch.tensor(30)
        plain = gk.rope_attn_decode(want, cos, sin, p, kc, vc, sinks, d ** -0.5, hq, False, 0)
        lazy = gk.rope_attn_decode(got, cos, sin, p, kc2, vc2, sinks, d ** -0.5, hq, False, 0)
        torch.testing.assert_close(lazy, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kc2, kc, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rope_attn_decode only"):
        gk.add_rmsnorm(h.clone(), got, 1, ln, 1e-5)


@pytest.mark.parametrize("pre", [1, 2, 4])
def test_triton_lazy_pre_wait_weight_tiles_give_the_same_bits(gk, monkeypatch, pre):
    """LAZY_PRE (the lazy GEMV's first weight tiles of each K slice loaded before its PDL wait, `_pre_load`): the
    partials, sums of squares and updated residual bit for bit as without, after a down GEMM of >= LAZY_PRE_MIN_KS
    rows; K slices of 3 tiles and a short last one (K tails), so PRE 4 passes a slice's end (masked out); an
    out-of-range PRE is refused."""
    gen = torch.Generator().manual_seed(70 + pre)
    hidden, cfg, ks = 200, (16, 32, 3, 4), 4  # slices of 96 (3 tiles) and a short 8
    h, ln = torch.randn(1, hidden, generator=gen), torch.randn(hidden, generator=gen)
    y = torch.randn(ks, hidden, generator=gen)
    w, b = torch.randn(96, hidden, generator=gen) * 0.2, torch.randn(96, generator=gen)

    def run():
        lz, hm = gk.splitk_norm_linear(h, y, ks, ln, 1e-5, w, b, cfg)
        return [lz.part, lz.ss, hm]

    monkeypatch.setattr(gk, "LAZY_PRE_MIN_KS", ks)
    monkeypatch.setattr(gk, "LAZY_PRE", 0)
    want = run()
    monkeypatch.setattr(gk, "LAZY_PRE", pre)
    for i, (a, c) in enumerate(zip(run(), want, strict=True)):
        assert torch.equal(a, c), i
    monkeypatch.setattr(gk, "LAZY_PRE", 5)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        run()


def test_triton_moe_early_bias_gives_the_same_bits(gk, monkeypatch):
    """MOE_EARLY_BIAS (the expert GEMMs' bias tiles and the down GEMM's routing weights loaded before the K loop, the
    down GEMM's before its wait): the outputs of compact, scan, split-K and sorted launches bit for bit as with the
    loads after the loop."""
    gen = torch.Generator().manual_seed(81)
    experts, hidden, inter = 16, 72, 40
    gu, gub, dn, dnb = _expert_weights(gen, experts, hidden, inter)
    split = {"gate_up": (32, 16, 4, 2, 0, 3), "down": (32, 16, 4, 2, 0, 2)}
    for tokens, k, tiles in ((1, 4, None), (1, 2, split), (9, 2, None), (9, 4, split),
                             (gk.SCAN_MAX_TOKENS + 1, 4, None)):
        x = torch.randn(tokens, hidden, generator=gen)
        v, i = torch.topk(torch.randn(tokens, experts, generator=gen), k, dim=-1)
        i, w = i.to(torch.int32), torch.softmax(v, dim=-1)
        outs = []
        monkeypatch.setattr(gk, "MOE_EARLY_BIAS_MAX_TOKENS", 1 << 20)  # the early path at every size, sorted too
        for early in (False, True):
            monkeypatch.setattr(gk, "MOE_EARLY_BIAS", early)
            assert gk.moe_early_bias_on(tokens) is early
            outs.append(gk.moe(x, gu, gub, dn, dnb, i, w, 1.702, 7.0, tiles=tiles))
        assert torch.equal(outs[0], outs[1]), (tokens, k, tiles)


def test_triton_fold_tail_loads_give_the_same_bits(gk, monkeypatch):
    """FOLD_TAIL_LOADS (every fold program issues the tile-last path's loads right after its K loop): the residual,
    the normed row, the expert ids and weights and the scratch (partials, sums of squares, router partials) bit for
    bit as with the loads in the tail; with and without the o_proj bias, the residual in place or in a separate row
    (lazy RMSNorm's scratch)."""
    gen = torch.Generator().manual_seed(83)
    hidden, kdim, cfg = 200, 96, (16, 32, 2, 4)
    for bias, separate in ((True, False), (False, True), (True, True)):
        x, wo = torch.randn(1, kdim, generator=gen), torch.randn(hidden, kdim, generator=gen) * 0.2
        bo = torch.randn(hidden, generator=gen) if bias else None
        h, ln = torch.randn(1, hidden, generator=gen), torch.randn(hidden, generator=gen)
        h_in = torch.randn(1, hidden, generator=gen) if separate else None
        rw, rb = torch.randn(12, hidden, generator=gen) * 0.1, torch.randn(12, generator=gen)
        res = []
        for tail in (False, True):
            monkeypatch.setattr(gk, "FOLD_TAIL_LOADS", tail)
            h2 = h.clone()
            res.append([h2, *gk.fold_launch(x, wo, bo, h2, ln, 1e-5, rw, rb, 3, cfg,
                                            None if h_in is None else h_in.clone())])
        for j, (a, c) in enumerate(zip(res[1], res[0], strict=True)):
            assert torch.equal(a, c), (bias, separate, j)


def test_triton_lazy_norm_decode_matches_hf_tokens(gk, lively, monkeypatch):
    """Batch-1 decode with LAZY_NORM (no add_rmsnorm launch between the experts and qkv: TritonOps.norm_linear, the
    fold reading the residual from the scratch row): hf's greedy tokens, and the lazy launch ran in every layer but the
    final norm; with the fold off too (linear_norm_route copies the scratch row back first); batch 2 unaffected."""
    model, ids, ref = lively
    monkeypatch.setattr(gk, "LAZY_NORM", True)
    calls = []
    real = gk.splitk_norm_linear
    monkeypatch.setattr(gk, "splitk_norm_linear",
                        lambda *a, **kw: calls.append((kw.get("early"), kw.get("pre_min_ks"))) or real(*a, **kw))
    hf_one = get_engine("hf").generate(model, ids[:1], TOKENS).tokens
    for fold in (True, False):
        monkeypatch.setattr(gk, "FOLD_NORM_ROUTER", fold)
        calls.clear()
        one = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids[:1], TOKENS)
        assert torch.equal(one.tokens, hf_one), fold
        layers = model.config.num_hidden_layers
        assert len(calls) >= (TOKENS - 1) * layers and len(calls) % layers == 0, (fold, len(calls))
        # bf16 experts: the qkv GEMV triggers attention early (Experts.qkv_early), pre-loads by LAZY_PRE_MIN_KS (None)
        assert set(calls) == {(True, None)}
    calls.clear()
    two = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids, TOKENS)
    assert torch.equal(two.tokens, ref.tokens)
    assert not calls


def test_triton_fold_norm_router_ties_pick_the_lower_ids(gk):
    """Tied logits at the top-k boundary (a zero router weight, tied biases) through the fold: the lower expert ids
    win, as torch.topk and `router`, and the weights are `router`'s."""
    gen = torch.Generator().manual_seed(32)
    hidden, kdim = 200, 48
    x, wo = torch.randn(1, kdim, generator=gen), torch.randn(hidden, kdim, generator=gen) * 0.2
    h, ln = torch.randn(1, hidden, generator=gen), torch.randn(hidden, generator=gen)
    rw = torch.zeros(8, hidden)
    rb = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.0, 2.0, 1.0, 1.0])
    normed = gk.add_rmsnorm(h.clone(), torch.nn.functional.linear(x, wo, None), 1, ln, 1e-5)
    want_i, want_w = gk.router(normed, rw, rb, 4)
    _, got_i, got_w = gk.splitk_norm_route(x, wo, None, h, ln, 1e-5, rw, rb, 4, (16, 32, 2, 4))
    assert got_i.tolist() == [[3, 1, 5, 2]] and torch.equal(got_i, want_i)
    torch.testing.assert_close(got_w, want_w, rtol=1e-6, atol=1e-7)


def test_triton_fold_norm_router_decode_matches_hf_tokens(gk, lively, monkeypatch):
    """Batch-1 decode with FOLD_NORM_ROUTER (o_proj + residual + norm + router in one launch per layer, through
    TritonOps.linear_norm_route): hf's greedy tokens, and the fold ran in every decode layer; at batch 2 the flag
    changes nothing (the fold is one row only)."""
    model, ids, ref = lively
    monkeypatch.setattr(gk, "FOLD_NORM_ROUTER", True)
    calls = []
    real = gk.splitk_norm_route
    monkeypatch.setattr(gk, "splitk_norm_route", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    one = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids[:1], TOKENS)
    assert torch.equal(one.tokens, get_engine("hf").generate(model, ids[:1], TOKENS).tokens)
    layers, ran = model.config.num_hidden_layers, len(calls)
    assert ran >= (TOKENS - 1) * layers and ran % layers == 0, ran
    two = get_engine("graph", {"kernels": "triton", "experts": "triton"}).generate(model, ids, TOKENS)
    assert torch.equal(two.tokens, ref.tokens)
    assert len(calls) == ran


@pytest.mark.parametrize("rows", [1, 3])
def test_triton_gemv_greedy_is_argmax_and_advances_the_step(gk, rows):
    """gemv_greedy: the logits of gemv, each row's token = torch.argmax of them (exact ties across and inside N tiles
    go to the lowest id), written to tok and to out[:, step], step and pos advanced by one; three calls in a row (the
    keys and the count reset by the last program)."""
    g = torch.Generator().manual_seed(7)
    n, k = 300, 96  # 5 N tiles of 64, the last one masked
    w = torch.randn(n, k, generator=g)
    w[[40, 41, 170, 299]] = w[17].clone()  # twins of row 17: in its tile (40, 41), later tiles (170, masked 299)
    tok = torch.zeros(rows, dtype=torch.long)
    out = torch.full((rows, 6), -1, dtype=torch.long)
    step, pos = torch.tensor(1), torch.tensor(20)
    for call in range(3):
        x = torch.randn(rows, k, generator=g)
        x[0] = w[17] if call == 0 else x[0]  # row 0 of call 0: its maximum is the tied row 17
        y = gk.gemv_greedy(x, w, tok, out, step, pos, (64, 32, 4, 2))
        torch.testing.assert_close(y, x @ w.T, rtol=1e-4, atol=1e-4)
        want = torch.argmax(y, dim=-1)
        assert torch.equal(tok, want), (call, tok, want)
        assert torch.equal(out[:, 1 + call], want)
        assert int(step) == 2 + call and int(pos) == 21 + call
        if call == 0:
            assert int(tok[0]) == 17
    assert torch.equal(out[:, 4:], torch.full((rows, 2), -1, dtype=torch.long))


def test_triton_greedy_step_decode_matches_hf_tokens(gk, lively, monkeypatch):
    """The decoder's greedy step through gemv_greedy (tiny-moe's 512-row lm_head is a "small" matrix, so the case
    forces a GEMV tile for that class) at 2 rows: hf's greedy tokens, and the fused launch ran every step; with
    GEMV_GREEDY off the torch ops give the same tokens."""
    model, ids, ref = lively
    monkeypatch.setitem(gk.GEMV_CONFIG, "small", (16, 64, 4, 2))
    calls = []
    real = gk.gemv_greedy
    monkeypatch.setattr(gk, "gemv_greedy", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    eng = get_engine("graph", {"kernels": "triton", "experts": "triton", "gemv": True})
    res = eng.generate(model, ids, TOKENS)
    assert torch.equal(res.tokens, ref.tokens)
    assert len(calls) >= TOKENS - 1, len(calls)
    monkeypatch.setattr(gk, "GEMV_GREEDY", False)
    calls.clear()
    assert torch.equal(eng.generate(model, ids, TOKENS).tokens, ref.tokens) and not calls


@pytest.mark.parametrize("rows", [2, 20])
def test_triton_argmax_step_is_argmax_and_advances_the_step(gk, monkeypatch, rows):
    """argmax_step on given logits (rows past GEMV_MAX_ROWS come from cuBLAS): tok = torch.argmax (an exact tie
    across tiles goes to the lower id; -inf and a masked tail), out[:, step], step and pos advanced; two calls in a
    row (keys and count reset)."""
    monkeypatch.setattr(gk, "ARGMAX_BN", 64)
    g = torch.Generator().manual_seed(9)
    tok = torch.zeros(rows, dtype=torch.long)
    out = torch.full((rows, 4), -1, dtype=torch.long)
    step, pos = torch.tensor(2), torch.tensor(5)
    for call in range(2):
        y = torch.randn(rows, 200, generator=g).to(torch.bfloat16)
        y[0, 30] = y[0, 150] = 9.0  # a tie in tiles 0 and 2: the lower id wins
        y[-1, :] = float("-inf")
        y[-1, 199] = -1e30  # the only finite logit of the last row, in the masked last tile
        gk.argmax_step(y, tok, out, step, pos)
        want = torch.argmax(y, dim=-1)
        assert torch.equal(tok, want) and torch.equal(out[:, 2 + call], want), call
        assert int(tok[0]) == 30 and int(tok[-1]) == 199
        assert int(step) == 3 + call and int(pos) == 6 + call
