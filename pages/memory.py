"""Memory: peak allocated, reserved, NVML per-process and weights against batch; what pruning saved."""

from __future__ import annotations

import streamlit as st

from bench.analysis import compare
from bench.store import queries
from bench.ui import charts as ui_charts
from bench.ui import data as ui_data
from bench.ui import images as ui_images
from bench.ui import share
from bench.ui.shell import in_app_navigation

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("Memory")
data = ui_data.page_data()
if data is None:
    st.stop()

ids = ui_data.run_picker(data, key="memory_runs")
summ = compare.summary_for(data.summary, data.runs_all, ids)
if summ.empty:
    st.info("Pick at least one run.")
    st.stop()

available = [m for m in queries.MEMORY_METRICS if summ[m].notna().any()]
if not available:
    st.info("These runs recorded no memory figures.")
    st.stop()
share.seed_value("memory_metric", available)
metric = st.radio("Metric", available, format_func=lambda m: queries.MEMORY_METRICS[m], horizontal=True,
                  key="memory_metric")
share.publish({"memory_metric": metric})
_fig = ui_charts.memory_figure(summ, data.colors, metric, data.dashes)
st.plotly_chart(_fig, width="stretch", key="memory_chart")
ui_images.downloads(_fig, "moe-bench-memory", key="memory_chart_dl")
st.caption("Peak allocated/reserved come from torch.cuda after a peak reset; NVML is the per-process peak "
           "(includes the CUDA context); weights = allocated after load − baseline. Device-wide usage by other "
           "processes is never counted.")

table = summ[["label", "batch", "mem_weights_gib", "mem_peak_alloc_gib", "mem_peak_reserved_gib",
              "mem_nvml_peak_gib", "mem_used_gib", "weights_share"]]
gib = {c: st.column_config.NumberColumn(queries.MEMORY_METRICS[c] + " GiB", format="%.2f")
       for c in queries.MEMORY_METRICS}
st.dataframe(table, hide_index=True, width="stretch", key="memory_table",
             column_config={"label": "run", **gib,
                            "weights_share": st.column_config.NumberColumn("weights share", format="percent")})

st.subheader("Memory saved by pruning")
runs = data.runs_all.set_index("run_id")
pruned = [r for r in ids if bool(runs.at[r, "pruned"])]
if not pruned:
    st.info("None of the selected runs is pruned. Select a pruned variant to see what it saves against its base.")
    st.stop()
if ui_data.base_runs(data).empty:
    st.info("No unpruned base run passes the filters.")
    st.stop()
pairs = ui_data.base_pickers(data, pruned)
saved = compare.memory_saved(data.summary, data.runs_all, pairs)
if saved.empty:
    st.info("The pruned runs and their bases share no batch size.")
    st.stop()
_fig = ui_charts.saved_figure(saved, data.colors)
st.plotly_chart(_fig, width="stretch", key="memory_saved_chart")
ui_images.downloads(_fig, "moe-bench-memory-saved", key="memory_saved_chart_dl")
st.dataframe(saved, hide_index=True, width="stretch", key="memory_saved_table", column_config={
    "base_gib": st.column_config.NumberColumn("base GiB", format="%.2f"),
    "variant_gib": st.column_config.NumberColumn("variant GiB", format="%.2f"),
    "saved_gib": st.column_config.NumberColumn("saved GiB", format="%.2f"),
    "saved_pct": st.column_config.NumberColumn("saved %", format="%.1f%%"),
    "weights_saved_gib": st.column_config.NumberColumn("weights saved GiB", format="%.2f"),
})
