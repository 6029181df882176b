"""One self-contained HTML report of a selection: the markdown export's tables (the same text, rendered as HTML)
and interactive plotly charts (total and per-stream tok/s against batch size, the Pareto view), with plotly.js
inlined once so the file opens offline. `python -m bench export --format html` and the Export page write it.

Figures come from `bench.ui.charts` over a per-(run, batch) summary computed here from the selection's points
(median and min..max of the ok repeats), so the report needs only the selection, never the database.
"""

from __future__ import annotations

import html
import re
import statistics

import pandas as pd

from bench.records import PointRecord, RunRecord
from bench.report.common import order_runs, run_labels

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222} table{border-collapse:collapse;margin:0.6em 0 1.2em} th,td{border:1px solid #ccc;padding:3px 8px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums} th{background:#f3f3f3} code,pre{background:#f6f6f6}
pre{padding:0.8em;overflow-x:auto} .chart{margin:1em 0 2em} h1{font-size:1.6em} footer{color:#777;font-size:0.85em}
"""


def summary_frame(runs: list[RunRecord], points: list[PointRecord]) -> pd.DataFrame:
    """Per (run, batch): label, n_ok, median/min/max of total and per-stream tok/s, ceiling and MBU medians."""
    labels = run_labels(order_runs(runs))
    groups: dict[tuple[str, int], list[PointRecord]] = {}
    for p in points:
        if p.status == "ok" and p.total_tps is not None and p.run_id in labels:
            groups.setdefault((p.run_id, p.batch), []).append(p)
    rank = {r.run_id: i for i, r in enumerate(order_runs(runs))}
    rows = []
    for (rid, batch), pts in sorted(groups.items(), key=lambda kv: (rank[kv[0][0]], kv[0][1])):
        row: dict = {"run_id": rid, "label": labels[rid], "batch": batch, "n_ok": len(pts)}
        for col in ("total_tps", "per_stream_tps"):
            vals = [getattr(p, col) for p in pts if getattr(p, col) is not None]
            row[col] = statistics.median(vals) if vals else None
            row[f"{col}_min"] = min(vals) if vals else None
            row[f"{col}_max"] = max(vals) if vals else None
        for col in ("ceiling_tps", "mbu"):
            vals = [getattr(p, col) for p in pts if getattr(p, col) is not None]
            row[col] = statistics.median(vals) if vals else None
        row["ceiling_per_stream_tps"] = row["ceiling_tps"] / batch if row["ceiling_tps"] is not None else None
        rows.append(row)
    cols = ["run_id", "label", "batch", "n_ok", "total_tps", "total_tps_min", "total_tps_max", "per_stream_tps",
            "per_stream_tps_min", "per_stream_tps_max", "ceiling_tps", "mbu", "ceiling_per_stream_tps"]
    return pd.DataFrame(rows, columns=cols).astype({c: float for c in cols[4:]})


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def markdown_to_html(md: str) -> str:
    """The markdown export's constructs (headings, bullets, pipe tables, fenced code) as HTML."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    cell = re.compile(r"(?<!\\)\|")
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip().replace("\\|", "|") for c in cell.split(lines[i].strip()[1:-1])])
                i += 1
            align = rows[1] if len(rows) > 1 else []
            right = [c.endswith(":") for c in align]
            out.append("<table>")
            for k, r in enumerate(rows):
                if k == 1:
                    continue
                tag = "th" if k == 0 else "td"
                cells = "".join(f'<{tag}{" class=num" if k < len(right) and right[j] else ""}>{_inline(c)}</{tag}>'
                                for j, c in enumerate(r))
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
            continue
        if line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        m = re.match(r"^(#{1,4}) (.*)$", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2).replace(chr(92) + '|', '|'))}</h{n}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def render_html(runs: list[RunRecord], points: list[PointRecord], markdown: str, title: str) -> str:
    """The report: charts first, then the markdown export's tables. A pure function of its arguments."""
    from bench.analysis import pareto
    from bench.ui import charts
    from bench.ui.colors import PALETTE

    summ = summary_frame(runs, points)
    colors = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(dict.fromkeys(summ["label"]))}
    figs = []
    if not summ.empty:
        figs.append(charts.scaling_figure(summ, colors, "total_tps", True))
        figs.append(charts.scaling_figure(summ, colors, "per_stream_tps", True))
        figs.append(charts.pareto_figure(pareto.pareto_points(summ), colors))
    parts = []
    for k, fig in enumerate(figs):
        fig.update_layout(template="plotly_white")  # explicit: Streamlit changes plotly's default template in-process
        parts.append('<div class="chart">' + fig.to_html(full_html=False, include_plotlyjs=(k == 0),
                                                          div_id=f"chart-{k}", config={"responsive": True})
                     + "</div>")
    charts_html = "\n".join(parts) if parts else "<p>No successful points to chart.</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="generator" content="moe-bench"><style>{_CSS}</style></head><body>\n'
            f'<h1>{html.escape(title)}</h1>\n<h2>Charts</h2>\n{charts_html}\n'
            f'<h2>Tables</h2>\n<div class="tables">{markdown_to_html(markdown.split(chr(10), 1)[1])}</div>\n'
            '<footer>moe-bench report: the tables are the markdown export (<code>python -m bench export --format '
            'markdown</code>) of the same selection.</footer>\n</body></html>\n')
