"""The Runs page's logic, outside the page so it is tested on its own: the New-sweep form's translation into a
spec (table rows → variants, the fields → a validated SweepSpec), and the grouping of runs into the sweeps the
page lists (registered sweeps, sweeps known only from imported runs, runs without a sweep).

No Streamlit here: the page lays out what these functions return.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BadInputError
from bench.spec import SweepSpec, validate_for_launch

VARIANT_COLUMNS = ["name", "model", "top_k", "weights", "prune_experts", "prune_method", "prune_keep", "prune_domains"]
FALLBACK_SPEC: dict[str, Any] = {
    "title": "my sweep",
    "sweep": {"prompt_len": 16, "new_tokens": 12, "batch_sizes": [1, 2, 4], "repeats": 2, "engine": "hf",
              "dtype": "float32", "device": "cpu"},
    "variants": [{"name": "base_topk2", "model": "synthetic:tiny-moe", "top_k": 2}],
}


def clean(v: object) -> object:
    """None for the empty values a DataFrame or an editor hands back (None, NaN, NA, ''), else the value."""
    if v is None or v is pd.NA or v == "":
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def clean_record(row: dict[str, Any]) -> dict[str, Any]:
    """A DataFrame record with NaN/NA as None (so a page never prints `nan`)."""
    return {k: clean(v) if not isinstance(v, (list, dict)) else v for k, v in row.items()}


def defaults(path: Path | None) -> dict[str, Any]:
    """The form's starting values: the spec file at `path` as a plain dict, else a tiny CPU sweep."""
    if path is None:
        return FALLBACK_SPEC
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return FALLBACK_SPEC


def variant_rows(variants: list[dict[str, Any]]) -> pd.DataFrame:
    """Spec variants as the editor's rows (a union prune's keep files joined with `;`)."""
    rows = []
    for v in variants:
        p = v.get("prune") or {}
        keep = p.get("keep") or ";".join(p.get("union") or [])
        rows.append({"name": v.get("name"), "model": v.get("model"), "top_k": v.get("top_k"),
                     "weights": v.get("weights") or "bf16", "prune_experts": p.get("experts"),
                     "prune_method": p.get("method"), "prune_keep": keep or None,
                     "prune_domains": ";".join(p.get("domains") or []) or None})
    return pd.DataFrame(rows, columns=VARIANT_COLUMNS)


def _int_or_same(v: object) -> object:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def variants_from_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The editor's rows as spec variant tables; blank rows are dropped, blank cells left out (the spec then
    names what is missing)."""
    out = []
    for r in df.to_dict("records"):
        if all(clean(v) is None for v in r.values()):
            continue
        v: dict[str, Any] = {"name": clean(r.get("name")), "model": clean(r.get("model")),
                             "top_k": _int_or_same(clean(r.get("top_k")))}
        if clean(r.get("weights")) not in (None, "bf16"):
            v["weights"] = r["weights"]
        experts = _int_or_same(clean(r.get("prune_experts")))
        method, keep = clean(r.get("prune_method")), clean(r.get("prune_keep"))
        if keep and ";" in str(keep):
            v["prune"] = {"union": [s.strip() for s in str(keep).split(";") if s.strip()], "experts": experts}
        elif keep:
            v["prune"] = {"keep": str(keep)}
        elif experts is not None or method is not None:
            v["prune"] = {"experts": experts, "method": method or "first"}
            domains = clean(r.get("prune_domains"))  # calibrated methods: calibration domains (or random-tokens)
            if domains:
                v["prune"]["domains"] = [s.strip() for s in str(domains).split(";") if s.strip()]
        out.append({k: x for k, x in v.items() if x is not None})
    return out


def parse_batches(text: str) -> list[int]:
    """`1, 2, 4` (commas or semicolons) → [1, 2, 4]; BadInputError naming the field otherwise."""
    try:
        return [int(b) for b in str(text).replace(";", ",").split(",") if b.strip()]
    except ValueError:
        raise BadInputError(f"Batch sizes: {text!r} is not a comma-separated list of integers such as 1, 2, 4") \
            from None


@dataclass
class FormValues:
    """What the New-sweep form's fields hold."""

    title: str
    variants: pd.DataFrame
    batches: str
    prompt_len: int
    new_tokens: int
    repeats: int
    engine: str
    device: str
    dtype: str
    cluster: str | None = None  # `--cluster` value of the "Run on" choice (bench.ui.cluster), None: this machine


def form_to_raw(f: FormValues) -> dict[str, Any]:
    """The form as a spec dict (the shape of a spec TOML file)."""
    sweep: dict[str, Any] = {"prompt_len": int(f.prompt_len), "new_tokens": int(f.new_tokens),
                             "batch_sizes": parse_batches(f.batches), "repeats": int(f.repeats), "engine": f.engine,
                             "device": f.device, "dtype": f.dtype}
    if f.cluster:
        sweep["cluster"] = f.cluster
    return {"title": f.title, "sweep": sweep, "variants": variants_from_rows(f.variants)}


def validate(raw: dict[str, Any]) -> SweepSpec:
    """The whole spec checked before the page says "Launched": `bench.spec.validate_for_launch` (spec rules, the
    TOML round trip the launch goes through, model configs)."""
    return validate_for_launch(raw)


def form_to_spec(f: FormValues) -> SweepSpec:
    """The form → a validated spec; BadInputError naming the field and the fix otherwise."""
    return validate(form_to_raw(f))


# ---------------------------------------------------------------------------------------------- run groups


def run_groups(runs: pd.DataFrame, sweeps: pd.DataFrame) -> dict[str, str]:
    """The sweeps the Runs page offers, key → label, newest first: registered sweeps with runs passing the
    filters, then sweeps known only from imported runs (JSONL results name their sweep; the sweeps table has no
    row), then `source:<source>` for runs without a sweep."""
    groups: dict[str, str] = {}
    present = set(runs["sweep_id"].dropna())
    if not sweeps.empty:
        titles = sweeps.set_index("sweep_id")["title"]
        for sid in sweeps["sweep_id"]:
            if sid in present:
                groups[sid] = f"{clean(titles.get(sid)) or sid} · {sid}"
    by_date = runs[runs["sweep_id"].notna()].sort_values("run_date", ascending=False, na_position="last")
    for sid, g in by_date.groupby("sweep_id", sort=False):
        if sid not in groups:
            engines = ", ".join(sorted(g["engine"].dropna().unique()))
            day = pd.to_datetime(g["run_date"], utc=True).min()
            when = f" · {day:%Y-%m-%d %H:%M}" if pd.notna(day) else ""
            groups[sid] = f"imported sweep · {len(g)} runs · {engines}{when} · {sid}"
    for src in sorted(runs.loc[runs["sweep_id"].isna(), "source"].dropna().unique()):
        groups[f"source:{src}"] = f"no sweep · {src}"
    return groups


def runs_in_group(runs: pd.DataFrame, group: str) -> pd.DataFrame:
    """The runs of one group key from `run_groups`, oldest first (the order they ran in)."""
    if group.startswith("source:"):
        sel = runs[runs["sweep_id"].isna() & (runs["source"] == group.removeprefix("source:"))]
    else:
        sel = runs[runs["sweep_id"] == group]
    return sel.sort_values("started_at", na_position="last")
