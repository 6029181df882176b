"""The Runs page's rough edges (issue 8 §5.3, issue 14 item 14) under AppTest on a copy of the fixture database,
and the form/grouping logic it now takes from bench.ui.sweep_form."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from bench import store
from bench.errors import BadInputError
from bench.paths import logs_dir_for
from bench.records import PointRecord, RunRecord, SweepRecord
from bench.store import queries
from bench.ui import launch as ui_launch
from bench.ui import sweep_form
from tests.fixtures_db import build_fixture
from tests.test_app import open_page


@pytest.fixture(scope="module")
def fixture_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fx-runs") / "bench.duckdb"
    build_fixture(path)
    return path


@pytest.fixture
def db(fixture_src: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture database (these tests add rows and launch records)."""
    path = tmp_path / "bench.duckdb"
    shutil.copy(fixture_src, path)
    yield path
    for launch in ui_launch.launches(path):  # anything a test launched from this database
        try:
            if str(path) in Path(f"/proc/{launch.pid}/cmdline").read_bytes().decode(errors="replace"):
                os.killpg(launch.pid, signal.SIGKILL)
        except OSError:
            continue


def runs_page(db: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return open_page(db, "pages/runs.py", monkeypatch, timeout=30)


def texts(at: AppTest) -> list[str]:
    return [e.value for e in (*at.markdown, *at.caption, *at.error, *at.info)] + [
        getattr(p.proto, "text", "") for p in at.get("progress")]


def test_running_sweep_panel_and_cards_never_print_nan(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running sweep with no message (NULL → NaN in pandas) and a run that is no rerun (rerun_of NULL)."""
    now = datetime.now(UTC)
    store.insert_sweep(db, SweepRecord(
        sweep_id="live-1", title="live sweep", spec_json="{}", state="running", host=socket.gethostname(),
        pid=os.getpid(), points_planned=4, points_done=1, created_at=now, started_at=now, heartbeat_at=now))
    store.insert_run(db, RunRecord(run_id="run-live", sweep_id="live-1", name="base_topk2", model="synthetic:tiny-moe",
                                   top_k=2, engine="hf", dtype="float32", device="cpu", prompt_len=8, new_tokens=4,
                                   repeats=1, seed=0, state="running", source="measured", started_at=now))
    at = runs_page(db, monkeypatch)
    progress = at.get("progress")
    assert len(progress) == 1 and progress[0].proto.text.startswith("1 / 4 points")
    shown = texts(at)
    assert any("live sweep" in t and "state **running**" in t for t in shown)
    assert not [t for t in shown if t.strip() == "nan" or "rerun of `nan`" in t or "of nan" in t], shown
    at.selectbox(key="runs_group").set_value("live-1").run()
    card = [t for t in texts(at) if "base_topk2" in t and "top_k 2" in t]
    assert card and "rerun of" not in card[0]


def test_cancelled_sweeps_run_is_not_running_on_its_card(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run row left `running` by a sweep that was cancelled (older databases) shows the sweep's final state."""
    now = datetime.now(UTC)
    store.insert_sweep(db, SweepRecord(sweep_id="gone-1", title="cancelled sweep", spec_json="{}", state="cancelled",
                                       points_planned=2, points_done=1, created_at=now, started_at=now))
    store.insert_run(db, RunRecord(run_id="run-gone", sweep_id="gone-1", name="base_topk2", model="synthetic:tiny-moe",
                                   top_k=2, engine="hf", dtype="float32", device="cpu", prompt_len=8, new_tokens=4,
                                   repeats=1, seed=0, state="running", source="measured", started_at=now))
    store.insert_point(db, PointRecord(run_id="run-gone", batch=1, repeat=0, status="ok", total_tps=10.0,
                                       per_stream_tps=10.0))
    at = runs_page(db, monkeypatch)
    at.selectbox(key="runs_group").set_value("gone-1").run()
    [card] = [t for t in texts(at) if "points ok" in t]
    lines = card.split("  \n")
    # one markdown per run card (page weight, docs/PERF.md): what ran, its state, where it ran
    assert len(lines) == 3 and lines[0].startswith("**base_topk2 · hf** · top_k 2 · `synthetic:tiny-moe`")
    assert lines[1].startswith("cancelled · 1/1 points ok · ") and "hf · float32 · torch" in lines[2]


def test_stale_failed_launch_leaves_the_panel(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch that died before registering shows as "failed to start" only while it is the newest (or for a
    minute), not for ten minutes on top of the page."""
    logs = logs_dir_for(db)
    logs.mkdir(parents=True, exist_ok=True)
    dead_pid = 2**22 + 7  # above the default pid_max: no such process
    for i, sid in enumerate(("ui-old-failed", "ui-new-failed")):
        rec = ui_launch.Launch(sweep_id=sid, pid=dead_pid, log_path=str(logs / f"{sid}.log"), argv=[], kind="sweep",
                               label=sid, started=time.time() - 120)
        path = logs / f"{sid}.launch.json"
        path.write_text(json.dumps(rec.__dict__))
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))  # the second is the newest
    at = runs_page(db, monkeypatch)
    shown = " ".join(texts(at))
    assert "ui-new-failed" in shown and "failed to start" in shown
    assert "ui-old-failed" not in shown


def test_retry_failed_points_launches_resume_retry_errors(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The H100 fixture sweep has one OOM point: the Retry button launches `sweep --resume ID --retry-errors` as an
    argument list."""
    at = runs_page(db, monkeypatch)
    at.selectbox(key="runs_group").set_value("fx-sweep-h100").run()
    assert any("1 point(s) of this sweep did not run cleanly" in c.value for c in at.caption)
    at.button(key="retry_fx-sweep-h100").click().run()
    assert not at.exception
    launch = ui_launch.launches(db)[0]
    assert launch.kind == "retry" and launch.sweep_id == "fx-sweep-h100"
    assert launch.argv[1:] == ["-m", "bench", "sweep", "--resume", "fx-sweep-h100", "--retry-errors", "--db", str(db),
                               "--sweep-id", "fx-sweep-h100"]
    # a sweep without failed points offers no retry
    at.selectbox(key="runs_group").set_value("fx-sweep-a100").run()
    assert not [b for b in at.button if b.key and b.key.startswith("retry_")]


def test_launches_log_progress_lines_not_quiet(tmp_path: Path) -> None:
    """The UI's bench processes write the per-point progress lines the page tails (no --quiet)."""
    spec = sweep_form.validate(sweep_form.FALLBACK_SPEC)
    launch = ui_launch.launch_spec(tmp_path / "bench.duckdb", spec)
    try:
        assert "--quiet" not in launch.argv
        rerun = ui_launch.launch_rerun(tmp_path / "bench.duckdb", "r-none")
        assert "--quiet" not in rerun.argv
    finally:
        for pid in {launch.pid, *(x.pid for x in ui_launch.launches(tmp_path / "bench.duckdb"))}:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- sweep_form


def test_variants_from_rows_every_prune_form() -> None:
    rows = pd.DataFrame([
        {"name": "base", "model": "synthetic:tiny-moe", "top_k": 2.0, "prune_experts": float("nan"),
         "prune_method": None, "prune_keep": None},
        {"name": "half", "model": "synthetic:tiny-moe", "top_k": 1.0, "prune_experts": 4.0, "prune_method": None,
         "prune_keep": ""},
        {"name": "keep", "model": "m", "top_k": 2, "prune_experts": None, "prune_method": None,
         "prune_keep": "a.json"},
        {"name": "union", "model": "m", "top_k": 2, "prune_experts": 16, "prune_method": None,
         "prune_keep": "a.json; b.json"},
        {"name": None, "model": None, "top_k": None, "prune_experts": None, "prune_method": None, "prune_keep": None},
    ])
    assert sweep_form.variants_from_rows(rows) == [
        {"name": "base", "model": "synthetic:tiny-moe", "top_k": 2},
        {"name": "half", "model": "synthetic:tiny-moe", "top_k": 1, "prune": {"experts": 4, "method": "first"}},
        {"name": "keep", "model": "m", "top_k": 2, "prune": {"keep": "a.json"}},
        {"name": "union", "model": "m", "top_k": 2, "prune": {"union": ["a.json", "b.json"], "experts": 16}},
    ]
    # a calibrated method names its calibration domains (research's prune_domains column)
    calibrated = pd.DataFrame([{"name": "freq", "model": "m", "top_k": 2, "prune_experts": 16,
                                "prune_method": "frequency", "prune_keep": None, "prune_domains": "code; prose"}])
    assert sweep_form.variants_from_rows(calibrated) == [
        {"name": "freq", "model": "m", "top_k": 2,
         "prune": {"experts": 16, "method": "frequency", "domains": ["code", "prose"]}}]
    assert sweep_form.variant_rows(sweep_form.variants_from_rows(calibrated)).iloc[0]["prune_domains"] == "code;prose"
    # and back: the editor rows of a spec
    back = sweep_form.variant_rows([{"name": "u", "model": "m", "top_k": 2,
                                     "prune": {"union": ["a.json", "b.json"], "experts": 16}}])
    assert back.iloc[0]["prune_keep"] == "a.json;b.json" and back.iloc[0]["prune_experts"] == 16


def _form(**kw) -> sweep_form.FormValues:
    values = dict(title="t", variants=sweep_form.variant_rows(sweep_form.FALLBACK_SPEC["variants"]), batches="1, 2;4",
                  prompt_len=8, new_tokens=4, repeats=1, engine="hf", device="cpu", dtype="float32")
    values.update(kw)
    return sweep_form.FormValues(**values)


def test_form_to_spec_validates_the_whole_spec() -> None:
    spec = sweep_form.form_to_spec(_form())
    assert spec.sweep.batch_sizes == [1, 2, 4] and spec.variants[0].name == "base_topk2" and spec.title == "t"
    assert spec.sweep.cluster is None
    assert sweep_form.form_to_spec(_form(cluster="local:2")).sweep.cluster == "local:2"  # the "Run on" choice
    with pytest.raises(BadInputError, match="Batch sizes"):
        sweep_form.form_to_spec(_form(batches="1, two"))
    with pytest.raises(BadInputError, match="batch_sizes"):
        sweep_form.form_to_spec(_form(batches="1, 1"))
    no_model = sweep_form.variant_rows([{"name": "x", "top_k": 2}])
    with pytest.raises(BadInputError, match=r"variants\[0\]\.model"):
        sweep_form.form_to_spec(_form(variants=no_model))
    too_many = sweep_form.variant_rows([{"name": "x", "model": "synthetic:tiny-moe", "top_k": 4,
                                         "prune": {"experts": 2, "method": "first"}}])
    with pytest.raises(BadInputError, match="top_k"):
        sweep_form.form_to_spec(_form(variants=too_many))


def test_run_groups_registered_imported_and_loose(fixture_src: Path) -> None:
    runs, sweeps = queries.runs(fixture_src), queries.sweeps(fixture_src)
    groups = sweep_form.run_groups(runs, sweeps)
    assert list(groups) == ["fx-sweep-a100", "fx-sweep-h100", "source:imported:union-prunes-20b-decode-report.md"]
    assert groups["fx-sweep-h100"] == "fixture H100 sweep · fx-sweep-h100"
    assert groups["source:imported:union-prunes-20b-decode-report.md"].startswith("no sweep · imported:")
    assert sweep_form.runs_in_group(runs, "fx-sweep-h100")["name"].tolist() == ["base_topk4", "pruned16_topk4"]
    assert sweep_form.runs_in_group(runs, "source:imported:union-prunes-20b-decode-report.md")["run_id"].tolist() \
        == ["run-report-k4"]
    # a sweep known only from imported JSONL runs (no sweeps row) gets its own group
    jsonl = runs[runs["run_id"] == "run-base4"].assign(sweep_id="imported-sweep-x", run_id="rx")
    groups = sweep_form.run_groups(pd.concat([runs, jsonl]), sweeps)
    assert groups["imported-sweep-x"].startswith("imported sweep · 1 runs · graph")


def test_clean_record_turns_nan_into_none() -> None:
    assert sweep_form.clean_record({"a": float("nan"), "b": pd.NA, "c": "", "d": 0, "e": "x"}) == \
        {"a": None, "b": None, "c": None, "d": 0, "e": "x"}
