"""CSV export: one row per point, the JSONL columns flattened.

Columns: the JSONL headline keys and point fields under their names, then `usd_per_gpu_hour` and
`usd_per_mtok` (the price of the run's card family, `bench.report.energy`; empty $/M tokens for points that are
not ok), then `run_meta.<field>` for every RunRecord field (`run_meta.env.<field>` for the environment).
Lists and dicts (kept experts, prune) are JSON text; null is an empty cell; floats use Python's repr so no
digit is lost. Lines end with `\\n`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from datetime import datetime
from typing import Any

from bench.records import EnvFingerprint, PointRecord, RunRecord
from bench.report import energy
from bench.report.common import iso, order_runs, sort_points
from bench.report.jsonl import HEADLINE_KEYS, POINT_KEYS, point_line
from bench.report.quality_export import quality_cells, quality_columns

COST_KEYS = ("usd_per_gpu_hour", "usd_per_mtok")  # from the $/GPU-hour of the run's card (bench.report.energy)


def csv_columns() -> list[str]:
    cols = list(HEADLINE_KEYS) + list(POINT_KEYS) + list(COST_KEYS)
    for f in fields(RunRecord):
        if f.name == "env":
            cols += [f"run_meta.env.{e.name}" for e in fields(EnvFingerprint)]
        else:
            cols.append(f"run_meta.{f.name}")
    return cols


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if key in ("run_meta", "env") and isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_csv(runs: list[RunRecord], points: list[PointRecord], prices: dict[str, float] | None = None,
               quality: dict[str, dict] | None = None) -> str:
    """The CSV text (header + one row per point). A pure function of its arguments.

    Same rows as flattening `bench.report.jsonl.point_line`; the run's cells are computed once per run.
    """
    runs = order_runs(runs)
    by_id = {r.run_id: r for r in runs}
    run_cells: dict[str, list[str]] = {}
    run_price = {run.run_id: energy.price_of(run, prices)[1] for run in runs}
    for run in runs:
        line = point_line(run, PointRecord(run_id=run.run_id, batch=0, repeat=0, status=""))
        flat = _flatten(line)
        run_cells[run.run_id] = [_cell(flat.get(c)) for c in _run_columns()]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    qcols = quality_columns({r: q for r, q in (quality or {}).items() if r in by_id})
    writer.writerow(csv_columns() + qcols)
    for point in sort_points([p for p in points if p.run_id in by_id], runs):
        run = by_id[point.run_id]
        head = [run.name, run.model, run.top_k, run.experts, run.engine, run.env.device_name]
        cells = [_cell(v) for v in head] + [_cell(_point_value(point, k)) for k in POINT_KEYS]
        usd = run_price[point.run_id]
        cost = energy.usd_per_mtok(point.total_tps, usd) if point.status == "ok" else None
        extra = [_cell(v) for v in quality_cells((quality or {}).get(point.run_id), qcols)] if qcols else []
        writer.writerow([*cells, _cell(usd), _cell(cost), *run_cells[point.run_id], *extra])
    return buf.getvalue()


def _run_columns() -> list[str]:
    return csv_columns()[len(HEADLINE_KEYS) + len(POINT_KEYS) + len(COST_KEYS) :]


def _point_value(point: PointRecord, key: str) -> Any:
    value = getattr(point, key)
    return iso(value) if isinstance(value, datetime) else value
