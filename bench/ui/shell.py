"""The app shell around every page: each page runs inside app.py's navigation (its sidebar, filters and page list).

Streamlit still has its old multipage mode for apps with a `pages/` folder beside the main script, and it picks the
mode on the first script run after the server starts: while `PagesManager.uses_pages_directory` is set (it is, at
start, because `pages/` exists), a run for a sub-page executes that page's script directly, and app.py (whose
`st.navigation` would clear the flag) never runs. A tab left open on /scaling that reconnects first after a restart
would leave every session of that server without the sidebar. `in_app_navigation()`, called first by every page,
clears the flag and reruns, so the same request is served through app.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

_SEEN = "_shell_seen"  # session-state marker: this session has run a page before


def in_app_navigation() -> None:
    """Rerun through app.py when Streamlit ran this page as an old-style `pages/` script (see the module doc).

    Only on a session's first run: the server-wide flag is what goes wrong, and that first run clears it for every
    session. A rerun on later runs would also drop the widget event that caused them (a button's click); AppTest,
    which sets the flag again before every run, relies on that.
    """
    first = _SEEN not in st.session_state
    st.session_state[_SEEN] = True
    if first and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


# Streamlit imports its plotly.js chunk (static/js/PlotlyChart.<hash>.js, 4.7 MB) only when the first chart element
# is rendered, i.e. after the page's title, widgets and data: its fetch, parse and evaluation (0.8-1 s on the 2-core
# VM, docs/PERF.md) then start late and delay the first chart. A page that will draw charts asks for the chunk at its
# start; the browser fetches and parses it off the main thread while the script runs, and the chart element finds
# the module already loaded (same URL: one module instance).
_PRELOAD = """<script>(() => {{
  const main = document.querySelector('script[type="module"][src*="/static/js/index."]');
  if (main) import(new URL("{chunk}", main.src).href).catch(() => {{}});
}})();</script>"""


def plotly_chunk() -> str | None:
    """The file name of Streamlit's plotly.js chunk in its static folder, or None (another Streamlit build)."""
    import streamlit

    found = sorted((Path(streamlit.__file__).parent / "static" / "static" / "js").glob("PlotlyChart.*.js"))
    return found[0].name if len(found) == 1 else None


def preload_charts() -> None:
    """Start loading plotly.js in the browser now (see `_PRELOAD`): a script at the end of the sidebar (it draws
    nothing). Pages call it once they know they will draw a chart; without the chunk file it does nothing."""
    chunk = _chunk_name()
    if chunk:
        st.sidebar.html(_PRELOAD.format(chunk=chunk), unsafe_allow_javascript=True)


@functools.cache
def _chunk_name() -> str | None:
    return plotly_chunk()
