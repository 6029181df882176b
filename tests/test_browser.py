"""One real-browser test: `streamlit run app.py` driven by Debian's chromium through playwright.

Two servers: one on the real default database (`python -m bench build-db`, what `make run` shows) loads every page,
checks that every plotly trace is drawn and takes the README screenshots into a temp folder (scripts/screenshots.py;
`make screenshots` writes docs/screenshots/, the tests never do);
one on a fixture database launches a tiny CPU sweep from the form and waits for it, reruns one variant, and
downloads the exports to compare them with `python -m bench export`. Skips when chromium is missing, unless
MOE_BENCH_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.analysis import labels
from bench.paths import PROJECT_ROOT
from bench.store import queries
from bench.ui import launch as ui_launch
from tests.fixtures_db import build_fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGES = ("overview", "scaling", "memory", "compare", "history", "routing", "runs", "export")
CHART_PAGES = {"overview": 1, "scaling": 2, "memory": 2, "compare": 1, "history": 1}  # page -> charts it draws at least


def _load_screenshots():
    spec = importlib.util.spec_from_file_location("moe_bench_screenshots", PROJECT_ROOT / "scripts" / "screenshots.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


shots = _load_screenshots()


def _chromium_or_skip() -> str:
    if Path(shots.CHROMIUM).exists():
        return shots.CHROMIUM
    if os.environ.get("MOE_BENCH_REQUIRE_BROWSER") == "1":
        pytest.fail("MOE_BENCH_REQUIRE_BROWSER=1 but no chromium found; `apt-get install -y chromium`")
    pytest.skip("chromium not installed (apt-get install -y chromium)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The dashboard on a fixture database; sweeps it launched are killed at the end."""
    _chromium_or_skip()
    db = tmp_path / "fx" / "bench.duckdb"
    db.parent.mkdir()
    build_fixture(db)
    try:
        with shots.serve(db, tmp_path / "streamlit.log") as url:
            yield url, db
    finally:
        for launch in ui_launch.launches(db):  # sweeps the dashboard started for this test
            try:
                if str(db) in Path(f"/proc/{launch.pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.killpg(launch.pid, signal.SIGKILL)
            except OSError:
                continue


_wait_idle = shots.wait_idle


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
    with sync_playwright() as pw:
        # a fresh profile: playwright passes it to chromium as --user-data-dir
        ctx = shots.launch_browser(pw, tmp_path / "chromium-profile")
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # 1. every page renders on the default database (no exception) in the README screenshots' states, into
            #    a temp folder (`make screenshots` writes docs/screenshots/; tests never touch tracked files); each
            #    chart page draws every trace of every chart
            default_db = shots.build_default_db(tmp_path)
            with shots.serve(default_db, tmp_path / "streamlit-default.log") as default_url:
                traces: dict[str, list[tuple[int, int]]] = {}
                written = shots.take_screenshots(ctx, default_url, default_db, tmp_path / "shots", traces=traces)
                assert [p.stem for p in written] == list(PAGES)
                assert all(p.stat().st_size < shots.MAX_PNG for p in written)
                assert set(traces) == set(CHART_PAGES), traces
                for name, charts in CHART_PAGES.items():
                    drawn = traces[name]
                    assert len(drawn) >= charts and all(e == d > 0 for e, d in drawn), (name, drawn)

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

            # 4. the markdown download equals the CLI's export of the same selection
            page.goto(f"{url}/export")
            _wait_idle(page)
            page.get_by_role("button", name="Download markdown").wait_for()
            ids = labels.export_default(queries.runs(db))  # one card and engine (issue 8, 5.5)
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


def test_shared_link_opens_the_same_selection(server: tuple[str, Path], tmp_path: Path) -> None:
    """A copied link (issue 13, shareable views): the page opens with the link's runs and metric, writes later
    changes back into the address bar, and that address opens the changed view in a fresh browser session."""
    from playwright.sync_api import sync_playwright

    url, _db = server
    with sync_playwright() as pw:
        ctx = shots.launch_browser(pw, tmp_path / "chromium-profile-link")
        try:
            page = ctx.new_page()
            page.goto(f"{url}/compare?cmp_base=run-base4&cmp_cands=run-pruned16&cmp_metric=per_stream_pct"
                      "&flt_cards=NVIDIA+H100+80GB+HBM3")
            _wait_idle(page)
            page.get_by_text("Change in per-stream tok/s against the base").first.wait_for(timeout=30_000)
            assert page.get_by_role("radio", name="per-stream tok/s").is_checked()
            cands = page.get_by_test_id("stMultiSelect").filter(has_text="Candidates")
            assert "pruned16_topk4" in cands.inner_text()
            assert "base_topk2" not in page.get_by_test_id("stMain").inner_text()  # the card filter of the link
            # a change goes into the address bar ...
            page.get_by_text("peak memory", exact=True).click()
            page.wait_for_function("() => location.search.includes('cmp_metric=mem_pct')", timeout=30_000)
            shared = page.url
            assert "cmp_base=run-base4" in shared and "cmp_cands=run-pruned16" in shared
            # ... and that address opens the same view in a new session
            other = ctx.new_page()
            other.goto(shared)
            _wait_idle(other)
            other.get_by_text("Change in peak memory against the base").first.wait_for(timeout=30_000)
            assert other.get_by_role("radio", name="peak memory").is_checked()
            # an unknown run id in a link is a notice, not an error
            other.goto(f"{url}/scaling?scaling_runs=run-pruned16&scaling_runs=no-such-run")
            _wait_idle(other)
            other.get_by_text("this database does not hold").first.wait_for(timeout=30_000)
            assert not other.get_by_test_id("stException").count()
        finally:
            ctx.close()
