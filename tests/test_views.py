"""AppTest of the issue-13 views on a fixture with hand-computed numbers (tests/fixtures_views.py): the Pareto
front, J/token and $/Mtok (sidebar price, remembered in the URL), Compare's energy/cost deltas, the speedup heatmap,
the History page's regression verdict (a planted 10% slowdown and a within-noise rerun), shared links (unknown run
ids get a notice), and every new view on the default database and on an empty one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bench.paths import PROJECT_ROOT
from bench.store import init_db
from tests.fixtures_views import EXPECTED, build_views_fixture

APP = str(PROJECT_ROOT / "app.py")


@pytest.fixture(scope="module")
def slow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vx-slow") / "bench.duckdb"
    build_views_fixture(path, "slow")
    return path


@pytest.fixture(scope="module")
def noise_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vx-noise") / "bench.duckdb"
    build_views_fixture(path, "noise")
    return path


def open_page(db: Path, page: str, monkeypatch: pytest.MonkeyPatch, params: dict | None = None) -> AppTest:
    """The page as a shared link opens it: the query parameters are in the URL from the first run."""
    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(params or {})
    at.run()
    if page != "pages/overview.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def table(at: AppTest, *columns: str):
    for df in at.dataframe:
        if list(df.value.columns) == list(columns):
            return df.value
    raise AssertionError(f"no dataframe with columns {columns}; have {[list(d.value.columns) for d in at.dataframe]}")


def with_columns(at: AppTest, *columns: str):
    for df in at.dataframe:
        if set(columns) <= set(df.value.columns):
            return df.value
    raise AssertionError(f"no dataframe with {columns}")


def figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _front(at: AppTest) -> list[tuple]:
    front = table(at, "label", "batch", "per_stream_tps", "total_tps")
    return [(lab.split(" · ")[0], int(b), round(ps, 6), round(t, 6))
            for lab, b, ps, t in front.itertuples(index=False)]


# ---------------------------------------------------------------------------------------------- Pareto


def test_pareto_front_on_scaling(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/scaling.py", monkeypatch,
                   {"scaling_runs": ["hist-old", "pruned"], "scaling_view": "Pareto"})
    assert at.multiselect(key="scaling_runs").value == ["hist-old", "pruned"]
    assert _front(at) == EXPECTED["front"]
    fig = figures(at)[-1]
    front_trace = next(t for t in fig["data"] if t["name"] == "Pareto front")
    assert sorted(front_trace["x"]) == [150.0, 260.0, 800.0]
    assert "per-stream" in fig["layout"]["yaxis"]["title"]["text"] and fig["layout"]["title"]["text"]


def test_pareto_front_on_compare(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/compare.py", monkeypatch,
                   {"cmp_base": "hist-old", "cmp_cands": "pruned", "cmp_view": "Pareto"})
    assert at.selectbox(key="cmp_base").value == "hist-old"
    assert at.multiselect(key="cmp_cands").value == ["pruned"]
    assert _front(at) == EXPECTED["front"]


# ---------------------------------------------------------------------------------------------- energy and cost


def test_energy_and_cost_with_sidebar_price(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/scaling.py", monkeypatch,
                   {"scaling_runs": ["hist-old", "pruned", "cpu-run"], "scaling_view": "Energy & cost"})
    ec = table(at, "label", "batch", "total_tps", "j_per_token", "energy_note", "card_family", "usd_per_hour",
               "usd_per_mtok")
    base4 = ec[(ec["label"].str.startswith("base_topk4")) & (ec["batch"] == 4)].iloc[0]
    assert base4["j_per_token"] == EXPECTED["j_per_token_base_b4"]
    assert math.isclose(base4["usd_per_mtok"], EXPECTED["usd_per_mtok_base_b4_default"])
    assert base4["usd_per_hour"] == 2.90 and base4["card_family"] == "H100"
    pruned4 = ec[(ec["label"] == "pruned16_topk4") & (ec["batch"] == 4)].iloc[0]
    assert pruned4["j_per_token"] == EXPECTED["j_per_token_pruned_b4"]
    cpu = ec[ec["label"] == "cpu_topk4"]
    assert cpu["j_per_token"].isna().all() and set(cpu["energy_note"]) == {"no energy counter (CPU run)"}
    assert any("no J/token" in c.value and "not 0" in c.value for c in at.caption)
    # the MBU table carries both columns too (drawn when its expander is opened)
    at.session_state["scaling_table_open"] = True
    at.run()
    mbu = with_columns(at, "mbu", "j_per_token", "usd_per_mtok")
    assert mbu["j_per_token"].dropna().min() == 2.0 / 8 * 0.75  # pruned at batch 8: 1.5 / 8


def test_sidebar_prices_and_chart_downloads_are_drawn_when_opened(slow_db: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The Cost expander's inputs and a chart's PNG/SVG buttons are sent only while opened (page weight); a price
    typed in the opened sidebar reaches the cost columns, and stays in force once the expander is closed."""
    at = open_page(slow_db, "pages/overview.py", monkeypatch)
    assert [e.label for e in at.sidebar.expander] == ["Cost: $ per GPU-hour"] and not at.sidebar.number_input
    assert not at.get("download_button")
    at.session_state["overview_chart_dl"] = True  # what opening the popover does
    at.run()
    assert [b.label for b in at.get("download_button")] == ["PNG", "SVG"] or any(
        "PNG/SVG downloads need" in c.value for c in at.caption)  # no browser: the note instead
    # AppTest drops the sidebar's elements after a rerun, so the expander is opened before the first run
    monkeypatch.setenv("BENCH_DB", str(slow_db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["cost_open"] = True
    at.run()
    assert "w_usd_H100" in [n.key for n in at.sidebar.number_input]
    at.sidebar.number_input(key="w_usd_H100").set_value(3.6).run()
    assert at.session_state["usd_H100"] == 3.6  # (the URL part is test_price_from_the_link_is_used_and_remembered)
    at.session_state["cost_open"] = False
    at.switch_page("pages/scaling.py").run()  # closed again: the price stays in force
    at.session_state["scaling_runs"] = ["hist-old"]
    at.session_state["scaling_view"] = "Energy & cost"
    at.run()
    ec = table(at, "label", "batch", "total_tps", "j_per_token", "energy_note", "card_family", "usd_per_hour",
               "usd_per_mtok")
    assert ec[ec["batch"] == 4].iloc[0]["usd_per_hour"] == 3.6


def test_price_from_the_link_is_used_and_remembered(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/scaling.py", monkeypatch,
                   {"scaling_runs": ["hist-old"], "scaling_view": "Energy & cost", "usd_H100": "3.6"})
    ec = table(at, "label", "batch", "total_tps", "j_per_token", "energy_note", "card_family", "usd_per_hour",
               "usd_per_mtok")
    row = ec[ec["batch"] == 4].iloc[0]
    assert row["usd_per_hour"] == 3.6
    assert math.isclose(row["usd_per_mtok"], EXPECTED["usd_per_mtok_base_b4_at_3_60"])
    assert at.session_state["usd_H100"] == 3.6
    assert at.query_params.get("usd_H100") == "3.6"  # in the URL: survives a reload, travels with a link
    at.switch_page("pages/compare.py").run()  # kept across pages (session state), still in the URL
    assert at.session_state["usd_H100"] == 3.6 and at.query_params.get("usd_H100") == "3.6"


def test_compare_deltas_carry_energy_and_cost(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/compare.py", monkeypatch, {"cmp_base": "hist-old", "cmp_cands": "pruned"})
    d = with_columns(at, "j_pct", "usd_pct", "base_j_per_token", "j_per_token")
    b4 = d[d["batch"] == 4].iloc[0]
    assert math.isclose(b4["j_pct"], EXPECTED["j_pct_b4"])
    assert math.isclose(b4["usd_pct"], EXPECTED["usd_pct_b4"])
    assert b4["base_j_per_token"] == 0.5 and b4["j_per_token"] == 0.375


# ---------------------------------------------------------------------------------------------- heatmap


def test_speedup_heatmap_marks_noise(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/compare.py", monkeypatch,
                   {"cmp_base": "hist-old", "cmp_cands": "pruned", "cmp_view": "Heatmap: many variants",
                    "cmp_heat": ["pruned", "hist-slow"]})
    heat = next(t for f in figures(at) for t in f["data"] if t["type"] == "heatmap")
    assert heat["x"] == ["1", "2", "4", "8"] and heat["y"][0] == "pruned16_topk4"
    row = heat["customdata"][0]
    assert [round(v, 6) for v in row] == [EXPECTED["speedup"][b] for b in (1, 2, 4, 8)]
    assert math.isclose(heat["z"][0][0], math.log2(1.5))  # coloured by log2: 0.5× and 2× equally far from 1×
    marked = [t.startswith("≈") for t in heat["text"][0]]
    assert marked == [EXPECTED["within_noise"][b] for b in (1, 2, 4, 8)]
    assert [round(v, 6) for v in heat["customdata"][1]] == [0.9] * 4  # the slowed-down rerun, as a second variant


# ---------------------------------------------------------------------------------------------- history


def test_history_flags_the_planted_regression(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/history.py", monkeypatch)
    assert "base_topk4" in at.selectbox(key="hist_variant").format_func(at.selectbox(key="hist_variant").value)
    flags = [e.value for e in at.error]
    assert len(flags) == 1 and "Regression" in flags[0] and "slower" in flags[0]
    assert f"{EXPECTED['slow_change_pct']:+.1f}%" in flags[0] and "Mann–Whitney" in flags[0]
    runs = with_columns(at, "label", "git_commit", "device_name", "torch_version")
    assert runs["git_commit"].tolist() == ["aaa1111", "ccc3333"]
    assert runs["total_tps"].tolist() == [800.0, 720.0]  # batch 8 (the largest) by default
    figs = figures(at)
    assert any(t["y"] == [800.0, 720.0] for f in figs for t in f["data"])


def test_history_within_noise(noise_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(noise_db, "pages/history.py", monkeypatch, {"hist_batch": "4"})
    assert not at.error
    assert any("Within noise" in i.value and "+0.5%" in i.value for i in at.info)
    assert at.select_slider(key="hist_batch").value == 4


@pytest.fixture(scope="module")
def both_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vx-both") / "bench.duckdb"
    build_views_fixture(path, "both")
    return path


@pytest.mark.parametrize(("newest", "code", "verdict"), [("hist-slow", 1, "slower"), ("hist-noise", 0, "within noise")])
def test_bench_compare_exit_codes(both_db: Path, newest: str, code: int, verdict: str) -> None:
    db = both_db
    p = subprocess.run([sys.executable, "-m", "bench", "compare", "--db", str(db), "hist-old", newest],
                       cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert p.returncode == code, p.stdout + p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["verdict"] == verdict and summary["batches"] == [1, 2, 4, 8]
    if code:
        assert "REGRESSION" in p.stdout and math.isclose(summary["change_pct"], -10.0)
    bad = subprocess.run([sys.executable, "-m", "bench", "compare", "--db", str(db), "hist-old", "no-such-run"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no-such-run" in bad.stderr


# ---------------------------------------------------------------------------------------------- shared links


def test_unknown_run_in_a_link_is_a_notice(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/scaling.py", monkeypatch, {"scaling_runs": ["pruned", "gone-run"]})
    assert at.multiselect(key="scaling_runs").value == ["pruned"]
    assert any("gone-run" in w.value for w in at.warning)
    assert at.query_params["scaling_runs"] == "pruned"  # the address bar now holds what is shown
    at = open_page(slow_db, "pages/compare.py", monkeypatch, {"cmp_base": "gone-base"})
    assert any("gone-base" in w.value for w in at.warning)


def test_selections_are_written_to_the_url(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(slow_db, "pages/compare.py", monkeypatch)
    at.radio(key="cmp_metric").set_value("per_stream_pct").run()
    assert at.query_params["cmp_metric"] == "per_stream_pct"
    assert at.query_params["cmp_base"] == at.selectbox(key="cmp_base").value


# ---------------------------------------------------------------------------------------------- default and empty


@pytest.fixture(scope="module")
def default_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("default") / "bench.duckdb"
    subprocess.run([sys.executable, "-m", "bench", "build-db", "--db", str(path)], check=True, cwd=PROJECT_ROOT,
                   capture_output=True)
    return path


def test_every_view_on_the_default_database(default_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for page, key, views in (("pages/scaling.py", "scaling_view", ("Pareto", "Energy & cost")),
                             ("pages/compare.py", "cmp_view", ("Heatmap: many variants",))):
        for view in views:
            at = open_page(default_db, page, monkeypatch, {key: view})
            assert len(at.get("plotly_chart")) >= 1
    at = open_page(default_db, "pages/history.py", monkeypatch)
    assert len(at.get("plotly_chart")) >= 1 and (at.info or at.error or at.success)


@pytest.mark.parametrize("page", ["pages/history.py", "pages/scaling.py", "pages/compare.py"])
def test_views_on_an_empty_database(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "empty.duckdb"
    init_db(db)
    at = open_page(db, page, monkeypatch, {"scaling_view": "Pareto", "cmp_view": "Pareto", "scaling_runs": "x"})
    assert any("No benchmark data yet" in i.value for i in at.info)


def test_export_page_default_is_one_card_and_engine(slow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 item 5.5: the fixture holds H100/graph runs and a CPU/hf run; the default export takes one setup."""
    at = open_page(slow_db, "pages/export.py", monkeypatch)
    picked = at.multiselect(key="export_runs").value
    assert picked and "cpu-run" not in picked
    assert any("batch_sweep: 1,2,4,8" in m.value for m in at.markdown)  # the preview (the first tab)
    assert [b.label for b in at.get("download_button")][-1] == "Download HTML report"
