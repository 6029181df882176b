"""Run by tests/test_mxfp4.py in a subprocess with TRITON_INTERPRET=1: the MXFP4 Triton expert kernels against
the torch reference (dequantize, then the bf16 loop), and a graph decode with them against the reference path."""

from __future__ import annotations

import torch

import tests.triton_interp as interp

interp.patch()

from bench.engines.graph import mxfp4_kernels as mk  # noqa: E402
from bench.engines.graph.decoder import DecoderOptions, GptOssDecoder  # noqa: E402
from bench.engines.graph.engine import GraphEngine  # noqa: E402
from bench.models import mxfp4  # noqa: E402
from bench.models.loading import load_model  # noqa: E402


def main() -> None:
    loaded = load_model("synthetic:tiny-moe", device="cpu", dtype=torch.float32, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    mxfp4.quantize_model(loaded.model)
    model = loaded.model
    dec = GptOssDecoder(model, 1, 4, 4, DecoderOptions())
    lay = dec.layers[0]
    mx = lay.mx
    for tokens, k in ((1, 2), (3, 2), (5, 4), (80, 2)):  # compact, scan over all experts, sorted (prefill)
        x = torch.randn(tokens, 64, generator=gen)
        v, i = torch.topk(torch.randn(tokens, 8, generator=gen), k, dim=-1)
        w = torch.softmax(v, dim=-1)
        want = dec._moe(x, lay, i, w, count=False)
        cnt = torch.zeros((), dtype=torch.int32)
        got = mk.moe_mxfp4(x, mx.gate_up_proj_blocks, mx.gate_up_proj_scales, lay.gate_up_bias, mx.down_proj_blocks,
                           mx.down_proj_scales, lay.down_bias, i.to(torch.int32), w, lay.alpha, lay.limit, cnt)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert int(cnt) == i.unique().numel(), (tokens, k, int(cnt))
    ids = torch.randint(2, 512, (2, 10), generator=torch.Generator().manual_seed(1))
    ref = GraphEngine().generate(model, ids, 20)
    res = GraphEngine(kernels="torch", moe="triton").generate(model, ids, 20)
    assert torch.equal(res.tokens, ref.tokens), (res.tokens, ref.tokens)
    assert abs(res.distinct_experts - ref.distinct_experts) < 1e-9
    print("ok")


if __name__ == "__main__":
    main()
