"""Run labels and selection for the dashboard: a unique display label per run, the sidebar filters, and which runs
a page shows by default. Pure pandas over the runs table that `bench.store.queries.runs` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.analysis.frames import isna as _isna


def short_card(device_name: Any) -> str | None:
    """`NVIDIA H100 80GB HBM3` -> `H100`, `NVIDIA A100-SXM4-80GB` -> `A100`, `cpu: Intel Xeon` -> `cpu`."""
    if device_name is None or _isna(device_name) or str(device_name).strip() in ("", "unknown"):
        return None
    text = str(device_name).strip()
    if ":" in text:
        return text.split(":", 1)[0].strip() or None
    for word in ("NVIDIA ", "GeForce ", "Tesla ", "AMD ", "Radeon "):
        text = text.replace(word, "")
    tokens = text.replace("-", " ").split()
    if not tokens:
        return None
    if tokens[0] in ("RTX", "GTX", "Quadro", "Instinct") and len(tokens) > 1:
        return f"{tokens[0]} {tokens[1]}"
    return tokens[0]


def run_labels(df: pd.DataFrame) -> pd.Series:
    """A display label per run, unique in the database and the same on every page.

    A run's name, followed by its expert weight format when that is not bf16 (`base_topk4 · mxfp4`), is its label
    when unique. Runs sharing it get `… · engine · card` (imported report runs, which know neither:
    `… · imported`); if that still repeats, the run's start time follows, then the last 6 characters of its
    run_id."""
    if df.empty:
        return pd.Series([], dtype=object, index=df.index)
    name = df["name"].astype(str)
    if "weights" in df.columns:
        fmt = df["weights"].where(df["weights"].notna() & (df["weights"] != "bf16"), None)
        name = name.where(fmt.isna(), name + " · " + fmt.astype(str))
    label = name.copy()
    dup = name.duplicated(keep=False)
    if dup.any():  # column-wise (a row loop took ~1 s for 500 runs: the dashboard's cold page time, docs/PERF.md)
        d = df.loc[dup]
        engine = d["engine"] if "engine" in d.columns else pd.Series(None, index=d.index, dtype=object)
        engine = engine.where(engine.notna() & (engine != "unknown"), None).astype(object)
        devices = d["device_name"] if "device_name" in d.columns else pd.Series(None, index=d.index, dtype=object)
        cards = {v: short_card(v) for v in devices.dropna().unique()}
        card = devices.map(lambda v: None if _isna(v) else cards[v]).astype(object)
        source = d["source"] if "source" in d.columns else pd.Series(None, index=d.index, dtype=object)
        setup = source.fillna("").astype(str).str.startswith("imported").map(
            {True: "imported", False: "unknown setup"})
        parts = [" · ".join(p for p in (e, c) if p and not _isna(p)) for e, c in zip(engine, card, strict=True)]
        parts = pd.Series(parts, index=d.index).where(lambda x: x != "", setup)
        label.loc[dup] = name.loc[dup] + " · " + parts
    again = label.duplicated(keep=False)
    if again.any():
        when = pd.to_datetime(df["run_date"], utc=True)
        dated = again & when.notna()
        label.loc[dated] = label.loc[dated] + " · " + when.loc[dated].dt.strftime("%m-%d %H:%M")
    again = label.duplicated(keep=False)
    if again.any():
        label[again] = label[again] + " · " + df.loc[again, "run_id"].astype(str).str.slice(-6)
    return label


@dataclass
class Filters:
    """The sidebar filters. Empty lists mean "all"; dates are inclusive and apply to dated runs only."""

    variants: list[str] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)  # expert weight formats (bf16, mxfp4)
    source: str = "all"  # all | measured | imported
    date_from: Any = None  # datetime.date | None
    date_to: Any = None

    def is_default(self) -> bool:
        return not (self.variants or self.engines or self.cards or self.weights or self.source != "all"
                    or self.date_from or self.date_to)


def _weights(runs_df: pd.DataFrame) -> pd.Series:
    """Each run's expert weight format (bf16 where the table has none)."""
    if "weights" not in runs_df.columns:
        return pd.Series("bf16", index=runs_df.index)
    return runs_df["weights"].fillna("bf16")


def filter_options(runs_df: pd.DataFrame) -> dict[str, list[Any]]:
    """Distinct values for the sidebar filters, computed from the unfiltered runs table."""
    if runs_df.empty:
        return {"variants": [], "engines": [], "cards": [], "weights": [], "dates": []}
    dates = pd.to_datetime(runs_df["run_date"], utc=True).dropna()
    return {
        "variants": sorted(runs_df["name"].dropna().unique().tolist()),
        "engines": sorted(runs_df["engine"].dropna().unique().tolist()),
        "cards": sorted(runs_df["device_name"].fillna("unknown").unique().tolist()),
        "weights": sorted(_weights(runs_df).unique().tolist()),
        "dates": [dates.min().date(), dates.max().date()] if len(dates) else [],
    }


def apply_filters(runs_df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """The runs that pass the sidebar filters (runs without a date pass the date filter)."""
    if runs_df.empty:
        return runs_df
    mask = pd.Series(True, index=runs_df.index)
    if f.variants:
        mask &= runs_df["name"].isin(f.variants)
    if f.engines:
        mask &= runs_df["engine"].isin(f.engines)
    if f.cards:
        mask &= runs_df["device_name"].fillna("unknown").isin(f.cards)
    if f.weights:
        mask &= _weights(runs_df).isin(f.weights)
    if f.source == "measured":
        mask &= ~runs_df["imported"]
    elif f.source == "imported":
        mask &= runs_df["imported"]
    if f.date_from or f.date_to:
        day = pd.to_datetime(runs_df["run_date"], utc=True).dt.date
        if f.date_from:
            mask &= day.isna() | (day >= f.date_from)
        if f.date_to:
            mask &= day.isna() | (day <= f.date_to)
    return runs_df[mask]


def default_runs(runs_df: pd.DataFrame, limit: int = 12) -> list[str]:
    """Run ids to plot by default, at most `limit`: the runs of the latest sweep when it holds two or more runs
    with points (what a user just measured), else the latest run of each variant name with points."""
    if runs_df.empty:
        return []
    with_points = runs_df[runs_df["n_ok"] > 0]  # runs() is ordered newest first
    sweep_runs = latest_sweep_runs(with_points)
    if len(sweep_runs) >= 2:
        return sweep_runs["run_id"].head(limit).tolist()
    latest = with_points.drop_duplicates("name", keep="first")
    return latest["run_id"].head(limit).tolist()


def latest_sweep_runs(runs_df: pd.DataFrame) -> pd.DataFrame:
    """The runs of the sweep holding the newest dated run (empty when that run belongs to no sweep).

    Works from the runs table alone, so results imported from JSONL (runs that name a sweep the database has no
    row for) count as a sweep too."""
    if runs_df.empty:
        return runs_df
    dated = runs_df[runs_df["run_date"].notna()]
    if dated.empty:
        return runs_df.iloc[:0]
    newest = dated.loc[pd.to_datetime(dated["run_date"], utc=True).idxmax()]
    if _isna(newest["sweep_id"]):
        return runs_df.iloc[:0]
    return runs_df[runs_df["sweep_id"] == newest["sweep_id"]]


def single_setup(runs_df: pd.DataFrame, run_ids: list[str]) -> list[str]:
    """`run_ids` narrowed to one (card, engine) setup, so a default never mixes cards or engines: the setup that
    holds the most of them, ties going to the one with the newest run (`run_ids` order is kept)."""
    if not run_ids or runs_df.empty:
        return run_ids
    meta = runs_df.set_index("run_id")
    setup = {r: (str(meta.at[r, "device_name"]) if not _isna(meta.at[r, "device_name"]) else "unknown",
                 str(meta.at[r, "engine"]) if not _isna(meta.at[r, "engine"]) else "unknown")
             for r in run_ids if r in meta.index}
    if not setup:
        return run_ids
    when = pd.to_datetime(meta.loc[list(setup), "run_date"], utc=True)
    counts: dict[tuple[str, str], int] = {}
    newest: dict[tuple[str, str], float] = {}
    for r, s in setup.items():
        counts[s] = counts.get(s, 0) + 1
        t = when[r].timestamp() if pd.notna(when[r]) else float("-inf")
        newest[s] = max(newest.get(s, float("-inf")), t)
    best = max(counts, key=lambda s: (counts[s], newest[s]))
    return [r for r in run_ids if setup.get(r) == best]


def export_default(runs_df: pd.DataFrame, limit: int = 12) -> list[str]:
    """The Export page's default selection: `default_runs`, narrowed to one card and engine (`single_setup`)."""
    return single_setup(runs_df, default_runs(runs_df, limit))
