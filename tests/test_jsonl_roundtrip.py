"""JSONL: required keys, lossless JSONL -> DB -> JSONL round trip, and refusal of truncated/malformed files."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from fixtures.report_helpers import REFERENCE, cli, last_json, measured_points, measured_run, write_measured

from bench import store
from bench.records import PointRecord, RunRecord
from bench.report import export_selection, parse_jsonl

REQUIRED = [
    "run",
    "model",
    "top_k",
    "experts",
    "engine",
    "device_name",
    "batch",
    "repeat",
    "status",
    "total_tps",
    "per_stream_tps",
    "decode_s",
    "prefill_s",
    "mem_used_gib",
    "ceiling_tps",
    "mbu",
    "started_at",
]


def _mixed_db(tmp_path, capsys):
    db = tmp_path / "src.duckdb"
    code, _, err = cli(capsys, "import", str(REFERENCE), "--db", str(db))
    assert code == 0, err
    write_measured(db, measured_run("r-1", "tiny_base", offset_s=0))
    write_measured(db, measured_run("r-2", "tiny_half", sweep_id="sw-2", top_k=2, offset_s=100))
    return db


def test_jsonl_has_every_field_and_required_keys(tmp_path, capsys):
    db = _mixed_db(tmp_path, capsys)
    lines = [json.loads(line) for line in export_selection(db, None, "jsonl").splitlines()]
    assert len(lines) == 30 + 2 * 10
    first = next(line for line in lines if line["run"] == "tiny_base" and line["batch"] == 4 and line["repeat"] == 1)
    for key in REQUIRED:
        assert key in first, key
    assert {f.name for f in fields(PointRecord)} <= set(first)
    assert {f.name for f in fields(RunRecord)} == set(first["run_meta"])
    assert first["status"] == "error" and first["error"] == "RuntimeError: injected | fault\nline two"
    assert first["device_name"] == "cpu: Test CPU" and first["experts"] == 6
    assert first["run_meta"]["kept_experts"][1] == [1, 2, 3, 4, 6, 7]
    assert first["run_meta"]["env"]["torch"] == "2.13.0"
    assert first["started_at"] == "2025-03-04T05:06:12.123456+00:00"
    # measured runs (by start time) first, then the imported report in its own order
    assert [line["run"] for line in lines[::10]][:2] == ["tiny_base", "tiny_half"]


def test_jsonl_round_trip_is_lossless(tmp_path, capsys):
    db = _mixed_db(tmp_path, capsys)
    first = tmp_path / "first.jsonl"
    code, _, err = cli(capsys, "export", "--format", "jsonl", "--db", str(db), "--out", str(first))
    assert code == 0, err
    db2 = tmp_path / "copy.duckdb"
    code, out, err = cli(capsys, "import", str(first), "--db", str(db2))
    assert code == 0, err
    assert last_json(out)["points"] == 50
    second = export_selection(db2, None, "jsonl")
    assert second == first.read_text()
    assert sorted(second.splitlines()) == sorted(first.read_text().splitlines())
    # records equal field by field, datetimes included
    runs_a = {r.run_id: asdict(r) for r in store.read_runs(db)}
    runs_b = {r.run_id: asdict(r) for r in store.read_runs(db2)}
    assert runs_a == runs_b
    # the markdown tables of the copy are the same (sweep titles are not carried: no sweep rows in JSONL)
    md_a = [ln for ln in export_selection(db, None, "markdown").splitlines() if ln.startswith("|")]
    md_b = [ln for ln in export_selection(db2, None, "markdown").splitlines() if ln.startswith("|")]
    assert md_a == md_b


def test_reimporting_jsonl_replaces_points(tmp_path, capsys):
    """Issue 14 item 15: an import that would drop stored points is refused (with the count) unless --replace."""
    db = _mixed_db(tmp_path, capsys)
    path = tmp_path / "one.jsonl"
    before_points = store.done_points(db, "r-1")
    lines = [ln for ln in export_selection(db, ["tiny_base"], "jsonl").splitlines() if '"batch": 8' not in ln]
    dropped = len(before_points) - len(lines)
    assert dropped > 0
    path.write_text("\n".join(lines) + "\n")
    before = db.read_bytes()
    code, _, err = cli(capsys, "import", str(path), "--db", str(db))
    assert code == 2
    assert f"would remove {dropped} stored point" in err and "--replace" in err and "tiny_base" in err
    assert db.read_bytes() == before
    code, _, err = cli(capsys, "import", str(path), "--db", str(db), "--replace")
    assert code == 0, err
    assert store.done_points(db, "r-1") == {(b, r) for b in (1, 2, 4) for r in range(3)}


def _truncations(text: str) -> dict[str, tuple[str, int]]:
    lines = text.splitlines(keepends=True)
    out = {"cut mid-line": ("".join(lines[:7]) + lines[7][: len(lines[7]) // 2], 8)}
    bad = json.loads(lines[3])
    bad["batch"] = "four"
    out["wrong type"] = ("".join(lines[:3]) + json.dumps(bad) + "\n" + "".join(lines[4:]), 4)
    bad = json.loads(lines[2])
    bad["status"] = "great"
    out["bad status"] = ("".join(lines[:2]) + json.dumps(bad) + "\n", 3)
    bad = json.loads(lines[5])
    bad["surprise"] = 1
    out["unknown key"] = ("".join(lines[:5]) + json.dumps(bad) + "\n", 6)
    bad = json.loads(lines[1])
    bad["run"] = "someone_else"
    out["headline disagrees"] = ("".join(lines[:1]) + json.dumps(bad) + "\n", 2)
    bad = json.loads(lines[1])
    del bad["run_meta"]["prompt_len"]
    out["run_meta field missing"] = (lines[0] + json.dumps(bad) + "\n", 2)
    out["duplicate point"] = (lines[0] + lines[0], 2)
    out["not an object"] = ("[1, 2]\n", 1)
    return out


def test_truncated_or_malformed_jsonl_exit_2_and_db_unchanged(tmp_path, capsys):
    src = _mixed_db(tmp_path, capsys)
    text = export_selection(src, ["tiny_base", "tiny_half"], "jsonl")
    db = tmp_path / "target.duckdb"
    code, _, err = cli(capsys, "import", str(REFERENCE), "--db", str(db))
    assert code == 0, err
    before = export_selection(db, None, "jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text(text)
    for what, (broken, lineno) in _truncations(text).items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(broken)
        code, out, err = cli(capsys, "import", str(good), str(bad), "--db", str(db))
        assert code == 2, what
        assert f"bad.jsonl:{lineno}:" in err, (what, err)
        assert "Traceback" not in err and last_json(out)["ok"] is False
        assert export_selection(db, None, "jsonl") == before, what


def test_parse_jsonl_accepts_ints_for_floats_and_naive_times():
    run = measured_run("r-9", "x")
    point = PointRecord(run_id="r-9", batch=1, repeat=0, status="ok", total_tps=3.0)
    from bench.report.jsonl import point_line

    obj = point_line(run, point)
    obj["total_tps"] = 3
    obj["run_meta"]["started_at"] = "2025-03-04T05:06:07"
    parsed = parse_jsonl(json.dumps(obj) + "\n", "x.jsonl")
    assert parsed.points[0].total_tps == 3.0 and isinstance(parsed.points[0].total_tps, float)
    assert parsed.runs[0].started_at.utcoffset().total_seconds() == 0
    assert len(measured_points("r-9")) == 10
