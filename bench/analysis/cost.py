"""Energy and cost per token.

- Joules per generated token come from the NVML energy counter the worker samples (`points.energy_j_per_token`,
  median over the ok repeats). Where none was recorded, `energy_note` says why (a CPU has no NVML counter, an
  imported report carries none, or the card/driver exposed no counter) instead of showing 0.
- Dollars per million generated tokens come from a $/GPU-hour the user sets (a default per card family):
  `usd_per_mtok = usd_per_hour / (total_tps × 3600) × 1e6`, with total_tps the median decode throughput of one GPU.

Pure pandas; no streamlit. The defaults are on-demand cloud list prices (rounded, late 2026) and only a starting
point: the sidebar lets the user set their own.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis.frames import isna as _isna
from bench.analysis.labels import short_card

# $/GPU-hour defaults per card family (short_card names); "other" for anything not listed.
DEFAULT_USD_PER_HOUR: dict[str, float] = {
    "B200": 6.00, "H200": 3.80, "H100": 2.90, "A100": 1.80, "L40S": 1.20, "L4": 0.70, "A10G": 1.00,
    "RTX 4090": 0.70, "cpu": 0.20, "other": 2.00,
}
NO_COUNTER_CPU = "no energy counter (CPU run)"
NO_COUNTER_IMPORTED = "not recorded (imported report)"
NO_COUNTER_CARD = "no NVML energy counter on this card"


def card_family(device_name: Any) -> str:
    """The price key of a card: `NVIDIA H100 80GB HBM3` -> `H100`; unknown cards -> `other`."""
    fam = short_card(device_name)
    return fam if fam else "other"


def default_price(family: str) -> float:
    return DEFAULT_USD_PER_HOUR.get(family, DEFAULT_USD_PER_HOUR["other"])


def usd_per_mtok(total_tps: Any, usd_per_hour: Any) -> float | None:
    """$ per million generated tokens at `total_tps` on a GPU rented at `usd_per_hour` (None without a rate)."""
    if _isna(total_tps) or _isna(usd_per_hour) or not total_tps or float(total_tps) <= 0:
        return None
    return float(usd_per_hour) / (float(total_tps) * 3600.0) * 1e6


def energy_note(run: Any) -> str:
    """Why a run has no J/token (empty when it has one is decided by the caller)."""
    card = short_card(run.get("device_name"))
    if card is None:
        return NO_COUNTER_IMPORTED
    if card == "cpu" or str(run.get("device") or "").startswith("cpu"):
        return NO_COUNTER_CPU
    return NO_COUNTER_CARD


def add_energy_cost(summary: pd.DataFrame, runs_df: pd.DataFrame, prices: dict[str, float]) -> pd.DataFrame:
    """`summary` rows with `card_family`, `usd_per_hour`, `usd_per_mtok`, `j_per_token` and `energy_note`."""
    out = summary.copy()
    if out.empty:
        for c in ("card_family", "usd_per_hour", "usd_per_mtok", "j_per_token", "energy_note"):
            out[c] = pd.Series(dtype=object)
        return out
    rids = out["run_id"].unique().tolist()
    meta = {r["run_id"]: r for r in runs_df.loc[runs_df["run_id"].isin(rids), ["run_id", "device_name", "device",
                                                                                "source"]].to_dict("records")}
    fam_of = {r: card_family(meta[r]["device_name"]) if r in meta else "other" for r in rids}
    note_of = {r: energy_note(meta[r]) if r in meta else NO_COUNTER_CARD for r in rids}
    fam = out["run_id"].map(fam_of)
    out["card_family"] = fam
    out["usd_per_hour"] = fam.map(lambda f: prices.get(f, default_price(f))).astype(float)
    tps = out["total_tps"].astype(float)
    out["usd_per_mtok"] = (out["usd_per_hour"] / (tps.where(tps > 0) * 3600.0) * 1e6).astype(float)
    out["j_per_token"] = out["energy_j_per_token"]
    out["energy_note"] = out["run_id"].map(note_of).where(out["j_per_token"].isna(), "")
    return out


def add_cost_deltas(deltas_df: pd.DataFrame, summary: pd.DataFrame, runs_df: pd.DataFrame, base_id: str,
                    prices: dict[str, float]) -> pd.DataFrame:
    """Compare's delta rows with J/token and $/Mtok of the base and the candidate and their % change
    (`base_j_per_token`, `j_per_token`, `j_pct`, `base_usd_per_mtok`, `usd_per_mtok`, `usd_pct`)."""
    out = deltas_df.copy()
    new = ["base_j_per_token", "j_per_token", "j_pct", "base_usd_per_mtok", "usd_per_mtok", "usd_pct"]
    if out.empty:
        for c in new:
            out[c] = pd.Series(dtype=float)
        return out
    ec = add_energy_cost(summary[summary["run_id"].isin([base_id, *out["candidate_id"]])], runs_df, prices)
    ec = ec.set_index(["run_id", "batch"])

    def get(rid: str, batch: int, col: str) -> Any:
        return ec.at[(rid, batch), col] if (rid, batch) in ec.index else None

    out["base_j_per_token"] = [get(base_id, b, "j_per_token") for b in out["batch"]]
    out["j_per_token"] = [get(c, b, "j_per_token") for c, b in zip(out["candidate_id"], out["batch"], strict=True)]
    out["base_usd_per_mtok"] = [get(base_id, b, "usd_per_mtok") for b in out["batch"]]
    out["usd_per_mtok"] = [get(c, b, "usd_per_mtok") for c, b in zip(out["candidate_id"], out["batch"], strict=True)]
    out["j_pct"] = [_pct(n, o) for n, o in zip(out["j_per_token"], out["base_j_per_token"], strict=True)]
    out["usd_pct"] = [_pct(n, o) for n, o in zip(out["usd_per_mtok"], out["base_usd_per_mtok"], strict=True)]
    return out


def _pct(new: Any, old: Any) -> float | None:
    if _isna(new) or _isna(old) or not old:
        return None
    return 100.0 * (float(new) - float(old)) / float(old)
