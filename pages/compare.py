"""Compare: a base against candidates, per batch size, with within-noise marking and environment warnings."""

from __future__ import annotations

import streamlit as st

from bench.analysis import compare, cost
from bench.ui import charts as ui_charts
from bench.ui import data as ui_data
from bench.ui import images as ui_images
from bench.ui import quality_views, share
from bench.ui import views as ui_views
from bench.ui.shell import in_app_navigation

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
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
default_ids = [r for r in ui_data.default_ids(runs) if r in labels]
default_pruned = [r for r in default_ids if r in pruned_ids] or pruned_ids
guess = compare.base_for(runs, default_pruned[0]) if default_pruned else None
default_base = guess or (unpruned[0] if unpruned else ids[0])
_bad_base = share.seed_value("cmp_base", set(data.runs_all["run_id"]))
share.unknown_notice("a base run id", [_bad_base] if _bad_base else [])
if st.session_state.get("cmp_base") not in labels:
    st.session_state.pop("cmp_base", None)
base = st.selectbox("Base", ids, index=ids.index(default_base), format_func=lambda r: labels[r], key="cmp_base")
cand_options = [r for r in ids if r != base]
meta = runs.set_index("run_id")
same_variant = [r for r in compare.other_engines(runs, base) if r in cand_options]  # same variant and card


other_weights = [r for r in compare.other_weight_formats(runs, base) if r in cand_options]


def _engines() -> None:
    st.session_state["cmp_cands"] = same_variant


def _weights() -> None:
    st.session_state["cmp_cands"] = other_weights


ui_data.shared_runs(data, "cmp_cands", cand_options)
if "cmp_cands" in st.session_state:
    st.session_state["cmp_cands"] = [r for r in st.session_state["cmp_cands"] if r in cand_options]
else:
    top_k = meta.at[base, "top_k"]
    pick = [r for r in default_pruned if r != base and meta.at[r, "top_k"] == top_k]
    st.session_state["cmp_cands"] = (pick or [r for r in pruned_ids if r != base] or cand_options)[:3]
cands = st.multiselect("Candidates", cand_options, format_func=lambda r: labels[r], key="cmp_cands")
share.publish({"cmp_base": base, "cmp_cands": cands})
if same_variant:
    st.button(f"Compare engines: {meta.at[base, 'name']} measured with "
              + ", ".join(sorted({str(meta.at[r, 'engine']) for r in same_variant})), key="cmp_engines",
              on_click=_engines, help="Candidates: the same variant measured with another engine")
if other_weights:
    st.button(f"Compare weight formats: {meta.at[base, 'name']} in "
              + ", ".join(sorted({str(meta.at[r, 'weights']) for r in other_weights})), key="cmp_weights",
              on_click=_weights, help="Candidates: the same variant with its experts in another weight format")
if not cands:
    st.info("Pick one or more candidates.")
    st.stop()

for c in cands:
    diffs = compare.env_differences(data.runs_all, base, c)
    engine = [d for d in diffs if d.startswith("engine:")]
    other = [d for d in diffs if not d.startswith("engine:")]
    if engine and not other:
        same = "the same variant" if meta.at[c, "name"] == meta.at[base, "name"] else "these runs"
        st.info(f"**{labels[c]}** and **{labels[base]}** differ only in the decode engine "
                f"({meta.at[base, 'engine']} → {meta.at[c, 'engine']}); card, dtype and software versions match, "
                f"so the deltas below measure what the engine does to {same}.", icon=":material/info:")
    elif compare.only_weights_differ(diffs):
        st.info(f"**{labels[c]}** and **{labels[base]}** differ only in the expert weight format "
                f"({meta.at[base, 'weights']} → {meta.at[c, 'weights']}), so the deltas below measure what the "
                "format does to speed and memory.", icon=":material/info:")
    elif diffs:
        st.warning(f"**{labels[c]}** and **{labels[base]}** were measured differently — the comparison may not "
                   "be fair:\n" + "\n".join(f"- {d}" for d in diffs))

d = compare.deltas(data.summary, data.runs_all, base, cands)
if d.empty:
    st.info("The base and the candidates share no batch size.")
    st.stop()

share.seed_value("cmp_metric", ["total_pct", "per_stream_pct", "mem_pct"])
metric = st.radio("Chart", ["total_pct", "per_stream_pct", "mem_pct"], horizontal=True, key="cmp_metric",
                  format_func={"total_pct": "total tok/s", "per_stream_pct": "per-stream tok/s",
                               "mem_pct": "peak memory"}.get)
share.publish({"cmp_metric": metric})
fig = ui_charts.delta_figure(d, data.colors, metric)
st.plotly_chart(fig, width="stretch", key="cmp_chart")
ui_images.downloads(fig, "moe-bench-compare", key="cmp_chart_dl")
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
d = cost.add_cost_deltas(d, data.summary, data.runs_all, base, ui_data.prices())
pct.update({c: st.column_config.NumberColumn(t, format="%+.1f%%") for c, t in
            (("j_pct", "Δ J/token"), ("usd_pct", "Δ $/Mtok"))})
num.update({c: ui_views.ENERGY_COLUMNS[k] for c, k in
            (("base_j_per_token", "j_per_token"), ("j_per_token", "j_per_token"),
             ("base_usd_per_mtok", "usd_per_mtok"), ("usd_per_mtok", "usd_per_mtok"))})
num["base_j_per_token"] = st.column_config.NumberColumn("base J/token", format="%.3f")
num["base_usd_per_mtok"] = st.column_config.NumberColumn("base $/Mtok", format="$%.3f")
st.dataframe(d.drop(columns=["candidate_id"]), hide_index=True, width="stretch", key="cmp_table",
             column_config={**pct, **num, "within_noise": st.column_config.CheckboxColumn("within noise")})
if d["j_per_token"].isna().all() and d["base_j_per_token"].isna().all():
    st.caption("J/token is blank: none of these runs recorded NVML energy (CPU runs and imported reports have no "
               "counter). $/Mtok uses the sidebar's $ per GPU-hour.")

view = ui_views.more_views("cmp_view", ("Pareto", "Heatmap: many variants", "Energy & cost"))
if view == "Pareto":
    ui_views.pareto_view(compare.summary_for(data.summary, data.runs_all, [base, *cands]), data, key="cmp_pareto")
elif view == "Energy & cost":
    ui_views.energy_cost_view(compare.summary_for(data.summary, data.runs_all, [base, *cands]), data,
                              key="cmp_energy")
elif view == "Heatmap: many variants":
    _others = [r for r in cand_options if r not in cands]
    share.seed_list("cmp_heat")
    if "cmp_heat" not in st.session_state:
        st.session_state["cmp_heat"] = cands + _others[: max(0, 12 - len(cands))]
    st.session_state["cmp_heat"] = [r for r in st.session_state["cmp_heat"] if r in cand_options]
    heat_ids = st.multiselect("Variants in the heatmap", cand_options, format_func=lambda r: labels[r],
                              key="cmp_heat", help="Default: the candidates, then other runs, up to 12")
    share.publish({"cmp_heat": heat_ids})
    ui_views.heatmap_view(data.summary, data, base, heat_ids, key="cmp_heatmap")

quality_views.quality_section(data)
