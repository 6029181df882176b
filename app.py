"""moe-bench dashboard entry point: page navigation and the sidebar shared by every page.

Run with `make run` (or `streamlit run app.py`). The database is `$BENCH_DB`, else data/bench.duckdb.
"""

from __future__ import annotations

import streamlit as st

from bench.ui import data as ui_data
from bench.ui import warm

warm.start()  # slow imports (scipy.stats for History's verdict) once per process, off the first view
st.set_page_config(page_title="moe-bench", page_icon="📈", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/scaling.py", title="Scaling", icon=":material/show_chart:"),
    st.Page("pages/memory.py", title="Memory", icon=":material/memory:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/history.py", title="History", icon=":material/history:"),
    st.Page("pages/routing.py", title="Routing", icon=":material/hub:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/play_circle:"),
    st.Page("pages/export.py", title="Export", icon=":material/description:"),
]

page = st.navigation(PAGES)
ui_data.sidebar()
page.run()
