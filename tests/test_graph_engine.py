"""The `graph` engine on CPU: same greedy tokens as the `hf` engine on tiny-moe (float32, 64 tokens, past the
sliding window of 16), teacher-forced logits equal to a full HF forward, and the Triton kernels (under the
Triton interpreter, when triton is installed) equal to the torch path."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from bench.engines import get_engine
from bench.engines.graph.decoder import DecoderOptions, GptOssDecoder
from bench.models.loading import load_model

NEW_TOKENS = 64


def _lively_tiny_model(seed: int = 0):
    """tiny-moe with weights of std 0.1 (the default init's 0.02 gives near-constant greedy output)."""
    model = load_model("synthetic:tiny-moe", device="cpu", dtype=torch.float32, seed=seed).model
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


@pytest.fixture(scope="module")
def lively():
    model = _lively_tiny_model()
    ids = torch.randint(2, model.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(1))
    hf = get_engine("hf")
    hf.prepare(model, ids, NEW_TOKENS)
    ref = hf.generate(model, ids, NEW_TOKENS)
    return model, ids, ref


def test_graph_tokens_identical_to_hf_past_sliding_window(lively):
    model, ids, ref = lively
    assert ids.shape[1] + NEW_TOKENS > 2 * model.config.sliding_window
    assert ref.tokens.unique().numel() > 30  # a non-degenerate sequence, so the comparison means something
    eng = get_engine("graph")
    eng.prepare(model, ids, NEW_TOKENS)
    res = eng.generate(model, ids, NEW_TOKENS)
    eng.release()
    assert res.tokens.shape == (3, NEW_TOKENS)
    assert torch.equal(res.tokens, ref.tokens)
    assert res.decode_s > 0 and res.prefill_s > 0 and len(res.step_s) == NEW_TOKENS - 1
    assert 2 <= res.distinct_experts <= 6  # 3 streams x top_k 2 of 8 experts


def test_graph_teacher_forced_logits_match_full_forward(lively):
    model, ids, ref = lively
    full = torch.cat([ids, ref.tokens], dim=1)
    with torch.no_grad():
        want = model(full).logits
    dec = GptOssDecoder(model, 3, ids.shape[1], NEW_TOKENS, DecoderOptions(keep_logits=True))
    dec.prefill(ids)
    errs = [(dec.logits - want[:, ids.shape[1] - 1]).abs().max().item()]
    for s in range(NEW_TOKENS - 1):
        dec.tok.copy_(ref.tokens[:, s])
        dec.decode_step()
        errs.append((dec.logits - want[:, ids.shape[1] + s]).abs().max().item())
    assert max(errs) < 1e-3 * want.abs().max().item()


def test_graph_detects_wrong_sliding_window():
    """A decoder that treats the sliding layer as full attention must not pass the equivalence check."""
    model = _lively_tiny_model()
    ids = torch.randint(2, model.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(1))
    hf = get_engine("hf")
    hf.prepare(model, ids, NEW_TOKENS)
    ref = hf.generate(model, ids, NEW_TOKENS)
    model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    eng = get_engine("graph")
    res = eng.generate(model, ids, NEW_TOKENS)
    assert not torch.equal(res.tokens, ref.tokens)


def test_graph_rejects_non_gpt_oss_model():
    from bench.errors import BadInputError

    with pytest.raises(BadInputError, match="engine 'graph'"):
        get_engine("graph").prepare(torch.nn.Linear(2, 2), torch.zeros((1, 4), dtype=torch.long), 4)


needs_interp = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels on CPU need triton installed and TRITON_INTERPRET=1",
)


@needs_interp
@pytest.mark.slow
def test_triton_kernels_match_torch_under_interpreter(lively):
    model, ids, ref = lively
    for kernels, moe in (("triton", "triton"), ("torch", "triton")):
        eng = get_engine("graph")
        eng.kernels, eng.moe = kernels, moe
        res = eng.generate(model, ids[:, :10], 24)
        assert torch.equal(res.tokens, ref.tokens[:, :24]), (kernels, moe)


@needs_interp
@pytest.mark.slow
def test_triton_moe_sorted_mode_matches_loop():
    from bench.engines.graph import kernels as gk

    model = _lively_tiny_model()
    lay = GptOssDecoder(model, 1, 4, 4, DecoderOptions()).layers[0]
    x = torch.randn(600, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    logits = torch.nn.functional.linear(x, lay.wr, lay.br)
    v, i = torch.topk(logits, lay.top_k, dim=-1)
    w = torch.softmax(v, dim=-1)
    dec = GptOssDecoder(model, 1, 4, 4, DecoderOptions())
    want = dec._moe_loop(x, lay, i, w)
    got = gk.moe(x, lay.gate_up, lay.gate_up_bias, lay.down, lay.down_bias, i.to(torch.int32), w, lay.alpha,
                 lay.limit)  # 1200 pairs: sorted mode
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_interp
@pytest.mark.slow
def test_triton_split_router_matches_torch_topk():
    """The decode router (split-K partials + per-token top-k) picks torch's top-k and softmax, like the
    per-token kernel it replaces (which still serves prefill: more than ROUTER_SPLIT_MAX_TOKENS tokens)."""
    from bench.engines.graph import kernels as gk

    gen = torch.Generator().manual_seed(5)
    for tokens, experts, hidden, k in ((1, 32, 2880, 4), (3, 8, 200, 2), (40, 16, 96, 4)):
        x = torch.randn(tokens, hidden, generator=gen)
        w = torch.randn(experts, hidden, generator=gen) * 0.1
        b = torch.randn(experts, generator=gen)
        v, i = torch.topk(torch.nn.functional.linear(x, w, b), k, dim=-1)
        assert tokens <= gk.ROUTER_SPLIT_MAX_TOKENS
        got_i, got_w = gk.router(x, w, b, k)
        assert torch.equal(got_i.long(), i), (tokens, experts, hidden)
        torch.testing.assert_close(got_w, torch.softmax(v, dim=-1), rtol=1e-5, atol=1e-6)


@needs_interp
@pytest.mark.slow
def test_triton_moe_compact_grid_matches_full_grid(monkeypatch):
    """Fewer pairs than experts: one program row per distinct routed expert gives the same outputs and the same
    distinct-expert count as one row per expert."""
    from bench.engines.graph import kernels as gk

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
            monkeypatch.setattr(gk, "MOE_COMPACT", compact)
            cnt = torch.zeros((), dtype=torch.int32)
            outs.append(gk.moe(x, gu, gub, dn, dnb, i.to(torch.int32), w, 1.702, 7.0, cnt))
            counts.append(int(cnt))
        assert torch.equal(outs[0], outs[1])
        assert counts[0] == counts[1] == i.unique().numel()
