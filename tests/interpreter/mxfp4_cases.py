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
    ref = get_engine("graph").generate(model, ids, 6)  # 5 decode steps: each interpreted kernel launch is slow
    res = get_engine("graph", {"experts": "triton"}).generate(model, ids, 6)
    assert ref.tokens.unique().numel() > 4
    assert torch.equal(res.tokens, ref.tokens)
    assert res.distinct_experts == pytest.approx(ref.distinct_experts)
