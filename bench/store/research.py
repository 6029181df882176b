"""Store side of the research loop: calibrations (routing statistics per model and domain) and quality figures per
run. Writes go through `bench.store.writer`; these reads are for the bench process (commands, runner).

A calibration is keyed by (model fingerprint, domain): one domain name holds one text per model. Its id hashes
the fingerprint, domain, text hash and token budget, so calibrating the same text with the same budget again
finds the stored result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import store
from bench.models.keep_sets import CalibrationData
from bench.records import utcnow


def calibration_id(fingerprint: str, domain: str, text_hash: str, budget: int) -> str:
    key = json.dumps([fingerprint, domain, text_hash, int(budget)])
    return "c-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class CalibrationRow:
    calibration_id: str
    model: str
    model_fingerprint: str
    domain: str
    text_hash: str
    text_source: str
    text_spec: str
    tokenizer: str
    tokens: int
    budget: int
    layers: int
    experts: int
    top_k: int
    device: str
    seconds: float


def calibrations_for(db: Path | str, fingerprint: str | None = None, domain: str | None = None) -> list[dict]:
    """Stored calibration rows (no per-expert data), newest first; filtered by fingerprint and/or domain."""
    if not Path(db).exists():
        return []
    sql, params = "SELECT * FROM calibrations WHERE 1=1", []
    if fingerprint is not None:
        sql += " AND model_fingerprint = ?"
        params.append(fingerprint)
    if domain is not None:
        sql += " AND domain = ?"
        params.append(domain)
    with store.writer(db) as con:
        return store.fetch_dicts(con, sql + " ORDER BY created_at DESC", params)


def save_calibration(db: Path | str, row: CalibrationRow, stats: Any, replace_domain: bool = False) -> None:
    """Write one calibration and its per-expert rows in one transaction. With replace_domain, the model's earlier
    calibration(s) of this domain go first (their text differs or their budget does)."""
    with store.writer(db) as con:
        if replace_domain:
            old = [r[0] for r in con.execute(
                "SELECT calibration_id FROM calibrations WHERE model_fingerprint = ? AND domain = ?",
                [row.model_fingerprint, row.domain]).fetchall()]
            for cid in [*old, row.calibration_id]:
                con.execute("DELETE FROM calibration_experts WHERE calibration_id = ?", [cid])
                con.execute("DELETE FROM calibrations WHERE calibration_id = ?", [cid])
        values = {**row.__dict__, "created_at": utcnow()}
        cols = list(values)
        con.execute(f"INSERT INTO calibrations ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [values[c] for c in cols])
        rows = [
            (row.calibration_id, li, e, int(stats.tokens_routed[li][e]), stats.mean_weight(li, e),
             stats.saliency(li, e))
            for li in range(stats.layers) for e in range(stats.experts)
        ]
        con.executemany("INSERT INTO calibration_experts VALUES (?, ?, ?, ?, ?, ?)", rows)


def load_calibration(db: Path | str, cal: dict) -> CalibrationData:
    """The per-expert data of a calibration row."""
    with store.writer(db) as con:
        rows = con.execute(
            "SELECT layer, expert, tokens_routed, saliency FROM calibration_experts WHERE calibration_id = ? "
            "ORDER BY layer, expert", [cal["calibration_id"]]).fetchall()
    layers, experts = int(cal["layers"]), int(cal["experts"])
    routed = [[0] * experts for _ in range(layers)]
    sal: list[list[float | None]] = [[None] * experts for _ in range(layers)]
    for layer, expert, n, s in rows:
        routed[layer][expert] = int(n)
        sal[layer][expert] = None if s is None else float(s)
    return CalibrationData(
        calibration_id=cal["calibration_id"], domain=cal["domain"], model=cal["model"],
        model_fingerprint=cal["model_fingerprint"], text_hash=cal["text_hash"], tokenizer=cal["tokenizer"],
        tokens=int(cal["tokens"]), tokens_routed=routed, saliency=sal)


def save_quality(db: Path | str, run_id: str, results: list[Any], base_run_id: str | None = None) -> None:
    """One row per (domain, metric) of each QualityResult; replaces earlier figures of the run for that domain."""
    with store.writer(db) as con:
        for r in results:
            con.execute("DELETE FROM quality WHERE run_id = ? AND domain = ?", [run_id, r.domain])
            for metric, value in r.values.items():
                con.execute(
                    "INSERT INTO quality (run_id, domain, metric, value, tokens, base_run_id, seconds, text_hash, "
                    "tokenizer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, r.domain, metric, float(value), int(r.tokens), base_run_id, float(r.seconds),
                     getattr(r, "text_hash", None), r.tokenizer])


def quality_rows(db: Path | str, run_ids: list[str]) -> list[dict]:
    if not run_ids or not Path(db).exists():
        return []
    marks = ", ".join("?" for _ in run_ids)
    with store.writer(db) as con:
        return store.fetch_dicts(con, f"SELECT * FROM quality WHERE run_id IN ({marks}) ORDER BY run_id, domain, "
                                      "metric", list(run_ids))
