"""Overview: what the database holds, the latest sweep and a headline comparison chart."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bench import ui_charts, ui_data

st.title("moe-bench")
st.caption("Decode throughput and memory of base and expert-pruned Mixture-of-Experts models.")

data = ui_data.page_data(need_points=False)
if data is None:
    st.stop()

ov = ui_data.overview()
c = st.columns([1, 1, 1, 1, 2.4])
c[0].metric("Sweeps", ov["sweeps"])
c[1].metric("Runs", ov["runs"])
c[2].metric("Points", f"{ov['points']:,}")
c[3].metric("Cards", ov["cards"])
first, last = ov.get("first_date"), ov.get("last_date")
c[4].metric("Dates", f"{pd.Timestamp(first):%Y-%m-%d} → {pd.Timestamp(last):%Y-%m-%d}" if first is not None else "—")

sweeps_df = ui_data.sweeps_df()
st.subheader("Latest sweep")
if sweeps_df.empty:
    st.caption("No sweep has been launched from this database yet (imported results only).")
else:
    s = sweeps_df.iloc[0]
    cols = st.columns([3, 1, 1, 1])
    cols[0].markdown(f"**{s['title']}**  \n`{s['sweep_id']}` · created {pd.Timestamp(s['created_at']):%Y-%m-%d %H:%M}")
    cols[1].metric("Sweep state", s["shown_state"])
    cols[2].metric("Sweep points", f"{int(s['points_done'])}/{int(s['points_planned'])}")
    cols[3].metric("Sweep duration", ui_data.fmt_duration(s["duration_s"]) or "—")

st.subheader("Headline: total tok/s at each run's largest batch")
runs = data.runs[data.runs["n_ok"] > 0]
if runs.empty:
    st.info("No successful points yet.")
    st.stop()
ids = ui_data.default_ids(runs)
summ = data.summary[data.summary["run_id"].isin(ids) & data.summary["total_tps"].notna()]
top = summ.sort_values("batch").groupby("run_id").tail(1).set_index("run_id")
meta = data.runs_all.set_index("run_id")
rows = top.join(meta[["name", "label", "device_name", "engine"]]).loc[[i for i in ids if i in top.index]].reset_index()
st.plotly_chart(ui_charts.headline_figure(rows, data.colors), width="stretch")
st.dataframe(
    rows[["label", "batch", "total_tps", "per_stream_tps", "ceiling_tps", "mbu", "device_name", "engine"]],
    hide_index=True, width="stretch",
    column_config={
        "label": "run", "total_tps": st.column_config.NumberColumn("total tok/s", format="%.2f"),
        "per_stream_tps": st.column_config.NumberColumn("per-stream tok/s", format="%.2f"),
        "ceiling_tps": st.column_config.NumberColumn("ceiling tok/s", format="%.1f"),
        "mbu": st.column_config.NumberColumn("MBU", format="percent"), "device_name": "card",
    },
)
st.caption("Latest run of each variant passing the filters. Lines, spreads and ceilings are on **Scaling**.")
