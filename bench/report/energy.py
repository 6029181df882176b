"""The exports' energy and cost: J per generated token (NVML, measured) and $ per million tokens (from a $/GPU-hour
per card family: the defaults of `bench.analysis.cost`, overridden by `--usd-per-gpu-hour FAMILY=USD` or the
dashboard's sidebar).

- Markdown: a `## Energy and cost` section between the per-batch details and `## Reproduce`, written only when a
  selected point has an energy reading or prices were given, so the reference report's format is unchanged
  otherwise (the importer stops reading run sections at the next `## ` heading).
- CSV: `usd_per_gpu_hour` and `usd_per_mtok` columns after the point columns (energy is already
  `energy_j_per_token`).
- JSONL is the lossless measurement record: it carries `energy_j_per_token` per point and no price (a price is a
  setting, not a measurement).
"""

from __future__ import annotations

import statistics

from bench.errors import BadInputError
from bench.records import PointRecord, RunRecord

HEADING = "## Energy and cost"
HEADER = ["run", "batch", "J/token", "card", "$/GPU-hour", "$/M tokens"]
ALIGN = "|---|---:|---:|---|---:|---:|"


def parse_prices(items: list[str] | None) -> dict[str, float]:
    """`["H100=2.5", "cpu=0.1"]` -> {"H100": 2.5, "cpu": 0.1}; bad items: BadInputError naming the flag."""
    out: dict[str, float] = {}
    for item in items or []:
        fam, sep, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not fam.strip() or price < 0:
            raise BadInputError(f"--usd-per-gpu-hour {item}: expected FAMILY=USD with USD >= 0, e.g. H100=2.50 "
                                "(families: the card's short name such as H100, A100, cpu)")
        out[fam.strip()] = price
    return out


def price_of(run: RunRecord, prices: dict[str, float] | None) -> tuple[str, float]:
    from bench.analysis.cost import card_family, default_price

    fam = card_family(run.env.device_name)
    return fam, (prices or {}).get(fam, default_price(fam))


def usd_per_mtok(total_tps: float | None, usd_per_hour: float) -> float | None:
    if total_tps is None or total_tps <= 0:
        return None
    return usd_per_hour / (total_tps * 3600.0) * 1e6


def section(runs: list[RunRecord], by_run: dict[str, list[PointRecord]], labels: dict[str, str],
            prices: dict[str, float] | None) -> list[str]:
    """The markdown lines of the energy/cost section ([] when no point has energy and no prices were given)."""
    has_energy = any(p.energy_j_per_token is not None for pts in by_run.values() for p in pts)
    if not has_energy and not prices:
        return []
    from bench.report.markdown import escape_cell

    out = [HEADING, "", "- J/token: median NVML energy per generated token over the ok repeats ('-': no counter, "
           "e.g. CPU runs and imported reports); $/M tokens = $/GPU-hour / (total tok/s x 3600) x 10^6, one GPU",
           "", "| " + " | ".join(HEADER) + " |", ALIGN]
    for run in runs:
        fam, usd = price_of(run, prices)
        batches: dict[int, list[PointRecord]] = {}
        for p in by_run.get(run.run_id, []):
            if p.status == "ok":
                batches.setdefault(p.batch, []).append(p)
        for batch in sorted(batches):
            pts = batches[batch]
            energy = [p.energy_j_per_token for p in pts if p.energy_j_per_token is not None]
            tps = [p.total_tps for p in pts if p.total_tps is not None]
            j = statistics.median(energy) if energy else None
            cost = usd_per_mtok(statistics.median(tps), usd) if tps else None
            out.append("| " + " | ".join([
                escape_cell(labels[run.run_id]), str(batch), "-" if j is None else f"{j:.4f}", escape_cell(fam),
                f"{usd:.2f}", "-" if cost is None else f"{cost:.4f}"]) + " |")
    out.append("")
    return out
