"""Model sources and pruning on real tiny gpt-oss models (CPU, float32): presets, loading, keep sets, slicing,
top_k, the prune command, caches and experts implementations."""

from __future__ import annotations

import json

import pytest
import torch

from bench import cli
from bench.errors import BadInputError
from bench.models import pruning as P
from bench.models.loading import load_model, resolve_config, set_experts_implementation
from bench.models.presets import list_presets, load_preset_config
from bench.spec import PruneSpec
from tests.conftest import TINY_SOURCE

TOL = {"atol": 1e-5, "rtol": 1e-5}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


# ---------------------------------------------------------------- presets and loading


def test_presets_listed_and_20b_matches_the_real_architecture():
    assert {"gpt-oss-20b", "tiny-moe"} <= set(list_presets())
    cfg = load_preset_config("gpt-oss-20b")
    assert type(cfg).__name__ == "GptOssConfig"
    assert (cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok) == (24, 32, 4)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim) == (2880, 2880, 64)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (64, 8, 201088)
    assert cfg.sliding_window == 128 and cfg.max_position_embeddings == 131072
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * 12
    assert cfg.rope_parameters["rope_type"] == "yarn" and cfg.rope_parameters["factor"] == 32.0
    assert cfg.rope_parameters["rope_theta"] == 150000.0
    assert cfg._attn_implementation == "eager" and cfg._experts_implementation == "grouped_mm"
    # parameter count on the meta device (no memory): docs/METHOD.md's 20.91B total, 24.88M per expert
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    experts = model.model.layers[0].mlp.experts
    per_expert = experts.gate_up_proj[0].numel() + experts.down_proj[0].numel()  # weights, without biases
    assert round(total / 1e9, 2) == 20.91
    assert round(per_expert / 1e6, 2) == 24.88


def test_tiny_preset_is_cpu_sized_and_crosses_its_window():
    cfg = load_preset_config("tiny-moe")
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    assert (cfg.hidden_size, cfg.num_local_experts, cfg.num_experts_per_tok) == (64, 8, 2)
    assert cfg.sliding_window < 64


def test_unknown_preset_names_it_and_lists_available():
    with pytest.raises(BadInputError, match=r"'nope'.*gpt-oss-20b.*tiny-moe"):
        resolve_config("synthetic:nope")


def test_missing_hf_model_offline_says_how_to_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read at import time; no network in this test
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(BadInputError, match=r"no-such-org/no-such-model.*HF_HUB_OFFLINE.*download"):
        resolve_config("no-such-org/no-such-model")


def test_synthetic_weights_are_seeded(tiny_model_factory):
    a, b, c = (tiny_model_factory(seed=s, biases=False) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True))
    assert not torch.equal(a.model.model.embed_tokens.weight, c.model.model.embed_tokens.weight)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.base_experts == 8 and a.synthetic and not a.model.training
    assert a.config._attn_implementation == "eager"


# ---------------------------------------------------------------- pruning equals masking


@pytest.mark.parametrize("method", ["first", "random", "frequency", "union"])
def test_pruned_model_equals_base_with_router_masked(tiny_model_factory, tiny_input_ids, tiny_keep_files, method):
    base, pruned = tiny_model_factory(), tiny_model_factory()
    assert torch.equal(logits(base.model, tiny_input_ids), logits(pruned.model, tiny_input_ids))
    if method == "union":
        prune = PruneSpec(union=[str(f) for f in tiny_keep_files], experts=4)
    else:
        prune = PruneSpec(experts=4, method=method)
    keep = P.apply_variant(pruned, prune, top_k=2, seed=3)
    assert keep is not None and all(len(row) == 4 for row in keep)
    P.mask_router(base.model, keep)
    got, want = logits(pruned.model, tiny_input_ids), logits(base.model, tiny_input_ids)
    torch.testing.assert_close(got, want, **TOL)
    # the structure really shrank, on every sliced tensor, modules and config
    for layer in pruned.model.model.layers:
        ex, rt = layer.mlp.experts, layer.mlp.router
        assert ex.gate_up_proj.shape[0] == ex.gate_up_proj_bias.shape[0] == ex.down_proj.shape[0] == 4
        assert ex.down_proj_bias.shape[0] == rt.weight.shape[0] == rt.bias.shape[0] == 4
        assert ex.num_experts == rt.num_experts == 4
    assert pruned.config.num_local_experts == 4


def test_masking_matters_so_the_equality_test_can_fail(tiny_model_factory, tiny_input_ids):
    base, pruned = tiny_model_factory(), tiny_model_factory()
    keep = [[0, 2, 5, 7], [1, 3, 4, 6]]
    P.prune_model(pruned.model, keep)
    assert not torch.allclose(logits(pruned.model, tiny_input_ids), logits(base.model, tiny_input_ids), atol=1e-3)
    # a wrongly ordered/sliced keep (other experts) does not match the masked base either
    other = tiny_model_factory()
    P.prune_model(other.model, [[0, 2, 5, 6], [1, 3, 4, 6]])
    P.mask_router(base.model, keep)
    assert not torch.allclose(logits(other.model, tiny_input_ids), logits(base.model, tiny_input_ids), atol=1e-3)


def test_prune_rejects_unequal_counts_and_bad_indices(tiny_model):
    with pytest.raises(BadInputError, match="same number of experts"):
        P.prune_model(tiny_model.model, [[0, 1, 2], [0, 1]])
    with pytest.raises(BadInputError, match="layer 1 has expert index 8 out of range"):
        P.prune_model(tiny_model.model, [[0, 1], [0, 8]])
    with pytest.raises(BadInputError, match="3 layers but the model has 2"):
        P.prune_model(tiny_model.model, [[0, 1]] * 3)
    with pytest.raises(BadInputError, match="top_k 2 is greater than the 1 experts"):
        P.prune_model(tiny_model.model, [[0], [1]])


def test_apply_variant_base_model_only_sets_top_k(tiny_model):
    assert P.apply_variant(tiny_model, None, top_k=1, seed=0) is None
    assert tiny_model.config.num_local_experts == 8
    assert all(r.top_k == 1 for r, _ in P.moe_layers(tiny_model.model))


def test_apply_variant_rejects_top_k_above_kept(tiny_model):
    with pytest.raises(BadInputError, match="top_k 3 is greater than the 2 experts kept"):
        P.apply_variant(tiny_model, PruneSpec(experts=2, method="first"), top_k=3, seed=0)


# ---------------------------------------------------------------- top_k


def test_top_k_is_set_on_every_router_and_changes_outputs(tiny_model, tiny_input_ids):
    before = logits(tiny_model.model, tiny_input_ids)
    seen: list[int] = []
    hooks = [
        r.register_forward_hook(lambda _m, _i, out: seen.append(out[-1].shape[-1]))
        for r, _ in P.moe_layers(tiny_model.model)
    ]
    assert P.set_top_k(tiny_model.model, 4) == 2
    after = logits(tiny_model.model, tiny_input_ids)
    for h in hooks:
        h.remove()
    assert seen == [4, 4]  # every router routed 4 experts per token
    assert tiny_model.config.num_experts_per_tok == 4
    assert not torch.allclose(before, after, atol=1e-4)
    with pytest.raises(BadInputError, match="top_k 9 is greater than the 8 experts"):
        P.set_top_k(tiny_model.model, 9)


def test_editing_config_alone_does_not_change_top_k(tiny_model, tiny_input_ids):
    before = logits(tiny_model.model, tiny_input_ids)
    tiny_model.config.num_experts_per_tok = 4
    torch.testing.assert_close(logits(tiny_model.model, tiny_input_ids), before)  # the trap docs/METHOD.md names


# ---------------------------------------------------------------- keep-set selection


def test_select_keep_methods():
    assert P.select_keep(2, 8, 3, "first", 0) == [[0, 1, 2], [0, 1, 2]]
    r1, r2 = P.select_keep(24, 32, 16, "random", 5), P.select_keep(24, 32, 16, "random", 5)
    assert r1 == r2 and r1 != P.select_keep(24, 32, 16, "random", 6)
    assert all(len(set(row)) == 16 and row == sorted(row) and max(row) < 32 for row in r1)
    freq = [[5, 9, 1, 9, 0, 3], [0, 0, 7, 1, 2, 8]]
    assert P.select_keep(2, 6, 3, "frequency", 0, freq) == [[0, 1, 3], [2, 4, 5]]
    with pytest.raises(BadInputError, match="between 1 and the model's 6 experts"):
        P.select_keep(2, 6, 7, "first", 0)
    with pytest.raises(BadInputError, match="must be one of"):
        P.select_keep(2, 6, 3, "best", 0)


def test_routing_frequency_counts_every_routed_token(tiny_model, tiny_input_ids):
    freq = P.routing_frequency(tiny_model.model, tiny_input_ids)
    assert freq.shape == (2, 8) and freq.dtype == torch.int64
    assert freq.sum(dim=1).tolist() == [tiny_input_ids.numel() * 2] * 2  # tokens x top_k per layer
    keep = P.select_keep(2, 8, 2, "frequency", 0, freq)
    assert all(freq[i, keep[i]].min() >= freq[i].topk(2).values.min() for i in range(2))


def test_union_trims_and_fills_by_frequency(tiny_keep_files):
    a, b = (P.load_keep_file(f, 2, 8) for f in tiny_keep_files)
    assert a == [[2, 3, 4], [1, 2, 5]] and b == [[1, 4, 6], [1, 2, 5]]
    freq = [[0, 50, 10, 40, 30, 0, 20, 0], [5, 9, 9, 0, 1, 9, 3, 7]]
    keep = P.union_keep([a, b], 4, freq)
    assert keep[0] == [1, 3, 4, 6]  # union {1,2,3,4,6} (5): drop the least routed, expert 2
    assert keep[1] == [1, 2, 5, 7]  # union {1,2,5} (3): add the most routed other, expert 7
    assert P.union_keep([a, b], 3, freq) == [[1, 3, 4], [1, 2, 5]]
    # without frequencies: experts listed in both sets win, then the lower index
    assert P.union_keep([a, b], 2, None, num_experts=8) == [[1, 4], [1, 2]]
    with pytest.raises(BadInputError, match="between 1 and"):
        P.union_keep([a, b], 9, freq)


# ---------------------------------------------------------------- keep files


def _write(tmp_path, payload, name="keep.json"):
    p = tmp_path / name
    p.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return p


def test_keep_file_forms(tmp_path):
    assert P.load_keep_file(_write(tmp_path, {"note": "x", "layers": [[3, 1], [0, 2]]}), 2, 8) == [[1, 3], [0, 2]]
    assert P.load_keep_file(_write(tmp_path, [[5, 4], [7, 6]]), 2, 8) == [[4, 5], [6, 7]]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"layers": [[0, 1]]}, r"has 1 layers but the model has 2"),
        ({"layers": [[0, 1], [2, 2]]}, r"layer 1 lists expert\(s\) \[2\] more than once"),
        ({"layers": [[0, 1], [2, 8]]}, r"layer 1 has expert index 8 out of range \(0..7\)"),
        ({"layers": [[0, -1], [2, 3]]}, r"layer 0 has expert index -1 out of range"),
        ({"layers": [[0, 1], ["2", 3]]}, r"layer 1 has a non-integer expert index '2'"),
        ({"layers": [[0, 1], []]}, r"layer 1 must be a non-empty list"),
        ({"experts": [[0, 1], [2, 3]]}, r'missing "layers"'),
        ("{not json", r"is not valid JSON"),
    ],
)
def test_keep_file_validation_names_file_and_layer(tmp_path, payload, match):
    path = _write(tmp_path, payload, name="bad-keep.json")
    with pytest.raises(BadInputError, match=match) as info:
        P.load_keep_file(path, num_layers=2, num_experts=8)
    assert "bad-keep.json" in str(info.value)


def test_missing_keep_file(tmp_path):
    with pytest.raises(BadInputError, match=r"nope.json not found"):
        P.load_keep_file(tmp_path / "nope.json")


def test_committed_20b_keep_files_are_valid_and_union_needs_trimming():
    from bench.paths import KEEP_DIR

    sets = [P.load_keep_file(KEEP_DIR / f"gpt-oss-20b-domain-{d}.json", 24, 32) for d in ("code", "chat")]
    assert all(len(row) == 12 for s in sets for row in s)
    assert all(len(set(x) | set(y)) > 16 for x, y in zip(*sets, strict=True))
    assert sets[0] == P.synthetic_domain_keep(24, 32, 12, 1)  # regenerable from the documented function


# ---------------------------------------------------------------- prune command


def test_prune_command_writes_a_checkpoint_that_loads_back(tmp_path, capsys, tiny_keep_files, tiny_input_ids):
    out = tmp_path / "pruned"
    argv = [
        "prune",
        "--model",
        TINY_SOURCE,
        "--out",
        str(out),
        "--union",
        *map(str, tiny_keep_files),
        "--experts",
        "4",
        "--top-k",
        "1",
        "--seed",
        "0",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["experts"] == 4 and summary["top_k"] == 1 and summary["base_experts"] == 8
    info = json.loads((out / "moe_bench_prune.json").read_text())
    # the same variant built in memory
    ref = load_model(TINY_SOURCE, "cpu", torch.float32, seed=0)
    keep = P.apply_variant(ref, PruneSpec(union=[str(f) for f in tiny_keep_files], experts=4), top_k=1, seed=0)
    assert info["layers"] == keep
    back = load_model(str(out), "cpu", torch.float32, seed=0)
    assert back.base_experts == 4 and back.config.num_experts_per_tok == 1
    assert all(r.top_k == 1 and r.num_experts == 4 for r, _ in P.moe_layers(back.model))
    assert back.config._attn_implementation == "eager" and back.fingerprint.startswith("ckpt-")
    torch.testing.assert_close(logits(back.model, tiny_input_ids), logits(ref.model, tiny_input_ids), **TOL)


def test_prune_command_bad_flags_exit_2(tmp_path, capsys):
    assert cli.main(["prune", "--model", TINY_SOURCE, "--out", str(tmp_path / "o"), "--experts", "4"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert cli.main(["prune", "--model", TINY_SOURCE, "--out", str(tmp_path / "o"), "--keep", "missing.json"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- caches and experts implementations

GEN = {"max_new_tokens": 64, "min_new_tokens": 64, "do_sample": False, "pad_token_id": 0}


def _prompt():
    return torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(11))


def test_static_and_dynamic_caches_give_identical_greedy_tokens(tiny_model):
    ids = _prompt()
    with torch.no_grad():
        dyn = tiny_model.model.generate(ids, return_dict_in_generate=True, **GEN)
        sta = tiny_model.model.generate(ids, cache_implementation="static", return_dict_in_generate=True, **GEN)
    assert type(dyn.past_key_values).__name__ == "DynamicCache"
    assert type(sta.past_key_values).__name__ == "StaticCache"
    assert dyn.sequences.shape == (2, 8 + 64)  # 72 positions: past the sliding window of 16
    assert torch.equal(dyn.sequences, sta.sequences)
    assert len(set(dyn.sequences[0, 8:].tolist())) > 8  # not a degenerate repeat


def test_experts_implementations_agree(tiny_model_factory, tiny_input_ids):
    ids = _prompt()
    model = tiny_model_factory().model
    results = {}
    for impl in ("eager", "batched_mm", "grouped_mm"):
        set_experts_implementation(model, impl)
        assert model.config._experts_implementation == impl
        with torch.no_grad():
            results[impl] = (logits(model, tiny_input_ids), model.generate(ids, **GEN))
    ref_logits, ref_tokens = results["grouped_mm"]
    for impl in ("eager", "batched_mm"):
        torch.testing.assert_close(results[impl][0], ref_logits, **TOL)
        assert torch.equal(results[impl][1], ref_tokens), impl
    with pytest.raises(BadInputError, match="experts implementation 'fast'"):
        set_experts_implementation(model, "fast")


# ---------------------------------------------------------------- MXFP4 checkpoints


def _write_mxfp4_checkpoint(loaded, path):
    """A tiny gpt-oss checkpoint in the real MXFP4 layout (*_blocks, *_scales): every FP4 nibble is 1.0 and
    expert e's block scale is 2**e, so each dequantized expert is the constant 2**e."""
    from safetensors.torch import load_file, save_file

    loaded.model.save_pretrained(path)
    state = load_file(path / "model.safetensors")
    cfg = loaded.config
    n, hidden, inter = cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size
    scale = (127 + torch.arange(n, dtype=torch.uint8)).view(n, 1, 1)
    for key in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        del state[key]
        rows, cols = (2 * inter, hidden) if "gate_up" in key else (hidden, inter)
        state[key + "_blocks"] = torch.full((n, rows, cols // 32, 16), 0x22, dtype=torch.uint8)  # nibbles 2 = 1.0
        state[key + "_scales"] = scale.expand(n, rows, cols // 32).contiguous()
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-MXFP4-kernels path (CPU)")
def test_mxfp4_checkpoint_is_dequantized_to_bf16_and_prunable(tiny_model, tmp_path):
    _write_mxfp4_checkpoint(tiny_model, tmp_path)
    loaded = load_model(str(tmp_path), "cpu", torch.bfloat16, seed=0)
    assert "mxfp4 dequantized to bf16" in loaded.notes
    experts = loaded.model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype == torch.bfloat16 and experts.gate_up_proj.shape == (8, 64, 128)
    assert [experts.down_proj[e].unique().tolist() for e in range(8)] == [[2.0**e] for e in range(8)]
    P.prune_model(loaded.model, [[1, 4, 6], [0, 3, 7]])
    experts = loaded.model.model.layers[1].mlp.experts  # the sliced experts are the kept ones
    assert [experts.gate_up_proj[e].unique().tolist() for e in range(3)] == [[1.0], [8.0], [128.0]]


# ---------------------------------------------------------------- Hugging Face ids, offline from the cache


def test_hf_id_loads_offline_from_the_local_cache(
    tiny_model, tiny_model_factory, tmp_path, monkeypatch, tiny_input_ids
):
    """A model id resolves through transformers' from_pretrained from the hub cache layout, with no network."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-moe" / "snapshots" / ("a" * 40)
    tiny_model.model.save_pretrained(snapshot)
    (cache / "models--acme--tiny-moe" / "refs").mkdir()
    (cache / "models--acme--tiny-moe" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    assert resolve_config("acme/tiny-moe").num_local_experts == 8
    loaded = load_model("acme/tiny-moe", "cpu", torch.float32, seed=0)
    assert not loaded.synthetic and loaded.fingerprint.startswith("ckpt-")
    torch.testing.assert_close(logits(loaded.model, tiny_input_ids), logits(tiny_model.model, tiny_input_ids), **TOL)
    # the fingerprint follows the checkpoint's weights (same shapes, other values -> other fingerprint)
    tiny_model_factory(seed=1).model.save_pretrained(snapshot)
    assert load_model("acme/tiny-moe", "cpu", torch.float32, seed=0).fingerprint != loaded.fingerprint


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU paths")
def test_prune_weights_mxfp4_slices_a_real_layout_checkpoint_and_loads_back_in_both_engines(
    tiny_model, tmp_path, capsys, tiny_input_ids
):
    """`bench prune --weights mxfp4` on a checkpoint in the released MXFP4 layout slices blocks and scales with
    the router rows and writes that layout again: our reader (engine graph) and transformers' dequantizing
    reader (engine hf) load it, and it computes what the base checkpoint computes with its router masked."""
    from bench.engines import get_engine
    from bench.models import mxfp4

    src = tmp_path / "src"
    _write_mxfp4_checkpoint(tiny_model, src)
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(src), "--out", str(out), "--experts", "3", "--method", "first", "--top-k", "2",
            "--device", "cpu", "--dtype", "float32", "--weights", "mxfp4"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["weights"] == "mxfp4" and summary["experts"] == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4" and cfg["num_local_experts"] == 3
    ours = load_model(str(out), "cpu", torch.float32, seed=0, weights="mxfp4")
    ex = ours.model.model.layers[0].mlp.experts
    assert ex.gate_up_proj_blocks.shape == (3, 128, 2, 16) and ex.down_proj_scales.shape == (3, 64, 2)
    # expert e of the source is the constant 2**e: the kept ones are 0, 1, 2
    assert [ex.expert_weights(e, torch.float32)[1].unique().tolist() for e in range(3)] == [[1.0], [2.0], [4.0]]
    base = load_model(str(src), "cpu", torch.float32, seed=0, weights="mxfp4")
    P.set_top_k(base.model, 2)
    P.mask_router(base.model, [[0, 1, 2], [0, 1, 2]])
    want = logits(base.model, tiny_input_ids)
    torch.testing.assert_close(logits(ours.model, tiny_input_ids), want, **TOL)
    theirs = load_model(str(out), "cpu", torch.float32, seed=0, weights="bf16", dequantize_mxfp4=True)
    assert not mxfp4.model_is_mxfp4(theirs.model)
    torch.testing.assert_close(logits(theirs.model, tiny_input_ids), want, **TOL)
    ids = tiny_input_ids[:1, :6]
    graph = get_engine("graph").generate(ours.model, ids, 6)
    hf = get_engine("hf").generate(theirs.model, ids, 6)
    assert torch.equal(graph.tokens, hf.tokens)
