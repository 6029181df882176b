"""AppTest of every dashboard page against a fixture database, an empty one, a missing one and a broken one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from bench.paths import PROJECT_ROOT
from bench.report import export_selection
from bench.store import init_db
from tests.fixtures_db import EXPECTED, build_fixture

APP = str(PROJECT_ROOT / "app.py")
EXPORT_SOURCE_TAB = "Markdown (copy with the button at the top right)"  # the Export page's second tab (st.code)
PAGES = ["pages/overview.py", "pages/scaling.py", "pages/memory.py", "pages/compare.py", "pages/routing.py",
         "pages/runs.py", "pages/export.py"]


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fx") / "bench.duckdb"
    build_fixture(path)
    return path


def open_page(db: Path, page: str, monkeypatch: pytest.MonkeyPatch, timeout: float = 30) -> AppTest:
    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if page != "pages/overview.py":  # the default page; AppTest drops sidebar elements after switch_page
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figure(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def traces(fig: dict) -> dict[str, dict]:
    return {t["name"]: t for t in fig["data"]}


def frame(at: AppTest, *columns: str):
    """The first dataframe on the page that has all `columns` (AppTest does not expose dataframe keys)."""
    for df in at.dataframe:
        if set(columns) <= set(df.value.columns):
            return df.value
    raise AssertionError(f"no dataframe with columns {columns}; have {[list(d.value.columns) for d in at.dataframe]}")


# ---------------------------------------------------------------------------------------------- fixture numbers


def test_overview_counts_and_headline(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/overview.py", monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Sweeps"] == str(EXPECTED["sweeps"])
    assert metrics["Runs"] == str(EXPECTED["runs"])
    assert metrics["Points"] == str(EXPECTED["points"])
    assert metrics["Cards"] == str(EXPECTED["cards"])
    assert metrics["Dates"] == "2025-01-10 → 01-11"
    fig = figure(at)
    heads = {t["x"][0]: t["y"][0] for t in fig["data"] if t["type"] == "bar"}
    assert fig["layout"]["title"]["text"] and fig["layout"]["yaxis"]["title"]["text"] == "total tok/s (median)"
    assert heads["pruned16_topk4"] == EXPECTED["median_total"][("pruned16_topk4", 4)]
    assert heads["base_topk4"] == EXPECTED["median_total"][("base_topk4", 4)]  # the OOM at batch 8 is not "largest"
    assert heads["report_base_topk4"] == 35.64
    # the latest sweep card
    assert any("fixture A100 sweep" in m.value for m in at.markdown)


def test_scaling_lines_spreads_ceilings_and_mbu(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/scaling.py", monkeypatch)
    total = figure(at, 0)
    t = traces(total)
    base = t["base_topk4"]
    assert base["x"] == [1, 2, 4]
    assert base["y"] == [102.0, 200.0, 400.0]
    assert base["error_y"]["array"] == [2.0, 10.0, 20.0]
    assert base["error_y"]["arrayminus"] == [2.0, 10.0, 20.0]
    assert t["base_topk4 ceiling"]["y"] == [400.0, 780.0, 1500.0]
    assert t["base_topk4 ceiling"]["line"]["dash"] == "dash"
    assert t["pruned16_topk4"]["y"] == [152.0, 201.0, 610.0]
    assert "ceiling" in base["hovertemplate"] and "MBU" in base["hovertemplate"]
    # same colour for a variant and its ceiling; different variants differ
    assert base["line"]["color"] == t["base_topk4 ceiling"]["line"]["color"] != t["pruned16_topk4"]["line"]["color"]
    assert total["layout"]["xaxis"]["type"] == "log"
    assert total["layout"]["xaxis"]["tickvals"] == [1, 2, 4]
    per_stream = traces(figure(at, 1))
    assert per_stream["base_topk4"]["y"] == [102.0, 100.0, 100.0]
    assert per_stream["base_topk4 ceiling"]["y"] == [400.0, 390.0, 375.0]
    at.session_state["scaling_table_open"] = True  # the MBU table is drawn when its expander is opened
    at.run()
    mbu = frame(at, "label", "mbu", "ceiling_tps")
    row = mbu[(mbu["label"] == "base_topk4") & (mbu["batch"] == 4)].iloc[0]
    assert row["mbu"] == pytest.approx(EXPECTED["mbu_base_b4"])
    assert row["ceiling_tps"] == 1500.0
    assert any("oom" in w.value and "batch 8" in w.value for w in at.warning)


def test_colours_are_the_same_on_every_page(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scaling = traces(figure(open_page(fixture_db, "pages/scaling.py", monkeypatch), 0))
    memory = traces(figure(open_page(fixture_db, "pages/memory.py", monkeypatch), 0))
    for name in ("base_topk4", "pruned16_topk4"):
        assert scaling[name]["line"]["color"] == memory[name]["line"]["color"]


def test_memory_lines_and_saving(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/memory.py", monkeypatch)
    t = traces(figure(at, 0))  # default metric: peak allocated
    assert t["base_topk4"]["y"] == [40.0, 40.5, 41.0]
    assert t["pruned16_topk4"]["y"] == [22.0, 22.5, 23.0]
    saved = frame(at, "saved_gib", "base")
    row = saved[saved["batch"] == 1].iloc[0]
    assert row["base"] == "base_topk4"
    assert row["saved_gib"] == pytest.approx(EXPECTED["mem_saved_b1"])
    assert row["weights_saved_gib"] == pytest.approx(18.0)
    bars = figure(at, 1)["data"][0]
    assert bars["y"][0] == pytest.approx(18.0)
    at.radio(key="memory_metric").set_value("mem_weights_gib").run()
    assert traces(figure(at, 0))["base_topk4"]["y"] == [39.0, 39.0, 39.0]


def test_compare_deltas_noise_and_env_warning(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/compare.py", monkeypatch)
    assert at.selectbox(key="cmp_base").value == "run-base4"  # the base of the pruned run
    assert at.multiselect(key="cmp_cands").value == ["run-pruned16"]
    assert not at.warning  # same card, engine and versions
    d = frame(at, "total_pct", "within_noise")
    b4 = d[d["batch"] == 4].iloc[0]
    assert b4["total_pct"] == pytest.approx(EXPECTED["total_pct_b4"])
    assert not b4["within_noise"]
    b2 = d[d["batch"] == 2].iloc[0]
    assert b2["within_noise"] and b2["note"] == "within noise"
    bars = figure(at)["data"][0]
    assert bars["y"] == pytest.approx([49.0196, 0.5, 52.5], rel=1e-4)
    assert bars["marker"]["pattern"]["shape"] == ["", "/", ""]
    assert bars["x"] == ["1", "2", "4"] and figure(at)["layout"]["xaxis"]["type"] == "category"
    at.multiselect(key="cmp_cands").set_value(["run-pruned16", "run-a100-k2"]).run()
    assert not at.exception
    text = " ".join(w.value for w in at.warning)
    assert "device_name" in text and "A100" in text and "engine" in text and "torch_version" in text


def test_runs_page_lists_sweeps_and_rerun_buttons(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/runs.py", monkeypatch)
    sweeps = frame(at, "sweep_id", "shown_state")
    assert set(sweeps["sweep_id"]) == {"fx-sweep-h100", "fx-sweep-a100"}
    assert set(sweeps["shown_state"]) == {"done"}
    assert at.button(key="rerun_run-a100-k2")  # the latest sweep's run
    at.selectbox(key="runs_group").set_value("fx-sweep-h100").run()
    assert at.button(key="rerun_run-base4") and at.button(key="rerun_run-pruned16")
    at.selectbox(key="runs_group").set_value("source:imported:union-prunes-20b-decode-report.md").run()
    assert at.button(key="rerun_run-report-k4").disabled  # imported: no config to rerun


def test_export_matches_cli(fixture_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = open_page(fixture_db, "pages/export.py", monkeypatch)
    at.multiselect(key="export_runs").set_value(["run-base4", "run-pruned16"]).run()
    at.session_state["export_tab"] = EXPORT_SOURCE_TAB  # what clicking the tab does
    shown = at.run().code[0].value
    assert "| base_topk4 |" in shown and "| pruned16_topk4 |" in shown
    text = export_selection(fixture_db, ["run-base4", "run-pruned16"], "markdown")
    assert shown == text.rstrip("\n")  # st.code drops the final newline; the download keeps it
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "bench", "export", "--db", str(fixture_db), "--format", "markdown",
                    "--run", "run-base4", "run-pruned16", "--out", str(out)], check=True, cwd=PROJECT_ROOT,
                   capture_output=True)
    assert out.read_bytes() == text.encode("utf-8")
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download markdown", "Download CSV", "Download JSONL", "Download HTML report"]


def test_filters_persist_across_pages(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(fixture_db, "pages/overview.py", monkeypatch)  # the sidebar is set on the landing page
    at.multiselect(key="w_flt_variants").set_value(["pruned16_topk4"]).run()
    assert [t["x"] for t in figure(at)["data"] if t["type"] == "bar"] == [["pruned16_topk4"]]
    at.switch_page("pages/memory.py").run()
    assert not at.exception
    assert at.session_state["flt_variants"] == ["pruned16_topk4"]
    assert set(traces(figure(at, 0))) == {"pruned16_topk4"}
    at.switch_page("pages/scaling.py").run()
    assert {n for n in traces(figure(at, 0)) if "ceiling" not in n} == {"pruned16_topk4"}
    at.session_state["flt_source"] = "imported"
    at.run()
    assert not at.exception
    assert any("filters" in i.value for i in at.info)  # pruned16 is measured: nothing passes


def test_run_selection_follows_the_filters(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that hides every picked run shows that filter's default runs (not an empty page); a filter that
    hides some keeps the rest; an untouched (default) selection follows the filters."""
    from tests.fixtures_db import H100

    at = open_page(fixture_db, "pages/scaling.py", monkeypatch)
    at.multiselect(key="scaling_runs").set_value(["run-base4", "run-a100-k2"]).run()
    at.session_state["flt_cards"] = [H100]
    at.run()
    assert at.multiselect(key="scaling_runs").value == ["run-base4"]  # the A100 run is hidden, the rest kept
    at.multiselect(key="scaling_runs").set_value(["run-base4"]).run()
    at.session_state["flt_variants"] = ["pruned16_topk4"]
    at.run()
    assert not at.exception
    assert at.multiselect(key="scaling_runs").value == ["run-pruned16"]  # all hidden: the filter's default
    assert {n for n in traces(figure(at, 0)) if "ceiling" not in n} == {"pruned16_topk4"}
    at = open_page(fixture_db, "pages/memory.py", monkeypatch)  # untouched default: follows each filter change
    at.session_state["flt_cards"] = [H100]
    at.run()
    assert set(at.multiselect(key="memory_runs").value) == {"run-base4", "run-pruned16"}
    at.session_state["flt_cards"] = []
    at.session_state["flt_variants"] = ["base_topk2"]
    at.run()
    assert at.multiselect(key="memory_runs").value == ["run-a100-k2"]


def test_sidebar_shows_database_path(fixture_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the project only the file name shows (the full path is in the tooltip); inside, the relative path."""
    at = open_page(fixture_db, "pages/overview.py", monkeypatch)
    shown = [m.value for m in at.sidebar.markdown]
    assert shown == ["`bench.duckdb`"] and not any(str(fixture_db.parent) in v for v in shown)
    assert any(str(fixture_db) in (c.proto.help or "") for c in at.sidebar.caption)
    from bench.ui.data import shown_path

    assert shown_path(PROJECT_ROOT / "data" / "bench.duckdb") == "data/bench.duckdb"


# ---------------------------------------------------------------------------------------------- empty and broken


@pytest.mark.parametrize("page", PAGES)
def test_empty_database(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "empty.duckdb"
    init_db(db)
    at = open_page(db, page, monkeypatch)
    assert not at.error
    if page != "pages/runs.py":
        assert any("No benchmark data yet" in i.value for i in at.info)
    else:
        assert at.button(key="launch_spec") or at.get("form")


@pytest.mark.parametrize("page", PAGES)
def test_missing_database(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path / "nope.duckdb", page, monkeypatch)
    assert not at.error
    assert at.info
    assert not (tmp_path / "nope.duckdb").exists()  # the dashboard never creates the database


@pytest.mark.parametrize("page", PAGES)
def test_corrupt_database(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "broken.duckdb"
    db.write_bytes(b"this is not a duckdb file" * 200)
    at = open_page(db, page, monkeypatch)
    assert at.error and "cannot be opened" in at.error[0].value


def test_newer_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "future.duckdb"
    build_fixture(db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE schema_meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    for page in PAGES:
        at = open_page(db, page, monkeypatch)
        assert at.error and "newer" in at.error[0].value, page


def test_new_sweep_form_rejects_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bench.duckdb"
    at = open_page(db, "pages/runs.py", monkeypatch)
    at.radio(key="new_mode").set_value("Fill in the fields").run()
    box = next(t for t in at.text_input if t.label == "Batch sizes")
    box.set_value("1, two")
    next(b for b in at.button if b.label == "Launch sweep").click().run()
    assert at.error and "Batch sizes" in at.error[0].value
    box = next(t for t in at.text_input if t.label == "Batch sizes")
    box.set_value("")
    next(b for b in at.button if b.label == "Launch sweep").click().run()
    assert at.error and "sweep.batch_sizes" in at.error[0].value
    assert "last_launch" not in at.session_state
    assert not (tmp_path / "bench.logs").exists()  # nothing was launched


def test_spec_to_toml_round_trips_every_prune_form(tmp_path: Path) -> None:
    import tomllib

    from bench.paths import KEEP_DIR
    from bench.spec import spec_from_dict, spec_to_toml

    keeps = sorted(p.name for p in KEEP_DIR.glob("*.json"))[:2]
    if len(keeps) < 2:
        pytest.skip("needs two keep files in data/keep/")
    raw = {"title": 'quotes " and \\ back', "sweep": {"prompt_len": 8, "new_tokens": 4, "batch_sizes": [1, 3]},
           "variants": [{"name": "a", "model": "synthetic:tiny-moe", "top_k": 2},
                        {"name": "b", "model": "synthetic:tiny-moe", "top_k": 1,
                         "prune": {"experts": 4, "method": "random"}},
                        {"name": "c", "model": "synthetic:tiny-moe", "top_k": 1, "prune": {"keep": keeps[0]}},
                        {"name": "d", "model": "synthetic:tiny-moe", "top_k": 1,
                         "prune": {"union": keeps, "experts": 4}}]}
    spec = spec_from_dict(raw)
    again = spec_from_dict(tomllib.loads(spec_to_toml(spec)))
    assert again.to_dict() == spec.to_dict()


# ---------------------------------------------------------------------------------------------- the default data


@pytest.fixture(scope="module")
def default_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make run` shows: `python -m bench build-db` from data/ (reference report + committed GPU results)."""
    path = tmp_path_factory.mktemp("default") / "bench.duckdb"
    subprocess.run([sys.executable, "-m", "bench", "build-db", "--db", str(path)], check=True, cwd=PROJECT_ROOT,
                   capture_output=True)
    return path


def test_overview_on_default_data(default_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.store import queries

    at = open_page(default_db, "pages/overview.py", monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert len(metrics["Dates"]) <= 18  # fits its tile without an ellipsis
    runs = queries.runs(default_db)
    newest = runs.loc[runs["run_date"].idxmax()]
    # the latest sweep is known from its imported runs even though the sweeps table is empty
    assert any(str(newest["sweep_id"]) in m.value for m in at.markdown)
    assert metrics["Sweep state"] == "done"
    bars = [t for t in figure(at)["data"] if t["type"] == "bar"]
    same_sweep = set(runs.loc[runs["sweep_id"] == newest["sweep_id"], "label"])
    assert {t["x"][0] for t in bars} == same_sweep  # default runs: the latest sweep's


def test_date_range_is_compact() -> None:
    from bench.ui.data import date_range

    assert date_range("2025-01-10 12:00", "2025-01-10 18:00") == "2025-01-10"
    assert date_range("2025-01-10", "2025-03-02") == "2025-01-10 → 03-02"
    assert date_range("2024-12-30", "2025-01-02") == "2024-12 → 2025-01"
    assert date_range(None, None) == "—"


def _by_label(db: Path) -> dict[str, str]:
    from bench.store import queries

    r = queries.runs(db)
    return dict(zip(r["label"], r["run_id"], strict=True))


    from bench.analysis import labels
    from bench.store import queries

    runs = queries.runs(default_db)
    assert runs["label"].is_unique
    b4 = runs[runs["name"] == "base_topk4"]
    assert len(b4) >= 2  # hf and graph (and the imported report)
    for r in b4.to_dict("records"):
        if r["source"] == "measured":
            assert r["label"] == f"base_topk4 · {r['engine']} · H100"
        else:
            assert r["label"] == "base_topk4 · imported"
    assert labels.short_card("NVIDIA A100-SXM4-80GB") == "A100" and labels.short_card("cpu: Xeon") == "cpu"


def test_compare_hf_against_graph_is_informative(default_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _by_label(default_db)
    hf, graph = ids["base_topk4 · hf · H100"], ids["base_topk4 · graph · H100"]
    at = open_page(default_db, "pages/compare.py", monkeypatch)
    at.selectbox(key="cmp_base").set_value(hf).run()
    at.button(key="cmp_engines").click().run()  # "Compare engines": the same variant measured with graph
    assert not at.exception
    assert at.multiselect(key="cmp_cands").value == [graph]
    assert not at.warning and not at.error
    note = " ".join(i.value for i in at.info)
    assert "differ only in the decode engine" in note and "hf → graph" in note and "same variant" in note
    d = frame(at, "total_pct", "within_noise")
    assert set(d["candidate"]) == {"base_topk4 · graph · H100"}
    assert (d["total_pct"] > 0).all()  # the graph engine is faster at every batch size
    # another card or timing convention is still a warning
    at.multiselect(key="cmp_cands").set_value([ids["base_topk4 · imported"]]).run()
    assert any("timing_convention" in w.value for w in at.warning)


def test_one_colour_per_label_on_every_page(default_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _by_label(default_db)
    pair = ["base_topk4 · hf · H100", "base_topk4 · graph · H100"]
    colours: dict[str, set[str]] = {label: set() for label in pair}
    for page, key in (("pages/scaling.py", "scaling_runs"), ("pages/memory.py", "memory_runs")):
        at = open_page(default_db, page, monkeypatch)
        at.multiselect(key=key).set_value([ids[label] for label in pair]).run()
        t = traces(figure(at, 0))
        for label in pair:
            colours[label].add(t[label]["line"]["color"])
    at = open_page(default_db, "pages/compare.py", monkeypatch)
    at.selectbox(key="cmp_base").set_value(ids[pair[0]]).run()
    at.multiselect(key="cmp_cands").set_value([ids[pair[1]]]).run()
    colours[pair[1]].add(traces(figure(at, 0))[pair[1]]["marker"]["color"])
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours[pair[0]] != colours[pair[1]]  # same variant, other engine: another shade


def test_fifty_runs_of_one_variant_get_fifty_styles() -> None:
    """Runs sharing a name (engines, cards, formats, reruns after each engine change) must stay apart on a chart:
    colour shade + dash. The default database alone holds a dozen runs named base_topk4."""
    import pandas as pd

    from bench.ui.colors import run_styles

    n = 50
    runs = pd.DataFrame({"name": ["v"] * n, "label": [f"v · {i}" for i in range(n)], "source": ["measured"] * n,
                         "engine": ["graph"] * n, "device_name": [f"card {i:02d}" for i in range(n)],
                         "run_date": pd.date_range("2026-11-01", periods=n, tz="UTC"),
                         "run_id": [f"r{i:02d}" for i in range(n)]})
    colors, dashes = run_styles(runs)
    assert len({(colors[label], dashes[label]) for label in runs["label"]}) == n
    assert len(set(colors.values())) == n  # a shade of its own too: a legend swatch shows no dash
    assert "dash" not in set(dashes.values())  # kept for the roofline ceilings
    first_ten = run_styles(runs.head(10))
    assert all(first_ten[0][f"v · {i}"] == colors[f"v · {i}"] for i in range(10))  # the first styles do not move


def test_names_of_one_sweep_never_share_a_colour_past_the_palette() -> None:
    """More variant names than palette colours (the default database has 24): a colour is reused only by names that
    never share a sweep, since a sweep's names are drawn together; up to the palette's length, sorted order."""
    import pandas as pd

    from bench.ui.colors import PALETTE, run_styles

    extra = [f"perf-{i:02d}" for i in range(len(PALETTE))]  # sort before the sweep's names, one sweep each
    sweep = ["union50_topk4", "unionAgg_topk2", "w1", "w2"]  # sort after them: the palette is used up
    names = extra + sweep
    runs = pd.DataFrame({"name": names, "label": names, "source": ["measured"] * len(names),
                         "engine": ["graph"] * len(names), "device_name": ["H200"] * len(names),
                         "run_date": pd.Timestamp("2026-11-30", tz="UTC"), "run_id": names,
                         "sweep_id": [f"s-{n}" for n in extra] + ["s-ref"] * len(sweep)})
    colors, _ = run_styles(runs)
    assert [colors[n] for n in extra] == list(PALETTE)  # the first names: palette order, as before
    assert len({colors[n] for n in sweep}) == len(sweep)  # one sweep, four colours
    # and a sweep that shares names with an earlier one keeps away from those names' colours too
    runs.loc[runs["name"] == "perf-00", "sweep_id"] = "s-ref"
    colors, _ = run_styles(runs)
    assert colors["perf-00"] not in {colors[n] for n in sweep}


def test_export_large_selection_builds_files_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PREVIEW_POINTS the page renders no export up front: the preview waits for its button, the downloads
    are callables run on click."""
    import importlib.util

    from bench.store import queries

    spec = importlib.util.spec_from_file_location("perf_dashboard", PROJECT_ROOT / "scripts" / "perf_dashboard.py")
    perf = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(perf)  # type: ignore[union-attr]
    db = tmp_path / "bench.duckdb"
    assert perf.build(db, 25_000, sweeps=5) > 20_000
    ids = queries.runs(db)["run_id"].tolist()
    at = open_page(db, "pages/export.py", monkeypatch)
    at.multiselect(key="export_runs").set_value(ids).run()
    assert not at.exception
    assert not at.code  # no markdown built yet
    assert any("built on request" in i.value for i in at.info)
    assert [b.label for b in at.get("download_button")] == ["Download markdown", "Download CSV", "Download JSONL",
                                                          "Download HTML report"]
    at.button(key="export_preview").click().run()
    at.session_state["export_tab"] = EXPORT_SOURCE_TAB
    at.run()
    assert at.code and at.code[0].value == export_selection(db, ids, "markdown").rstrip("\n")


def test_no_page_needs_magic() -> None:
    """.streamlit/config.toml turns Streamlit's magic off (Streamlit recompiles every script in each new session; the
    magic AST pass was most of it, docs/PERF.md). That is only safe while no script has a bare expression magic
    would draw: magic's own transform must find nothing to write in app.py and every page."""
    import ast
    import tomllib

    from streamlit.runtime.scriptrunner import magic

    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["magicEnabled"] is False
    scripts = [PROJECT_ROOT / "app.py", *sorted((PROJECT_ROOT / "pages").glob("*.py"))]
    assert len(scripts) >= 9
    for script in scripts:
        tree = magic.add_magic(script.read_text(), str(script))
        writes = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr == "transparent_write"]
        assert not writes, f"{script.name} lines {writes}: a bare expression would not be drawn with magic off"


@pytest.mark.parametrize("page", [*PAGES[1:], "pages/history.py"])
def test_a_first_request_for_a_sub_page_still_runs_inside_app_navigation(fixture_db: Path, page: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A tab on /scaling that reconnects first after a server start: Streamlit would run pages/scaling.py alone
    (its old pages/-folder mode), with no sidebar or filters for any session of that server (bench.ui.shell)."""
    from streamlit.runtime.pages_manager import PagesManager

    monkeypatch.setenv("BENCH_DB", str(fixture_db))
    at = AppTest.from_file(APP, default_timeout=30)
    at.switch_page(page)  # before the first run: the first request names the sub-page
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert PagesManager.uses_pages_directory is False  # app.py's st.navigation ran
    assert "Card" in [m.label for m in at.sidebar.multiselect]  # the shared sidebar is there
    assert at.title[0].value == Path(page).stem.capitalize()  # and the page that was asked for
