"""Charts out as PNG and SVG: plotly's kaleido (1.x) renders them in a system Chrome/Chromium.

kaleido 1.x drives a browser through `choreographer`, which takes the executable from `BROWSER_PATH` (else searches
PATH for chrome/chromium names). `browser_path()` finds one — `BROWSER_PATH`, then chromium, chromium-browser,
google-chrome(-stable), chrome on PATH — and exports it as `BROWSER_PATH` for kaleido. Without one, PNG/SVG are
unavailable with a message saying how to get them; markdown, CSV, JSONL and HTML exports never need a browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import plotly.graph_objects as go

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
NO_BROWSER = ("PNG/SVG downloads need Chrome or Chromium for plotly's kaleido (`apt-get install -y chromium`, or "
              "set `BROWSER_PATH` to a Chrome executable). Markdown, CSV, JSONL and HTML exports work without it.")
WIDTH, HEIGHT, SCALE = 1100, 520, 2


class ImageExportUnavailable(RuntimeError):
    """No browser for kaleido, or kaleido is not installed."""


def browser_path() -> str | None:
    """The Chrome/Chromium kaleido will use, or None."""
    env = os.environ.get("BROWSER_PATH")
    if env and os.access(env, os.X_OK):
        return env
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def available() -> bool:
    if browser_path() is None:
        return False
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def to_image(fig: go.Figure, fmt: str) -> bytes:
    """`fig` as PNG (2× scale) or SVG bytes. Raises ImageExportUnavailable without a browser or kaleido."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"format {fmt!r}: use png or svg")
    path = browser_path()
    if path is None:
        raise ImageExportUnavailable(NO_BROWSER)
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise ImageExportUnavailable("kaleido is not installed: `pip install -r requirements.txt`") from exc
    os.environ["BROWSER_PATH"] = path
    height = fig.layout.height or HEIGHT
    return fig.to_image(format=fmt, width=WIDTH, height=height, scale=SCALE if fmt == "png" else 1)


def downloads(fig: go.Figure, name: str, key: str) -> None:
    """PNG and SVG download buttons for one chart (the image is built only when its button is clicked), or a note
    when no browser exists. The popover's content is sent only while it is open (`on_change="rerun"`): closed, it
    is one button, which saved the browser 0.1-0.5 CPU-s per chart on every page view (docs/PERF.md)."""
    import streamlit as st

    box = st.popover("Download chart", icon=":material/download:", key=key, on_change="rerun")
    if not box.open:
        return
    with box:
        if not available():
            st.caption(NO_BROWSER)
            return

        def _lazy(fmt: str) -> Callable[[], bytes]:
            return lambda: to_image(fig, fmt)

        st.download_button("PNG", _lazy("png"), file_name=f"{name}.png", mime="image/png", key=f"{key}_png",
                           on_click="ignore", help="Rendered by plotly's kaleido when clicked (a few seconds)")
        st.download_button("SVG", _lazy("svg"), file_name=f"{name}.svg", mime="image/svg+xml", key=f"{key}_svg",
                           on_click="ignore")
