"""Import report files (markdown by `.md`, JSONL by `.jsonl`) into the store: all files, one transaction.

Every file is parsed before anything is written; a bad file raises BadInputError and the database is left
as it was. An imported run replaces the stored run with the same run_id and all of that run's points.
Re-importing a markdown file also drops runs an earlier import of the same file name created that the file
no longer lists, so a report's import always mirrors the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.errors import BadInputError
from bench.records import SweepRecord, utcnow
from bench.report.common import ParsedFile
from bench.report.jsonl import parse_jsonl
from bench.report.markdown import parse_markdown

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


def _insert(con: Any, table: str, row: dict[str, Any]) -> None:
    cols = list(row)
    names = ", ".join(f'"{c}"' for c in cols)
    marks = ", ".join("?" for _ in cols)
    con.execute(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", [row[c] for c in cols])


def reconstructed_sweeps(pf: ParsedFile) -> list[SweepRecord]:
    """Sweep rows for measured runs whose sweep travelled only as a `sweep_id` (JSONL carries no sweep rows).

    State done, title and spec from the runs' resolved configs, points and times from the file's points; the
    message says the row was rebuilt on import. A sweep already in the database is left as it is.
    """
    by_sweep: dict[str, list[Any]] = {}
    for run in pf.runs:
        if run.sweep_id and run.source == "measured":
            by_sweep.setdefault(run.sweep_id, []).append(run)
    out = []
    for sweep_id, runs in by_sweep.items():
        ids = {r.run_id for r in runs}
        pts = [p for p in pf.points if p.run_id in ids]
        configs = [json.loads(r.config_json) for r in runs if r.config_json]
        title = next((c.get("title") for c in configs if c.get("title")), f"imported from {pf.file_name}")
        spec = {"title": title, "sweep": configs[0].get("sweep", {}) if configs else {},
                "variants": [c["variant"] for c in configs if "variant" in c]}
        starts = [t for t in [r.started_at for r in runs] + [p.started_at for p in pts] if t is not None]
        ends = [t for t in [r.finished_at for r in runs] + [p.finished_at for p in pts] if t is not None]
        first = min(starts) if starts else None
        out.append(SweepRecord(
            sweep_id=sweep_id, title=title, spec_json=json.dumps(spec, sort_keys=True), state="done",
            host=runs[0].env.host, device_key=None, points_planned=len(pts), points_done=len(pts),
            message=f"rebuilt on import of {pf.file_name}", created_at=first or utcnow(), started_at=first,
            finished_at=max(ends) if ends else None,
        ))
    return out


def write_parsed(db_path: Path | str, parsed: list[ParsedFile]) -> ImportSummary:
    """Write parsed files in one transaction (all or nothing)."""
    summary = ImportSummary()
    owner: dict[str, str] = {}
    for pf in parsed:
        for run in pf.runs:
            if run.run_id in owner:
                raise BadInputError(
                    f"{pf.file_name}: run {run.run_id!r} ({run.name}) is also in {owner[run.run_id]}; "
                    "import one of them (nothing was imported)"
                )
            owner[run.run_id] = pf.file_name
    with store.writer(db_path) as con:
        for pf in parsed:
            ids = [r.run_id for r in pf.runs]
            if pf.fmt == "markdown":
                stale = [
                    r[0]
                    for r in con.execute(
                        "SELECT run_id FROM runs WHERE source = ? AND run_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                        [f"imported:{pf.file_name}", ids],
                    ).fetchall()
                ]
                ids_to_clear = ids + stale
                con.execute("DELETE FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [stale])
            else:
                ids_to_clear = ids
            con.execute("DELETE FROM points WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids_to_clear])
            for run in pf.runs:
                _insert(con, "runs", store.run_row(run))
            for point in pf.points:
                _insert(con, "points", store.point_row(point))
            _insert_quality(con, pf)
            for sweep in reconstructed_sweeps(pf):
                if not con.execute("SELECT 1 FROM sweeps WHERE sweep_id = ?", [sweep.sweep_id]).fetchone():
                    _insert(con, "sweeps", store.sweep_row(sweep))
            summary.files.append(pf.file_name)
            summary.runs += len(pf.runs)
            summary.points += len(pf.points)
    return summary


def _insert_quality(con: Any, pf: ParsedFile) -> None:
    """Quality figures a JSONL file carried (run_id -> {domain: {metric: value, tokens, seconds}})."""
    for run_id, domains in pf.quality.items():
        con.execute("DELETE FROM quality WHERE run_id = ?", [run_id])
        for domain, metrics in domains.items():
            for metric, value in metrics.items():
                if metric in ("tokens", "seconds"):
                    continue
                con.execute("INSERT INTO quality (run_id, domain, metric, value, tokens, seconds) VALUES "
                            "(?, ?, ?, ?, ?, ?)", [run_id, domain, metric, value, metrics.get("tokens"),
                                                   metrics.get("seconds")])


def import_files(db_path: Path | str, paths: list[Path | str]) -> ImportSummary:
    """Parse every file, then write them all in one transaction."""
    if not paths:
        raise BadInputError("import: give at least one .md or .jsonl file")
    parsed = [parse_file(p) for p in paths]
    return write_parsed(db_path, parsed)
