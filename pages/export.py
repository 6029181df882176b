"""Export: the selected runs as markdown in the reference report's format (preview, copy, download), CSV, JSONL.

The text comes from `bench.report.export_selection`, the function `python -m bench export` uses, so the
downloaded bytes equal the CLI's for the same selection (runs are passed by run_id).
"""

from __future__ import annotations

import streamlit as st

from bench.analysis import cost
from bench.analysis import labels as labels_mod
from bench.errors import BenchError
from bench.report import export_selection
from bench.store.queries import file_version
from bench.ui import data as ui_data
from bench.ui import share
from bench.ui.shell import in_app_navigation

MARKDOWN_TAB = "Markdown (copy with the button at the top right)"
PREVIEW_POINTS = 20_000  # larger selections build the markdown preview on request, so the page stays under 1 s

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("Export")
data = ui_data.page_data(need_points=False)
if data is None:
    st.stop()


@st.cache_data(max_entries=16, show_spinner=False)
def _export(path: str, version: tuple, run_ids: tuple[str, ...], fmt: str, prices: tuple = ()) -> str:
    return export_selection(path, list(run_ids), fmt, dict(prices) or None)


labels = dict(zip(data.runs["run_id"], data.runs["label"], strict=True))
ui_data.shared_runs(data, "export_runs", labels)
if "export_runs" in st.session_state:
    st.session_state["export_runs"] = [r for r in st.session_state["export_runs"] if r in labels]
else:
    st.session_state["export_runs"] = labels_mod.export_default(data.runs) or list(labels)[:12]
ids = st.multiselect("Runs to export", list(labels), format_func=lambda r: labels[r], key="export_runs",
                     help=ui_data.DEFAULT_HELP + " Narrowed to one card and engine, so a report never mixes them.")
share.publish({"export_runs": ids})
if not ids:
    st.info("Pick at least one run to export.")
    st.stop()

version = file_version(data.db)
# prices the user changed in the sidebar (defaults need no flag): the same bytes as the CLI with these flags
_fams = sorted({cost.card_family(d) for d in data.runs.set_index("run_id").loc[ids, "device_name"]})
_p = ui_data.prices()
prices = tuple((f, _p[f]) for f in _fams if abs(_p.get(f, cost.default_price(f)) - cost.default_price(f)) > 1e-9)
key = (version, tuple(ids), prices)
n_points = int(data.runs.set_index("run_id").loc[ids, "n_points"].sum())
eager = n_points <= PREVIEW_POINTS or st.session_state.get("export_preview_for") == key


def _text(fmt: str) -> str:
    return _export(str(data.db), version, tuple(ids), fmt, prices)


def _bytes(fmt: str):
    """A download's bytes, built only when its button is clicked (the page stays fast on large selections)."""
    return lambda: _text(fmt).encode("utf-8")


markdown = None
if eager:
    try:
        markdown = _text("markdown")
    except BenchError as exc:
        st.error(str(exc))
        st.stop()

cli = ("python -m bench export --format markdown " + " ".join(f"--run {r}" for r in ids)
       + "".join(f" --usd-per-gpu-hour {f}={v:g}" for f, v in prices) + " --out report.md")
st.caption(f"{len(ids)} runs, {n_points:,} points. Each download has the same bytes as `{cli}` (with `--db "
           f"{ui_data.shown_path(data.db)}` or `BENCH_DB`; `--format csv` / `jsonl` / `html` for the others).")
c = st.columns(4)
c[0].download_button("Download markdown", markdown.encode("utf-8") if markdown is not None else _bytes("markdown"),
                     file_name="moe-bench-report.md", mime="text/markdown", key="dl_markdown", type="primary",
                     on_click="ignore")
c[1].download_button("Download CSV", _bytes("csv"), file_name="moe-bench-points.csv", mime="text/csv", key="dl_csv",
                     on_click="ignore", help="One row per point; built when you click")
c[2].download_button("Download JSONL", _bytes("jsonl"), file_name="moe-bench-runs.jsonl",
                     mime="application/x-ndjson", key="dl_jsonl", on_click="ignore",
                     help="One line per run with its points (the format `python -m bench import` reads); built when "
                          "you click")
c[3].download_button("Download HTML report", _bytes("html"), file_name="moe-bench-report.html", mime="text/html",
                     key="dl_html", on_click="ignore",
                     help="One self-contained file: interactive charts (plotly.js inlined, opens offline) and the "
                          "markdown's tables; built when you click")

if markdown is None:
    st.info(f"{n_points:,} points are selected, so the markdown preview is built on request (about a second per "
            "50,000 points); the download above builds it when clicked.")
    if st.button("Build the markdown preview", key="export_preview"):
        st.session_state["export_preview_for"] = key
        st.rerun()
    st.stop()

# only the open tab is rendered (on_change="rerun"): the source and the preview of a large selection each cost
# the browser a second or more (docs/PERF.md). The preview opens first: the source's code block loads Streamlit's
# 1.5 MB syntax highlighter, 0.3 s of a first (cold) view (docs/PERF.md)
tab_preview, tab_src = st.tabs(["Preview", MARKDOWN_TAB], key="export_tab", on_change="rerun")
if tab_src.open:
    tab_src.code(markdown, language="markdown")
if tab_preview.open:
    tab_preview.markdown(markdown)
