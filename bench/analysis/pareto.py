"""The throughput/latency Pareto view: per-stream tok/s (what one user feels) against total tok/s (what the GPU
earns), one point per (run, batch size). A point is on the front when no other point of the selection has at least
its per-stream *and* its total tok/s with one of them strictly higher. Pure pandas over `point_summary` rows."""

from __future__ import annotations

import pandas as pd


def pareto_points(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of `summary` with both throughputs, plus `on_front` (bool), ordered by run then batch."""
    cols = [*summary.columns, "on_front"]
    ok = summary[summary["total_tps"].notna() & summary["per_stream_tps"].notna()].copy()
    if ok.empty:
        return pd.DataFrame(columns=cols)
    total = ok["total_tps"].to_numpy(dtype=float)
    stream = ok["per_stream_tps"].to_numpy(dtype=float)
    front = []
    for t, s in zip(total, stream, strict=True):
        dominated = ((total >= t) & (stream >= s) & ((total > t) | (stream > s))).any()
        front.append(not bool(dominated))
    ok["on_front"] = front
    return ok


def front_members(points: pd.DataFrame) -> list[tuple[str, int]]:
    """(label, batch) of the points on the front, from the highest per-stream tok/s to the highest total tok/s."""
    f = points[points["on_front"]].sort_values(["per_stream_tps", "total_tps"], ascending=[False, True])
    return [(str(r.label), int(r.batch)) for r in f.itertuples()]
