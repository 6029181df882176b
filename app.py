"""moe-bench dashboard entry point: page navigation and the sidebar shared by every page.

Run with `make run` (or `streamlit run app.py`). The database is `$BENCH_DB`, else data/bench.duckdb.
"""

from __future__ import annotations

import streamlit as st

from bench import ui_data

st.set_page_config(page_title="moe-bench", page_icon="📈", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon="🏠", default=True),
    st.Page("pages/scaling.py", title="Scaling", icon="📈"),
    st.Page("pages/memory.py", title="Memory", icon="🧠"),
    st.Page("pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/runs.py", title="Runs", icon="🚀"),
    st.Page("pages/export.py", title="Export", icon="📄"),
]

page = st.navigation(PAGES)
ui_data.sidebar()
page.run()
