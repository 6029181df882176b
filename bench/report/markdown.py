"""The reference report's markdown format (`data/reports/union-prunes-20b-decode-report.md`): render and parse.

Layout: `# title`, meta bullets, the summary table, `## Per-batch details` with a `### name` section and a
detail table per run, and `## Reproduce` with a bash block. Number formats follow the reference: tok/s with
2 decimals, decode_s with 3, mem_used_gib with 1 in the summary and as the raw float repr in the details.

- A table shows one row per batch: the median over the ok repeats (status `ok` when at least one repeat
  was ok; otherwise the first repeat's status). "@max" is the largest batch with status ok.
- `|` in names is written `\\|`, newlines as a space, so a name cannot break a table.
- Meta bullets we add (`timing`, `values`, `engine`) are read back on import; bullets inside a run's
  section override the global ones for that run (written when runs differ). `- error at batch N: text`
  bullets carry error messages.
- Import marks runs `source="imported:<file name>"`, `state="imported"`, `repeat=0`; the timing convention
  is `generate` unless a `timing:` bullet says otherwise (the reference divides all new tokens by the
  whole generate time). Engine, dtype and card are "unknown" unless a bullet gives them. No sweep row is
  created (`sweep_id=None`); `config_json` holds {title, sweep, variant} like a measured run's (so
  `rerun` can measure the same variant here) plus {imported: {file, position, meta}}.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from dataclasses import dataclass

from bench.errors import BadInputError
from bench.records import POINT_STATUSES, PointRecord, RunRecord
from bench.report.common import DEFAULT_TITLE, ParsedFile, config_of, order_runs, run_labels

SUMMARY_HEADER = [
    "run",
    "top_k",
    "max_batch",
    "total tok/s @max",
    "per-stream tok/s @max",
    "mem_used_gib @max",
    "model",
]
SUMMARY_ALIGN = "|---|---:|---:|---:|---:|---:|---|"
DETAIL_HEADER = ["batch", "total tok/s", "per-stream tok/s", "decode_s", "mem_used_gib", "status"]
DETAIL_ALIGN = "|---:|---:|---:|---:|---:|---|"
DETAILS_HEADING = "## Per-batch details"
MISSING = "-"

TIMING_TEXT = {
    "decode": "decode: total tok/s = batch*(new_tokens-1)/decode_s; decode_s excludes prefill (first token)",
    "generate": "generate: total tok/s = batch*new_tokens/decode_s; decode_s is the whole generate() time",
}


# ---------------------------------------------------------------------------------------------- render


def escape_cell(text: str) -> str:
    """Make a name safe inside a table cell or heading: `|` -> `\\|`, newlines -> a space."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("|", "\\|")


def _f(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _raw(value: float | None) -> str:
    return MISSING if value is None else repr(float(value))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class BatchRow:
    """One detail-table row: medians over the ok repeats of one (run, batch)."""

    batch: int
    status: str
    total_tps: float | None
    per_stream_tps: float | None
    decode_s: float | None
    mem_used_gib: float | None
    repeats_ok: int
    repeats: int
    errors: list[str]


def batch_rows(points: list[PointRecord]) -> list[BatchRow]:
    """Collapse one run's points to one row per batch (median over ok repeats)."""
    by_batch: dict[int, list[PointRecord]] = {}
    for p in points:
        by_batch.setdefault(p.batch, []).append(p)
    rows = []
    for batch in sorted(by_batch):
        reps = sorted(by_batch[batch], key=lambda p: p.repeat)
        ok = [p for p in reps if p.status == "ok"]
        use = ok or reps
        errors = [
            f"repeat {p.repeat} ({p.status}): {p.error}" if len(reps) > 1 else str(p.error) for p in reps if p.error
        ]
        rows.append(
            BatchRow(
                batch=batch,
                status="ok" if ok else reps[0].status,
                total_tps=_median([p.total_tps for p in use]),
                per_stream_tps=_median([p.per_stream_tps for p in use]),
                decode_s=_median([p.decode_s for p in use]),
                mem_used_gib=_median([p.mem_used_gib for p in use]),
                repeats_ok=len(ok),
                repeats=len(reps),
                errors=errors,
            )
        )
    return rows


def _uniform(values: list) -> object | None:
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else None


def _run_meta(run: RunRecord) -> dict[str, str]:
    return {
        "prompt_len": str(run.prompt_len),
        "new_tokens": str(run.new_tokens),
        "timing": run.timing_convention,
        "engine": run.engine,
        "dtype": run.dtype,
        "device": run.device,
        "card": escape_cell(run.env.device_name),
    }


def _bullet(pairs: list[tuple[str, str]]) -> str:
    return "- " + " | ".join(f"{k}: {v}" for k, v in pairs)


def default_title(runs: list[RunRecord]) -> str:
    titles = {config_of(r).get("title") for r in runs}
    titles.discard(None)
    if len(titles) == 1:
        title = titles.pop()
        if isinstance(title, str) and title.strip():
            return title
    return DEFAULT_TITLE


def render_markdown(
    runs: list[RunRecord],
    points: list[PointRecord],
    title: str | None = None,
    reproduce: str | None = None,
    prices: dict[str, float] | None = None,
    quality: dict[str, dict] | None = None,
) -> str:
    """The report in the reference layout (plus a Quality section when runs have quality). A pure function of its
    arguments. `prices` ($/GPU-hour per card family) override the defaults in the energy/cost section
    (`bench.report.energy`)."""
    from bench.report import energy
    from bench.report.quality_export import quality_markdown
    from bench.report.reproduce import reproduce_script

    runs = order_runs(runs)
    labels = run_labels(runs)
    by_run: dict[str, list[PointRecord]] = {r.run_id: [] for r in runs}
    for p in points:
        if p.run_id in by_run:
            by_run[p.run_id].append(p)
    rows = {r.run_id: batch_rows(by_run[r.run_id]) for r in runs}
    title = title if title is not None else default_title(runs)

    metas = [_run_meta(r) for r in runs]
    keys = ["prompt_len", "new_tokens", "timing", "engine", "dtype", "device", "card"]
    shared = {k: _uniform([m[k] for m in metas]) for k in keys} if runs else {}
    per_run_keys = [k for k in keys if runs and shared[k] is None]

    out: list[str] = [f"# {escape_cell(title)}", ""]
    if shared.get("prompt_len") is not None or shared.get("new_tokens") is not None:
        out.append(_bullet([(k, str(shared[k])) for k in ("prompt_len", "new_tokens") if shared[k] is not None]))
    batches = sorted({p.batch for pts in by_run.values() for p in pts})
    out.append(f"- batch_sweep: {','.join(str(b) for b in batches)}")
    timing = shared.get("timing")
    if timing is not None:
        out.append(f"- timing: {TIMING_TEXT.get(str(timing), timing)}")
    else:
        for conv in sorted({r.timing_convention for r in runs}):
            names = ", ".join(labels[r.run_id] for r in runs if r.timing_convention == conv)
            out.append(f"- timing of {escape_cell(names)}: {TIMING_TEXT.get(conv, conv)}")
    max_repeats = max((row.repeats for rs in rows.values() for row in rs), default=1)
    if max_repeats > 1:
        out.append(
            f"- values: median over the ok repeats of each batch (up to {max_repeats} repeats per batch); "
            "status ok when at least one repeat was ok"
        )
    else:
        out.append("- values: one measurement per batch")
    env_pairs = [(k, str(shared[k])) for k in ("engine", "dtype", "device", "card") if shared.get(k) is not None]
    if env_pairs:
        out.append(_bullet(env_pairs))
    out.append("")

    out.append("| " + " | ".join(SUMMARY_HEADER) + " |")
    out.append(SUMMARY_ALIGN)
    for run in runs:
        ok_rows = [row for row in rows[run.run_id] if row.status == "ok"]
        top = max(ok_rows, key=lambda row: row.batch) if ok_rows else None
        cells = [
            escape_cell(labels[run.run_id]),
            str(run.top_k),
            str(top.batch) if top else MISSING,
            _f(top.total_tps if top else None, 2),
            _f(top.per_stream_tps if top else None, 2),
            _f(top.mem_used_gib if top else None, 1),
            f"`{escape_cell(run.model)}`",
        ]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", DETAILS_HEADING, ""]

    for run, meta in zip(runs, metas, strict=True):
        out += [f"### {escape_cell(labels[run.run_id])}", ""]
        if per_run_keys:
            out += [_bullet([(k, meta[k]) for k in per_run_keys]), ""]
        out.append("| " + " | ".join(DETAIL_HEADER) + " |")
        out.append(DETAIL_ALIGN)
        for row in rows[run.run_id]:
            cells = [
                str(row.batch),
                _f(row.total_tps, 2),
                _f(row.per_stream_tps, 2),
                _f(row.decode_s, 3),
                _raw(row.mem_used_gib),
                row.status,
            ]
            out.append("| " + " | ".join(cells) + " |")
        errors = [(row.batch, e) for row in rows[run.run_id] for e in row.errors]
        if errors:
            out.append("")
            out += [f"- error at batch {b}: {escape_cell(e)}" for b, e in errors]
        out.append("")

    out += energy.section(runs, by_run, labels, prices)
    batches_by_run = {r.run_id: [row.batch for row in rows[r.run_id]] for r in runs}
    script = reproduce if reproduce is not None else reproduce_script(runs, title, batches_by_run)
    out += quality_markdown(runs, labels, quality or {})
    out += ["## Reproduce", "", "```bash", script.rstrip("\n"), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- parse

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_ALIGN_CELL = re.compile(r"^:?-{1,}:?$")
_ERROR_BULLET = re.compile(r"^- error at batch (\d+): (.*)$")
_INT_META = ("prompt_len", "new_tokens")
_STR_META = ("engine", "dtype", "device", "card")


class _Lines:
    def __init__(self, text: str, file_name: str) -> None:
        self.lines = text.splitlines()
        self.i = 0
        self.file_name = file_name

    def peek(self) -> str | None:
        return self.lines[self.i] if self.i < len(self.lines) else None

    @property
    def lineno(self) -> int:
        return self.i + 1

    def error(self, expected: str, lineno: int | None = None) -> BadInputError:
        n = self.lineno if lineno is None else lineno
        got = self.lines[n - 1] if 0 < n <= len(self.lines) else "end of file"
        if len(got) > 80:
            got = got[:77] + "..."
        return BadInputError(
            f"{self.file_name}:{n}: expected {expected}, got {got!r}; "
            "the file is not in the report format of data/reports/ (nothing was imported)"
        )

    def skip_blank(self) -> None:
        while self.peek() is not None and not self.peek().strip():  # type: ignore[union-attr]
            self.i += 1


def _cells(line: str) -> list[str] | None:
    s = line.strip()
    if len(s) < 2 or not s.startswith("|") or not s.endswith("|") or s.endswith("\\|"):
        return None
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(s[1:-1])]


def _table(lines: _Lines, header: list[str], what: str) -> list[tuple[int, list[str]]]:
    head = lines.peek()
    if head is None or _cells(head) != header:
        raise lines.error(f"the {what} header '| {' | '.join(header)} |'")
    lines.i += 1
    align = lines.peek()
    cells = _cells(align) if align is not None else None
    if cells is None or len(cells) != len(header) or not all(_ALIGN_CELL.match(c) for c in cells):
        raise lines.error(f"the {what} alignment row such as '|---|---:|'")
    lines.i += 1
    rows = []
    while (line := lines.peek()) is not None and line.strip().startswith("|"):
        cells = _cells(line)
        if cells is None or len(cells) != len(header):
            raise lines.error(f"a {what} row with {len(header)} cells ending in '|'")
        rows.append((lines.lineno, cells))
        lines.i += 1
    return rows


def _num(text: str, lines: _Lines, lineno: int, column: str) -> float | None:
    if text in ("", "-", "—", "–"):
        return None
    try:
        return float(text)
    except ValueError:
        raise lines.error(f"a number (or '-') in column {column!r}", lineno) from None


def _int(text: str, lines: _Lines, lineno: int, column: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise lines.error(f"an integer in column {column!r}", lineno) from None
    if not minimum <= value < 2**31:
        raise lines.error(f"an integer from {minimum} to 2**31-1 in column {column!r}", lineno)
    return value


def _meta_bullet(line: str, lines: _Lines, into: dict[str, str]) -> None:
    body = line.strip()[2:]
    for part in re.split(r"\s+\|\s+", body):
        key, sep, value = part.partition(":")
        if not sep or not key.strip():
            raise lines.error("a meta bullet '- key: value | key: value'")
        key = key.strip()
        if key.startswith("timing"):  # "timing: decode: ..." or "timing of a, b: decode: ..."
            into[key] = value.strip().split(":")[0].strip()
        else:
            into[key] = value.strip()


def _typed_meta(raw: dict[str, str], lines: _Lines, lineno: int) -> dict[str, object]:
    meta: dict[str, object] = {}
    for key in _INT_META:
        if key in raw:
            try:
                meta[key] = int(raw[key])
            except ValueError:
                raise lines.error(f"an integer for meta '{key}'", lineno) from None
            if not 1 <= meta[key] < 2**31:  # type: ignore[operator]
                raise lines.error(f"a positive integer for meta '{key}'", lineno)
    for key in _STR_META:
        if raw.get(key):
            meta[key] = raw[key].replace("\\|", "|")
    if "timing" in raw:
        if raw["timing"] not in TIMING_TEXT:
            raise lines.error(f"timing 'decode' or 'generate', not {raw['timing']!r}", lineno)
        meta["timing"] = raw["timing"]
    return meta


def imported_run_id(file_name: str, run_name: str) -> str:
    """Deterministic id: re-importing the same file replaces its runs instead of duplicating them."""
    digest = hashlib.sha256(f"{file_name}\0{run_name}".encode()).hexdigest()[:16]
    return f"imp-{digest}"


def parse_markdown(text: str, file_name: str) -> ParsedFile:
    """Parse a report into runs and points. Raises BadInputError naming file, line and what was expected."""
    lines = _Lines(text, file_name)
    lines.skip_blank()
    first = lines.peek()
    if first is None or not first.startswith("# ") or not first[2:].strip():
        raise lines.error("a title line '# <title>'")
    title = first[2:].strip().replace("\\|", "|")
    lines.i += 1

    raw_meta: dict[str, str] = {}
    while True:
        lines.skip_blank()
        line = lines.peek()
        if line is None or line.strip().startswith("|"):
            break
        if not line.startswith("- "):
            raise lines.error("a meta bullet '- key: value' or the summary table")
        meta_line = lines.lineno
        _meta_bullet(line, lines, raw_meta)
        lines.i += 1
    summary_line = lines.lineno
    meta = _typed_meta(raw_meta, lines, meta_line if raw_meta else summary_line)
    summary = _table(lines, SUMMARY_HEADER, "summary table")

    order: list[str] = []
    info: dict[str, tuple[int, int, str]] = {}  # name -> (line, top_k, model)
    for lineno, cells in summary:
        name = cells[0]
        if not name:
            raise lines.error("a run name in column 'run'", lineno)
        if name in info:
            raise lines.error(f"a unique run name (run {name!r} appears twice)", lineno)
        top_k = _int(cells[1], lines, lineno, "top_k", 1)
        model = cells[6]
        if len(model) >= 2 and model.startswith("`") and model.endswith("`"):
            model = model[1:-1]
        if not model:
            raise lines.error("a model in column 'model'", lineno)
        order.append(name)
        info[name] = (lineno, top_k, model)

    lines.skip_blank()
    if lines.peek() is None or lines.peek().strip() != DETAILS_HEADING:  # type: ignore[union-attr]
        raise lines.error(f"the heading '{DETAILS_HEADING}'")
    lines.i += 1

    sections: dict[str, tuple[dict[str, object], list[tuple[int, list[str]]], dict[int, list[str]]]] = {}
    while True:
        lines.skip_blank()
        line = lines.peek()
        if line is None or line.startswith("## "):
            break
        if not line.startswith("### "):
            raise lines.error("a run section heading '### <run name>'")
        name = line[4:].strip().replace("\\|", "|")
        if name not in info:
            raise lines.error(f"a run listed in the summary table (no summary row for {name!r})")
        if name in sections:
            raise lines.error(f"one section per run ({name!r} has two)")
        lines.i += 1
        run_raw: dict[str, str] = {}
        lines.skip_blank()
        bullet_line = lines.lineno
        while (b := lines.peek()) is not None and b.startswith("- "):
            _meta_bullet(b, lines, run_raw)
            lines.i += 1
            lines.skip_blank()
        run_meta = _typed_meta(run_raw, lines, bullet_line)
        rows = _table(lines, DETAIL_HEADER, f"detail table of {name!r}")
        errors: dict[int, list[str]] = {}
        lines.skip_blank()
        while (b := lines.peek()) is not None and b.startswith("- "):
            m = _ERROR_BULLET.match(b.strip())
            if not m:
                raise lines.error("an error bullet '- error at batch N: message'")
            errors.setdefault(int(m.group(1)), []).append(m.group(2).replace("\\|", "|"))
            lines.i += 1
            lines.skip_blank()
        sections[name] = (run_meta, rows, errors)

    missing = [n for n in order if n not in sections]
    if missing:
        raise lines.error(
            f"a '### {missing[0]}' section with its detail table (listed in the summary)", info[missing[0]][0]
        )

    parsed = ParsedFile(file_name=file_name, fmt="markdown", title=title)
    for position, name in enumerate(order):
        lineno, top_k, model = info[name]
        run_meta, rows, errors = sections[name]
        m = {**meta, **run_meta}
        for key in _INT_META:
            if key not in m:
                raise lines.error(f"a meta bullet '- prompt_len: N | new_tokens: N' ({key} of {name!r})", lineno)
        run_id = imported_run_id(file_name, name)
        batches = sorted(_int(cells[0], lines, row_line, "batch", 1) for row_line, cells in rows)
        config = {  # rerunnable like a measured run's config (title/sweep/variant), plus where it came from
            "title": title,
            "sweep": {"prompt_len": m["prompt_len"], "new_tokens": m["new_tokens"], "batch_sizes": batches or [1]},
            "variant": {"name": name, "model": model, "top_k": top_k},
            "imported": {"file": file_name, "position": position, "meta": {**raw_meta, **run_raw_str(run_meta)}},
        }
        run = RunRecord(
            run_id=run_id,
            sweep_id=None,
            name=name,
            model=model,
            top_k=top_k,
            engine=str(m.get("engine", "unknown")),
            dtype=str(m.get("dtype", "unknown")),
            device=str(m.get("device", "unknown")),
            prompt_len=int(m["prompt_len"]),  # type: ignore[call-overload]
            new_tokens=int(m["new_tokens"]),  # type: ignore[call-overload]
            repeats=1,
            seed=0,
            config_json=json.dumps(config, sort_keys=True),
            source=f"imported:{file_name}",
            state="imported",
            timing_convention=str(m.get("timing", "generate")),
            notes=f"imported from {file_name}; the report gives one value per batch",
        )
        run.env.device_name = str(m.get("card", "unknown"))
        run.env.device_kind = run.device if run.device in ("cuda", "cpu") else "unknown"
        parsed.runs.append(run)
        seen: set[int] = set()
        for row_line, cells in rows:
            batch = _int(cells[0], lines, row_line, "batch", 1)
            if batch in seen:
                raise lines.error(f"one row per batch (batch {batch} of {name!r} appears twice)", row_line)
            seen.add(batch)
            status = cells[5]
            if status not in POINT_STATUSES:
                raise lines.error(f"a status in column 'status' (one of {', '.join(POINT_STATUSES)})", row_line)
            errs = errors.get(batch)
            parsed.points.append(
                PointRecord(
                    run_id=run_id,
                    batch=batch,
                    repeat=0,
                    status=status,
                    error="; ".join(errs) if errs else None,
                    total_tps=_num(cells[1], lines, row_line, "total tok/s"),
                    per_stream_tps=_num(cells[2], lines, row_line, "per-stream tok/s"),
                    decode_s=_num(cells[3], lines, row_line, "decode_s"),
                    mem_used_gib=_num(cells[4], lines, row_line, "mem_used_gib"),
                )
            )
    if not parsed.runs:
        raise lines.error("at least one run in the summary table", summary_line)
    return parsed


def run_raw_str(meta: dict[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in meta.items()}
