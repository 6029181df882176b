"""`python -m bench perf` on CPU: hf and graph side by side, JSONL in the bench's own export format."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb

from bench.cli import main
from bench.paths import PROJECT_ROOT


def test_perf_writes_importable_points_for_both_engines(tmp_path, capsys):
    out = tmp_path / "perf.jsonl"
    code = main(["perf", "--model", "synthetic:tiny-moe", "--engines", "hf,graph", "--experts", "8,4", "--top-k", "2",
                 "--batch-sizes", "1,2", "--new-tokens", "6", "--prompt-len", "8", "--repeats", "1",
                 "--device", "cpu", "--dtype", "float32", "--out-jsonl", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["points"] == summary["points_ok"] == 8
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(d["engine"], d["experts"], d["batch"]) for d in lines} == {
        (e, x, b) for e in ("hf", "graph") for x in (8, 4) for b in (1, 2)}
    for d in lines:
        assert d["status"] == "ok" and d["tokens_generated"] == 6
        assert abs(d["total_tps"] - d["batch"] * 5 / d["decode_s"]) < 1e-6 * d["total_tps"]
        assert 0 < d["mbu"] < 1 and d["ceiling_tps"] > 0 and d["kv_bytes"] > 0

    db = tmp_path / "perf.duckdb"
    assert main(["import", str(out), "--db", str(db)]) == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM points WHERE status = 'ok'").fetchone()[0] == 8
    finally:
        con.close()


def test_perf_runs_the_workers_point_loop_and_needs_no_duckdb(tmp_path):
    """perf launches `worker.run_job` (the sweeps' loop): the worker's fault injection fires in perf too, with the
    same rows a sweep stores (oom, then skipped repeats); and it runs with duckdb unavailable (the GPU box)."""
    out = tmp_path / "perf.jsonl"
    code = (
        "import sys; sys.modules['duckdb'] = None\n"
        "from bench.commands.perf import main\n"
        f"sys.exit(main(['--model', 'synthetic:tiny-moe', '--engines', 'hf', '--experts', '8', '--top-k', '2', "
        f"'--batch-sizes', '1,2', '--new-tokens', '2', '--prompt-len', '4', '--repeats', '2', '--device', 'cpu', "
        f"'--out-jsonl', {str(out)!r}]))\n"
    )
    env = dict(os.environ, MOE_BENCH_FAULT="2:oom")
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "duckdb" not in res.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(d["batch"], d["repeat"]): d["status"] for d in lines}
    assert got == {(1, 0): "ok", (1, 1): "ok", (2, 0): "oom", (2, 1): "skipped"}
    ok = [d for d in lines if d["status"] == "ok"]
    assert ok and all(d["tokens_generated"] == 2 for d in ok)
    meta = ok[0]["run_meta"]
    assert meta["engine_options"] and meta["model_fingerprint"] and meta["kept_experts"] is None
    assert "| 8 | 2 | 2 | hf (oom) |" in res.stdout


def test_perf_refuses_a_model_larger_than_free_memory(capsys):
    """The 20B preset in float32 needs ~90 GiB: refused with rc 2 (need, free, a way out) before any build."""
    code = main(["perf", "--model", "synthetic:gpt-oss-20b", "--engines", "hf", "--experts", "32", "--top-k", "4",
                 "--batch-sizes", "65536", "--prompt-len", "100000", "--new-tokens", "64", "--repeats", "1",
                 "--device", "cpu", "--dtype", "float32"])
    assert code == 2
    err = capsys.readouterr().err
    assert "GiB on cpu" in err and "is free" in err and "--no-memory-check" in err and "synthetic:tiny-moe" in err
