"""Dashboard data plumbing: cached `bench.store.queries` results, the shared sidebar, and the empty/error states.

DataFrames are cached with `st.cache_data` keyed by the database path and its file version (mtime and size of
the file and its WAL), so a sweep's writes show up at once and no connection is ever kept open.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from bench.analysis import compare, cost, labels
from bench.analysis.labels import Filters
from bench.paths import PROJECT_ROOT, resolve_db_path
from bench.store import queries
from bench.store.queries import DbInfo
from bench.ui import share
from bench.ui.colors import run_styles

SOURCES = ("all", "measured", "imported")
DEFAULT_HELP = ("Default: the runs of the latest sweep (else the latest run of each variant) that pass the "
                "sidebar filters.")


def db_path() -> Path:
    return resolve_db_path()


def shown_path(path: Path) -> str:
    """The database path as the sidebar shows it: relative to the project inside it, else the file name only
    (the full path is in the tooltip), so no temp or home folder is spelled out on screen."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT.resolve()))
    except ValueError:
        return Path(path).name


@st.cache_data(max_entries=8, show_spinner=False)
def _runs(path: str, version: tuple) -> pd.DataFrame:
    return queries.runs(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _summary(path: str, version: tuple) -> pd.DataFrame:
    return queries.point_summary(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _info(path: str, version: tuple) -> DbInfo:
    return queries.db_info(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _overview(path: str, version: tuple) -> dict:
    return queries.overview(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _styles(path: str, version: tuple) -> tuple[dict[str, str], dict[str, str]]:
    return run_styles(_runs(path, version))


def styles() -> tuple[dict[str, str], dict[str, str]]:
    """(label -> colour, label -> dash) for every run (`bench.ui.colors.run_styles`), cached per file version: it
    loops over the runs (~0.1 s for 500), which every page view paid."""
    path = db_path()
    return _styles(str(path), queries.file_version(path))


def info() -> DbInfo:
    path = db_path()
    return _info(str(path), queries.file_version(path))


def all_runs() -> pd.DataFrame:
    path = db_path()
    return _runs(str(path), queries.file_version(path))


def summary() -> pd.DataFrame:
    path = db_path()
    return _summary(str(path), queries.file_version(path))


def overview() -> dict:
    path = db_path()
    return _overview(str(path), queries.file_version(path))


def filters() -> Filters:
    """The sidebar filters as the user left them (session state survives page switches)."""
    ss = st.session_state
    return Filters(
        variants=list(ss.get("flt_variants") or []), engines=list(ss.get("flt_engines") or []),
        cards=list(ss.get("flt_cards") or []), weights=list(ss.get("flt_weights") or []),
        source=ss.get("flt_source") or "all",
        date_from=ss.get("flt_from"), date_to=ss.get("flt_to"),
    )


def sidebar() -> None:
    """The sidebar every page shares: which database, and the filters."""
    path = db_path()
    sb = st.sidebar
    sb.caption("Database", help=f"`{path}`\n\nSet `BENCH_DB` (or `make run DB=...`) to open another file.")
    # inline code in markdown, not st.code: a code block loads the syntax highlighter (about 1.5 MB of script,
    # 10-15% of a page's browser time on every page, docs/PERF.md) for one line of text
    sb.markdown(f"`{shown_path(path).replace('`', '')}`")
    db = info()
    if db.error:
        sb.error("The database cannot be read; see the page for details.")
        return
    if not db.exists:
        sb.caption("not created yet")
        return
    sb.caption(f"{db.n_sweeps} sweeps · {db.n_runs} runs · {db.n_points:,} points · schema v{db.schema_version}")
    runs_df = all_runs()
    opts = labels.filter_options(runs_df)
    _seed_filters(opts)
    sb.subheader("Filters")
    for key, label, options in (("flt_variants", "Variant", opts["variants"]),
                                ("flt_engines", "Engine", opts["engines"]),
                                ("flt_cards", "Card", opts["cards"]),
                                ("flt_weights", "Weights", opts["weights"])):
        _keep(key, [v for v in st.session_state.get(key) or [] if v in options])
        sb.multiselect(label, options, key="w_" + key, on_change=_store, args=(key,), placeholder="all")
    _keep("flt_source", st.session_state.get("flt_source") or "all")
    sb.radio("Source", SOURCES, key="w_flt_source", on_change=_store, args=("flt_source",), horizontal=True,
             format_func=lambda s: {"all": "all", "measured": "measured here", "imported": "imported"}[s])
    lo, hi = (opts["dates"] + [None, None])[:2]
    for col, key, label in ((sb, "flt_from", "From date"), (sb, "flt_to", "To date")):  # full width: no clipping
        value = st.session_state.get(key)
        _keep(key, value if value is None or lo is None or lo <= value <= hi else None)
        col.date_input(label, min_value=lo, max_value=hi, key="w_" + key, on_change=_store, args=(key,))
    f = filters()
    # a slot drawn on every run, filled when a filter is set: the caption appearing would shift the elements after
    # it (the Cost expander), which the browser then mounts anew on the filter change (docs/PERF.md)
    kept_slot = sb.empty()
    if not f.is_default():
        kept = len(labels.apply_filters(runs_df, f))
        kept_slot.caption(f"{kept} of {len(runs_df)} runs pass the filters")
    price_inputs(runs_df)
    _publish_filters()


def _seed_filters(opts: dict) -> None:
    """Filters named in the page's URL (a shared link) seed the session once; unknown values get a notice."""
    unknown = []
    for key, options in (("flt_variants", opts["variants"]), ("flt_engines", opts["engines"]),
                         ("flt_cards", opts["cards"])):
        unknown += share.seed_list(key, options)
    bad = share.seed_value("flt_source", SOURCES)
    for key in ("flt_from", "flt_to"):
        bad = share.seed_value(key, cast=lambda v: pd.Timestamp(v).date()) or bad
    if unknown or bad:
        st.sidebar.warning("The link's filters name values this database does not hold: "
                           + ", ".join(f"`{v}`" for v in [*unknown, *([bad] if bad else [])]) + "; they were left out.")


def _publish_filters() -> None:
    f = filters()
    share.publish({"flt_variants": f.variants, "flt_engines": f.engines, "flt_cards": f.cards,
                   "flt_source": None if f.source == "all" else f.source,
                   "flt_from": f.date_from.isoformat() if f.date_from else None,
                   "flt_to": f.date_to.isoformat() if f.date_to else None})


def price_key(family: str) -> str:
    return "usd_" + "".join(c if c.isalnum() else "_" for c in family)


def prices() -> dict[str, float]:
    """$ per GPU-hour per card family: what the user set in the sidebar (this session or the link), else the
    defaults of `bench.analysis.cost`."""
    out = dict(cost.DEFAULT_USD_PER_HOUR)
    for fam in list(out) + list(st.session_state.get("_price_families", [])):
        v = st.session_state.get(price_key(fam))
        out[fam] = float(v) if v is not None else cost.default_price(fam)
    return out


def price_inputs(runs_df: pd.DataFrame) -> None:
    """The sidebar's cost settings: one $/GPU-hour per card family in the database (editable, kept across pages;
    a changed price is also in the URL, so it survives a reload and travels with a shared link)."""
    fams = sorted({cost.card_family(d) for d in runs_df["device_name"]}) if len(runs_df) else []
    st.session_state["_price_families"] = fams
    changed = {}
    for fam in fams:  # a link's prices count whether or not the inputs are drawn
        key = price_key(fam)
        share.seed_value(key, cast=lambda v: max(0.0, float(v)))
        value = st.session_state.get(key)
        st.session_state[key] = float(value) if value is not None else cost.default_price(fam)
    # the inputs are drawn only while the expander is open (on_change="rerun"): closed, the sidebar skips a number
    # input per card family on every page view (docs/PERF.md)
    box = st.sidebar.expander("Cost: $ per GPU-hour", icon=":material/payments:", key="cost_open", on_change="rerun")
    if box.open:
        with box:
            st.caption("Used for $ per million tokens (`$/h ÷ (total tok/s × 3600) × 10⁶`). Defaults: on-demand "
                       "cloud list prices; set yours.")
            for fam in fams:
                key = price_key(fam)
                _keep(key, st.session_state[key])
                st.number_input(f"{fam} ($/h)", min_value=0.0, step=0.1, format="%.2f", key="w_" + key,
                                on_change=_store, args=(key,))
    for fam in fams:
        v = st.session_state[price_key(fam)]
        changed[price_key(fam)] = None if abs(v - cost.default_price(fam)) < 1e-9 else f"{v:g}"
    share.publish(changed)


def _keep(key: str, value: object) -> None:
    """Filters live under `flt_*` (plain session state, kept across pages); the widgets (`w_flt_*`) mirror them.

    Streamlit forgets a widget's state on a run that does not draw it, so the widget is re-seeded every run.
    """
    st.session_state[key] = value
    st.session_state["w_" + key] = value


def _store(key: str) -> None:
    st.session_state[key] = st.session_state["w_" + key]


@dataclass
class PageData:
    db: Path
    runs_all: pd.DataFrame  # every run (colours and labels come from here)
    runs: pd.DataFrame  # runs passing the sidebar filters
    colors: dict[str, str]  # run label -> colour (bench.ui.colors), the same on every page
    dashes: dict[str, str]  # run label -> line dash

    @functools.cached_property
    def summary(self) -> pd.DataFrame:
        """Per (run, batch) medians, all runs; read when a page first uses it (the Export page never does: after a
        database change the summary costs 0.2 s of its first view, docs/PERF.md)."""
        return summary()


def page_data(need_points: bool = True) -> PageData | None:
    """Load what a page needs, or draw the right empty/error state and return None (the page then stops)."""
    path = db_path()
    db = info()
    if db.error:
        st.error(db.error)
        return None
    if not db.exists or db.empty:
        st.info(
            f"No benchmark data yet in `{path}`.\n\n"
            "- `make run` builds the default database from `data/` (the imported reference report and the "
            "committed GPU results);\n"
            "- or start a sweep on the **Runs** page;\n"
            "- or import results: `python -m bench import data/results/*.jsonl`."
        )
        return None
    runs_all = all_runs()
    runs_f = labels.apply_filters(runs_all, filters())
    colors, dashes = styles()
    data = PageData(db=path, runs_all=runs_all, runs=runs_f, colors=colors, dashes=dashes)
    if runs_f.empty:
        st.info("No runs pass the sidebar filters. Clear a filter to see data.")
        return None
    if need_points and int(runs_f["n_ok"].sum()) == 0:
        st.info("The selected runs have no successful points yet.")
        return None
    return data


def run_picker(data: PageData, key: str, label: str = "Runs", limit: int = 12) -> list[str]:
    """A multiselect of run labels (default: see DEFAULT_HELP); returns run ids."""
    runs_df = data.runs[data.runs["n_ok"] > 0]
    label_of = dict(zip(runs_df["run_id"], runs_df["label"], strict=True))
    default = [r for r in labels.default_runs(runs_df, limit) if r in label_of]
    shared_runs(data, key, label_of)
    seeded = st.session_state.get("_default_" + key)
    if key in st.session_state and st.session_state[key] != seeded:
        kept = [r for r in st.session_state[key] if r in label_of]
        # a filter that hides every picked run shows the new filter's default runs, not an empty page
        st.session_state[key] = kept if kept or not st.session_state[key] else default
    else:  # first view, or the selection is still the default: follow the filters' default
        st.session_state[key] = default
    st.session_state["_default_" + key] = list(st.session_state[key]) if st.session_state[key] == default else None
    picked = st.multiselect(label, list(label_of), format_func=lambda r: label_of[r], key=key,
                            help=DEFAULT_HELP)
    share.publish({key: picked})
    return picked


def base_runs(data: PageData) -> pd.DataFrame:
    """The unpruned runs passing the filters that have successful points: the candidate bases of a pruned run."""
    return data.runs[~data.runs["pruned"] & (data.runs["n_ok"] > 0)]


def base_pickers(data: PageData, pruned: list[str]) -> list[tuple[str, str]]:
    """(pruned run, base run) pairs for the Memory page's saving: each pruned run's base is guessed
    (`compare.base_for`) and can be changed in a selectbox per run. The selectboxes sit in an expander drawn when
    opened (`on_change="rerun"`): eight of them cost the browser about a tenth of a second on every Memory view
    (docs/PERF.md), for a choice the saved table's `base` column and the chart's legend already show. A changed
    choice is kept in `memory_base_<run>` (plain session state) while the expander is closed."""
    bases = base_runs(data)
    base_labels = dict(zip(bases["run_id"], bases["label"], strict=True))
    options = list(base_labels)
    labels_all = data.runs_all.set_index("run_id")["label"]
    box = st.expander(f"Base run of each pruned variant ({len(pruned)}; guessed: same top-k, card and model)",
                      icon=":material/tune:", key="memory_bases_open", on_change="rerun")
    cols = box.columns(min(len(pruned), 3)) if box.open else []
    pairs = []
    for i, rid in enumerate(pruned):
        key = f"memory_base_{rid}"
        choice = st.session_state.get(key)
        if choice not in base_labels:
            guess = compare.base_for(data.runs, rid)
            choice = guess if guess in base_labels else options[0]
        _keep(key, choice)
        if cols:
            cols[i % len(cols)].selectbox(f"Base for {labels_all.get(rid, rid)}", options, key="w_" + key,
                                          format_func=base_labels.get, on_change=_store, args=(key,))
        pairs.append((rid, st.session_state[key]))
    return pairs


def shared_runs(data: PageData, key: str, options: dict[str, str] | list[str]) -> None:
    """Seed the run list `key` from a shared link (once per session): ids the database lacks get a notice, ids
    hidden by the filters another."""
    from_link = share.pending(key)
    unknown = share.seed_list(key, set(data.runs_all["run_id"]))
    share.unknown_notice("run ids", unknown)
    # only on the run that opens the link: later, the picked runs a filter change hides are the user's own (the run
    # picker falls back to the filter's default runs), and a notice inserted above the page's content would also
    # shift every element after it, which the browser then mounts anew (the Scaling filter, docs/PERF.md)
    hidden = [r for r in st.session_state.get(key, []) if r not in options] if from_link and not unknown else []
    if hidden:
        st.info(f"{len(hidden)} run(s) in the link are hidden by the sidebar filters or have no ok points.")


def fmt_duration(seconds: object) -> str:
    try:
        s = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    if s != s:
        return ""
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


@st.cache_data(max_entries=8, show_spinner=False)
def _sweep_table(path: str, version: tuple) -> pd.DataFrame:
    return queries.sweep_table(path)


def sweeps_df() -> pd.DataFrame:
    """Sweeps with `shown_state`: the stored rows cached per file version (one database read per change, not per page
    view: it cost 0.05 s alone and 0.2-0.6 s inside a busy server, docs/PERF.md), the state derived on every call
    (a crash frees a lock and changes no file)."""
    path = db_path()
    return queries.with_shown_state(_sweep_table(str(path), queries.file_version(path)))


def default_ids(runs_df: pd.DataFrame, limit: int = 12) -> list[str]:
    return labels.default_runs(runs_df, limit)


def date_range(first: object, last: object) -> str:
    """A date range short enough for a metric tile: `2025-01-10`, `2025-01-10 → 01-11`, `2024-12 → 2025-01`."""
    if first is None or last is None or pd.isna(first) or pd.isna(last):
        return "—"
    a, b = pd.Timestamp(first), pd.Timestamp(last)
    if a.date() == b.date():
        return f"{a:%Y-%m-%d}"
    if a.year == b.year:
        return f"{a:%Y-%m-%d} → {b:%m-%d}"
    return f"{a:%Y-%m} → {b:%Y-%m}"


@dataclass
class SweepCard:
    """The latest sweep as the Overview shows it: a registered sweep, or one known only from its imported runs."""

    sweep_id: str
    title: str
    state: str
    points_done: int
    points_planned: int
    created_at: object
    duration_s: object
    runs: int
    engines: str
    cards: str


def latest_sweep(runs_all: pd.DataFrame, sweeps: pd.DataFrame) -> SweepCard | None:
    """The newest sweep: the newest registered one, unless runs of a newer (imported) sweep exist."""
    from_runs = labels.latest_sweep_runs(runs_all[runs_all["n_points"] > 0]) if not runs_all.empty else runs_all
    reg = sweeps.iloc[0] if not sweeps.empty else None
    if len(from_runs):
        start = pd.to_datetime(from_runs["run_date"], utc=True).min()
        sid = str(from_runs["sweep_id"].iloc[0])
        if reg is None or (sid != reg["sweep_id"] and pd.Timestamp(reg["created_at"]).tz_localize(None)
                           < start.tz_localize(None)):
            end = pd.to_datetime(from_runs["finished_at"], utc=True).max()
            return SweepCard(
                sweep_id=sid, title=f"{len(from_runs)} runs imported from results", state="done",
                points_done=int(from_runs["n_ok"].sum()), points_planned=int(from_runs["n_points"].sum()),
                created_at=start, duration_s=(end - start).total_seconds() if pd.notna(end) else None,
                runs=len(from_runs), engines=", ".join(sorted(from_runs["engine"].dropna().unique())),
                cards=", ".join(sorted(from_runs["device_name"].dropna().unique())))
    if reg is None:
        return None
    mine = runs_all[runs_all["sweep_id"] == reg["sweep_id"]] if not runs_all.empty else runs_all
    return SweepCard(
        sweep_id=str(reg["sweep_id"]), title=str(reg["title"] or reg["sweep_id"]), state=str(reg["shown_state"]),
        points_done=int(reg["points_done"] or 0), points_planned=int(reg["points_planned"] or 0),
        created_at=reg["created_at"], duration_s=reg["duration_s"], runs=len(mine),
        engines=", ".join(sorted(mine["engine"].dropna().unique())) if len(mine) else "",
        cards=", ".join(sorted(mine["device_name"].dropna().unique())) if len(mine) else "")
