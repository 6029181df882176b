"""Routing: how a model routes each calibration domain (layer x expert heatmaps), how much the domains' top-N sets
overlap, which experts a pruned run kept, and distinct experts per decode step against batch size."""

from __future__ import annotations

import streamlit as st

from bench.analysis import routing
from bench.ui import data as ui_data
from bench.ui import research_charts as charts
from bench.ui import research_data, research_forms
from bench.ui.shell import in_app_navigation

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("Routing")
st.caption("Calibrations come from `python -m bench calibrate --model M --domain code --domain chat=FILE.jsonl`: "
           "per layer and expert, the tokens routed, the mean routing weight and the REAP saliency "
           "(mean of routing weight × ‖expert output‖ over the tokens routed to the expert).")
info = ui_data.info()
if info.error:
    st.error(info.error)
    st.stop()
research_forms.calibrate_form()
cals = research_data.calibrations() if info.exists else None
if cals is None or cals.empty:
    if not info.exists or info.empty:
        ui_data.page_data()  # the shared empty/missing-database state
    st.info("No calibrations yet. Run e.g. `python -m bench calibrate --model synthetic:tiny-moe --domain code "
            "--domain prose` (built-in domains from the Python standard library), then reload.")
    st.stop()

models = list(dict.fromkeys(cals["model_fingerprint"]))
model_names = {fp: f"{cals.loc[cals['model_fingerprint'] == fp, 'model'].iloc[0]} ({fp})" for fp in models}
fp = st.selectbox("Model", models, format_func=model_names.get, key="rt_model")
mc = cals[cals["model_fingerprint"] == fp].drop_duplicates("domain")
if mc["tokenizer"].astype(str).str.startswith("byte-level").any():
    st.info("Synthetic weights, byte-level tokens: this routing shows how random weights split text-shaped input, "
            "not how a trained model routes language.", icon=":material/info:")
st.dataframe(mc[["domain", "tokens", "tokenizer", "text_source", "text_hash", "seconds", "calibration_id"]],
             hide_index=True, width="stretch", key="rt_cals",
             column_config={"seconds": st.column_config.NumberColumn("seconds", format="%.1f"),
                            "text_source": "text"})
domain_of = dict(zip(mc["calibration_id"], mc["domain"], strict=True))
chosen = st.multiselect("Domains", list(domain_of), default=list(domain_of)[:4], format_func=domain_of.get,
                        key="rt_domains")
if not chosen:
    st.info("Pick at least one domain.")
    st.stop()
experts = research_data.calibration_experts(chosen)
score = st.radio("Colour", list(routing.SCORES), format_func=routing.SCORES.get, horizontal=True, key="rt_score",
                 help="routing share: the expert's part of the layer's routed tokens (sums to 1 per layer)")

kept_runs = research_data.kept_experts()
kept_runs = kept_runs[kept_runs["model_fingerprint"] == fp] if not kept_runs.empty else kept_runs
run_labels = {"": "(none)"}
if not kept_runs.empty:
    all_labels = ui_data.all_runs().set_index("run_id")["label"].to_dict()
    run_labels.update({r: all_labels.get(r, r) for r in kept_runs["run_id"]})
pick = st.selectbox("Mark the kept and dropped experts of a pruned run", list(run_labels),
                    format_func=run_labels.get, key="rt_run")
kept = None
if pick:
    row = kept_runs.set_index("run_id").loc[pick]
    kept = routing.kept_cells(row["kept_experts_json"])
    st.caption(f"How **{run_labels[pick]}** chose its {int(row['experts'])} experts per layer: {row['notes']}")

for cid in chosen:
    grid = routing.heatmap(experts, cid, score)
    st.plotly_chart(charts.routing_heatmap(grid, domain_of[cid], score, kept, run_labels.get(pick) if pick else None),
                    width="stretch", key=f"rt_heat_{cid}")
    if kept:
        share = routing.routed_share_kept(experts, cid, kept)
        if share is not None:
            st.caption(f"{100 * share:.1f}% of domain {domain_of[cid]}'s routed tokens went to experts this run "
                       "keeps (mean over layers).")

st.subheader("Overlap of the domains' top-N experts")
n_experts = int(mc["experts"].iloc[0])
if len(chosen) < 2:
    st.info("Pick two or more domains to see their overlap.")
else:
    n = st.slider("N (experts per domain and layer)", 1, n_experts, max(1, n_experts // 2), key="rt_n")
    jac = routing.jaccard_by_layer(experts, chosen, domain_of, n, score)
    st.plotly_chart(charts.jaccard_figure(jac, n), width="stretch", key="rt_jaccard")
    st.caption(f"Chance level for two random top-{n} sets of {n_experts}: Jaccard ≈ "
               f"{(n * n / n_experts) / (2 * n - n * n / n_experts):.2f}.")

st.subheader("Distinct experts per decode step")
data = ui_data.page_data()
if data is None:
    st.stop()
with_distinct = data.summary[data.summary["distinct_experts"].notna()]["run_id"].unique().tolist()
runs_ok = data.runs[data.runs["run_id"].isin(with_distinct)]
if runs_ok.empty:
    st.info("No run recorded distinct experts per step yet (the graph engine counts them).")
    st.stop()
label_of = dict(zip(runs_ok["run_id"], runs_ok["label"], strict=True))
ids = st.multiselect("Runs", list(label_of), default=list(label_of)[:3], format_func=label_of.get,
                     key="rt_distinct_runs")
dist = routing.distinct_vs_batch(data.summary, data.runs_all, ids)
st.plotly_chart(charts.distinct_figure(dist, data.colors), width="stretch", key="rt_distinct")
st.caption("Measured: the engine's count of distinct experts per layer per step (median of the repeats; runs "
           "without a count use the uniform expectation). Dashed: U of uniform routing; below it, routing is "
           "concentrated and a step reads fewer expert weights than the uniform roofline assumes.")
