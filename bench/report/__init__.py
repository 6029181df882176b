"""Report import and export: the reference markdown format, JSONL (the portable, lossless form) and CSV.

Public entry points (the CLI and the dashboard's Export page call the same ones, so their bytes agree):

- `render_markdown(runs, points, title=None, reproduce=None) -> str`   (bench.report.markdown)
- `render_jsonl(runs, points) -> str`, `render_csv(runs, points) -> str`
- `parse_markdown(text, file_name)`, `parse_jsonl(text, file_name) -> ParsedFile`
- `export_selection(db_path, run_names, fmt) -> str`                   (bench.report.selection)
- `load_selection(db_path, run_names) -> Selection`
- `import_files(db_path, paths) -> ImportSummary`                       (bench.report.importer)
"""

from __future__ import annotations

from bench.report.csv_export import render_csv
from bench.report.importer import ImportSummary, import_files, parse_file
from bench.report.jsonl import parse_jsonl, render_jsonl
from bench.report.markdown import ParsedFile, parse_markdown, render_markdown
from bench.report.selection import (
    EXPORT_FORMATS,
    ExportResult,
    Selection,
    build_export,
    export_selection,
    load_selection,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "ImportSummary",
    "ParsedFile",
    "Selection",
    "build_export",
    "export_selection",
    "import_files",
    "load_selection",
    "parse_file",
    "parse_jsonl",
    "parse_markdown",
    "render_csv",
    "render_jsonl",
    "render_markdown",
]
