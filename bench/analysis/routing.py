"""Routing analysis for the Routing page: heatmaps of routing share, top-N sets and their Jaccard overlap between
domains per layer, kept/dropped experts of a pruned run, and distinct experts per decode step against the
uniform-routing expectation U = E·(1 − (1 − k/E)^B). Pure pandas over bench.store.research_queries frames."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

SCORES: dict[str, str] = {"share": "routing share", "saliency": "REAP saliency", "mean_weight": "mean routing weight"}


def uniform_distinct(num_experts: int, top_k: int, batch: int) -> float:
    """Expected distinct experts touched per layer by `batch` tokens routing uniformly to `top_k` of `num_experts`."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** batch)


def heatmap(experts: pd.DataFrame, calibration_id: str, score: str = "share") -> pd.DataFrame:
    """[layer x expert] of one calibration's `score`."""
    df = experts[experts["calibration_id"] == calibration_id]
    return df.pivot(index="layer", columns="expert", values=score).sort_index()


def top_sets(experts: pd.DataFrame, calibration_id: str, n: int, score: str = "share") -> dict[int, set[int]]:
    """Per layer, the n experts with the highest score (ties: lower index)."""
    out: dict[int, set[int]] = {}
    df = experts[experts["calibration_id"] == calibration_id]
    for layer, g in df.groupby("layer"):
        g = g.assign(_s=g[score].fillna(0.0)).sort_values(["_s", "expert"], ascending=[False, True])
        out[int(layer)] = {int(e) for e in g["expert"].head(n)}
    return out


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def jaccard_by_layer(experts: pd.DataFrame, cal_ids: list[str], names: dict[str, str], n: int,
                     score: str = "share") -> pd.DataFrame:
    """Per layer and pair of calibrations: |A∩B| / |A∪B| of their top-n sets."""
    sets = {c: top_sets(experts, c, n, score) for c in cal_ids}
    rows = []
    for i, a in enumerate(cal_ids):
        for b in cal_ids[i + 1:]:
            for layer in sorted(sets[a]):
                rows.append({"pair": f"{names[a]} vs {names[b]}", "layer": layer,
                             "jaccard": jaccard(sets[a][layer], sets[b].get(layer, set())),
                             "shared": len(sets[a][layer] & sets[b].get(layer, set()))})
    return pd.DataFrame(rows, columns=["pair", "layer", "jaccard", "shared"])


def kept_cells(kept_json: str | None) -> list[tuple[int, int]]:
    """(layer, expert) pairs a pruned run kept."""
    if not kept_json:
        return []
    return [(li, int(e)) for li, row in enumerate(json.loads(kept_json)) for e in row]


def routed_share_kept(experts: pd.DataFrame, calibration_id: str, kept: list[tuple[int, int]]) -> float | None:
    """The part of the calibration's routed tokens that went to experts the run kept (mean over layers)."""
    df = experts[experts["calibration_id"] == calibration_id]
    if df.empty or not kept:
        return None
    keep = set(kept)
    mask = [(int(r.layer), int(r.expert)) in keep for r in df.itertuples()]
    per_layer = df.assign(k=mask).groupby("layer").apply(
        lambda g: float(g.loc[g["k"], "share"].sum()), include_groups=False)
    return float(per_layer.mean())


def distinct_vs_batch(summary: pd.DataFrame, runs: pd.DataFrame, run_ids: list[str]) -> pd.DataFrame:
    """Per run and batch: distinct experts per layer per step (median of the repeats) and U of uniform routing."""
    cols = ["run_id", "label", "batch", "distinct_experts", "uniform", "experts", "top_k"]
    if summary.empty or not run_ids:
        return pd.DataFrame(columns=cols)
    meta = runs.set_index("run_id")
    rows = []
    for r in summary[summary["run_id"].isin(run_ids)].itertuples():
        m: Any = meta.loc[r.run_id]
        e = m["experts"] if pd.notna(m["experts"]) else m["base_experts"]
        if pd.isna(e):
            continue
        rows.append({"run_id": r.run_id, "label": m["label"], "batch": int(r.batch),
                     "distinct_experts": r.distinct_experts, "uniform": uniform_distinct(int(e), int(m["top_k"]),
                                                                                         int(r.batch)),
                     "experts": int(e), "top_k": int(m["top_k"])})
    return pd.DataFrame(rows, columns=cols).sort_values(["label", "batch"]).reset_index(drop=True)
