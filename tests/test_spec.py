"""Spec validation: each rule gives exit code 2, a message naming the field, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import BadInputError
from bench.spec import load_spec, spec_from_dict

GOOD = {
    "title": "t",
    "sweep": {"prompt_len": 8, "new_tokens": 4, "batch_sizes": [1, 2], "device": "cpu"},
    "variants": [{"name": "base", "model": "synthetic:tiny-moe", "top_k": 2}],
}


def _with(**changes) -> dict:
    raw = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        target = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[leaf] = value
    return raw


def test_good_spec_defaults():
    spec = spec_from_dict(GOOD)
    assert spec.sweep.repeats == 3 and spec.sweep.engine == "hf" and spec.sweep.dtype == "auto"
    assert spec.planned_points() == 6


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_with(sweep__colour="red"), "sweep.colour"),
        (_with(bogus=1), "bogus"),
        (_with(variants__0__topk=2), "variants[0].topk"),
        (_with(sweep__prompt_len="256"), "sweep.prompt_len"),
        (_with(sweep__batch_sizes=[]), "sweep.batch_sizes"),
        (_with(sweep__batch_sizes=[1, 0]), "sweep.batch_sizes[1]"),
        (_with(sweep__batch_sizes=[1, -4]), "sweep.batch_sizes[1]"),
        (_with(sweep__engine="vllm"), "sweep.engine"),
        (_with(variants=[GOOD["variants"][0], GOOD["variants"][0]]), "variants[1].name"),
        (_with(variants__0__prune={"experts": 1, "method": "first"}), "variants[0].top_k"),
        (_with(variants__0__prune={"keep": "no-such-keep-file.json"}), "variants[0].prune.keep"),
        (_with(variants__0__prune={"experts": 4, "method": "best"}), "variants[0].prune.method"),
    ],
)
def test_validation_names_the_field(raw, field):
    with pytest.raises(BadInputError) as info:
        spec_from_dict(raw)
    assert str(info.value).startswith(field), str(info.value)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


SPEC_TOML = """
title = "x"
[sweep]
prompt_len = 8
new_tokens = 4
batch_sizes = {batches}
device = "cpu"
[[variants]]
name = "base"
model = "{model}"
top_k = {top_k}
"""


@pytest.mark.parametrize(
    ("batches", "model", "top_k", "needle"),
    [
        ("[0]", "synthetic:tiny-moe", 2, "sweep.batch_sizes[0]"),
        ("[1]", "synthetic:tiny-moe", 9, "top_k 9 is greater than the 8 experts"),
        ("[1]", "synthetic:no-such-preset", 2, "no-such-preset"),
        ("[1]", "/nonexistent/model/dir", 2, "/nonexistent/model/dir"),
    ],
)
def test_cli_bad_input_exit_2_and_nothing_written(tmp_path, capsys, batches, model, top_k, needle):
    db = tmp_path / "b.duckdb"
    spec = _write(tmp_path, SPEC_TOML.format(batches=batches, model=model, top_k=top_k))
    code = main(["sweep", "--spec", str(spec), "--db", str(db), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert not db.exists()


def test_malformed_toml(tmp_path, capsys):
    spec = _write(tmp_path, "title = \n[sweep")
    assert main(["sweep", "--spec", str(spec), "--db", str(tmp_path / "b.duckdb")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_prompt_longer_than_model_allows(tmp_path, capsys):
    spec = _write(tmp_path, SPEC_TOML.format(batches="[1]", model="synthetic:tiny-moe", top_k=2).replace(
        "prompt_len = 8", "prompt_len = 100000"))
    db = tmp_path / "b.duckdb"
    assert main(["sweep", "--spec", str(spec), "--db", str(db)]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert not db.exists()


def test_shipped_specs_are_valid():
    for name in ("tiny-cpu.toml", "union-prunes.toml"):
        spec = load_spec(Path("data/specs") / name)
        assert spec.variants
    union = load_spec("data/specs/union-prunes.toml")
    assert [v.name for v in union.variants] == [
        "base_topk4", "base_topk2", "union50_topk4", "union50_topk2", "unionAgg_topk2"]
    assert union.sweep.prompt_len == 256 and union.sweep.new_tokens == 2048
    assert union.sweep.batch_sizes == [1, 2, 4, 8, 16, 32]
    assert union.variants[2].prune.experts == 16


def test_cli_flags_build_a_spec(tmp_path):
    import argparse

    from bench.commands.sweep import build_spec, register

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args(["sweep", "--variant", "name=a,model=synthetic:tiny-moe,top_k=2,experts=4,method=first",
                              "--prompt-len", "8", "--new-tokens", "4", "--batch-sizes", "1,2", "--repeats", "1"])
    spec = build_spec(args)
    assert spec.sweep.batch_sizes == [1, 2] and spec.sweep.repeats == 1
    assert spec.variants[0].prune.experts == 4 and spec.variants[0].prune.method == "first"


def test_spec_file_may_not_name_files_outside_data(tmp_path, capsys):
    outside = tmp_path / "elsewhere" / "keep.json"
    outside.parent.mkdir()
    outside.write_text('{"layers": [[0, 1, 2, 3], [0, 1, 2, 3]]}')
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    spec = spec_dir / "s.toml"
    spec.write_text(SPEC_TOML.format(batches="[1]", model="synthetic:tiny-moe", top_k=2)
                    + f'prune = {{ keep = "{outside}" }}\n')
    db = tmp_path / "b.duckdb"
    assert main(["sweep", "--spec", str(spec), "--db", str(db)]) == 2
    assert "outside data/" in capsys.readouterr().err
    assert not db.exists()
    # the same file named explicitly on the command line is the user's choice, and validates
    from bench.commands.sweep import parse_variant

    raw = dict(GOOD, variants=[parse_variant(f"name=a,model=synthetic:tiny-moe,top_k=2,keep={outside}")])
    assert spec_from_dict(raw, restrict_paths=True).variants[0].prune.keep == str(outside.resolve())
    # and a keep file in the spec's own folder is allowed
    (spec_dir / "mine.json").write_text(outside.read_text())
    ok = spec_dir / "ok.toml"
    ok.write_text(SPEC_TOML.format(batches="[1]", model="synthetic:tiny-moe", top_k=2)
                  + 'prune = { keep = "mine.json" }\n')
    assert load_spec(ok).variants[0].prune.keep == str((spec_dir / "mine.json").resolve())
