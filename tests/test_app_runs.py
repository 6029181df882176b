"""The Runs page under AppTest with the real bench: launch a tiny CPU sweep (graph engine) from the form and see its
points on the Scaling page; live progress in a second session; Cancel; a killed sweep shows as crashed. (The form's
default engine, hf, is launched from the form in real Chromium: tests/test_browser.py.)"""

from __future__ import annotations

import json
import os
import signal
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bench.store import queries
from tests.test_app import open_page

pytestmark = [pytest.mark.slow]
FINAL = ("done", "failed", "crashed", "cancelled")


@pytest.fixture(autouse=True)
def _stop_launched(tmp_path: Path):
    """Whatever a test launched beside its database is stopped when the test ends, pass or fail."""
    yield
    from bench.ui import launch as ui_launch

    for launch in ui_launch.launches(tmp_path / "bench.duckdb"):
        try:  # only our own bench process (its command line names this test's database)
            if str(tmp_path) in Path(f"/proc/{launch.pid}/cmdline").read_bytes().decode(errors="replace"):
                os.killpg(launch.pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def runs_page(db: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return open_page(db, "pages/runs.py", monkeypatch, timeout=60)


def by_label(elements, label: str):
    for e in elements:
        if e.label == label:
            return e
    raise AssertionError(f"no element labelled {label!r}")


def wait_for(db: Path, sweep_id: str, states: tuple[str, ...], at: AppTest | None = None, timeout: float = 400):
    """Poll the sweep row (ticking the page's progress fragment with at.run()) until its shown state is in states."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        if at is not None:
            at.run()
            assert not at.exception, [e.value for e in at.exception]
        row = queries.sweep(db, sweep_id) if db.exists() else None
        if row and row["shown_state"] in states:
            return row
        time.sleep(0.5)
    log = Path(db.parent / (db.stem + ".logs") / f"{sweep_id}.log")
    raise AssertionError(f"sweep {sweep_id} never reached {states}: {row}\n{log.read_text() if log.exists() else ''}")


def panel_text(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.code)


def test_launch_graph_from_fields_form_then_points_on_scaling(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The form offers every engine and device (CPU preselected on this GPU-less box); one launch of the `graph`
    engine (no CUDA-graph capture on CPU) shows live progress, ends done with every point, and its lines appear on
    the Scaling page."""
    from bench.spec import DEVICES, ENGINE_NAMES

    db = tmp_path / "bench.duckdb"
    at = runs_page(db, monkeypatch)
    assert any("No GPU found" in i.value for i in at.info)  # this CI box has no GPU: tiny CPU preset
    assert any("without CUDA-graph capture" in i.value for i in at.info)
    at.radio(key="new_mode").set_value("Fill in the fields").run()
    engine, device = by_label(at.selectbox, "Engine"), by_label(at.selectbox, "Device")
    assert "graph" in ENGINE_NAMES
    assert [o.split(" ")[0] for o in engine.options] == list(ENGINE_NAMES)  # shown as "graph — ..."
    assert list(device.options) == list(DEVICES) and device.value == "cpu"
    assert "without capture" in engine.help
    engine.set_value("graph")
    by_label(at.text_input, "Batch sizes").set_value("1, 2")
    by_label(at.number_input, "Repeats").set_value(1)
    by_label(at.number_input, "New tokens").set_value(4)
    by_label(at.button, "Launch sweep").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("no CUDA-graph capture" in c.value for c in at.caption)
    sweep_id = at.session_state["last_launch"]
    spec = tomllib.loads((db.parent / "bench.logs" / f"{sweep_id}.toml").read_text())
    assert spec["sweep"]["batch_sizes"] == [1, 2] and spec["variants"][0]["model"] == "synthetic:tiny-moe"
    assert spec["sweep"]["engine"] == "graph"
    seen_progress = False
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception
        seen_progress |= any("points" in p.proto.text for p in at.get("progress"))
        row = queries.sweep(db, sweep_id) if db.exists() else None
        if row and row["shown_state"] in FINAL:
            break
        time.sleep(0.5)
    assert row and row["shown_state"] == "done", row
    assert row["points_done"] == row["points_planned"] == 3 * 2 * 1
    assert seen_progress
    runs = queries.runs(db)
    assert set(runs["engine"]) == {"graph"} and (runs["n_ok"] == 2).all()
    at.run()
    assert sweep_id in panel_text(at)  # the finished sweep stays visible with its final state
    at.switch_page("pages/scaling.py").run()
    assert not at.exception
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    lines = {t["name"]: t for t in fig["data"] if "ceiling" not in t["name"]}
    assert set(lines) == {"base_topk2", "half_topk2", "half_topk1"}
    for t in lines.values():
        assert t["x"] == [1, 2] and all(y > 0 for y in t["y"])


def test_progress_in_second_session_cancel_and_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bench.duckdb"
    at = runs_page(db, monkeypatch)
    assert at.selectbox(key="new_spec").value == "tiny-cpu.toml"
    at.button(key="launch_spec").click().run()
    first = at.session_state["last_launch"]
    wait_for(db, first, ("running",), at)
    # a second tab (a new session) finds the running sweep from the database alone
    other = runs_page(db, monkeypatch)
    assert first in panel_text(other) and "running" in panel_text(other)
    other.button(key=f"cancel_{first}").click().run()
    row = wait_for(db, first, FINAL, at)
    assert row["shown_state"] == "cancelled"

    at.button(key="launch_spec").click().run()
    second = at.session_state["last_launch"]
    assert second != first
    row = wait_for(db, second, ("running",), at)
    os.killpg(int(row["pid"]), signal.SIGKILL)
    row = wait_for(db, second, ("crashed",), at, timeout=60)
    assert row["state"] == "running"  # the row never finished: only the free lock tells
    at.run()
    assert any("crashed" in e.value for e in at.error)
