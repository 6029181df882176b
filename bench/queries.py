"""Read-only DataFrame queries for the dashboard.

Every function opens the database read-only (with the store's lock retry), runs one query, closes the
connection and returns a pandas DataFrame or a dataclass. Nothing here writes and nothing here imports
streamlit or torch; `bench.ui_data` caches the results per database file version.

Aggregation of repeats (median and min/max spread per run and batch size) happens in SQL so that pages
stay fast on databases of 100,000 points.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bench import locks, store
from bench.errors import StoreError

ACTIVE_STATES: tuple[str, ...] = ("queued", "running")
STALE_HEARTBEAT_S = 180.0

# Memory columns shown on the Memory page, in the order the legend lists them.
MEMORY_METRICS: dict[str, str] = {
    "mem_peak_alloc_gib": "peak allocated",
    "mem_peak_reserved_gib": "peak reserved",
    "mem_nvml_peak_gib": "NVML per-process peak",
    "mem_weights_gib": "weights",
    "mem_used_gib": "peak used (report column)",
}

# Columns that must agree before two runs can be compared fairly.
ENV_COLUMNS: tuple[str, ...] = ("device_name", "engine", "dtype", "torch_version", "transformers_version",
                                "cuda", "driver", "bench_version", "timing_convention")


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


@dataclass
class Filters:
    """The sidebar filters. Empty lists mean "all"; dates are inclusive and apply to dated runs only."""

    variants: list[str] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)
    source: str = "all"  # all | measured | imported
    date_from: Any = None  # datetime.date | None
    date_to: Any = None

    def is_default(self) -> bool:
        return not (self.variants or self.engines or self.cards or self.source != "all"
                    or self.date_from or self.date_to)


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
       r.config_json IS NOT NULL AS rerunnable, r.rerun_of, r.source, r.state, r.notes,
       r.timing_convention, r.started_at, r.finished_at,
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
    df = _df(db, _RUNS_SQL)
    if df.empty:
        return df
    df["imported"] = df["source"].astype(str).str.startswith("imported")
    df["pruned"] = df["prune_json"].notna() | (
        df["experts"].notna() & df["base_experts"].notna() & (df["experts"] < df["base_experts"])
    )
    df["label"] = run_labels(df)
    return df.reset_index(drop=True)


def short_card(device_name: Any) -> str | None:
    """`NVIDIA H100 80GB HBM3` -> `H100`, `NVIDIA A100-SXM4-80GB` -> `A100`, `cpu: Intel Xeon` -> `cpu`."""
    if device_name is None or _isna(device_name) or str(device_name).strip() in ("", "unknown"):
        return None
    text = str(device_name).strip()
    if ":" in text:
        return text.split(":", 1)[0].strip() or None
    for word in ("NVIDIA ", "GeForce ", "Tesla ", "AMD ", "Radeon "):
        text = text.replace(word, "")
    tokens = text.replace("-", " ").split()
    if not tokens:
        return None
    if tokens[0] in ("RTX", "GTX", "Quadro", "Instinct") and len(tokens) > 1:
        return f"{tokens[0]} {tokens[1]}"
    return tokens[0]


def run_labels(df: pd.DataFrame) -> pd.Series:
    """A display label per run, unique in the database and the same on every page.

    A run whose name is unique keeps its name. Runs sharing a name get `name · engine · card` (imported report
    runs, which know neither: `name · imported`); if that still repeats, the run's start time follows, then the
    last 6 characters of its run_id."""
    if df.empty:
        return pd.Series([], dtype=object, index=df.index)
    name = df["name"].astype(str)
    label = name.copy()
    dup = name.duplicated(keep=False)
    for i in df.index[dup]:
        r = df.loc[i]
        engine = None if _isna(r.get("engine")) or r.get("engine") == "unknown" else str(r["engine"])
        card = short_card(r.get("device_name"))
        parts = [p for p in (engine, card) if p]
        if not parts:
            parts = ["imported" if str(r.get("source") or "").startswith("imported") else "unknown setup"]
        label[i] = " · ".join([name[i], *parts])
    again = label.duplicated(keep=False)
    if again.any():
        when = pd.to_datetime(df["run_date"], utc=True)
        for i in df.index[again]:
            if pd.notna(when[i]):
                label[i] = f"{label[i]} · {when[i]:%m-%d %H:%M}"
    again = label.duplicated(keep=False)
    if again.any():
        label[again] = label[again] + " · " + df.loc[again, "run_id"].astype(str).str.slice(-6)
    return label


def filter_options(runs_df: pd.DataFrame) -> dict[str, list[Any]]:
    """Distinct values for the sidebar filters, computed from the unfiltered runs table."""
    if runs_df.empty:
        return {"variants": [], "engines": [], "cards": [], "dates": []}
    dates = pd.to_datetime(runs_df["run_date"], utc=True).dropna()
    return {
        "variants": sorted(runs_df["name"].dropna().unique().tolist()),
        "engines": sorted(runs_df["engine"].dropna().unique().tolist()),
        "cards": sorted(runs_df["device_name"].fillna("unknown").unique().tolist()),
        "dates": [dates.min().date(), dates.max().date()] if len(dates) else [],
    }


def apply_filters(runs_df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """The runs that pass the sidebar filters (runs without a date pass the date filter)."""
    if runs_df.empty:
        return runs_df
    mask = pd.Series(True, index=runs_df.index)
    if f.variants:
        mask &= runs_df["name"].isin(f.variants)
    if f.engines:
        mask &= runs_df["engine"].isin(f.engines)
    if f.cards:
        mask &= runs_df["device_name"].fillna("unknown").isin(f.cards)
    if f.source == "measured":
        mask &= ~runs_df["imported"]
    elif f.source == "imported":
        mask &= runs_df["imported"]
    if f.date_from or f.date_to:
        day = pd.to_datetime(runs_df["run_date"], utc=True).dt.date
        if f.date_from:
            mask &= day.isna() | (day >= f.date_from)
        if f.date_to:
            mask &= day.isna() | (day <= f.date_to)
    return runs_df[mask]


def default_runs(runs_df: pd.DataFrame, limit: int = 12) -> list[str]:
    """Run ids to plot by default, at most `limit`: the runs of the latest sweep when it holds two or more runs
    with points (what a user just measured), else the latest run of each variant name with points."""
    if runs_df.empty:
        return []
    with_points = runs_df[runs_df["n_ok"] > 0]  # runs() is ordered newest first
    sweep_runs = latest_sweep_runs(with_points)
    if len(sweep_runs) >= 2:
        return sweep_runs["run_id"].head(limit).tolist()
    latest = with_points.drop_duplicates("name", keep="first")
    return latest["run_id"].head(limit).tolist()


def latest_sweep_runs(runs_df: pd.DataFrame) -> pd.DataFrame:
    """The runs of the sweep holding the newest dated run (empty when that run belongs to no sweep).

    Works from the runs table alone, so results imported from JSONL (runs that name a sweep the database has no
    row for) count as a sweep too."""
    if runs_df.empty:
        return runs_df
    dated = runs_df[runs_df["run_date"].notna()]
    if dated.empty:
        return runs_df.iloc[:0]
    newest = dated.loc[pd.to_datetime(dated["run_date"], utc=True).idxmax()]
    if _isna(newest["sweep_id"]):
        return runs_df.iloc[:0]
    return runs_df[runs_df["sweep_id"] == newest["sweep_id"]]


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


def summary_for(summary: pd.DataFrame, runs_df: pd.DataFrame, run_ids: list[str]) -> pd.DataFrame:
    """The summary rows of `run_ids`, joined with each run's name and label, in `run_ids` order."""
    if summary.empty or not run_ids:
        return pd.DataFrame(columns=[*summary.columns, "name", "label"])
    meta = runs_df.set_index("run_id")[["name", "label"]]
    out = summary[summary["run_id"].isin(run_ids)].join(meta, on="run_id")
    order = {rid: i for i, rid in enumerate(run_ids)}
    out = out.assign(_o=out["run_id"].map(order)).sort_values(["_o", "batch"]).drop(columns="_o")
    return out.reset_index(drop=True)


def points(db: Path | str, run_ids: list[str]) -> pd.DataFrame:
    """Every repeat of the given runs (for the detail table on the Runs page)."""
    if not run_ids:
        return pd.DataFrame()
    marks = ", ".join("?" for _ in run_ids)
    return _df(db, f'SELECT * FROM points WHERE run_id IN ({marks}) ORDER BY run_id, batch, "repeat"', run_ids)


# ---------------------------------------------------------------------------------------------- sweeps


def sweeps(db: Path | str) -> pd.DataFrame:
    """One row per sweep, newest first, with `shown_state`: a running sweep whose process is gone is crashed."""
    df = _df(db, "SELECT * FROM sweeps ORDER BY created_at DESC")
    if df.empty:
        return df
    df["shown_state"] = [shown_state(r) for r in df.to_dict("records")]
    df["duration_s"] = [
        (_ts(r["finished_at"]) or _now()) - _ts(r["started_at"]) if _ts(r["started_at"]) else None
        for r in df.to_dict("records")
    ]
    return df


def sweep(db: Path | str, sweep_id: str) -> dict[str, Any] | None:
    """One sweep row (as a dict with `shown_state`), or None when no such sweep is registered yet."""
    df = _df(db, "SELECT * FROM sweeps WHERE sweep_id = ?", [sweep_id])
    if df.empty:
        return None
    row = {k: (None if _isna(v) else v) for k, v in df.iloc[0].to_dict().items()}
    row["shown_state"] = shown_state(row)
    return row


def _isna(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _ts(v: Any) -> float | None:
    if v is None or _isna(v):
        return None
    return pd.Timestamp(v).timestamp()


def pid_alive(pid: int | None) -> bool:
    """True when `pid` runs on this host and is not a zombie (a zombie still answers kill(pid, 0))."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def shown_state(row: dict[str, Any]) -> str:
    """The state to show: a queued/running sweep whose lock is free (or, lacking a lock, whose process died or
    stopped beating) is crashed. Same rule as `python -m bench ls` (bench.locks.effective_state)."""
    state = str(row.get("state") or "")
    if state not in ACTIVE_STATES:
        return state
    lock_path = row.get("lock_path")
    if lock_path:
        return locks.effective_state(state, str(lock_path))
    pid = row.get("pid")
    host = row.get("host")
    if pid and (not host or host == socket.gethostname()):
        return state if pid_alive(pid) else "crashed"
    beat = _ts(row.get("heartbeat_at")) or _ts(row.get("started_at")) or _ts(row.get("created_at"))
    if beat is not None and _now() - beat > STALE_HEARTBEAT_S:
        return "crashed"
    return state


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


# ---------------------------------------------------------------------------------------------- comparisons


def base_for(runs_df: pd.DataFrame, run_id: str) -> str | None:
    """A sensible unpruned base for a pruned run: same top_k and card, preferring the same model source."""
    if runs_df.empty or run_id not in set(runs_df["run_id"]):
        return None
    run = runs_df.set_index("run_id").loc[run_id]
    bases = runs_df[~runs_df["pruned"] & (runs_df["run_id"] != run_id) & (runs_df["n_ok"] > 0)]
    if bases.empty:
        return None
    score = (
        (bases["model"] == run["model"]).astype(int) * 4
        + (bases["top_k"] == run["top_k"]).astype(int) * 8
        + (bases["device_name"].fillna("") == (run["device_name"] or "")).astype(int) * 2
        + (bases["sweep_id"].fillna("") == (run["sweep_id"] or "")).astype(int)
    )
    return str(bases.loc[score.idxmax(), "run_id"])


def env_differences(runs_df: pd.DataFrame, base_id: str, other_id: str) -> list[str]:
    """The environment fields on which two runs differ, as `field: base vs other` lines."""
    r = runs_df.set_index("run_id")
    out = []
    for col in ENV_COLUMNS:
        a, b = r.at[base_id, col], r.at[other_id, col]
        a = None if _isna(a) else a
        b = None if _isna(b) else b
        if a != b:
            out.append(f"{col}: {a} vs {b}")
    return out


def deltas(summary: pd.DataFrame, runs_df: pd.DataFrame, base_id: str, candidate_ids: list[str]) -> pd.DataFrame:
    """Per candidate and batch size: % change in total tok/s, per-stream tok/s and peak memory vs the base.

    A throughput delta is *within noise* when the min..max spreads of the repeats of the two runs overlap.
    """
    cols = ["candidate", "candidate_id", "batch", "base_total_tps", "total_tps", "total_pct", "base_per_stream_tps",
            "per_stream_tps", "per_stream_pct", "base_mem_gib", "mem_gib", "mem_pct", "within_noise", "note"]
    if summary.empty or not candidate_ids:
        return pd.DataFrame(columns=cols)
    labels = runs_df.set_index("run_id")["label"]
    s = summary.set_index(["run_id", "batch"])
    base = summary[summary["run_id"] == base_id].set_index("batch")
    rows = []
    for cid in candidate_ids:
        cand = summary[summary["run_id"] == cid].set_index("batch")
        for batch in sorted(set(base.index) & set(cand.index)):
            b, c = s.loc[(base_id, batch)], s.loc[(cid, batch)]
            overlap = _overlap(b["total_tps_min"], b["total_tps_max"], c["total_tps_min"], c["total_tps_max"])
            single = min(int(b["n_ok"]), int(c["n_ok"])) < 2
            rows.append({
                "candidate": labels.get(cid, cid), "candidate_id": cid, "batch": int(batch),
                "base_total_tps": b["total_tps"], "total_tps": c["total_tps"],
                "total_pct": _pct(c["total_tps"], b["total_tps"]),
                "base_per_stream_tps": b["per_stream_tps"], "per_stream_tps": c["per_stream_tps"],
                "per_stream_pct": _pct(c["per_stream_tps"], b["per_stream_tps"]),
                "base_mem_gib": b["mem_used_gib"], "mem_gib": c["mem_used_gib"],
                "mem_pct": _pct(c["mem_used_gib"], b["mem_used_gib"]),
                "within_noise": bool(overlap),
                "note": "single repeat: no spread" if single else ("within noise" if overlap else ""),
            })
    return pd.DataFrame(rows, columns=cols)


def memory_saved(summary: pd.DataFrame, runs_df: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per (pruned, base) pair and batch size: memory of each and the GiB / % saved (peak allocated, else used)."""
    cols = ["variant", "base", "batch", "metric", "base_gib", "variant_gib", "saved_gib", "saved_pct",
            "weights_saved_gib"]
    if summary.empty or not pairs:
        return pd.DataFrame(columns=cols)
    labels = runs_df.set_index("run_id")["label"]
    s = summary.set_index(["run_id", "batch"])
    rows = []
    for pruned_id, base_id in pairs:
        pb = set(summary.loc[summary["run_id"] == pruned_id, "batch"]) & set(
            summary.loc[summary["run_id"] == base_id, "batch"])
        for batch in sorted(pb):
            p, b = s.loc[(pruned_id, batch)], s.loc[(base_id, batch)]
            metric = "mem_peak_alloc_gib" if not (_isna(p["mem_peak_alloc_gib"]) or _isna(
                b["mem_peak_alloc_gib"])) else "mem_used_gib"
            bv, pv = b[metric], p[metric]
            saved = None if _isna(bv) or _isna(pv) else bv - pv
            wb, wp = b["mem_weights_gib"], p["mem_weights_gib"]
            rows.append({
                "variant": labels.get(pruned_id, pruned_id), "base": labels.get(base_id, base_id),
                "batch": int(batch), "metric": MEMORY_METRICS[metric], "base_gib": bv, "variant_gib": pv,
                "saved_gib": saved, "saved_pct": None if saved is None or not bv else 100.0 * saved / bv,
                "weights_saved_gib": None if _isna(wb) or _isna(wp) else wb - wp,
            })
    return pd.DataFrame(rows, columns=cols)


def _overlap(a_lo: Any, a_hi: Any, b_lo: Any, b_hi: Any) -> bool:
    if any(_isna(v) for v in (a_lo, a_hi, b_lo, b_hi)):
        return False
    return bool(a_lo <= b_hi and b_lo <= a_hi)


def _pct(new: Any, old: Any) -> float | None:
    if _isna(new) or _isna(old) or not old:
        return None
    return 100.0 * (float(new) - float(old)) / float(old)
