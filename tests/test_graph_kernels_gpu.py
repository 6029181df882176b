"""The `graph` engine's fused decode kernels and programmatic dependent launch (PDL) on a CUDA device: skipped on
CPU, where the Triton interpreter runs the fused kernels (tests/interpreter/graph_kernels_cases.py) but cannot run
PDL's `griddepcontrol` PTX. Run on the GPU machine with `python3 -m pytest -q tests/test_graph_kernels_gpu.py`."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (PDL, sm_90)")


@pytest.fixture()
def gk():
    from bench.engines.graph import kernels

    return kernels


def test_fused_rope_attention_equals_two_kernels_on_cuda(gk):
    """gpt-oss geometry (64 query heads, 8 kv heads, head dim 64), bf16, split-K partials and a plain qkv row."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    hq, hkv, d, hidden, rows = 64, 8, 64, 2880, 1
    for sliding, use_partials in ((False, True), (True, True), (False, False)):
        x = torch.randn(rows, hidden, generator=gen, device="cuda", dtype=torch.bfloat16)
        w = torch.randn((hq + 2 * hkv) * d, hidden, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02
        b = torch.randn((hq + 2 * hkv) * d, generator=gen, device="cuda", dtype=torch.bfloat16)
        qkv = gk.splitk_linear(x, w, b) if use_partials else torch.nn.functional.linear(x, w, b)
        slots = 128 if sliding else 300
        cos = torch.randn(400, d // 2, generator=gen, device="cuda")
        sin = torch.randn(400, d // 2, generator=gen, device="cuda")
        pos = torch.tensor(290, device="cuda")
        kc = torch.randn(rows, hkv, slots, d, generator=gen, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        kc2, vc2 = kc.clone(), vc.clone()
        sinks = torch.randn(hq, generator=gen, device="cuda", dtype=torch.bfloat16)
        want = gk.attn_decode(gk.rope_kv(qkv, cos, sin, pos, kc, vc, hq, sliding, 128), kc, vc, sinks, pos, 0.125)
        got = gk.rope_attn_decode(qkv, cos, sin, pos, kc2, vc2, sinks, hq, sliding, 128, 0.125)
        torch.cuda.synchronize()
        assert torch.equal(kc2, kc) and torch.equal(vc2, vc)
        assert torch.equal(got, want), (got.float() - want.float()).abs().max().item()


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


def test_pdl_graph_replay_gives_the_same_tokens_and_logits(gk):
    """A decode step captured as a CUDA graph with PDL launches gives the same tokens and last logits as with plain
    launches (a missing wait would race: the results would move)."""
    from bench.engines.graph import GraphEngine
    from bench.models.loading import load_model

    assert gk.pdl_launch() == (torch.cuda.get_device_capability()[0] >= 9)
    model = load_model("synthetic:tiny-moe", device="cuda", dtype=torch.bfloat16, seed=0).model
    ids = torch.randint(0, model.config.vocab_size, (1, 40), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(2))
    out = {}
    for pdl in (False, True):
        gk.PDL = pdl
        try:
            eng = GraphEngine(keep_logits=True)
            res = eng.generate(model, ids, 24)
            out[pdl] = (res.tokens, eng.decoder.logits.clone())
            eng.release()
        finally:
            gk.PDL = True
    assert torch.equal(out[True][0], out[False][0])
    assert torch.equal(out[True][1], out[False][1])
