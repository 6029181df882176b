"""History: one variant (model + prune + top_k + weights + engine) across dates, commits, cards and library
versions, a line per metric with its repeat spread, and a flag when the newest run is slower or faster beyond
noise (`bench.analysis.history.verdict`: Mann–Whitney U on the repeats; `python -m bench compare` prints the same)."""

from __future__ import annotations

import streamlit as st

from bench.analysis import cost, history
from bench.store import queries
from bench.ui import charts as ui_charts
from bench.ui import data as ui_data
from bench.ui import images as ui_images
from bench.ui import share
from bench.ui.shell import in_app_navigation

METRICS = {"total_tps": "total tok/s", "per_stream_tps": "per-stream tok/s", "j_per_token": "J / token",
           "usd_per_mtok": "$ / M tokens"}


@st.cache_data(max_entries=32, show_spinner=False)
def _verdict(path: str, version: tuple, old_id: str, new_id: str, old_label: str, new_label: str
             ) -> history.Verdict:
    reps = queries.repeats(path, [old_id, new_id])
    return history.verdict(reps, old_id, new_id, "total_tps", names={old_id: old_label, new_id: new_label})


in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("History")
data = ui_data.page_data()
if data is None:
    st.stop()

ids_df = history.identities(data.runs)
if ids_df.empty:
    st.info("No run with successful points passes the filters.")
    st.stop()
options = ids_df["identity"].tolist()
bad = share.seed_value("hist_variant", options)
if bad:
    st.warning(f"The link names a variant this database does not hold (`{bad}`); showing another.",
               icon=":material/link_off:")
names = dict(zip(ids_df["identity"], ids_df["name"], strict=True))
counts = dict(zip(ids_df["identity"], ids_df["n_runs"], strict=True))
if st.session_state.get("hist_variant") not in options:
    st.session_state.pop("hist_variant", None)
identity = st.selectbox("Variant (model · prune · top_k · weights · engine)", options, key="hist_variant",
                        format_func=lambda i: f"{names[i]} — {counts[i]} run(s) — {i}",
                        help="Runs are one variant when model, prune, top_k, expert weight format and engine match; "
                             "they may differ in date, commit, card and library versions. Default: the variant with "
                             "the most runs.")
runs = history.history_runs(data.runs, identity)
batches = sorted(set(data.summary.loc[data.summary["run_id"].isin(runs["run_id"]) & data.summary["total_tps"].notna(),
                                      "batch"]))
if not batches:
    st.info("This variant has no successful points.")
    st.stop()
share.seed_value("hist_batch", batches, cast=int)
if st.session_state.get("hist_batch") not in batches:
    st.session_state["hist_batch"] = batches[-1]
batch = st.select_slider("Batch size", batches, key="hist_batch")
share.publish({"hist_variant": identity, "hist_batch": batch})

summ = cost.add_energy_cost(data.summary[data.summary["run_id"].isin(runs["run_id"])], data.runs_all,
                            ui_data.prices())
for m in ("j_per_token", "usd_per_mtok"):  # spreads of the derived metrics: J/token from its repeats, $ from tok/s
    summ[f"{m}_min"], summ[f"{m}_max"] = summ[m], summ[m]
summ["usd_per_mtok_min"] = [cost.usd_per_mtok(t, p) for t, p in zip(summ["total_tps_max"], summ["usd_per_hour"],
                                                                     strict=True)]
summ["usd_per_mtok_max"] = [cost.usd_per_mtok(t, p) for t, p in zip(summ["total_tps_min"], summ["usd_per_hour"],
                                                                     strict=True)]
hist = history.history_frame(summ, runs, batch, list(METRICS))

# --- the verdict: newest run against the one before it
if len(runs) >= 2:
    old_id, new_id = runs["run_id"].iloc[-2], runs["run_id"].iloc[-1]
    labels = dict(zip(data.runs_all["run_id"], data.runs_all["label"], strict=True))
    v = _verdict(str(data.db), queries.file_version(data.db), old_id, new_id, labels[old_id], labels[new_id])
    text = v.sentence()
    if v.status == "slower":
        st.error(f"**Regression** — {text}", icon=":material/trending_down:")
    elif v.status == "faster":
        st.success(f"**Faster** — {text}", icon=":material/trending_up:")
    elif v.status == "within noise":
        st.info(f"**Within noise** — {text}", icon=":material/drag_handle:")
    else:
        st.warning(text)
    st.caption(f"Same verdict on the command line: `python -m bench compare {old_id} {new_id}` (exit 1 on a "
               "regression). Newest vs the run before it; all batch sizes both measured.")
else:
    st.info("One run of this variant so far: the verdict needs two.")

share.seed_value("hist_metric", list(METRICS))
metric = st.segmented_control("Metric", list(METRICS), format_func=METRICS.get, key="hist_metric",
                              selection_mode="single", default="total_tps") or "total_tps"
share.publish({"hist_metric": metric})
unit = METRICS[metric]
if hist[metric].notna().sum() == 0:
    st.caption(f"No {unit} recorded for these runs"
               + (" (no NVML energy counter: CPU or imported runs)." if metric == "j_per_token" else "."))
else:
    fig = ui_charts.history_figure(hist, metric, unit, f"{unit} of {names[identity]} at batch {batch}, run by run")
    st.plotly_chart(fig, width="stretch", key=f"hist_{metric}")
    ui_images.downloads(fig, f"moe-bench-history-{metric}", key=f"hist_{metric}_dl")
    st.caption("A point per run (oldest first); error bars: min..max of its repeats (for $/M tokens, from the "
               "tok/s spread).")

st.subheader("Runs of this variant")
st.dataframe(hist[["label", "run_date", "git_commit", "device_name", "torch_version", "transformers_version",
                   "total_tps", "total_tps_min", "total_tps_max", "j_per_token", "usd_per_mtok"]],
             hide_index=True, width="stretch", key="hist_table",
             column_config={"label": "run", "run_date": "started", "git_commit": "commit", "device_name": "card",
                            "torch_version": "torch", "transformers_version": "transformers",
                            "total_tps": st.column_config.NumberColumn("total tok/s", format="%.2f"),
                            "total_tps_min": st.column_config.NumberColumn("min", format="%.2f"),
                            "total_tps_max": st.column_config.NumberColumn("max", format="%.2f"),
                            "j_per_token": st.column_config.NumberColumn("J / token", format="%.3f"),
                            "usd_per_mtok": st.column_config.NumberColumn("$ / M tokens", format="$%.3f")})
if len(runs) >= 2 and v.per_batch:
    with st.expander("Per batch size (each alone: too few repeats for p < 0.05 with 3 repeats)"):
        st.dataframe(v.per_batch, hide_index=True, width="stretch", key="hist_per_batch")
