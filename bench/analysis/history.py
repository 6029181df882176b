"""A variant's history and the regression verdict between two runs of it.

- Identity: a variant is (model, prune, top_k, weights, engine). Runs of one identity may differ in date, commit,
  card and library versions; `history_frame` lines them up, oldest first, with their repeat spreads.
- Verdict (`verdict`): a two-sided Mann–Whitney U test (scipy.stats.mannwhitneyu) at α = 0.05 on the ok repeats of
  the two runs. So that runs with few repeats per batch size still give a test with power, each repeat's tok/s is
  divided by the *old* run's median at the same batch size and the ratios are pooled over the batch sizes both
  runs measured; the old run's ratios scatter around 1.0. Newer ratios significantly lower: **slower**
  (a regression); higher: **faster**; otherwise **within noise**. The effect size is the median of the new run's
  ratios minus 1. Per-batch tests are reported too (with 3 repeats each they cannot reach p < 0.05 alone).

Pure pandas + scipy; `bench compare` and the History page print the same `Verdict`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.analysis.frames import isna as _isna

ALPHA = 0.05
TEST_NAME = "two-sided Mann–Whitney U (α = 0.05) on the repeats' tok/s ÷ the older run's median per batch, pooled"
IDENTITY_COLUMNS = ("model", "prune", "top_k", "weights", "engine")


def prune_key(run: Any) -> str:
    """The prune part of an identity: the prune spec as canonical JSON, else `experts N/M`, else `unpruned`."""
    pj = run.get("prune_json")
    if not _isna(pj) and pj:
        try:
            return json.dumps(json.loads(pj), sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            return str(pj)
    e, b = run.get("experts"), run.get("base_experts")
    if not _isna(e) and not _isna(b) and int(e) < int(b):
        return f"experts {int(e)}/{int(b)}"
    return "unpruned"


def identity_of(run: Any) -> str:
    """`model · prune · top_k N · weights · engine`: the key one variant keeps across dates, commits and cards."""
    weights = run.get("weights")
    weights = "bf16" if _isna(weights) or not weights else str(weights)
    return " · ".join([str(run.get("model")), prune_key(run), f"top_k {int(run.get('top_k'))}", weights,
                       str(run.get("engine"))])


def with_identity(runs_df: pd.DataFrame) -> pd.DataFrame:
    """The runs table with an `identity` column."""
    out = runs_df.copy()
    out["identity"] = [identity_of(r) for r in runs_df.to_dict("records")] if len(runs_df) else []
    return out


def identities(runs_df: pd.DataFrame) -> pd.DataFrame:
    """One row per identity with runs that have ok points: identity, a name seen for it, n_runs, last date."""
    cols = ["identity", "name", "n_runs", "last_date"]
    df = with_identity(runs_df[runs_df["n_ok"] > 0]) if len(runs_df) else runs_df
    if df.empty:
        return pd.DataFrame(columns=cols)
    g = df.groupby("identity", sort=False)
    out = pd.DataFrame({"name": g["name"].first(), "n_runs": g.size(), "last_date": g["run_date"].max()})
    out = out.reset_index().sort_values(["n_runs", "last_date"], ascending=[False, False], na_position="last")
    return out[cols].reset_index(drop=True)


def history_runs(runs_df: pd.DataFrame, identity: str) -> pd.DataFrame:
    """The runs of one identity with ok points, oldest first (undated imported runs first)."""
    df = with_identity(runs_df)
    df = df[(df["identity"] == identity) & (df["n_ok"] > 0)]
    when = pd.to_datetime(df["run_date"], utc=True)
    return df.assign(_w=when).sort_values("_w", na_position="first").drop(columns="_w").reset_index(drop=True)


def history_frame(summary: pd.DataFrame, runs: pd.DataFrame, batch: int, metrics: list[str]) -> pd.DataFrame:
    """Per run of the history (in `runs` order) at one batch size: each metric's median, min and max."""
    keep = ["run_id", "label", "run_date", "git_commit", "device_name", "torch_version", "transformers_version"]
    s = summary[(summary["run_id"].isin(runs["run_id"])) & (summary["batch"] == batch)].set_index("run_id")
    rows = []
    for r in runs.to_dict("records"):
        row = {k: r.get(k) for k in keep}
        for m in metrics:
            for suffix in ("", "_min", "_max"):
                col = m + suffix
                row[col] = s.at[r["run_id"], col] if r["run_id"] in s.index and col in s.columns else None
        rows.append(row)
    return pd.DataFrame(rows, columns=keep + [m + s for m in metrics for s in ("", "_min", "_max")])


@dataclass
class Verdict:
    """The regression verdict of `new` against `old` (what the History page flags and `bench compare` prints)."""

    old: str
    new: str
    metric: str
    status: str  # "slower" | "faster" | "within noise" | "not comparable"
    p_value: float | None = None
    change_pct: float | None = None  # median of the new run's ratios, minus 1, in %
    n_old: int = 0
    n_new: int = 0
    batches: list[int] = field(default_factory=list)
    per_batch: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    test: str = TEST_NAME

    @property
    def regression(self) -> bool:
        return self.status == "slower"

    def sentence(self) -> str:
        if self.status == "not comparable":
            return f"{self.new} vs {self.old}: not comparable ({self.reason})"
        return (f"{self.new} vs {self.old}: {self.status} — {self.metric} {self.change_pct:+.1f}% "
                f"(median ratio over batches {','.join(map(str, self.batches))}; p = {self.p_value:.3g}, "
                f"{self.n_new} vs {self.n_old} repeats; {TEST_NAME})")


def verdict(repeats: pd.DataFrame, old_id: str, new_id: str, metric: str = "total_tps",
            names: dict[str, str] | None = None) -> Verdict:
    """Mann–Whitney U verdict of run `new_id` against `old_id` on `metric`, from ok repeats
    (`repeats`: run_id, batch, status, metric — one row per repeat)."""
    from scipy.stats import mannwhitneyu

    names = names or {}
    v = Verdict(old=names.get(old_id, old_id), new=names.get(new_id, new_id), metric=metric, status="not comparable")
    ok = repeats[(repeats["status"] == "ok") & repeats[metric].notna()]
    a, b = ok[ok["run_id"] == old_id], ok[ok["run_id"] == new_id]
    shared = sorted(set(a["batch"]) & set(b["batch"]))
    if not shared:
        v.reason = "the two runs share no batch size with ok repeats"
        return v
    ra, rb = [], []
    for batch in shared:
        xa = a.loc[a["batch"] == batch, metric].astype(float)
        xb = b.loc[b["batch"] == batch, metric].astype(float)
        med = float(xa.median())
        if med <= 0:
            continue
        ra += (xa / med).tolist()
        rb += (xb / med).tolist()
        row: dict[str, Any] = {"batch": int(batch), "old_median": med, "new_median": float(xb.median()),
                               "change_pct": 100.0 * (float(xb.median()) / med - 1.0), "p_value": None}
        if len(xa) >= 2 and len(xb) >= 2 and (xa.nunique() > 1 or xb.nunique() > 1 or xa.iloc[0] != xb.iloc[0]):
            row["p_value"] = float(mannwhitneyu(xb, xa, alternative="two-sided").pvalue)
        v.per_batch.append(row)
    v.batches, v.n_old, v.n_new = [int(x) for x in shared], len(ra), len(rb)
    if len(ra) < 2 or len(rb) < 2:
        v.reason = f"too few ok repeats for a test ({len(rb)} vs {len(ra)}; need at least 2 each)"
        return v
    v.change_pct = 100.0 * (float(pd.Series(rb).median()) - 1.0)
    if len(set(ra) | set(rb)) == 1:
        v.p_value, v.status = 1.0, "within noise"
        return v
    v.p_value = float(mannwhitneyu(rb, ra, alternative="two-sided").pvalue)
    if v.p_value >= ALPHA:
        v.status = "within noise"
    else:
        v.status = "slower" if v.change_pct < 0 else "faster"
    return v
