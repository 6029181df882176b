"""Bad input at the CLI and spec layer (issues 8 §5 and 14): each refusal is exit code 2 with a message naming the
field and the fix, and nothing outside its place is written. Fast tests: no model is built here except where a
command must be run end to end (marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.errors import BadInputError
from bench.paths import PROJECT_ROOT, logs_dir_for, sweep_file
from bench.records import EnvFingerprint, PointRecord, RunRecord, utcnow
from bench.report.jsonl import render_jsonl
from bench.spec import load_spec, spec_from_dict, spec_to_toml, validate_for_launch

GOOD = {
    "title": "t",
    "sweep": {"prompt_len": 8, "new_tokens": 4, "batch_sizes": [1, 2], "device": "cpu", "repeats": 1},
    "variants": [{"name": "base", "model": "synthetic:tiny-moe", "top_k": 2}],
}
VARIANT = "name=a,model=synthetic:tiny-moe,top_k=2"
SWEEP_ARGS = ["--variant", VARIANT, "--prompt-len", "4", "--new-tokens", "2", "--batch-sizes", "1", "--repeats", "1",
              "--device", "cpu"]


def _raw(**sweep) -> dict:
    raw = json.loads(json.dumps(GOOD))
    raw["sweep"].update(sweep)
    return raw


@pytest.fixture(autouse=True)
def _own_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_BENCH_LOCK_DIR", str(tmp_path / "locks"))


# ---------------------------------------------------------------------------------------------- 14.1 ids and paths


def test_a_sweep_id_that_climbs_out_of_the_logs_folder_is_refused_and_touches_nothing(tmp_path, capsys):
    db = tmp_path / "a" / "b" / "c" / "bench.duckdb"
    db.parent.mkdir(parents=True)
    evil = "/../../../x/victim"
    # where the lock would land if the id were used as given
    victim = Path(os.path.normpath(str(logs_dir_for(db)) + "/sweep-" + evil + ".lock"))
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("precious")
    before = sorted(p for p in tmp_path.rglob("*") if "locks" not in p.parts)
    assert main(["sweep", "--sweep-id", evil, *SWEEP_ARGS, "--db", str(db)]) == 2
    assert "--sweep-id" in capsys.readouterr().err
    assert main(["sweep", "--resume", evil, "--db", str(db)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["rerun", "../../etc", "--db", str(db)]) == 2
    assert main(["cancel", evil, "--db", str(db)]) == 2
    assert victim.read_text() == "precious"
    assert sorted(p for p in tmp_path.rglob("*") if "locks" not in p.parts) == before  # nothing written
    with pytest.raises(BadInputError):
        sweep_file(db, "ok-id/../../x", ".log")
    assert sweep_file(db, "s20261130-120000-abc123", "sweep-{id}.lock").name == "sweep-s20261130-120000-abc123.lock"


def test_an_imported_jsonl_with_a_path_like_sweep_id_is_refused(tmp_path, capsys):
    run = _run("r1", sweep_id="../../x/victim")
    f = tmp_path / "evil.jsonl"
    f.write_text(render_jsonl([run], [_point("r1")]))
    db = tmp_path / "b.duckdb"
    assert main(["import", str(f), "--db", str(db)]) == 2
    assert "sweep_id" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 14.2 presets


@pytest.mark.parametrize("name", ["{tmp}/outside", "../presets/tiny-moe", "tiny-moe/../tiny-moe", "nope"])
def test_a_preset_is_a_name_from_data_presets_nothing_else(tmp_path, name):
    (tmp_path / "outside.json").write_text((PROJECT_ROOT / "data/presets/tiny-moe.json").read_text())
    raw = json.loads(json.dumps(GOOD))
    raw["variants"][0]["model"] = "synthetic:" + name.format(tmp=tmp_path)
    with pytest.raises(BadInputError) as info:
        spec_from_dict(raw)
    assert str(info.value).startswith("variants[0].model") and "tiny-moe" in str(info.value)


# ---------------------------------------------------------------------------------------------- 14.4 ranges, §4


@pytest.mark.parametrize(("sweep", "field"), [
    ({"batch_sizes": [3000000000]}, "sweep.batch_sizes[0]"),
    ({"seed": 99999999999}, "sweep.seed"),
    ({"repeats": 10000000000}, "sweep.repeats"),
    ({"prompt_len": 99999999999}, "sweep.prompt_len"),
    ({"new_tokens": 1}, "sweep.new_tokens"),  # one token is all prefill: no decode step to time
    ({"new_tokens": 2**40}, "sweep.new_tokens"),
    ({"batch_sizes": list(range(1, 100))}, "sweep.batch_sizes"),
])
def test_every_numeric_field_has_a_range(sweep, field):
    with pytest.raises(BadInputError) as info:
        spec_from_dict(_raw(**sweep))
    assert str(info.value).startswith(field), str(info.value)


def test_new_tokens_2_is_the_minimum_and_valid():
    assert spec_from_dict(_raw(new_tokens=2)).sweep.new_tokens == 2


def test_cli_seed_overflow_is_rc2_and_writes_nothing(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    args = [*SWEEP_ARGS, "--seed", "99999999999", "--db", str(db)]
    assert main(["sweep", *args]) == 2
    assert "sweep.seed" in capsys.readouterr().err
    assert not db.exists() and not logs_dir_for(db).exists()


def test_title_and_names_refuse_control_characters_and_huge_values():
    for raw in ({**GOOD, "title": "a\nb"}, {**GOOD, "title": "x" * 500}):
        with pytest.raises(BadInputError, match=r"^title"):
            spec_from_dict(raw)


# ---------------------------------------------------------------------------------------------- 14.5 TOML writer


def test_emoji_titles_and_quotes_round_trip_through_toml(tmp_path):
    raw = {**GOOD, "title": 'launch 🚀 "quoted" \\ back'}
    raw["variants"] = [{"name": "bäse 🧪", "model": "synthetic:tiny-moe", "top_k": 2}]
    spec = spec_from_dict(raw)
    path = tmp_path / "s.toml"
    path.write_text(spec_to_toml(spec), encoding="utf-8")
    again = load_spec(path)
    assert again.title == raw["title"] and again.variants[0].name == "bäse 🧪"
    assert again.to_dict() == spec.to_dict()


def test_validate_for_launch_checks_the_whole_spec_before_the_form_says_launched():
    assert validate_for_launch(_raw(batch_sizes=[1, 4])).sweep.batch_sizes == [1, 4]
    bad_top_k = json.loads(json.dumps(GOOD))
    bad_top_k["variants"][0]["top_k"] = 9  # tiny-moe has 8 experts
    with pytest.raises(BadInputError, match=r"^variants\[0\]\.top_k"):
        validate_for_launch(bad_top_k)
    with pytest.raises(BadInputError, match="max_position_embeddings"):
        validate_for_launch(_raw(prompt_len=5000))  # tiny-moe: 4096 positions
    with pytest.raises(BadInputError, match=r"^sweep\.seed"):
        validate_for_launch(_raw(seed=99999999999))


# ---------------------------------------------------------------------------------------------- 14.7 nesting


def test_toml_nested_5000_deep_is_rc2(tmp_path, capsys):
    spec = tmp_path / "deep.toml"
    spec.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    db = tmp_path / "b.duckdb"
    assert main(["sweep", "--spec", str(spec), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert str(spec) in err and "nested too deeply" in err and "Traceback" not in err
    assert not db.exists()


# ---------------------------------------------------------------------------------------------- 14.3, 14.8, 8.5.2 rerun


def _run(run_id: str, config: dict | str | None = None, sweep_id: str | None = None, device: str = "cpu",
         dtype: str = "float32") -> RunRecord:
    cfg = config if isinstance(config, str) or config is None else json.dumps(config)
    return RunRecord(run_id=run_id, sweep_id=sweep_id, name=run_id, model="synthetic:tiny-moe", top_k=2, engine="hf",
                     dtype=dtype, device=device, prompt_len=4, new_tokens=2, repeats=1, seed=0,
                     env=EnvFingerprint(device_kind=device), config_json=cfg, state="done")


def _point(run_id: str) -> PointRecord:
    return PointRecord(run_id=run_id, batch=1, repeat=0, status="ok", total_tps=1.0, decode_s=1.0,
                       tokens_generated=2, started_at=utcnow(), finished_at=utcnow())


def _config(device="cpu", dtype="float32", model="synthetic:tiny-moe", batches=(1,), prompt_len=4, **variant):
    return {"title": "t", "sweep": {"prompt_len": prompt_len, "new_tokens": 2, "batch_sizes": list(batches),
                                    "repeats": 1, "engine": "hf", "device": device, "dtype": dtype, "seed": 0},
            "variant": {"name": "v", "model": model, "top_k": 2, **variant},
            "resolved": {"device": device, "dtype": dtype}}


@pytest.fixture(scope="module")
def imported_db(tmp_path_factory):
    """A database holding imported runs whose configs are hostile or foreign."""
    tmp = tmp_path_factory.mktemp("imported")
    runs = [
        _run("r-shadow", _config(prune={"keep": "/etc/shadow"})),
        _run("r-nosweep", {"title": "t", "variant": {"name": "v", "model": "synthetic:tiny-moe", "top_k": 2}}),
        _run("r-notjson", "{not json"),
        _run("r-list", "[1, 2]"),
        _run("r-cuda", _config(device="cuda", dtype="bfloat16"), device="cuda", dtype="bfloat16"),
        _run("r-huge", _config(model="synthetic:gpt-oss-20b", batches=(65536,), prompt_len=100000)),
        _run("r-preset", _config(model="synthetic:/tmp/outside")),
    ]
    f = tmp / "runs.jsonl"
    f.write_text(render_jsonl(runs, [_point(r.run_id) for r in runs]))
    db = tmp / "imported.duckdb"
    assert main(["import", str(f), "--db", str(db)]) == 0
    return db


@pytest.mark.parametrize(("run_id", "needle"), [
    ("r-shadow", "variant.prune.keep"),  # confined to data/ like a spec file's paths
    ("r-nosweep", "sweep: missing"),
    ("r-notjson", "not valid JSON"),
    ("r-list", "must be a JSON object"),
    ("r-preset", "variants[0].model"),
])
def test_rerun_of_an_untrusted_imported_config_is_rc2_naming_the_field(imported_db, capsys, run_id, needle):
    before = imported_db.stat().st_mtime_ns
    assert main(["rerun", run_id, "--db", str(imported_db)]) == 2
    err = capsys.readouterr().err
    assert needle.replace("variant.", "") in err and run_id in err and "Traceback" not in err, err
    assert imported_db.stat().st_mtime_ns == before


def test_rerun_never_changes_device_or_dtype_silently(imported_db, capsys):
    import torch

    from bench.runner import spec_for_rerun

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the cuda run can be rerun as it was")
    assert main(["rerun", "r-cuda", "--db", str(imported_db)]) == 2
    err = capsys.readouterr().err
    assert "ran on cuda in bfloat16" in err and "--device cpu --dtype float32" in err
    spec, _ = spec_for_rerun(imported_db, "r-cuda", device="cpu", dtype="float32")
    assert (spec.sweep.device, spec.sweep.dtype) == ("cpu", "float32")
    spec, _ = spec_for_rerun(imported_db, "r-cuda", allow_device_change=True)
    assert (spec.sweep.device, spec.sweep.dtype) == ("auto", "auto")
    spec, _ = spec_for_rerun(imported_db, "r-shadow".replace("shadow", "huge"))  # a cpu run stays cpu/float32
    assert (spec.sweep.device, spec.sweep.dtype) == ("cpu", "float32")


def test_rerun_refuses_a_model_larger_than_free_memory(imported_db, capsys):
    before = imported_db.stat().st_mtime_ns
    assert main(["rerun", "r-huge", "--db", str(imported_db)]) == 2
    err = capsys.readouterr().err
    assert "synthetic:gpt-oss-20b needs about" in err and "GiB is free" in err and "--no-memory-check" in err
    assert imported_db.stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------- 8 §5.7 errors


def test_ls_into_a_closed_pipe_prints_no_traceback(imported_db, monkeypatch, capsys):
    r, w = os.pipe()
    os.close(r)
    out = open(w, "w", buffering=1)  # noqa: SIM115 - the closed pipe `head -1` leaves behind
    monkeypatch.setattr(sys, "stdout", out)
    saved = os.dup(1)
    try:
        assert main(["ls", "--runs", "--db", str(imported_db)]) == 0
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        monkeypatch.undo()
    assert "BrokenPipe" not in capsys.readouterr().err


def test_ls_piped_to_head_in_a_shell_is_quiet(imported_db):
    cmd = f"{sys.executable} -m bench ls --runs --db {imported_db} | head -1"
    res = subprocess.run(["bash", "-c", cmd], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.count("\n") == 1 and "Error" not in res.stderr, res.stderr


def test_a_missing_model_path_says_so_and_a_missing_hub_id_suggests_hf_download(tmp_path, monkeypatch):
    from bench.models.loading import resolve_config

    missing = tmp_path / "no" / "such-model"
    with pytest.raises(BadInputError) as info:
        resolve_config(str(missing))
    msg = str(info.value)
    assert "does not exist" in msg and str(missing) in msg and "download" not in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = ("import sys\nfrom bench.models.loading import resolve_config\ntry:\n"
            "    resolve_config('no-such-org-zz/no-such-model-zz')\nexcept Exception as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert "`hf download no-such-org-zz/no-such-model-zz`" in res.stdout and "huggingface-cli" not in res.stdout


@pytest.mark.parametrize("argv", [["ls"], ["sweep", *SWEEP_ARGS], ["import", "x.jsonl"], ["cancel", "s1"]])
def test_without_duckdb_commands_say_what_is_missing(argv):
    code = ("import sys; sys.modules['duckdb'] = None\nfrom bench.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "duckdb is not installed" in res.stderr and "pip install duckdb" in res.stderr
    assert "invalid choice" not in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------- 8 §5.8 help


def test_sweep_help_documents_every_flag():
    sweep = build_parser()._subparsers._group_actions[0].choices["sweep"]
    actions = {a.dest: a for a in sweep._actions}
    for dest in ("title", "prompt_len", "new_tokens", "engine", "device", "dtype", "seed", "repeats", "batch_sizes"):
        assert actions[dest].help, dest
    assert tuple(actions["engine"].choices) == ("hf", "graph")
    assert "auto" in actions["device"].choices and "float32" in actions["dtype"].choices
    for dest, default in (("seed", "default 0"), ("repeats", "default 3"), ("engine", "default hf"),
                          ("device", "default auto"), ("dtype", "default auto")):
        assert default in actions[dest].help, dest


# ---------------------------------------------------------------------------------------------- 14.9 prune --out


def test_prune_into_proc_is_rc2_before_any_work(capsys):
    assert main(["prune", "--model", "synthetic:tiny-moe", "--experts", "4", "--method", "first",
                 "--out", "/proc/x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--out /proc/x" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- 8 §5.10 install


def test_the_project_declares_an_entry_point_and_a_cpu_wheel_index():
    import tomllib

    from bench import cli

    meta = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    target = meta["project"]["scripts"]["moe-bench"]
    module, func = target.split(":")
    assert module == "bench.cli" and callable(getattr(cli, func))
    res = subprocess.run(["make", "-n", "-B", "test", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in res.stdout, res.stdout
    plain = subprocess.run(["make", "-n", "-B", "test"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert "extra-index-url" not in plain.stdout  # without TORCH_INDEX pip's own configuration decides
