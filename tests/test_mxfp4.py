"""MXFP4 (the released gpt-oss expert format): codes and scales against an independent reference, the experts
module, checkpoints in the real layout (ours and transformers' reader agree), pruning, and the graph engine's
MXFP4 path (torch reference on CPU; its Triton kernels run under the interpreter: tests/interpreter/mxfp4_cases.py)."""

from __future__ import annotations

import math

import torch

from bench.engines import get_engine
from bench.models import mxfp4
from bench.models import pruning as P
from bench.models.loading import load_model, weights_impl

# ---------------------------------------------------------------- an independent reference of e2m1 / e8m0


def ref_e2m1_value(code: int) -> float:
    """OCP MX e2m1: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0; exponent 0 is subnormal."""
    sign = -1.0 if code & 8 else 1.0
    exp, man = (code >> 1) & 3, code & 1
    if exp == 0:
        return sign * man * 0.5
    return sign * (1 + man / 2) * 2.0 ** (exp - 1)


def ref_quantize_block(values: list[float]) -> tuple[list[int], int]:
    """One block of 32 floats -> (codes, scale code), by brute force over the grid (ties to the even code)."""
    amax = max(abs(v) for v in values)
    if amax == 0:
        return [0] * len(values), 0
    e = -127
    while amax / 2.0**e > 6.0:
        e += 1
    codes = []
    for v in values:
        y = v / 2.0**e
        best = min(range(8), key=lambda c: (abs(abs(y) - ref_e2m1_value(c)), c % 2))
        codes.append(best | (8 if y < 0 and best else 0))
    return codes, e + 127


def test_all_16_codes_decode_to_their_e2m1_values():
    codes = torch.arange(16, dtype=torch.uint8)
    blocks = (codes.repeat(2) | (codes.flip(0).repeat(2) << 4)).view(1, 1, 32)[..., :16].reshape(1, 1, 16)
    blocks = torch.cat([codes | (codes.flip(0) << 4)]).view(1, 1, 16)  # byte j: low = j, high = 15 - j
    got = mxfp4.dequantize(blocks, torch.full((1, 1), 127, dtype=torch.uint8), torch.float32).flatten().tolist()
    want = []
    for j in range(16):
        want += [ref_e2m1_value(j), ref_e2m1_value(15 - j)]  # element 2j is the low nibble, 2j+1 the high one
    assert got == want
    assert [ref_e2m1_value(c) for c in range(8)] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert list(mxfp4.FP4_VALUES) == [ref_e2m1_value(c) for c in range(16)]


def test_every_scale_code_is_a_power_of_two_with_bias_127():
    scales = torch.arange(255, dtype=torch.uint8).view(255, 1)
    blocks = torch.full((255, 1, 16), 0x22, dtype=torch.uint8)  # every element 1.0
    got = mxfp4.dequantize(blocks, scales, torch.float32)
    for s in range(255):
        assert got[s].unique().tolist() == [math.ldexp(1.0, s - 127)], s


def test_quantize_matches_the_reference_quantizer_exactly():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 5, 64, generator=gen) * torch.logspace(-6, 3, 5).view(1, 5, 1)
    w[0, 0, :32] = 0.0  # an all-zero block
    w[1, 1, 0] = 6.0 * 2.0**-3 * 1.25  # ties between grid values
    w[1, 1, 1] = 2.5 * 2.0**-3
    w[1, 1, 2] = -0.25 * 2.0**-3
    blocks, scales = mxfp4.quantize(w)
    assert blocks.shape == (3, 5, 2, 16) and scales.shape == (3, 5, 2)
    assert blocks.dtype == scales.dtype == torch.uint8
    flat = w.reshape(-1, 32).tolist()
    for i, values in enumerate(flat):
        codes, scale = ref_quantize_block(values)
        packed = [codes[2 * j] | (codes[2 * j + 1] << 4) for j in range(16)]
        assert blocks.reshape(-1, 16)[i].tolist() == packed, i
        assert int(scales.reshape(-1)[i]) == scale, i
    # round trip: within half a grid step of the block's scale, and exact for values on the grid
    back = mxfp4.dequantize(blocks, scales, torch.float32)
    step = torch.ldexp(torch.ones(()), scales.to(torch.float32) - 127).repeat_interleave(32, -1).view_as(w)
    assert torch.all((back - w).abs() <= step + 1e-30)
    assert torch.equal(mxfp4.dequantize(*mxfp4.quantize(back), torch.float32), back)


# ---------------------------------------------------------------- models, checkpoints, pruning


def _lively(seed: int = 0):
    loaded = load_model("synthetic:tiny-moe", device="cpu", dtype=torch.float32, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return loaded


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(2, 512, (2, 12), generator=torch.Generator().manual_seed(1))


def test_synthetic_mxfp4_is_the_checkpoint_layout_and_runs_like_its_dequantized_self():
    loaded = load_model("synthetic:tiny-moe", "cpu", torch.float32, seed=0, weights="mxfp4")
    ex = loaded.model.model.layers[0].mlp.experts
    assert isinstance(ex, mxfp4.Mxfp4Experts)
    assert ex.gate_up_proj_blocks.shape == (8, 128, 2, 16) and ex.gate_up_proj_scales.shape == (8, 128, 2)
    assert ex.down_proj_blocks.shape == (8, 64, 2, 16) and ex.down_proj_scales.shape == (8, 64, 2)
    assert loaded.weights == "mxfp4" and any("quantized to mxfp4" in n for n in loaded.notes)
    assert weights_impl(loaded, "hf", "cpu") == "mxfp4 dequantized per routed expert (torch)"
    assert weights_impl(loaded, "graph", "cuda") == "mxfp4 native (triton)"
    # same seed, bf16: the mxfp4 experts are its experts quantized
    bf = load_model("synthetic:tiny-moe", "cpu", torch.float32, seed=0)
    gu, _ = ex.expert_weights(slice(None), torch.float32)
    ref = bf.model.model.layers[0].mlp.experts
    assert torch.equal(gu, mxfp4.dequantize(*mxfp4.quantize(ref.gate_up_proj.transpose(1, 2)),
                                            torch.float32).transpose(1, 2))
    assert weights_impl(bf, "hf", "cpu") == "float32"
    want = _logits(loaded.model, IDS)
    mxfp4.dequantize_model(loaded.model)
    assert not mxfp4.model_is_mxfp4(loaded.model)
    torch.testing.assert_close(_logits(loaded.model, IDS), want, rtol=1e-5, atol=1e-5)


def test_mxfp4_checkpoint_round_trip_and_transformers_reads_the_same_values(tmp_path):
    loaded = _lively()
    mxfp4.quantize_model(loaded.model)
    want = _logits(loaded.model, IDS)
    mxfp4.save_checkpoint(loaded.model, tmp_path)
    ours = load_model(str(tmp_path), "cpu", torch.float32, seed=0, weights="mxfp4")
    assert mxfp4.model_is_mxfp4(ours.model)
    assert "mxfp4 blocks and scales read from the checkpoint as stored" in ours.notes
    for a, b in zip(ours.model.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(_logits(ours.model, IDS), want, rtol=1e-5, atol=1e-5)
    # transformers' own MXFP4 reader (dequantize=True on CPU) decodes our layout to the same weights
    theirs = load_model(str(tmp_path), "cpu", torch.float32, seed=0, weights="bf16", dequantize_mxfp4=True)
    assert not mxfp4.model_is_mxfp4(theirs.model)
    ex = theirs.model.model.layers[1].mlp.experts
    gu, dn = ours.model.model.layers[1].mlp.experts.expert_weights(slice(None), torch.float32)
    assert torch.equal(ex.gate_up_proj.float(), gu) and torch.equal(ex.down_proj.float(), dn)
    torch.testing.assert_close(_logits(theirs.model, IDS), want, rtol=1e-4, atol=1e-4)


def test_pruned_mxfp4_equals_base_mxfp4_with_router_masked(tmp_path):
    keep = [[1, 4, 6], [0, 3, 7]]
    base = _lively()
    mxfp4.quantize_model(base.model)
    pruned = _lively()
    mxfp4.quantize_model(pruned.model)
    P.prune_model(pruned.model, keep)
    ex = pruned.model.model.layers[0].mlp.experts
    assert ex.gate_up_proj_blocks.shape[0] == ex.down_proj_scales.shape[0] == ex.num_experts == 3
    assert pruned.model.model.layers[0].mlp.router.weight.shape[0] == 3
    P.mask_router(base.model, keep)
    torch.testing.assert_close(_logits(pruned.model, IDS), _logits(base.model, IDS), rtol=1e-5, atol=1e-5)
    # the pruned checkpoint, in the released layout, loads back with the same outputs
    mxfp4.save_checkpoint(pruned.model, tmp_path)
    again = load_model(str(tmp_path), "cpu", torch.float32, seed=0, weights="mxfp4")
    assert again.config.num_local_experts == 3
    torch.testing.assert_close(_logits(again.model, IDS), _logits(pruned.model, IDS), rtol=1e-5, atol=1e-5)


def test_graph_engine_mxfp4_tokens_equal_hf_on_the_dequantized_model_past_the_window():
    """Greedy tokens of the graph engine (torch reference MXFP4 path) equal the hf engine's on the same weights
    dequantized, float32, 64 tokens, well past the sliding window of 16."""
    new_tokens = 64
    loaded = _lively()
    mxfp4.quantize_model(loaded.model)
    ids = torch.randint(2, 512, (3, 10), generator=torch.Generator().manual_seed(1))
    assert ids.shape[1] + new_tokens > 2 * loaded.config.sliding_window + 32
    graph = get_engine("graph")
    res = graph.generate(loaded.model, ids, new_tokens)
    graph.release()
    mxfp4.dequantize_model(loaded.model)
    hf = get_engine("hf")
    hf.prepare(loaded.model, ids, new_tokens)
    ref = hf.generate(loaded.model, ids, new_tokens)
    assert ref.tokens.unique().numel() > 30
    assert torch.equal(res.tokens, ref.tokens)
