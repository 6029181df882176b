"""Comparisons between runs: the base a pruned run is measured against, environment differences that make a
comparison unfair, and per-batch deltas of throughput and memory with a within-noise verdict. Pure pandas over
the frames that `bench.store.queries` returns."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis.frames import isna as _isna
from bench.store.queries import MEMORY_METRICS

ENV_COLUMNS: tuple[str, ...] = ("device_name", "engine", "dtype", "weights", "weights_impl", "torch_version",
                                "transformers_version", "cuda", "driver", "bench_version", "timing_convention")


def summary_for(summary: pd.DataFrame, runs_df: pd.DataFrame, run_ids: list[str]) -> pd.DataFrame:
    """The summary rows of `run_ids`, joined with each run's name and label, in `run_ids` order."""
    if summary.empty or not run_ids:
        return pd.DataFrame(columns=[*summary.columns, "name", "label"])
    meta = runs_df.set_index("run_id")[["name", "label"]]
    out = summary[summary["run_id"].isin(run_ids)].join(meta, on="run_id")
    order = {rid: i for i, rid in enumerate(run_ids)}
    out = out.assign(_o=out["run_id"].map(order)).sort_values(["_o", "batch"]).drop(columns="_o")
    return out.reset_index(drop=True)


def base_for(runs_df: pd.DataFrame, run_id: str) -> str | None:
    """A sensible unpruned base for a pruned run: same top_k and card, preferring the same model source and expert
    weight format."""
    if runs_df.empty or run_id not in set(runs_df["run_id"]):
        return None
    run = runs_df.set_index("run_id").loc[run_id]
    bases = runs_df[~runs_df["pruned"] & (runs_df["run_id"] != run_id) & (runs_df["n_ok"] > 0)]
    if bases.empty:
        return None
    score = (
        (bases["model"] == run["model"]).astype(int) * 4
        + (bases["top_k"] == run["top_k"]).astype(int) * 8
        + (bases["device_name"].fillna("") == (run["device_name"] or "")).astype(int) * 2
        + (bases["sweep_id"].fillna("") == (run["sweep_id"] or "")).astype(int)
    )
    if "weights" in bases.columns:
        score = score + (bases["weights"].fillna("bf16") == (run.get("weights") or "bf16")).astype(int) * 3
    return str(bases.loc[score.idxmax(), "run_id"])


def env_differences(runs_df: pd.DataFrame, base_id: str, other_id: str) -> list[str]:
    """The environment fields on which two runs differ, as `field: base vs other` lines."""
    r = runs_df.set_index("run_id")
    out = []
    for col in ENV_COLUMNS:
        if col not in r.columns:
            continue
        a, b = r.at[base_id, col], r.at[other_id, col]
        a = None if _isna(a) else a
        b = None if _isna(b) else b
        if a != b:
            out.append(f"{col}: {a} vs {b}")
    return out


def deltas(summary: pd.DataFrame, runs_df: pd.DataFrame, base_id: str, candidate_ids: list[str]) -> pd.DataFrame:
    """Per candidate and batch size: % change in total tok/s, per-stream tok/s and peak memory vs the base.

    A throughput delta is *within noise* when the min..max spreads of the repeats of the two runs overlap.
    """
    cols = ["candidate", "candidate_id", "batch", "base_total_tps", "total_tps", "total_pct", "base_per_stream_tps",
            "per_stream_tps", "per_stream_pct", "base_mem_gib", "mem_gib", "mem_pct", "within_noise", "note"]
    if summary.empty or not candidate_ids:
        return pd.DataFrame(columns=cols)
    labels = runs_df.set_index("run_id")["label"]
    s = summary.set_index(["run_id", "batch"])
    base = summary[summary["run_id"] == base_id].set_index("batch")
    rows = []
    for cid in candidate_ids:
        cand = summary[summary["run_id"] == cid].set_index("batch")
        for batch in sorted(set(base.index) & set(cand.index)):
            b, c = s.loc[(base_id, batch)], s.loc[(cid, batch)]
            overlap = _overlap(b["total_tps_min"], b["total_tps_max"], c["total_tps_min"], c["total_tps_max"])
            single = min(int(b["n_ok"]), int(c["n_ok"])) < 2
            rows.append({
                "candidate": labels.get(cid, cid), "candidate_id": cid, "batch": int(batch),
                "base_total_tps": b["total_tps"], "total_tps": c["total_tps"],
                "total_pct": _pct(c["total_tps"], b["total_tps"]),
                "base_per_stream_tps": b["per_stream_tps"], "per_stream_tps": c["per_stream_tps"],
                "per_stream_pct": _pct(c["per_stream_tps"], b["per_stream_tps"]),
                "base_mem_gib": b["mem_used_gib"], "mem_gib": c["mem_used_gib"],
                "mem_pct": _pct(c["mem_used_gib"], b["mem_used_gib"]),
                "within_noise": bool(overlap),
                "note": "single repeat: no spread" if single else ("within noise" if overlap else ""),
            })
    return pd.DataFrame(rows, columns=cols)


def memory_saved(summary: pd.DataFrame, runs_df: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per (pruned, base) pair and batch size: memory of each and the GiB / % saved (peak allocated, else used)."""
    cols = ["variant", "base", "batch", "metric", "base_gib", "variant_gib", "saved_gib", "saved_pct",
            "weights_saved_gib"]
    if summary.empty or not pairs:
        return pd.DataFrame(columns=cols)
    labels = runs_df.set_index("run_id")["label"]
    s = summary.set_index(["run_id", "batch"])
    rows = []
    for pruned_id, base_id in pairs:
        pb = set(summary.loc[summary["run_id"] == pruned_id, "batch"]) & set(
            summary.loc[summary["run_id"] == base_id, "batch"])
        for batch in sorted(pb):
            p, b = s.loc[(pruned_id, batch)], s.loc[(base_id, batch)]
            metric = "mem_peak_alloc_gib" if not (_isna(p["mem_peak_alloc_gib"]) or _isna(
                b["mem_peak_alloc_gib"])) else "mem_used_gib"
            bv, pv = b[metric], p[metric]
            saved = None if _isna(bv) or _isna(pv) else bv - pv
            wb, wp = b["mem_weights_gib"], p["mem_weights_gib"]
            rows.append({
                "variant": labels.get(pruned_id, pruned_id), "base": labels.get(base_id, base_id),
                "batch": int(batch), "metric": MEMORY_METRICS[metric], "base_gib": bv, "variant_gib": pv,
                "saved_gib": saved, "saved_pct": None if saved is None or not bv else 100.0 * saved / bv,
                "weights_saved_gib": None if _isna(wb) or _isna(wp) else wb - wp,
            })
    return pd.DataFrame(rows, columns=cols)


def _overlap(a_lo: Any, a_hi: Any, b_lo: Any, b_hi: Any) -> bool:
    if any(_isna(v) for v in (a_lo, a_hi, b_lo, b_hi)):
        return False
    return bool(a_lo <= b_hi and b_lo <= a_hi)


def _pct(new: Any, old: Any) -> float | None:
    if _isna(new) or _isna(old) or not old:
        return None
    return 100.0 * (float(new) - float(old)) / float(old)


def speedup_matrix(deltas_df: pd.DataFrame) -> pd.DataFrame:
    """Per candidate and batch size: total tok/s as a multiple of the base (`speedup`) and `within_noise`, from
    the rows `deltas` returns (the heatmap of many variants against one base)."""
    cols = ["candidate", "candidate_id", "batch", "speedup", "within_noise"]
    if deltas_df.empty:
        return pd.DataFrame(columns=cols)
    out = deltas_df[["candidate", "candidate_id", "batch", "total_tps", "base_total_tps", "within_noise"]].copy()
    out["speedup"] = [None if _isna(c) or _isna(b) or not b else float(c) / float(b)
                      for c, b in zip(out["total_tps"], out["base_total_tps"], strict=True)]
    return out[cols].reset_index(drop=True)


WEIGHT_COLUMNS: tuple[str, ...] = ("weights", "weights_impl")


def other_weight_formats(runs_df: pd.DataFrame, base_id: str) -> list[str]:
    """Runs of the base's variant (same name, top_k, engine and card, measured here) in another expert weight format:
    the candidates of a "bf16 vs mxfp4" comparison."""
    if runs_df.empty or "weights" not in runs_df.columns or base_id not in set(runs_df["run_id"]):
        return []
    r = runs_df.set_index("run_id")
    b = r.loc[base_id]
    w = r["weights"].fillna("bf16")
    same = _same_card_and_variant(r, b) & (r["engine"] == b["engine"])
    return [str(i) for i in r.index[same & (w != (b["weights"] or "bf16")) & (r["n_ok"] > 0)]]


def other_engines(runs_df: pd.DataFrame, base_id: str) -> list[str]:
    """Runs of the base's variant (same name, top_k, weight format and card, measured here) with another decode
    engine: the candidates of an "hf vs graph" comparison. Another card would mix the card into the difference."""
    if runs_df.empty or base_id not in set(runs_df["run_id"]):
        return []
    r = runs_df.set_index("run_id")
    b = r.loc[base_id]
    same = _same_card_and_variant(r, b)
    if "weights" in r.columns:
        same &= r["weights"].fillna("bf16") == (b["weights"] or "bf16")
    return [str(i) for i in r.index[same & (r["engine"] != b["engine"]) & (r["n_ok"] > 0)]]


def _same_card_and_variant(r: pd.DataFrame, b: pd.Series) -> pd.Series:
    """Rows of `r` (indexed by run_id) measured here on the base row's card, of its variant name and top_k."""
    card = r["device_name"].fillna("")
    return ((r["name"] == b["name"]) & (r["top_k"] == b["top_k"]) & ~r["imported"]
            & (card == (b["device_name"] if not _isna(b["device_name"]) else "")))


def only_weights_differ(diffs: list[str]) -> bool:
    """True when the environment differences of two runs are the expert weight format alone."""
    return bool(diffs) and all(d.split(":", 1)[0] in WEIGHT_COLUMNS for d in diffs)
