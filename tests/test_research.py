"""The research loop on tiny-moe (CPU): routing counts, REAP saliency, keep sets from calibrations, quality,
bad input, and calibrate -> prune -> sweep (with quality) -> export end to end into a temporary DuckDB file."""

from __future__ import annotations

import json
import os

import duckdb
import pytest
import torch

from bench import cli
from bench.calibrated import expected_fingerprint, resolve_prune
from bench.corpus import builtin_domain, files_domain
from bench.models import pruning as P
from bench.models.keep_sets import CalibrationData, choose_keep
from bench.models.quality import compare_outputs
from bench.models.routing_stats import RoutingStats, _Accumulator, collect_routing
from bench.spec import PruneSpec
from bench.store import research as rstore

MODEL = "synthetic:tiny-moe"


def _router_logits(model, ids):
    """Each layer's router logits [tokens, experts], captured from the router's own output."""
    out: dict[int, torch.Tensor] = {}
    handles = [router.register_forward_hook(lambda m, i, o, li=li: out.__setitem__(li, o[0].detach()))
               for li, (router, _) in enumerate(P.moe_layers(model))]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


def test_routing_counts_equal_a_hand_count_from_the_router_logits(tiny_model):
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(5))
    stats = collect_routing(tiny_model.model, ids.tolist(), batch=2)
    logits = _router_logits(tiny_model.model, ids)
    for li, lg in logits.items():
        top = torch.topk(lg, 2, dim=-1).indices.reshape(-1)
        hand = [int((top == e).sum()) for e in range(8)]
        assert stats.tokens_routed[li] == hand
        assert sum(hand) == 2 * 24 * 2  # every token's two experts counted
        # mean routing weight: softmax over the top-2 logits, averaged over the tokens routed to the expert
        vals, idx = torch.topk(lg, 2, dim=-1)
        w = torch.softmax(vals, dim=-1)
        for e in range(8):
            if hand[e]:
                assert stats.mean_weight(li, e) == pytest.approx(float(w[idx == e].mean()), rel=1e-5)
    assert stats.tokens == 48 and stats.top_k == 2


def test_saliency_matches_its_formula_on_a_fixture(tiny_model):
    experts = P.moe_layers(tiny_model.model)[0][1]
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(6, 64, generator=gen)
    idx = torch.tensor([[0, 3], [3, 5], [0, 5], [1, 3], [0, 1], [5, 7]])
    w = torch.softmax(torch.randn(6, 2, generator=gen), dim=-1)
    acc = _Accumulator(1, 8, saliency=True)
    acc.add(0, experts, hidden, idx, w)
    for e in range(8):
        tokens = [(t, j) for t in range(6) for j in range(2) if idx[t, j] == e]
        if not tokens:
            assert float(acc.count[0, e]) == 0 and float(acc.sal[0, e]) == 0
            continue
        # f_e(x) from the experts module's own forward, routing the one token to e alone with weight 1
        terms = []
        for t, j in tokens:
            f = experts(hidden[t : t + 1], torch.tensor([[e]]), torch.tensor([[1.0]]))
            terms.append(float(w[t, j]) * float(f.norm()))
        assert float(acc.sal[0, e]) / float(acc.count[0, e]) == pytest.approx(sum(terms) / len(terms), rel=1e-4)


def _stats(counts: list[list[int]], sal: list[list[float]]) -> RoutingStats:
    return RoutingStats(tokens=sum(counts[0]) // 2, top_k=2, tokens_routed=counts, weight_sum=[
        [0.5 * n for n in row] for row in counts], saliency_sum=[[s * n for s, n in zip(rs, rn, strict=True)]
                                                                for rs, rn in zip(sal, counts, strict=True)])


def _store_calibration(db, domain: str, counts, sal, text_hash: str = "h", seed: int = 0) -> None:
    fp = expected_fingerprint(MODEL, seed)
    stats = _stats(counts, sal)
    row = rstore.CalibrationRow(
        calibration_id=rstore.calibration_id(fp, domain, text_hash, 100), model=MODEL, model_fingerprint=fp,
        domain=domain, text_hash=text_hash, text_source=f"fixture {domain}", text_spec="/nonexistent",
        tokenizer="byte-level", tokens=stats.tokens, budget=100, layers=2, experts=8, top_k=2, device="cpu",
        seconds=0.1)
    rstore.save_calibration(db, row, stats, replace_domain=True)


# domain a prefers experts 0-3, domain b prefers 4-7; saliency ranks differently from frequency
A_COUNTS = [[9, 8, 7, 6, 1, 1, 1, 1], [1, 2, 9, 9, 9, 1, 1, 0]]
B_COUNTS = [[1, 1, 1, 1, 6, 7, 8, 9], [9, 9, 1, 1, 1, 2, 2, 7]]
A_SAL = [[1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 5.0, 4.0, 3.0, 0.1, 0.1, 0.0]]
B_SAL = [[0.5, 0.5, 0.5, 0.5, 4.0, 3.0, 2.0, 1.0], [6.0, 5.0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.3]]


def test_union_from_two_calibrated_domains_gives_the_expected_sets(tmp_path):
    db = tmp_path / "u.duckdb"
    _store_calibration(db, "a", A_COUNTS, A_SAL)
    _store_calibration(db, "b", B_COUNTS, B_SAL)
    # per-domain top-2 by saliency: a -> L0 {2,3}, L1 {2,3}; b -> L0 {4,5}, L1 {0,1}
    # union L0 {2,3,4,5} (4 = N: kept as is); L1 {0,1,2,3}
    got = resolve_prune(db, MODEL, 0, PruneSpec(experts=4, method="union", domains=["a", "b"], per_domain=2), "t")
    assert got.keep_layers == [[2, 3, 4, 5], [0, 1, 2, 3]]
    assert "union of the per-domain top-2 sets by saliency" in got.note and "calibration c-" in got.note
    # trimmed to 3 by pooled saliency (token-weighted): L0 pooled 2: (3*7+.5*1)/8=2.69, 3: (4*6+.5)/7=3.5,
    # 4: (.5+4*6)/7=3.5, 5: (.5+3*7)/8=2.69 -> keep 3, 4 and the tie 2 vs 5 goes to the lower index 2
    got3 = resolve_prune(db, MODEL, 0, PruneSpec(experts=3, method="union", domains=["a", "b"], per_domain=2), "t")
    assert got3.keep_layers[0] == [2, 3, 4]
    # filled: per-domain top-1 by frequency gives L0 {0, 7}, filled to 4 by pooled frequency (10, 9, 8, ...)
    fill = resolve_prune(db, MODEL, 0, PruneSpec(experts=4, method="union", domains=["a", "b"], per_domain=1,
                                                 rank="frequency"), "t")
    assert fill.keep_layers[0] == [0, 1, 6, 7]
    # frequency pooled over both, reap from one domain
    freq = resolve_prune(db, MODEL, 0, PruneSpec(experts=2, method="frequency", domains=["a", "b"]), "t")
    assert freq.keep_layers == [[0, 7], [2, 3]] or freq.keep_layers[0] == [0, 7]
    reap = resolve_prune(db, MODEL, 0, PruneSpec(experts=2, method="reap", domains=["b"]), "t")
    assert reap.keep_layers == [[4, 5], [0, 1]]


def test_choose_keep_union_trims_by_pooled_score_not_votes():
    a = CalibrationData("c1", "a", MODEL, "fp", "h", "b", 10, [[5, 4, 0, 0]], [[1.0, 1.0, 0.0, 0.0]])
    b = CalibrationData("c2", "b", MODEL, "fp", "h", "b", 10, [[0, 0, 1, 9]], [[0.0, 0.0, 1.0, 1.0]])
    assert choose_keep([a, b], "union", 3, rank="frequency", per_domain=2).keep == [[0, 1, 3]]


@pytest.fixture
def quality_chunks():
    return torch.randint(0, 512, (3, 17), generator=torch.Generator().manual_seed(2)).tolist()


def test_quality_of_a_variant_against_itself_is_kl_zero_and_agreement_one(tiny_model_factory, quality_chunks):
    base, same = tiny_model_factory(), tiny_model_factory()
    values, n = compare_outputs(base.model, same.model, quality_chunks)
    assert n == 3 * 16
    assert values["kl"] == pytest.approx(0.0, abs=1e-7) and values["top1_agreement"] == 1.0
    assert values["perplexity"] == pytest.approx(values["base_perplexity"])


def test_pruning_half_the_experts_moves_the_outputs(tiny_model_factory, quality_chunks):
    base, pruned = tiny_model_factory(), tiny_model_factory()
    P.apply_variant(pruned, PruneSpec(experts=4, method="first"), top_k=2, seed=0)
    values, _ = compare_outputs(base.model, pruned.model, quality_chunks)
    assert values["kl"] > 1e-6
    assert values["top1_agreement"] < 1.0


def test_builtin_domains_hold_stdlib_sources_and_their_docstrings(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "a.py").write_text('"""Module a."""\ndef f():\n    """Does f."""\n')
    (lib / "pkg" / "b.py").write_text("x = 1\n")
    (lib / "test" / "t.py").write_text('"""left out"""\n')
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(lib)})
    code, prose = builtin_domain("code"), builtin_domain("prose")
    assert code.text == '"""Module a."""\ndef f():\n    """Does f."""\n\n\nx = 1\n' and code.documents == 2
    assert prose.text == "Module a.\n\nDoes f." and prose.spec == "builtin:prose"
    assert "Python" in code.description


def test_domain_files_split_into_calibration_and_held_out(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("a" * 90)
    (tmp_path / "d" / "y.jsonl").write_text(json.dumps({"text": "b" * 8}) + "\n\n")
    d = files_domain("t", str(tmp_path / "d"))
    assert d.text == "a" * 90 + "\n\n" + "b" * 8 and d.documents == 2
    assert d.calibration_text + d.heldout_text == d.text
    assert len(d.calibration_text) == 90 and not set(d.heldout_text) - {"b", "\n"}


# ---------------------------------------------------------------- CLI: bad input, end to end


def _main(capsys, *argv) -> tuple[int, dict, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    return rc, json.loads(last), err


def test_calibrate_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    (tmp_path / "empty.txt").write_text("  \n")
    rc, out, _ = _main(capsys, "calibrate", "--model", MODEL, "--domain", f"e={tmp_path / 'empty.txt'}",
                         "--db", str(db))
    assert rc == 2 and "holds no text" in out["error"] and "empty.txt" in out["error"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "no text field"}\n')
    rc, out, _ = _main(capsys, "calibrate", "--model", MODEL, "--domain", f"j={bad}", "--db", str(db))
    assert rc == 2 and 'no string "text" field' in out["error"] and "line 1" in out["error"]
    unreadable = tmp_path / "secret.txt"
    unreadable.write_text("hidden")
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root reads anything
        rc, out, _ = _main(capsys, "calibrate", "--model", MODEL, "--domain", f"s={unreadable}", "--db", str(db))
        assert rc == 2 and "cannot read" in out["error"]
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café résumé".encode("latin-1"))
    rc, out, _ = _main(capsys, "calibrate", "--model", MODEL, "--domain", f"l={latin}", "--db", str(db))
    assert rc == 2 and "not UTF-8" in out["error"] and "latin1.txt" in out["error"]
    rc, out, _ = _main(capsys, "calibrate", "--model", MODEL, "--domain", f"m={tmp_path / 'missing'}",
                       "--db", str(db))
    assert rc == 2 and "does not exist" in out["error"]
    # a domain name reused with other text: refused before anything runs, the stored calibration untouched
    _store_calibration(db, "code", A_COUNTS, A_SAL, text_hash="other")
    other = tmp_path / "new.txt"
    other.write_text("print('hello world')\n" * 20)
    rc, out, _ = _main(capsys, "calibrate", "--model", MODEL, "--domain", f"code={other}", "--db", str(db))
    assert rc == 2 and "other text" in out["error"] and "--replace" in out["error"]
    assert [r["text_hash"] for r in rstore.calibrations_for(db, domain="code")] == ["other"]


def test_a_calibration_from_another_model_is_refused(tmp_path, capsys):
    db = tmp_path / "m.duckdb"
    _store_calibration(db, "a", A_COUNTS, A_SAL, seed=0)
    _store_calibration(db, "b", B_COUNTS, B_SAL, seed=0)
    rc, out, _ = _main(capsys, "sweep", "--db", str(db), "--device", "cpu", "--prompt-len", "4", "--new-tokens",
                       "2", "--batch-sizes", "1", "--repeats", "1", "--seed", "1", "--quiet", "--variant",
                       f"name=u,model={MODEL},top_k=2,experts=4,method=union,domains=a;b")
    assert rc == 2 and "another model" in out["error"] and "seed 1" in out["error"]
    assert duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_calibrate_prune_sweep_with_quality_export_end_to_end(tmp_path, capsys):
    db = tmp_path / "e2e.duckdb"
    code = tmp_path / "code.jsonl"
    code.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i % 7}\n"}) + "\n"
                            for i in range(40)))
    prose = tmp_path / "prose.md"
    prose.write_text(" ".join(f"The router sends token {i} to two experts of eight." for i in range(40)))
    cal = ["calibrate", "--model", MODEL, "--domain", f"code={code}", "--domain", f"prose={prose}",
           "--tokens", "256", "--seq-len", "64", "--db", str(db), "--quiet"]
    rc, out, _ = _main(capsys, *cal)
    assert rc == 0 and set(out["domains"]) == {"code", "prose"}
    assert out["domains"]["code"]["tokenizer"].startswith("byte-level") and out["domains"]["code"]["tokens"] == 256
    rc, again, _ = _main(capsys, *cal)  # the same text twice: reused, nothing recomputed
    assert rc == 0 and all(d["reused"] for d in again["domains"].values())
    con = duckdb.connect(str(db), read_only=True)
    n_cal, routed = con.execute("SELECT count(*), sum(tokens_routed) FROM calibrations JOIN calibration_experts "
                                "USING (calibration_id)").fetchone()
    con.close()
    assert routed == 2 * 256 * 2 * 2  # 2 domains x 256 tokens x 2 layers x top_k 2
    spec = tmp_path / "s.toml"
    spec.write_text(f"""title = "e2e research"
[sweep]
prompt_len = 8
new_tokens = 3
batch_sizes = [1]
repeats = 1
device = "cpu"
dtype = "float32"
prompts = "domain:code"
quality = true
quality_tokens = 32

[[variants]]
name = "union4"
model = "{MODEL}"
top_k = 2
prune = {{ experts = 4, method = "union", domains = ["code", "prose"] }}
""")
    rc, out, _ = _main(capsys, "sweep", "--spec", str(spec), "--db", str(db), "--quiet")
    assert rc == 0 and out["state"] == "done"
    con = duckdb.connect(str(db), read_only=True)
    runs = {r[0]: r[1:] for r in con.execute("SELECT name, notes, prompts, prune_json FROM runs").fetchall()}
    q = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        "SELECT r.name, q.domain, q.metric, q.value FROM quality q JOIN runs r USING (run_id)").fetchall()}
    con.close()
    assert "union of the per-domain top-4 sets by saliency" in runs["union4"][0]
    assert runs["union4"][1].startswith("domain:code@")
    assert len(json.loads(runs["union4"][2])["keep_layers"]) == 2
    assert q[("union4", "code", "kl")] > 0 and q[("union4", "prose", "kl")] > 0
    assert 0 <= q[("union4", "code", "top1_agreement")] < 1
    rc, out, _ = _main(capsys, "export", "--db", str(db), "--format", "jsonl", "--out", str(tmp_path / "o.jsonl"))
    assert rc == 0
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert {tuple(sorted(line["quality"])) for line in lines} == {("code", "prose")}
    assert n_cal == 2 * 8 * 2


def test_shipped_research_specs_are_valid_and_name_calibrations():
    from bench.paths import DATA_DIR
    from bench.spec import load_spec

    for name in ("union-research-tiny.toml", "union-research-20b.toml"):
        spec = load_spec(DATA_DIR / "specs" / name)
        assert spec.sweep.quality and spec.sweep.prompts == "domain:code"
        assert {v.prune.kind for v in spec.variants if v.prune} == {"calibrated"}
        assert all(v.prune.domains == ["code", "prose"] for v in spec.variants if v.prune)
