"""Quality beside speed, for Compare: per pruned variant the Δ tok/s and Δ memory against its speed base at a
chosen batch, and its quality against its own base (KL, top-1 agreement, Δ perplexity, averaged over the
domains measured), plus the Pareto front of speedup against KL. Pure pandas."""

from __future__ import annotations

import pandas as pd

from bench.analysis.compare import base_for

COLUMNS = ["run_id", "label", "base", "batch", "speedup", "tps_pct", "mem_pct", "kl", "top1_agreement",
           "ppl_delta", "domains", "positions", "quality_s", "synthetic", "pareto"]


def per_run(quality: pd.DataFrame) -> pd.DataFrame:
    """One row per run: mean over domains of each metric, the domains, positions and seconds."""
    if quality.empty:
        return pd.DataFrame(columns=["run_id", "kl", "top1_agreement", "perplexity", "base_perplexity", "domains",
                                     "positions", "quality_s"])
    wide = quality.pivot_table(index=["run_id", "domain"], columns="metric", values="value").reset_index()
    extra = quality.groupby(["run_id", "domain"]).agg(tokens=("tokens", "max"), seconds=("seconds", "max"))
    wide = wide.join(extra, on=["run_id", "domain"])
    for m in ("kl", "top1_agreement", "perplexity", "base_perplexity"):
        if m not in wide:
            wide[m] = float("nan")
    g = wide.groupby("run_id")
    out = g[["kl", "top1_agreement", "perplexity", "base_perplexity"]].mean()
    out["domains"] = g["domain"].apply(lambda s: ", ".join(sorted(s)))
    out["positions"] = g["tokens"].sum()
    out["quality_s"] = g["seconds"].sum()
    return out.reset_index()


def pareto_front(speedup: pd.Series, kl: pd.Series) -> pd.Series:
    """True where no other point has a speedup at least as high and a KL at least as low (and is better in one)."""
    ok = speedup.notna() & kl.notna()
    out = pd.Series(False, index=speedup.index)
    pts = list(zip(speedup[ok].index, speedup[ok], kl[ok], strict=True))
    for i, s, k in pts:
        out[i] = not any((s2 >= s and k2 <= k) and (s2 > s or k2 < k) for j, s2, k2 in pts if j != i)
    return out


def quality_table(summary: pd.DataFrame, runs: pd.DataFrame, quality: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Every run with quality figures: speed and memory deltas at `batch` against base_for(run), and its quality."""
    q = per_run(quality)
    if q.empty or runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    meta = runs.set_index("run_id")
    s = summary.set_index(["run_id", "batch"]) if not summary.empty else None
    rows = []
    for r in q.itertuples():
        if r.run_id not in meta.index:
            continue
        base = base_for(runs, r.run_id) if bool(meta.at[r.run_id, "pruned"]) else None
        tps_pct = mem_pct = speedup = None
        if base is not None and s is not None and (r.run_id, batch) in s.index and (base, batch) in s.index:
            c, b = s.loc[(r.run_id, batch)], s.loc[(base, batch)]
            if pd.notna(c["total_tps"]) and pd.notna(b["total_tps"]) and b["total_tps"]:
                speedup = float(c["total_tps"] / b["total_tps"])
                tps_pct = 100.0 * (speedup - 1.0)
            if pd.notna(c["mem_used_gib"]) and pd.notna(b["mem_used_gib"]) and b["mem_used_gib"]:
                mem_pct = 100.0 * (float(c["mem_used_gib"]) / float(b["mem_used_gib"]) - 1.0)
        elif base is None and s is not None and (r.run_id, batch) in s.index:
            speedup, tps_pct, mem_pct = 1.0, 0.0, 0.0  # an unpruned run is its own speed reference
        rows.append({
            "run_id": r.run_id, "label": meta.at[r.run_id, "label"],
            "base": meta.at[base, "label"] if base is not None else "—", "batch": batch, "speedup": speedup,
            "tps_pct": tps_pct, "mem_pct": mem_pct, "kl": r.kl, "top1_agreement": r.top1_agreement,
            "ppl_delta": r.perplexity - r.base_perplexity, "domains": r.domains, "positions": int(r.positions),
            "quality_s": r.quality_s, "synthetic": str(meta.at[r.run_id, "model"]).startswith("synthetic:"),
        })
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "pareto"])
    df["pareto"] = pareto_front(df["speedup"], df["kl"]) if not df.empty else pd.Series(dtype=bool)
    return df
