"""Shareable views: a page's selections (runs, filters, metric, batch, prices) live in the URL's query parameters.

Each selection has a session-state key; its query parameter has the same name. On the first run of a session
(a link just opened, or a reload) `seed_*` copies the URL's values into session state, before the widget is drawn;
after the widgets, `publish` writes the current values back, so the address bar always holds the view and a copied
link opens it. Run ids in a link that the database does not hold are dropped with a notice (`unknown_notice`),
never an error. Streamlit only: no SQL here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import streamlit as st

_SEEDED = "_share_seeded"


def _first_time(key: str) -> bool:
    seeded = st.session_state.setdefault(_SEEDED, set())
    if key in seeded:
        return False
    seeded.add(key)
    return True


def pending(key: str) -> bool:
    """True while the URL holds `key` and this session has not seeded it yet (the run that opens a link)."""
    return key in st.query_params and key not in st.session_state.get(_SEEDED, set())


def seed_list(key: str, valid: Iterable[str] | None = None) -> list[str]:
    """Seed `st.session_state[key]` (a list) from the URL once per session; return the values not in `valid`."""
    if not _first_time(key) or key not in st.query_params:
        return []
    values = [v for v in st.query_params.get_all(key) if v != ""]
    if valid is not None:
        ok = set(valid)
        unknown = [v for v in values if v not in ok]
        values = [v for v in values if v in ok]
    else:
        unknown = []
    st.session_state[key] = values
    return unknown


def seed_value(key: str, valid: Iterable[Any] | None = None, cast: Callable[[str], Any] = str) -> str | None:
    """Seed one value from the URL once per session; return the raw value when it is not valid (else None)."""
    if not _first_time(key) or key not in st.query_params:
        return None
    raw = st.query_params.get(key)
    try:
        value = cast(raw)
    except (TypeError, ValueError):
        return raw
    if valid is not None and value not in set(valid):
        return raw
    st.session_state[key] = value
    return None


def publish(values: dict[str, Any]) -> None:
    """Write selections to the URL (lists as repeated parameters; None or [] removes the parameter)."""
    for key, value in values.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            if key in st.query_params:
                del st.query_params[key]
            continue
        new = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
        old = st.query_params.get_all(key) if isinstance(new, list) else st.query_params.get(key)
        if old != new:
            st.query_params[key] = new


def unknown_notice(what: str, unknown: list[str]) -> None:
    """A notice (not an error) for ids in a shared link that this database does not hold."""
    if unknown:
        st.warning(f"The link names {what} this database does not hold: {', '.join(f'`{u}`' for u in unknown)}. "
                   "They were left out; the rest of the view is shown.", icon=":material/link_off:")
