"""Worker side of `bench calibrate` and `bench quality` (and the sweep's quality phase): runs in a worker process of its
own, builds the model, and sends results back over a pipe. Never imports duckdb or streamlit.

Messages: ("model", {fingerprint, device, ...}), ("progress", (domain, done, total)),
("calibration", CalibrationOut), ("quality", QualityResult), ("done", None), ("fatal", message).
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from bench.models.quality import QualityResult
from bench.models.routing_stats import RoutingStats


@dataclass
class CalibrationJob:
    model: str
    seed: int
    device: str
    dtype: str
    domains: list[tuple[str, str]]  # (name, calibration text: the first 90% of the domain)
    budget: int  # tokens per domain
    seq_len: int
    batch: int


@dataclass
class CalibrationOut:
    domain: str
    stats: RoutingStats
    tokenizer: str
    seconds: float


@dataclass
class QualityJob:
    """Quality of one variant against its base (the same model, unpruned, at its native top_k)."""

    model: str
    seed: int
    device: str
    dtype: str
    top_k: int
    prune: dict[str, Any] | None
    domains: list[tuple[str, str, str]]  # (name, held-out text, hash of the whole domain text)
    budget: int  # positions per domain
    seq_len: int
    extra: dict[str, Any] = field(default_factory=dict)


def quality_phase(loaded: Any, model: str, seed: int, device: str, dtype: str, domains: list[tuple[str, str, str]],
                  budget: int, seq_len: int, send) -> list[QualityResult]:
    """Build the base next to the (already pruned) `loaded` variant and compare them on each domain's held-out
    text. Sends ("progress", ...) and returns one QualityResult per domain."""
    import torch

    from bench.models.loading import load_model
    from bench.models.pruning import set_top_k
    from bench.models.quality import compare_outputs
    from bench.models.text_tokens import chunk_ids, tokenizer_for

    base = load_model(model, device=device, dtype=getattr(torch, dtype), seed=seed)
    set_top_k(base.model, int(base.config.num_experts_per_tok))
    tok = tokenizer_for(loaded)
    out = []
    try:
        for name, text, digest in domains:
            t0 = time.perf_counter()
            ids = tok.encode(text, budget + 1)
            chunks = chunk_ids(ids, seq_len + 1)
            values, n = compare_outputs(base.model, loaded.model, chunks,
                                        lambda d, t, name=name: send(("progress", (f"quality {name}", d, t))))
            out.append(QualityResult(domain=name, values=values, tokens=n, seconds=time.perf_counter() - t0,
                                     tokenizer=tok.label, text_hash=digest))
    finally:
        del base
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def _calibrate(job: CalibrationJob, send) -> None:
    import torch

    from bench.models.loading import load_model
    from bench.models.routing_stats import collect_routing
    from bench.models.text_tokens import chunk_ids, tokenizer_for

    loaded = load_model(job.model, device=job.device, dtype=getattr(torch, job.dtype), seed=job.seed)
    send(("model", {"fingerprint": loaded.fingerprint, "top_k": int(loaded.config.num_experts_per_tok)}))
    tok = tokenizer_for(loaded)
    for name, text in job.domains:
        t0 = time.perf_counter()
        ids = tok.encode(text, job.budget)
        label = tok.label
        chunks = chunk_ids(ids, job.seq_len)
        stats = collect_routing(loaded.model, chunks, job.batch,
                                lambda d, t, name=name: send(("progress", (name, d, t))))
        send(("calibration", CalibrationOut(domain=name, stats=stats, tokenizer=label,
                                            seconds=time.perf_counter() - t0)))


def _quality(job: QualityJob, send) -> None:
    import torch

    from bench.models.loading import load_model
    from bench.models.pruning import apply_variant
    from bench.spec import PruneSpec

    loaded = load_model(job.model, device=job.device, dtype=getattr(torch, job.dtype), seed=job.seed)
    apply_variant(loaded, PruneSpec(**job.prune) if job.prune else None, job.top_k, seed=job.seed)
    send(("model", {"fingerprint": loaded.fingerprint}))
    for result in quality_phase(loaded, job.model, job.seed, job.device, job.dtype, job.domains, job.budget,
                                job.seq_len, send):
        send(("quality", result))


def research_entry(job: CalibrationJob | QualityJob, conn) -> None:
    """Target of the worker process (bench.processes)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        (_calibrate if isinstance(job, CalibrationJob) else _quality)(job, conn.send)
        conn.send(("done", None))
    except BaseException as exc:
        from bench.errors import BadInputError

        kind = "bad_input" if isinstance(exc, BadInputError) else "fatal"
        conn.send((kind, f"{type(exc).__name__}: {exc}" if kind == "fatal" else str(exc)))
        if kind == "fatal":
            conn.send(("trace", traceback.format_exc(limit=6)[-3000:]))
    finally:
        conn.close()
