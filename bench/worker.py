"""The worker: one process per variant (started by bench.processes). Builds the model, runs the engine over its
points, measures.

It sends messages back over a pipe and never touches the database (nor imports duckdb or streamlit):
  ("run", RunInfo)        once the model is loaded and pruned
  ("point", PointRecord)  after every point, failed ones included
  ("done", None)          at the end
  ("fatal", message)      when the variant cannot run at all (model load failed, ...)
"""

from __future__ import annotations

import os
import statistics
import traceback
from dataclasses import dataclass, field
from typing import Any

from bench.records import EnvFingerprint, PointRecord, utcnow
from bench.spec import PruneSpec

GIB = 2**30

# Fault injection for tests of failure handling: MOE_BENCH_FAULT="[<variant>@]<batch>:<kind>[,...]" where kind is
# oom | error | exit | segfault | hang (sleeps 10 minutes: a point that never ends, for kill/cancel tests).
# The fault fires inside the point, on the same path a real failure takes.
FAULT_ENV = "MOE_BENCH_FAULT"


@dataclass
class WorkerJob:
    """Everything the worker needs; plain data so it pickles to the worker process."""

    run_id: str
    variant_name: str
    model: str
    top_k: int
    prune: dict[str, Any] | None
    engine: str
    device: str  # "cuda" | "cpu"
    dtype: str  # resolved: bfloat16 | float16 | float32
    prompt_len: int
    new_tokens: int
    seed: int
    warmup: bool
    points: list[tuple[int, int]]  # (batch, repeat) to run, in order
    gpu_mem_cap_gib: float | None = None
    weights: str = "bf16"  # expert weight format: bf16 | mxfp4
    engine_options: dict[str, Any] | None = None  # SweepSettings.engine_options
    prompt_text: str | None = None  # prompts cut from this (a domain's held-out text) instead of random ids
    quality: dict[str, Any] | None = None  # after the points: bench.research_worker.quality_phase arguments


@dataclass
class RunInfo:
    env: EnvFingerprint
    experts: int
    base_experts: int
    kept_experts: list[list[int]] | None
    model_fingerprint: str | None
    bandwidth_gbs: float | None
    notes: list[str] = field(default_factory=list)
    engine_options: dict[str, Any] | None = None
    weights_impl: str | None = None  # how the engine runs the expert weights (runs.weights_impl)


def parse_faults(text: str | None, variant: str) -> dict[int, str]:
    faults: dict[int, str] = {}
    for item in (text or "").split(","):
        if ":" not in item:
            continue
        target, kind = item.rsplit(":", 1)
        if "@" in target:
            name, target = target.split("@", 1)
            if name != variant:
                continue
        faults[int(target)] = kind.strip()
    return faults


def _inject(kind: str) -> None:
    import torch

    if kind == "oom":
        raise torch.OutOfMemoryError("injected fault: CUDA out of memory (MOE_BENCH_FAULT)")
    if kind == "error":
        raise RuntimeError("injected fault: error (MOE_BENCH_FAULT)")
    if kind == "exit":
        os._exit(3)
    if kind == "segfault":
        import ctypes

        ctypes.string_at(0)
    if kind == "hang":
        import time

        time.sleep(600)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _prompt(batch: int, prompt_len: int, vocab: int, seed: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=gen)
    return ids.to(device)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def point_from_result(
    run_id: str,
    batch: int,
    repeat: int,
    result: Any,
    *,
    expected_tokens: int,
    arch: Any,
    top_k: int,
    context: float,
    bandwidth: float,
    mem: dict[str, float | None],
    window: Any,
    started: Any,
    bandwidth_source: str = "measured",
) -> PointRecord:
    """The one place a timed generation becomes a point: tok/s, TPOT, energy, roofline ceiling and MBU.

    `result` is a DecodeResult, `arch` an ArchSummary, `window` an NvmlWindow (all-None fields on CPU), `mem` the
    MemoryTracker's point_stats. Raises when the engine did not generate exactly `expected_tokens` per stream.
    """
    from bench.roofline import mbu, roofline_point

    generated = int(result.tokens.shape[1])
    if generated != expected_tokens:
        raise RuntimeError(f"engine generated {generated} tokens per stream, expected {expected_tokens}")
    total_tps = batch * (generated - 1) / result.decode_s
    roof = roofline_point(arch, batch, top_k, context, bandwidth, distinct=result.distinct_experts,
                          bandwidth_source=bandwidth_source)
    ceiling = roof.ceiling_tps
    energy = getattr(window, "energy_j", None)
    step_ms = [s * 1000 for s in result.step_s]
    return PointRecord(
        run_id=run_id,
        batch=batch,
        repeat=repeat,
        status="ok",
        total_tps=total_tps,
        per_stream_tps=total_tps / batch,
        decode_s=result.decode_s,
        prefill_s=result.prefill_s,
        tpot_p50_ms=statistics.median(step_ms) if step_ms else None,
        tpot_p90_ms=_percentile(step_ms, 0.9),
        tokens_generated=generated,
        energy_j_per_token=(energy / (batch * generated)) if energy else None,
        sm_clock_mhz=getattr(window, "sm_clock_mhz", None),
        throttle_reasons=getattr(window, "throttle_reasons", None),
        bytes_per_step=roof.bytes_per_step,
        kv_bytes=roof.kv_bytes,
        distinct_experts=result.distinct_experts,
        ceiling_tps=ceiling,
        mbu=mbu(total_tps, ceiling),
        experts_measured=roof.experts_measured,
        bandwidth_source=roof.bandwidth_source,
        started_at=started,
        finished_at=utcnow(),
        **mem,
    )


def run_job(job: WorkerJob, send) -> None:
    import torch

    from bench.engines import get_engine
    from bench.measure.bandwidth import measure_bandwidth
    from bench.measure.env import fingerprint
    from bench.measure.memory import MemoryTracker
    from bench.measure.nvml import NvmlSampler
    from bench.models.loading import load_model, weights_impl
    from bench.models.pruning import apply_variant
    from bench.roofline import ArchSummary, mean_decode_context

    dtype = getattr(torch, job.dtype)
    if job.device == "cuda" and job.gpu_mem_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, job.gpu_mem_cap_gib * GIB / total))
    env = fingerprint(job.device)
    tracker = MemoryTracker(job.device)
    tracker.baseline()
    loaded = load_model(job.model, device=job.device, dtype=dtype, seed=job.seed, weights=job.weights,
                        transformers_mxfp4=job.engine == "hf")
    prune = PruneSpec(**job.prune) if job.prune else None
    kept = apply_variant(loaded, prune, job.top_k, seed=job.seed)
    model = loaded.model
    tracker.after_load()
    bandwidth = measure_bandwidth(job.device)
    arch = ArchSummary.from_model(model)
    engine = get_engine(job.engine, job.engine_options)
    send(
        (
            "run",
            RunInfo(
                env=env,
                experts=arch.num_experts,
                base_experts=loaded.base_experts,
                kept_experts=kept,
                model_fingerprint=loaded.fingerprint,
                bandwidth_gbs=bandwidth / 1e9,
                notes=list(loaded.notes),
                engine_options=engine.describe(job.device),
                weights_impl=weights_impl(loaded, job.engine, job.device),
            ),
        )
    )
    faults = parse_faults(os.environ.get(FAULT_ENV), job.variant_name)
    vocab = int(model.config.vocab_size)
    context = mean_decode_context(job.prompt_len, job.new_tokens)
    prepared_batch: int | None = None
    failed_batches: dict[int, str] = {}
    for batch, repeat in job.points:
        started = utcnow()
        if batch in failed_batches:
            send(("point", PointRecord(run_id=job.run_id, batch=batch, repeat=repeat, status="skipped",
                                       error=failed_batches[batch], started_at=started, finished_at=utcnow())))
            continue
        try:
            input_ids = _text_prompt(job, loaded, batch) if job.prompt_text else _prompt(
                batch, job.prompt_len, vocab, job.seed, job.device)
            if prepared_batch != batch:
                if prepared_batch is not None:
                    engine.release()
                    prepared_batch = None
                if job.device == "cuda":
                    torch.cuda.empty_cache()
                if job.warmup:
                    engine.prepare(model, input_ids, job.new_tokens)
                prepared_batch = batch
            if batch in faults:
                _inject(faults[batch])
            tracker.reset_peak()
            with NvmlSampler(0 if job.device == "cuda" else None) as sampler:
                result = engine.generate(model, input_ids, job.new_tokens)
            point = point_from_result(
                job.run_id, batch, repeat, result, expected_tokens=job.new_tokens, arch=arch, top_k=job.top_k,
                context=context, bandwidth=bandwidth, mem=tracker.point_stats(sampler.result),
                window=sampler.result, started=started,
            )
            send(("point", point))
        except Exception as exc:  # a failed point becomes a row; the sweep goes on
            status = "oom" if _is_oom(exc) else "error"
            message = f"{type(exc).__name__}: {exc}".strip()[:2000]
            if status == "error":
                message += "\n" + traceback.format_exc(limit=4)[-1500:]
            failed_batches[batch] = f"skipped: repeat {repeat} at batch {batch} failed ({status})"
            send(("point", PointRecord(run_id=job.run_id, batch=batch, repeat=repeat, status=status,
                                       error=message, started_at=started, finished_at=utcnow())))
            if prepared_batch is not None:
                try:
                    engine.release()
                finally:
                    prepared_batch = None
            if job.device == "cuda":
                torch.cuda.empty_cache()
    if prepared_batch is not None:
        engine.release()
    if job.quality:
        _quality_phase(job, loaded, send)


def _text_prompt(job: WorkerJob, loaded: Any, batch: int):
    """[batch, prompt_len] ids cut from the domain text (the model's tokenizer, or byte-level for synthetic)."""
    from bench.models.text_tokens import prompt_ids, tokenizer_for

    return prompt_ids(tokenizer_for(loaded), job.prompt_text or "", batch, job.prompt_len, job.device)


def _quality_phase(job: WorkerJob, loaded: Any, send) -> None:
    """Quality against the base after the speed points, in this same worker; a failure is reported, not fatal."""
    from bench.research_worker import quality_phase

    q = job.quality or {}
    try:
        results = quality_phase(loaded, job.model, job.seed, job.device, job.dtype, q["domains"], q["budget"],
                                q["seq_len"], lambda msg: None)
    except Exception as exc:  # the speed points are already stored
        send(("quality_failed", f"{type(exc).__name__}: {exc}"))
        return
    send(("quality", results))


def worker_entry(job: WorkerJob, conn) -> None:
    """Target of the worker process (bench.processes)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_job(job, conn.send)
        conn.send(("done", None))
    except BaseException as exc:  # the variant cannot run at all
        conn.send(("fatal", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)[-3000:]}"))
    finally:
        conn.close()
