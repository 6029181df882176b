"""The `graph` engine on CPU (torch ops): same greedy tokens as the `hf` engine on tiny-moe (float32, 64 tokens, past
the sliding window of 16), teacher-forced logits equal to a full HF forward, the HF model left untouched, the
clamped SwiGLU and near-tie routing equal to HF's modules, new_tokens = 2, and the typed options.
The Triton kernels are checked under the Triton interpreter in tests/test_graph_kernels.py."""

from __future__ import annotations

import pytest
import torch

from bench.engines import get_engine
from bench.engines.graph import GraphEngine, GraphOptions
from bench.engines.graph.decoder import GptOssDecoder
from bench.engines.graph.experts import build_experts
from bench.engines.graph.ops import Router, TorchOps
from bench.errors import BadInputError
from bench.models.loading import load_model, set_experts_implementation

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
    dec = GptOssDecoder(model, 3, ids.shape[1], NEW_TOKENS, keep_logits=True)
    dec.prefill(ids)
    errs = [(dec.logits - want[:, ids.shape[1] - 1]).abs().max().item()]
    for s in range(NEW_TOKENS - 1):
        dec.tok.copy_(ref.tokens[:, s])
        dec.decode_step()
        errs.append((dec.logits - want[:, ids.shape[1] + s]).abs().max().item())
    assert max(errs) < 1e-3 * want.abs().max().item()


def test_graph_detects_wrong_sliding_window(lively):
    """A decoder that treats the sliding layer as full attention must not pass the equivalence check."""
    model, ids, ref = lively
    saved = list(model.config.layer_types)
    model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    try:
        res = get_engine("graph").generate(model, ids, NEW_TOKENS)
    finally:
        model.config.layer_types = saved
    assert not torch.equal(res.tokens, ref.tokens)


def test_graph_rejects_non_gpt_oss_model():
    with pytest.raises(BadInputError, match="engine 'graph'"):
        get_engine("graph").prepare(torch.nn.Linear(2, 2), torch.zeros((1, 4), dtype=torch.long), 4)


def _param_snapshot(model: torch.nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    return {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}


def test_graph_prepare_leaves_hf_parameters_untouched(lively):
    """The decoder fuses q/k/v into its own buffer: the HF model's parameters keep their storage and values, so a
    later `hf` run measures the model as loaded."""
    model, ids, _ = lively
    before = _param_snapshot(model)
    eng = get_engine("graph")
    eng.prepare(model, ids, 4)
    eng.generate(model, ids, 4)
    after = _param_snapshot(model)
    eng.release()
    assert before.keys() == after.keys()
    for name, (ptr, value) in before.items():
        assert after[name][0] == ptr, f"{name} was re-bound"
        assert torch.equal(after[name][1], value), f"{name} changed"
    assert not hasattr(model.model.layers[0].self_attn, "_graph_wqkv")


def test_graph_two_new_tokens(lively):
    """new_tokens = 2 (the spec's minimum): the warm-up steps before capture must not write past the output
    (they used to write out_tokens[:, 2]); the first two tokens equal hf's."""
    model, ids, ref = lively
    eng = get_engine("graph")
    eng.prepare(model, ids, 2)  # WARMUP_STEPS eager decode steps after a prefill, as before a capture on CUDA
    res = eng.generate(model, ids, 2)
    assert res.tokens.shape == (3, 2)
    assert torch.equal(res.tokens, ref.tokens[:, :2])
    assert len(res.step_s) == 1
    dec = GptOssDecoder(model, 3, ids.shape[1], 2, extra_steps=5)
    dec.prefill(ids)
    for _ in range(5):
        dec.decode_step()
    assert dec.out_tokens.shape == (3, 2) and int(dec.pos) == ids.shape[1] + 5
    assert torch.equal(dec.out_tokens, ref.tokens[:, :2])


def _hf_experts_out(model, mlp, x, topi, topw):
    set_experts_implementation(model, "eager")
    with torch.no_grad():
        return mlp.experts(x, topi, topw)


def test_swiglu_clamp_matches_hf_with_large_activations():
    """Activations far past the clamp (limit 7): the graph experts equal HF's GptOssExperts. Without the clamp
    (gate capped at 7, up clipped to [-7, 7]) the outputs differ by orders of magnitude."""
    model = _lively_tiny_model()
    mlp = model.model.layers[0].mlp
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, model.config.hidden_size, generator=gen) * 20
    topv, topi = torch.topk(torch.randn(6, mlp.experts.num_experts, generator=gen), 2, dim=-1)
    topw = torch.softmax(topv, dim=-1)
    gate_up = torch.einsum("th,thn->tn", x.repeat_interleave(2, 0), mlp.experts.gate_up_proj[topi.reshape(-1)])
    assert model.config.swiglu_limit == 7.0
    assert (gate_up[:, ::2] > 7).float().mean() > 0.2 and (gate_up[:, 1::2].abs() > 7).float().mean() > 0.2
    want = _hf_experts_out(model, mlp, x, topi, topw)
    experts = build_experts(mlp.experts, GraphOptions().resolve("cpu"))
    got = experts(x, topi, topw, None).view(6, 2, -1).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def _near_tie_router(hidden: int, experts: int, dtype: torch.dtype) -> tuple[Router, torch.Tensor, list[int]]:
    """Router weights whose logits tie at the top-k boundary up to 2**-12: experts 3 and 5 get 1 and 1 + 2**-12
    (exact in float32, both 1.0 once rounded to bfloat16), expert 0 leads with 3, the rest are negative."""
    w = torch.zeros(experts, hidden, dtype=dtype)
    w[:, 0] = -1.0 - torch.arange(experts, dtype=dtype)
    w[0, 0], w[3, 0], w[5, 0] = 3.0, 1.0, 1.0
    w[5, 1] = 2.0**-12
    x = torch.zeros(4, hidden, dtype=dtype)
    x[:, 0], x[:, 1] = 1.0, 1.0
    kept = [0, 5] if dtype == torch.float32 else [0, 3]
    return Router(weight=w, bias=torch.zeros(experts, dtype=dtype), top_k=2), x, kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_near_tie_routing_keeps_hf_experts(dtype):
    """The kept experts at a near-tie follow HF's router: float32 keeps the larger logit (expert 5); bfloat16
    rounds the logits first (the router linear's output dtype), so the tie goes to the lower id (expert 3)."""
    model = _lively_tiny_model()
    hf_router = model.model.layers[0].mlp.router
    router, x, kept = _near_tie_router(model.config.hidden_size, hf_router.weight.shape[0], dtype)
    hf_router = hf_router.to(dtype)
    with torch.no_grad():
        hf_router.weight.copy_(router.weight)
        hf_router.bias.copy_(router.bias)
        _, _, want = hf_router(x)
    topi, _ = TorchOps().route(x, router)
    assert sorted(want[0].tolist()) == kept
    assert torch.equal(topi.long(), want.long())


def test_graph_options_validated_and_stored():
    with pytest.raises(BadInputError, match=r"sweep.engine_options.kernels: must be one of auto, torch, triton"):
        GraphOptions.from_dict({"kernels": "cuda"})
    with pytest.raises(BadInputError, match=r"sweep.engine_options.moe: unknown option"):
        GraphOptions.from_dict({"moe": "triton"})
    with pytest.raises(BadInputError, match="takes no options"):
        get_engine("hf", {"kernels": "torch"})
    eng = get_engine("graph", {"experts": "grouped_mm", "router_split": False})
    assert isinstance(eng, GraphEngine)
    cpu = eng.describe("cpu")
    assert cpu["experts"] == "grouped_mm" and cpu["kernels"] == "torch" and cpu["router_split"] is False
    assert cpu["capture"] == "off" and cpu["cuda_graph"] is False
    assert get_engine("graph").describe("cuda")["kernels"] == "triton"
    # split-K qkv/o_proj: a bool, on by default where the kernels are Triton, off (stored as such) with torch ops
    with pytest.raises(BadInputError, match=r"sweep.engine_options.splitk: must be true or false"):
        GraphOptions.from_dict({"splitk": "yes"})
    assert get_engine("graph").describe("cuda")["splitk"] is True and cpu["splitk"] is False
    with pytest.raises(BadInputError, match="not capturable"):
        GraphOptions(experts="loop", capture="on").resolve("cuda")


def test_spec_carries_engine_options(tmp_path):
    from bench.spec import load_spec, spec_to_toml

    path = tmp_path / "s.toml"
    path.write_text(
        'title = "t"\n[sweep]\nprompt_len = 4\nnew_tokens = 4\nbatch_sizes = [1]\nengine = "graph"\n'
        '[sweep.engine_options]\nkernels = "torch"\nmoe_compact = false\n'
        '[[variants]]\nname = "a"\nmodel = "synthetic:tiny-moe"\ntop_k = 2\n'
    )
    spec = load_spec(path)
    assert spec.sweep.engine_options["kernels"] == "torch" and spec.sweep.engine_options["moe_compact"] is False
    again = tmp_path / "again.toml"
    again.write_text(spec_to_toml(spec))
    assert load_spec(again).sweep.engine_options == spec.sweep.engine_options
    bad = path.read_text().replace('kernels = "torch"', 'kernels = "fast"')
    path.write_text(bad)
    with pytest.raises(BadInputError, match=r"sweep.engine_options.kernels"):
        load_spec(path)


def test_early_pdl_sites_pick_mode_2_only_where_asked(monkeypatch):
    """kernels.early_pdl: PDL mode 2 only for the sites named (SPLITK_EARLY: the kernels before the split-K GEMVs, at
    one row; PDL_EARLY_MORE: "splitk" both GEMVs, "splitk_qkv" / "splitk_o_proj" one each), never without PDL."""
    from bench.engines.graph import kernels as gk

    sites = ("attn", "norm", "rope", "splitk_qkv", "splitk_o_proj", "norm_router", "moe_down")
    monkeypatch.setattr(gk, "SPLITK_EARLY", False)
    monkeypatch.setattr(gk, "PDL_EARLY_MORE", frozenset())
    assert [gk.early_pdl(1, 1, s) for s in sites] == [1] * len(sites)
    monkeypatch.setattr(gk, "PDL_EARLY_MORE", frozenset({"splitk_qkv"}))
    assert (gk.early_pdl(1, 1, "splitk_qkv"), gk.early_pdl(1, 1, "splitk_o_proj")) == (2, 1)
    monkeypatch.setattr(gk, "PDL_EARLY_MORE", frozenset({"splitk", "rope"}))
    assert [gk.early_pdl(1, 1, s) for s in sites] == [1, 1, 2, 2, 2, 1, 1]
    assert gk.early_pdl(0, 1, "rope") == 0  # no PDL (CPU, interpreter, batch > 1): never mode 2
    monkeypatch.setattr(gk, "SPLITK_EARLY", True)
    more_rows = gk.SPLITK_MAX_ROWS + 1
    assert (gk.early_pdl(1, 1, "attn"), gk.early_pdl(1, 1, "norm"), gk.early_pdl(1, more_rows, "attn")) == (2, 2, 1)


def test_early_epilogue_loads_only_where_measured_faster(monkeypatch):
    """kernels.moe_early_bias_on: the bf16 expert GEMMs load their epilogue's inputs before the K loop in decode
    launches of up to MOE_EARLY_BIAS_MAX_TOKENS tokens (64: scan mode), not in larger (sorted) ones, where it measured
    slower on the H200; mxfp4_kernels.mxfp4_early_bias_on: at every size (faster in sorted mode there); neither when
    its setting is off."""
    from bench.engines.graph import kernels as gk
    from bench.engines.graph import mxfp4_kernels as mk

    monkeypatch.setattr(gk, "MOE_EARLY_BIAS", True)
    monkeypatch.setattr(mk, "MXFP4_EARLY_BIAS", True)
    assert gk.MOE_EARLY_BIAS_MAX_TOKENS == gk.SCAN_MAX_TOKENS == 64
    assert [gk.moe_early_bias_on(t) for t in (1, 32, 64, 65, 256)] == [True, True, True, False, False]
    assert [mk.mxfp4_early_bias_on(t) for t in (1, 64, 65, 256, 8192)] == [True] * 5
    monkeypatch.setattr(gk, "MOE_EARLY_BIAS", False)
    monkeypatch.setattr(mk, "MXFP4_EARLY_BIAS", False)
    assert not gk.moe_early_bias_on(1) and not mk.mxfp4_early_bias_on(1)


def test_qkv_triggers_early_after_bf16_experts_only(monkeypatch):
    """Experts.qkv_early, which the decoder hands to ops.norm_linear: the lazy qkv GEMV triggers the fused rope +
    attention early after the bf16 expert GEMMs, not after the MXFP4 kernels (measured 2% slower there) unless
    mxfp4_kernels.MXFP4_QKV_EARLY says so; the torch reference paths launch no PDL kernels (True, unused).
    Experts.qkv_pre_min_ks: the GEMV's pre-loaded tiles from kernels.LAZY_PRE_MIN_KS rows a token after bf16 experts
    (None), from MXFP4_LAZY_PRE_MIN_KS after the MXFP4 kernels (their down GEMM triggers it early)."""
    from bench.engines.graph import mxfp4_kernels as mk
    from bench.models import mxfp4

    model = _lively_tiny_model()
    dense = build_experts(model.model.layers[0].mlp.experts, GraphOptions(experts="triton").resolve("cpu"))
    assert dense.qkv_early is True and dense.qkv_pre_min_ks is None
    mxfp4.quantize_model(model)
    mod = model.model.layers[0].mlp.experts
    tri = build_experts(mod, GraphOptions(experts="triton").resolve("cpu"))
    ref = build_experts(mod, GraphOptions(experts="loop").resolve("cpu"))
    assert tri.weight_format == "mxfp4" and tri.qkv_early is False and ref.qkv_early is True
    assert (tri.qkv_pre_min_ks, ref.qkv_pre_min_ks) == (mk.MXFP4_LAZY_PRE_MIN_KS, None)
    monkeypatch.setattr(mk, "MXFP4_QKV_EARLY", True)
    monkeypatch.setattr(mk, "MXFP4_LAZY_PRE_MIN_KS", 7)
    assert tri.qkv_early is True and tri.qkv_pre_min_ks == 7


def test_lazy_gemv_preloads_from_the_experts_row_count_and_mxfp4_down_triggers_it(monkeypatch):
    """kernels.lazy_pre_tiles: the lazy qkv GEMV's pre-loaded tiles (LAZY_PRE) from LAZY_PRE_MIN_KS down rows a
    token, or from the experts' own count (Experts.qkv_pre_min_ks: 2 after the MXFP4 kernels), none below it;
    mxfp4_kernels.mxfp4_down_early: only the MXFP4 down GEMM triggers that GEMV early, and only with
    MXFP4_DOWN_EARLY."""
    from bench.engines.graph import kernels as gk
    from bench.engines.graph import mxfp4_kernels as mk

    monkeypatch.setattr(gk, "LAZY_PRE", 2)
    monkeypatch.setattr(gk, "LAZY_PRE_MIN_KS", 3)
    assert [gk.lazy_pre_tiles(ks) for ks in (1, 2, 3, 4)] == [0, 0, 2, 2]
    assert [gk.lazy_pre_tiles(ks, 2) for ks in (1, 2, 4)] == [0, 2, 2]
    monkeypatch.setattr(mk, "MXFP4_DOWN_EARLY", True)
    assert (mk.mxfp4_down_early("down"), mk.mxfp4_down_early("gate_up")) == (True, False)
    monkeypatch.setattr(mk, "MXFP4_DOWN_EARLY", False)
    assert not mk.mxfp4_down_early("down")


def test_gate_up_triggers_early_only_at_one_token_with_few_pairs(monkeypatch):
    """kernels.moe_pdl: the one-token gate_up expert GEMM in PDL mode 2 when it has <= GATE_UP_EARLY_MAX_PAIRS pairs
    (top_k 2 at batch 1), mode 1 with more (top_k 4); the down GEMM as `early_pdl` says; no PDL stays no PDL;
    multi-token steps keep their own mode; "moe_gate_up" in PDL_EARLY_MORE still means always."""
    from bench.engines.graph import kernels as gk

    monkeypatch.setattr(gk, "PDL_EARLY_MORE", frozenset({"moe_down"}))
    monkeypatch.setattr(gk, "GATE_UP_EARLY_MAX_PAIRS", 2)
    assert [gk.moe_pdl(1, 1, "gate_up", p) for p in (1, 2, 3, 4)] == [2, 2, 1, 1]
    assert (gk.moe_pdl(1, 1, "down", 2), gk.moe_pdl(0, 1, "gate_up", 2), gk.moe_pdl(2, 8, "gate_up", 16)) == (2, 0, 2)
    monkeypatch.setattr(gk, "GATE_UP_EARLY_MAX_PAIRS", 0)
    assert gk.moe_pdl(1, 1, "gate_up", 2) == 1
    monkeypatch.setattr(gk, "PDL_EARLY_MORE", frozenset({"moe_gate_up"}))
    assert gk.moe_pdl(1, 1, "gate_up", 4) == 2


def test_down_pre_loads_only_at_one_token_with_enough_pairs_and_an_early_launch(monkeypatch):
    """kernels.moe_down_pre: the shipped one-token down GEMM pre-loads MOE_DOWN_PRE tiles from
    MOE_DOWN_PRE_MIN_PAIRS pairs (top_k 4 at batch 1), none at top_k 2 and none past one token (scan or sorted);
    every pair count that pre-loads also launches early (the pre-loads only pay under gate_up's tail); a setting past
    4 tiles is refused."""
    from bench.engines.graph import kernels as gk

    def plan(tokens: int, k: int) -> gk.RoutingPlan:
        return gk.routing_plan(torch.zeros((tokens, k), dtype=torch.int32), 32)

    assert gk.MOE_DOWN_PRE > 0
    assert [gk.moe_down_pre(1, plan(1, k)) for k in (1, 2, 3, 4)] == [0, 0, gk.MOE_DOWN_PRE, gk.MOE_DOWN_PRE]
    flat = torch.zeros(512, dtype=torch.int32)
    sorted_plan = gk.RoutingPlan(flat=flat, rows=flat, offs=flat[:33], pairs=512, scan=False, compact=False, bm=64,
                                 grid_rows=32, pb=512, epad=32)
    assert gk.moe_down_pre(8, plan(8, 4)) == 0 and gk.moe_down_pre(1, sorted_plan) == 0
    assert all(gk.moe_pdl(1, 1, "gate_up", p) == 2 for p in range(gk.MOE_DOWN_PRE_MIN_PAIRS, 5))
    monkeypatch.setattr(gk, "MOE_DOWN_PRE", 5)  # more tiles than the kernel holds: refused, not truncated
    with pytest.raises(ValueError, match=r"must be 0\.\.4, got 5"):
        gk.moe_down_pre(1, plan(1, 4))


def test_gemv4_tiles_per_top_k_override_only_their_top_k(monkeypatch):
    """mxfp4_kernels.gemv4_tiles: a top_k named in MXFP4_CONFIG_GEMV4_BY_TOPK (an int key, or a string key as a
    JSON override gives it) takes its GEMMs' tiles over MXFP4_CONFIG_GEMV4's; other top_k and other GEMMs keep the
    shipped ones."""
    from bench.engines.graph import mxfp4_kernels as mk

    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4", {"gate_up": (32, 512, 2, 1), "down": (32, 1024, 4, 1)})
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4_BY_TOPK", {2: {"gate_up": (16, 512, 2, 1)}})
    assert mk.gemv4_tiles(2) == {"gate_up": (16, 512, 2, 1), "down": (32, 1024, 4, 1)}
    assert mk.gemv4_tiles(4) == mk.MXFP4_CONFIG_GEMV4
    monkeypatch.setattr(mk, "MXFP4_CONFIG_GEMV4_BY_TOPK", {"2": {"down": [16, 1024, 2, 1]}})
    assert mk.gemv4_tiles(2) == {"gate_up": (32, 512, 2, 1), "down": (16, 1024, 2, 1)}


def test_mxfp4_tiles_env_sets_the_per_top_k_tables():
    """MOE_MXFP4_TILES (read when mxfp4_kernels is imported) overrides the per-top_k tables: gemv4_by_topk and
    dq_t_by_topk (JSON string keys become ints; lists become tile tuples), on top of the shipped entries."""
    import json
    import os
    import subprocess
    import sys

    from bench.paths import PROJECT_ROOT

    tiles = {"gemv4_by_topk": {"4": {"down": [16, 1024, 2, 1]}},
             "dq_t_by_topk": {"2": {"8": {"variant": 7}}, "3": {"32": {"gate_up": [64, 64, 4, 3]}}}}
    code = ("from bench.engines.graph import mxfp4_kernels as mk; import json; "
            "print(json.dumps([mk.gemv4_tiles(4)['down'], mk.gemv4_tiles(2)['gate_up'], mk.dq_class(6, 2)[1:3], "
            "mk.dq_class(6, 2)[0]['down'], mk.dq_class(20, 3)[0]['gate_up']]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MOE_MXFP4_TILES": json.dumps(tiles)}, check=True).stdout
    gemv4_down, gemv4_k2, dq_k2, dq_k2_down, dq_k3 = json.loads(out.strip().splitlines()[-1])
    assert gemv4_down == [16, 1024, 2, 1]
    assert gemv4_k2 == [16, 1024, 4, 1]  # the shipped top_k-2 entry stays
    assert dq_k2 == [7, 0]  # the override's variant over the shipped top_k-2 class 8
    assert dq_k2_down == [128, 64, 4, 3]  # the shipped top_k-2 class 8's down tile stays
    assert dq_k3 == [64, 64, 4, 3]
