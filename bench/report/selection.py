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

EXPORT_FORMATS: tuple[str, ...] = ("markdown", "csv", "jsonl", "html")
_POINT_COLUMNS = [f.name for f in fields(PointRecord)]  # points table columns, in PointRecord order
_POINT_FIELDS = set(_POINT_COLUMNS)


@dataclass
class Selection:
    runs: list[RunRecord]
    points: list[PointRecord]
    sweep_titles: dict[str, str]  # sweep_id -> title, for the selected runs' sweeps
    notes: list[str] = field(default_factory=list)  # e.g. a --run name several runs share (the latest is taken)
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
    notes: list[str] = field(default_factory=list)


def point_from_row(row: dict) -> PointRecord:
    return PointRecord(**{k: v for k, v in row.items() if k in _POINT_FIELDS})


def _newest_first(run: RunRecord) -> tuple:
    ts = run.started_at.timestamp() if run.started_at is not None else float("-inf")
    return (-ts, run.run_id)


def resolve_runs(runs: list[RunRecord], wanted: list[str], flag: str = "--run") -> tuple[list[RunRecord], list[str]]:
    """Each of `wanted` as one run: a run_id picks that run; a name held by several runs picks the latest (by start
    time; undated imported runs count as oldest) and adds a note naming the others. Unknown names: BadInputError."""
    by_id = {r.run_id: r for r in runs}
    chosen: list[RunRecord] = []
    notes: list[str] = []
    for want in dict.fromkeys(wanted):
        if want in by_id:
            run = by_id[want]
        else:
            named = sorted((r for r in runs if r.name == want), key=_newest_first)
            if not named:
                names = ", ".join(sorted({r.name for r in runs})) or "(none: the database holds no runs)"
                raise BadInputError(f"{flag} {want}: no run with that name or id in the database; runs: {names}")
            run = named[0]
            if len(named) > 1:
                others = ", ".join(r.run_id for r in named[1:])
                notes.append(f"{flag} {want}: {len(named)} runs have that name; using the latest, {run.run_id} "
                             f"(others: {others}; pass a run_id to pick one)")
        if run not in chosen:
            chosen.append(run)
    return chosen, notes


def _select(runs: list[RunRecord], run_names: list[str] | None) -> tuple[list[RunRecord], list[str]]:
    if not run_names:
        return runs, []
    return resolve_runs(runs, run_names)


def load_selection(db_path: Path | str, run_names: list[str] | None = None) -> Selection:
    """Runs (by name or run_id; all when run_names is empty/None) with their points and sweep titles."""
    con = store.connect(db_path, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "runs" not in tables:
            return Selection([], [], {})
        store.check_version(Path(db_path), store.schema_version_of(con))
        runs, notes = _select([store.run_from_row(r) for r in store.fetch_dicts(con, "SELECT * FROM runs")],
                              run_names)
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
    return Selection(runs, sort_points(points, runs), titles, notes, quality)


def render(selection: Selection, fmt: str, prices: dict[str, float] | None = None) -> str:
    """The export text; `prices` ($/GPU-hour per card family) override the defaults in the cost columns."""
    if fmt in ("markdown", "html"):
        md = render_markdown(selection.runs, selection.points, title=selection.title(), prices=prices,
                             quality=selection.quality)
        if fmt == "markdown":
            return md
        from bench.report.html import render_html

        return render_html(selection.runs, selection.points, md, selection.title())
    if fmt == "csv":
        return render_csv(selection.runs, selection.points, prices, quality=selection.quality)
    if fmt == "jsonl":
        return render_jsonl(selection.runs, selection.points, quality=selection.quality)
    raise BadInputError(f"--format {fmt}: unknown export format; use one of {', '.join(EXPORT_FORMATS)}")


def build_export(db_path: Path | str, run_names: list[str] | None, fmt: str,
                 prices: dict[str, float] | None = None) -> ExportResult:
    if fmt not in EXPORT_FORMATS:
        raise BadInputError(f"--format {fmt}: unknown export format; use one of {', '.join(EXPORT_FORMATS)}")
    selection = load_selection(db_path, run_names)
    return ExportResult(render(selection, fmt, prices), fmt, len(selection.runs), len(selection.points),
                        selection.notes)


def export_selection(db_path: Path | str, run_names: list[str] | None, fmt: str,
                     prices: dict[str, float] | None = None) -> str:
    """The export text for the selected runs: the same bytes `python -m bench export` writes with --out."""
    return build_export(db_path, run_names, fmt, prices).text
