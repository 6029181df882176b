"""Server-side behaviours behind the dashboard's page-load times (issue 15, docs/PERF.md "Fourth pass"). The times
themselves are measured by scripts/pageload.py, never asserted here; these tests fail when the mechanism is gone."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.paths import PROJECT_ROOT

WARM_PROBE = """
import gc, json
import pandas, plotly.graph_objects, streamlit  # what a dashboard process holds when the warm-up ends
from bench.ui import warm
warm.start()
warm._thread.join()
garbage_after = [[i] for i in range(1000)]  # new objects stay collectable
print(json.dumps({"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def test_warm_up_freezes_the_long_lived_objects_out_of_the_post_script_gc() -> None:
    """Streamlit runs a full `gc.collect()` after every script run, holding the GIL (no message goes out meanwhile):
    0.1-0.14 s per page view with the ~180,000 objects of pandas/plotly/scipy/Streamlit. The warm-up moves them out
    of the collector's reach once imported (`gc.freeze()`), so a collection only scans what the runs created."""
    out = subprocess.run([sys.executable, "-c", WARM_PROBE], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["frozen"] > 50_000  # the imported modules' objects
    assert 1000 <= counts["tracked"] < counts["frozen"] // 10  # the collector sees only the new objects


def _summary_cached() -> int:
    from streamlit.runtime.caching.cache_data_api import get_data_cache_stats_provider

    stats = get_data_cache_stats_provider().get_stats()
    return sum(1 for family in stats.values() for s in family if s.cache_name.endswith("._summary"))


def test_export_page_does_not_read_the_point_summary(tmp_path, monkeypatch) -> None:
    """The Export page needs the runs, not the per-(run, batch) summary (0.2 s at 100,000 points after each database
    change): `PageData.summary` is read when a page first uses it, which Scaling does and Export does not."""
    from bench.ui import data as ui_data
    from tests.fixtures_db import build_fixture
    from tests.test_app import open_page

    db = tmp_path / "bench.duckdb"
    build_fixture(db)
    at = open_page(db, "pages/export.py", monkeypatch)  # after the Overview, the default page, which reads it
    ui_data._summary.clear()
    at.run()
    assert at.multiselect(key="export_runs").value and at.get("tabs")  # it drew its selection and the report
    assert _summary_cached() == 0
    at.switch_page("pages/scaling.py").run()
    assert at.get("plotly_chart") and _summary_cached() == 1


def _layout(block) -> list[str]:
    """The element types of a block's children, in order: what the browser matches a rerun's elements by."""
    return [getattr(node, "type", type(node).__name__) for node in block.children.values()]


def test_a_filter_change_keeps_every_element_in_its_place(tmp_path, monkeypatch) -> None:
    """Streamlit's browser side matches a rerun's elements to the drawn ones by position: an element inserted above
    others makes it mount every element after it anew (toggles, table, popovers: the Scaling filter's redraw,
    docs/PERF.md). A Card filter that hides the picked runs leaves Scaling's elements where they were (the picked
    runs were the user's, not a link's: no link notice), and the sidebar's "N of M runs pass" caption fills a slot
    drawn on every run."""
    from tests.fixtures_db import A100, build_fixture
    from tests.test_app import open_page

    db = tmp_path / "bench.duckdb"
    build_fixture(db)
    at = open_page(db, "pages/scaling.py", monkeypatch)
    at.multiselect(key="scaling_runs").set_value(["run-base4"]).run()
    before = _layout(at.main)
    at.session_state["flt_cards"] = [A100]
    at.run()
    assert not at.exception
    assert at.multiselect(key="scaling_runs").value == ["run-a100-k2"]  # the filter's default runs
    charts = max(i for i, kind in enumerate(before) if kind == "plotly_chart") + 2  # the charts and their downloads
    assert _layout(at.main)[:charts] == before[:charts] and not at.info  # (a warning about failed points follows)
    # the sidebar, as AppTest shows it on a session's first run: without a filter, and with one (from a link)
    side = _first_run_sidebar(db, monkeypatch, {})
    filtered = _first_run_sidebar(db, monkeypatch, {"flt_cards": A100})
    assert side[filtered.index("1 of 4 runs pass the filters")] == "empty"  # the caption fills the slot
    assert len(filtered) == len(side) and filtered.index("expander") == side.index("expander")  # the Cost expander


def _first_run_sidebar(db, monkeypatch, params: dict) -> list[str]:
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP

    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update(params)
    at.run()
    assert not at.exception
    return [node.value if node.type == "caption" and "runs pass" in node.value else node.type
            for node in at.sidebar.children.values()]


def test_a_links_runs_hidden_by_its_filters_get_a_notice(tmp_path, monkeypatch) -> None:
    """The notice for a shared link's runs that its own filters hide stays (on the run that opens the link)."""
    from streamlit.testing.v1 import AppTest

    from tests.fixtures_db import H100, build_fixture
    from tests.test_app import APP

    db = tmp_path / "bench.duckdb"
    build_fixture(db)
    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update({"scaling_runs": ["run-base4", "run-a100-k2"], "flt_cards": H100})
    at.run()
    at.switch_page("pages/scaling.py").run()
    assert not at.exception
    assert [i.value for i in at.info] == ["1 run(s) in the link are hidden by the sidebar filters or have no ok "
                                          "points."]
    assert at.multiselect(key="scaling_runs").value == ["run-base4"]
    at.run()
    assert not at.info  # once


def test_pageload_table_shows_bytes_in_kb_for_any_number_of_repeats() -> None:
    """The median of an even number of repeats is a float: the byte columns must still read in kB."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pageload", PROJECT_ROOT / "scripts" / "pageload.py")
    pageload = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(pageload)  # type: ignore[union-attr]
    assert pageload._fmt(84597, "kB") == "85"  # odd repeats: the median is one of the ints
    assert pageload._fmt(84597.0, "kB") == "85"  # even repeats: the mean of the middle two
    assert pageload._fmt(1.234) == "1.23" and pageload._fmt(None) == "—"
