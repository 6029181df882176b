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
