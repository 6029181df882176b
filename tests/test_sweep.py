"""End-to-end CPU sweeps into a real DuckDB file: points, failures as rows, worker death, resume, rerun, locks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.locks import try_lock
from bench.paths import device_locks_dir
from tests.helpers.sweeps import BASE, HALF, bench_env, last_json, rows, run_bench, start_bench, wait_points, write_spec

pytestmark = pytest.mark.slow


def spec_file(tmp_path: Path, *variants: str, batches=(1, 2), repeats=2, new_tokens=6) -> Path:
    return write_spec(tmp_path / "spec.toml", *variants, batches=batches, repeats=repeats, new_tokens=new_tokens)


def test_tiny_sweep_end_to_end_then_rerun(tmp_path, capsys):
    db = tmp_path / "bench.duckdb"
    spec = spec_file(tmp_path, BASE, HALF)
    assert main(["sweep", "--spec", str(spec), "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    summary = last_json(out)
    assert summary["state"] == "done" and summary["points_done"] == summary["points_planned"] == 8
    assert "[base]" in err and "2/4 points" in err  # progress bars on stderr
    pts = rows(db, "SELECT r.name, p.batch, p.status, p.total_tps, p.per_stream_tps, p.decode_s, p.prefill_s, "
                   "p.mem_used_gib, p.ceiling_tps, p.mbu, p.tokens_generated FROM points p JOIN runs r USING (run_id)")
    assert len(pts) == 8
    for _name, batch, status, total, per_stream, decode_s, prefill_s, mem, ceiling, mbu, generated in pts:
        assert status == "ok"
        assert generated == 6
        assert total == pytest.approx(batch * 5 / decode_s)
        assert per_stream == pytest.approx(total / batch)
        assert prefill_s > 0 and mem > 0 and ceiling > 0 and 0 < mbu < 1
    runs = dict(rows(db, "SELECT name, experts FROM runs"))
    assert runs == {"base": 8, "half": 4}
    env = rows(db, "SELECT device_name, torch_version, transformers_version, bench_version, host, bandwidth_gbs "
                   "FROM runs")
    assert all(all(v is not None for v in r) for r in env)
    kept = rows(db, "SELECT kept_experts_json FROM runs WHERE name = 'half'")[0][0]
    assert json.loads(kept) == [[0, 1, 2, 3], [0, 1, 2, 3]]

    assert main(["ls", "--json", "--db", str(db)]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listed[0]["state"] == "done" and listed[0]["points_done"] == 8 and listed[0]["points_planned"] == 8

    half_id = rows(db, "SELECT run_id, config_json FROM runs WHERE name = 'half'")[0]
    assert main(["rerun", half_id[0], "--db", str(db), "--quiet"]) == 0
    capsys.readouterr()
    rerun = rows(db, "SELECT run_id, config_json, rerun_of, sweep_id FROM runs WHERE rerun_of IS NOT NULL")
    assert len(rerun) == 1 and rerun[0][2] == half_id[0]
    assert json.loads(rerun[0][1])["variant"] == json.loads(half_id[1])["variant"]
    assert rows(db, f"SELECT count(*) FROM points WHERE run_id = '{rerun[0][0]}' AND status = 'ok'")[0][0] == 4


def test_failed_points_become_rows_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
    db = tmp_path / "bench.duckdb"
    spec = spec_file(tmp_path, BASE, batches=(1, 2, 3, 4), repeats=2, new_tokens=4)
    monkeypatch.setenv("MOE_BENCH_FAULT", "2:oom,3:error")
    assert main(["sweep", "--spec", str(spec), "--db", str(db), "--quiet"]) == 1  # an error row -> exit 1
    summary = last_json(capsys.readouterr().out)
    assert summary["state"] == "done" and summary["points_done"] == 8
    got = {(b, r): (s, e) for b, r, s, e in rows(db, 'SELECT batch, "repeat", status, error FROM points')}
    assert got[(1, 0)][0] == got[(1, 1)][0] == "ok"
    assert got[(2, 0)][0] == "oom" and "out of memory" in got[(2, 0)][1]
    assert got[(2, 1)][0] == "skipped"
    assert got[(3, 0)][0] == "error" and "injected fault" in got[(3, 0)][1]
    assert got[(4, 0)][0] == got[(4, 1)][0] == "ok"  # the batch after the failures still ran


@pytest.mark.parametrize(("kind", "reason"), [("exit", "exited with code 3"), ("segfault", "SIGSEGV")])
def test_worker_death_gives_error_rows_and_other_variants_finish(tmp_path, capsys, monkeypatch, kind, reason):
    db = tmp_path / "bench.duckdb"
    spec = spec_file(tmp_path, BASE, HALF, batches=(1, 2), repeats=1, new_tokens=4)
    monkeypatch.setenv("MOE_BENCH_FAULT", f"base@2:{kind}")
    assert main(["sweep", "--spec", str(spec), "--db", str(db), "--quiet"]) == 1
    capsys.readouterr()
    got = {(n, b): (s, e) for n, b, s, e in rows(
        db, "SELECT r.name, p.batch, p.status, p.error FROM points p JOIN runs r USING (run_id)")}
    assert got[("base", 1)][0] == "ok"
    assert got[("base", 2)][0] == "error" and reason in got[("base", 2)][1]
    assert got[("half", 1)][0] == got[("half", 2)][0] == "ok"
    assert rows(db, "SELECT state FROM runs WHERE name = 'base'")[0][0] == "failed"


def test_second_sweep_on_a_busy_device_is_refused(tmp_path, capsys):
    db = tmp_path / "bench.duckdb"
    held = try_lock(device_locks_dir() / "device-cpu.lock", "s-running-elsewhere pid 1")
    try:
        spec = spec_file(tmp_path, BASE)
        assert main(["sweep", "--spec", str(spec), "--db", str(db)]) == 2
        assert "s-running-elsewhere" in capsys.readouterr().err
    finally:
        held.release()


def test_kill_9_mid_sweep_then_resume_runs_only_missing_points(tmp_path):
    db = tmp_path / "bench.duckdb"
    spec = spec_file(tmp_path, BASE, batches=(1, 2, 3, 4), repeats=2, new_tokens=16)
    proc = start_bench("sweep", "--spec", str(spec), "--db", str(db), "--quiet", "--sweep-id", "s-kill",
                       env=bench_env(MOE_BENCH_FAULT="3:hang"))  # batch 3 never ends: the kill lands mid-sweep
    try:
        wait_points(db, 4, timeout=120, proc=proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    kept = rows(db, 'SELECT batch, "repeat", finished_at FROM points')
    assert len(kept) == 4  # batches 1 and 2, two repeats each
    ls = run_bench("ls", "--json", "--db", str(db), timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert last_json(ls.stdout)[0]["state"] == "crashed"

    resumed = start_bench("sweep", "--resume", "s-kill", "--db", str(db), "--quiet",
                          env=bench_env(MOE_BENCH_FAULT=""))
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert last_json(out)["points_done"] == 8
    after = {(b, r): f for b, r, f in rows(db, 'SELECT batch, "repeat", finished_at FROM points')}
    assert len(after) == 8
    for b, r, f in kept:  # finished points were not run again
        assert after[(b, r)] == f
    assert rows(db, "SELECT state FROM sweeps")[0][0] == "done"


def test_worker_never_reruns_the_parents_main_script(tmp_path, capsys, monkeypatch):
    """Under AppTest, __main__ is app.py; a spawned worker must not execute it (nor import streamlit)."""
    import types

    marker = tmp_path / "main-was-run"
    script = tmp_path / "fake_main.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    fake_main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    db = tmp_path / "bench.duckdb"
    spec = spec_file(tmp_path, BASE, batches=(1,), repeats=1, new_tokens=4)
    assert main(["sweep", "--spec", str(spec), "--db", str(db), "--quiet"]) == 0
    capsys.readouterr()
    assert not marker.exists()
    assert fake_main.__file__ == str(script)  # restored after the spawn
