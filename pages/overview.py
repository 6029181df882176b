"""Overview: what the database holds, the latest sweep and a headline comparison chart."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bench.ui import charts as ui_charts
from bench.ui import data as ui_data
from bench.ui import images as ui_images
from bench.ui.shell import in_app_navigation

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("moe-bench")
st.caption("Decode throughput and memory of base and expert-pruned Mixture-of-Experts models.")

data = ui_data.page_data(need_points=False)
if data is None:
    st.stop()

ov = ui_data.overview()
c = st.columns([1, 1, 1, 1, 2.6])
c[0].metric("Sweeps", ov["sweeps"], help="Sweeps launched from this database (imported results carry none)")
c[1].metric("Runs", ov["runs"])
c[2].metric("Points", f"{ov['points']:,}", help="One point = one (run, batch size, repeat)")
c[3].metric("Cards", ov["cards"], help="Distinct GPUs (or CPUs) the runs were measured on")
first, last = ov.get("first_date"), ov.get("last_date")
undated = int(data.runs_all["run_date"].isna().sum())
c[4].metric("Dates", ui_data.date_range(first, last),
            help=(f"{pd.Timestamp(first):%Y-%m-%d %H:%M} → {pd.Timestamp(last):%Y-%m-%d %H:%M} (UTC)"
                  if first is not None else "no dated runs")
            + (f"; {undated} runs carry no date (imported report tables)" if undated else ""))

st.subheader("Latest sweep")
card = ui_data.latest_sweep(data.runs_all, ui_data.sweeps_df())
if card is None:
    st.caption("No sweep in this database yet (imported report tables only).")
else:
    cols = st.columns([3, 1, 1, 1])
    created = f" · started {pd.Timestamp(card.created_at):%Y-%m-%d %H:%M}" if pd.notna(card.created_at) else ""
    where = " · ".join(x for x in (f"{card.runs} runs", card.engines, card.cards) if x)
    cols[0].markdown(f"**{card.title}**  \n`{card.sweep_id}`{created}  \n{where}")
    cols[1].metric("Sweep state", card.state)
    cols[2].metric("Sweep points", f"{card.points_done}/{card.points_planned}", help="ok points / points recorded "
                   "(or planned, for a sweep launched here)")
    cols[3].metric("Sweep duration", ui_data.fmt_duration(card.duration_s) or "—")

st.subheader("Headline")
runs = data.runs[data.runs["n_ok"] > 0]
if runs.empty:
    st.info("No successful points yet.")
    st.stop()
ids = ui_data.default_ids(runs)
summ = data.summary[data.summary["run_id"].isin(ids) & data.summary["total_tps"].notna()]
top = summ.sort_values("batch").groupby("run_id").tail(1).set_index("run_id")
meta = data.runs_all.set_index("run_id")
rows = top.join(meta[["name", "label", "device_name", "engine"]]).loc[[i for i in ids if i in top.index]].reset_index()
dwarf = ui_charts.ceilings_dwarf(rows)
_fig = ui_charts.headline_figure(rows, data.colors, show_ceiling=not dwarf)
st.plotly_chart(_fig, width="stretch")
ui_images.downloads(_fig, "moe-bench-overview", key="overview_chart_dl")
if dwarf:
    st.caption(f"Roofline ceilings not drawn: they are about {ui_charts.ceiling_ratio(rows):,.0f}× the measured "
               "values (the table below lists them; the Scaling page can show them on a log axis).")
# the chart's numbers as a sortable table, built when opened: the data grid cost ~0.8 CPU-s of the browser on every
# Overview view for numbers the chart's hover already gives (docs/PERF.md)
table_box = st.expander("The chart's numbers as a table (batch, tok/s, ceiling, MBU, card, engine)",
                        icon=":material/table:", key="overview_table_open", on_change="rerun")
if table_box.open:
    table_box.dataframe(
        rows[["label", "batch", "total_tps", "per_stream_tps", "ceiling_tps", "mbu", "device_name", "engine"]],
        hide_index=True, width="stretch", key="overview_table",
        column_config={
            "label": "run", "total_tps": st.column_config.NumberColumn("total tok/s", format="%.2f"),
            "per_stream_tps": st.column_config.NumberColumn("per-stream tok/s", format="%.2f"),
            "ceiling_tps": st.column_config.NumberColumn("ceiling tok/s", format="%.1f"),
            "mbu": st.column_config.NumberColumn("MBU", format="percent"), "device_name": "card",
        },
    )
st.caption("Default runs: the latest sweep (else the latest run of each variant) passing the filters. Lines, "
           "spreads and ceilings are on **Scaling**.")
