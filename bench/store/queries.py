"""Read-only SQL for the dashboard: every query the pages need, returned as DataFrames or dataclasses.

Every function opens the database read-only (with the store's lock retry), runs one query, closes the
connection and returns a pandas DataFrame or a dataclass. Nothing here writes and nothing here imports
streamlit or torch; `bench.ui.data` caches the results per database file version.

Aggregation of repeats (median and min/max spread per run and batch size) happens in SQL so that pages
stay fast on databases of 100,000 points.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench import locks, store
from bench.analysis.frames import isna as _isna
from bench.analysis.labels import run_labels
from bench.errors import StoreError

# Memory columns shown on the Memory page, in the order the legend lists them.
MEMORY_METRICS: dict[str, str] = {
    "mem_peak_alloc_gib": "peak allocated",
    "mem_peak_reserved_gib": "peak reserved",
    "mem_nvml_peak_gib": "NVML per-process peak",
    "mem_weights_gib": "weights",
    "mem_used_gib": "peak used (report column)",
}


@dataclass
class DbInfo:
    """What the sidebar and the empty states need to know about the database file."""

    path: str
    exists: bool
    schema_version: int | None = None
    n_sweeps: int = 0
    n_runs: int = 0
    n_points: int = 0
    error: str | None = None

    @property
    def empty(self) -> bool:
        return self.error is None and self.n_runs == 0 and self.n_sweeps == 0


def _open(db: Path | str):
    return store.connect(db, read_only=True, timeout_s=10.0)


def _df(db: Path | str, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    con = _open(db)
    try:
        version = store.schema_version_of(con)
        store.check_version(Path(db), version)
        if version is None:
            return pd.DataFrame()
        return con.execute(sql, params or []).df()
    except StoreError:
        raise
    except Exception as exc:  # duckdb errors on a damaged file or a foreign schema
        raise StoreError(f"database {db} cannot be read ({exc}); move it aside and rebuild it with `make run`") from exc
    finally:
        con.close()


def db_info(db: Path | str) -> DbInfo:
    """Existence, schema version and row counts; errors are returned in `error`, never raised."""
    path = Path(db)
    info = DbInfo(path=str(path), exists=path.exists())
    if not info.exists:
        return info
    try:
        con = _open(path)
    except StoreError as exc:
        info.error = str(exc)
        return info
    try:
        info.schema_version = store.schema_version_of(con)
        store.check_version(path, info.schema_version)
        if info.schema_version is None:
            return info
        row = con.execute(
            "SELECT (SELECT count(*) FROM sweeps), (SELECT count(*) FROM runs), (SELECT count(*) FROM points)"
        ).fetchone()
        info.n_sweeps, info.n_runs, info.n_points = (int(x) for x in row)  # type: ignore[union-attr]
    except StoreError as exc:
        info.error = str(exc)
    except Exception as exc:
        info.error = f"database {path} cannot be read ({exc}); move it aside and rebuild it with `make run`"
    finally:
        con.close()
    return info


def file_version(db: Path | str) -> tuple[str, int, int]:
    """A cache key that changes whenever the database (or its WAL) is written."""
    path = Path(db)
    stamps = []
    for p in (path, Path(str(path) + ".wal")):
        try:
            st = p.stat()
            stamps.append(st.st_mtime_ns ^ st.st_size)
        except OSError:
            stamps.append(0)
    return str(path), stamps[0], stamps[1]


# ---------------------------------------------------------------------------------------------- runs


_RUNS_SQL = """
WITH pc AS (
    SELECT run_id, count(*) AS n_points, count(*) FILTER (WHERE status = 'ok') AS n_ok,
           count(DISTINCT batch) AS n_batches, max(batch) AS max_batch,
           max(batch) FILTER (WHERE status = 'ok') AS max_ok_batch
    FROM points GROUP BY run_id
)
SELECT r.run_id, r.sweep_id, r.name, r.model, r.top_k, r.engine, r.dtype, r.device, r.prompt_len,
       r.new_tokens, r.repeats, r.seed, r.experts, r.base_experts, r.prune_json, r.model_fingerprint,
       r.device_name, r.device_kind, r.driver, r.cuda, r.torch_version, r.transformers_version,
       r.bench_version, r.git_commit, r.host, r.python_version, r.bandwidth_gbs,
       r.gpu_index, r.gpu_uuid, r.worker_address,
       r.config_json IS NOT NULL AS rerunnable, r.rerun_of, r.source, r.state, r.notes,
       r.timing_convention, r.started_at, r.finished_at, r.weights, r.weights_impl,
       epoch(r.finished_at) - epoch(r.started_at) AS duration_s,
       coalesce(r.started_at, s.created_at) AS run_date,
       s.title AS sweep_title, s.state AS sweep_state,
       coalesce(pc.n_points, 0) AS n_points, coalesce(pc.n_ok, 0) AS n_ok,
       coalesce(pc.n_batches, 0) AS n_batches, pc.max_batch, pc.max_ok_batch
FROM runs r
LEFT JOIN sweeps s USING (sweep_id)
LEFT JOIN pc USING (run_id)
ORDER BY run_date DESC NULLS LAST, r.name
"""


def runs(db: Path | str) -> pd.DataFrame:
    """One row per run with its environment, duration, point counts and a stable display `label`."""
    cols = _df(db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'")
    sql = _RUNS_SQL
    if not cols.empty:  # a v1/v2 file: readers do not migrate, so newer columns read as their defaults
        have = set(cols["column_name"])
        for col in sorted(set(re.findall(r"\br\.(\w+)", sql)) - have):
            sql = re.sub(rf"\br\.{col}\b", "'bf16' AS weights" if col == "weights" else f"NULL AS {col}", sql)
    df = _df(db, sql)
    if df.empty:
        return df
    df["imported"] = df["source"].astype(str).str.startswith("imported")
    df["pruned"] = df["prune_json"].notna() | (
        df["experts"].notna() & df["base_experts"].notna() & (df["experts"] < df["base_experts"])
    )
    df["label"] = run_labels(df)
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- points


def _agg(col: str) -> str:
    ok = "FILTER (WHERE status = 'ok')"
    return (f"median({col}) {ok} AS {col}, min({col}) {ok} AS {col}_min, max({col}) {ok} AS {col}_max")


_SUMMARY_SQL = f"""
SELECT run_id, batch,
       count(*) AS n_repeats, count(*) FILTER (WHERE status = 'ok') AS n_ok,
       string_agg(DISTINCT status, ',' ORDER BY status) AS statuses,
       any_value(error) FILTER (WHERE error IS NOT NULL) AS error,
       {_agg("total_tps")}, {_agg("per_stream_tps")}, {_agg("mem_used_gib")},
       median(decode_s) FILTER (WHERE status = 'ok') AS decode_s,
       median(prefill_s) FILTER (WHERE status = 'ok') AS prefill_s,
       median(tpot_p50_ms) FILTER (WHERE status = 'ok') AS tpot_p50_ms,
       median(tpot_p90_ms) FILTER (WHERE status = 'ok') AS tpot_p90_ms,
       median(mem_weights_gib) AS mem_weights_gib,
       median(mem_peak_alloc_gib) AS mem_peak_alloc_gib,
       median(mem_peak_reserved_gib) AS mem_peak_reserved_gib,
       median(mem_nvml_peak_gib) AS mem_nvml_peak_gib,
       median(energy_j_per_token) FILTER (WHERE status = 'ok') AS energy_j_per_token,
       median(sm_clock_mhz) AS sm_clock_mhz,
       bit_or(throttle_reasons) AS throttle_reasons,
       median(distinct_experts) AS distinct_experts,
       median(ceiling_tps) AS ceiling_tps,
       median(mbu) FILTER (WHERE status = 'ok') AS mbu
FROM points
GROUP BY run_id, batch
ORDER BY run_id, batch
"""


def point_summary(db: Path | str) -> pd.DataFrame:
    """One row per (run, batch): median and min/max over the ok repeats, plus memory, roofline and MBU."""
    df = _df(db, _SUMMARY_SQL)
    if df.empty:
        return df
    df["batch"] = df["batch"].astype(int)
    missing = df["mbu"].isna() & df["ceiling_tps"].notna() & df["total_tps"].notna()
    df.loc[missing, "mbu"] = df.loc[missing, "total_tps"] / df.loc[missing, "ceiling_tps"]
    df["ceiling_per_stream_tps"] = df["ceiling_tps"] / df["batch"]
    df["weights_share"] = df["mem_weights_gib"] / df["mem_peak_alloc_gib"]
    return df


def points(db: Path | str, run_ids: list[str]) -> pd.DataFrame:
    """Every repeat of the given runs (for the detail table on the Runs page)."""
    if not run_ids:
        return pd.DataFrame()
    marks = ", ".join("?" for _ in run_ids)
    return _df(db, f'SELECT * FROM points WHERE run_id IN ({marks}) ORDER BY run_id, batch, "repeat"', run_ids)


def repeats(db: Path | str, run_ids: list[str]) -> pd.DataFrame:
    """One row per repeat of the given runs: run_id, batch, repeat, status and the throughputs (the regression
    test's input; `bench compare` and the History page)."""
    cols = ["run_id", "batch", "repeat", "status", "total_tps", "per_stream_tps", "energy_j_per_token"]
    if not run_ids:
        return pd.DataFrame(columns=cols)
    df = _df(db, 'SELECT run_id, batch, "repeat", status, total_tps, per_stream_tps, energy_j_per_token FROM points '
                 'WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, batch, "repeat"', [list(run_ids)])
    return df if not df.empty else pd.DataFrame(columns=cols)


# ---------------------------------------------------------------------------------------------- sweeps


def sweeps(db: Path | str) -> pd.DataFrame:
    """One row per sweep, newest first, with `shown_state` (a running sweep whose process is gone is crashed) and
    `origin` ('measured here' or 'imported from <file>')."""
    return with_shown_state(sweep_table(db))


def sweep_table(db: Path | str) -> pd.DataFrame:
    """The sweeps table as stored, newest first: what a file version determines (the dashboard caches it per version;
    `with_shown_state` adds what also depends on the clock and on locks)."""
    return _df(db, "SELECT * FROM sweeps ORDER BY created_at DESC")


def with_shown_state(table: pd.DataFrame) -> pd.DataFrame:
    """`sweep_table` plus `shown_state`, `origin` and `duration_s`, derived now (a crash frees a lock and changes no
    file; a running sweep's duration grows with the clock)."""
    if table.empty:
        return table
    df = table.copy()
    df["shown_state"] = [locks.shown_state(r) for r in df.to_dict("records")]
    df["origin"] = [origin(r.get("source")) for r in df.to_dict("records")]
    df["duration_s"] = [
        (_ts(r["finished_at"]) or locks.now_ts()) - _ts(r["started_at"]) if _ts(r["started_at"]) else None
        for r in df.to_dict("records")
    ]
    return df


def origin(source: Any) -> str:
    """How a sweep row came to be: 'measured here' or 'imported from <file>' (sweeps.source)."""
    text = "" if source is None or _isna(source) else str(source)
    return f"imported from {text.split(':', 1)[1]}" if text.startswith("imported:") else "measured here"


def sweep(db: Path | str, sweep_id: str) -> dict[str, Any] | None:
    """One sweep row (as a dict with `shown_state`), or None when no such sweep is registered yet."""
    df = _df(db, "SELECT * FROM sweeps WHERE sweep_id = ?", [sweep_id])
    if df.empty:
        return None
    row = {k: (None if _isna(v) else v) for k, v in df.iloc[0].to_dict().items()}
    row["shown_state"] = locks.shown_state(row)
    return row


def _ts(v: Any) -> float | None:
    if v is None or _isna(v):
        return None
    return pd.Timestamp(v).timestamp()


def overview(db: Path | str) -> dict[str, Any]:
    """Counts for the landing page: sweeps, runs, points, cards and the date range."""
    df = _df(db, """
        SELECT (SELECT count(*) FROM sweeps) AS sweeps, (SELECT count(*) FROM runs) AS runs,
               (SELECT count(*) FROM points) AS points,
               (SELECT count(DISTINCT device_name) FROM runs
                WHERE device_name IS NOT NULL AND device_name <> 'unknown') AS cards,
               (SELECT min(coalesce(r.started_at, s.created_at)) FROM runs r LEFT JOIN sweeps s USING (sweep_id))
                   AS first_date,
               (SELECT max(coalesce(r.started_at, s.created_at)) FROM runs r LEFT JOIN sweeps s USING (sweep_id))
                   AS last_date
    """)
    if df.empty:
        return {"sweeps": 0, "runs": 0, "points": 0, "cards": 0, "first_date": None, "last_date": None}
    return {k: (None if _isna(v) else v) for k, v in df.iloc[0].to_dict().items()}


# ---------------------------------------------------------------------------------------------- cluster lanes

_LANES_SQL = """
WITH last AS (
    SELECT run_id, count(*) AS n_points, count(*) FILTER (WHERE status = 'ok') AS n_ok,
           arg_max(total_tps, finished_at) AS last_tps, arg_max(batch, finished_at) AS last_batch,
           max(finished_at) AS last_at
    FROM points GROUP BY run_id
)
SELECT r.run_id, r.name, r.state, r.host, r.gpu_index, r.gpu_uuid, r.worker_address, r.device_name, r.repeats,
       r.started_at, r.finished_at, coalesce(l.n_points, 0) AS n_points, coalesce(l.n_ok, 0) AS n_ok,
       l.last_tps, l.last_batch, l.last_at
FROM runs r LEFT JOIN last l USING (run_id)
WHERE r.sweep_id = ?
ORDER BY r.started_at NULLS LAST, r.name
"""


def sweep_run_progress(db: Path | str, sweep_id: str) -> pd.DataFrame:
    """A sweep's runs with where they run (host, GPU, Dask worker), points stored and the last point's tok/s."""
    return _df(db, _LANES_SQL, [sweep_id])
