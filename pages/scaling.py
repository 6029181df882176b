"""Scaling: total and per-stream tok/s against batch size, spreads from the repeats, roofline ceilings, MBU."""

from __future__ import annotations

import streamlit as st

from bench.analysis import compare, cost
from bench.ui import charts as ui_charts
from bench.ui import data as ui_data
from bench.ui import images as ui_images
from bench.ui import views as ui_views
from bench.ui.shell import in_app_navigation

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("Scaling")
data = ui_data.page_data()
if data is None:
    st.stop()

ids = ui_data.run_picker(data, key="scaling_runs")
summ = compare.summary_for(data.summary, data.runs_all, ids)
if summ.empty or summ["total_tps"].notna().sum() == 0:
    st.info("Pick at least one run with successful points.")
    st.stop()

ratio = ui_charts.ceiling_ratio(summ)
dwarf = ui_charts.ceilings_dwarf(summ)
c = st.columns(2)
show_ceiling = c[0].toggle("Show roofline ceilings (dashed)", value=not dwarf, key=f"scaling_ceiling_{dwarf}",
                           help=f"Hidden by default when the ceilings are more than "
                                f"{ui_charts.CEILING_HIDE_RATIO:.0f}× the measured values (they would flatten the "
                                "measured lines to 0)")
log_y = c[1].toggle("Log y axis", value=False, key="scaling_log_y",
                    help="For runs whose tok/s differ by orders of magnitude (CPU next to GPU, or with ceilings)")
if dwarf and not show_ceiling:
    st.caption(f"Roofline ceilings hidden: they are about {ratio:,.0f}× the measured values (CPU runs are far from "
               "the memory-bandwidth bound). Switch them on, with the log y axis, to compare; the table below "
               "lists them.")

for metric in ("total_tps", "per_stream_tps"):
    fig = ui_charts.scaling_figure(summ, data.colors, metric, show_ceiling, data.dashes, log_y)
    name = "scaling_total" if metric == "total_tps" else "scaling_per_stream"
    st.plotly_chart(fig, width="stretch", key=name)
    ui_images.downloads(fig, f"moe-bench-{name.replace('_', '-')}", key=f"{name}_dl")
st.caption("Lines: median of the repeats; error bars: min..max of the repeats; dashed: roofline ceiling "
           "(memory-bound bytes per step / measured bandwidth).")

failed = summ[summ["statuses"].fillna("").str.contains("oom|error|skipped")]
if not failed.empty:
    lines = [f"- **{r.label}** batch {r.batch}: {r.statuses}" + (f" — {r.error}" if r.error else "")
             for r in failed.itertuples()]
    st.warning("Some points did not run cleanly:\n" + "\n".join(lines))

st.subheader("MBU: measured against the roofline ceiling")
# the table is built when opened: its data grid cost the browser ~0.2 CPU-s on every Scaling view and on every filter
# change (docs/PERF.md), for numbers the charts' hover also gives per point (median, min, max, repeats, ceiling, MBU)
table_box = st.expander("The table: per run and batch size, tok/s (median, min, max), ceiling, MBU, experts touched, "
                        "J/token, $/M tokens", icon=":material/table:", key="scaling_table_open", on_change="rerun")
if table_box.open:
    summ_ec = cost.add_energy_cost(summ, data.runs_all, ui_data.prices())
    table = summ_ec[["label", "batch", "n_ok", "total_tps", "total_tps_min", "total_tps_max", "per_stream_tps",
                     "ceiling_tps", "mbu", "distinct_experts", "j_per_token", "usd_per_mtok"]]
    table_box.dataframe(
        table, hide_index=True, width="stretch", key="scaling_table",
        column_config={
            "label": "run", "n_ok": "repeats ok",
            "total_tps": st.column_config.NumberColumn("total tok/s", format="%.2f"),
            "total_tps_min": st.column_config.NumberColumn("min", format="%.2f"),
            "total_tps_max": st.column_config.NumberColumn("max", format="%.2f"),
            "per_stream_tps": st.column_config.NumberColumn("per-stream tok/s", format="%.2f"),
            "ceiling_tps": st.column_config.NumberColumn("ceiling tok/s", format="%.1f"),
            "mbu": st.column_config.NumberColumn("MBU", format="percent"),
            "distinct_experts": st.column_config.NumberColumn("experts touched / layer", format="%.1f"),
            "j_per_token": ui_views.ENERGY_COLUMNS["j_per_token"],
            "usd_per_mtok": ui_views.ENERGY_COLUMNS["usd_per_mtok"],
        },
    )
low = summ[(summ["mbu"] < 0.3) & summ["mbu"].notna()]
if not low.empty:
    st.caption(f"{len(low)} point(s) run below 30% of their ceiling: the harness, not the model, may dominate.")

view = ui_views.more_views("scaling_view")
if view == "Pareto":
    ui_views.pareto_view(summ, data, key="scaling_pareto")
elif view == "Energy & cost":
    ui_views.energy_cost_view(summ, data, key="scaling_energy")
