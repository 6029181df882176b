"""Roofline: parameter counts and ceilings of gpt-oss-20b against docs/METHOD.md, and the byte model's parts."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from bench.cli import main
from bench.models.presets import load_preset_config
from bench.roofline import (
    ArchSummary,
    bytes_per_step,
    expected_distinct_experts,
    kv_bytes_per_step,
    mbu,
    mean_decode_context,
    roofline_point,
)

BW = 3.0e12  # docs/METHOD.md: measured copy bandwidth of the H100 80GB HBM3
CTX = 1280  # prompt 256 + 2048 new tokens -> mean context 1280 ("ctx ≈ 1.3k")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


@pytest.fixture(scope="module")
def gpt_oss_20b() -> ArchSummary:
    return ArchSummary.from_config(load_preset_config("gpt-oss-20b"), dtype_bytes=2)


@pytest.fixture(scope="module")
def gpt_oss_20b_16e() -> ArchSummary:
    cfg = copy.deepcopy(load_preset_config("gpt-oss-20b"))
    cfg.num_local_experts = 16
    return ArchSummary.from_config(cfg, dtype_bytes=2)


def test_gpt_oss_20b_parameter_counts_match_design(gpt_oss_20b: ArchSummary) -> None:
    a = gpt_oss_20b
    assert (a.num_layers, a.num_experts, a.top_k, a.kv_heads, a.head_dim) == (24, 32, 4, 8, 64)
    assert a.layer_types.count("sliding_attention") == 12 and a.sliding_window == 128
    assert _rel(a.total_params, 20.91e9) < 0.005
    assert _rel(a.expert_params_total, 19.12e9) < 0.005
    assert a.expert_layers * a.num_experts == 768
    assert _rel(a.expert_params, 24.88e6) < 0.005
    assert _rel(a.active_params(4), 3.61e9) < 0.005  # the embedding table is not active per token
    assert not a.tied_embeddings and a.embedding_params == 201088 * 2880


def test_gpt_oss_20b_ceilings_match_design(gpt_oss_20b: ArchSummary, gpt_oss_20b_16e: ArchSummary) -> None:
    assert _rel(roofline_point(gpt_oss_20b, 1, 4, CTX, BW).ceiling_tps, 414) < 0.02
    assert _rel(roofline_point(gpt_oss_20b, 32, 4, CTX, BW).ceiling_tps, 2300) < 0.03
    assert _rel(roofline_point(gpt_oss_20b_16e, 32, 4, CTX, BW).ceiling_tps, 4200) < 0.03
    assert _rel(gpt_oss_20b_16e.total_params, 11.36e9) < 0.005  # docs/METHOD.md: the 16-expert variant
    assert mean_decode_context(256, 2048) == CTX


def test_expected_distinct_experts() -> None:
    assert expected_distinct_experts(32, 4, 1) == pytest.approx(4.0)
    assert expected_distinct_experts(32, 4, 32) == pytest.approx(32 * (1 - (28 / 32) ** 32))
    assert expected_distinct_experts(32, 4, 10_000) == pytest.approx(32.0)
    assert expected_distinct_experts(16, 4, 32) < 16


def test_measured_distinct_experts_replace_the_uniform_expectation(gpt_oss_20b: ArchSummary) -> None:
    a = gpt_oss_20b
    uniform = bytes_per_step(a, 32, 4, CTX)
    skewed = bytes_per_step(a, 32, 4, CTX, distinct_experts=20.0)
    expected_gap = a.num_layers * (expected_distinct_experts(32, 4, 32) - 20.0) * a.expert_params * 2
    assert uniform - skewed == pytest.approx(expected_gap, rel=1e-9)
    assert roofline_point(a, 32, 4, CTX, BW, distinct=20.0).ceiling_tps > roofline_point(a, 32, 4, CTX, BW).ceiling_tps
    point = roofline_point(a, 32, 4, CTX, BW, distinct=20.0)
    assert point.distinct_experts == 20.0 and point.bytes_per_step == pytest.approx(skewed)


def test_kv_bytes_cap_sliding_layers_at_the_window(gpt_oss_20b: ArchSummary) -> None:
    a = gpt_oss_20b
    per_token_layer = 2 * 8 * 64 * 2
    # below the window every layer reads the whole context
    assert kv_bytes_per_step(a, 1, 100) == pytest.approx(24 * 100 * per_token_layer)
    # above it, the 12 sliding layers read 128 tokens and the 12 full layers the whole context, per stream
    assert kv_bytes_per_step(a, 4, 1000) == pytest.approx(4 * (12 * 1000 + 12 * 128) * per_token_layer)


def test_embedding_table_is_not_read_per_step_but_lm_head_is(gpt_oss_20b: ArchSummary) -> None:
    a = gpt_oss_20b
    b = 8
    experts = a.num_layers * expected_distinct_experts(32, 4, b) * a.expert_params * 2
    weights = bytes_per_step(a, b, 4, CTX) - experts - kv_bytes_per_step(a, b, CTX)
    lm_head = 201088 * 2880 * 2
    # non-expert bytes = everything but the embedding table (lm_head included) + b looked-up embedding rows
    assert weights == pytest.approx((a.non_expert_params - a.embedding_params) * 2 + b * 2880 * 2)
    assert weights > lm_head


def test_from_model_counts_real_parameters_like_from_config() -> None:
    cfg = load_preset_config("tiny-moe")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    real = ArchSummary.from_model(model)
    meta = ArchSummary.from_config(cfg, dtype_bytes=4)
    assert real == meta
    assert real.dtype_bytes == 4
    assert real.total_params == sum(p.numel() for p in model.parameters())
    assert real.expert_params_total == sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)


def test_tied_embeddings_are_read_in_full_once() -> None:
    cfg = copy.deepcopy(load_preset_config("tiny-moe"))
    cfg.tie_word_embeddings = True
    tied = ArchSummary.from_config(cfg, dtype_bytes=4)
    assert tied.tied_embeddings
    experts = tied.num_layers * expected_distinct_experts(tied.num_experts, 2, 1) * tied.expert_params * 4
    weights = bytes_per_step(tied, 1, 2, 10) - experts - kv_bytes_per_step(tied, 1, 10)
    assert weights == pytest.approx(tied.non_expert_params * 4)


def test_mbu() -> None:
    assert mbu(207.0, 414.0) == pytest.approx(0.5)
    assert mbu(None, 414.0) is None
    assert mbu(100.0, None) is None


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_roofline_command_prints_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "roofline",
            "--model",
            "synthetic:gpt-oss-20b",
            "--batch-sizes",
            "1,8,32",
            "--top-k",
            "4",
            "--bandwidth-gbs",
            "3000",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    summary = _last_json(out)
    assert summary["ok"] and summary["command"] == "roofline" and summary["bandwidth_gbs"] == 3000
    assert "given" in summary["bandwidth_source"]
    ceilings = {p["batch"]: p["ceiling_tps"] for p in summary["points"]}
    assert set(ceilings) == {1, 8, 32}
    assert _rel(ceilings[1], 414) < 0.02 and _rel(ceilings[32], 2300) < 0.03
    assert "| batch | distinct experts | MB/step | ceiling tok/s | per-stream tok/s |" in out
    assert "| 1 | 4.00 | 7,251 | 414 | 413.7 |" in out
    assert "3000 GB/s" in out


def test_roofline_command_experts_and_default_bandwidth(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["roofline", "--model", "synthetic:gpt-oss-20b", "--batch-sizes", "32", "--experts", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = _last_json(out)
    assert summary["experts"] == 16 and summary["top_k"] == 4  # top_k defaults to the config's
    if not torch.cuda.is_available():
        assert summary["bandwidth_source"].startswith("assumed") and summary["bandwidth_gbs"] == 3000
        assert _rel(summary["points"][0]["ceiling_tps"], 4200) < 0.03
    assert summary["bandwidth_source"] in out  # the table says where its bandwidth comes from


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--batch-sizes", "0,8"], "--batch-sizes"),
        (["--batch-sizes", "a"], "--batch-sizes"),
        (["--top-k", "9"], "--top-k"),
        (["--experts", "64"], "--experts"),
        (["--bandwidth-gbs", "-1"], "--bandwidth-gbs"),
    ],
)
def test_roofline_command_bad_input_exits_2(flags: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["roofline", "--model", "synthetic:tiny-moe", *flags])
    captured = capsys.readouterr()
    assert rc == 2
    assert needle in captured.err
    assert _last_json(captured.out)["ok"] is False


def test_from_model_takes_expert_count_from_the_tensors_of_a_pruned_model() -> None:
    cfg = load_preset_config("tiny-moe")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    full = ArchSummary.from_model(model)
    for layer in model.model.layers:
        experts = layer.mlp.experts
        for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
            setattr(experts, name, torch.nn.Parameter(getattr(experts, name).data[:4].clone()))
    pruned = ArchSummary.from_model(model)  # config still says 8 experts
    assert full.num_experts == 8 and pruned.num_experts == 4
    assert pruned.expert_params == full.expert_params
    assert pruned.expert_params_total == full.expert_params_total / 2


# ---------------------------------------------------------------- every tensor at its own width


def test_mixed_dtype_model_counts_each_tensor_at_its_width() -> None:
    """Experts in float32, everything else in bf16: bytes follow the tensors, and the KV cache the activations."""
    cfg = load_preset_config("tiny-moe")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    for layer in model.model.layers:
        layer.mlp.experts.float()
    a = ArchSummary.from_model(model)
    expert_numel = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    other = [(n, p) for n, p in model.named_parameters() if ".experts." not in n]
    assert a.expert_bytes_each * a.expert_layers * a.num_experts == expert_numel * 4
    assert a.non_expert_bytes == sum(p.numel() * 2 for _, p in other)
    assert a.kv_bytes_per_element == 2
    emb = model.model.embed_tokens.weight.numel() * 2
    per_kv_token = 2 * a.kv_heads * a.head_dim * 2
    kv_tokens = 10 + 10  # sliding (window 16 > 10) + full layer, context 10
    want = (a.non_expert_bytes - emb) + 3 * a.hidden_size * 2 + a.expert_layers * 2.5 * (expert_numel * 4 / 16) \
        + 3 * kv_tokens * per_kv_token
    assert bytes_per_step(a, 3, 2, 10, distinct_experts=2.5) == pytest.approx(want)


def test_mxfp4_layout_counts_blocks_and_scales() -> None:
    """An MXFP4 model counts its experts at blocks + scales (4.25 bits), the rest at bf16; a bf16 meta build
    with weights="mxfp4" gives the same figures; gpt-oss-20b at batch 1, k4 reads about 3.7 GB per step."""
    from bench.models import mxfp4

    cfg = load_preset_config("tiny-moe")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    mxfp4.quantize_model(model)
    a = ArchSummary.from_model(model)
    ex = model.model.layers[0].mlp.experts
    per_expert = sum(getattr(ex, n)[0].numel() for n in ("gate_up_proj_blocks", "gate_up_proj_scales",
                                                          "down_proj_blocks", "down_proj_scales"))
    per_expert += (ex.gate_up_proj_bias[0].numel() + ex.down_proj_bias[0].numel()) * 2
    assert a.weights == "mxfp4" and a.expert_bytes_each == per_expert
    weights = 64 * 128 + 64 * 64  # gate_up (hidden 64 -> 2 x 64) + down (64 -> 64) weights of one expert
    assert a.expert_params == weights + 128 + 64
    assert a.expert_bytes_each == weights * 4.25 / 8 + (128 + 64) * 2
    assert a.kv_bytes_per_element == 2 and a.dtype_bytes == 2
    meta = ArchSummary.from_config(cfg, dtype_bytes=2, weights="mxfp4")
    assert meta.expert_bytes_each == pytest.approx(a.expert_bytes_each)
    assert meta.non_expert_bytes == a.non_expert_bytes
    big = ArchSummary.from_config(load_preset_config("gpt-oss-20b"), dtype_bytes=2, weights="mxfp4")
    nbytes = bytes_per_step(big, 1, 4, 256, distinct_experts=4)
    assert 3.5e9 < nbytes < 3.9e9
    point = roofline_point(big, 1, 4, 256, 4.27e12, distinct=4.0, bandwidth_source="datasheet")
    assert point.experts_measured and point.bandwidth_source == "datasheet"
    assert not roofline_point(big, 1, 4, 256, 4.27e12).experts_measured
