"""Sections rendered on demand (issue 15): closed expanders and tabs send nothing to the browser until opened,
and show their content, unchanged, once opened. AppTest on the fixture database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.paths import SPECS_DIR
from bench.report import export_selection
from tests.fixtures_db import build_fixture
from tests.test_app import EXPORT_SOURCE_TAB, figure, open_page


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fx-lazy") / "bench.duckdb"
    build_fixture(path)
    return path


def test_runs_page_all_runs_table_and_spec_file_on_demand(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/runs.py", monkeypatch)
    assert [e.label for e in at.expander] == ["data/specs/tiny-cpu.toml",
                                              "All 4 runs passing the filters (environment and counts)"]
    assert len(at.dataframe) == 1 and not at.code  # the sweeps table only; no spec text, no all-runs table
    at.session_state["runs_all_open"] = True  # what opening the expander does
    at.session_state["new_spec_open"] = True
    at.run()
    assert not at.exception
    table = [d.value for d in at.dataframe if "sweep_title" in d.value.columns]
    assert len(table) == 1 and sorted(table[0]["run_id"]) == ["run-a100-k2", "run-base4", "run-pruned16",
                                                              "run-report-k4"]
    assert [c.value for c in at.code] == [(SPECS_DIR / "tiny-cpu.toml").read_text().rstrip("\n")]


def test_export_renders_only_the_open_tab(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview opens first (the source's code block loads Streamlit's syntax highlighter, 0.3 s of a cold view);
    only the open tab is rendered, and the source tab shows the exact export text."""
    at = open_page(fixture_db, "pages/export.py", monkeypatch)
    at.multiselect(key="export_runs").set_value(["run-base4", "run-pruned16"]).run()
    text = export_selection(fixture_db, ["run-base4", "run-pruned16"], "markdown")
    assert not at.code  # the source tab is not rendered
    assert [m.value.strip() for m in at.markdown if "| base_topk4 |" in m.value] == [text.strip()]
    at.session_state["export_tab"] = EXPORT_SOURCE_TAB  # what clicking the tab does
    at.run()
    assert [c.value for c in at.code] == [text.rstrip("\n")]
    assert not [m for m in at.markdown if "| base_topk4 |" in m.value]  # the preview tab is not rendered


def test_overview_table_on_demand(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Overview's table of the headline chart's numbers is built when its expander is opened, with one row per
    bar of the chart (the same runs)."""
    at = open_page(fixture_db, "pages/overview.py", monkeypatch)
    assert "The chart's numbers as a table (batch, tok/s, ceiling, MBU, card, engine)" in [e.label for e in at.expander]
    assert not at.dataframe
    bars = {t["x"][0] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"] if t["type"] == "bar"}
    at.session_state["overview_table_open"] = True  # what opening the expander does
    at.run()
    assert not at.exception
    [table] = [d.value for d in at.dataframe]
    assert set(table["label"]) == bars and len(table) == len(bars)
    assert {"batch", "total_tps", "per_stream_tps", "ceiling_tps", "mbu", "device_name", "engine"} <= set(table.columns)


def test_memory_base_pickers_on_demand(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Memory page's base selectbox per pruned run is drawn when its expander is opened; closed, the guessed
    base is used (and shown in the saved table); a base changed in it stays chosen after the expander is closed."""
    at = open_page(fixture_db, "pages/memory.py", monkeypatch)
    assert [e.label for e in at.expander if e.label.startswith("Base run of each pruned variant")] == [
        "Base run of each pruned variant (1; guessed: same top-k, card and model)"]
    assert not at.selectbox  # closed: no selectbox sent
    saved = next(d.value for d in at.dataframe if "saved_gib" in d.value.columns)
    assert set(saved["base"]) == {"base_topk4"}
    at.session_state["memory_bases_open"] = True  # what opening the expander does
    at.run()
    box = at.selectbox(key="w_memory_base_run-pruned16")
    assert box.value == "run-base4" and box.label.startswith("Base for ")
    assert box.options == ["base_topk2", "base_topk4", "report_base_topk4"]
    box.set_value("run-report-k4").run()
    assert set(next(d.value for d in at.dataframe if "saved_gib" in d.value.columns)["base"]) == {"report_base_topk4"}
    at.session_state["memory_bases_open"] = False
    at.run()
    assert not at.selectbox
    saved = next(d.value for d in at.dataframe if "saved_gib" in d.value.columns)
    assert set(saved["base"]) == {"report_base_topk4"}  # the changed base is kept while the expander is closed


def test_scaling_mbu_table_on_demand(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scaling's MBU table is built when its expander is opened (its data grid cost the browser ~0.2 CPU-s on every
    view and filter change), with a row per point of the charts and every column it had."""
    at = open_page(fixture_db, "pages/scaling.py", monkeypatch)
    box = [e for e in at.expander if e.label.startswith("The table: per run and batch size")]
    assert len(box) == 1 and not at.dataframe
    points = {(t["name"], x) for fig in (figure(at, 0), figure(at, 1)) for t in fig["data"]
              if "ceiling" not in t["name"] for x in t["x"]}
    at.session_state["scaling_table_open"] = True  # what opening the expander does
    at.run()
    assert not at.exception
    [table] = [d.value for d in at.dataframe]
    assert list(table.columns) == ["label", "batch", "n_ok", "total_tps", "total_tps_min", "total_tps_max",
                                   "per_stream_tps", "ceiling_tps", "mbu", "distinct_experts", "j_per_token",
                                   "usd_per_mtok"]
    measured = table[table["total_tps"].notna()]  # (a failed point has a row, and no marker in the charts)
    assert set(zip(measured["label"], measured["batch"], strict=True)) == points
