"""Dashboard forms of the research loop: calibrate a model on text domains (Routing page) and measure quality of
runs (Compare page). Each launches `python -m bench` in the background (bench.ui.research_launch) and shows the
last launches with their log tails."""

from __future__ import annotations

import streamlit as st

from bench.corpus import BUILTIN_DOMAINS
from bench.locks import pid_alive
from bench.ui import launch as ui_launch
from bench.ui import research_launch as rl
from bench.ui.data import db_path

MODELS = ("synthetic:tiny-moe", "synthetic:gpt-oss-20b")


def _domains_from(builtins: list[str], extra: str) -> list[str]:
    out = list(builtins)
    out += [line.strip() for line in extra.splitlines() if line.strip()]
    return out


def _recent(kind: str) -> None:
    for launch in rl.research_launches(db_path(), kind, limit=3):
        code = ui_launch.exit_code(launch.pid)
        state = "running" if code is None and pid_alive(launch.pid) else (
            "finished" if code in (0, None) else f"failed (exit code {code})")
        with st.expander(f"{launch.label} — {state}", expanded=state == "running"):
            st.code(ui_launch.log_tail(launch.log_path) or "(no output yet)", language="text")


def calibrate_form() -> None:
    with st.expander("Calibrate a model on text", icon=":material/science:"):
        st.caption("Runs `python -m bench calibrate` in the background: per layer and expert the routed tokens, mean "
                   "routing weight and REAP saliency. Built-in domains come from the Python standard library "
                   "(code: module sources; prose: their docstrings).")
        with st.form("rt_calibrate"):
            model = st.selectbox("Model", MODELS, key="rt_cal_model")
            builtins = st.multiselect("Built-in domains", list(BUILTIN_DOMAINS), default=list(BUILTIN_DOMAINS),
                                      key="rt_cal_builtin")
            extra = st.text_area("Your own domains, one NAME=PATH per line (.txt, .md, .jsonl or a folder)",
                                 key="rt_cal_extra", height=68)
            tokens = st.number_input("Token budget per domain (0: default, 2,048 on CPU / 262,144 on GPU)",
                                     min_value=0, value=0, step=1024, key="rt_cal_tokens")
            go = st.form_submit_button("Calibrate")
        if go:
            domains = _domains_from(builtins, extra)
            if not domains:
                st.error("Pick a built-in domain or give NAME=PATH.")
            else:
                rl.launch_calibrate(db_path(), model, domains, int(tokens) or None)
                st.success("Calibration started; reload the page when it has finished.")
        _recent("calibrate")


def quality_form(runs: dict[str, str], calibrated: list[str]) -> None:
    """`runs`: run_id -> label of measured runs that can be rebuilt; `calibrated`: calibrated domain names."""
    with st.expander("Measure quality of runs", icon=":material/science:"):
        st.caption("Runs `python -m bench quality` in the background: each run's variant against the same model "
                   "unpruned, on the held-out tail of each domain (never its calibration text).")
        with st.form("cmp_quality"):
            pick = st.multiselect("Runs", list(runs), format_func=runs.get, key="cmp_q_runs")
            options = list(dict.fromkeys([*BUILTIN_DOMAINS, *calibrated]))
            builtins = st.multiselect("Domains (held-out text)", options, default=["code"], key="cmp_q_domains")
            tokens = st.number_input("Positions per domain (0: default, 512 on CPU / 32,768 on GPU)", min_value=0,
                                     value=0, step=512, key="cmp_q_tokens")
            go = st.form_submit_button("Measure quality")
        if go:
            if not pick or not builtins:
                st.error("Pick at least one run and one domain.")
            else:
                rl.launch_quality(db_path(), pick, builtins, int(tokens) or None)
                st.success("Quality measurement started; reload the page when it has finished.")
        _recent("quality")
