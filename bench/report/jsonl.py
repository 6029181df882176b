"""JSONL: the portable, lossless form of runs and points. One line per point.

Each line is one JSON object with, in this order:

- headline keys copied from the run: `run` (variant name), `model`, `top_k`, `experts`, `engine`,
  `device_name` (the card, `run_meta.env.device_name`);
- every field of `PointRecord` under its own name (`run_id`, `batch`, `repeat`, `status`, `error`,
  `total_tps`, ..., `ceiling_tps`, `mbu`, `started_at`, `finished_at`);
- `run_meta`: every field of `RunRecord` under its own name, nested (`env` is the nested
  `EnvFingerprint`), keys sorted.

Timestamps are ISO 8601 in UTC. Lines are ordered by run (start time, then file order), batch, repeat.
Import checks types and that the headline keys agree with `run_meta`, and refuses unknown keys; a run's
`run_meta` must be identical on all its lines. Runs and sources are kept as they are (lossless), so a
JSONL file -> database -> JSONL round trip gives the same bytes.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, fields
from datetime import UTC, datetime
from typing import Any

from bench.errors import BadInputError
from bench.records import POINT_STATUSES, EnvFingerprint, PointRecord, RunRecord
from bench.report.common import ParsedFile, iso, order_runs, sort_points
from bench.spec import check_id

HEADLINE_KEYS: tuple[str, ...] = ("run", "model", "top_k", "experts", "engine", "device_name")
POINT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(PointRecord))
RUN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunRecord))
ENV_KEYS: tuple[str, ...] = tuple(f.name for f in fields(EnvFingerprint))


def _plain(value: Any) -> Any:
    """JSON-ready value: ISO timestamps, dicts with sorted keys (recursively)."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _headline(run: RunRecord) -> dict[str, Any]:
    return {
        "run": run.name,
        "model": run.model,
        "top_k": run.top_k,
        "experts": run.experts,
        "engine": run.engine,
        "device_name": run.env.device_name,
    }


def _point_part(headline: dict[str, Any], point: PointRecord) -> dict[str, Any]:
    line = dict(headline)
    for key in POINT_KEYS:
        value = getattr(point, key)
        line[key] = iso(value) if isinstance(value, datetime) else value
    return line


def point_line(run: RunRecord, point: PointRecord) -> dict[str, Any]:
    """The JSONL object of one point (before json.dumps)."""
    line = _point_part(_headline(run), point)
    line["run_meta"] = _plain(asdict(run))
    return line


def iter_lines(runs: list[RunRecord], points: list[PointRecord]) -> typing.Iterator[dict[str, Any]]:
    runs = order_runs(runs)
    by_id = {r.run_id: r for r in runs}
    for point in sort_points([p for p in points if p.run_id in by_id], runs):
        yield point_line(by_id[point.run_id], point)


def render_jsonl(runs: list[RunRecord], points: list[PointRecord], quality: dict[str, dict] | None = None) -> str:
    """One JSON object per point, newline-terminated. A pure function of its arguments.

    Same bytes as `json.dumps(point_line(run, point), ensure_ascii=False)` per line; the run part is
    serialized once per run.
    """
    runs = order_runs(runs)
    by_id = {r.run_id: r for r in runs}
    heads = {r.run_id: _headline(r) for r in runs}
    metas = {r.run_id: json.dumps(_plain(asdict(r)), ensure_ascii=False) for r in runs}
    quality = quality or {}
    for rid, q in quality.items():  # the run's quality figures ride after run_meta, only when it has some
        if rid in metas:
            metas[rid] += f', "quality": {json.dumps(_plain(q), ensure_ascii=False)}'
    out = []
    for point in sort_points([p for p in points if p.run_id in by_id], runs):
        head = json.dumps(_point_part(heads[point.run_id], point), ensure_ascii=False)
        out.append(f'{head[:-1]}, "run_meta": {metas[point.run_id]}}}\n')
    return "".join(out)


# ---------------------------------------------------------------------------------------------- parse


class _Where:
    def __init__(self, file_name: str, lineno: int) -> None:
        self.file_name = file_name
        self.lineno = lineno

    def error(self, key: str, message: str) -> BadInputError:
        return BadInputError(
            f"{self.file_name}:{self.lineno}: {key}: {message} (nothing was imported; "
            "JSONL lines are written by `python -m bench export --format jsonl`)"
        )


def _coerce(value: Any, hint: Any, key: str, where: _Where) -> Any:
    """Check `value` against a dataclass field's type hint; ints become floats where a float is wanted."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], key, where)
        raise where.error(key, f"unsupported type {hint}")
    if hint is typing.Any:
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(key, f"must be an integer, got {value!r}")
        limit = 2**63 if key.endswith("throttle_reasons") else 2**31  # BIGINT / INTEGER columns
        if not -limit <= value < limit:
            raise where.error(key, f"integer {value} is out of range")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise where.error(key, f"must be a string, got {value!r}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise where.error(key, "is not valid Unicode (a lone surrogate escape)") from None
        return value
    if hint is datetime:
        if not isinstance(value, str):
            raise where.error(key, f"must be an ISO 8601 timestamp string, got {value!r}")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise where.error(key, f"must be an ISO 8601 timestamp, got {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise where.error(key, f"must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(key, f"must be an object, got {value!r}")
        return value
    raise where.error(key, f"unsupported type {hint}")


def _build(cls: type, raw: dict[str, Any], prefix: str, where: _Where) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise where.error(f"{prefix}{unknown[0]}", f"unknown key; known keys are {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise where.error(f"{prefix}{f.name}", "is missing")
            continue
        if cls is RunRecord and f.name == "env":
            env = raw["env"]
            if not isinstance(env, dict):
                raise where.error(f"{prefix}env", f"must be an object, got {env!r}")
            kwargs["env"] = _build(EnvFingerprint, env, f"{prefix}env.", where)
            continue
        kwargs[f.name] = _coerce(raw[f.name], hints[f.name], f"{prefix}{f.name}", where)
    return cls(**kwargs)


def _check_run(run: RunRecord, where: _Where) -> None:
    for key in ("device_name", "device_kind"):
        if getattr(run.env, key) is None:
            raise where.error(f"run_meta.env.{key}", "must be a string, got null")
    for key in ("name", "model", "engine", "dtype", "device", "source", "state", "timing_convention"):
        if not getattr(run, key):
            raise where.error(f"run_meta.{key}", "must be a non-empty string")
    for key in ("top_k", "prompt_len", "new_tokens", "repeats"):
        if getattr(run, key) < 1:
            raise where.error(f"run_meta.{key}", f"must be >= 1, got {getattr(run, key)}")


def _check_point(point: PointRecord, where: _Where) -> None:
    if point.status not in POINT_STATUSES:
        raise where.error("status", f"must be one of {', '.join(POINT_STATUSES)}, got {point.status!r}")
    if point.batch < 1:
        raise where.error("batch", f"must be >= 1, got {point.batch}")
    if point.repeat < 0:
        raise where.error("repeat", f"must be >= 0, got {point.repeat}")


def parse_jsonl(text: str, file_name: str) -> ParsedFile:
    """Parse JSONL into runs and points. Raises BadInputError naming file, line and key."""
    parsed = ParsedFile(file_name=file_name, fmt="jsonl")
    runs: dict[str, tuple[RunRecord, Any]] = {}
    seen: set[tuple[str, int, int]] = set()
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = _Where(file_name, lineno)
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BadInputError(
                f"{file_name}:{lineno}: not valid JSON ({exc}); the file may be truncated or damaged "
                "(nothing was imported)"
            ) from None
        if not isinstance(obj, dict):
            raise where.error("line", f"must be a JSON object, got {type(obj).__name__}")
        allowed = set(HEADLINE_KEYS) | set(POINT_KEYS) | {"run_meta", "quality"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise where.error(unknown[0], "unknown key; see the bench.report.jsonl docstring for the keys")
        raw_run = obj.get("run_meta")
        if not isinstance(raw_run, dict):
            raise where.error("run_meta", "is missing or not an object (it holds the run's fields)")
        run = _build(RunRecord, raw_run, "run_meta.", where)
        _check_run(run, where)
        for key, value in (("run_meta.run_id", run.run_id), ("run_meta.sweep_id", run.sweep_id)):
            if value is not None:  # ids name files (logs, locks) once resumed: the same pattern as everywhere
                try:
                    check_id(value, key)
                except BadInputError as exc:
                    raise where.error(key, str(exc).split(": ", 1)[1]) from None
        point = _build(PointRecord, {k: obj[k] for k in POINT_KEYS if k in obj}, "", where)
        _check_point(point, where)
        headline = _headline(run)
        for key, expected in headline.items():
            if key in obj and obj[key] != expected:
                raise where.error(key, f"{obj[key]!r} disagrees with run_meta ({expected!r})")
        if point.run_id != run.run_id:
            raise where.error("run_id", f"{point.run_id!r} disagrees with run_meta.run_id ({run.run_id!r})")
        if run.run_id in runs:
            if runs[run.run_id][1] != raw_run:
                raise where.error("run_meta", f"differs from an earlier line of run {run.run_id!r}")
        else:
            runs[run.run_id] = (run, raw_run)
            parsed.runs.append(run)
        if isinstance(obj.get("quality"), dict):
            parsed.quality[run.run_id] = obj["quality"]
        key = (point.run_id, point.batch, point.repeat)
        if key in seen:
            raise where.error(
                "batch", f"duplicate point (run {point.run_id!r}, batch {point.batch}, repeat {point.repeat})"
            )
        seen.add(key)
        parsed.points.append(point)
    if not parsed.points:
        raise BadInputError(f"{file_name}: holds no JSONL lines; nothing was imported")
    return parsed
