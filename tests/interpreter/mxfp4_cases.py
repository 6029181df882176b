"""The graph engine's MXFP4 expert kernels (bench/engines/graph/mxfp4_kernels.py) on CPU under the Triton
interpreter: against the torch reference (dequantize, then the per-expert loop) in the compact, full-scan and
sorted (prefill) modes, with the distinct-expert count; and a whole decode with them equals the reference path's
tokens. Run by tests/test_triton_interpreter.py in a child pytest with TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch

from bench.engines import get_engine
from bench.engines.graph import GraphOptions
from bench.engines.graph.experts import build_experts
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
    ref = get_engine("graph").generate(model, ids, 12)
    res = get_engine("graph", {"experts": "triton"}).generate(model, ids, 12)
    assert ref.tokens.unique().numel() > 4
    assert torch.equal(res.tokens, ref.tokens)
    assert res.distinct_experts == pytest.approx(ref.distinct_experts)


@pytest.mark.parametrize("tokens,k,impl,dtype", [
    (1, 2, "gemv", torch.float32),  # batch 1 decode: one row per expert, exact
    (3, 4, "gemv", torch.float32),  # several rows per expert share the decoded weights
    (2, 2, "gemv", torch.bfloat16),  # the CUDA path's fp16 bit-placement decode
    (3, 2, "gemv2", torch.float32),  # activations loaded in (even, odd) pairs
    (5, 4, "scaled", torch.bfloat16),  # tl.dot_scaled, compact grid
    (70, 2, "scaled", torch.bfloat16),  # tl.dot_scaled, sorted (prefill)
])
def test_mxfp4_inner_loops_match_the_torch_reference(model, tokens, k, impl, dtype):
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
    got = mk.moe_mxfp4(x.to(dtype), mod.gate_up_proj_blocks, mod.gate_up_proj_scales, mod.gate_up_proj_bias.to(dtype),
                       mod.down_proj_blocks, mod.down_proj_scales, mod.down_proj_bias.to(dtype), i.to(torch.int32), w,
                       mod.alpha, mod.limit, cnt, impl=impl)
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 2e-2), err
    assert int(cnt) == i.unique().numel()
