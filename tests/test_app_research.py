"""AppTest of the Routing page and Compare's quality views against a fixture database with two calibrations, a
pruned run's kept experts, quality figures and distinct-expert counts (tests/fixtures_db.py plus the rows here)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from bench import store
from bench.calibrated import expected_fingerprint
from bench.models.quality import QualityResult
from bench.models.routing_stats import RoutingStats
from bench.store import research as rstore
from tests.fixtures_db import build_fixture
from tests.test_app import figure, frame, open_page, traces

MODEL = "synthetic:gpt-oss-20b"
LAYERS, EXPERTS = 24, 32


def _counts(domain: int) -> list[list[int]]:
    """Domain 0 favours low expert indices, domain 1 high ones; layer l shifts the favourites by l."""
    return [[1 + ((e + li) % EXPERTS if domain == 0 else (EXPERTS - 1 - e + li) % EXPERTS) for e in range(EXPERTS)]
            for li in range(LAYERS)]


def add_research_rows(path: Path) -> None:
    fp = expected_fingerprint(MODEL, 0)
    for i, domain in enumerate(("code", "chat")):
        counts = _counts(i)
        stats = RoutingStats(tokens=sum(counts[0]) // 4, top_k=4, tokens_routed=counts,
                             weight_sum=[[0.25 * n for n in row] for row in counts],
                             saliency_sum=[[0.1 * n * n for n in row] for row in counts])
        rstore.save_calibration(path, rstore.CalibrationRow(
            calibration_id=f"c-{domain}", model=MODEL, model_fingerprint=fp, domain=domain, text_hash=f"h{i}",
            text_source=f"fixture {domain}", text_spec="builtin:code", tokenizer="byte-level (synthetic: UTF-8 byte "
            "mod vocab)", tokens=stats.tokens, budget=1000, layers=LAYERS, experts=EXPERTS, top_k=4, device="cuda",
            seconds=2.5), stats)
    kept = [sorted(range(16)) for _ in range(LAYERS)]
    store.update_run(path, "run-pruned16", kept_experts_json=json.dumps(kept), model_fingerprint=fp,
                     notes="kept the 16 most-routed experts per layer (routing frequency) from code (fixture)")
    store.update_run(path, "run-base4", model_fingerprint=fp)
    rstore.save_quality(path, "run-pruned16", [
        QualityResult("code", {"kl": 0.12, "top1_agreement": 0.8, "perplexity": 510.0, "base_perplexity": 500.0},
                      4096, 3.0, "byte-level"),
        QualityResult("chat", {"kl": 0.08, "top1_agreement": 0.9, "perplexity": 505.0, "base_perplexity": 500.0},
                      4096, 3.0, "byte-level")])
    rstore.save_quality(path, "run-base4", [
        QualityResult("code", {"kl": 0.0, "top1_agreement": 1.0, "perplexity": 500.0, "base_perplexity": 500.0},
                      4096, 2.0, "byte-level")])
    con = duckdb.connect(str(path))
    con.execute("UPDATE points SET distinct_experts = 32 * (1 - pow(1 - 4 / 32.0, batch)) * 0.8 "
                "WHERE run_id = 'run-base4' AND status = 'ok'")
    con.close()


@pytest.fixture(scope="module")
def research_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rfx") / "bench.duckdb"
    build_fixture(path)
    add_research_rows(path)
    return path


def test_routing_page_heatmaps_overlap_and_kept_experts(research_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(research_db, "pages/routing.py", monkeypatch)
    figs = [figure(at, i) for i in range(len(at.get("plotly_chart")))]
    heat = next(f for f in figs if "domain code" in f["layout"]["title"]["text"])
    z = heat["data"][0]["z"]
    assert len(z) == LAYERS and len(z[0]) == EXPERTS
    counts = _counts(0)
    assert z[3][5] == pytest.approx(counts[3][5] / sum(counts[3]))  # routing share: part of the layer's tokens
    assert sum(z[0]) == pytest.approx(1.0)
    # Jaccard of the two domains' top-16 sets per layer, from the fixture counts
    jac = next(t for f in figs for t in f["data"] if t["name"] in ("code vs chat", "chat vs code"))
    top = [[set(sorted(range(EXPERTS), key=lambda e, li=li, d=d: (-_counts(d)[li][e], e))[:16]) for li in
            range(LAYERS)] for d in (0, 1)]
    assert jac["y"] == pytest.approx([len(a & b) / len(a | b) for a, b in zip(top[0], top[1], strict=True)])
    # kept/dropped marks of the pruned run over the heatmap, and the note on how it was chosen
    at.selectbox(key="rt_run").set_value("run-pruned16").run()
    assert not at.exception
    marks = traces(figure(at, 0))
    assert len(marks["kept"]["x"]) == LAYERS * 16 and len(marks["dropped"]["x"]) == LAYERS * 16
    assert set(marks["dropped"]["x"]) == set(range(16, 32))
    assert any("most-routed experts" in c.value for c in at.caption)
    # distinct experts per step: measured beside the uniform formula
    dist = traces(figure(at, len(at.get("plotly_chart")) - 1))
    measured = next(t for n, t in dist.items() if n.endswith("measured"))
    uniform = next(t for n, t in dist.items() if n.endswith("uniform U"))
    assert uniform["y"][0] == pytest.approx(4.0)  # batch 1: k experts
    assert measured["y"][0] == pytest.approx(0.8 * 4.0)


def test_routing_page_without_calibrations_says_how_to_make_them(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "plain.duckdb"
    build_fixture(db)
    at = open_page(db, "pages/routing.py", monkeypatch)
    assert any("bench calibrate" in i.value for i in at.info)


def test_compare_puts_quality_beside_speed(research_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(research_db, "pages/compare.py", monkeypatch)
    at.select_slider(key="cmp_q_batch").set_value(4).run()
    table = frame(at, "kl", "top1_agreement", "speedup")
    row = table[table["label"].str.startswith("pruned16")].iloc[0]
    assert row["kl"] == pytest.approx(0.10) and row["top1_agreement"] == pytest.approx(0.85)
    assert row["ppl_delta"] == pytest.approx(7.5) and row["positions"] == 8192
    con = duckdb.connect(str(research_db), read_only=True)
    batch = int(at.select_slider(key="cmp_q_batch").value)
    med = dict(con.execute("SELECT run_id, median(total_tps) FROM points WHERE status = 'ok' AND batch = ? "
                           "GROUP BY run_id", [batch]).fetchall())
    con.close()
    assert row["speedup"] == pytest.approx(med["run-pruned16"] / med["run-base4"])
    assert bool(row["pareto"])  # faster than the base, which is closer: both on the front
    fig = figure(at, len(at.get("plotly_chart")) - 1)
    assert "Speed against quality" in fig["layout"]["title"]["text"]
    assert "Pareto front" in traces(fig)
    assert any("perplexity means nothing" in i.value for i in at.info)


def test_calibrate_from_the_routing_page_then_see_the_heatmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from bench.locks import pid_alive
    from bench.ui import launch as ui_launch
    from bench.ui import research_launch

    db = tmp_path / "cal.duckdb"
    text = tmp_path / "notes.txt"
    text.write_text("Experts route tokens; the router picks two of eight. " * 40)
    at = open_page(db, "pages/routing.py", monkeypatch)
    assert not db.exists()
    at.selectbox(key="rt_cal_model").set_value("synthetic:tiny-moe")
    at.multiselect(key="rt_cal_builtin").set_value([])
    at.text_area(key="rt_cal_extra").set_value(f"notes={text}")
    at.number_input(key="rt_cal_tokens").set_value(256)
    next(b for b in at.button if b.label == "Calibrate").click().run()
    assert not at.exception and any("Calibration started" in s.value for s in at.success)
    launch = research_launch.research_launches(db, "calibrate")[0]
    assert launch.argv[3:] == ["calibrate", "--model", "synthetic:tiny-moe", "--seed", "0", "--domain",
                               f"notes={text}", "--tokens", "256", "--db", str(db)]
    deadline = time.monotonic() + 600
    while ui_launch.exit_code(launch.pid) is None and time.monotonic() < deadline:
        if not pid_alive(launch.pid):  # exiting: /proc shows the leader as a zombie while its other threads end
            deadline = min(deadline, time.monotonic() + 10)  # the exit code follows within moments
        time.sleep(0.5)
    assert ui_launch.exit_code(launch.pid) == 0, ui_launch.log_tail(launch.log_path)
    at = open_page(db, "pages/routing.py", monkeypatch)
    figs = [figure(at, i) for i in range(len(at.get("plotly_chart")))]
    heat = next(f for f in figs if "domain notes" in f["layout"]["title"]["text"])
    assert sum(heat["data"][0]["z"][0]) == pytest.approx(1.0)
