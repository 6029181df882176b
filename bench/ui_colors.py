"""One colour per variant name, the same on every page of the dashboard.

Colours are assigned in the sorted order of all variant names in the database (not the filtered view), so a
filter never recolours a line. Beyond the palette's length, colours repeat.
"""

from __future__ import annotations

from collections.abc import Iterable

PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#3182bd", "#fd8d3c", "#74c476",
    "#ad494a", "#a55194", "#6baed6", "#fdae6b", "#a1d99b", "#ce6dbd",
)


def color_map(names: Iterable[str]) -> dict[str, str]:
    """Variant name -> hex colour, stable for a given set of names."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def color_of(colors: dict[str, str], name: str) -> str:
    return colors.get(name, PALETTE[sum(map(ord, name)) % len(PALETTE)])
