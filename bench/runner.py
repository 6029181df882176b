"""Sweep orchestration in the bench process: preflight, locks, one worker process per variant, and a DuckDB
write for every point as it arrives. Resume fills only missing points; rerun replays a run's resolved config.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.errors import BadInputError, BenchError, SweepBusyError
from bench.locks import HeldLock, lock_owner, try_lock
from bench.paths import device_locks_dir, sweep_file
from bench.processes import start_process
from bench.progress import ProgressBar
from bench.records import PointRecord, RunRecord, SweepRecord, utcnow
from bench.spec import DEVICES, DTYPES, SweepSpec, VariantSpec, check_id, spec_from_dict
from bench.worker import RunInfo, WorkerJob, worker_entry

HEARTBEAT_S = 5.0
# `--retry-errors` measures these points again on resume (the rows are replaced).
RETRY_STATUSES: tuple[str, ...] = ("error", "oom", "skipped")


def new_id(prefix: str) -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class SweepOutcome:
    sweep_id: str
    state: str
    points_planned: int
    points_done: int
    statuses: dict[str, int] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.state == "done" and not self.statuses.get("error"),
            "sweep_id": self.sweep_id,
            "state": self.state,
            "points_planned": self.points_planned,
            "points_done": self.points_done,
            "statuses": self.statuses,
            "run_ids": self.run_ids,
        }


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """The spec's device and dtype as run: `auto` -> cuda when visible, and bfloat16 on cuda / float32 on cpu."""
    from bench.models.loading import resolve_device, torch_dtype

    resolved = resolve_device(device)
    return resolved, str(torch_dtype(dtype, resolved)).removeprefix("torch.")


def device_key(device: str) -> str:
    if device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        return f"cuda-{visible}"
    return "cpu"


def preflight(spec: SweepSpec, device: str | None = None, dtype: str | None = None, check_memory: bool = False,
              gpu_mem_cap_gib: float | None = None) -> None:
    """Check every variant against its model config (and, with `check_memory`, against the free memory of
    `device` in `dtype`) before anything is written."""
    from bench.models.loading import resolve_config

    s = spec.sweep
    for i, v in enumerate(spec.variants):
        where = f"variants[{i}] ({v.name})"
        cfg = resolve_config(v.model)
        experts = int(getattr(cfg, "num_local_experts", 0) or 0)
        kept = v.prune.experts if v.prune and v.prune.experts else experts
        if v.prune is not None and v.prune.experts and v.prune.experts > experts:
            raise BadInputError(f"{where}.prune.experts: {v.prune.experts} exceeds the model's {experts} experts")
        if v.top_k > kept:
            raise BadInputError(
                f"{where}.top_k: top_k {v.top_k} is greater than the {kept} experts per layer; lower top_k"
            )
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        if limit and s.prompt_len + s.new_tokens > limit:
            raise BadInputError(
                f"sweep.prompt_len: prompt_len + new_tokens = {s.prompt_len + s.new_tokens} exceeds {v.model}'s "
                f"max_position_embeddings {limit}; shorten the prompt or new_tokens"
            )
        if check_memory and device and dtype:
            from bench.models.footprint import preflight_memory

            preflight_memory(v.model, device, dtype, max(s.batch_sizes), s.prompt_len, s.new_tokens, where,
                             cap_gib=gpu_mem_cap_gib)


def _variant_config(v: VariantSpec, spec: SweepSpec, device: str, dtype: str) -> dict[str, Any]:
    single = SweepSpec(title=spec.title, sweep=spec.sweep, variants=[v]).to_dict()
    return {"title": spec.title, "sweep": single["sweep"], "variant": single["variants"][0],
            "resolved": {"device": device, "dtype": dtype}}


PATIENT_WRITE_S = 600.0  # a sweep's writes wait this long for other writers; point writes retry beyond it


class _Cancelled(Exception):
    pass


class SweepRunner:
    def __init__(self, db: Path, progress: bool = True, gpu_mem_cap_gib: float | None = None,
                 check_memory: bool = True) -> None:
        self.db = Path(db)
        self.progress = progress
        self.gpu_mem_cap_gib = gpu_mem_cap_gib
        self.check_memory = check_memory
        self.cancelled = False
        self.worker: mp.process.BaseProcess | None = None
        self.locks: list[HeldLock] = []
        self.reserve: store.SpaceReserve | None = None
        self.plan: Any = None  # bench.calibrated.ResearchPlan: calibrated prunes, text prompts, quality phase

    # ------------------------------------------------------------------ public entry points

    def run(
        self,
        spec: SweepSpec,
        sweep_id: str | None = None,
        resume: bool = False,
        rerun_of: dict[str, str] | None = None,
        retry_errors: bool = False,
    ) -> SweepOutcome:
        device, dtype = resolve_device_dtype(spec.sweep.device, spec.sweep.dtype)
        preflight(spec, device, dtype, check_memory=self.check_memory, gpu_mem_cap_gib=self.gpu_mem_cap_gib)
        self.plan = _research_plan(self.db, spec, device)
        sweep_id = check_id(sweep_id or new_id("s"), "--sweep-id")
        sweep_lock_path = sweep_file(self.db, sweep_id, "sweep-{id}.lock")
        dev_lock_path = device_locks_dir() / f"device-{device_key(device)}.lock"
        dev_lock = try_lock(dev_lock_path, f"{sweep_id} pid {os.getpid()} db {self.db}")
        if dev_lock is None:
            owner = lock_owner(dev_lock_path) or "another sweep"
            raise SweepBusyError(
                f"device {device_key(device)} is busy with sweep {owner}; wait for it to finish or cancel it "
                "(python -m bench ls shows it)"
            )
        self.locks.append(dev_lock)
        sweep_lock = try_lock(sweep_lock_path, f"{sweep_id} pid {os.getpid()}")
        if sweep_lock is None:
            self._release()
            raise SweepBusyError(f"sweep {sweep_id} is already running in another process")
        self.locks.append(sweep_lock)
        self.reserve = store.SpaceReserve(self.db, f"sweep-{sweep_id}")  # released on a full disk, see _record_failure
        previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            with store.patient_writes(PATIENT_WRITE_S):  # never die of waiting on another writer (an import)
                return self._run_locked(spec, sweep_id, resume, device, dtype, str(sweep_lock_path),
                                        rerun_of or {}, retry_errors)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._release()

    # ------------------------------------------------------------------ internals

    def _release(self) -> None:
        if self.reserve is not None:
            self.reserve.release()
        for lock in self.locks:
            lock.release()
        self.locks.clear()

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancelled = True
        if self.worker is not None and self.worker.is_alive():
            self.worker.terminate()

    def _run_locked(
        self, spec: SweepSpec, sweep_id: str, resume: bool, device: str, dtype: str, lock_path: str,
        rerun_of: dict[str, str], retry_errors: bool = False,
    ) -> SweepOutcome:
        planned = spec.planned_points()
        now = utcnow()
        existing = store.read_sweep(self.db, sweep_id) if resume else None
        log_path = os.environ.get("MOE_BENCH_LOG_PATH")
        fields = dict(state="running", pid=os.getpid(), host=socket.gethostname(), device_key=device_key(device),
                      lock_path=lock_path, started_at=now, heartbeat_at=now, finished_at=None, message=None,
                      points_planned=planned)
        if log_path:
            fields["log_path"] = log_path
        fields.update(self._sweep_fields())
        if existing is None:
            store.insert_sweep(self.db, SweepRecord(sweep_id=sweep_id, title=spec.title, spec_json=spec.to_json(),
                                                    created_at=now, **fields))
        else:
            store.update_sweep(self.db, sweep_id, **fields)
        runs_by_name = {r.name: r for r in store.read_runs(self.db, sweep_id=sweep_id)}
        outcome = SweepOutcome(sweep_id=sweep_id, state="running", points_planned=planned, points_done=0)
        try:
            self._run_all(spec, sweep_id, device, dtype, runs_by_name, outcome, rerun_of, retry_errors)
            state = "done"
        except _Cancelled:
            state = "cancelled"
        except BenchError as exc:
            self._record_failure(sweep_id, str(exc))
            raise
        except BaseException as exc:
            self._record_failure(sweep_id, f"{type(exc).__name__}: {exc}")
            raise
        if self.cancelled:
            state = "cancelled"
        store.update_sweep(self.db, sweep_id, state=state, finished_at=utcnow(), current_variant=None,
                           message="cancelled by the user" if state == "cancelled" else None)
        row = store.read_sweep(self.db, sweep_id) or {}
        outcome.state = state
        outcome.points_done = int(row.get("points_done") or 0)
        outcome.statuses = store.status_counts(self.db, sweep_id)
        return outcome

    def _sweep_fields(self) -> dict[str, Any]:
        """Extra sweep-row fields (the cluster runner names its cluster)."""
        return {}

    def _run_all(
        self, spec: SweepSpec, sweep_id: str, device: str, dtype: str, runs_by_name: dict[str, RunRecord],
        outcome: SweepOutcome, rerun_of: dict[str, str], retry_errors: bool = False,
    ) -> None:
        """Run every variant's missing points (and, with `retry_errors`, its error/oom/skipped ones), one variant
        after another (bench.cluster spreads them instead)."""
        for v in spec.variants:
            if self.cancelled:
                raise _Cancelled
            run = runs_by_name.get(v.name) or self._new_run(v, spec, sweep_id, device, dtype, rerun_of.get(v.name))
            outcome.run_ids.append(run.run_id)
            done = store.done_points(self.db, run.run_id, redo=RETRY_STATUSES if retry_errors else ())
            todo = [(b, r) for b in spec.sweep.batch_sizes for r in range(spec.sweep.repeats) if (b, r) not in done]
            if todo:
                store.update_sweep(self.db, sweep_id, current_variant=v.name, heartbeat_at=utcnow())
                self._run_variant(v, spec, run, device, dtype, todo, sweep_id)

    def _new_run(
        self, v: VariantSpec, spec: SweepSpec, sweep_id: str, device: str, dtype: str, rerun_of: str | None
    ) -> RunRecord:
        s = spec.sweep
        run = RunRecord(
            run_id=new_id("r"), sweep_id=sweep_id, name=v.name, model=v.model, top_k=v.top_k, engine=s.engine,
            dtype=dtype, device=device, prompt_len=s.prompt_len, new_tokens=s.new_tokens, repeats=s.repeats,
            seed=s.seed, prune=self._prune_dict(v),
            config_json=json.dumps(_variant_config(v, spec, device, dtype), sort_keys=True),
            rerun_of=rerun_of, source="measured", state="pending", weights=v.weights,
            prompts=self.plan.prompts_label.get(v.name, "random") if self.plan else "random",
        )
        store.insert_run(self.db, run)
        return run

    def _worker_job(
        self, v: VariantSpec, spec: SweepSpec, run: RunRecord, device: str, dtype: str, todo: list[tuple[int, int]],
    ) -> WorkerJob:
        """What one variant's worker process is told to measure (the serial and the cluster runner alike)."""
        s = spec.sweep
        return WorkerJob(
            run_id=run.run_id, variant_name=v.name, model=v.model, top_k=v.top_k,
            prune=self._prune_dict(v), engine=s.engine, device=device, dtype=dtype,
            prompt_len=s.prompt_len, new_tokens=s.new_tokens, seed=s.seed, warmup=s.warmup, points=list(todo),
            gpu_mem_cap_gib=self.gpu_mem_cap_gib, weights=v.weights, engine_options=s.engine_options,
            prompt_text=self.plan.prompt_text.get(v.name) if self.plan else None,
            quality=self.plan.quality.get(v.name) if self.plan else None,
        )

    def _run_variant(
        self, v: VariantSpec, spec: SweepSpec, run: RunRecord, device: str, dtype: str,
        todo: list[tuple[int, int]], sweep_id: str,
    ) -> None:
        job = self._worker_job(v, spec, run, device, dtype, todo)
        bar = ProgressBar(v.name, total=len(todo), enabled=self.progress)
        store.update_run(self.db, run.run_id, state="running", started_at=utcnow())
        try:
            proc, parent = start_process(worker_entry, (job,), name=f"bench-worker-{v.name}")
        except (OSError, EOFError):
            if not self.cancelled:
                raise
            # a cancel's SIGTERM reached the process group while the worker was being started (the fork server
            # was still importing torch): the run is cancelled, not failed
            store.update_run(self.db, run.run_id, state="cancelled", finished_at=utcnow())
            raise _Cancelled from None
        self.worker = proc
        remaining = list(todo)
        fatal: str | None = None
        last_beat = time.monotonic()
        try:
            while True:
                if self.cancelled:
                    proc.terminate()
                    raise _Cancelled
                if parent.poll(0.5):
                    try:
                        kind, payload = parent.recv()
                    except (EOFError, OSError):
                        break
                    if kind == "run":
                        self._record_run_info(run, payload)
                    elif kind == "point":
                        self._write_point(payload, sweep_id)
                        key = (payload.batch, payload.repeat)
                        if key in remaining:
                            remaining.remove(key)
                        bar.advance(f"batch {payload.batch} #{payload.repeat} {payload.status}")
                        last_beat = time.monotonic()
                    elif kind == "quality":
                        self._record_quality(run, payload)
                    elif kind == "quality_failed":
                        print(f"[{v.name}] quality phase failed: {payload}", file=sys.stderr)
                    elif kind == "fatal":
                        fatal = payload
                    elif kind == "done":
                        break
                elif not proc.is_alive() and not parent.poll(0):
                    break
                if time.monotonic() - last_beat > HEARTBEAT_S:
                    with suppress(store.DatabaseLockedError):  # a busy database only delays the next beat
                        store.heartbeat(self.db, sweep_id)
                    last_beat = time.monotonic()
        finally:
            if sys.exc_info()[0] is not None and proc.is_alive():  # a failed write (a full disk): stop measuring
                proc.terminate()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            self.worker = None
            bar.close()
            if self.cancelled:  # the run stops here too; it must not stay `running`
                store.update_run(self.db, run.run_id, state="cancelled", finished_at=utcnow())
        if self.cancelled:
            raise _Cancelled
        if remaining:
            reason = fatal or _death_reason(proc.exitcode)
            for batch, repeat in remaining:
                store.insert_point(
                    self.db,
                    PointRecord(run_id=run.run_id, batch=batch, repeat=repeat, status="error",
                                error=f"worker failed before this point: {reason}"[:3000],
                                started_at=utcnow(), finished_at=utcnow()),
                    sweep_id=sweep_id,
                )
            print(f"[{v.name}] worker failed: {reason.splitlines()[0] if reason else '?'}", file=sys.stderr)
        store.update_run(self.db, run.run_id, state="failed" if remaining else "done", finished_at=utcnow(),
                         **({"notes": (fatal or _death_reason(proc.exitcode))[:2000]} if remaining else {}))

    def _write_point(self, point: PointRecord, sweep_id: str) -> None:
        """Store one point, waiting for other writers (a long import, another sweep's write) as long as it takes:
        a sweep never dies of waiting while its worker has points to give. Cancel still stops it."""
        while True:
            try:
                store.insert_point(self.db, point, sweep_id=sweep_id)
                return
            except store.DatabaseLockedError as exc:
                if self.cancelled:
                    raise _Cancelled from None
                print(f"still waiting to write a point: {exc}", file=sys.stderr)

    def _record_failure(self, sweep_id: str, message: str) -> None:
        """Mark the sweep (and its unfinished runs) failed with the real cause. A full disk may refuse even this
        small write, so the sweep's space reserve is given back first and the write is tried a few times; if it
        never lands, stderr still says why."""
        if self.reserve is not None:
            self.reserve.release()
        for attempt in range(3):
            try:
                store.fail_sweep(self.db, sweep_id, message)
                return
            except Exception as exc:  # the database cannot take even this row now
                if attempt == 2:
                    print(f"error: could not record the failure of sweep {sweep_id} ({exc}); it failed because: "
                          f"{message}", file=sys.stderr)
                else:
                    time.sleep(0.5)
    def _prune_dict(self, v: VariantSpec) -> dict[str, Any] | None:
        """The variant's prune as run: a calibrated one carries its resolved keep set and note."""
        prune = self.plan.prunes.get(v.name, v.prune) if self.plan else v.prune
        return prune.to_dict() if prune else None

    def _record_quality(self, run: RunRecord, results: list[Any]) -> None:
        from bench.store import research as rstore

        rstore.save_quality(self.db, run.run_id, results)
        for q in results:
            print(f"[{run.name}] quality {q.domain}: KL {q.values.get('kl', float('nan')):.4g}, top-1 agreement "
                  f"{q.values.get('top1_agreement', float('nan')):.3f}, {q.tokens} positions in {q.seconds:.1f} s",
                  file=sys.stderr)

    def _record_run_info(self, run: RunRecord, info: RunInfo) -> None:
        e = info.env
        store.update_run(
            self.db, run.run_id, experts=info.experts, base_experts=info.base_experts,
            kept_experts_json=json.dumps(info.kept_experts) if info.kept_experts is not None else None,
            model_fingerprint=info.model_fingerprint, bandwidth_gbs=info.bandwidth_gbs,
            device_name=e.device_name, device_kind=e.device_kind, driver=e.driver, cuda=e.cuda,
            torch_version=e.torch, transformers_version=e.transformers, bench_version=e.bench_version,
            git_commit=e.git_commit, host=e.host, python_version=e.python,
            notes="; ".join(info.notes) if info.notes else None,
            engine_options=json.dumps(info.engine_options, sort_keys=True) if info.engine_options else None,
            weights_impl=info.weights_impl,
        )


def _research_plan(db: Path, spec: SweepSpec, device: str) -> Any:
    """Calibrated prunes, text prompts and the quality phase, resolved against the database (bench.calibrated)."""
    from bench.calibrated import prepare_research

    return prepare_research(db, spec, device)


def _death_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker process did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"worker process was killed by signal {name}"
    return f"worker process exited with code {exitcode} before finishing"


# ---------------------------------------------------------------------------------------------- helpers for commands


def stored_config(text: str | None, where: str) -> dict[str, Any]:
    """A config stored in (or imported into) the database, parsed as the untrusted input it is."""
    try:
        raw = json.loads(text or "")
    except (ValueError, RecursionError) as exc:
        raise BadInputError(f"{where} is not valid JSON ({str(exc)[:200]}); it cannot be run") from None
    if not isinstance(raw, dict):
        raise BadInputError(f"{where} must be a JSON object, got {type(raw).__name__}; it cannot be run")
    return raw


def validated_stored_spec(raw: dict[str, Any], where: str) -> SweepSpec:
    """Validate a stored spec with the rules of a spec file, paths confined to data/ included."""
    try:
        return spec_from_dict(raw, restrict_paths=True)
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc}") from None


def spec_for_resume(db: Path, sweep_id: str) -> SweepSpec:
    check_id(sweep_id, "--resume")
    row = store.read_sweep(db, sweep_id)
    if row is None:
        raise BadInputError(f"--resume: no sweep {sweep_id!r} in {db}; `python -m bench ls` lists the sweeps")
    where = f"--resume: sweep {sweep_id}'s stored spec"
    return validated_stored_spec(stored_config(row["spec_json"], where), where)


def spec_for_rerun(
    db: Path, run_id: str, device: str | None = None, dtype: str | None = None, allow_device_change: bool = False
) -> tuple[SweepSpec, str]:
    """The run's config as a one-variant spec, pinned to the device and dtype it ran with.

    A rerun never changes either silently: `device`/`dtype` (the --device/--dtype flags) change them explicitly,
    `allow_device_change` lets this machine pick (auto); otherwise a device this machine lacks is refused.
    """
    check_id(run_id, "rerun RUN_ID")
    runs = store.read_runs(db, run_id=run_id)
    if not runs:
        raise BadInputError(f"rerun: no run {run_id!r} in {db}; `python -m bench ls --runs` lists the runs")
    run = runs[0]
    if not run.config_json:
        raise BadInputError(f"rerun: run {run_id} ({run.name}) was imported ({run.source}) and has no config to rerun")
    where = f"rerun: run {run_id}'s stored config"
    cfg = stored_config(run.config_json, where)
    for key in ("sweep", "variant"):
        if not isinstance(cfg.get(key), dict):
            raise BadInputError(f"{where}.{key}: missing (the config must hold a sweep and a variant table); "
                                "this run cannot be rerun, start a new sweep instead")
    resolved = cfg.get("resolved") if isinstance(cfg.get("resolved"), dict) else {}
    sweep = dict(cfg["sweep"])
    # what it ran with: the resolved values, else the config's, else the run row's; unknown (an imported report)
    # pins nothing (auto)
    was_device = next((d for d in (resolved.get("device"), sweep.get("device"), run.device) if d in DEVICES), "auto")
    was_dtype = next((d for d in (resolved.get("dtype"), sweep.get("dtype"), run.dtype) if d in DTYPES), "auto")
    if allow_device_change:
        sweep["device"], sweep["dtype"] = device or "auto", dtype or "auto"
    else:
        sweep["device"], sweep["dtype"] = device or was_device, dtype or was_dtype
    raw = {"title": f"rerun of {run.name}", "sweep": sweep, "variants": [cfg["variant"]]}
    spec = validated_stored_spec(raw, where)
    if not (device or allow_device_change):
        try:
            resolve_device_dtype(spec.sweep.device, spec.sweep.dtype)
        except BadInputError as exc:
            raise BadInputError(
                f"rerun: run {run_id} ({run.name}) ran on {was_device} in {was_dtype}, which this machine cannot "
                f"give ({exc}). A rerun never changes the device or dtype silently: run it where {was_device} is, "
                "or pass --device cpu --dtype float32 (or --allow-device-change) to measure it here as a "
                "different configuration"
            ) from None
    return spec, run.name
