"""Compare: a base against candidates, per batch size, with within-noise marking and environment warnings."""

from __future__ import annotations

import streamlit as st

from bench import queries, ui_charts, ui_data

st.title("Compare")
data = ui_data.page_data()
if data is None:
    st.stop()

runs = data.runs[data.runs["n_ok"] > 0]
labels = dict(zip(runs["run_id"], runs["label"], strict=True))
ids = list(labels)
if len(ids) < 2:
    st.info("Comparing needs at least two runs with successful points; loosen the filters or run a sweep.")
    st.stop()

pruned_ids = runs[runs["pruned"]]["run_id"].tolist()
unpruned = runs[~runs["pruned"]]["run_id"].tolist()
guess = queries.base_for(runs, pruned_ids[0]) if pruned_ids else None
default_base = guess or (unpruned[0] if unpruned else ids[0])
base = st.selectbox("Base", ids, index=ids.index(default_base), format_func=lambda r: labels[r], key="cmp_base")
cand_options = [r for r in ids if r != base]
if "cmp_cands" in st.session_state:
    st.session_state["cmp_cands"] = [r for r in st.session_state["cmp_cands"] if r in cand_options]
else:
    st.session_state["cmp_cands"] = ([r for r in pruned_ids if r != base] or cand_options)[:3]
cands = st.multiselect("Candidates", cand_options, format_func=lambda r: labels[r], key="cmp_cands")
if not cands:
    st.info("Pick one or more candidates.")
    st.stop()

for c in cands:
    diffs = queries.env_differences(data.runs_all, base, c)
    if diffs:
        st.warning(f"**{labels[c]}** and **{labels[base]}** were measured differently — the comparison may not "
                   "be fair:\n" + "\n".join(f"- {d}" for d in diffs))

d = queries.deltas(data.summary, data.runs_all, base, cands)
if d.empty:
    st.info("The base and the candidates share no batch size.")
    st.stop()

metric = st.radio("Chart", ["total_pct", "per_stream_pct", "mem_pct"], horizontal=True, key="cmp_metric",
                  format_func={"total_pct": "total tok/s", "per_stream_pct": "per-stream tok/s",
                               "mem_pct": "peak memory"}.get)
st.plotly_chart(ui_charts.delta_figure(d, data.colors, data.names, metric), width="stretch", key="cmp_chart")
st.caption("Faded, hatched bars: the repeat spreads (min..max) of the two runs overlap — the difference is "
           "**within noise**.")
n_noise = int(d["within_noise"].sum())
if n_noise:
    st.info(f"{n_noise} of {len(d)} throughput deltas are within noise.")
pct = {c: st.column_config.NumberColumn(t, format="%+.1f%%") for c, t in
       (("total_pct", "Δ total"), ("per_stream_pct", "Δ per-stream"), ("mem_pct", "Δ peak mem"))}
num = {c: st.column_config.NumberColumn(t, format="%.2f") for c, t in
       (("base_total_tps", "base total tok/s"), ("total_tps", "total tok/s"),
        ("base_per_stream_tps", "base per-stream"), ("per_stream_tps", "per-stream"),
        ("base_mem_gib", "base GiB"), ("mem_gib", "GiB"))}
st.dataframe(d.drop(columns=["candidate_id"]), hide_index=True, width="stretch", key="cmp_table",
             column_config={**pct, **num, "within_noise": st.column_config.CheckboxColumn("within noise")})
