"""CSV export: one row per point, the JSONL columns flattened.

Columns: the JSONL headline keys and point fields under their names, then `run_meta.<field>` for every
RunRecord field (`run_meta.env.<field>` for the environment). Lists and dicts (kept experts, prune) are
JSON text; null is an empty cell; floats use Python's repr so no digit is lost. Lines end with `\\n`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from typing import Any

from bench.records import EnvFingerprint, PointRecord, RunRecord
from bench.report.jsonl import HEADLINE_KEYS, POINT_KEYS, iter_lines


def csv_columns() -> list[str]:
    cols = list(HEADLINE_KEYS) + list(POINT_KEYS)
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


def render_csv(runs: list[RunRecord], points: list[PointRecord]) -> str:
    """The CSV text (header + one row per point). A pure function of its arguments."""
    cols = csv_columns()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for line in iter_lines(runs, points):
        flat = _flatten(line)
        writer.writerow([_cell(flat.get(c)) for c in cols])
    return buf.getvalue()
