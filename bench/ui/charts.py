"""Plotly figure builders for the dashboard pages. Inputs are `bench.store.queries` DataFrames; outputs are figures
whose data arrays are plain lists (so their JSON is readable by tests and by people)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from bench.store.queries import MEMORY_METRICS
from bench.ui.colors import color_of, dash_of

DELTA_TITLES = {"total_pct": "total tok/s", "per_stream_pct": "per-stream tok/s", "mem_pct": "peak memory"}
CEILING_HIDE_RATIO = 20.0  # ceilings this many times the measured values flatten the measured lines to 0


def ceiling_ratio(frame: pd.DataFrame, measured: str = "total_tps", ceiling: str = "ceiling_tps") -> float | None:
    """How many times the measured values the roofline ceilings are (median over the rows that have both); None
    without ceilings. CPU runs: ceilings of 40k-120k tok/s against 25-400 measured."""
    both = frame[[measured, ceiling]].dropna()
    both = both[both[measured] > 0]
    if both.empty:
        return None
    return float((both[ceiling] / both[measured]).median())


def ceilings_dwarf(frame: pd.DataFrame, measured: str = "total_tps", ceiling: str = "ceiling_tps") -> bool:
    """True when the ceilings are more than CEILING_HIDE_RATIO times the measured values (hide them by default)."""
    r = ceiling_ratio(frame, measured, ceiling)
    return r is not None and r > CEILING_HIDE_RATIO


def _list(series: pd.Series) -> list[Any]:
    return [None if (isinstance(v, float) and math.isnan(v)) or v is None or v is pd.NA else v
            for v in series.tolist()]


def _log2_axis(fig: go.Figure, batches: list[int]) -> None:
    fig.update_xaxes(**_log2_xaxis(batches))


def _log2_xaxis(batches: list[int]) -> dict[str, Any]:
    """The batch-size x axis: log scale, a tick at each measured batch size, labelled with it."""
    ticks = sorted({int(b) for b in batches})
    return dict(type="log", tickvals=ticks, ticktext=[str(b) for b in ticks], title_text="batch size (log2 scale)")


def _layout_dict(y_title: str, title: str, height: int = 420) -> dict[str, Any]:
    """Title at the top left, the legend in rows under the x axis, the y axis titled with its unit."""
    return dict(height=height, margin=dict(l=10, r=10, t=40, b=10), hovermode="closest",
                title=dict(text=title, x=0, xanchor="left", font=dict(size=15)),
                legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, title_text=""),
                yaxis_title=y_title)


def _layout(fig: go.Figure, y_title: str, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(**_layout_dict(y_title, title, height))
    return fig


def _figure(traces: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    """One validated figure from plain trace and layout dicts: one pass of plotly's validation instead of one per
    `add_trace`/`update_*` call (Scaling's two figures: about 3x less server time per script run, docs/PERF.md)."""
    return go.Figure(data=traces, layout=layout)


# one legend entry explaining the dashed lines (each run's ceiling is in its run's legend group)
CEILING_KEY = dict(type="scatter", x=[None], y=[None], mode="lines", name="roofline ceiling (dashed, run colour)",
                   line=dict(color="#555", dash="dash", width=1.5), hoverinfo="skip", legendgroup="__ceiling")


def scaling_figure(summary: pd.DataFrame, colors: dict[str, str], metric: str = "total_tps",
                   show_ceiling: bool = True, dashes: dict[str, str] | None = None, log_y: bool = False) -> go.Figure:
    """tok/s against batch size, one line per run, error bars spanning the repeats, dashed roofline ceiling;
    `log_y`: a log y axis (runs whose values differ by orders of magnitude, CPU next to GPU).

    Built from each column's values taken once (`_columns`), not from per-run pandas groups and Series arithmetic:
    the same figure in half the server time (about 30 ms → 14 ms per figure at 21 traces; Scaling draws two
    on every view and filter change, docs/PERF.md)."""
    per_stream = metric == "per_stream_tps"
    ceiling_col = "ceiling_per_stream_tps" if per_stream else "ceiling_tps"
    unit = "per-stream tok/s" if per_stream else "total tok/s"
    rows = summary[summary[metric].notna()]
    col = _columns(rows, ["run_id", "label", "batch", metric, f"{metric}_min", f"{metric}_max", "n_ok", "mbu",
                          ceiling_col])
    traces: list[dict[str, Any]] = []
    for run_id, idx in _groups(col["run_id"]):
        label = col["label"][idx[0]]
        color, dash = color_of(colors, label), dash_of(dashes or {}, label)
        y, lo, hi = col[metric][idx], col[f"{metric}_min"][idx], col[f"{metric}_max"][idx]
        ceiling, batch = col[ceiling_col][idx], _plain(col["batch"][idx])
        custom = list(zip(_plain(lo), _plain(hi), _plain(col["n_ok"][idx]), _plain(col["mbu"][idx]),
                          _plain(ceiling), strict=True))
        traces.append(dict(
            type="scatter", x=batch, y=_plain(y), name=label, mode="lines+markers",
            legendgroup=str(run_id), line=dict(color=color, dash=dash), marker=dict(size=7),
            error_y=dict(type="data", symmetric=False, array=_plain(hi - y), arrayminus=_plain(y - lo),
                         thickness=1.2, width=4),
            customdata=custom,
            hovertemplate=(f"<b>{label}</b><br>batch %{{x}}<br>{unit} (median) %{{y:.2f}}"
                           "<br>min %{customdata[0]:.2f} · max %{customdata[1]:.2f} · repeats %{customdata[2]}"
                           "<br>ceiling %{customdata[4]:.1f} · MBU %{customdata[3]:.1%}<extra></extra>"),
        ))
        has = ~pd.isna(ceiling)
        if show_ceiling and has.any():
            traces.append(dict(
                type="scatter", x=[b for b, h in zip(batch, has, strict=True) if h], y=_plain(ceiling[has]),
                name=f"{label} ceiling", mode="lines", legendgroup=str(run_id), showlegend=False,
                line=dict(color=color, dash="dash", width=1.5), opacity=0.6,
                hovertemplate=f"<b>{label}</b> roofline<br>batch %{{x}}<br>ceiling %{{y:.1f}} {unit}<extra></extra>",
            ))
    if show_ceiling and summary[ceiling_col].notna().any():
        traces.append(dict(CEILING_KEY))
    what = "Per-stream tok/s (one sequence)" if per_stream else "Total tok/s (whole batch)"
    layout = _layout_dict(unit + (" (log scale)" if log_y else ""), f"{what} against batch size", height=500)
    layout["xaxis"] = _log2_xaxis(_plain(col["batch"]))
    if log_y:
        layout["yaxis"] = dict(type="log")
    return _figure(traces, layout)


def _columns(frame: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    """Each named column of `frame` as one numpy array (read once, then sliced per trace)."""
    return {c: frame[c].to_numpy() for c in dict.fromkeys(names)}


def _groups(keys: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """(key, row positions) per distinct key, in order of first appearance (as `groupby(sort=False)`)."""
    _, first, inverse = np.unique(keys.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    return [(keys[first[i]], np.flatnonzero(inverse == i)) for i in order]


def _plain(values: np.ndarray) -> list[Any]:
    """A numpy slice as a JSON-ready list: Python numbers, NaN / NA as None (what `_list` does for a Series)."""
    return [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
            for v in values.tolist()]


def memory_figure(summary: pd.DataFrame, colors: dict[str, str], metric: str,
                  dashes: dict[str, str] | None = None) -> go.Figure:
    """One memory metric (GiB) against batch size, one line per run."""
    label_of = MEMORY_METRICS.get(metric, metric)
    traces: list[dict[str, Any]] = []
    for run_id, g in summary[summary[metric].notna()].groupby("run_id", sort=False):
        label = g["label"].iloc[0]
        traces.append(dict(
            type="scatter", x=_list(g["batch"]), y=_list(g[metric]), name=label, mode="lines+markers",
            legendgroup=str(run_id), line=dict(color=color_of(colors, label), dash=dash_of(dashes or {}, label)),
            customdata=list(zip(_list(g["weights_share"]), _list(g["mem_weights_gib"]), strict=True)),
            hovertemplate=(f"<b>{label}</b><br>batch %{{x}}<br>{label_of} %{{y:.3f}} GiB"
                           "<br>weights %{customdata[1]:.2f} GiB (%{customdata[0]:.0%} of peak alloc)<extra></extra>"),
        ))
    layout = _layout_dict(f"{label_of} (GiB)", f"{label_of.capitalize()} memory against batch size", height=460)
    layout["xaxis"] = _log2_xaxis(summary.loc[summary[metric].notna(), "batch"].tolist())
    layout["yaxis"] = dict(rangemode="tozero")
    return _figure(traces, layout)


def saved_figure(saved: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """GiB saved by each pruned variant against its base, bars per batch size."""
    fig = go.Figure()
    for variant, g in saved.groupby("variant", sort=False):
        fig.add_trace(go.Bar(
            x=[str(b) for b in g["batch"]], y=_list(g["saved_gib"]), name=f"{variant} vs {g['base'].iloc[0]}",
            marker_color=color_of(colors, str(variant)),
            customdata=list(zip(_list(g["saved_pct"]), _list(g["base_gib"]), _list(g["variant_gib"]), strict=True)),
            hovertemplate=("batch %{x}<br>saved %{y:.2f} GiB (%{customdata[0]:.1f}%)"
                           "<br>base %{customdata[1]:.2f} → %{customdata[2]:.2f} GiB<extra></extra>"),
        ))
    fig.update_layout(barmode="group", xaxis_title="batch size", showlegend=True)
    fig.update_xaxes(type="category")
    metric = str(saved["metric"].iloc[0]) if len(saved) and saved["metric"].nunique() == 1 else "peak memory"
    return _layout(fig, "memory saved (GiB)", f"Memory saved against the base ({metric}), per batch size",
                   height=420)


def headline_figure(rows: pd.DataFrame, colors: dict[str, str], show_ceiling: bool = True) -> go.Figure:
    """Median total tok/s of each run at its largest measured batch (one bar per run, in its colour), with the
    roofline ceiling as a marker (`show_ceiling`)."""
    fig = go.Figure()
    for r in rows.to_dict("records"):
        fig.add_trace(go.Bar(
            x=[r["label"]], y=[r["total_tps"]], name=r["label"], marker_color=color_of(colors, r["label"]),
            customdata=[[r["batch"], r["per_stream_tps"], None if pd.isna(r["mbu"]) else r["mbu"]]],
            hovertemplate=("<b>%{x}</b><br>batch %{customdata[0]}<br>total %{y:.2f} tok/s"
                           "<br>per stream %{customdata[1]:.2f} tok/s<br>MBU %{customdata[2]:.1%}<extra></extra>"),
        ))
    if show_ceiling and rows["ceiling_tps"].notna().any():
        fig.add_trace(go.Scatter(
            x=_list(rows["label"]), y=_list(rows["ceiling_tps"]), name="roofline ceiling", mode="markers",
            marker=dict(symbol="line-ew-open", size=28, color="#444", line=dict(width=2)),
            hovertemplate="<b>%{x}</b><br>ceiling %{y:.1f} tok/s<extra></extra>",
        ))
    fig.update_layout(barmode="overlay", xaxis_title="run", showlegend=True)
    fig.update_xaxes(type="category", tickangle=-30)
    fig.update_layout(showlegend=False)  # the x axis names each bar; hover gives the numbers
    return _layout(fig, "total tok/s (median)", "Total tok/s at each run's largest measured batch "
                   "(bars: median" + (", dashes: roofline ceiling)" if show_ceiling else ")"), height=440)


def delta_figure(deltas: pd.DataFrame, colors: dict[str, str], column: str = "total_pct") -> go.Figure:
    """% change against the base per batch size; bars within noise are faded and hatched."""
    fig = go.Figure()
    for cand, g in deltas.groupby("candidate", sort=False):
        noise = g["within_noise"].tolist()
        fig.add_trace(go.Bar(
            x=[str(b) for b in g["batch"]], y=_list(g[column]), name=str(cand),
            marker=dict(color=color_of(colors, str(cand)),
                        opacity=[0.35 if n else 1.0 for n in noise],
                        pattern=dict(shape=["/" if n else "" for n in noise])),
            customdata=[["within noise" if n else "outside noise"] for n in noise],
            hovertemplate="batch %{x}<br>%{y:+.1f}%<br>%{customdata[0]}<extra>" + str(cand) + "</extra>",
        ))
    fig.add_hline(y=0, line_color="#888", line_width=1)
    fig.update_layout(barmode="group", xaxis_title="batch size", showlegend=True)  # even for one candidate
    fig.update_xaxes(type="category")
    what = DELTA_TITLES.get(column, column)
    return _layout(fig, "% change vs base", f"Change in {what} against the base, per batch size",
                   height=420)


# ---------------------------------------------------------------------------------------------- issue 13 views


def pareto_figure(points: pd.DataFrame, colors: dict[str, str], dashes: dict[str, str] | None = None) -> go.Figure:
    """Per-stream tok/s against total tok/s: one curve per run (a point per batch size, labelled), the Pareto front
    of the whole selection as a grey step line with ringed members (`bench.analysis.pareto.pareto_points`)."""
    fig = go.Figure()
    for run_id, g in points.groupby("run_id", sort=False):
        g = g.sort_values("batch")
        label = g["label"].iloc[0]
        fig.add_trace(go.Scatter(
            x=_list(g["total_tps"]), y=_list(g["per_stream_tps"]), name=label, mode="lines+markers+text",
            legendgroup=str(run_id), text=[f"b{b}" for b in g["batch"]], textposition="top center",
            textfont=dict(size=10), line=dict(color=color_of(colors, label), dash=dash_of(dashes or {}, label)),
            marker=dict(size=8), customdata=_list(g["batch"]),
            hovertemplate=(f"<b>{label}</b><br>batch %{{customdata}}<br>total %{{x:.2f}} tok/s"
                           "<br>per-stream %{y:.2f} tok/s<extra></extra>"),
        ))
    front = points[points["on_front"]].sort_values("total_tps")
    if len(front):
        fig.add_trace(go.Scatter(
            x=_list(front["total_tps"]), y=_list(front["per_stream_tps"]), name="Pareto front", mode="lines+markers",
            line=dict(color="#222", width=1.5, dash="dot", shape="vh"),  # the boundary of what the front attains
            marker=dict(symbol="circle-open", size=16, color="#222", line=dict(width=2)),
            customdata=list(zip(_list(front["label"]), _list(front["batch"]), strict=True)),
            hovertemplate="<b>front</b>: %{customdata[0]} batch %{customdata[1]}<extra></extra>",
        ))
    fig.update_xaxes(type="log", title_text="total tok/s (whole batch; log scale) — what the GPU earns")
    fig.update_yaxes(type="log")
    return _layout(fig, "per-stream tok/s (log scale) — what one user feels",
                   "Throughput vs per-user speed: each point a batch size; ringed points form the Pareto front",
                   height=520)


def history_figure(hist: pd.DataFrame, metric: str, unit: str, title: str) -> go.Figure:
    """One metric of one variant across its runs (x: run date, else run order), error bars = repeat min..max."""
    fig = go.Figure()
    h = hist[hist[metric].notna()]
    x = [str(d)[:16] if d is not None and not pd.isna(d) else f"#{i + 1} {lab}"
         for i, (d, lab) in enumerate(zip(h["run_date"], h["label"], strict=True))]
    fig.add_trace(go.Scatter(
        x=x, y=_list(h[metric]), name=unit, mode="lines+markers", line=dict(color="#1f77b4"),
        error_y=dict(type="data", symmetric=False, array=_list(h[f"{metric}_max"] - h[metric]),
                     arrayminus=_list(h[metric] - h[f"{metric}_min"]), thickness=1.2, width=4),
        customdata=list(zip(_list(h["label"]), _list(h["git_commit"]), _list(h["device_name"]),
                            _list(h["torch_version"]), strict=True)),
        hovertemplate=("<b>%{customdata[0]}</b><br>%{x}<br>" + unit + " %{y:.3f}<br>commit %{customdata[1]} · "
                       "%{customdata[2]} · torch %{customdata[3]}<extra></extra>"),
    ))
    fig.update_xaxes(type="category", title_text="run (start time, UTC)")
    fig.update_layout(showlegend=True)
    return _layout(fig, unit, title, height=360)


def heatmap_figure(heat: pd.DataFrame, base_label: str) -> go.Figure:
    """Speedup vs the base: variants (rows) × batch sizes (columns); cells within noise are marked `≈` and their
    number greyed (`bench.analysis.compare.speedup_matrix`)."""
    rows = list(dict.fromkeys(heat["candidate"]))
    cols = sorted(set(heat["batch"]))
    idx = {(r.candidate, int(r.batch)): r for r in heat.itertuples()}
    z, text = [], []
    for cand in rows:
        zr, tr = [], []
        for b in cols:
            r = idx.get((cand, b))
            if r is None or pd.isna(r.speedup):
                zr.append(None)
                tr.append("")
                continue
            zr.append(float(r.speedup))
            tr.append(f"{'≈ ' if r.within_noise else ''}{r.speedup:.2f}×")
        z.append(zr)
        text.append(tr)
    # colour by log2(speedup), so 0.5× and 2× are equally far from white (1×); the cell text and hover give ×
    logz = [[None if v is None or v <= 0 else math.log2(v) for v in zr] for zr in z]
    ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8]
    fig = go.Figure(go.Heatmap(
        z=logz, customdata=z, x=[str(b) for b in cols], y=rows, text=text, texttemplate="%{text}",
        colorscale="RdBu", zmid=0.0,
        colorbar=dict(title="× base", tickvals=[math.log2(t) for t in ticks], ticktext=[f"{t:g}×" for t in ticks]),
        hovertemplate="%{y}<br>batch %{x}<br>%{customdata:.3f}× the base (≈: within noise)<extra></extra>",
    ))
    fig.update_xaxes(type="category", title_text="batch size")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "variant", f"Speedup in total tok/s against {base_label} (≈: within noise)",
                   height=max(260, 60 + 36 * len(rows)))
