"""Where runs ran, and the live per-GPU lanes of a cluster sweep (bench.cluster).

`gpu_lanes` turns a sweep's run-progress rows (bench.store.queries.sweep_run_progress) into one lane per GPU (one
per Dask worker on CPU): the variant on it now (else the last one it ran), points done out of planned, and the
last point's tok/s. `where_ran` is the one-line placement the Runs page shows for a run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd


@dataclass
class Lane:
    lane: str  # "host · GPU 1" or "host · worker tcp://…" (CPU)
    card: str | None  # the GPU's name: results from different cards stay apart in Compare
    variant: str
    state: str  # running | done | failed | pending
    points: str  # "3 / 6"
    last_tps: float | None
    runs_done: int  # finished variants on this lane so far


def _none(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def where_ran(row: dict[str, Any]) -> str:
    """`host · GPU i (uuid prefix) · worker` for a run; the parts that are unknown are left out."""
    parts = []
    host = _none(row.get("host"))
    if host:
        parts.append(str(host))
    idx = _none(row.get("gpu_index"))
    if idx is not None:
        uuid = _none(row.get("gpu_uuid"))
        parts.append(f"GPU {int(idx)}" + (f" ({str(uuid)[:12]})" if uuid else ""))
    worker = _none(row.get("worker_address"))
    if worker:
        parts.append(f"Dask {worker}")
    return " · ".join(parts) or "—"


def _lane_key(row: dict[str, Any]) -> tuple[str, str] | None:
    host = str(_none(row.get("host")) or "?")
    idx = _none(row.get("gpu_index"))
    if idx is not None:
        return host, f"GPU {int(idx)}"
    worker = _none(row.get("worker_address"))
    return (host, f"worker {worker}") if worker else None


def gpu_lanes(progress: pd.DataFrame, batch_sizes: int, repeats: int | None = None) -> list[Lane]:
    """One lane per GPU (per worker on CPU), ordered by host and GPU. Runs not yet placed have no lane."""
    if progress is None or progress.empty:
        return []
    by_lane: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in progress.to_dict("records"):
        key = _lane_key(row)
        if key is not None:
            by_lane.setdefault(key, []).append(row)
    lanes = []
    for (host, slot), rows in sorted(by_lane.items()):
        running = [r for r in rows if r.get("state") == "running"]
        ordered = sorted(rows, key=lambda r: str(_none(r.get("started_at")) or ""))
        cur = running[-1] if running else ordered[-1]
        planned = batch_sizes * int(_none(cur.get("repeats")) or repeats or 1)
        tps = _none(cur.get("last_tps"))
        lanes.append(Lane(
            lane=f"{host} · {slot}", card=_none(cur.get("device_name")), variant=str(cur.get("name")),
            state=str(cur.get("state")), points=f"{int(cur.get('n_points') or 0)} / {planned}",
            last_tps=float(tps) if tps is not None else None,
            runs_done=sum(1 for r in rows if r.get("state") in ("done", "failed")),
        ))
    return lanes


def lanes_frame(lanes: list[Lane]) -> pd.DataFrame:
    cols = ["lane", "card", "variant", "state", "points", "last_tps", "runs_done"]
    return pd.DataFrame([asdict(lane) for lane in lanes], columns=cols)
