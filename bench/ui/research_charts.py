"""Plotly figures of the research loop: routing heatmaps (with a pruned run's kept experts marked), Jaccard
overlap of domains' top-N sets per layer, distinct experts per step against batch size beside the uniform formula,
and the speed-against-quality scatter with its Pareto front. Data arrays are plain lists (readable JSON)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from bench.analysis.routing import SCORES
from bench.ui.charts import _layout, _list, _log2_axis
from bench.ui.colors import color_of


def routing_heatmap(grid: pd.DataFrame, domain: str, score: str, kept: list[tuple[int, int]] | None = None,
                    run_label: str | None = None) -> go.Figure:
    """Layer x expert heatmap of `score`; with `kept`, kept experts get a ring and dropped ones a cross."""
    z = [[None if pd.isna(v) else float(v) for v in row] for row in grid.to_numpy().tolist()]
    fig = go.Figure(go.Heatmap(z=z, x=[int(c) for c in grid.columns], y=[int(i) for i in grid.index],
                               colorscale="Viridis", colorbar=dict(title=SCORES.get(score, score)),
                               hovertemplate="layer %{y}, expert %{x}: %{z:.4f}<extra></extra>", name=domain))
    if kept is not None:
        keep = set(kept)
        cells = [(li, e) for li in grid.index for e in grid.columns]
        k = [(int(e), int(li)) for li, e in cells if (int(li), int(e)) in keep]
        d = [(int(e), int(li)) for li, e in cells if (int(li), int(e)) not in keep]
        fig.add_trace(go.Scatter(x=[p[0] for p in k], y=[p[1] for p in k], mode="markers", name="kept",
                                 marker=dict(symbol="circle-open", size=11, color="white", line=dict(width=2))))
        fig.add_trace(go.Scatter(x=[p[0] for p in d], y=[p[1] for p in d], mode="markers", name="dropped",
                                 marker=dict(symbol="x-thin", size=9, color="red", line=dict(width=2))))
    title = f"{SCORES.get(score, score)} per layer and expert — domain {domain}"
    if run_label:
        title += f" — experts kept by {run_label}"
    _layout(fig, "layer", title, height=max(300, 22 * len(grid.index) + 140))
    fig.update_xaxes(title_text="expert", dtick=1 if len(grid.columns) <= 32 else None)
    fig.update_yaxes(autorange="reversed", dtick=1 if len(grid.index) <= 32 else None)
    return fig


def jaccard_figure(jac: pd.DataFrame, n: int) -> go.Figure:
    fig = go.Figure()
    for pair, g in jac.groupby("pair", sort=False):
        fig.add_trace(go.Scatter(x=_list(g["layer"]), y=_list(g["jaccard"]), mode="lines+markers", name=str(pair),
                                 hovertemplate="layer %{x}: Jaccard %{y:.2f}<extra>" + str(pair) + "</extra>"))
    _layout(fig, "Jaccard |A∩B| / |A∪B|", f"Overlap of the domains' top-{n} experts, per layer", height=360)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(range=[0, 1.05])
    return fig


def distinct_figure(dist: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """Measured distinct experts per layer per step (markers) beside U = E(1-(1-k/E)^B) (dashed), per run."""
    fig = go.Figure()
    for label, g in dist.groupby("label", sort=False):
        c = color_of(colors, str(label))
        fig.add_trace(go.Scatter(x=_list(g["batch"]), y=_list(g["distinct_experts"]), mode="lines+markers",
                                 name=f"{label} — measured", line=dict(color=c)))
        fig.add_trace(go.Scatter(x=_list(g["batch"]), y=_list(g["uniform"]), mode="lines",
                                 name=f"{label} — uniform U", line=dict(color=c, dash="dash")))
    _layout(fig, "distinct experts per layer per step", "Distinct experts per decode step against batch size "
            "(dashed: uniform routing U = E·(1 − (1 − k/E)^B))")
    if not dist.empty:
        _log2_axis(fig, dist["batch"].tolist())
    return fig


def pareto_figure(table: pd.DataFrame, colors: dict[str, str], batch: int) -> go.Figure:
    """Speedup at `batch` (y) against mean KL(base‖variant) (x); the Pareto front joined by a line."""
    fig = go.Figure()
    df = table.dropna(subset=["speedup", "kl"])
    for r in df.itertuples():
        fig.add_trace(go.Scatter(
            x=[float(r.kl)], y=[float(r.speedup)], mode="markers+text", name=str(r.label), text=[str(r.label)],
            textposition="top center", marker=dict(size=13 if r.pareto else 9, color=color_of(colors, str(r.label)),
                                                   symbol="star" if r.pareto else "circle"),
            hovertemplate="KL %{x:.4g} nats, speedup %{y:.2f}×<extra>" + str(r.label) + "</extra>"))
    front = df[df["pareto"]].sort_values("kl")
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=_list(front["kl"]), y=_list(front["speedup"]), mode="lines", name="Pareto front",
                                 line=dict(color="grey", dash="dot")))
    _layout(fig, f"speedup at batch {batch} (× base total tok/s)",
            f"Speed against quality at batch {batch} (stars: Pareto front — nothing is both faster and closer)")
    fig.update_xaxes(title_text="mean KL(base ‖ variant), nats (lower is closer to the base)")
    return fig
