"""Read-only SQL for the Routing page and the quality views of Compare: calibrations, their per-expert routing,
quality figures and the distinct-experts counts of runs. Same contract as bench.store.queries (read-only
connection per call, DataFrames out; nothing here writes, nothing imports streamlit or torch)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.store.queries import _df


def _has(db: Path | str, table: str) -> bool:
    t = _df(db, "SELECT table_name FROM information_schema.tables WHERE table_name = ?", [table])
    return not t.empty


def calibrations(db: Path | str) -> pd.DataFrame:
    """One row per stored calibration (newest first)."""
    if not _has(db, "calibrations"):
        return pd.DataFrame()
    return _df(db, "SELECT * FROM calibrations ORDER BY created_at DESC, domain")


def calibration_experts(db: Path | str, calibration_ids: list[str]) -> pd.DataFrame:
    """Per calibration, layer and expert: routed tokens, mean weight, saliency, and the routing share (the
    expert's part of the layer's routed tokens, summing to 1 per layer)."""
    if not calibration_ids or not _has(db, "calibration_experts"):
        return pd.DataFrame(columns=["calibration_id", "domain", "layer", "expert", "tokens_routed", "mean_weight",
                                     "saliency", "share"])
    marks = ", ".join("?" for _ in calibration_ids)
    return _df(db, f"""
        SELECT e.calibration_id, c.domain, e.layer, e.expert, e.tokens_routed, e.mean_weight, e.saliency,
               e.tokens_routed / nullif(sum(e.tokens_routed) OVER (PARTITION BY e.calibration_id, e.layer), 0)
                   AS share
        FROM calibration_experts e JOIN calibrations c USING (calibration_id)
        WHERE e.calibration_id IN ({marks}) ORDER BY e.calibration_id, e.layer, e.expert""", calibration_ids)


def quality(db: Path | str) -> pd.DataFrame:
    """Every quality row (run_id, domain, metric, value, tokens, seconds)."""
    if not _has(db, "quality"):
        return pd.DataFrame(columns=["run_id", "domain", "metric", "value", "tokens", "seconds"])
    return _df(db, "SELECT run_id, domain, metric, value, tokens, seconds FROM quality ORDER BY run_id, domain")


def kept_experts(db: Path | str) -> pd.DataFrame:
    """Pruned runs with their kept experts per layer (JSON) and the note saying how they were chosen."""
    return _df(db, "SELECT run_id, name, model, model_fingerprint, top_k, experts, base_experts, kept_experts_json, "
                   "notes FROM runs WHERE kept_experts_json IS NOT NULL ORDER BY started_at DESC NULLS LAST")
