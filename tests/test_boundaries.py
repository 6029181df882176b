"""Import boundaries: worker-side code never loads duckdb or streamlit (the GPU box has neither); the dashboard
never loads torch or transformers. Checked in fresh interpreters so other tests' imports cannot hide a leak."""

from __future__ import annotations

import subprocess
import sys

from bench.paths import PROJECT_ROOT

WORKER_SIDE = [
    "bench.worker", "bench.engines.hf", "bench.engines.graph", "bench.models.loading", "bench.models.pruning",
    "bench.measure.memory", "bench.measure.nvml", "bench.measure.bandwidth", "bench.measure.env", "bench.roofline",
    "bench.commands.perf", "bench.report.jsonl", "bench.models.footprint", "bench.spec", "bench.research_worker",
    "bench.corpus", "bench.models.keep_sets", "bench.models.routing_stats", "bench.models.quality",
    "bench.models.text_tokens",
]
DASHBOARD_SIDE = ["bench.store.queries", "bench.analysis.labels", "bench.analysis.compare", "bench.ui.data",
                  "bench.ui.charts", "bench.ui.launch", "bench.ui.colors", "bench.report",
                  "bench.analysis.pareto", "bench.analysis.cost", "bench.analysis.history", "bench.ui.share",
                  "bench.ui.images", "bench.ui.views", "bench.ui.warm", "bench.report.html", "bench.report.energy",
                  "bench.commands.compare", "bench.cancel", "bench.spec",
                  "bench.store.research_queries", "bench.analysis.routing", "bench.analysis.quality",
                  "bench.ui.research_charts", "bench.ui.research_data", "bench.ui.quality_views"]


def _loaded_after_import(modules: list[str], watch: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(','.join(w for w in {watch!r} if w in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_worker_side_never_imports_duckdb_or_streamlit():
    assert _loaded_after_import(WORKER_SIDE, ["duckdb", "streamlit"]) == []


def test_dashboard_side_never_imports_torch():
    assert _loaded_after_import(DASHBOARD_SIDE, ["torch", "transformers"]) == []
