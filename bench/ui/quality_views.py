"""Compare's quality views: a table of Δ tok/s, Δ memory, KL, top-1 agreement and Δ perplexity per variant, and
the speed-against-quality scatter with its Pareto front. Laid out from bench.analysis.quality; called by
pages/compare.py in its own section."""

from __future__ import annotations

import streamlit as st

from bench.analysis import quality as aq
from bench.ui import research_charts, research_data, research_forms
from bench.ui.data import PageData


def quality_section(data: PageData) -> None:
    st.subheader("Quality beside speed")
    _quality_figures(data)
    measured = data.runs[~data.runs["imported"]]
    cals = research_data.calibrations()
    research_forms.quality_form(dict(zip(measured["run_id"], measured["label"], strict=True)),
                                sorted(set(cals["domain"])) if not cals.empty else [])


def _quality_figures(data: PageData) -> None:
    q = research_data.quality()
    runs = data.runs[data.runs["run_id"].isin(set(q["run_id"]))] if not q.empty else data.runs.iloc[0:0]
    if runs.empty:
        st.info("No quality figures for these runs yet: add `quality = true` to a sweep spec, or run "
                "`python -m bench quality --sweep SWEEP_ID --domain code` after a sweep (or use the form below).")
        return
    ok = data.summary[data.summary["run_id"].isin(runs["run_id"]) & data.summary["total_tps"].notna()]
    batches = sorted(int(b) for b in ok["batch"].unique())
    if not batches:
        st.info("The runs with quality figures have no successful points.")
        return
    batch = st.select_slider("Speedup at batch", batches, value=batches[-1], key="cmp_q_batch")
    table = aq.quality_table(data.summary, data.runs_all, q[q["run_id"].isin(runs["run_id"])], int(batch))
    if table["synthetic"].any():
        st.info("Synthetic (random) weights: perplexity means nothing here — read KL and top-1 agreement, which "
                "measure how far pruning moved the outputs from the base.", icon=":material/info:")
    st.plotly_chart(research_charts.pareto_figure(table, data.colors, int(batch)), width="stretch",
                    key="cmp_q_pareto")
    st.dataframe(
        table.drop(columns=["run_id", "synthetic"]), hide_index=True, width="stretch", key="cmp_q_table",
        column_config={
            "label": "variant", "base": "speed base",
            "speedup": st.column_config.NumberColumn("speedup", format="%.2f×"),
            "tps_pct": st.column_config.NumberColumn("Δ tok/s", format="%+.1f%%"),
            "mem_pct": st.column_config.NumberColumn("Δ memory", format="%+.1f%%"),
            "kl": st.column_config.NumberColumn("KL(base‖variant)", format="%.4g",
                                                help="nats, mean over positions and domains"),
            "top1_agreement": st.column_config.NumberColumn("top-1 agreement", format="percent"),
            "ppl_delta": st.column_config.NumberColumn("Δ perplexity", format="%+.2f",
                                                       help="variant − base; meaningful only for trained weights"),
            "positions": "positions", "quality_s": st.column_config.NumberColumn("quality cost s", format="%.1f"),
            "pareto": st.column_config.CheckboxColumn("Pareto front"),
        })
    st.caption("Quality is measured against each variant's own base — the same model unpruned at its native "
               "top_k — on held-out text of each domain (never the calibration text). Speed deltas are against "
               "the speed base shown (an unpruned run with the same top_k).")
