"""Cached loading of the research tables (calibrations, their experts, quality, kept experts) for the Routing page
and Compare's quality views; cached per database file version like bench.ui.data."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bench.store import queries, research_queries
from bench.ui.data import db_path


@st.cache_data(max_entries=8, show_spinner=False)
def _calibrations(path: str, version: tuple) -> pd.DataFrame:
    return research_queries.calibrations(path)


@st.cache_data(max_entries=16, show_spinner=False)
def _experts(path: str, version: tuple, ids: tuple[str, ...]) -> pd.DataFrame:
    return research_queries.calibration_experts(path, list(ids))


@st.cache_data(max_entries=8, show_spinner=False)
def _quality(path: str, version: tuple) -> pd.DataFrame:
    return research_queries.quality(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _kept(path: str, version: tuple) -> pd.DataFrame:
    return research_queries.kept_experts(path)


def _key() -> tuple[str, tuple]:
    path = db_path()
    return str(path), queries.file_version(path)


def calibrations() -> pd.DataFrame:
    return _calibrations(*_key())


def calibration_experts(ids: list[str]) -> pd.DataFrame:
    return _experts(*_key(), tuple(ids))


def quality() -> pd.DataFrame:
    return _quality(*_key())


def kept_experts() -> pd.DataFrame:
    return _kept(*_key())
