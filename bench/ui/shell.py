"""The app shell around every page: each page runs inside app.py's navigation (its sidebar, filters and page list).

Streamlit still has its old multipage mode for apps with a `pages/` folder beside the main script, and it picks the
mode on the first script run after the server starts: while `PagesManager.uses_pages_directory` is set (it is, at
start, because `pages/` exists), a run for a sub-page executes that page's script directly, and app.py (whose
`st.navigation` would clear the flag) never runs. A tab left open on /scaling that reconnects first after a restart
would leave every session of that server without the sidebar. `in_app_navigation()`, called first by every page,
clears the flag and reruns, so the same request is served through app.py.
"""

from __future__ import annotations

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
