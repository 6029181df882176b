"""Export: the selected runs as markdown in the reference report's format (preview, copy, download), CSV, JSONL.

The text comes from `bench.report.export_selection`, the function `python -m bench export` uses, so the
downloaded bytes equal the CLI's for the same selection (runs are passed by run_id).
"""

from __future__ import annotations

import streamlit as st

from bench import ui_data
from bench.errors import BenchError
from bench.queries import file_version
from bench.report import export_selection

st.title("Export")
data = ui_data.page_data(need_points=False)
if data is None:
    st.stop()


@st.cache_data(max_entries=16, show_spinner=False)
def _export(path: str, version: tuple, run_ids: tuple[str, ...], fmt: str) -> str:
    return export_selection(path, list(run_ids), fmt)


labels = dict(zip(data.runs["run_id"], data.runs["label"], strict=True))
if "export_runs" in st.session_state:
    st.session_state["export_runs"] = [r for r in st.session_state["export_runs"] if r in labels]
else:
    st.session_state["export_runs"] = ui_data.default_ids(data.runs) or list(labels)[:12]
ids = st.multiselect("Runs to export", list(labels), format_func=lambda r: labels[r], key="export_runs",
                     help=ui_data.DEFAULT_HELP)
if not ids:
    st.info("Pick at least one run to export.")
    st.stop()

version = file_version(data.db)
try:
    markdown = _export(str(data.db), version, tuple(ids), "markdown")
except BenchError as exc:
    st.error(str(exc))
    st.stop()

cli = "python -m bench export --format markdown " + " ".join(f"--run {r}" for r in ids) + " --out report.md"
st.caption(f"Same bytes as `{cli}` (with `--db {data.db}` or `BENCH_DB`).")
c = st.columns(3)
c[0].download_button("Download markdown", markdown.encode("utf-8"), file_name="moe-bench-report.md",
                     mime="text/markdown", key="dl_markdown", type="primary")


def _bytes(fmt: str) -> bytes:
    """CSV and JSONL are built only when their button is clicked (the slow ones on large selections)."""
    return _export(str(data.db), version, tuple(ids), fmt).encode("utf-8")


c[1].download_button("Download CSV", lambda: _bytes("csv"), file_name="moe-bench-points.csv",
                     mime="text/csv", key="dl_csv")
c[2].download_button("Download JSONL", lambda: _bytes("jsonl"), file_name="moe-bench-runs.jsonl",
                     mime="application/x-ndjson", key="dl_jsonl")

tab_src, tab_preview = st.tabs(["Markdown (copy with the button at the top right)", "Preview"])
with tab_src:
    st.code(markdown, language="markdown")
with tab_preview:
    st.markdown(markdown)
