"""Shared pieces of the report formats: the parsed-file container, run ordering and run labels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench.records import PointRecord, RunRecord

DEFAULT_TITLE = "moe-bench decode throughput"


@dataclass
class ParsedFile:
    """What one imported file holds, before anything is written."""

    file_name: str
    fmt: str  # "markdown" | "jsonl"
    runs: list[RunRecord] = field(default_factory=list)
    points: list[PointRecord] = field(default_factory=list)
    title: str | None = None
    quality: dict[str, dict] = field(default_factory=dict)  # run_id -> {domain: {metric: value}} (JSONL only)


def config_of(run: RunRecord) -> dict:
    """The run's config_json as a dict ({} when absent or not a JSON object)."""
    if not run.config_json:
        return {}
    try:
        value = json.loads(run.config_json)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _ts(value: datetime | None) -> float:
    if value is None:
        return float("inf")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def run_sort_key(run: RunRecord) -> tuple:
    """Measured runs by start time; imported runs after them, grouped by file, in the file's order."""
    imported = config_of(run).get("imported")
    position = imported.get("position") if isinstance(imported, dict) else None
    pos = position if isinstance(position, int) and not isinstance(position, bool) else 1 << 30
    return (_ts(run.started_at), run.source, pos, run.name, run.run_id)


def order_runs(runs: list[RunRecord]) -> list[RunRecord]:
    return sorted(runs, key=run_sort_key)


def run_labels(runs: list[RunRecord]) -> dict[str, str]:
    """run_id -> the name shown in tables, unique in the export: names that occur twice get `@<run_id>` appended
    (the whole run_id: a prefix cut to the hour made two runs of one sweep share a label)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    labels = {}
    for run in runs:
        labels[run.run_id] = run.name if counts[run.name] == 1 else f"{run.name}@{run.run_id}"
    return labels


def sort_points(points: list[PointRecord], runs: list[RunRecord]) -> list[PointRecord]:
    """Points in run order, then batch, then repeat."""
    rank = {run.run_id: i for i, run in enumerate(runs)}
    return sorted(points, key=lambda p: (rank.get(p.run_id, len(rank)), p.run_id, p.batch, p.repeat))


def iso(value: datetime | None) -> str | None:
    """A timestamp as ISO 8601 in UTC (naive values are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
