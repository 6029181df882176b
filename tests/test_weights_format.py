"""The expert weight format on the dashboard side and in exports: labels, the sidebar filter, "bf16 vs mxfp4" in
Compare, and the markdown export's model column (which the importer reads back). Real DuckDB files."""

from __future__ import annotations

from datetime import timedelta

from bench import store
from bench.analysis import compare, labels
from bench.records import PointRecord, SweepRecord
from bench.report.markdown import parse_markdown, render_markdown
from bench.store import queries
from tests.fixtures_db import T0, _run


def _points(run, tps: list[float], mem: float) -> list[PointRecord]:
    return [PointRecord(run_id=run.run_id, batch=1, repeat=i, status="ok", total_tps=t, per_stream_tps=t,
                        decode_s=127 / t, prefill_s=0.05, tokens_generated=run.new_tokens, mem_used_gib=mem,
                        mem_peak_alloc_gib=mem - 1, started_at=T0, finished_at=T0) for i, t in enumerate(tps)]


def _db(tmp_path):
    db = tmp_path / "w.duckdb"
    store.insert_sweep(db, SweepRecord(sweep_id="sw", title="weights", spec_json="{}", state="done", created_at=T0))
    bf = _run("run-bf16", "sw", "base_topk4")
    mx = _run("run-mx", "sw", "base_topk4", weights="mxfp4", weights_impl="mxfp4 native (triton)",
              started_at=T0 + timedelta(minutes=6))
    for run, tps, mem in ((bf, [360.0, 365.0, 370.0], 40.0), (mx, [600.0, 610.0, 620.0], 14.0)):
        store.insert_run(db, run)
        for p in _points(run, tps, mem):
            store.insert_point(db, p, sweep_id="sw")
    return db, bf, mx


def test_weight_format_in_labels_filter_and_compare(tmp_path):
    db, _, _ = _db(tmp_path)
    runs = queries.runs(db)
    lab = dict(zip(runs["run_id"], runs["label"], strict=True))
    assert lab == {"run-bf16": "base_topk4", "run-mx": "base_topk4 · mxfp4"}
    assert labels.filter_options(runs)["weights"] == ["bf16", "mxfp4"]
    kept = labels.apply_filters(runs, labels.Filters(weights=["mxfp4"]))
    assert kept["run_id"].tolist() == ["run-mx"]
    assert not labels.Filters(weights=["mxfp4"]).is_default()
    assert compare.other_weight_formats(runs, "run-bf16") == ["run-mx"]
    diffs = compare.env_differences(runs, "run-bf16", "run-mx")
    assert "weights: bf16 vs mxfp4" in diffs and compare.only_weights_differ(diffs)
    d = compare.deltas(queries.point_summary(db), runs, "run-bf16", ["run-mx"])
    row = d.iloc[0]
    assert row["candidate"] == "base_topk4 · mxfp4" and row["total_pct"] > 60 and row["mem_pct"] < -60
    assert not row["within_noise"]


def test_markdown_export_names_the_format_and_imports_it_back(tmp_path):
    _, bf, mx = _db(tmp_path)
    md = render_markdown([bf, mx], _points(bf, [360.0], 40.0) + _points(mx, [600.0], 14.0), title="t")
    assert "`synthetic:gpt-oss-20b` (mxfp4) |" in md
    assert "`synthetic:gpt-oss-20b` |" in md  # bf16 stays as it was
    parsed = parse_markdown(md, "w.md")
    assert sorted(r.weights for r in parsed.runs) == ["bf16", "mxfp4"]
    assert {r.model for r in parsed.runs} == {"synthetic:gpt-oss-20b"}
