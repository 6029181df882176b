"""Small helpers for values read out of pandas frames."""

from __future__ import annotations

from typing import Any

import pandas as pd


def isna(v: Any) -> bool:
    """pd.isna for one value that never raises (lists and other containers are not missing)."""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
