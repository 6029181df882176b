"""One real-browser test: `streamlit run app.py` driven by Debian's chromium through playwright.

Loads every page (plotly traces must render), launches a tiny CPU sweep from the form and waits for it, reruns one
variant, downloads the markdown export and compares it with `python -m bench export`, and saves a screenshot of
each page to docs/screenshots/<page>.png. Skips when chromium is missing, unless MOE_BENCH_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import queries, ui_launch
from bench.paths import PROJECT_ROOT
from tests.fixtures_db import build_fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = PROJECT_ROOT / "docs" / "screenshots"
PAGES = {"overview": "", "scaling": "scaling", "memory": "memory", "compare": "compare", "runs": "runs",
         "export": "export"}
CHART_PAGES = {"overview", "scaling", "memory", "compare"}
MAX_PNG = 300_000


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("MOE_BENCH_REQUIRE_BROWSER") == "1":
        pytest.fail("MOE_BENCH_REQUIRE_BROWSER=1 but no chromium found; `apt-get install -y chromium`")
    pytest.skip("chromium not installed (apt-get install -y chromium)")


def _default_data(db: Path) -> None:
    """What `make run` shows (the reference report and data/results/*.jsonl); the fixture if those don't import."""
    from bench.errors import BenchError
    from bench.paths import REPORTS_DIR, RESULTS_DIR
    from bench.report import import_files

    files = sorted(REPORTS_DIR.glob("*.md")) + sorted(RESULTS_DIR.glob("*.jsonl"))
    try:
        import_files(db, files)
        return
    except BenchError as exc:
        print(f"default data did not import ({exc}); using the fixture database")
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    build_fixture(db)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    _chromium_or_skip()
    if not (PROJECT_ROOT / "bench" / "runner.py").exists():
        pytest.skip("bench/runner.py not built yet")
    db = tmp_path / "bench.duckdb"
    _default_data(db)
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115  (closed in the teardown below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=PROJECT_ROOT, env=dict(os.environ, BENCH_DB=str(db)), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text())
            time.sleep(0.3)
        yield url, db
    finally:
        for launch in ui_launch.launches(db):  # sweeps the dashboard started for this test
            try:
                if str(db) in Path(f"/proc/{launch.pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.killpg(launch.pid, signal.SIGKILL)
            except OSError:
                continue
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def _wait_idle(page, timeout_ms: int = 30_000) -> None:
    """Wait until the app has drawn and is not running a script."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout_ms)


def _newest_launch(db: Path, not_in: set[str]) -> ui_launch.Launch:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fresh = [launch for launch in ui_launch.launches(db) if launch.sweep_id not in not_in]
        if fresh:
            return fresh[0]
        time.sleep(0.5)
    raise AssertionError("the dashboard launched nothing")


def _wait_done(page, db: Path, sweep_id: str, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    row = None
    while time.monotonic() < deadline:
        row = queries.sweep(db, sweep_id) if db.exists() else None
        if row and row["shown_state"] in ("done", "failed", "crashed", "cancelled"):
            break
        time.sleep(1.0)
    log = ui_launch.log_tail(str(db.parent / (db.stem + ".logs") / f"{sweep_id}.log"), 40)
    assert row and row["shown_state"] == "done", f"{row}\n{log}"
    # the page's live panel (a fragment polling every 2 s) shows the final state too
    page.get_by_text(re.compile(rf"{re.escape(sweep_id)}.*state done")).first.wait_for(timeout=30_000)


def test_dashboard_in_chromium(server: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, db = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # a fresh profile: playwright passes it to chromium as --user-data-dir
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=_chromium_or_skip(), headless=True,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
            viewport={"width": 1280, "height": 860}, accept_downloads=True)
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # 1. every page renders; chart pages draw plotly traces
            for name, path in PAGES.items():
                page.goto(f"{url}/{path}")
                _wait_idle(page)
                if name in CHART_PAGES:
                    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
                    n_traces = page.locator(".js-plotly-plot g.trace").count()
                    assert n_traces > 0, f"{name}: no plotly traces drawn"
                assert page.locator('[data-testid="stException"]').count() == 0, name
                page.screenshot(path=str(SHOTS / f"{name}.png"))
                assert (SHOTS / f"{name}.png").stat().st_size < MAX_PNG, f"{name}.png is too large"
            assert not errors, errors

            # 2. launch a tiny CPU sweep from the form and wait for it
            page.goto(f"{url}/runs")
            _wait_idle(page)
            page.get_by_text("No GPU found").first.wait_for()
            page.get_by_text("Fill in the fields").click()
            page.get_by_label("Batch sizes").fill("1")
            page.get_by_label("Repeats").fill("1")
            page.get_by_label("New tokens").fill("4")
            page.get_by_role("button", name="Launch sweep").click()
            launch = _newest_launch(db, set())
            _wait_done(page, db, launch.sweep_id)
            sweep_runs = [r for r in queries.runs(db).to_dict("records") if r["sweep_id"] == launch.sweep_id]
            assert {r["name"] for r in sweep_runs} == {"base_topk2", "half_topk2", "half_topk1"}
            assert all(r["n_ok"] == 1 for r in sweep_runs)

            # 3. rerun one variant with its button (the run list shows the newest sweep)
            page.reload()
            _wait_idle(page)
            page.get_by_role("button", name="Rerun").first.click()
            rerun = _newest_launch(db, {launch.sweep_id})
            assert rerun.kind == "rerun"
            _wait_done(page, db, rerun.sweep_id)
            again = [r for r in queries.runs(db).to_dict("records") if r["sweep_id"] == rerun.sweep_id]
            assert len(again) == 1 and again[0]["rerun_of"] in {r["run_id"] for r in sweep_runs}
            page.get_by_role("heading", name="Runs").first.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "runs.png"))
            assert (SHOTS / "runs.png").stat().st_size < MAX_PNG

            # 4. the markdown download equals the CLI's export of the same selection
            page.goto(f"{url}/export")
            _wait_idle(page)
            page.get_by_role("button", name="Download markdown").wait_for()
            ids = queries.default_runs(queries.runs(db))
            for fmt, button in (("markdown", "Download markdown"), ("csv", "Download CSV"),
                                ("jsonl", "Download JSONL")):
                with page.expect_download() as dl:
                    page.get_by_role("button", name=button).click()
                downloaded = Path(dl.value.path()).read_bytes()
                cli = subprocess.run([sys.executable, "-m", "bench", "export", "--db", str(db), "--format", fmt,
                                      "--run", *ids], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
                assert downloaded == cli, fmt
                assert b"half_topk1" in downloaded, fmt
            assert not errors, errors
        finally:
            ctx.close()
