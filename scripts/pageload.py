"""Dashboard page-load times as a person feels them: a real browser (Debian's chromium through playwright) on a
real `streamlit run app.py`, by default on a 100,000-point database (scripts/perf_dashboard.py builds it).

    .venv/bin/python scripts/pageload.py [--points 100000] [--db FILE] [--repeats 3] [--json pageload.json]
                                         [--pages overview,scaling,...] [--no-empty] [--no-filter] [--no-server]
                                         [--plotly-bundle plotly-cartesian.min.js] [--attribute]

Per page, timed in the page itself (performance.now(), 0 = navigation start), median of --repeats:
- cold: a fresh browser context (empty HTTP cache, no V8 code cache, new Streamlit session) after the database
  file's mtime was bumped (so every cached query of the dashboard misses, as after a sweep wrote). The server
  process itself is not new: before timing, each page is opened once (`first_view_s` in the JSON: the first view
  after `streamlit run` also imports the page's modules, a once-per-process cost);
- warm: a second tab of the same context (HTTP cache filled, server caches warm), the same URL;
- switch: in a third tab of that context, on another page, a click on the page's link in the sidebar (in-app
  navigation: no JavaScript is loaded again, the session is kept) until its script ran and its charts are drawn.
Marks: `title` (the page's h1 drawn), `idle` (the first script run finished: its script_finished websocket
message), `traces` (every plotly trace of every chart on the page drawn: the number of `g.trace` groups equals
the number of visible traces in the figure data; for pages without charts it equals `idle`).
Attribution per page: `browser_cpu_s` / `server_cpu_s` (CPU seconds used by all chromium processes and by the
Streamlit server during the load, including the 1 s quiet wait: robust to a busy machine, unlike wall times),
`server_s` (the script run as the browser sees it: new_session → script_finished message), `ws_bytes` (websocket
bytes received for the first run), `plotly_bytes` / `table_bytes` (figure JSON and Arrow table bytes in those
deltas), `browser_main_s` (Chromium main-thread task time, CDP Performance.TaskDuration; wall time, so a busy
machine inflates it). With the server timing on (default), also AppTest's server-only render time (warm).
Plus one interaction: on Scaling, pick a card of the database that the default selection does not show in the
sidebar's Card filter and time the click until both charts are redrawn with that card's runs; and the same click on
a baseline page that holds only such a filter and two small charts (Streamlit's own cost of a filter change). And two
baselines served the same way (same flags, same browser): an app whose only content is `st.title` (Streamlit's own
fixed cost) and the same with one one-trace `st.plotly_chart` (Streamlit + its plotly.js chunk: the floor of any chart
page); with --plotly-bundle FILE a third: the same chart drawn by a minimal Streamlit component that loads FILE (a
plotly.js partial bundle, e.g. the "cartesian" one from npm) instead of Streamlit's plotly chunk. The load average
(1 min) is recorded per page: on a shared machine compare runs made back to back. The root page is always opened
first on a fresh server (see `warm_up`).

--attribute: after the timings, one more warm load per page and baseline (--repeats times, median) runs under
Chromium's tracing and CPU profiler (CDP `Tracing`, `Profiler`), and a second table splits it: when Streamlit's own
JavaScript has run, the first websocket message, title, script idle, when Streamlit's plotly.js chunk was asked
for, fetched, parsed and compiled, evaluated (the module's top level: plotly.js initialising), and the traces drawn;
the CPU of the tab's main thread (inside the plotly chunk, other JavaScript by script, native style/layout/paint,
GC) and the script parsing done off the main thread. A third tab is traced too: Chromium writes a script's code
cache on its second load and reads it from the third on (a returning user). On the two baselines this is the
attribution of Streamlit's fixed cost (docs/PERF.md).

Prints a markdown table and writes the numbers as JSON (--json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = ("overview", "scaling", "memory", "compare", "history", "routing", "runs", "export")
CHART_PAGES = {"overview": 1, "scaling": 2, "memory": 2, "compare": 1, "history": 1}  # charts each page draws
NAV_TITLES = {p: p.capitalize() for p in PAGES}  # the page list's link texts (app.py)
EMPTY_APP = 'import streamlit as st\n\nst.title("Empty page")\n'
# Streamlit + its plotly.js chunk: the same empty page with one one-trace chart (the floor of any chart page)
EMPTY_CHART_APP = ('import plotly.graph_objects as go\nimport streamlit as st\n\nst.title("Empty page, one chart")\n'
                   'st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2], name="one")), width="stretch")\n')
BASELINES = {"empty (Streamlit alone)": (EMPTY_APP, 0), "empty + 1 chart (Streamlit + plotly.js)": (EMPTY_CHART_APP, 1)}
# Streamlit's own cost of a filter change: a sidebar Card multiselect and two charts with a trace per picked card
# (what Scaling's filter does, without the dashboard's data, shell and figures): the floor of the filter target.
FILTER_APP = ('import plotly.graph_objects as go\nimport streamlit as st\n\n'
              'st.title("Empty page, a filter, two charts")\n'
              'cards = st.sidebar.multiselect("Card", ["NVIDIA A100", "NVIDIA H200"], default=["NVIDIA A100"])\n'
              'for title in ("one", "two"):\n'
              '    st.plotly_chart(go.Figure([go.Scatter(x=[1, 2, 3], y=[1, 3, 2], name=c) for c in cards],\n'
              '                              layout={"title": {"text": title}}), width="stretch")\n')
FILTER_BASELINE_CARD = "NVIDIA H200"
# --plotly-bundle FILE: a third baseline, the same one-trace chart drawn by a minimal Streamlit component (an iframe
# page that loads FILE, e.g. plotly.js's "cartesian" partial bundle from npm, instead of Streamlit's 4.7 MB plotly
# chunk). What a lighter plotly.js would save; the bundle is a generated file, never committed.
COMPONENT_LABEL = "empty + 1 chart (component + partial plotly.js bundle)"
COMPONENT_APP = """from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components

chart = components.declare_component("partial_plotly", path=str(Path(__file__).parent / "frontend"))
st.title("Empty page, one chart (partial plotly.js bundle)")
chart(spec=go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2], name="one")).to_json(), key="c", default=None)
"""
# Streamlit's component protocol by hand (no npm package): ready -> render(args) -> draw -> frame height. When
# drawn, the frame writes the time (ms after the parent page's navigation start) to the parent's __componentDrawn.
COMPONENT_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><style>body{margin:0}</style></head><body><div id="plot"></div>
<script src="plotly.min.js"></script>
<script>
function send(type, data) {
  window.parent.postMessage(Object.assign({isStreamlitMessage: true, type: type}, data), "*");
}
window.addEventListener("message", function (e) {
  if (!e.data || e.data.type !== "streamlit:render") return;
  const fig = JSON.parse(e.data.args.spec);
  const layout = Object.assign({}, fig.layout, {autosize: true});
  Plotly.react("plot", fig.data, layout, {responsive: true}).then(function (gd) {
    send("streamlit:setFrameHeight", {height: gd.offsetHeight});
    const p = window.parent;
    if (gd.querySelectorAll("g.trace").length === fig.data.length)
      p.__componentDrawn = performance.timeOrigin + performance.now() - p.performance.timeOrigin;
  });
});
send("streamlit:componentReady", {apiVersion: 1});
</script></body></html>
"""

# Recorder injected before any page script: websocket message sizes/times and, every animation frame, the page
# state (title drawn, script running, traces expected/drawn per chart); each change is logged with its time.
RECORDER = r"""
(() => {
  const pl = {msgs: [], changes: [], marks: {}};
  window.__pl = pl;
  const Orig = window.WebSocket;
  window.WebSocket = class extends Orig {
    constructor(...a) {
      super(...a);
      this.addEventListener('message', e => {
        const d = e.data;
        pl.msgs.push([performance.now(), d.byteLength ?? d.size ?? d.length ?? 0]);
      });
    }
  };
  const state = () => {
    const main = document.querySelector('[data-testid="stMainBlockContainer"]');
    const title = !!(main && main.querySelector('h1'));
    const running = !!document.querySelector('[data-testid="stStatusWidgetRunningIcon"], '
                                             + '[data-testid="stStatusWidgetRunningManIcon"]');
    let expected = 0, drawn = 0, names = [];
    for (const gd of (main ? main.querySelectorAll('.js-plotly-plot') : [])) {
      const vis = (gd.data || []).filter(t => t.visible !== false && t.visible !== 'legendonly');
      expected += vis.length;
      drawn += gd._fullLayout ? gd.querySelectorAll('g.trace').length : 0;
      names.push(vis.map(t => t.name).join('|'));
    }
    return {title, running, charts: names.length, expected, drawn, names: names.join('#')};
  };
  let last = '';
  const tick = () => {
    const s = state();
    const key = JSON.stringify(s);
    if (key !== last) { last = key; pl.changes.push([performance.now(), s]); }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  // rAF pauses in background tabs; a timer keeps sampling there (coarser)
  setInterval(() => { const s = state(); const k = JSON.stringify(s);
                      if (k !== last) { last = k; pl.changes.push([performance.now(), s]); } }, 50);
})();
"""


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"moe_bench_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _decode(payloads: list[bytes]) -> list[dict]:
    """Each websocket frame as {kind, bytes, plotly, table} (ForwardMsg type; plotly/table bytes in deltas)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    out = []
    for raw in payloads:
        msg = ForwardMsg()
        try:
            msg.ParseFromString(raw)
        except Exception:  # not a ForwardMsg (should not happen): count its bytes only
            out.append({"kind": "?", "bytes": len(raw), "plotly": 0, "table": 0})
            continue
        kind = msg.WhichOneof("type") or "?"
        plotly = table = 0
        if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            el = msg.delta.new_element
            which = el.WhichOneof("type")
            if which == "plotly_chart":
                plotly = len(el.plotly_chart.spec.encode())
            elif which in ("dataframe", "arrow_data_frame", "arrow_table", "data_frame"):  # "dataframe" since 1.5x
                table = el.ByteSize()
        out.append({"kind": kind, "bytes": len(raw), "plotly": plotly, "table": table})
    return out


# ms since the drawn content (title, charts, traces) last changed; the running flag alone does not count (the Runs
# page's progress fragment reruns every 2 s)
QUIET = """() => { const c = window.__pl.changes; let i = c.length - 1;
  const key = s => JSON.stringify([s.title, s.charts, s.expected, s.drawn, s.names]);
  while (i > 0 && key(c[i - 1][1]) === key(c[i][1])) i--;
  return performance.now() - c[i][0]; }"""


def _ready(page, charts: int) -> bool:
    return page.evaluate(
        """(charts) => { const c = window.__pl.changes; if (!c.length) return false; const s = c[c.length - 1][1];
             return s.title && !s.running && s.charts >= charts && s.drawn === s.expected; }""", charts)


def _settle(page, charts: int, timeout_s: float = 300, quiet_s: float = 1.0) -> None:
    """Wait until the page is drawn (title, script idle, every trace) and nothing changed for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ready(page, charts):
            last = page.evaluate(QUIET)
            if last >= quiet_s * 1000:
                return
        page.wait_for_timeout(100)
    raise TimeoutError(f"{page.url}: not drawn after {timeout_s:.0f} s: "
                       f"{page.evaluate('() => window.__pl.changes.slice(-1)')}")


def _marks(changes: list, finished: list[float], since: float = 0.0, charts: int = 0) -> dict[str, float | None]:
    """title / idle / traces times (s after `since`, ms) from the recorded changes and script_finished times."""
    title = traces = None
    idle = next((t for t in finished if t >= since), None)
    last_plot = None
    for t, s in changes:
        plot = (s["charts"], s["expected"], s["drawn"], s["names"])
        if t < since:
            last_plot = plot
            continue
        if title is None and s["title"]:
            title = t
        if plot != last_plot:
            last_plot = plot
            if charts and s["charts"] >= charts and s["drawn"] == s["expected"]:
                traces = t
    if not charts or (traces is not None and idle is not None and traces < idle):
        traces = idle  # no chart, or the charts were already drawn: the page is done when its script is
    if traces is not None and title is not None and traces < title:
        traces = title  # ... and its title is drawn
    return {k: None if v is None else round((v - since) / 1000, 3)
            for k, v in (("title_s", title), ("idle_s", idle), ("traces_s", traces))}


def _finished(msgs: list, decoded: list[dict]) -> list[float]:
    """In-page arrival times of the script_finished messages."""
    return [d["t"] for d in _align(msgs, decoded) if d["kind"] == "script_finished" and d["t"] is not None]


# pids whose CPU time is counted per page load: the Streamlit server and the chromium browser (with its children)
PIDS: dict[str, int] = {}
MARKER = f"--moe-bench-pageload={os.getpid()}"  # an extra chromium switch to find the browser process by


def _tree_cpu(root: int | None) -> dict[int, float]:
    """pid -> CPU seconds (user + system) used so far, for `root` and every live descendant (chromium's
    renderers, GPU process)."""
    if not root:
        return {}
    parent, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(f[1])
        cpu[int(d.name)] = (int(f[11]) + int(f[12])) / tick
    out = {}
    for pid in cpu:
        p = pid
        while p and p != root and p in parent:
            p = parent[p]
        if p == root:
            out[pid] = cpu[pid]
    return out


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second (a tab closed meanwhile drops out)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _browser_pid() -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if MARKER.encode() in (d / "cmdline").read_bytes():
                    return int(d.name)
            except OSError:
                continue
    return None


def _page_with_frames(ctx):
    """A new tab, and the list its websocket's received frames are appended to (Streamlit's forward messages)."""
    page = ctx.new_page()
    frames: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda p: frames.append(p if isinstance(p, bytes)
                                                                                    else p.encode())))
    return page, frames


def _open(ctx, url: str, charts: int, component: bool = False) -> dict:
    """Open `url` in a new tab of `ctx`, wait until drawn, return its marks and attribution. `component`: the page's
    chart is drawn by the --plotly-bundle component (its frame reports when its traces are drawn)."""
    page, frames = _page_with_frames(ctx)
    cdp = ctx.new_cdp_session(page)
    cdp.send("Performance.enable")
    cpu0 = (_tree_cpu(PIDS.get("browser")), _tree_cpu(PIDS.get("server")))
    try:
        page.goto(url, wait_until="commit")
        _settle(page, charts)
        drawn = None
        if component:
            deadline = time.monotonic() + 120
            while (drawn := page.evaluate("() => window.__componentDrawn")) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url}: the component drew no chart")
                page.wait_for_timeout(100)
            _settle(page, charts)
        pl = page.evaluate("() => window.__pl")
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        cpu1 = (_tree_cpu(PIDS.get("browser")), _tree_cpu(PIDS.get("server")))
        exc = page.locator('[data-testid="stException"]')
        if exc.count():
            raise RuntimeError(f"{url}: the page shows an exception: {exc.first.inner_text()}")
    finally:
        page.close()
    decoded = _decode(frames)
    out = _marks(pl["changes"], _finished(pl["msgs"], decoded), 0.0, charts)
    if drawn is not None:
        out["traces_s"] = round(max(drawn / 1000, out["idle_s"] or 0.0), 3)
    out.update(_attribute(pl["msgs"], decoded))
    out["browser_main_s"] = round(metrics.get("TaskDuration", 0.0), 3)
    out["browser_cpu_s"] = round(_cpu_delta(cpu0[0], cpu1[0]), 3)  # all chromium processes, with the 1 s quiet wait
    out["server_cpu_s"] = round(_cpu_delta(cpu0[1], cpu1[1]), 3)
    out["browser_script_s"] = round(metrics.get("ScriptDuration", 0.0), 3)
    out["browser_layout_s"] = round(metrics.get("LayoutDuration", 0.0) + metrics.get("RecalcStyleDuration", 0.0), 3)
    return out


def _align(msgs: list, decoded: list[dict]) -> list[dict]:
    """Give each decoded frame (playwright's view) its in-page arrival time: the next in-page message of the same
    byte size (the two lists can differ by a frame at either end)."""
    out, i = [], 0
    for d in decoded:
        j = i
        while j < len(msgs) and msgs[j][1] != d["bytes"]:
            j += 1
        if j < len(msgs):
            out.append({**d, "t": msgs[j][0]})
            i = j + 1
        else:
            out.append({**d, "t": None})
    return out


def _attribute(msgs: list, decoded: list[dict]) -> dict:
    """Websocket/plotly/table bytes of the first script run (new_session → script_finished) and its span."""
    start = end = None
    seen_start = seen_end = False
    ws = plotly = table = 0
    for d in _align(msgs, decoded):
        if d["kind"] == "new_session" and not seen_start:
            seen_start, start = True, d["t"]
        if seen_start and not seen_end:
            ws += d["bytes"]
            plotly += d["plotly"]
            table += d["table"]
        if d["kind"] == "script_finished" and seen_start and not seen_end:
            seen_end, end = True, d["t"]
    return {"server_s": None if start is None or end is None else round((end - start) / 1000, 3),
            "ws_bytes": ws, "plotly_bytes": plotly, "table_bytes": table}


def other_card(db: Path) -> str | None:
    """A card of `db` that the default selection does not show (the filter step picks it), or None."""
    from bench.analysis import labels
    from bench.store import queries

    runs = queries.runs(db)
    shown = set(runs.set_index("run_id").loc[labels.default_runs(runs[runs["n_ok"] > 0]), "device_name"])
    others = sorted(set(runs["device_name"].dropna()) - shown)
    return others[0] if others else None


def _filter_scaling(ctx, url: str, card: str, timeout_s: float = 120, path: str = "scaling",
                    charts: int = CHART_PAGES["scaling"]) -> dict:
    """On Scaling (or the filter baseline's page at `path`, drawing `charts` charts): pick `card` (a card the default
    selection does not show) in the sidebar's Card filter; time the click until the charts are redrawn with it."""
    page, frames = _page_with_frames(ctx)
    try:
        page.goto(f"{url}/{path}", wait_until="commit")
        _settle(page, charts, timeout_s)
        before = page.evaluate("() => window.__pl.changes.slice(-1)[0][1].names")
        box = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').filter(
            has=page.locator('[data-testid="stWidgetLabel"]', has_text="Card")).first
        box.locator("input").first.click()
        option = page.get_by_role("option", name=card, exact=True)
        option.wait_for(timeout=timeout_s * 1000)
        since = page.evaluate("() => performance.now()")
        option.click()
        deadline = time.monotonic() + timeout_s
        while not any(t > since for t in _finished(page.evaluate("() => window.__pl.msgs"), _decode(frames))):
            if time.monotonic() > deadline:
                raise TimeoutError("the Card filter triggered no script run")
            page.wait_for_timeout(100)
        _settle(page, charts, timeout_s)
        pl = page.evaluate("() => window.__pl")
    finally:
        page.close()
    if pl["changes"][-1][1]["names"] == before:
        raise RuntimeError(f"the Card filter ({card}) did not change the charts")
    out = _marks(pl["changes"], _finished(pl["msgs"], _decode(frames)), since, charts)
    out["picked"] = card
    return out


def _switch(ctx, url: str, name: str, charts: int) -> dict:
    """In-app navigation: on another page of the same tab (JavaScript, plotly.js and the session already loaded),
    click `name` in the sidebar's page list; time the click until its script ran and its charts are drawn."""
    start = "export" if charts else "overview"  # a page without charts (or, for one without, another page)
    page, frames = _page_with_frames(ctx)
    try:
        page.goto(f"{url}/{'' if start == 'overview' else start}", wait_until="commit")
        _settle(page, CHART_PAGES.get(start, 0))
        link = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=NAV_TITLES[name]).first
        since = page.evaluate("() => performance.now()")
        link.click()
        deadline = time.monotonic() + 120
        while not any(t > since for t in _finished(page.evaluate("() => window.__pl.msgs"), _decode(frames))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"switching to {name} ran no script")
            page.wait_for_timeout(100)
        _settle(page, charts)
        pl = page.evaluate("() => window.__pl")
    finally:
        page.close()
    out = _marks(pl["changes"], _finished(pl["msgs"], _decode(frames)), since, charts)
    return {"idle_s": out["idle_s"], "traces_s": out["traces_s"]}


def warm_up(url: str, pages: list[str], browser) -> dict[str, float | None]:
    """Open each page once in a throwaway context: the server imports the page modules (and app.py's background
    import of scipy.stats) on a page's first view after start, which is not what a user waits for on later
    views. Returns each first view's marks (traces_s), reported apart as `first_view_s`.

    The dashboard's root page is always opened first: Streamlit decides once per server process, on its first
    script run, whether the app is a `pages/`-folder app; a first request for /scaling runs pages/scaling.py on
    its own (no app.py: no sidebar, the folder's file names as navigation) for every later session too, so
    `--pages scaling` measured a different app (docs/PERF.md)."""
    out: dict[str, float | None] = {}
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.add_init_script(RECORDER)
    try:
        if pages and pages[0] in PAGES and pages[0] != "overview":
            _open(ctx, f"{url}/", CHART_PAGES["overview"])
        for name in pages:
            out[name] = _open(ctx, f"{url}/{'' if name == 'overview' else name}", CHART_PAGES.get(name, 0))["traces_s"]
    finally:
        ctx.close()
    time.sleep(2)  # let the background imports finish
    return out


def measure(url: str, pages: list[str], repeats: int, db: Path | None, browser, charts: int | None = None,
            component: bool = False) -> dict:
    """cold/warm marks per page (median of `repeats`). `charts`: how many charts the page draws (default: the
    dashboard page's CHART_PAGES entry); `component`: its chart is the --plotly-bundle component's."""
    results: dict[str, dict] = {}
    for name in pages:
        path = "" if name in ("overview", "empty") else name
        n_charts = CHART_PAGES.get(name, 0) if charts is None else charts
        cold, warm, switch = [], [], []
        for _ in range(repeats):
            if db is not None:
                os.utime(db)  # a new file version: the dashboard's cached queries miss
            ctx = browser.new_context(viewport={"width": 1280, "height": 860})
            ctx.add_init_script(RECORDER)
            try:
                cold.append(_open(ctx, f"{url}/{path}", n_charts, component))
                warm.append(_open(ctx, f"{url}/{path}", n_charts, component))
                if name in NAV_TITLES:
                    switch.append(_switch(ctx, url, name, n_charts))
            finally:
                ctx.close()
        results[name] = {"cold": _median(cold), "warm": _median(warm),
                         "load_avg_1min": round(os.getloadavg()[0], 2)}
        if switch:
            results[name]["switch"] = _median(switch)
        print(f"{name}: cold {results[name]['cold']['traces_s']} s, warm {results[name]['warm']['traces_s']} s",
              file=sys.stderr, flush=True)
    return results


def _median(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if r[k] is not None]
        if not vals:
            out[k] = None
        elif isinstance(vals[0], str):
            out[k] = vals[0]
        else:
            out[k] = round(statistics.median(vals), 3) if isinstance(vals[0], float) else statistics.median(vals)
    return out



# ------------------------------------------------------------------------------------------------- --attribute
# Where the time of a warm load goes, phase by phase, from Chromium's own trace (CDP Tracing) and a CPU profile of
# the page's main thread (CDP Profiler), both on the monotonic clock of the navigation. For the two baselines this
# splits Streamlit's fixed cost (empty page) and its plotly.js chunk (+1 chart) into fetching, parsing, compiling,
# evaluating and the first draw; for a dashboard page it shows when its plotly chunk arrives and what its main thread
# spent the load on.
TRACE_CATEGORIES = "devtools.timeline,v8,v8.execute,blink.user_timing,loading"
PLOTLY_CHUNK = "/PlotlyChart."  # Streamlit's lazily imported chunk with plotly.js (static/js/PlotlyChart.<hash>.js)


def _profile_split(profile: dict, t0: float, t1: float, chunk: str) -> dict[str, float]:
    """Main-thread seconds between t0 and t1 (µs, trace clock) from a CDP CPU profile: busy, of which inside the
    plotly chunk (any frame of the stack in it), other JavaScript, native work ("(program)": style, layout, paint,
    HTML parsing, compiling) and garbage collection."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {c: n["id"] for n in profile["nodes"] for c in n.get("children", [])}
    in_chunk: dict[int, bool] = {}

    def has_chunk(nid: int) -> bool:
        if nid not in in_chunk:
            url = nodes[nid]["callFrame"]["url"]
            in_chunk[nid] = chunk in url or (nid in parent and has_chunk(parent[nid]))
        return in_chunk[nid]

    out = {"busy": 0.0, "plotly": 0.0, "js": 0.0, "native": 0.0, "gc": 0.0}
    by_file: dict[str, float] = {}
    t = profile["startTime"]
    deltas = profile["timeDeltas"]
    for i, nid in enumerate(profile["samples"]):
        t += deltas[i]
        if not t0 <= t <= t1:
            continue
        name = nodes[nid]["callFrame"]["functionName"]
        interval = (deltas[i + 1] if i + 1 < len(deltas) else deltas[i]) / 1e6  # until the next sample
        if name == "(idle)":
            continue
        out["busy"] += interval
        if name == "(garbage collector)":
            out["gc"] += interval
        elif name == "(program)":
            out["native"] += interval
        elif has_chunk(nid):
            out["plotly"] += interval
        else:
            out["js"] += interval
            file = nodes[nid]["callFrame"]["url"].rsplit("/", 1)[-1].split(".")[0] or "(page)"
            by_file[file] = by_file.get(file, 0.0) + interval
    top = sorted(by_file.items(), key=lambda kv: -kv[1])[:6]
    return {**{k: round(v, 3) for k, v in out.items()}, "js_top": ", ".join(f"{k} {v:.2f}" for k, v in top)}


def _phases(events: list[dict], profile: dict, page: dict, marks: dict) -> dict:
    """The milestones (s after navigation start) and main-thread split of one traced load."""
    nav = next((e["ts"] for e in events if e["name"] == "navigationStart"
                and e.get("args", {}).get("data", {}).get("documentLoaderURL")), None)  # not the about:blank one
    if nav is None:
        raise RuntimeError("no navigationStart in the trace")
    s = lambda ts: None if ts is None else round((ts - nav) / 1e6, 3)  # noqa: E731
    main = [e for e in events if e.get("ph") == "X" and e["name"] in ("v8.evaluateModule", "v8.compileModule",
                                                                      "v8.compile", "v8.parseOnBackground")]
    evals = sorted((e for e in main if e["name"] == "v8.evaluateModule"), key=lambda e: e["ts"])
    out: dict = {"html_s": round(page["nav"]["responseEnd"] / 1000, 3),
                 "bundle_s": s(evals[0]["ts"] + evals[0]["dur"]) if evals else None,  # Streamlit's entry module run
                 "ws_first_s": round(page["pl"]["msgs"][0][0] / 1000, 3) if page["pl"]["msgs"] else None,
                 **marks}
    parse = [e for e in main if e["name"] == "v8.parseOnBackground"]
    out["bg_parse_s"] = round(sum(e["dur"] for e in parse) / 1e6, 3)  # off the main thread, all scripts
    res = next((r for r in page["res"] if PLOTLY_CHUNK in r["name"]), None)
    done_ts = nav + 1e6 * (marks["traces_s"] or marks["idle_s"] or 0)
    if res is not None:
        chunk_url = res["name"]
        p_parse = [e for e in parse if e.get("args", {}).get("data", {}).get("url") == chunk_url]
        comp = [e for e in main if e["name"] in ("v8.compileModule", "v8.compile")
                and e.get("args", {}).get("data", {}).get("url") == chunk_url]
        comp_end = max((e["ts"] + e["dur"] for e in comp), default=None)
        # the chunk's evaluation: the first module evaluation after its compilation whose CPU samples are mostly in
        # the chunk (other chunks, e.g. the data grid's, can be evaluated in between), else the longest one
        after = [e for e in evals if comp_end is not None and e["ts"] >= comp_end]
        def mostly_plotly(e: dict) -> bool:
            split = _profile_split(profile, e["ts"], e["ts"] + e["dur"], PLOTLY_CHUNK)
            return split["busy"] > 0 and split["plotly"] > 0.5 * split["busy"]

        ev = next((e for e in after if mostly_plotly(e)), max(after, key=lambda e: e["dur"], default=None))
        out.update({
            "plotly_request_s": round(res["start"] / 1000, 3), "plotly_fetched_s": round(res["end"] / 1000, 3),
            "plotly_bytes": res["dec"],
            "plotly_parsed_s": s(max((e["ts"] + e["dur"] for e in p_parse), default=None)),
            "plotly_parse_s": round(sum(e["dur"] for e in p_parse) / 1e6, 3),
            "plotly_compile_s": round(sum(e["dur"] for e in comp) / 1e6, 3),
            "plotly_eval_start_s": s(ev["ts"]) if ev else None,
            "plotly_eval_s": round(ev["dur"] / 1e6, 3) if ev else None,
            "plotly_evaluated_s": s(ev["ts"] + ev["dur"]) if ev else None,
        })
        if ev is not None:
            out["first_draw_main"] = _profile_split(profile, ev["ts"] + ev["dur"], done_ts, PLOTLY_CHUNK)
    out["main"] = _profile_split(profile, nav, done_ts, PLOTLY_CHUNK)
    return out


def _trace_open(ctx, url: str, charts: int, interval_us: int = 200) -> dict:
    """Open `url` in a new tab of `ctx` under CDP tracing and the CPU profiler; its phases (`_phases`)."""
    page, frames = _page_with_frames(ctx)
    cdp = ctx.new_cdp_session(page)
    events: list[dict] = []
    complete: list[bool] = []
    cdp.on("Tracing.dataCollected", lambda e: events.extend(e["value"]))
    cdp.on("Tracing.tracingComplete", lambda e: complete.append(True))
    cdp.send("Tracing.start", {"categories": TRACE_CATEGORIES, "transferMode": "ReportEvents"})
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": interval_us})
    cdp.send("Profiler.start")
    try:
        page.goto(url, wait_until="commit")
        _settle(page, charts)
        profile = cdp.send("Profiler.stop")["profile"]
        data = page.evaluate("""() => ({pl: window.__pl, nav: performance.getEntriesByType('navigation')[0].toJSON(),
            res: performance.getEntriesByType('resource').map(r => ({name: r.name, start: r.startTime,
                                                                     end: r.responseEnd, dec: r.decodedBodySize}))})""")
        cdp.send("Tracing.end")
        deadline = time.monotonic() + 60
        while not complete and time.monotonic() < deadline:
            page.wait_for_timeout(100)
    finally:
        page.close()
    marks = _marks(data["pl"]["changes"], _finished(data["pl"]["msgs"], _decode(frames)), 0.0, charts)
    return _phases(events, profile, data, marks)


def attribute(url: str, path: str, charts: int, repeats: int, browser) -> dict:
    """Phases of a warm load (second tab of a context; the first tab fills the HTTP cache), median of `repeats`
    fresh contexts; `third_*`: the same for a third tab. Chromium writes a script's V8 code cache on its second load
    and reads it from the third on, so the third tab is what a returning user's browser does (`bg_parse_s` drops)."""
    second, third = [], []
    for _ in range(repeats):
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        ctx.add_init_script(RECORDER)
        try:
            _open(ctx, f"{url}/{path}", charts)  # the cold tab
            second.append(_trace_open(ctx, f"{url}/{path}", charts))
            third.append(_trace_open(ctx, f"{url}/{path}", charts))
        finally:
            ctx.close()

    def median(runs: list[dict]) -> dict:
        flat = [{**{k: v for k, v in r.items() if not isinstance(v, dict)},
                 **{f"{g}_{k}": v for g in ("main", "first_draw_main") for k, v in r.get(g, {}).items()}}
                for r in runs]
        keys = {k for r in flat for k in r}
        return {k: _median([{k: r.get(k)} for r in flat])[k] for k in sorted(keys)}

    out = median(second)
    out.update({f"third_{k}": v for k, v in median(third).items()
                if k in ("title_s", "traces_s", "bg_parse_s", "main_busy", "plotly_eval_s", "plotly_parse_s")})
    return out


def server_times(db: Path, pages: list[str]) -> dict[str, float]:
    """AppTest's warm render time per page (server only, no browser), median of 3."""
    import streamlit as st  # noqa: F401
    from streamlit.testing.v1 import AppTest

    os.environ["BENCH_DB"] = str(db)
    out = {}
    for name in pages:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.run()
        at.switch_page(f"pages/{name}.py").run()
        if at.exception:
            raise SystemExit(f"{name}: {at.exception[0].value}")
        times = []
        for _ in range(3):
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
        out[name] = round(statistics.median(times), 3)
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "kB" and isinstance(v, int | float):  # bytes; an even number of repeats gives a float median
        return f"{v / 1000:.0f}"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return str(v)


def table(report: dict) -> str:
    lines = ["| page | cold: title / idle / traces (s) | warm: title / idle / traces (s) | server script (s) | "
             "AppTest (s) | ws kB | plotly kB | table kB | browser main-thread (s) | CPU s cold: browser / server | "
             "CPU s warm: browser / server | in-app switch (s) | load (1 min) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for name, r in report["pages"].items():
        c, w = r["cold"], r["warm"]
        lines.append(
            f"| {name} | {_fmt(c['title_s'])} / {_fmt(c['idle_s'])} / **{_fmt(c['traces_s'])}** | "
            f"{_fmt(w['title_s'])} / {_fmt(w['idle_s'])} / **{_fmt(w['traces_s'])}** | {_fmt(w['server_s'])} | "
            f"{_fmt(report.get('apptest_s', {}).get(name))} | {_fmt(w['ws_bytes'], 'kB')} | "
            f"{_fmt(w['plotly_bytes'], 'kB')} | {_fmt(w['table_bytes'], 'kB')} | {_fmt(w['browser_main_s'])} | "
            f"{_fmt(c.get('browser_cpu_s'))} / {_fmt(c.get('server_cpu_s'))} | "
            f"{_fmt(w.get('browser_cpu_s'))} / {_fmt(w.get('server_cpu_s'))} | "
            f"{_fmt(r.get('switch', {}).get('traces_s'))} | {_fmt(r.get('load_avg_1min'))} |")
    f = report.get("scaling_filter")
    if f:
        lines.append(f"\nScaling, Card filter → {f['picked']}: redrawn in **{_fmt(f['traces_s'])} s** "
                     f"(script idle {_fmt(f['idle_s'])} s); median of {report['repeats']}."
                     + (f" Failed runs: {f['errors']}" if f.get("errors") else ""))
    b = report.get("filter_baseline")
    if b:
        lines.append(f"Streamlit's own filter cost (an empty page: a sidebar Card multiselect, two charts with a "
                     f"trace a card), Card → {b['picked']}: redrawn in **{_fmt(b['traces_s'])} s** (script idle "
                     f"{_fmt(b['idle_s'])} s); median of {report['repeats']}.")
    first = report.get("first_view_s")
    if first:
        lines.append("\nFirst view of each page after the server started (not in the table; module imports): "
                     + ", ".join(f"{k} {_fmt(v)} s" for k, v in first.items()))
    return "\n".join(lines)


PHASE_COLUMNS = (("html_s", "HTML"), ("bundle_s", "Streamlit JS run"), ("ws_first_s", "1st ws msg"),
                 ("title_s", "title"), ("idle_s", "idle"), ("plotly_request_s", "plotly chunk asked"),
                 ("plotly_fetched_s", "fetched"), ("plotly_eval_start_s", "parsed+compiled"),
                 ("plotly_evaluated_s", "evaluated"), ("traces_s", "traces"))


def phases_table(report: dict) -> str:
    """--attribute: the milestones of a traced warm load (s after navigation start) and its main thread's CPU."""
    lines = ["Traced warm loads (--attribute; tracing adds some overhead): milestones in s after navigation start; "
             "main thread = CPU seconds of the tab's main thread until the traces are drawn (plotly = samples "
             "inside Streamlit's plotly chunk; native = style, layout, paint, HTML; bg parse = script parsing off "
             "the main thread).\n",
             "| page | " + " | ".join(h for _, h in PHASE_COLUMNS) + " | plotly: bg parse / compile / evaluate / "
             "first draw (s) | main thread: busy / plotly / other JS / native / GC (s) | bg parse, all scripts (s) |",
             "|---|" + "---:|" * len(PHASE_COLUMNS) + "---|---|---:|"]
    for name, r in report["pages"].items():
        ph = r.get("phases")
        if not ph:
            continue
        draw = (None if ph.get("plotly_evaluated_s") is None or ph.get("traces_s") is None
                else round(ph["traces_s"] - ph["plotly_evaluated_s"], 3))
        plotly = (" / ".join(_fmt(ph.get(k)) for k in ("plotly_parse_s", "plotly_compile_s", "plotly_eval_s"))
                  + f" / {_fmt(draw)}") if ph.get("plotly_request_s") is not None else "—"
        main = " / ".join(_fmt(ph.get(f"main_{k}")) for k in ("busy", "plotly", "js", "native", "gc"))
        lines.append(f"| {name} | " + " | ".join(_fmt(ph.get(k)) for k, _ in PHASE_COLUMNS)
                     + f" | {plotly} | {main} | {_fmt(ph.get('bg_parse_s'))} |")
    lines.append("\nThird tab (V8 code cache read): " + "; ".join(
        f"{name}: traces {_fmt(r['phases'].get('third_traces_s'))} s, "
        f"bg parse {_fmt(r['phases'].get('third_bg_parse_s'))} s, "
        f"main busy {_fmt(r['phases'].get('third_main_busy'))} s"
        + (f", plotly evaluate {_fmt(r['phases'].get('third_plotly_eval_s'))} s"
           if r["phases"].get("third_plotly_eval_s") is not None else "")
        for name, r in report["pages"].items() if r.get("phases")))
    lines.append("\nOther JS by script (self time, s; `(page)` = this benchmark's recorder and inline code):")
    lines += [f"- {name}: {r['phases'].get('main_js_top')}" for name, r in report["pages"].items() if r.get("phases")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000, help="size of the database to build (without --db)")
    ap.add_argument("--db", type=Path, help="an existing database (default: build one with --points points)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pages", default=",".join(PAGES))
    ap.add_argument("--json", type=Path, default=Path("pageload.json"), help="where to write the numbers")
    ap.add_argument("--no-empty", action="store_true", help="skip the empty-page (Streamlit fixed cost) timing")
    ap.add_argument("--plotly-bundle", type=Path,
                    help="a plotly.js partial bundle (e.g. plotly-cartesian.min.js of npm's "
                         "plotly.js-cartesian-dist-min)"
                         ": adds the baseline 'one chart drawn by a component with it'")
    ap.add_argument("--no-filter", action="store_true", help="skip the Scaling filter interaction")
    ap.add_argument("--attribute", action="store_true",
                    help="also trace one more warm load per page and baseline (CDP tracing + CPU profile, --repeats "
                         "times) and print where its time went: Streamlit's JavaScript, websocket, script run, the "
                         "plotly chunk's fetch/parse/compile/evaluation and the first draw")
    ap.add_argument("--no-server", action="store_true", help="skip AppTest's server-only render times")
    ap.add_argument("--watcher", default="none", choices=("none", "auto", "poll", "watchdog"),
                    help="Streamlit's server.fileWatcherType for the dashboard server (default none, as `make run`)")
    args = ap.parse_args(argv)
    shots = _load("screenshots")
    if not Path(shots.CHROMIUM).exists():
        print("chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    pages = [p for p in args.pages.split(",") if p]
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="moe-bench-pageload-") as tmp:
        folder = Path(tmp)
        db = args.db
        if db is None:
            db = folder / "perf.duckdb"
            n = _load("perf_dashboard").build(db, args.points)
            print(f"built {n:,} points in {db}", file=sys.stderr)
        report: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
                        "machine": f"{platform.node()} · {os.cpu_count()} cores · {platform.machine()}",
                        "load_avg": [round(x, 2) for x in os.getloadavg()], "repeats": args.repeats,
                        "db_points": None, "command": " ".join(["scripts/pageload.py", *(argv or sys.argv[1:])])}
        from bench.store import queries

        report["db_points"] = queries.db_info(db).n_points
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shots.CHROMIUM, headless=True,
                                         args=[*shots.CHROMIUM_ARGS, MARKER])
            PIDS["browser"] = _browser_pid()
            try:
                pids: list[int] = []
                with shots.serve(db, folder / "streamlit.log", watcher=args.watcher, pids=pids) as url:
                    PIDS["server"] = pids[0]
                    report["first_view_s"] = warm_up(url, pages, browser)
                    cpu0 = _cpu_s(pids[0])
                    report["pages"] = measure(url, pages, args.repeats, db, browser)
                    if args.attribute:
                        for name in pages:
                            report["pages"][name]["phases"] = attribute(
                                url, "" if name == "overview" else name, CHART_PAGES.get(name, 0), args.repeats,
                                browser)
                    views = 2 * args.repeats * len(pages)
                    report["server_cpu_s_per_view"] = round((_cpu_s(pids[0]) - cpu0) / views, 3)
                    report["watcher"] = args.watcher
                    card = other_card(db) if "scaling" in pages and not args.no_filter else None
                    if card:
                        runs, errors = [], []
                        for _ in range(args.repeats):
                            ctx = browser.new_context(viewport={"width": 1280, "height": 860})
                            ctx.add_init_script(RECORDER)
                            try:
                                runs.append(_filter_scaling(ctx, url, card))
                            except (TimeoutError, RuntimeError, PlaywrightError) as exc:  # reported; pages count
                                errors.append(str(exc)[:300])
                            finally:
                                ctx.close()
                        report["scaling_filter"] = _median(runs) if runs else {"picked": card, "traces_s": None,
                                                                               "idle_s": None}
                        if errors:
                            report["scaling_filter"]["errors"] = errors
                if not args.no_empty:
                    for i, (label, (source, n_charts)) in enumerate(BASELINES.items()):
                        app = folder / f"baseline{i}" / "app.py"
                        app.parent.mkdir()
                        app.write_text(source)
                        with shots.serve(None, folder / f"streamlit-baseline{i}.log", app=app, pids=pids) as url:
                            PIDS["server"] = pids[-1]
                            warm_up(url, ["empty"], browser)
                            report["pages"][label] = measure(url, ["empty"], args.repeats, None, browser,
                                                             charts=n_charts)["empty"]
                            if args.attribute:
                                report["pages"][label]["phases"] = attribute(url, "", n_charts, args.repeats, browser)
                    if not args.no_filter:
                        app = folder / "baseline-filter" / "app.py"
                        app.parent.mkdir()
                        app.write_text(FILTER_APP)
                        with shots.serve(None, folder / "streamlit-filter.log", app=app, pids=pids) as url:
                            PIDS["server"] = pids[-1]
                            warm_up(url, ["empty"], browser)
                            runs = []
                            for _ in range(args.repeats):
                                ctx = browser.new_context(viewport={"width": 1280, "height": 860})
                                ctx.add_init_script(RECORDER)
                                try:
                                    runs.append(_filter_scaling(ctx, url, FILTER_BASELINE_CARD, path="", charts=2))
                                finally:
                                    ctx.close()
                            report["filter_baseline"] = _median(runs)
                    if args.plotly_bundle:
                        app = folder / "baseline-component" / "app.py"
                        (app.parent / "frontend").mkdir(parents=True)
                        app.write_text(COMPONENT_APP)
                        (app.parent / "frontend" / "index.html").write_text(COMPONENT_HTML)
                        shutil.copyfile(args.plotly_bundle, app.parent / "frontend" / "plotly.min.js")
                        with shots.serve(None, folder / "streamlit-component.log", app=app, pids=pids) as url:
                            PIDS["server"] = pids[-1]
                            warm_up(url, ["empty"], browser)
                            report["pages"][COMPONENT_LABEL] = measure(url, ["empty"], args.repeats, None, browser,
                                                                       charts=0, component=True)["empty"]
            finally:
                browser.close()
        report["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        if not args.no_server:
            report["apptest_s"] = server_times(db, [p for p in pages if p in PAGES])
    print(f"{report['machine']} · {report['date']} · commit {report['commit']} · {report['db_points']:,} points · "
          f"load avg {report['load_avg']} → {report['load_avg_after']}\n")
    print(table(report))
    if args.attribute:
        print("\n" + phases_table(report))
    print(f"\ndashboard server CPU per page view: {report.get('server_cpu_s_per_view')} s "
          f"(fileWatcherType {report.get('watcher')})")
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
