"""The issue-13 views that several pages share, each a function that lays out what `bench.analysis` returns:
the Pareto chart, the energy/cost table, the speedup heatmap. Pages call them behind a selector, so the first
view of a page stays light; every chart gets its PNG/SVG download (`bench.ui.images`)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bench.analysis import compare, cost, pareto
from bench.ui import charts as ui_charts
from bench.ui import data as ui_data
from bench.ui import images as ui_images
from bench.ui import share

MORE_VIEWS = ("Pareto", "Energy & cost")


def more_views(key: str, options: tuple[str, ...] = MORE_VIEWS) -> str | None:
    """A selector of extra views (nothing drawn until one is picked); shared through the URL as `key`."""
    share.seed_value(key, options)
    view = st.segmented_control("More views", list(options), key=key, selection_mode="single",
                                help="Drawn on request, so the page's first view stays fast")
    share.publish({key: view})
    return view


def pareto_view(summ: pd.DataFrame, data: ui_data.PageData, key: str) -> pd.DataFrame:
    """Per-stream vs total tok/s with the front marked, and the front's members in a table."""
    pts = pareto.pareto_points(summ)
    if pts.empty:
        st.info("No point has both throughputs.")
        return pts
    fig = ui_charts.pareto_figure(pts, data.colors, data.dashes)
    st.plotly_chart(fig, width="stretch", key=f"{key}_chart")
    ui_images.downloads(fig, "moe-bench-pareto", key=f"{key}_dl")
    st.caption("A point is on the **Pareto front** when no other point of the selection is at least as fast both "
               "per stream and in total (and faster in one). Off the front, some other variant/batch size gives "
               "more of both.")
    front = pts[pts["on_front"]].sort_values(["per_stream_tps", "total_tps"], ascending=[False, True])
    st.dataframe(front[["label", "batch", "per_stream_tps", "total_tps"]], hide_index=True, width="stretch",
                 key=f"{key}_front", column_config={
                     "label": "Pareto front: run",
                     "per_stream_tps": st.column_config.NumberColumn("per-stream tok/s", format="%.2f"),
                     "total_tps": st.column_config.NumberColumn("total tok/s", format="%.2f")})
    return pts


ENERGY_COLUMNS = {
    "j_per_token": st.column_config.NumberColumn("J / token", format="%.3f",
                                                 help="Median NVML energy per generated token over the ok repeats"),
    "energy_note": st.column_config.TextColumn("energy", help="Why a run has no J/token"),
    "usd_per_hour": st.column_config.NumberColumn("$ / GPU-hour", format="$%.2f"),
    "usd_per_mtok": st.column_config.NumberColumn("$ / M tokens", format="$%.3f",
                                                  help="$/GPU-hour ÷ (total tok/s × 3600) × 10⁶"),
}


def energy_cost_view(summ: pd.DataFrame, data: ui_data.PageData, key: str) -> pd.DataFrame:
    """J per generated token and $ per million tokens, per run and batch size (prices from the sidebar)."""
    ec = cost.add_energy_cost(summ, data.runs_all, ui_data.prices())
    if ec.empty:
        st.info("Nothing to show.")
        return ec
    st.dataframe(ec[["label", "batch", "total_tps", "j_per_token", "energy_note", "card_family", "usd_per_hour",
                     "usd_per_mtok"]], hide_index=True, width="stretch", key=f"{key}_table",
                 column_config={"label": "run", "card_family": "card",
                                "total_tps": st.column_config.NumberColumn("total tok/s", format="%.2f"),
                                **ENERGY_COLUMNS})
    none = ec[ec["j_per_token"].isna()]
    if len(none):
        why = sorted(set(none["energy_note"]))
        st.caption(f"{none['run_id'].nunique()} run(s) have no J/token: " + "; ".join(why)
                   + ". They are left blank, not 0.")
    st.caption("$ per million tokens uses the **$ per GPU-hour** set in the sidebar (Cost), one GPU per run.")
    return ec


def heatmap_view(summary: pd.DataFrame, data: ui_data.PageData, base: str, candidates: list[str],
                 key: str) -> pd.DataFrame:
    """Speedup of many variants against one base: variants × batch sizes, within-noise cells marked."""
    d = compare.deltas(summary, data.runs_all, base, candidates)
    heat = compare.speedup_matrix(d)
    if heat.empty:
        st.info("The base and the chosen runs share no batch size.")
        return heat
    labels = dict(zip(data.runs_all["run_id"], data.runs_all["label"], strict=True))
    fig = ui_charts.heatmap_figure(heat, labels.get(base, base))
    st.plotly_chart(fig, width="stretch", key=f"{key}_chart")
    ui_images.downloads(fig, "moe-bench-speedup-heatmap", key=f"{key}_dl")
    st.caption("Each cell: the variant's median total tok/s ÷ the base's at that batch size. **≈** marks a cell "
               "within noise (the repeat spreads of the two runs overlap, as in the deltas above).")
    return heat
