"""`python -m bench perf` on CPU: hf and graph side by side, JSONL in the bench's own export format."""

from __future__ import annotations

import json

import duckdb

from bench.cli import main


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
