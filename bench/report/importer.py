"""Import report files (markdown by `.md`, JSONL by `.jsonl`) into the store: all files, one transaction.

Every file is parsed before anything is written; a bad file raises BadInputError and the database is left
as it was. An imported run replaces the stored run with the same run_id and all of that run's points.
Re-importing a markdown file also drops runs an earlier import of the same file name created that the file
no longer lists, so a report's import always mirrors the report. An import that would so remove stored points
is refused unless `replace=True` (`import --replace`). The writing itself is `bench.store.imports.write_import`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BadInputError
from bench.records import RunRecord, SweepRecord, utcnow
from bench.report.common import ParsedFile, config_of
from bench.report.jsonl import parse_jsonl
from bench.report.markdown import parse_markdown
from bench.store.imports import ImportBatch, write_import

MARKDOWN_SUFFIXES = (".md", ".markdown")
JSONL_SUFFIXES = (".jsonl",)


@dataclass
class ImportSummary:
    files: list[str] = field(default_factory=list)
    runs: int = 0
    points: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "runs": self.runs, "points": self.points}


def parse_file(path: Path | str) -> ParsedFile:
    """Parse one file by its extension. Raises BadInputError naming the file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in MARKDOWN_SUFFIXES + JSONL_SUFFIXES:
        raise BadInputError(f"{p}: unknown file type {suffix!r}; import takes a report (.md) or results (.jsonl)")
    if not p.is_file():
        raise BadInputError(f"{p}: file not found")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{p}: not UTF-8 text ({exc}); nothing was imported") from None
    if suffix in JSONL_SUFFIXES:
        return parse_jsonl(text, p.name)
    return parse_markdown(text, p.name)


def _planned(run: RunRecord) -> int | None:
    """Points the run's own config planned (distinct batch sizes x repeats), None when the config does not say."""
    sweep = config_of(run).get("sweep")
    if not isinstance(sweep, dict):
        return None
    sizes, repeats = sweep.get("batch_sizes"), sweep.get("repeats", run.repeats)
    if not isinstance(sizes, list) or not sizes or not isinstance(repeats, int) or isinstance(repeats, bool):
        return None
    return len(set(map(str, sizes))) * max(repeats, 0)


def reconstructed_sweeps(parsed: list[ParsedFile]) -> list[SweepRecord]:
    """Sweep rows for measured runs whose sweep travelled only as a `sweep_id` (JSONL carries no sweep rows).

    Each row says where it came from (`source = 'imported:<file>'`) and what the file knows: planned points from
    the runs' configs (batch sizes x repeats), done = the points the file holds. A sweep whose file holds fewer
    points than planned, or whose runs did not finish, is `incomplete`, never `done` (a truncated JSONL). A JSONL
    cannot tell how many variants the sweep had; the message says so when a run's plan is unknown.
    """
    by_sweep: dict[str, list[tuple[str, RunRecord]]] = {}
    points_of: dict[str, int] = {}
    for pf in parsed:
        for point in pf.points:
            points_of[point.run_id] = points_of.get(point.run_id, 0) + 1
        for run in pf.runs:
            if run.sweep_id and run.source == "measured":
                by_sweep.setdefault(run.sweep_id, []).append((pf.file_name, run))
    out = []
    for sweep_id, pairs in by_sweep.items():
        runs = [r for _, r in pairs]
        files = list(dict.fromkeys(f for f, _ in pairs))
        configs = [config_of(r) for r in runs]
        title = next((str(c["title"]) for c in configs if c.get("title")), f"imported from {files[0]}")
        spec = {"title": title, "sweep": next((c["sweep"] for c in configs if isinstance(c.get("sweep"), dict)), {}),
                "variants": [c["variant"] for c in configs if "variant" in c]}
        done = sum(points_of.get(r.run_id, 0) for r in runs)
        plans = [_planned(r) for r in runs]
        known = all(p is not None for p in plans)
        planned = sum(p or 0 for p in plans) if known else done
        unfinished = [r.name for r in runs if r.state not in ("done", "imported")]
        complete = known and done >= planned and not unfinished
        where = ", ".join(files)
        message = f"imported from {where}: {done} of {planned} planned points" if known else (
            f"imported from {where}: {done} points (the runs' configs do not say how many were planned)")
        if not complete and known and done < planned:
            message += "; the file holds fewer points than the sweep planned (truncated, or exported mid-sweep)"
        if unfinished:
            message += f"; runs not finished when exported: {', '.join(unfinished)}"
        times = [(r.started_at, r.finished_at) for r in runs]
        starts = [t for t, _ in times if t is not None]
        ends = [t for _, t in times if t is not None]
        first = min(starts) if starts else None
        out.append(SweepRecord(
            sweep_id=sweep_id, title=title, spec_json=json.dumps(spec, sort_keys=True),
            state="done" if complete else "incomplete", host=runs[0].env.host, device_key=None,
            points_planned=planned, points_done=done, message=message, created_at=first or utcnow(),
            started_at=first, finished_at=max(ends) if ends else None, source=f"imported:{where}",
        ))
    return out


def write_parsed(db_path: Path | str, parsed: list[ParsedFile], replace: bool = False) -> ImportSummary:
    """Write parsed files through the store (bench.store.imports): staged in batches, swapped in one transaction.

    Refuses (BadInputError, nothing written) a run id found in two files, and an import that would remove stored
    points unless `replace`.
    """
    owner: dict[str, str] = {}
    for pf in parsed:
        for run in pf.runs:
            if run.run_id in owner:
                raise BadInputError(
                    f"{pf.file_name}: run {run.run_id!r} ({run.name}) is also in {owner[run.run_id]}; "
                    "import one of them (nothing was imported)"
                )
            owner[run.run_id] = pf.file_name
    sweeps = reconstructed_sweeps(parsed)
    batches = [
        ImportBatch(pf.file_name, pf.runs, pf.points, sweeps=sweeps if i == 0 else [],
                    drop_stale=pf.fmt == "markdown", quality=pf.quality)
        for i, pf in enumerate(parsed)
    ]
    write_import(db_path, batches, replace=replace)
    summary = ImportSummary()
    for pf in parsed:
        summary.files.append(pf.file_name)
        summary.runs += len(pf.runs)
        summary.points += len(pf.points)
    return summary


def import_files(db_path: Path | str, paths: list[Path | str], replace: bool = False) -> ImportSummary:
    """Parse every file, then write them all (all or nothing). See write_parsed for `replace`."""
    if not paths:
        raise BadInputError("import: give at least one .md or .jsonl file")
    parsed = [parse_file(p) for p in paths]
    return write_parsed(db_path, parsed, replace=replace)
