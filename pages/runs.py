"""Runs: sweeps and runs with status and environment, a New sweep form, live progress, Cancel and Rerun."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from bench import locks
from bench.analysis import labels
from bench.analysis.lanes import where_ran
from bench.errors import BadInputError
from bench.paths import SPECS_DIR
from bench.spec import DEVICES, DTYPES, ENGINE_NAMES, PRUNE_METHODS, WEIGHT_FORMATS, load_spec
from bench.ui import cluster as ui_cluster
from bench.ui import data as ui_data
from bench.ui import launch as ui_launch
from bench.ui import sweep_form
from bench.ui.shell import in_app_navigation

TINY_SPEC = "tiny-cpu.toml"
ENGINE_HELP = {"hf": "hf — transformers generate()", "graph": "graph — own decoder, CUDA-graph capture"}
ENGINE_TIP = ("hf: the Hugging Face eager decode loop (the reference report's harness). graph: our gpt-oss "
              "decoder with one decode step captured as a CUDA graph per batch size.")
NO_GPU_GRAPH = " On this machine (no GPU) graph runs eagerly on the CPU, without capture: it works, just slowly."
PROGRESS_EVERY_S = 2.0
STARTING_GRACE_S = 60  # a launch whose process is gone and that never registered: shown this long, unless newest

in_app_navigation()  # first: a direct run of this file (Streamlit's pages/ mode) reruns through app.py
st.title("Runs")
db = ui_data.db_path()
info = ui_data.info()
if info.error:
    st.error(info.error)
    st.stop()


# ---------------------------------------------------------------------------------------------- live progress


def _sweep_rows() -> dict[str, dict]:
    if not Path(db).exists():
        return {}
    try:
        df = ui_data.sweeps_df()  # rows cached per file version, state derived now; the Sweeps table below shares it
    except Exception as exc:  # a locked or damaged file: say so, keep the page alive
        st.caption(f"progress unavailable for a moment: {exc}")
        return {}
    return {r["sweep_id"]: sweep_form.clean_record(r) for r in df.to_dict("records")} if not df.empty else {}


def _panel(sweep_id: str, row: dict | None, launch: ui_launch.Launch | None) -> None:
    with st.container(border=True):
        title = (row or {}).get("title") or (launch.label if launch else sweep_id)
        if row is None:
            alive = launch is not None and locks.pid_alive(launch.pid)
            state = "starting" if alive else "failed to start"
        else:
            state = row["shown_state"]
        head = st.columns([4, 1])
        head[0].markdown(f"**{title}** · `{sweep_id}` · state **{state}**")
        active = state in ("starting", "queued", "running")
        pid = (row or {}).get("pid") or (launch.pid if launch else None)
        if active and pid and head[1].button("Cancel", key=f"cancel_{sweep_id}", type="secondary"):
            if ui_launch.cancel(int(pid)):
                st.toast(f"Cancelling {sweep_id}…")
            else:
                st.toast(f"{sweep_id} had already stopped.")
        if row is not None:
            done, planned = int(row.get("points_done") or 0), int(row.get("points_planned") or 0)
            st.progress(min(done / planned, 1.0) if planned else 0.0,
                        text=f"{done} / {planned} points" + (f" · current variant: **{row['current_variant']}**"
                                                             if row.get("current_variant") and active else ""))
            lanes = ui_cluster.lanes_for(db, sweep_id, row)
            if not lanes.empty:
                st.dataframe(lanes, hide_index=True, width="stretch", key=f"lanes_{sweep_id}",
                             column_config={"last_tps": st.column_config.NumberColumn("last tok/s", format="%.1f"),
                                            "runs_done": "variants done"})
            if row.get("message"):
                (st.error if state in ("failed", "crashed") else st.caption)(str(row["message"]))
            if state == "crashed":
                st.error("The bench process is gone but the sweep never finished: it crashed. "
                         f"Resume it with `python -m bench sweep --resume {sweep_id}`.")
        log_path = (row or {}).get("log_path") or (launch.log_path if launch else None)
        tail = ui_launch.log_tail(log_path)
        if tail:
            st.code(tail, language=None)
        elif active:
            st.caption("waiting for the first log lines (the bench is starting: importing torch, loading the "
                       "model)…")


@st.fragment(run_every=PROGRESS_EVERY_S)
def live_progress() -> None:
    ui_launch.reap()
    rows = _sweep_rows()
    recs = {launch.sweep_id: launch for launch in ui_launch.launches(db)}
    shown: list[str] = [sid for sid, r in rows.items() if r["shown_state"] in locks.ACTIVE_STATES]
    # Launches not yet registered (the bench is importing torch); one that died before registering shows a
    # minute ("failed to start", with its log), then only while it is the newest launch, below the active ones.
    for sid, launch in recs.items():
        if sid not in rows and sid not in shown and (locks.pid_alive(launch.pid) or
                                                     time.time() - launch.started < STARTING_GRACE_S):
            shown.append(sid)
    latest = next(iter(recs), None)  # the newest launch stays visible after it ends
    if latest and latest not in shown:
        shown.append(latest)
    if not shown:
        st.caption("No sweep is running. Start one below.")
        return
    for sid in shown:
        _panel(sid, rows.get(sid), recs.get(sid))


st.subheader("Live progress")
live_progress()


# ---------------------------------------------------------------------------------------------- new sweep


def _spec_files() -> list[Path]:
    return sorted(SPECS_DIR.glob("*.toml"))


def _launched(launch: ui_launch.Launch) -> None:
    st.session_state["last_launch"] = launch.sweep_id
    st.success(f"Launched `{launch.sweep_id}` (pid {launch.pid}); progress shows above.")


st.subheader("New sweep")
gpu = ui_launch.has_gpu()
specs = _spec_files()
names = [p.name for p in specs]
tiny = SPECS_DIR / TINY_SPEC
if not gpu:
    st.info("No GPU found (`nvidia-smi -L` lists none): the form defaults to the tiny CPU preset "
            f"(`data/specs/{TINY_SPEC}`), which runs in seconds on the CPU. Engine `graph` works here too: on "
            "the CPU it runs its decoder eagerly, **without CUDA-graph capture** (slower; capture needs a GPU).")
where = st.radio("Run on", ui_cluster.WHERE_OPTIONS, horizontal=True, key="new_where", help=ui_cluster.WHERE_HELP)
address = st.text_input("Dask scheduler address", key="new_cluster_address", placeholder="tcp://head-node:8786") \
    if where == ui_cluster.ADDRESS else ""
mode = st.radio("Describe the sweep", ["Pick a spec file", "Fill in the fields"], horizontal=True, key="new_mode")
if mode == "Pick a spec file":
    if not specs:
        st.warning(f"No spec files in `{SPECS_DIR}`; fill in the fields instead.")
    else:
        default_name = TINY_SPEC if (not gpu and TINY_SPEC in names) else next(
            (n for n in names if n != TINY_SPEC), names[0])
        chosen = st.selectbox("Spec", names, index=names.index(default_name), key="new_spec")
        path = SPECS_DIR / chosen
        # rendered on demand (a code block loads the syntax highlighter, ~1.5 MB of script): docs/PERF.md
        shown_spec = st.expander(f"data/specs/{chosen}", expanded=False, key="new_spec_open", on_change="rerun")
        if shown_spec.open:
            shown_spec.code(path.read_text(), language="toml")
        if st.button("Launch sweep", key="launch_spec", type="primary"):
            try:
                load_spec(path)
                cluster = ui_cluster.cluster_choice(where, address)
            except BadInputError as exc:
                st.error(str(exc))
            else:
                _launched(ui_launch.launch_sweep(db, path, chosen, cluster=cluster))
else:
    base = sweep_form.defaults(tiny if (not gpu and tiny.exists()) else (specs[0] if specs else None))
    sw = base.get("sweep", {})
    with st.form("fields_form"):
        title = st.text_input("Title", value=base.get("title", "my sweep"))
        st.caption("Variants: prune by `prune_experts` + `prune_method`, or a keep file in `prune_keep` "
                   "(several files separated by `;` make a union prune to `prune_experts`). Methods frequency, "
                   "reap and union rank experts by calibrations: name them in `prune_domains` (`code;prose`, "
                   "from `bench calibrate`), or `random-tokens` for frequency counted on random ids.")
        edited = st.data_editor(
            sweep_form.variant_rows(base.get("variants", [])), num_rows="dynamic", width="stretch", key="new_variants",
            column_config={
                "top_k": st.column_config.NumberColumn("top_k", min_value=1, step=1),
                "prune_experts": st.column_config.NumberColumn("prune_experts", min_value=1, step=1),
                "prune_method": st.column_config.SelectboxColumn("prune_method", options=list(PRUNE_METHODS)),
                "weights": st.column_config.SelectboxColumn(
                    "weights", options=list(WEIGHT_FORMATS), default="bf16",
                    help="expert weights: bf16, or mxfp4 (the released checkpoint's blocks + scales, 4.25 bits)"),
            },
        )
        c = st.columns(4)
        batches = c[0].text_input("Batch sizes", value=", ".join(str(b) for b in sw.get("batch_sizes", [1, 2, 4])))
        prompt_len = c[1].number_input("Prompt length", min_value=1, value=int(sw.get("prompt_len", 16)))
        new_tokens = c[2].number_input("New tokens", min_value=2, value=int(sw.get("new_tokens", 12)))
        repeats = c[3].number_input("Repeats", min_value=1, value=int(sw.get("repeats", 3)))
        c = st.columns(3)
        engine = c[0].selectbox("Engine", ENGINE_NAMES, index=ENGINE_NAMES.index(sw.get("engine", "hf")),
                                format_func=lambda e: ENGINE_HELP.get(e, e),
                                help=ENGINE_TIP + ("" if gpu else NO_GPU_GRAPH))
        device_default = sw.get("device", "auto") if gpu else "cpu"
        device = c[1].selectbox("Device", DEVICES, index=DEVICES.index(device_default),
                                help="auto: the GPU when there is one, else the CPU" + ("" if gpu else
                                                                                         " (no GPU on this machine)"))
        dtype = c[2].selectbox("Dtype", DTYPES, index=DTYPES.index(sw.get("dtype", "auto")))
        submitted = st.form_submit_button("Launch sweep", type="primary")
    if submitted:
        try:  # the whole spec is validated before anything is launched
            spec = sweep_form.form_to_spec(sweep_form.FormValues(
                title=title, variants=edited, batches=batches, prompt_len=prompt_len, new_tokens=new_tokens,
                repeats=repeats, engine=engine, device=device, dtype=dtype,
                cluster=ui_cluster.cluster_choice(where, address)))
        except BadInputError as exc:
            st.error(f"Not launched: {exc}")
        else:
            _launched(ui_launch.launch_spec(db, spec))
            if engine == "graph" and (device == "cpu" or not gpu):
                st.caption("graph on the CPU: eager decode, no CUDA-graph capture — slower than on a GPU.")


# ---------------------------------------------------------------------------------------------- tables

if not info.exists or info.empty:
    st.info(f"No sweeps or runs in `{db}` yet. Launch one above, or `make run` to load the default data.")
    st.stop()

st.subheader("Sweeps")
sweeps = ui_data.sweeps_df()
if sweeps.empty:
    st.caption("No sweeps launched yet; the database holds imported runs only.")
else:
    view = sweeps.assign(points=sweeps["points_done"].astype(str) + " / " + sweeps["points_planned"].astype(str),
                         duration=sweeps["duration_s"].map(ui_data.fmt_duration))
    st.dataframe(view[["sweep_id", "title", "shown_state", "origin", "points", "current_variant", "created_at",
                       "duration", "host", "message"]], hide_index=True, width="stretch", key="sweeps_table",
                 column_config={"shown_state": "state", "created_at": st.column_config.DatetimeColumn("created")})

st.subheader("Runs")
runs_all = ui_data.all_runs()
runs = labels.apply_filters(runs_all, ui_data.filters())
if runs.empty:
    st.info("No runs pass the sidebar filters.")
    st.stop()
groups = sweep_form.run_groups(runs, sweeps)
if not groups:
    st.info("No runs pass the sidebar filters.")
    st.stop()
group = st.selectbox("Sweep", list(groups), format_func=groups.get, key="runs_group")
in_group = sweep_form.runs_in_group(runs, group)
sweep_row = (sweep_form.clean_record(sweeps.set_index("sweep_id").loc[group].to_dict())
             if not sweeps.empty and group in set(sweeps["sweep_id"]) else None)
sweep_state = sweep_row["shown_state"] if sweep_row else None
n_bad = int((in_group["n_points"] - in_group["n_ok"]).clip(lower=0).sum())
if sweep_row is not None and n_bad:
    c = st.columns([3, 1])
    c[0].caption(f"{n_bad} point(s) of this sweep did not run cleanly (error, oom or skipped).")
    if c[1].button("Retry failed points", key=f"retry_{group}", disabled=sweep_state in locks.ACTIVE_STATES,
                   help=f"`python -m bench sweep --resume {group} --retry-errors`: measures them again under the "
                        "same sweep id" + (" (wait until the sweep has stopped)" if sweep_state in
                                           locks.ACTIVE_STATES else "")):
        _launched(ui_launch.launch_retry(db, group, str(sweep_row.get("title") or group)))
for r in (sweep_form.clean_record(x) for x in in_group.to_dict("records")):
    state = r["state"]
    if state in ("running", "pending") and sweep_state and sweep_state not in locks.ACTIVE_STATES:
        state = sweep_state  # the sweep stopped (cancelled, crashed) before this run finished
    with st.container(border=True):
        # one markdown per run, not three columns of markdown: a card is 6 forward messages instead of 10 (the latest
        # sweep's cards were most of the page's 135 messages; warm load 1.64 -> 1.41 s, docs/PERF.md)
        c = st.columns([7, 1])
        prune = f" · {int(r['experts'])}/{int(r['base_experts'])} experts" if pd.notna(r["experts"]) and pd.notna(
            r["base_experts"]) else ""
        what = f"**{r['label']}** · top_k {r['top_k']}{prune} · `{r['model']}`" + (
            f" · rerun of `{r['rerun_of']}`" if r.get("rerun_of") else "")
        how = f"{state} · {r['n_ok']}/{r['n_points']} points ok · {ui_data.fmt_duration(r['duration_s']) or '—'}"
        where = (f"{r['device_name'] or '—'} · {r['engine']} · {r['dtype']} · torch {r['torch_version'] or '—'} · "
                 f"{where_ran(r)}" + (f" · weights: {r['weights_impl']}" if r.get("weights_impl") else ""))
        c[0].markdown(f"{what}  \n{how}  \n{where}")
        if c[1].button("Rerun", key=f"rerun_{r['run_id']}", disabled=not bool(r["rerunnable"]),
                       help="Run the same resolved config again as a new run" if r["rerunnable"]
                       else "Imported runs carry no config to rerun"):
            _launched(ui_launch.launch_rerun(db, r["run_id"], r["name"]))

all_runs_box = st.expander(f"All {len(runs)} runs passing the filters (environment and counts)", key="runs_all_open",
                           on_change="rerun")  # the table is built when opened
ALL_RUN_COLUMNS = ["label", "sweep_title", "state", "n_ok", "n_points", "max_batch", "duration_s", "device_name",
                   "engine", "dtype", "torch_version", "transformers_version", "cuda", "driver", "bench_version",
                   "git_commit", "host", "gpu_index", "gpu_uuid", "worker_address", "source", "rerun_of",
                   "run_date", "run_id"]
if all_runs_box.open:
    all_runs_box.dataframe(runs[ALL_RUN_COLUMNS], hide_index=True, width="stretch", key="runs_table",
                           column_config={"label": "run", "sweep_title": "sweep",
                                          "duration_s": st.column_config.NumberColumn("duration s", format="%.0f")})
