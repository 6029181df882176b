"""Load runs and points from the store for export, and export them (the CLI and the dashboard both call this).

Reads with a read-only connection (`bench.store.connect(path, read_only=True)`), closed before rendering.
`--run NAME` matches a run's name or its run_id; unknown names are a BadInputError listing what exists.
The markdown title is the sweep's title when all selected runs come from one sweep, else the title an
imported report carried, else a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from bench import store
from bench.errors import BadInputError
from bench.records import PointRecord, RunRecord
from bench.report.common import order_runs, sort_points
from bench.report.csv_export import render_csv
from bench.report.jsonl import render_jsonl
from bench.report.markdown import default_title, render_markdown
from bench.report.quality_export import load_quality

EXPORT_FORMATS: tuple[str, ...] = ("markdown", "csv", "jsonl")
_POINT_COLUMNS = [f.name for f in fields(PointRecord)]  # points table columns, in PointRecord order
_POINT_FIELDS = set(_POINT_COLUMNS)


@dataclass
class Selection:
    runs: list[RunRecord]
    points: list[PointRecord]
    sweep_titles: dict[str, str]  # sweep_id -> title, for the selected runs' sweeps
    quality: dict[str, dict] = field(default_factory=dict)  # run_id -> {domain: {metric: value}}

    def title(self) -> str:
        sweep_ids = {r.sweep_id for r in self.runs}
        if len(sweep_ids) == 1 and None not in sweep_ids:
            title = self.sweep_titles.get(next(iter(sweep_ids)))  # type: ignore[arg-type]
            if title:
                return title
        return default_title(self.runs)


@dataclass
class ExportResult:
    text: str
    fmt: str
    runs: int
    points: int


def point_from_row(row: dict) -> PointRecord:
    return PointRecord(**{k: v for k, v in row.items() if k in _POINT_FIELDS})


def _select(runs: list[RunRecord], run_names: list[str] | None) -> list[RunRecord]:
    if not run_names:
        return runs
    wanted = list(dict.fromkeys(run_names))
    chosen = [r for r in runs if r.name in wanted or r.run_id in wanted]
    found = {r.name for r in chosen} | {r.run_id for r in chosen}
    missing = [n for n in wanted if n not in found]
    if missing:
        names = ", ".join(sorted({r.name for r in runs})) or "(none: the database holds no runs)"
        raise BadInputError(f"--run {missing[0]}: no run with that name or id in the database; runs: {names}")
    return chosen


def load_selection(db_path: Path | str, run_names: list[str] | None = None) -> Selection:
    """Runs (by name or run_id; all when run_names is empty/None) with their points and sweep titles."""
    con = store.connect(db_path, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "runs" not in tables:
            return Selection([], [], {})
        store.check_version(Path(db_path), store.schema_version_of(con))
        runs = _select([store.run_from_row(r) for r in store.fetch_dicts(con, "SELECT * FROM runs")], run_names)
        ids = [r.run_id for r in runs]
        points: list[PointRecord] = []
        titles: dict[str, str] = {}
        quality = load_quality(con, ids)
        if ids:
            cols = ", ".join(f'"{name}"' for name in _POINT_COLUMNS)
            sql = f"SELECT {cols} FROM points WHERE run_id IN (SELECT unnest(?::VARCHAR[]))"
            points = [PointRecord(*row) for row in con.execute(sql, [ids]).fetchall()]
            sweep_ids = sorted({r.sweep_id for r in runs if r.sweep_id})
            if sweep_ids and "sweeps" in tables:
                marks = ", ".join("?" for _ in sweep_ids)
                for sid, title in con.execute(
                    f"SELECT sweep_id, title FROM sweeps WHERE sweep_id IN ({marks})", sweep_ids
                ).fetchall():
                    titles[sid] = title
    finally:
        con.close()
    runs = order_runs(runs)
    return Selection(runs, sort_points(points, runs), titles, quality)


def render(selection: Selection, fmt: str) -> str:
    if fmt == "markdown":
        return render_markdown(selection.runs, selection.points, title=selection.title(), quality=selection.quality)
    if fmt == "csv":
        return render_csv(selection.runs, selection.points, quality=selection.quality)
    if fmt == "jsonl":
        return render_jsonl(selection.runs, selection.points, quality=selection.quality)
    raise BadInputError(f"--format {fmt}: unknown export format; use one of {', '.join(EXPORT_FORMATS)}")


def build_export(db_path: Path | str, run_names: list[str] | None, fmt: str) -> ExportResult:
    if fmt not in EXPORT_FORMATS:
        raise BadInputError(f"--format {fmt}: unknown export format; use one of {', '.join(EXPORT_FORMATS)}")
    selection = load_selection(db_path, run_names)
    return ExportResult(render(selection, fmt), fmt, len(selection.runs), len(selection.points))


def export_selection(db_path: Path | str, run_names: list[str] | None, fmt: str) -> str:
    """The export text for the selected runs: the same bytes `python -m bench export` writes with --out."""
    return build_export(db_path, run_names, fmt).text
