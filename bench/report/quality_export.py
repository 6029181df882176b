"""Quality figures (bench quality / the sweep's quality phase) in exports: present only when a selected run has
them, so an export without quality is byte-for-byte the reference format.

Per run: {domain: {metric: value, ..., "tokens": positions, "seconds": cost}}; metrics are kl (nats, base ‖
variant), top1_agreement, perplexity, base_perplexity. JSONL lines carry it under "quality", CSV as columns
quality.<domain>.<metric>, markdown as a "## Quality" section before "## Reproduce".
"""

from __future__ import annotations

from typing import Any

RunQuality = dict[str, dict[str, float]]
METRIC_TITLES: dict[str, str] = {"kl": "KL(base‖variant) nats", "top1_agreement": "top-1 agreement",
                                 "perplexity": "perplexity", "base_perplexity": "base perplexity",
                                 "tokens": "positions"}


def load_quality(con: Any, run_ids: list[str]) -> dict[str, RunQuality]:
    """Quality of the runs, from an open connection (empty when the table is absent or holds none of them)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "quality" not in tables or not run_ids:
        return {}
    rows = con.execute(
        "SELECT run_id, domain, metric, value, tokens, seconds FROM quality "
        "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, domain, metric", [run_ids]).fetchall()
    out: dict[str, RunQuality] = {}
    for run_id, domain, metric, value, tokens, seconds in rows:
        d = out.setdefault(run_id, {}).setdefault(domain, {})
        d[metric] = value
        d["tokens"] = tokens
        if seconds is not None:
            d["seconds"] = seconds
    return out


def quality_columns(quality: dict[str, RunQuality]) -> list[str]:
    keys = sorted({(dom, m) for q in quality.values() for dom, ms in q.items() for m in ms})
    return [f"quality.{dom}.{m}" for dom, m in keys]


def quality_cells(q: RunQuality | None, columns: list[str]) -> list[Any]:
    out = []
    for c in columns:
        _, dom, metric = c.split(".", 2)
        out.append((q or {}).get(dom, {}).get(metric))
    return out


def _num(v: Any, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def quality_markdown(runs: list[Any], labels: dict[str, str], quality: dict[str, RunQuality]) -> list[str]:
    """The '## Quality' section (empty list when no run has quality)."""
    if not any(r.run_id in quality for r in runs):
        return []
    out = ["## Quality", "",
           "- against each run's base (the same model unpruned at its native top_k) on held-out text per domain",
           "- perplexity is meaningful only for trained weights (synthetic weights: read KL and agreement)", "",
           "| run | domain | KL(base‖variant) | top-1 agreement | perplexity | base perplexity | positions |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        for dom, m in sorted(quality.get(r.run_id, {}).items()):
            out.append(f"| {labels[r.run_id]} | {dom} | {_num(m.get('kl'), 5)} | {_num(m.get('top1_agreement'), 3)} | "
                       f"{_num(m.get('perplexity'), 2)} | {_num(m.get('base_perplexity'), 2)} | "
                       f"{int(m.get('tokens') or 0)} |")
    return [*out, ""]
