"""One colour and line style per run label, the same on every page of the dashboard.

The hue comes from the variant name: names are given palette colours in sorted order over the whole database
(not the filtered view), so a filter never recolours a line; past the palette's length a colour is reused only by
names that never share a sweep. Runs that share a name (the same variant measured with another engine, on another
card, or again) get shades of that hue and their own line dash, in a fixed order: by engine, card, date (50 styles
a name).
"""

from __future__ import annotations

import pandas as pd

# tab10, then 12 hues that stay distinct from it (names far apart in sorted order must not look alike).
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#00a08b", "#b68100", "#511cfb", "#fb00d1", "#6c7c32", "#862a16", "#2e91e5", "#750d86",
    "#fc0080", "#0d2a63", "#a777f1", "#1ca71c",
)
# The k-th run of a name: (mix toward black (<0) or white (>0), line dash). "dash" is kept for roofline ceilings.
# The first ten pairs come first; runs 11-50 take the shades between them (a 0.03 grid from -0.72 toward white, every
# seventh in turn so that neighbours stay apart) with the five dashes in turn, so 50 runs of one name (a variant
# measured with two engines on several cards, in two formats, and again after each engine change) each keep a
# colour and a style of their own; past 50 the styles repeat.
_FIRST_TEN: tuple[tuple[float, str], ...] = ((0.0, "solid"), (-0.38, "dot"), (0.45, "dashdot"), (-0.6, "longdashdot"),
                                             (0.65, "dot"), (0.25, "longdash"), (-0.2, "dashdot"), (0.55, "solid"),
                                             (-0.5, "longdash"), (0.35, "longdashdot"))
_DASHES: tuple[str, ...] = ("solid", "dot", "dashdot", "longdashdot", "longdash")
_BETWEEN: tuple[float, ...] = tuple(a for a in (round(-0.72 + 0.03 * i, 2) for i in range(50))
                                    if min(abs(a - b) for b, _ in _FIRST_TEN) > 0.011)[:40]
SHADES: tuple[tuple[float, str], ...] = _FIRST_TEN + tuple(
    (_BETWEEN[(7 * i) % len(_BETWEEN)], _DASHES[(i + 1) % len(_DASHES)]) for i in range(len(_BETWEEN)))


def shade(hex_color: str, amount: float) -> str:
    """Mix `hex_color` toward white (amount > 0) or black (amount < 0)."""
    rgb = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    mixed = [round(c + (target - c) * abs(amount)) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def run_styles(runs: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """(label -> colour, label -> line dash) for every run of the database (`bench.store.queries.runs`)."""
    if runs.empty:
        return {}, {}
    hue = _hues(runs)
    order = runs.assign(_imp=runs["source"].astype(str).str.startswith("imported"),
                        _eng=runs["engine"].fillna("").astype(str), _card=runs["device_name"].fillna("").astype(str),
                        _date=pd.to_datetime(runs["run_date"], utc=True))
    order = order.sort_values(["name", "_imp", "_eng", "_card", "_date", "run_id"], na_position="last")
    colors: dict[str, str] = {}
    dashes: dict[str, str] = {}
    for _, g in order.groupby("name", sort=False):
        for k, label in enumerate(g["label"]):
            amount, dash = SHADES[k % len(SHADES)]
            colors[label] = shade(hue[str(g["name"].iloc[0])], amount)
            dashes[label] = dash
    return colors, dashes


def _hues(runs: pd.DataFrame) -> dict[str, str]:
    """name -> palette colour, in sorted name order. Up to the palette's length each name takes the next colour. Past
    it, a name takes the least-used colour that no name it shares a sweep with has (names of one sweep are drawn
    together), the lowest such index on a tie; so a colour repeats only across names that never met in a sweep."""
    names = sorted(set(runs["name"].astype(str)))
    met: dict[str, set[str]] = {n: set() for n in names}
    if "sweep_id" in runs.columns:
        for _, g in runs.groupby(runs["sweep_id"].astype(str)):
            together = set(g["name"].astype(str))
            for n in together:
                met[n] |= together - {n}
    used = [0] * len(PALETTE)
    hue: dict[str, int] = {}
    for n in names:
        taken = {hue[m] for m in met[n] if m in hue}
        free = [i for i in range(len(PALETTE)) if i not in taken] or list(range(len(PALETTE)))
        hue[n] = min(free, key=lambda i: (used[i], i))
        used[hue[n]] += 1
    return {n: PALETTE[i] for n, i in hue.items()}


def color_of(colors: dict[str, str], label: str) -> str:
    return colors.get(label, PALETTE[sum(map(ord, label)) % len(PALETTE)])


def dash_of(dashes: dict[str, str], label: str) -> str:
    return dashes.get(label, "solid")
