"""Records that cross a boundary: worker -> runner -> store -> export.

These dataclasses are the one description of a sweep, a run and a point. The DuckDB schema
(`bench/store/schema.sql`) and the JSONL export use the same field names.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

PointStatus = Literal["ok", "oom", "error", "skipped"]
SweepState = Literal["queued", "running", "done", "failed", "crashed", "cancelled"]
RunState = Literal["pending", "running", "done", "failed", "imported"]

POINT_STATUSES: tuple[str, ...] = ("ok", "oom", "error", "skipped")
SWEEP_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "crashed", "cancelled", "incomplete")


def utcnow() -> datetime:
    """Timezone-aware UTC now, truncated to microseconds (DuckDB TIMESTAMPTZ precision)."""
    return datetime.now(UTC)


@dataclass
class EnvFingerprint:
    """Where a run was measured. Filled by `bench.measure.env.fingerprint()`."""

    device_name: str = "unknown"  # "NVIDIA H100 80GB HBM3" or "cpu: <model name>"
    device_kind: str = "cpu"  # "cuda" | "cpu"
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    transformers: str | None = None
    bench_version: str | None = None
    git_commit: str | None = None
    host: str | None = None
    python: str | None = None
    gpu_index: int | None = None  # CUDA device index on its host (None on CPU)
    gpu_uuid: str | None = None  # NVML UUID, tells two cards of the same name apart
    worker_address: str | None = None  # the Dask worker that ran it; None when the bench process launched it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SweepRecord:
    """One launch of `python -m bench sweep`."""

    sweep_id: str
    title: str
    spec_json: str  # the resolved spec, as JSON
    state: str = "queued"
    host: str | None = None
    pid: int | None = None
    device_key: str | None = None  # "cuda:0" / "cpu": at most one running sweep per GPU
    points_planned: int = 0
    points_done: int = 0
    log_path: str | None = None
    lock_path: str | None = None
    current_variant: str | None = None
    message: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    source: str = "measured"  # "measured" | "imported:<file name>"
    cluster: str | None = None  # None: this GPU; "local", "local:N" or a scheduler address


@dataclass
class RunRecord:
    """One variant inside a sweep (or one imported run)."""

    run_id: str
    sweep_id: str | None
    name: str
    model: str  # model source: HF id, local dir or synthetic:<preset>
    top_k: int
    engine: str
    dtype: str
    device: str  # resolved device: "cuda" | "cpu"
    prompt_len: int
    new_tokens: int
    repeats: int
    seed: int
    experts: int | None = None  # experts per layer after pruning
    base_experts: int | None = None  # experts per layer before pruning
    kept_experts: list[list[int]] | None = None  # per layer, None when unpruned
    prune: dict[str, Any] | None = None  # the prune spec as given
    model_fingerprint: str | None = None
    env: EnvFingerprint = field(default_factory=EnvFingerprint)
    bandwidth_gbs: float | None = None  # measured once per run
    config_json: str | None = None  # exact resolved variant + sweep config, enough to rerun
    engine_options: str | None = None  # JSON: the engine's settings as run (cache, capture, kernels)
    rerun_of: str | None = None
    source: str = "measured"  # "measured" | "imported:<file name>"
    state: str = "pending"
    notes: str | None = None  # e.g. "mxfp4 dequantized to bf16"
    timing_convention: str = "decode"  # "decode": (new_tokens-1)/decode_s ; "generate": see report import
    started_at: datetime | None = None
    finished_at: datetime | None = None
    weights: str = "bf16"  # expert weight format: "bf16" | "mxfp4"
    weights_impl: str | None = None  # how the engine ran them, e.g. "mxfp4 native" | "mxfp4 dequantized to bf16"
    prompts: str | None = None  # "random" | "domain:<name>@<text hash>"


@dataclass
class PointRecord:
    """One (run, batch size, repeat) measurement. Memory in GiB, times in seconds."""

    run_id: str
    batch: int
    repeat: int
    status: str  # ok | oom | error | skipped
    error: str | None = None
    total_tps: float | None = None
    per_stream_tps: float | None = None
    decode_s: float | None = None
    prefill_s: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    tokens_generated: int | None = None  # per stream, as actually generated
    mem_weights_gib: float | None = None
    mem_peak_alloc_gib: float | None = None
    mem_peak_reserved_gib: float | None = None
    mem_nvml_peak_gib: float | None = None
    mem_used_gib: float | None = None  # this run's peak at this point (NVML per-process, else reserved, else RSS)
    energy_j_per_token: float | None = None
    sm_clock_mhz: float | None = None
    throttle_reasons: int | None = None
    bytes_per_step: float | None = None
    kv_bytes: float | None = None  # KV-cache bytes read per decode step (part of bytes_per_step)
    distinct_experts: float | None = None  # mean distinct experts touched per layer per step
    ceiling_tps: float | None = None
    mbu: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    experts_measured: bool | None = None  # distinct_experts counted by the engine (True) or the uniform formula
    bandwidth_source: str | None = None  # "measured" (device copy) | "datasheet"


def to_jsonable(value: Any) -> Any:
    """Convert datetimes (and nested containers) into JSON-friendly values."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def record_to_json(record: Any) -> str:
    return json.dumps(to_jsonable(dataclasses.asdict(record)), sort_keys=True)
