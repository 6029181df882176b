"""The `graph` engine's fused norm + router and rope + attention kernels, programmatic dependent launch (PDL), the
per-batch expert tile tables (bit-exact to main's) and the one-launch experts (MOE_FUSED) on a CUDA device: skipped
on CPU, where the Triton interpreter runs the fused kernels and the tables (tests/interpreter/graph_kernels_cases.py)
but cannot run PDL's `griddepcontrol` PTX. Run on the GPU
machine with `python3 -m pytest -q tests/test_graph_kernels_gpu.py`."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (PDL, sm_90)")


@pytest.fixture()
def gk():
    from bench.engines.graph import kernels

    return kernels


def attention_inputs(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """gpt-oss-20b's attention geometry in bf16 (64 query heads, 8 kv heads, head 64, hidden 2,880): random sinks,
    rope cos / sin for 400 positions, the fused qkv weight and bias."""
    hq, hkv, d, hidden = 64, 8, 64, 2880
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    return (torch.randn(hq, generator=gen, **kw), torch.randn(400, d // 2, generator=gen, **kw),
            torch.randn(400, d // 2, generator=gen, **kw),
            torch.randn((hq + 2 * hkv) * d, hidden, generator=gen, **kw) * 0.02,
            torch.randn((hq + 2 * hkv) * d, generator=gen, **kw))


def expert_inputs(gen: torch.Generator, experts: int) -> tuple[torch.Tensor, ...]:
    """gpt-oss-20b's expert geometry in bf16 (hidden 2,880, intermediate 2,880): random gate_up, its bias, down, its
    bias, and one token's activations."""
    hidden = inter = 2880
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    return (torch.randn(experts, hidden, 2 * inter, generator=gen, **kw) * 0.02,
            torch.randn(experts, 2 * inter, generator=gen, **kw) * 0.1,
            torch.randn(experts, inter, hidden, generator=gen, **kw) * 0.02,
            torch.randn(experts, hidden, generator=gen, **kw) * 0.1,
            torch.randn(1, hidden, generator=gen, **kw))


def graph_tokens_and_logits(model, ids: torch.Tensor, new_tokens: int = 24,
                            capture: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """A decode of `ids` (a CUDA graph on CUDA, or eager steps with capture "off") with the kernels module's
    settings as they are now: (tokens, last logits)."""
    from bench.engines.graph import GraphEngine, GraphOptions

    eng = GraphEngine(GraphOptions(capture=capture), keep_logits=True)
    res = eng.generate(model, ids, new_tokens)
    out = (res.tokens, eng.decoder.logits.clone())
    eng.release()
    return out


@pytest.mark.parametrize("rows", [1, 8])
def test_fused_norm_router_equals_two_kernels_on_cuda(gk, rows):
    """Same residual and expert ids as add_rmsnorm + router; normed rows and weights within one bf16 / fp32
    rounding (the fused kernel's RMS reduction may sum in another order); the program count resets."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    hidden, experts, k = 2880, 32, 4
    for use_partials in (True, False):
        for _ in range(3):
            h = torch.randn(rows, hidden, generator=gen, device="cuda", dtype=torch.bfloat16)
            h2 = h.clone()
            att = torch.randn(rows, 4096, generator=gen, device="cuda", dtype=torch.bfloat16)
            wo = torch.randn(hidden, 4096, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
            bo = torch.randn(hidden, generator=gen, device="cuda", dtype=torch.bfloat16)
            delta = gk.splitk_linear(att, wo, bo) if use_partials else torch.nn.functional.linear(att, wo, bo)
            ln = torch.randn(hidden, generator=gen, device="cuda", dtype=torch.bfloat16)
            rw = torch.randn(experts, hidden, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.05
            rb = torch.randn(experts, generator=gen, device="cuda", dtype=torch.bfloat16)
            normed = gk.add_rmsnorm(h, delta, 1, ln, 1e-5)
            want_i, want_w = gk.router(normed, rw, rb, k)
            got, got_i, got_w = gk.add_rmsnorm_route(h2, delta, ln, 1e-5, rw, rb, k)
            torch.cuda.synchronize()
            assert torch.equal(h2, h)
            torch.testing.assert_close(got.float(), normed.float(), rtol=8e-3, atol=1e-2)
            assert torch.equal(got_i, want_i)
            torch.testing.assert_close(got_w, want_w, rtol=1e-2, atol=1e-3)
            assert int(gk._COUNTERS[h.device].item()) == 0


@pytest.mark.parametrize("rows", [1, 8])
def test_fused_rope_attention_matches_two_kernels_on_cuda(gk, rows):
    """rope_attn_decode (one launch) against rope_kv + attn_decode, gpt-oss-20b's attention geometry in bf16: the
    same cache writes (bits) and the same output within one bf16 rounding (on the H200 the two compile to different
    softmax arithmetic, so the bits may differ), qkv as split-K partials and as a tensor, full cache and sliding ring,
    three steps in a row."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    hq, hkv, d, hidden = 64, 8, 64, 2880
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    sinks, cos, sin, w, b = attention_inputs(gen)
    for sliding, s_cache, first in ((False, 320, 270), (True, 128, 270)):
        for use_partials in (True, False):
            kc = torch.randn(rows, hkv, s_cache, d, generator=gen, **kw)
            vc = torch.randn(rows, hkv, s_cache, d, generator=gen, **kw)
            kc2, vc2 = kc.clone(), vc.clone()
            for pos in range(first, first + 3):
                x = torch.randn(rows, hidden, generator=gen, **kw)
                qkv = gk.splitk_linear(x, w, b) if use_partials else torch.nn.functional.linear(x, w, b)
                p = torch.tensor(pos, device="cuda")
                q = gk.rope_kv(qkv, cos, sin, p, kc, vc, hq, sliding, s_cache if sliding else 0)
                want = gk.attn_decode(q, kc, vc, sinks, p, d ** -0.5)
                got = gk.rope_attn_decode(qkv, cos, sin, p, kc2, vc2, sinks, d ** -0.5, hq, sliding,
                                          s_cache if sliding else 0)
                torch.cuda.synchronize()
                assert torch.equal(kc2, kc) and torch.equal(vc2, vc), (sliding, use_partials, pos)
                torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2,
                                           msg=f"sliding {sliding} partials {use_partials} pos {pos}")


@pytest.mark.parametrize("k", [2, 4])
def test_down_pre_loads_give_the_same_bits_on_cuda(gk, monkeypatch, k):
    """MOE_DOWN_PRE 1 to 4 at gpt-oss-20b's expert geometry in bf16, one token (compact grid), E32: the same expert
    outputs as 0, bit for bit, eager and as a CUDA-graph decode of tiny-moe with the down GEMM launched early at
    every pair count (GATE_UP_EARLY_MAX_PAIRS 4: its pre-loads then stream under gate_up)."""
    gen = torch.Generator(device="cuda").manual_seed(20 + k)
    experts = 32
    gu, gub, dn, dnb, x = expert_inputs(gen, experts)
    v, i = torch.topk(torch.randn(1, experts, generator=gen, device="cuda"), k, dim=-1)
    w = torch.softmax(v, dim=-1)
    outs = []
    for pre in (0, 1, 2, 3, 4):
        monkeypatch.setattr(gk, "MOE_DOWN_PRE", pre)
        outs.append(gk.moe(x, gu, gub, dn, dnb, i.to(torch.int32), w, 1.702, 7.0))
    torch.cuda.synchronize()
    for j in range(1, 5):
        assert torch.equal(outs[j], outs[0]), j
    from bench.models.loading import load_model

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(9))
    monkeypatch.setattr(gk, "GATE_UP_EARLY_MAX_PAIRS", 4)
    runs = []
    for pre in (0, 2):
        monkeypatch.setattr(gk, "MOE_DOWN_PRE", pre)
        runs.append(graph_tokens_and_logits(model, ids))
    assert torch.equal(runs[1][0], runs[0][0]) and torch.equal(runs[1][1], runs[0][1])


def test_pdl_graph_replay_gives_the_same_tokens_and_logits(gk):
    """A decode step captured as a CUDA graph with PDL launches (both trigger modes) gives the same tokens and last
    logits as with plain launches (a missing wait would race: the results would move)."""
    from bench.models.loading import load_model

    shipped = gk.PDL
    assert gk.pdl_launch() == (shipped if torch.cuda.get_device_capability()[0] >= 9 else 0)
    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(2))
    out = {}
    for mode in (0, 1, 2):
        gk.PDL = mode
        try:
            out[mode] = graph_tokens_and_logits(model, ids)
        finally:
            gk.PDL = shipped
    for mode in (1, 2):
        assert torch.equal(out[mode][0], out[0][0]), mode
        assert torch.equal(out[mode][1], out[0][1]), mode


@pytest.mark.parametrize("batch", [2, 8, 32])
def test_multi_token_pdl_replay_gives_the_same_tokens_and_logits(gk, batch):
    """Decode steps of several streams as a CUDA graph with PDL launches (PDL_ROWS, mode 1 and 2, the gate
    PDL_MAX_TOKENS raised to the batch where it is lower) give the same tokens and last logits as plain launches
    (PDL_MAX_TOKENS = 1); a kernel of these row counts that read an input before its wait would race and move
    them."""
    from bench.models.loading import load_model

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability >= 9")
    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (batch, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(4))
    saved = (gk.PDL_MAX_TOKENS, gk.PDL_ROWS)
    out = {}
    try:
        for name, most, mode in (("plain", 1, 0), ("rows1", max(saved[0], batch), 1),
                                 ("rows2", max(saved[0], batch), 2)):
            gk.PDL_MAX_TOKENS, gk.PDL_ROWS = most, mode
            assert gk.pdl_launch(batch) == (mode if most >= batch else 0)
            out[name] = graph_tokens_and_logits(model, ids)
    finally:
        gk.PDL_MAX_TOKENS, gk.PDL_ROWS = saved
    for name in ("rows1", "rows2"):
        assert torch.equal(out[name][0], out["plain"][0]), name
        assert torch.equal(out[name][1], out["plain"][1]), name


def test_early_splitk_and_one_row_router_replay_gives_the_same_tokens_and_logits(gk):
    """Batch-1 decode as a CUDA graph with the split-K GEMVs started early (SPLITK_EARLY: the kernel before them in
    PDL mode 2), every other PDL_EARLY_MORE site in mode 2 too, and the one-row norm + router tail
    (NORM_ROUTER_ONE_ROW), each on and off: the tokens and last logits of the plain step (a kernel that read an input
    before its wait, or a wrong rank top-k, would change them)."""
    from bench.models.loading import load_model

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(3))
    saved = (gk.SPLITK_EARLY, gk.NORM_ROUTER_ONE_ROW, gk.PDL_EARLY_MORE, gk.FOLD_NORM_ROUTER)
    every = ("rope", "splitk", "norm_router", "moe_down")
    out = {}
    gk.FOLD_NORM_ROUTER = False  # the one-row norm + router kernel runs only without the fold into o_proj
    try:
        for early, one_row, more in ((False, False, ()), (False, True, ()), (True, True, ()), (True, False, ()),
                                     (True, True, every)):
            gk.SPLITK_EARLY, gk.NORM_ROUTER_ONE_ROW, gk.PDL_EARLY_MORE = early, one_row, frozenset(more)
            out[(early, one_row, more)] = graph_tokens_and_logits(model, ids)
    finally:
        gk.SPLITK_EARLY, gk.NORM_ROUTER_ONE_ROW, gk.PDL_EARLY_MORE, gk.FOLD_NORM_ROUTER = saved
    plain = out[(False, False, ())]
    for key, (toks, logits) in out.items():
        assert torch.equal(toks, plain[0]), key
        assert torch.equal(logits, plain[1]), key



def test_early_loads_and_early_gate_up_replay_gives_the_same_tokens_and_logits(gk):
    """Batch-1 decode as a CUDA graph with loads moved ahead of their PDL wait or K loop (the lazy GEMV's weight
    tiles, LAZY_PRE 1 and 4 at every expert row count; the expert GEMMs' bias and routing weights, MOE_EARLY_BIAS;
    the fold's tail inputs right after its K loop, FOLD_TAIL_LOADS) and the gate_up expert GEMM triggering the down
    GEMM early
    (GATE_UP_EARLY_MAX_PAIRS), against all of them off: the same tokens and last logits (a kernel that read an
    earlier kernel's output before its wait would change them)."""
    from bench.models.loading import load_model

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(4))
    names = ("LAZY_PRE", "LAZY_PRE_MIN_KS", "GATE_UP_EARLY_MAX_PAIRS", "MOE_EARLY_BIAS", "FOLD_TAIL_LOADS")
    saved = {n: getattr(gk, n) for n in names}
    out = {}
    try:
        for cfg in ((0, 99, 0, False, False), (1, 1, 0, False, False), (0, 99, 2, False, False),
                    (0, 99, 0, True, False), (0, 99, 0, False, True), (4, 1, 2, True, True)):
            for n, v in zip(names, cfg, strict=True):
                setattr(gk, n, v)
            out[cfg] = graph_tokens_and_logits(model, ids)
    finally:
        for n, v in saved.items():
            setattr(gk, n, v)
    plain = out[(0, 99, 0, False, False)]
    for key, (toks, logits) in out.items():
        assert torch.equal(toks, plain[0]), key
        assert torch.equal(logits, plain[1]), key


@pytest.mark.parametrize(("experts", "k"), [(32, 4), (16, 2), (16, 4)])
def test_fold_norm_router_matches_splitk_then_norm_router_on_cuda(gk, experts, k):
    """`splitk_norm_route` (o_proj + residual + RMSNorm + router, one launch) against `splitk_linear` then
    `add_rmsnorm_route`, gpt-oss-20b's o_proj geometry in bf16: the same residual h (bits: the partials are summed in
    the consumer's order), the normed row within one bf16 rounding (another RMS summation order), the experts the
    two-kernel path picks except where their logits tie within two bf16 ulps, and the softmax weights within what one
    bf16 rounding of each kept logit moves them (an ulp of the largest logit; the H200 measured 0.022 at E16 k2, so a
    fixed fp32 tolerance is wrong here); the counts back at zero after each launch. Sixteen launches: the race
    session 10 found (a warp storing the new residual tile before another warp read the old one) moved the weights of
    experts 4-15 on a few launches in a hundred."""
    gen = torch.Generator(device="cuda").manual_seed(9)
    hidden, kdim = 2880, 4096
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    for _ in range(16):
        h = torch.randn(1, hidden, generator=gen, **kw)
        h2 = h.clone()
        att = torch.randn(1, kdim, generator=gen, **kw)
        wo = torch.randn(hidden, kdim, generator=gen, **kw) * 0.02
        bo = torch.randn(hidden, generator=gen, **kw)
        ln = torch.randn(hidden, generator=gen, **kw)
        rw = torch.randn(experts, hidden, generator=gen, **kw) * 0.05
        rb = torch.randn(experts, generator=gen, **kw)
        want, want_i, want_w = gk.add_rmsnorm_route(h, gk.splitk_linear(att, wo, bo), ln, 1e-5, rw, rb, k)
        got, got_i, got_w = gk.splitk_norm_route(att, wo, bo, h2, ln, 1e-5, rw, rb, k)
        torch.cuda.synchronize()
        assert torch.equal(h2, h)
        torch.testing.assert_close(got.float(), want.float(), rtol=8e-3, atol=1e-2)
        # the two-kernel path's logits (bf16, as the router linear's output) and one bf16 ulp at their largest
        logits = torch.nn.functional.linear(want, rw, rb).float()[0]
        ulp = 2.0 ** (torch.floor(torch.log2(logits.abs().max())).item() - 7)
        assert (logits[got_i[0].long()] - logits[want_i[0].long()]).abs().max() <= 2 * ulp, (got_i, want_i)
        if torch.equal(got_i, want_i):  # each kept logit within one rounding: a softmax weight moves <= 0.5 x 2 ulps
            assert (got_w - want_w).abs().max().item() <= ulp, (got_w, want_w, ulp)
        assert not gk._FOLD_COUNTERS[(h.device, hidden // gk.SPLITK_CONFIG["small"][0])].any()


@pytest.mark.parametrize("experts", [16, 32])
def test_fold_router_partials_match_float64_on_cuda(gk, experts):
    """`fold_launch` alone at gpt-oss-20b's o_proj geometry in bf16, 32 launches: every N tile's router partial logits
    (sum_n rw[e, n] w[n] h[n] over the updated residual) within float32 rounding of float64. Session 10's race (a warp
    storing the new residual tile before another warp loaded the old one) put errors up to 0.3 into experts 4-15 of a
    few tiles a launch at 16 experts, even with the fold alone on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(12)
    hidden, kdim = 2880, 4096
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    wo = torch.randn(hidden, kdim, generator=gen, **kw) * 0.02
    bo = torch.randn(hidden, generator=gen, **kw)
    ln = torch.randn(hidden, generator=gen, **kw)
    rw = torch.randn(experts, hidden, generator=gen, **kw) * 0.05
    rb = torch.randn(experts, generator=gen, **kw)
    bn = gk.SPLITK_CONFIG["small"][0]
    tile = torch.arange(hidden, device="cuda") // bn
    worst = 0.0
    for _ in range(32):
        h = torch.randn(1, hidden, generator=gen, **kw)
        att = torch.randn(1, kdim, generator=gen, **kw)
        _, _, _, _, _, rl = gk.fold_launch(att, wo, bo, h, ln, 1e-5, rw, rb, 4)
        hv = h.double().view(-1)
        want = torch.zeros(rl.shape[0], experts, dtype=torch.float64, device="cuda")
        want.index_add_(0, tile, (rw.double() * (ln.double() * hv)).t())
        worst = max(worst, (rl[:, :experts].double() - want).abs().max().item())
    assert worst < 1e-4, worst


@pytest.mark.parametrize("ks", [0, 4])
def test_lazy_norm_linear_matches_add_rmsnorm_then_splitk_on_cuda(gk, ks):
    """`splitk_norm_linear` (LAZY_NORM) at gpt-oss-20b's qkv geometry in bf16 against add_rmsnorm then
    splitk_linear: the updated residual row bit for bit (in the scratch row, h untouched) and the linear's output
    within a bf16 rounding of the normed row (the lazy path does not round it before the GEMV), 8 launches."""
    gen = torch.Generator(device="cuda").manual_seed(21 + ks)
    hidden, n = 2880, 5120
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    w = torch.randn(n, hidden, generator=gen, **kw) * 0.02
    b = torch.randn(n, generator=gen, **kw)
    ln = torch.randn(hidden, generator=gen, **kw)
    for _ in range(8):
        h = torch.randn(1, hidden, generator=gen, **kw)
        y = torch.randn(ks, hidden, generator=gen, **kw) if ks else None
        h_ref, h0 = h.clone(), h.clone()
        want = gk.splitk_linear(gk.add_rmsnorm(h_ref, y, ks, ln, 1e-5), w, b).materialize().float()
        got, hm = gk.splitk_norm_linear(h, y, ks, ln, 1e-5, w, b)
        torch.cuda.synchronize()
        assert torch.equal(h, h0) and torch.equal(hm, h_ref)
        torch.testing.assert_close(got.materialize().float(), want, rtol=2e-2, atol=2e-2)


def test_fold_norm_router_graph_replay_gives_eager_tokens(gk):
    """Batch-1 decode of tiny-moe with FOLD_NORM_ROUTER: the CUDA-graph replays give the eager steps' tokens and
    last logits (within a bf16 rounding: the lm_head's library GEMM may differ between capture and eager); a count
    left nonzero by a launch, or a read of h before the tile's last program wrote it, would move them. Mostly the
    tokens of the two-kernel path too (the fold rounds the router's input differently)."""
    from bench.models.loading import load_model

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(6))
    saved = gk.FOLD_NORM_ROUTER
    calls = []
    real = gk.splitk_norm_route
    out = {}
    try:
        gk.splitk_norm_route = lambda *a, **kw: calls.append(1) or real(*a, **kw)
        for fold, capture in ((True, "on"), (True, "off"), (False, "on")):
            gk.FOLD_NORM_ROUTER = fold
            out[(fold, capture)] = graph_tokens_and_logits(model, ids, capture=capture)
    finally:
        gk.FOLD_NORM_ROUTER = saved
        gk.splitk_norm_route = real
    assert calls
    assert torch.equal(out[(True, "on")][0], out[(True, "off")][0])
    torch.testing.assert_close(out[(True, "on")][1], out[(True, "off")][1], rtol=2e-2, atol=2e-2)
    agree = (out[(True, "on")][0] == out[(False, "on")][0]).float().mean().item()
    assert agree >= 0.75, agree


# main's tables before session 6 (docs/PERF.md): compact MOE_CONFIG_FEW, scan MOE_CONFIG, M tile >= 64 MOE_CONFIG_BIG
MAIN_SCAN = {"gate_up": (64, 128, 4, 4), "down": (32, 128, 4, 4)}
MAIN_BIG = {"gate_up": (128, 64, 4, 3), "down": (64, 64, 4, 3)}
MAIN_FEW = {"gate_up": (64, 128, 4, 4), "down": (64, 128, 4, 4)}


@pytest.mark.parametrize("tokens", [4, 8, 32, 64, 128])
def test_shipped_expert_tiles_are_bit_exact_to_main_on_cuda(gk, tokens):
    """The per-batch tables (MOE_CONFIG_BM, MOE_CONFIG_COMPACT, N-tile-major grids) change only which program reads
    which tile: every (token, slot) row equals main's tables' bit for bit, at gpt-oss-20b's shapes (E32, top_k 4;
    4 tokens: compact past COMPACT_FEW_PAIRS; 8 / 32 / 64: scan M tile 16 / 32 / 64; 128: sorted M tile 64)."""
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    experts, hidden, inter, k = 32, 2880, 2880, 4
    gu = torch.randn(experts, hidden, 2 * inter, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
    gub = torch.randn(experts, 2 * inter, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.1
    dn = torch.randn(experts, inter, hidden, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
    dnb = torch.randn(experts, hidden, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.1
    x = torch.randn(tokens, hidden, generator=gen, device="cuda", dtype=torch.bfloat16)
    topi = torch.rand(tokens, experts, generator=gen, device="cuda").argsort(-1)[:, :k].to(torch.int32).contiguous()
    topw = torch.softmax(torch.randn(tokens, k, generator=gen, device="cuda"), -1)
    plan = gk.routing_plan(topi, experts)
    main = MAIN_FEW if plan.compact else (MAIN_BIG if plan.bm >= 64 else MAIN_SCAN)
    shipped = gk.moe_tiles(plan)
    assert shipped != main
    got = gk.moe(x, gu, gub, dn, dnb, topi, topw, 1.702, 7.0)
    want = gk.moe(x, gu, gub, dn, dnb, topi, topw, 1.702, 7.0, tiles=main)
    torch.cuda.synchronize()
    assert got.abs().sum().item() > 0
    assert torch.equal(got, want)


@pytest.mark.parametrize("tokens", [64, 128, 256])
def test_expert_launch_matches_a_float32_reference_on_cuda(gk, tokens):
    """kernels.moe at gpt-oss-20b's shapes (E32, top_k 4) against the experts in float32 (bf16 inputs, the
    activation rounded to bf16 as the kernel stores it), row by row, with skewed routing so that expert 0 gets every
    token (more rows than a sorted M tile) and a few experts most of the rest: every (token, slot) row within 2%
    (relative L2)."""
    from bench.engines.graph.experts import swiglu

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    experts, hidden, inter, k = 32, 2880, 2880, 4
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    gu = torch.randn(experts, hidden, 2 * inter, generator=gen, **kw) * 0.02
    gub = torch.randn(experts, 2 * inter, generator=gen, **kw) * 0.1
    dn = torch.randn(experts, inter, hidden, generator=gen, **kw) * 0.02
    dnb = torch.randn(experts, hidden, generator=gen, **kw) * 0.1
    x = torch.randn(tokens, hidden, generator=gen, **kw)
    skew = torch.rand(tokens, experts - 1, generator=gen, device="cuda") * torch.linspace(3, 1, experts - 1,
                                                                                          device="cuda")
    topi = torch.cat([torch.zeros(tokens, 1, device="cuda", dtype=torch.long), skew.argsort(-1, descending=True)
                      [:, : k - 1] + 1], dim=1).to(torch.int32).contiguous()
    topw = torch.softmax(torch.randn(tokens, k, generator=gen, device="cuda"), -1)
    got = gk.moe(x, gu, gub, dn, dnb, topi, topw, 1.702, 7.0).float()
    flat = topi.reshape(-1).long()
    want = torch.empty_like(got)
    for e in flat.unique().tolist():
        pairs = torch.nonzero(flat == e).squeeze(1)
        act = swiglu(x[pairs // k].float() @ gu[e].float() + gub[e].float(), 1.702, 7.0).bfloat16().float()
        want[pairs] = (act @ dn[e].float() + dnb[e].float()) * topw.reshape(-1, 1)[pairs]
    err = (got - want).norm(dim=1) / want.norm(dim=1)
    bad = torch.nonzero(err > 0.02).squeeze(1)
    assert bad.numel() == 0, (f"{bad.numel()} of {tokens * k} rows off; experts {flat[bad].unique().tolist()}, "
                              f"tokens {(bad // k).unique().tolist()[:20]}, worst {err.max().item():.3f}")


@pytest.mark.parametrize("rows", [32, 128, 256])
def test_triton_decode_attention_matches_a_float32_reference_on_cuda(gk, rows):
    """TritonOps.decode_attention (the fused rope + attention at these rows, the shipped block per batch) against
    TorchOps' in float32 (rope, cache write, softmax with sinks) on the same bf16 inputs: the same cache (to a bf16
    rounding) and, for every row and head, the same output within 5% (relative L2; the H200 measured at most 2.9%
    over 256 rows x 64 heads, the weights rounded to bf16 before the PV product; a wrong mask, slot or row is off by
    far more), full cache and sliding ring, at gpt-oss-20b's geometry."""
    from bench.engines.graph.ops import Geometry, StepState, TorchOps, TritonOps

    gen = torch.Generator(device="cuda").manual_seed(rows)
    hq, hkv, d, hidden = 64, 8, 64, 2880
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    sinks, cos, sin, w, b = attention_inputs(gen)
    for window, s_cache, pos in ((0, 320, 270), (128, 128, 270)):
        geom = Geometry(hq=hq, hkv=hkv, head_dim=d, window=window, scale=d ** -0.5)
        p = torch.tensor(pos, device="cuda")
        kc = torch.randn(rows, hkv, s_cache, d, generator=gen, **kw)
        vc = torch.randn(rows, hkv, s_cache, d, generator=gen, **kw)
        kcf, vcf = kc.float(), vc.float()
        qkv = torch.nn.functional.linear(torch.randn(rows, hidden, generator=gen, **kw), w, b)
        want = TorchOps().decode_attention(qkv.float(), kcf, vcf, sinks.float(), window > 0, geom,
                                           StepState(pos=p, cos=cos.float(), sin=sin.float()))
        got = TritonOps().decode_attention(qkv, kc, vc, sinks, window > 0, geom, StepState(pos=p, cos=cos, sin=sin))
        torch.cuda.synchronize()
        torch.testing.assert_close(kc.float(), kcf, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(vc.float(), vcf, rtol=0, atol=0)
        err = (got.float() - want).view(rows, hq, d).norm(dim=-1) / want.view(rows, hq, d).norm(dim=-1)
        bad = torch.nonzero(err.amax(dim=1) >= 0.05).squeeze(1)
        assert bad.numel() == 0, (window, bad.tolist()[:20], err.max().item())


@pytest.mark.parametrize("tokens", [8, 32, 256])
def test_tensor_core_router_matches_float32_topk_on_cuda(gk, monkeypatch, tokens):
    """The split router on bf16 tensor cores (ROUTER_TC_BY_TOKENS) at gpt-oss-20b's router shape: torch's top-k of
    the float32 logits of the bf16 inputs, rounded to bf16 as the linear's output, for every token whose k-th and
    next logits are two bf16 steps apart (the same k experts); the softmax of the kept logits (to a bf16 step)."""
    gen = torch.Generator("cuda").manual_seed(tokens)
    experts, hidden, k = 32, 2880, 4
    kw = {"device": "cuda", "generator": gen}
    x = torch.randn(tokens, hidden, **kw).bfloat16()
    w = (torch.randn(experts, hidden, **kw) * 0.02).bfloat16()
    b = (torch.randn(experts, **kw) * 0.1).bfloat16()
    logits = (x.double() @ w.double().T + b.double()).float().bfloat16().float()
    v, i = torch.topk(logits, k + 1, dim=-1)
    apart = (v[:, k - 1] - v[:, k]) > 2 * 2.0 ** -7 * v[:, k - 1].abs().clamp(min=0.25)
    assert apart.sum() >= tokens // 2
    monkeypatch.setattr(gk, "ROUTER_TC_BY_TOKENS", ((256, 64, 64),))
    got_i, got_w = gk.router(x, w, b, k)
    # as a dense (token, expert) weight matrix: the order among the kept k may differ at a tie inside them; a logit
    # may round to the next bf16 step from another float32 sum: weights within a step's effect
    got = torch.zeros(tokens, experts, device="cuda").scatter_(1, got_i.long(), got_w)
    want = torch.zeros(tokens, experts, device="cuda").scatter_(1, i[:, :k], torch.softmax(v[:, :k], dim=-1))
    assert torch.equal(got[apart] > 0, want[apart] > 0)
    torch.testing.assert_close(got[apart], want[apart], rtol=0, atol=1e-2)


@pytest.mark.parametrize("rows", [2, 5, 8, 20, 32, 40, 64])
def test_splitk_mma_linear_matches_f_linear_on_cuda(gk, rows):
    """The tensor-core split-K linear at gpt-oss-20b's qkv (5120 x 2880) and o_proj (2880 x 4096) shapes, with the
    shipped tile of each row class and site (a generic one where the class keeps cuBLAS): the partials' float32
    sum within float32 rounding of a float32 reference (bf16 products are exact), and the bf16 output within one
    bf16 rounding of F.linear's (cuBLAS sums in another order)."""
    gen = torch.Generator(device="cuda").manual_seed(rows)
    for site, n, k in (("qkv", 5120, 2880), ("o_proj", 2880, 4096)):
        cfg = gk.splitk_mma_config(rows, site) or (64, 64, 4, 4, 3)  # a class that keeps cuBLAS: a generic tile
        for _ in range(2):
            x = torch.randn(rows, k, generator=gen, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
            b = torch.randn(n, generator=gen, device="cuda", dtype=torch.bfloat16)
            got = gk.splitk_mma_linear(x, w, b, cfg)
            ref32 = x.float() @ w.float().T
            torch.cuda.synchronize()
            assert got.part.shape[1:] == (rows, n)
            err = ((got.part.sum(0) - ref32).norm() / ref32.norm()).item()
            assert err < 1e-5, (site, cfg, err)
            torch.testing.assert_close(got.materialize().float(), torch.nn.functional.linear(x, w, b).float(),
                                       rtol=8e-3, atol=1e-2)



@pytest.mark.parametrize("experts,k", [(32, 4), (16, 2)])
def test_fused_expert_launch_matches_two_launches_on_cuda(gk, experts, k):
    """MOE_FUSED (both expert GEMMs of a one-token step in one persistent launch, down tiles waiting on per-slot
    counters) at gpt-oss-20b's shapes in bf16: the shipped two launches' rows within one bf16 rounding (bit for
    bit expected: the same tiles and K order), for each tile the ablation times, with a grid of every resident
    program and with a small one (many tiles a program: more waits), three calls in a row (the counters reset), no
    give-up (`moe_fused_failed`), the distinct-expert count."""
    gen = torch.Generator(device="cuda").manual_seed(experts + k)
    hidden, inter = 2880, 2880
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    gu = torch.randn(experts, hidden, 2 * inter, generator=gen, **kw) * 0.02
    gub = torch.randn(experts, 2 * inter, generator=gen, **kw) * 0.1
    dn = torch.randn(experts, inter, hidden, generator=gen, **kw) * 0.02
    dnb = torch.randn(experts, hidden, generator=gen, **kw) * 0.1
    saved = (gk.MOE_FUSED, gk.MOE_FUSED_CONFIG, gk.MOE_FUSED_CTAS, gk.MOE_FUSED_EVEN)
    exact = []
    try:
        for config, ctas, even in (((64, 128, 4, 4), 2, False), ((64, 128, 4, 6), 2, True),
                                   ((64, 128, 4, 4), 1, True)):
            gk.MOE_FUSED_CONFIG, gk.MOE_FUSED_CTAS, gk.MOE_FUSED_EVEN = config, ctas, even
            for _ in range(3):
                x = torch.randn(1, hidden, generator=gen, **kw)
                topi = torch.rand(1, experts, generator=gen, device="cuda").argsort(-1)[:, :k].to(torch.int32)
                topw = torch.softmax(torch.randn(1, k, generator=gen, device="cuda"), -1)
                outs, counts = {}, {}
                for fused in (False, True):
                    gk.MOE_FUSED = fused
                    cnt = torch.zeros((), dtype=torch.int32, device="cuda")
                    outs[fused] = gk.moe(x, gu, gub, dn, dnb, topi.contiguous(), topw, 1.702, 7.0, cnt)
                    counts[fused] = int(cnt)
                torch.cuda.synchronize()
                assert not gk.moe_fused_failed(x.device), (config, ctas, even)
                assert int(gk._MOE_SYNC[x.device].abs().sum()) == 0
                assert counts[True] == counts[False] == k
                assert outs[True].float().abs().sum(1).gt(0).all()
                torch.testing.assert_close(outs[True].float(), outs[False].float(), rtol=1e-2, atol=1e-3)
                exact.append(torch.equal(outs[True], outs[False]))
    finally:
        gk.MOE_FUSED, gk.MOE_FUSED_CONFIG, gk.MOE_FUSED_CTAS, gk.MOE_FUSED_EVEN = saved
    print(f"fused experts E{experts} k{k}: bit-exact in {sum(exact)} of {len(exact)} calls")


def test_fused_expert_graph_replay_equals_eager_on_cuda(gk):
    """tiny-moe at batch 1 with MOE_FUSED on: the CUDA-graph replays (PDL launches) give the eager steps' tokens and
    last logits (a down tile that read its activation rows before they were stored, or a counter left unreset
    between replays, would move them), and the two-launch path's tokens."""
    from bench.models.loading import load_model

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(6))
    saved = gk.MOE_FUSED
    out = {}
    try:
        for fused, capture in ((False, "on"), (True, "on"), (True, "off")):
            gk.MOE_FUSED = fused
            out[(fused, capture)] = graph_tokens_and_logits(model, ids, capture=capture)
            assert not gk.moe_fused_failed(torch.device("cuda"))
    finally:
        gk.MOE_FUSED = saved
    assert torch.equal(out[(True, "on")][0], out[(True, "off")][0])
    assert torch.equal(out[(True, "on")][1], out[(True, "off")][1])
    assert torch.equal(out[(True, "on")][0], out[(False, "on")][0])


@pytest.mark.parametrize("k", [4, 2])
def test_split_k_expert_gemms_match_unsplit_on_cuda(gk, k):
    """A 6th tile entry S > 1 in the compact one-token table (split-K: fp32 partials summed by each tile's last
    program, in slice order) at gpt-oss-20b's shapes in bf16: the unsplit rows within one bf16 rounding, the same
    bits on a second call (deterministic whoever finishes last), every tile count back at 0, in a CUDA graph
    replay too."""
    gen = torch.Generator(device="cuda").manual_seed(30 + k)
    experts = 32
    gu, gub, dn, dnb, x = expert_inputs(gen, experts)
    topi = torch.rand(1, experts, generator=gen, device="cuda").argsort(-1)[:, :k].to(torch.int32).contiguous()
    topw = torch.softmax(torch.randn(1, k, generator=gen, device="cuda"), -1)
    plain = {"gate_up": (64, 128, 4, 4), "down": (64, 128, 4, 4)}
    want = gk.moe(x, gu, gub, dn, dnb, topi, topw, 1.702, 7.0, tiles=plain)
    for split in ({"gate_up": 1, "down": 2}, {"gate_up": 2, "down": 2}, {"gate_up": 2, "down": 3}):
        tiles = {g: (*t, 0, split[g]) for g, t in plain.items()}
        got = [gk.moe(x, gu, gub, dn, dnb, topi, topw, 1.702, 7.0, tiles=tiles) for _ in range(2)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            replayed = gk.moe(x, gu, gub, dn, dnb, topi, topw, 1.702, 7.0, tiles=tiles)
        graph.replay()
        graph.replay()
        torch.cuda.synchronize()
        assert all(int(b.abs().sum()) == 0 for b in gk._SPLIT_SYNC.values()), split
        assert torch.equal(got[0], got[1]) and torch.equal(replayed, got[0]), split
        torch.testing.assert_close(got[0].float(), want.float(), rtol=1e-2, atol=2e-3, msg=str(split))


@pytest.mark.parametrize("rows", [1, 8])
def test_gemv_greedy_is_torch_argmax_on_cuda(gk, rows):
    """gemv_greedy on a gpt-oss-sized vocabulary (201,088 x 2,880 bf16): the logits of gemv bit for bit, the tokens
    torch.argmax's (a planted exact tie across N tiles goes to the lower id), out[:, step] and step / pos advanced,
    over three launches (the last program's reset)."""
    g = torch.Generator("cuda").manual_seed(11)
    n, k = 201_088, 2_880
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    w[150_000] = w[1_234]
    tok = torch.zeros(rows, dtype=torch.long, device="cuda")
    out = torch.full((rows, 5), -1, dtype=torch.long, device="cuda")
    step = torch.tensor(0, device="cuda")
    pos = torch.tensor(7, device="cuda")
    for call in range(3):
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16, generator=g)
        if call == 1:
            x[0] = w[1_234] * 50  # row 0's largest logit: rows 1,234 and 150,000, equal
        y = gk.gemv_greedy(x, w, tok, out, step, pos, gk.GEMV_CONFIG["vocab"])
        assert torch.equal(y, gk.gemv(x, w, None, gk.GEMV_CONFIG["vocab"]))
        want = torch.argmax(y, dim=-1)
        assert torch.equal(tok, want) and torch.equal(out[:, call], want), call
        assert int(step) == call + 1 and int(pos) == 8 + call
        if call == 1:
            assert int(tok[0]) == 1_234


def test_greedy_step_replay_gives_the_same_tokens_and_logits(gk):
    """Decode as a CUDA graph with the greedy step fused into the vocabulary GEMV (GEMV_GREEDY; past 8 rows the
    linear + argmax_step) against the linear + torch.argmax + bookkeeping ops: the same tokens and last logits at
    batch 1, 8 and 32 (tiny-moe's lm_head is a "small" matrix: the case gives that class a GEMV tile)."""
    from bench.models.loading import load_model

    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    saved = (gk.GEMV_GREEDY, gk.GEMV_CONFIG.get("small"))
    gk.GEMV_CONFIG["small"] = (32, 128, 4, 4)
    try:
        for batch in (1, 8, 32):  # 32 rows: cuBLAS logits, then argmax_step
            ids = torch.randint(0, model.config.vocab_size, (batch, 40), device="cuda",
                                generator=torch.Generator("cuda").manual_seed(5))
            out = {}
            for greedy in (False, True):
                gk.GEMV_GREEDY = greedy
                out[greedy] = graph_tokens_and_logits(model, ids)
            assert torch.equal(out[True][0], out[False][0]), batch
            assert torch.equal(out[True][1], out[False][1]), batch
    finally:
        gk.GEMV_GREEDY, gk.GEMV_CONFIG["small"] = saved


@pytest.mark.parametrize("rows", [16, 64, 256])
def test_argmax_step_is_torch_argmax_on_cuda(gk, rows):
    """argmax_step on bf16 logits of gpt-oss's vocabulary (201,088): torch.argmax's tokens (a planted exact tie
    across tiles goes to the lower id), out[:, step], step and pos advanced, over two launches."""
    g = torch.Generator("cuda").manual_seed(12)
    tok = torch.zeros(rows, dtype=torch.long, device="cuda")
    out = torch.full((rows, 3), -1, dtype=torch.long, device="cuda")
    step = torch.tensor(0, device="cuda")
    pos = torch.tensor(3, device="cuda")
    for call in range(2):
        y = torch.randn(rows, 201_088, device="cuda", generator=g).to(torch.bfloat16)
        y[0, 100_000] = y[0, 200_000] = 20.0
        gk.argmax_step(y, tok, out, step, pos)
        want = torch.argmax(y, dim=-1)
        assert torch.equal(tok, want) and torch.equal(out[:, call], want), call
        assert int(tok[0]) == 100_000 and int(step) == call + 1 and int(pos) == 4 + call


@pytest.mark.parametrize("batch", [1, 8])
def test_shipped_decode_is_deterministic_on_a_pruned_gpt_oss(gk, batch):
    """The shipped engine on synthetic gpt-oss-20b pruned in place to 16 experts (where session 9 saw the fold race):
    three generations, each a CUDA-graph decode of 17 tokens after the same prompt, give the same tokens and last
    logits bit for bit (two from one engine, one from a new engine)."""
    from bench.engines.graph import GraphEngine
    from bench.models.loading import load_model
    from bench.models.pruning import prune_model

    model = load_model("synthetic:gpt-oss-20b", device="cuda", dtype=torch.bfloat16, seed=0).model
    prune_model(model, [list(range(16))] * len(model.model.layers))
    ids = torch.randint(0, model.config.vocab_size, (batch, 256), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(batch))
    runs = []
    for _ in range(2):
        eng = GraphEngine(keep_logits=True)
        for _ in range(2 if not runs else 1):
            res = eng.generate(model, ids, 17)
            runs.append((res.tokens, eng.decoder.logits.clone()))
        eng.release()
    for i, (toks, logits) in enumerate(runs[1:], 1):
        assert torch.equal(toks, runs[0][0]), i
        assert torch.equal(logits, runs[0][1]), i
    del model
    torch.cuda.empty_cache()
