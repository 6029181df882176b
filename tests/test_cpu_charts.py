"""Charts of CPU runs (issue 8 §5.4): roofline ceilings far above the measured values are hidden by default on
Scaling and Overview, and a log y axis is offered. AppTest on a database with one CPU-like run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bench import store
from bench.paths import PROJECT_ROOT
from bench.records import EnvFingerprint, PointRecord, RunRecord, SweepRecord
from bench.ui import charts as ui_charts

APP = str(PROJECT_ROOT / "app.py")
TPS = {1: 25.0, 2: 48.0, 4: 90.0}
CEILING = {1: 40_000.0, 2: 80_000.0, 4: 120_000.0}


@pytest.fixture(scope="module")
def cpu_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("cpu") / "bench.duckdb"
    t = datetime(2026, 1, 5, tzinfo=UTC)
    store.insert_sweep(db, SweepRecord(sweep_id="cpu-sweep", title="cpu sweep", spec_json="{}", state="done",
                                       points_planned=3, points_done=3, created_at=t, started_at=t, finished_at=t))
    store.insert_run(db, RunRecord(
        run_id="run-cpu", sweep_id="cpu-sweep", name="base_topk2", model="synthetic:tiny-moe", top_k=2, engine="hf",
        dtype="float32", device="cpu", prompt_len=16, new_tokens=12, repeats=1, seed=0, experts=8, base_experts=8,
        env=EnvFingerprint(device_name="cpu", device_kind="cpu", torch="2.13.0"), state="done", source="measured",
        started_at=t, finished_at=t))
    for b, tps in TPS.items():
        store.insert_point(db, PointRecord(run_id="run-cpu", batch=b, repeat=0, status="ok", total_tps=tps,
                                           per_stream_tps=tps / b, ceiling_tps=CEILING[b], mbu=tps / CEILING[b]))
    return db


def open_page(db: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("BENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    if page != "pages/overview.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def names(at: AppTest, i: int) -> list[str]:
    return [t["name"] for t in json.loads(at.get("plotly_chart")[i].proto.spec)["data"]]


def test_ceiling_ratio() -> None:
    import pandas as pd

    frame = pd.DataFrame({"total_tps": list(TPS.values()), "ceiling_tps": list(CEILING.values())})
    assert ui_charts.ceiling_ratio(frame) == pytest.approx(40_000 / 25)  # the median of 1600, 1667, 1333
    assert ui_charts.ceilings_dwarf(frame)
    assert not ui_charts.ceilings_dwarf(frame.assign(ceiling_tps=frame["total_tps"] * 3))


def test_scaling_hides_dwarfing_ceilings_and_offers_log_axis(cpu_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(cpu_db, "pages/scaling.py", monkeypatch)
    assert names(at, 0) == ["base_topk2"]  # no ceiling trace, no ceiling legend entry
    assert any("ceilings hidden" in c.value and "1,600×" in c.value for c in at.caption)
    total = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert total["data"][0]["y"] == [25.0, 48.0, 90.0]
    assert total["layout"]["yaxis"].get("type") != "log"
    at.toggle(key="scaling_log_y").set_value(True).run()
    for i in (0, 1):
        fig = json.loads(at.get("plotly_chart")[i].proto.spec)
        assert fig["layout"]["yaxis"]["type"] == "log" and "log scale" in fig["layout"]["yaxis"]["title"]["text"]
    at.toggle(key="scaling_ceiling_True").set_value(True).run()
    assert names(at, 0) == ["base_topk2", "base_topk2 ceiling", "roofline ceiling (dashed, run colour)"]
    ceiling = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][1]
    assert ceiling["y"] == [40_000.0, 80_000.0, 120_000.0]


def test_overview_headline_without_dwarfing_ceiling(cpu_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(cpu_db, "pages/overview.py", monkeypatch)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["type"] for t in fig["data"]] == ["bar"] and fig["data"][0]["y"] == [90.0]
    assert any("Roofline ceilings not drawn" in c.value for c in at.caption)
