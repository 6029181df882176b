"""Screenshots of every dashboard page on the real default database, for the README and docs/screenshots/.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--db FILE]

Without --db it builds the default database (`python -m bench build-db`: the reference report and the committed
GPU results in data/) in a fresh temp folder, starts `streamlit run app.py` on it, and drives Debian's chromium
through playwright into page states that tell the story (graph-engine union prunes on Scaling, base_topk4 vs
union50_topk4 on Compare, the GiB saved on Memory). It waits for the web fonts (the material icons of the
navigation) before each shot. `make screenshots` runs it; tests never write docs/screenshots/ (tests/test_browser.py
calls `take_screenshots` into a temp folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store import queries  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 860}
MAX_PNG = 300_000
# The graph-engine union-prunes sweep: the story the screenshots tell.
STORY_ENGINE = "graph"
STORY_NAMES = ("base_topk4", "base_topk2", "union50_topk4", "union50_topk2", "unionAgg_topk2")


def build_default_db(folder: Path) -> Path:
    """`python -m bench build-db` into `folder`/bench.duckdb (what `make run` shows on a fresh clone)."""
    db = folder / "bench.duckdb"
    subprocess.run([sys.executable, "-m", "bench", "build-db", "--db", str(db)], cwd=ROOT, check=True,
                   capture_output=True)
    return db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(db: Path | None, log_path: Path, timeout_s: float = 60, app: Path | None = None,
          watcher: str = "none", pids: list[int] | None = None) -> Iterator[str]:
    """`streamlit run app.py` on `db` (BENCH_DB) at a free local port; yields its URL, stops it on exit.

    `app`: another Streamlit script to serve instead (run from its own folder; scripts/pageload.py times an empty
    page with it). `watcher`: Streamlit's server.fileWatcherType. `pids` receives the server's pid."""
    port = free_port()
    env = dict(os.environ, BENCH_DB=str(db)) if db is not None else dict(os.environ)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(app or "app.py"), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", watcher],
            cwd=app.parent if app else ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        if pids is not None:
            pids.append(proc.pid)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().decode().strip() == "ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start:\n" + log_path.read_text(errors="replace"))
                time.sleep(0.3)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def wait_idle(page, timeout_ms: int = 90_000) -> None:
    """Wait until the app has drawn its title and is not running a script."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout_ms)


def settle(page, charts: bool = False) -> None:
    """Let the page finish: the script idle, web fonts loaded (else icons draw as empty boxes), charts drawn."""
    wait_idle(page)
    with contextlib.suppress(Exception):
        page.wait_for_load_state("networkidle", timeout=10_000)
    page.evaluate("document.fonts.ready.then(() => true)")
    page.wait_for_function(
        "() => [...document.fonts].every(f => f.status !== 'loading')", timeout=15_000)
    if charts:
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
    page.wait_for_timeout(600)  # plotly's and streamlit's enter transitions


TRACES_JS = """() => [...document.querySelectorAll('[data-testid="stMainBlockContainer"] .js-plotly-plot')].map(gd => [
  (gd.data || []).filter(t => t.visible !== false && t.visible !== 'legendonly').length,
  gd._fullLayout ? gd.querySelectorAll('g.trace').length : 0])"""


def chart_traces(page) -> list[tuple[int, int]]:
    """(visible traces in the figure data, trace groups drawn) for every plotly chart of the page."""
    return [tuple(x) for x in page.evaluate(TRACES_JS)]


def wait_traces(page, charts: int, timeout_ms: int = 30_000) -> list[tuple[int, int]]:
    """Wait until the page shows at least `charts` charts and every trace of every chart is drawn."""
    page.wait_for_function(
        f"(n) => {{ const c = ({TRACES_JS})(); return c.length >= n && c.every(([e, d]) => e > 0 && e === d); }}",
        arg=charts, timeout=timeout_ms)
    return chart_traces(page)


def _widget(page, testid: str, label: str):
    return page.locator(f'[data-testid="{testid}"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=label)).first


def set_multiselect(page, label: str, options: list[str]) -> None:
    """Replace a multiselect's choices with `options` (exact option labels), as a user would."""
    box = _widget(page, "stMultiSelect", label)
    clear = box.get_by_role("button", name="Clear all")
    if clear.count():
        clear.first.click()
        wait_idle(page)
    for option in options:
        box.locator("input").first.click()
        page.get_by_role("option", name=option, exact=True).first.click()
        wait_idle(page)
    page.keyboard.press("Escape")
    wait_idle(page)


def set_selectbox(page, label: str, option: str) -> None:
    box = _widget(page, "stSelectbox", label)
    box.locator("input").first.click()
    page.get_by_role("option", name=option, exact=True).first.click()
    wait_idle(page)


def _shot(page, out: Path, name: str, full: bool = False, charts: bool = False,
          traces: dict[str, list[tuple[int, int]]] | None = None) -> Path:
    """Save `name`.png after checking the page drew no exception (and, for chart pages, every plotly trace: the
    (expected, drawn) counts per chart go into `traces[name]` when a dict is given)."""
    exc = page.locator('[data-testid="stException"]')
    if exc.count():
        raise RuntimeError(f"{name}: the page shows an exception: {exc.first.inner_text()}")
    if charts:
        with contextlib.suppress(Exception):
            wait_traces(page, 1)
        drawn = chart_traces(page)
        if not drawn or any(e != d or e == 0 for e, d in drawn):
            raise RuntimeError(f"{name}: plotly traces not all drawn (expected, drawn per chart): {drawn}")
        if traces is not None:
            traces[name] = drawn
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    if path.stat().st_size >= MAX_PNG:
        raise RuntimeError(f"{path} is {path.stat().st_size} bytes (limit {MAX_PNG})")
    return path


def _to_top(locator, offset: int = 24) -> None:
    """Scroll so that `locator` sits `offset` px below the top of the viewport."""
    locator.evaluate("(e, off) => { e.scrollIntoView({block: 'start'}); "
                     "const m = document.querySelector('[data-testid=\"stMain\"]'); if (m) m.scrollBy(0, -off); "
                     "window.scrollBy(0, -off); }", offset)


def story_labels(db: Path) -> dict[str, str]:
    """Variant name -> label of the newest graph-engine run with that name (the union-prunes graph sweep)."""
    runs = queries.runs(db)
    runs = runs[(runs["engine"] == STORY_ENGINE) & (runs["n_ok"] > 0) & runs["name"].isin(STORY_NAMES)]
    latest = runs.drop_duplicates("name", keep="first")  # runs() is newest first
    return dict(zip(latest["name"], latest["label"], strict=True))


def take_screenshots(ctx, url: str, db: Path, out: Path,
                     traces: dict[str, list[tuple[int, int]]] | None = None) -> list[Path]:
    """One PNG per page under `out`, in the states the README describes. Returns the files written; `traces`
    (when given) receives each chart page's (expected, drawn) trace counts per chart."""
    out.mkdir(parents=True, exist_ok=True)
    labels = story_labels(db)
    story = [labels[n] for n in STORY_NAMES if n in labels]
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    written = []
    try:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": 1100})  # the README image: counts + headline
        page.goto(url)
        settle(page, charts=True)
        written.append(_shot(page, out, "overview", charts=True, traces=traces))
        page.set_viewport_size(VIEWPORT)

        page.goto(f"{url}/scaling")
        settle(page, charts=True)
        if story:
            set_multiselect(page, "Runs", story)
            settle(page, charts=True)
        page.set_viewport_size({"width": VIEWPORT["width"], "height": 1300})  # both charts: total and per-stream
        _to_top(page.locator(".js-plotly-plot").first, offset=150)
        settle(page, charts=True)
        written.append(_shot(page, out, "scaling", charts=True, traces=traces))
        page.set_viewport_size(VIEWPORT)

        page.goto(f"{url}/memory")
        settle(page, charts=True)
        if story:
            set_multiselect(page, "Runs", story)
            settle(page, charts=True)
        _to_top(page.get_by_role("heading", name="Memory saved by pruning").first)
        settle(page, charts=True)
        written.append(_shot(page, out, "memory", charts=True, traces=traces))

        page.goto(f"{url}/compare")
        settle(page, charts=True)
        if "base_topk4" in labels and "union50_topk4" in labels:
            set_selectbox(page, "Base", labels["base_topk4"])
            set_multiselect(page, "Candidates", [labels["union50_topk4"]])
            settle(page, charts=True)
        written.append(_shot(page, out, "compare", charts=True, traces=traces))

        page.goto(f"{url}/history")  # default: the variant with the most runs, its newest run against the one before
        settle(page, charts=True)
        written.append(_shot(page, out, "history", charts=True, traces=traces))

        page.goto(f"{url}/routing")  # heatmaps when the database holds calibrations (bench calibrate)
        settle(page)
        written.append(_shot(page, out, "routing"))

        page.goto(f"{url}/runs")
        settle(page)
        page.get_by_text("Fill in the fields").first.click()
        settle(page)
        _to_top(page.get_by_role("heading", name="New sweep").first)
        settle(page)
        written.append(_shot(page, out, "runs"))

        page.goto(f"{url}/export")
        settle(page)
        written.append(_shot(page, out, "export"))
    finally:
        page.close()
    if errors:
        raise RuntimeError(f"javascript errors in the dashboard: {errors}")
    return written


def launch_browser(pw, profile: Path):
    ctx = pw.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT,
        accept_downloads=True)
    # clicks and waits without their own timeout: 90 s, like wait_idle (playwright's 30 s default is too short when
    # `make test` runs a sweep on the other core of a 2-core box)
    ctx.set_default_timeout(90_000)
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--db", type=Path, help="an existing database (default: build the default one in a temp folder)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print("chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="moe-bench-") as tmp:
        folder = Path(tmp)
        db = args.db or build_default_db(folder)
        t0 = time.monotonic()
        with serve(db, folder / "streamlit.log") as url, sync_playwright() as pw:
            ctx = launch_browser(pw, folder / "profile")
            try:
                files = take_screenshots(ctx, url, db, args.out)
            finally:
                ctx.close()
    print(json.dumps({"ok": True, "files": [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f)
                                             for f in files], "seconds": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
