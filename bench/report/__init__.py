"""Report import and export: the reference markdown format, JSONL (the portable, lossless form) and CSV.

Public entry points (the CLI and the dashboard's Export page call the same ones, so their bytes agree):

- `render_markdown(runs, points, title=None, reproduce=None) -> str`   (bench.report.markdown)
- `render_jsonl(runs, points) -> str`, `render_csv(runs, points) -> str`
- `parse_markdown(text, file_name)`, `parse_jsonl(text, file_name) -> ParsedFile`
- `render_html(runs, points, markdown, title) -> str`                   (bench.report.html)
- `export_selection(db_path, run_names, fmt, prices=None) -> str`      (bench.report.selection; fmt html too)
- `load_selection(db_path, run_names) -> Selection`
- `import_files(db_path, paths) -> ImportSummary`                       (bench.report.importer)
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are loaded on first use (PEP 562), so `bench.report.jsonl` and `bench.report.markdown` import without the
# DuckDB store: the GPU box writes JSONL (python -m bench perf) and has no duckdb.
_WHERE: dict[str, str] = {
    "render_csv": "csv_export",
    "ImportSummary": "importer",
    "import_files": "importer",
    "parse_file": "importer",
    "parse_jsonl": "jsonl",
    "render_jsonl": "jsonl",
    "ParsedFile": "markdown",
    "parse_markdown": "markdown",
    "render_markdown": "markdown",
    "render_html": "html",
    "EXPORT_FORMATS": "selection",
    "ExportResult": "selection",
    "Selection": "selection",
    "build_export": "selection",
    "export_selection": "selection",
    "load_selection": "selection",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bench.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bench.report.{_WHERE[name]}"), name)
