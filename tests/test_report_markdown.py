"""Markdown report import/export: the reference round trip, medians over repeats, escaping, bad input."""

from __future__ import annotations

import re
import shutil
import tomllib

from fixtures.report_helpers import REFERENCE, cli, last_json, measured_run, table_lines, write_measured

from bench import store
from bench.report import export_selection, parse_markdown, render_markdown
from bench.report.markdown import imported_run_id
from bench.runner import spec_for_rerun
from bench.spec import spec_from_dict

CELL = re.compile(r"(?<!\\)\|")


def _import_reference(capsys, db):
    code, out, err = cli(capsys, "import", str(REFERENCE), "--db", str(db))
    assert code == 0, err
    return last_json(out)


def test_reference_round_trip_table_lines_identical(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    summary = _import_reference(capsys, db)
    assert (summary["runs"], summary["points"]) == (5, 30)
    out_file = tmp_path / "out.md"
    code, _, err = cli(capsys, "export", "--format", "markdown", "--db", str(db), "--out", str(out_file))
    assert code == 0, err
    exported = out_file.read_text()
    original = REFERENCE.read_text()
    assert table_lines(exported) == table_lines(original)
    assert len(table_lines(original)) == 2 + 5 + 5 * 8
    assert exported.startswith("# 20B decode throughput: UNION prunes\n\n- prompt_len: 256 | new_tokens: 2048\n")
    assert "- batch_sweep: 1,2,4,8,16,32\n" in exported
    assert "- timing: generate" in exported  # says which convention the tables use
    assert "## Per-batch details\n\n### base_topk4\n" in exported
    assert "modal run" not in exported and "python -m bench sweep --spec sweep.toml" in exported
    # the exported file imports again, and exports to the same bytes
    db2 = tmp_path / "c.duckdb"
    code, _, err = cli(capsys, "import", str(out_file), "--db", str(db2))
    assert code == 0, err
    again = export_selection(db2, None, "markdown")
    assert table_lines(again) == table_lines(original)


def test_imported_records_follow_the_report(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    _import_reference(capsys, db)
    runs = {r.name: r for r in store.read_runs(db)}
    assert list(runs) and set(runs) == {"base_topk4", "base_topk2", "union50_topk4", "union50_topk2", "unionAgg_topk2"}
    r = runs["union50_topk4"]
    assert r.source == "imported:union-prunes-20b-decode-report.md" and r.state == "imported"
    assert r.timing_convention == "generate" and r.sweep_id is None
    assert (r.prompt_len, r.new_tokens, r.top_k) == (256, 2048, 4)
    assert r.model == "/root/model/artifacts/20b_union_pruned/union50"
    assert r.run_id == imported_run_id("union-prunes-20b-decode-report.md", "union50_topk4")
    # the config is rerunnable: `python -m bench rerun` measures the same variant with our harness
    spec, _ = spec_for_rerun(db, r.run_id)
    assert (spec.sweep.prompt_len, spec.sweep.new_tokens, spec.sweep.batch_sizes) == (256, 2048, [1, 2, 4, 8, 16, 32])
    assert (spec.variants[0].model, spec.variants[0].top_k) == (r.model, 4)
    con = store.connect(db, read_only=True)
    try:
        rows = con.execute(
            'SELECT batch, "repeat", status, total_tps, per_stream_tps, decode_s, mem_used_gib FROM points '
            "WHERE run_id = ? ORDER BY batch",
            [runs["base_topk4"].run_id],
        ).fetchall()
    finally:
        con.close()
    assert rows[0] == (1, 0, "ok", 17.14, 17.14, 119.472, 14.62579345703125)
    assert [row[0] for row in rows] == [1, 2, 4, 8, 16, 32] and {row[1] for row in rows} == {0}


def test_reimport_replaces_instead_of_duplicating(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    _import_reference(capsys, db)
    # a second version of the same file name without one run and without batch 32
    text = REFERENCE.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("| 32 |")) + "\n"
    text = "\n".join(line for line in text.splitlines() if not line.startswith("| unionAgg_topk2 |")) + "\n"
    text = text[: text.index("### unionAgg_topk2")] + text[text.index("## Reproduce") :]
    edited = tmp_path / REFERENCE.name
    edited.write_text(text)
    code, _, err = cli(capsys, "import", str(edited), "--db", str(db))
    assert code == 2 and "would remove 10 stored point" in err  # 4 runs lose batch 32, one run is gone
    code, _, err = cli(capsys, "import", str(edited), "--db", str(db), "--replace")
    assert code == 0, err
    con = store.connect(db, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
        assert con.execute("SELECT count(*), max(batch) FROM points").fetchone() == (20, 16)
    finally:
        con.close()
    _import_reference(capsys, db)  # and back: 5 runs, 30 points, no duplicates
    assert export_selection(db, None, "markdown").count("\n| 32 |") == 5


def _db_snapshot(db) -> str:
    return export_selection(db, None, "jsonl")


def _mutations(original: str) -> dict[str, tuple[str, int]]:
    """name -> (broken text, line number the error must name)."""
    lines = original.splitlines()

    def at(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    out = {}
    bad = list(lines)
    i = at("| 4 | 71.41")
    bad[i] = bad[i].replace("114.720", "11x4.7")
    out["bad number"] = ("\n".join(bad) + "\n", i + 1)
    i = at("| 16 | 285.69")
    out["truncated mid-row"] = ("\n".join(lines[:i]) + "\n| 16 | 285.69 | 17.8", i + 1)
    i = at("### union50_topk2")
    out["truncated: runs missing"] = ("\n".join(lines[:i]) + "\n", at("| union50_topk2 |") + 1)
    bad = list(lines)
    i = at("| batch |")
    bad[i] = "| batch | total | per-stream tok/s | decode_s | mem_used_gib | status |"
    out["wrong header"] = ("\n".join(bad) + "\n", i + 1)
    bad = list(lines)
    i = at("| 8 | 144.77")
    bad[i] = bad[i].replace("| ok |", "| fine |")
    out["bad status"] = ("\n".join(bad) + "\n", i + 1)
    out["not a report"] = ("hello\nworld\n", 1)
    return out


def test_malformed_report_exit_2_names_line_and_leaves_db_unchanged(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    _import_reference(capsys, db)
    before = _db_snapshot(db)
    for what, (text, lineno) in _mutations(REFERENCE.read_text()).items():
        bad = tmp_path / "bad-report.md"
        bad.write_text(text)
        # a good file in the same command must not be written either
        good = tmp_path / "good.md"
        shutil.copy(REFERENCE, good)
        code, out, err = cli(capsys, "import", str(good), str(bad), "--db", str(db))
        assert code == 2, what
        assert f"bad-report.md:{lineno}:" in err, (what, err)
        assert "Traceback" not in err
        assert last_json(out)["ok"] is False
        assert _db_snapshot(db) == before, what


def test_pipe_and_newline_in_names_cannot_break_a_table(tmp_path):
    db = tmp_path / "b.duckdb"
    run = measured_run("r-pipe", "evil|name\nwith newline")
    run.model = "org/model|x"
    write_measured(db, run)
    text = export_selection(db, None, "markdown")
    assert "evil\\|name with newline" in text
    summary, header = table_lines(text)[2], table_lines(text)[0]
    assert len(CELL.split(summary)) == len(CELL.split(header)) == 9  # 7 cells + both ends
    for line in table_lines(text):
        assert len(CELL.split(line)) in (8, 9)
    assert "- error at batch 4: repeat 1 (error): RuntimeError: injected \\| fault line two" in text
    parsed = parse_markdown(text, "x.md")
    assert parsed.runs[0].name == "evil|name with newline" and parsed.runs[0].model == "org/model|x"
    assert parsed.points[2].error == "repeat 1 (error): RuntimeError: injected | fault line two"


def test_median_over_ok_repeats_and_max_is_largest_ok_batch(tmp_path):
    db = tmp_path / "b.duckdb"
    write_measured(db, measured_run("r1", "tiny_base"))
    text = export_selection(db, None, "markdown")
    assert text.startswith("# Tiny sweep\n")  # the sweep's title
    assert "- values: median over the ok repeats" in text
    assert "- timing: decode: total tok/s = batch*(new_tokens-1)/decode_s" in text
    lines = table_lines(text)
    # batch 4 has repeats 40, error, 44 -> median of ok = 42; batch 8 is oom, so @max is batch 4
    assert lines[2] == "| tiny_base | 4 | 4 | 42.00 | 10.50 | 1.6 | `synthetic:tiny-moe` |"
    assert "| 1 | 11.00 | 11.00 | 0.636 | 0.5761904761904761 | ok |" in lines
    assert "| 8 | - | - | - | - | oom |" in lines
    assert "- error at batch 8: CUDA out of memory" in text


def test_reproduce_block_is_a_valid_spec(tmp_path):
    db = tmp_path / "b.duckdb"
    write_measured(db, measured_run("r1", "tiny_base"))
    text = export_selection(db, None, "markdown")
    toml_text = text.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    spec = spec_from_dict(tomllib.loads(toml_text))
    assert spec.title == "Tiny sweep"
    assert spec.sweep.batch_sizes == [1, 2, 4, 8] and spec.sweep.repeats == 3 and spec.sweep.engine == "hf"
    assert spec.variants[0].prune is not None and spec.variants[0].prune.experts == 6


def test_export_run_filter(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    _import_reference(capsys, db)
    code, out, err = cli(capsys, "export", "--db", str(db), "--run", "base_topk2", "--run", "unionAgg_topk2")
    assert code == 0, err
    assert [line.split(" | ")[0] for line in table_lines(out)[2:4]] == ["| base_topk2", "| unionAgg_topk2"]
    assert "### base_topk4" not in out and out.count("### ") == 2
    assert last_json(err)["runs"] == 2  # summary goes to stderr when the export goes to stdout
    code, out, err = cli(capsys, "export", "--db", str(db), "--run", "no_such_run")
    assert code == 2 and "no_such_run" in err and "base_topk4" in err


def test_cli_out_bytes_equal_export_selection(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    _import_reference(capsys, db)
    write_measured(db, measured_run("r1", "tiny_base"))
    for fmt in ("markdown", "csv", "jsonl"):
        out_file = tmp_path / f"x.{fmt}"
        code, out, err = cli(capsys, "export", "--db", str(db), "--format", fmt, "--out", str(out_file))
        assert code == 0, err
        assert out_file.read_bytes() == export_selection(db, None, fmt).encode()
        assert last_json(out)["points"] == 30 + 10


def test_render_is_pure_and_orders_runs(tmp_path, capsys):
    db = tmp_path / "b.duckdb"
    _import_reference(capsys, db)
    parsed = parse_markdown(REFERENCE.read_text(), REFERENCE.name)
    # shuffled input gives the same report: order comes from the records, not from the argument order
    a = render_markdown(parsed.runs, parsed.points)
    b = render_markdown(list(reversed(parsed.runs)), list(reversed(parsed.points)))
    assert a == b == export_selection(db, None, "markdown")
