"""Bench-process side of the research loop: which model a calibration belongs to, resolving a spec's calibrated
prunes into keep sets, finding a domain's text again (held-out quality text, prompts), and running the research
worker (bench.research_worker) in a worker process of its own, as sweeps do.

Imports the store (duckdb): never imported by worker-side code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.corpus import BUILTIN_DOMAINS, DomainText, load_domain
from bench.errors import BadInputError, BenchError
from bench.models.keep_sets import choose_keep
from bench.spec import PruneSpec, SweepSpec
from bench.store import research as rstore

DEFAULT_BUDGET = {"cuda": 262_144, "cpu": 2_048}  # calibration tokens per domain
DEFAULT_QUALITY_TOKENS = {"cuda": 32_768, "cpu": 512}  # quality positions per domain
SEQ_LEN = {"cuda": 1024, "cpu": 128}
CAL_BATCH = {"cuda": 8, "cpu": 4}


def expected_fingerprint(model: str, seed: int) -> str:
    """The fingerprint load_model gives `model` (synthetic: preset + seed; checkpoint: config + files), computed
    without building weights; calibrations are keyed by it."""
    from bench.models.loading import (
        checkpoint_fingerprint,
        is_synthetic,
        preset_name,
        resolve_config,
        synthetic_fingerprint,
    )

    if is_synthetic(model):
        return synthetic_fingerprint(preset_name(model), seed)
    return checkpoint_fingerprint(model, resolve_config(model))


def calibration_for(db: Path | str, model: str, seed: int, domain: str, where: str) -> dict:
    """The stored calibration of `domain` for this model, or BadInputError saying why there is none."""
    fp = expected_fingerprint(model, seed)
    rows = rstore.calibrations_for(db, fp, domain)
    if rows:
        return rows[0]
    others = rstore.calibrations_for(db, None, domain)
    if others:
        o = others[0]
        raise BadInputError(
            f"{where}: calibration {domain!r} was made on another model ({o['model']}, fingerprint "
            f"{o['model_fingerprint']}), not {model} with seed {seed} (fingerprint {fp}); calibrate this model: "
            f"python -m bench calibrate --model {model} --seed {seed} --domain {domain}=PATH"
        )
    hint = f"--domain {domain}" if domain in BUILTIN_DOMAINS else f"--domain {domain}=PATH"
    raise BadInputError(
        f"{where}: no calibration of domain {domain!r} for {model} (seed {seed}) in {db}; run "
        f"python -m bench calibrate --model {model} --seed {seed} {hint}"
    )


def resolve_prune(db: Path | str, model: str, seed: int, prune: PruneSpec | None, where: str) -> PruneSpec | None:
    """A calibrated prune becomes an explicit keep set with a note naming its calibrations; others pass through."""
    if prune is None or prune.kind != "calibrated":
        return prune
    cals = [rstore.load_calibration(db, calibration_for(db, model, seed, d, where)) for d in prune.domains or []]
    choice = choose_keep(cals, str(prune.method), int(prune.experts or 0), prune.rank or "saliency", prune.per_domain)
    return replace(prune, keep_layers=choice.keep, note=choice.note)


def resolve_prunes(db: Path | str, spec: SweepSpec) -> dict[str, PruneSpec | None]:
    return {v.name: resolve_prune(db, v.model, spec.sweep.seed, v.prune, f"variants[{i}] ({v.name}).prune")
            for i, v in enumerate(spec.variants)}


def domain_text(db: Path | str, model: str, seed: int, name: str, where: str) -> DomainText:
    """A domain's text: the one its calibration read (checked by hash), else a built-in domain of that name."""
    fp = expected_fingerprint(model, seed)
    rows = rstore.calibrations_for(db, fp, name)
    if rows and rows[0].get("text_spec"):
        d = load_domain(name, rows[0]["text_spec"])
        if d.text_hash != rows[0]["text_hash"]:
            raise BadInputError(
                f"{where}: the text of domain {name!r} ({rows[0]['text_spec']}) changed since it was calibrated "
                f"(hash {rows[0]['text_hash']} then, {d.text_hash} now); recalibrate it with --replace"
            )
        return d
    if name in BUILTIN_DOMAINS:
        return load_domain(name, f"builtin:{name}")
    raise BadInputError(f"{where}: unknown domain {name!r}: calibrate it first (python -m bench calibrate "
                        f"--domain {name}=PATH) or use a built-in one ({', '.join(BUILTIN_DOMAINS)})")


def quality_domain_names(spec: SweepSpec) -> list[str]:
    """sweep.quality_domains, else every calibrated domain the variants name, else the prompts domain."""
    if spec.sweep.quality_domains:
        return list(spec.sweep.quality_domains)
    names: list[str] = []
    for v in spec.variants:
        if v.prune is not None and v.prune.kind == "calibrated":
            names += [d for d in v.prune.domains or [] if d not in names]
    if not names and spec.sweep.prompts.startswith("domain:"):
        names.append(spec.sweep.prompts.removeprefix("domain:"))
    if not names:
        raise BadInputError("sweep.quality: no held-out text to measure on; add quality_domains = [\"code\"] "
                            "(a calibrated or built-in domain)")
    return names


def run_research_job(job: Any, on_message: Callable[[str, Any], None]) -> None:
    """Run bench.research_worker in a new process on `job`, hand every message to on_message until "done". A
    BadInputError in the worker comes back as one here (exit 2); any other failure as a BenchError (exit 1)."""
    from bench.processes import start_process
    from bench.research_worker import research_entry

    proc, parent = start_process(research_entry, (job,), name="bench-research")
    error: tuple[str, str] | None = None
    try:
        while True:
            if parent.poll(0.5):
                try:
                    kind, payload = parent.recv()
                except (EOFError, OSError):
                    break
                if kind == "done":
                    break
                if kind in ("bad_input", "fatal"):
                    error = (kind, payload)
                elif kind == "trace":
                    print(payload, file=sys.stderr)
                else:
                    on_message(kind, payload)
            elif not proc.is_alive() and not parent.poll(0):
                break
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    if error is not None:
        raise (BadInputError if error[0] == "bad_input" else BenchError)(error[1])
    if proc.exitcode not in (0, None):
        raise BenchError(f"the research worker died (exit code {proc.exitcode}); see the log above")


@dataclass
class ResearchPlan:
    """What a sweep's research settings resolve to in the bench process, per variant name."""

    prunes: dict[str, PruneSpec | None] = field(default_factory=dict)
    prompt_text: dict[str, str] = field(default_factory=dict)  # held-out text the prompts are cut from
    prompts_label: dict[str, str] = field(default_factory=dict)  # runs.prompts: random | domain:<name>@<hash>
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)  # WorkerJob.quality per variant


def uses_research(spec: SweepSpec) -> bool:
    s = spec.sweep
    return s.quality or s.prompts != "random" or any(v.prune is not None and v.prune.kind == "calibrated"
                                                     for v in spec.variants)


def prepare_research(db: Path | str, spec: SweepSpec, device: str) -> ResearchPlan:
    """Resolve calibrated prunes, text prompts and the quality phase of every variant (BadInputError, exit 2,
    before anything is written, when a calibration or a domain is missing)."""
    plan = ResearchPlan(prunes={v.name: v.prune for v in spec.variants},
                        prompts_label={v.name: "random" for v in spec.variants})
    if not uses_research(spec):
        return plan
    s = spec.sweep
    plan.prunes = resolve_prunes(db, spec)
    qnames = quality_domain_names(spec) if s.quality else []
    for i, v in enumerate(spec.variants):
        where = f"variants[{i}] ({v.name})"
        if s.prompts.startswith("domain:"):
            name = s.prompts.removeprefix("domain:")
            d = domain_text(db, v.model, s.seed, name, f"sweep.prompts ({v.name})")
            plan.prompt_text[v.name] = d.heldout_text
            plan.prompts_label[v.name] = f"domain:{name}@{d.text_hash}"
        if qnames:
            texts = [domain_text(db, v.model, s.seed, n, f"sweep.quality_domains ({where})") for n in qnames]
            plan.quality[v.name] = {
                "domains": [(d.name, d.heldout_text, d.text_hash) for d in texts],
                "budget": s.quality_tokens or DEFAULT_QUALITY_TOKENS[device],
                "seq_len": SEQ_LEN[device],
            }
    return plan
