"""Exports of issue 13 and issue 8 item 5.5: `--run NAME` shared by several runs takes the latest and says so,
labels are unique, the energy/cost section and CSV columns, the Export page's default never mixes cards or engines,
the self-contained HTML report (and that Chromium draws its plotly traces), and a chart's PNG download is a valid
PNG (kaleido with the system Chromium; skipped only when no browser exists, unless MOE_BENCH_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
import pytest

from bench.analysis import labels
from bench.paths import PROJECT_ROOT
from bench.report import export_selection
from bench.store import queries
from bench.ui import images
from tests.fixtures_views import build_views_fixture


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vx-export") / "bench.duckdb"
    build_views_fixture(path, "both")
    return path


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)


def _browser_or_skip() -> str:
    path = images.browser_path()
    if path:
        return path
    if os.environ.get("MOE_BENCH_REQUIRE_BROWSER") == "1":
        pytest.fail("MOE_BENCH_REQUIRE_BROWSER=1 but no Chrome/Chromium found; `apt-get install -y chromium`")
    pytest.skip("no Chrome/Chromium for kaleido (apt-get install -y chromium)")


def test_run_name_shared_by_several_runs_takes_the_latest(db: Path) -> None:
    p = _bench("export", "--db", str(db), "--run", "base_topk4", "pruned16_topk4")
    assert p.returncode == 0, p.stderr
    assert "--run base_topk4: 3 runs have that name; using the latest, hist-slow" in p.stderr
    assert "hist-noise" in p.stderr and "hist-old" in p.stderr  # the others are named, to pick by id
    summary = json.loads(p.stderr.strip().splitlines()[-1])
    assert summary["runs"] == 2
    assert "### base_topk4\n" in p.stdout and "### pruned16_topk4\n" in p.stdout


def test_labels_are_unique_with_the_whole_run_id(db: Path) -> None:
    text = export_selection(db, ["hist-old", "hist-noise", "hist-slow"], "markdown")
    heads = re.findall(r"^### (.*)$", text, flags=re.M)
    assert heads == ["base_topk4@hist-old", "base_topk4@hist-noise", "base_topk4@hist-slow"]


def test_energy_and_cost_in_markdown_and_csv(db: Path) -> None:
    md = export_selection(db, ["hist-old", "cpu-run"], "markdown", {"H100": 3.6})
    section = md.split("## Energy and cost", 1)[1].split("## Reproduce", 1)[0]
    assert "| base_topk4 | 4 | 0.5000 | H100 | 3.60 | 2.5000 |" in section
    assert "| cpu_topk4 | 1 | - | cpu | 0.20 |" in section  # no counter: '-', never 0
    rows = list(csv.DictReader(io.StringIO(export_selection(db, ["hist-old"], "csv", {"H100": 3.6}))))
    b4 = next(r for r in rows if r["batch"] == "4" and r["repeat"] == "1")
    assert float(b4["energy_j_per_token"]) == 0.5 and float(b4["usd_per_gpu_hour"]) == 3.6
    assert abs(float(b4["usd_per_mtok"]) - 2.5) < 1e-12
    # the reference report (no energy, no price given) keeps its format: no extra section
    ref = PROJECT_ROOT / "data" / "reports" / "union-prunes-20b-decode-report.md"
    assert "## Energy and cost" not in ref.read_text()
    p = _bench("export", "--db", str(db), "--run", "cpu-run")
    assert p.returncode == 0 and "## Energy and cost" not in p.stdout
    bad = _bench("export", "--db", str(db), "--usd-per-gpu-hour", "H100=cheap")
    assert bad.returncode == 2 and "--usd-per-gpu-hour H100=cheap" in bad.stderr


def test_export_default_never_mixes_cards_or_engines(db: Path) -> None:
    runs = queries.runs(db)
    picked = labels.export_default(runs)
    setups = {(r.device_name, r.engine) for r in runs.set_index("run_id").loc[picked].itertuples()}
    assert len(setups) == 1 and picked  # the fixture holds H100/graph runs and a CPU/hf run
    assert "cpu-run" not in picked


def test_html_report_is_self_contained(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    p = _bench("export", "--db", str(db), "--format", "html", "--run", "hist-old", "pruned", "--out", str(out))
    assert p.returncode == 0, p.stderr
    html = out.read_text()
    assert html.count("<script") >= 3 and not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js inlined
    assert "Plotly.newPlot" in html and html.count('class="chart"') == 3
    md = export_selection(db, ["hist-old", "pruned"], "markdown")
    assert "<th class=num>total tok/s @max</th>" in html and "<td>pruned16_topk4</td>" in html
    assert md.count("\n|") - md.count("\n|---") == html.count("<tr>")  # every table row of the markdown
    assert export_selection(db, ["hist-old", "pruned"], "html") == html


@pytest.mark.browser
def test_html_report_draws_its_traces_in_chromium(db: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = _browser_or_skip()
    out = tmp_path / "report.html"
    out.write_text(export_selection(db, ["hist-old", "pruned"], "html"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=30_000)
            drawn = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].map("
                                  "d => d.querySelectorAll('.scatterlayer .trace').length)")
            assert len(drawn) == 3 and all(n >= 2 for n in drawn), drawn
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.browser
def test_chart_png_download_is_a_valid_png() -> None:
    _browser_or_skip()
    fig = go.Figure(go.Scatter(x=[1, 2, 4], y=[10.0, 19.0, 35.0], name="run"))
    fig.update_layout(title="tok/s", height=400)
    png = images.to_image(fig, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (images.WIDTH * images.SCALE, 400 * images.SCALE)
    svg = images.to_image(fig, "svg")
    assert svg.lstrip().startswith(b"<svg") and b"tok/s" in svg


def test_no_browser_means_a_message_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    assert images.browser_path() is None and not images.available()
    with pytest.raises(images.ImageExportUnavailable, match="apt-get install -y chromium"):
        images.to_image(go.Figure(), "png")
