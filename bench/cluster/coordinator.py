"""The coordinator: `bench sweep --cluster ...` spreads one sweep's variants over the GPUs of a Dask cluster.

It stays the only DuckDB writer. Each variant is one Dask task (bench.cluster.task) that runs the variant in a
fresh process on one GPU; the task streams every point back through a Dask Queue and the coordinator writes it
as it arrives. A point is written only while it is still missing from its job (a retried or stale task cannot
write it twice). Variants go largest first (estimated memory), each only to workers whose GPU holds it.

Faults: a worker that leaves (killed, host down) or a task that fails turns its variant's missing points into
error rows naming the worker (`--resume` runs exactly those again); cancel (SIGTERM, from `bench cancel` or the
dashboard) sets the control Variable every task polls, cancels every future and shuts a local cluster down; an
unreachable scheduler is a BadInputError (rc 2) after CONNECT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.cluster.gpus import WorkerGpu, gpu_count
from bench.cluster.target import ClusterTarget
from bench.cluster.task import TaskSpec, probe, run_variant_task
from bench.errors import BadInputError, SweepBusyError
from bench.locks import try_lock
from bench.paths import logs_dir_for
from bench.progress import ProgressBar
from bench.records import PointRecord, RunRecord, utcnow
from bench.runner import (
    HEARTBEAT_S,
    RETRY_STATUSES,
    SweepOutcome,
    SweepRunner,
    _Cancelled,
    _research_plan,
    new_id,
    preflight,
)
from bench.spec import SweepSpec, VariantSpec
from bench.worker import RunInfo

CONNECT_TIMEOUT_S = 4.0
LOST_PREFIX = "worker lost before this point"
CONTROL_EVERY_S = 1.0
WORKER_CHECK_S = 1.0
STALE_ENV = "MOE_BENCH_CLUSTER_STALE_S"
STATS_ENV = "MOE_BENCH_CLUSTER_STATS"  # write per-task and per-point cost figures (JSON) to this file at the end
DASK_CUDA_HINT = ("dask-cuda's LocalCUDACluster is not available, so moe-bench starts one Dask worker per GPU itself "
                  "(same pinning). On GPU hosts `pip install dask-cuda==26.10.0` gives LocalCUDACluster.")


def is_lost_point(status: str | None, error: str | None) -> bool:
    """An error row written because a worker died (or never ran the point): `--resume` on a cluster reruns it."""
    return status == "error" and bool(error) and str(error).startswith(LOST_PREFIX)


@dataclass
class _Job:
    variant: VariantSpec
    run: RunRecord
    todo: list[tuple[int, int]]
    gib: float | None
    workers: list[str] | None = None  # eligible worker addresses (None: any)
    future: Any = None
    attempt: str | None = None  # the first attempt that said "start"; others are ignored
    worker: str | None = None
    submitted: float = 0.0
    spawn_s: float | None = None  # submit -> child process started, seconds (coordinator clock)
    start_s: float | None = None  # submit -> task running on its worker
    first_point_s: float | None = None  # submit -> first point stored
    end_s: float | None = None  # submit -> job closed
    exit_s: float | None = None  # submit -> the task's "exit" message (its worker is free again)
    gpu: dict[str, Any] | None = None
    remaining: set[tuple[int, int]] = field(default_factory=set)
    exit: dict[str, Any] | None = None
    final: bool = False
    bar: ProgressBar | None = None


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - a requirement
        raise BadInputError("--cluster needs dask[distributed]: pip install -r requirements.txt") from exc
    return distributed


def start_cluster(target: ClusterTarget, device: str) -> tuple[Any, Any, str]:
    """(client, cluster or None, description). A local cluster is ours to close; an address is not."""
    import dask

    distributed = _import_distributed()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if target.kind == "address":
        try:
            client = distributed.Client(target.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise BadInputError(
                f"--cluster: cannot reach a Dask scheduler at {target.address} within {CONNECT_TIMEOUT_S:.0f} s "
                f"({type(exc).__name__}); start one (`dask scheduler`, dask-jobqueue, dask-kubernetes: see "
                "docs/SCALE.md) or fix the address"
            ) from None
        return client, None, target.address
    gpus = gpu_count() if device != "cpu" else 0
    # A lost worker must fail its task at once (error rows), not rerun it elsewhere behind our back.
    dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.worker.daemon": False})
    common = dict(threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR, memory_limit=0)
    if gpus == 0:
        if device == "cuda":
            raise BadInputError("--cluster local: sweep.device is cuda but this host has no GPU; use device = "
                                "\"cpu\" or run on a GPU host")
        n = target.workers or 1
        cluster = distributed.LocalCluster(n_workers=n, processes=True, env={"CUDA_VISIBLE_DEVICES": ""}, **common)
        desc = f"local cluster of {n} CPU worker processes"
    else:
        n = target.workers or gpus
        if n > gpus:
            raise BadInputError(f"--cluster local:{n}: this host has {gpus} GPU(s); use local:{gpus} or fewer")
        cluster = None
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(range(n)), **common)
            desc = f"LocalCUDACluster of {n} GPU workers"
        except Exception as exc:  # not installed, or its CUDA bindings do not match this driver
            print(f"{DASK_CUDA_HINT} ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr)
            cluster = _gpu_spec_cluster(n, common)
            desc = f"local cluster of {n} GPU workers (moe-bench pinning)"
    client = distributed.Client(cluster, set_as_default=False)
    return client, cluster, desc


def _gpu_spec_cluster(n: int, common: dict[str, Any]):
    """One Nanny-managed worker per GPU, each with CUDA_VISIBLE_DEVICES set to its own card (dask-cuda's rule)."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu{i}": {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0, "name": f"gpu{i}",
                                               "env": {"CUDA_VISIBLE_DEVICES": ",".join(
                                                   str((i + j) % n) for j in range(n))}}}
        for i in range(n)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=common["silence_logs"])


class ClusterSweepRunner(SweepRunner):
    """SweepRunner whose variants run as Dask tasks on the cluster's GPUs, in parallel."""

    def __init__(self, db: Path, target: ClusterTarget, progress: bool = True,
                 gpu_mem_cap_gib: float | None = None) -> None:
        super().__init__(db, progress=progress, gpu_mem_cap_gib=gpu_mem_cap_gib)
        self.target = target
        self.client: Any = None
        self.cluster: Any = None
        self.inventory: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, _Job] = {}
        self.overheads: list[float] = []
        self.retry_errors = False
        self.exit_now = False  # the CLI should os._exit after its summary (a local cluster was killed, not closed)
        self.write_s: list[float] = []  # seconds per DuckDB write (a drain's points + the sweep count)
        self.write_batches: list[int] = []  # points per write
        self.pending: list[tuple[_Job, PointRecord]] = []
        self.suspects: set[str | None] = set()
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ entry

    def run(self, spec: SweepSpec, sweep_id: str | None = None, resume: bool = False,
            rerun_of: dict[str, str] | None = None, retry_errors: bool = False) -> SweepOutcome:
        if not resume:
            preflight(spec)
        sweep_id = sweep_id or new_id("s")
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            device = "cpu" if spec.sweep.device == "cpu" else ("auto" if spec.sweep.device == "auto" else "cuda")
            self.client, self.cluster, desc = start_cluster(self.target, device)
            self.inventory = self.client.run(probe)
            if not self.inventory:
                raise BadInputError(f"--cluster {self.target}: the scheduler has no workers; start some "
                                    "(`dask cuda worker ADDRESS`) and try again")
            device, dtype = self._resolve_device_dtype(spec)
            self.plan = _research_plan(self.db, spec, device)  # calibrated prunes, text prompts, quality phase
            if self.progress:
                print(f"[cluster] {desc}: {len(self.inventory)} workers, device {device}", file=sys.stderr)
            estimates = self._memory_preflight(spec, device, dtype)
            sweep_lock_path = logs_dir_for(self.db) / f"sweep-{sweep_id}.lock"
            sweep_lock = try_lock(sweep_lock_path, f"{sweep_id} pid {os.getpid()}")
            if sweep_lock is None:
                raise SweepBusyError(f"sweep {sweep_id} is already running in another process")
            self.locks.append(sweep_lock)
            self._estimates = estimates
            self.retry_errors = retry_errors
            return self._run_locked(spec, sweep_id, resume, device, dtype, str(sweep_lock_path), rerun_of or {},
                                    retry_errors)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._release()
            self._close()

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancelled = True
        if self.cluster is not None:  # at once, not when the loop next looks: the variant processes die with them
            self._kill_local_workers()

    def _close(self) -> None:
        if self.cluster is not None:
            # A local cluster is ours: kill its workers (any variant process dies with its worker: PDEATHSIG) and
            # let the CLI exit at once. A graceful close waits on nanny and scheduler timeouts (3-20 s on a busy
            # machine), which would make cancel slow; the database is complete by now.
            self._kill_local_workers()
            self.exit_now = True
            return
        for obj in (self.client, self.cluster):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close(timeout=3)
        self.client = self.cluster = None

    def _kill_local_workers(self) -> None:
        for nanny in list(getattr(self.cluster, "workers", {}).values()):
            proc = getattr(getattr(nanny, "process", None), "process", None)
            pid = getattr(proc, "pid", None)
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _sweep_fields(self) -> dict[str, Any]:
        return {"cluster": str(self.target), "device_key": f"cluster {self.target}"}

    # ------------------------------------------------------------------ preflight

    def _gpus(self) -> dict[str, WorkerGpu]:
        return {addr: WorkerGpu(**info["gpu"]) for addr, info in self.inventory.items()}

    def _resolve_device_dtype(self, spec: SweepSpec) -> tuple[str, str]:
        from bench.models.loading import torch_dtype

        kinds = {g.kind for g in self._gpus().values()}
        wanted = spec.sweep.device
        if wanted == "cpu":
            device = "cpu"
        elif kinds == {"cuda"}:
            device = "cuda"
        elif wanted == "cuda":
            cpu_only = sorted(a for a, g in self._gpus().items() if g.kind != "cuda")
            raise BadInputError(f"sweep.device is cuda but Dask worker(s) {', '.join(cpu_only)} have no GPU; start "
                                "them with `dask cuda worker` or use device = \"cpu\"")
        else:
            device = "cpu"
        return device, str(torch_dtype(spec.sweep.dtype, device)).removeprefix("torch.")

    def _memory_preflight(self, spec: SweepSpec, device: str, dtype: str) -> dict[str, float | None]:
        """Estimated GiB per variant (bench.models.footprint: the serial runner's own estimate, so both launchers
        agree); BadInputError naming a variant that fits on none of the cluster's GPUs."""
        from bench.models.footprint import GIB, estimate

        if device != "cuda":
            return {v.name: None for v in spec.variants}
        biggest = max((g.total_gib or 0.0) for g in self._gpus().values())
        batch = max(spec.sweep.batch_sizes)
        out: dict[str, float | None] = {}
        for i, v in enumerate(spec.variants):
            need = estimate(v.model, dtype, batch, spec.sweep.prompt_len, spec.sweep.new_tokens)
            gib = need.total_bytes / GIB
            if gib > biggest:
                raise BadInputError(
                    f"variants[{i}] ({v.name}): needs about {gib:.1f} GiB at batch {batch} "
                    f"({need.weights_bytes / GIB:.1f} GiB of {dtype} weights, loaded whole before pruning, + "
                    f"{need.kv_bytes / GIB:.2f} GiB KV cache) but the largest GPU in the cluster has {biggest:.1f} "
                    "GiB; drop the large batch sizes, use a smaller model, or add bigger GPUs"
                )
            out[v.name] = gib
        return out

    # ------------------------------------------------------------------ the sweep

    def _todo(self, run_id: str, spec: SweepSpec) -> list[tuple[int, int]]:
        rows = store.point_statuses(self.db, run_id)
        redo = RETRY_STATUSES if self.retry_errors else ()
        keep = {k for k, (status, error) in rows.items() if not is_lost_point(status, error) and status not in redo}
        return [(b, r) for b in spec.sweep.batch_sizes for r in range(spec.sweep.repeats) if (b, r) not in keep]

    def _run_all(self, spec: SweepSpec, sweep_id: str, device: str, dtype: str,
                 runs_by_name: dict[str, RunRecord], outcome: SweepOutcome, rerun_of: dict[str, str],
                 retry_errors: bool = False) -> None:
        from distributed import Queue, Variable

        gpus = self._gpus()
        jobs: list[_Job] = []
        for v in spec.variants:
            run = runs_by_name.get(v.name) or self._new_run(v, spec, sweep_id, device, dtype, rerun_of.get(v.name))
            outcome.run_ids.append(run.run_id)
            todo = self._todo(run.run_id, spec)
            if not todo:
                continue
            gib = self._estimates.get(v.name)
            eligible = None if gib is None else [a for a, g in gpus.items() if (g.total_gib or 0) >= gib]
            jobs.append(_Job(variant=v, run=run, todo=todo, gib=gib, workers=eligible, remaining=set(todo)))
        # Largest first: the biggest variants start at once, small ones fill the GPUs that free up.
        jobs.sort(key=lambda j: (-(j.gib or 0.0), -self._size_rank(j.variant)))
        self.jobs = {j.run.run_id: j for j in jobs}
        queue_name, control_name = f"moe-bench-points-{sweep_id}", f"moe-bench-control-{sweep_id}"
        self.queue = Queue(queue_name, client=self.client)
        self.control = Variable(control_name, client=self.client)
        self.seq = 0
        self.stop: list[str] = []
        self._set_control()
        stale = float(os.environ.get(STALE_ENV, "60"))
        for rank, job in enumerate(jobs):
            v = job.variant
            wj = self._worker_job(v, spec, job.run, device, dtype, job.todo)
            job.submitted = time.time()
            ts = TaskSpec(sweep_id=sweep_id, job_key=job.run.run_id, job=wj, queue_name=queue_name,
                          control_name=control_name, stale_s=stale, submitted=job.submitted)
            job.future = self.client.submit(run_variant_task, ts, key=f"moe-bench-{job.run.run_id}-{new_id('')}",
                                            pure=False, retries=0, priority=len(jobs) - rank, workers=job.workers,
                                            allow_other_workers=False)
            store.update_run(self.db, job.run.run_id, state="pending")
        self._loop(sweep_id)

    @staticmethod
    def _size_rank(v: VariantSpec) -> float:
        return float(v.prune.experts if v.prune and v.prune.experts else 1e6) * 10 + v.top_k

    def _set_control(self, cancel: bool = False) -> None:
        self.seq += 1
        with contextlib.suppress(Exception):
            self.control.set({"seq": self.seq, "cancel": cancel, "stop": list(self.stop)})

    def _loop(self, sweep_id: str) -> None:
        last_control = last_workers = last_beat = time.monotonic()
        while not all(j.final for j in self.jobs.values()):
            if self.cancelled:
                self._cancel_all(sweep_id)
                raise _Cancelled
            finished = [j for j in self.jobs.values() if not j.final and j.future.status in ("finished", "error",
                                                                                            "cancelled", "lost")]
            got = self._drain(sweep_id)
            for job in finished:
                self._finish(job, sweep_id)
            now = time.monotonic()
            if now - last_workers > WORKER_CHECK_S:
                self._check_workers(sweep_id)
                last_workers = now
            if now - last_control > CONTROL_EVERY_S:
                self._set_control()
                last_control = now
            if now - last_beat > HEARTBEAT_S:
                running = sorted(j.variant.name for j in self.jobs.values() if j.worker and not j.final)
                store.heartbeat(self.db, sweep_id, current_variant=", ".join(running)[:200] or None)
                last_beat = now
            if not got:
                time.sleep(0.2)
        self._drain(sweep_id)
        self._write_stats()

    def _write_stats(self) -> None:
        path = os.environ.get(STATS_ENV)
        if path:
            Path(path).write_text(json.dumps(self.stats(), indent=1, default=str))

    def _drain(self, sweep_id: str) -> int:
        try:
            items = self.queue.get(batch=True)
        except Exception:
            return 0
        self.pending: list[tuple[_Job, PointRecord]] = []
        for raw in items:
            self._handle(pickle.loads(raw), sweep_id)
        if self.pending:  # every point of this drain in one transaction: the write rate scales with GPUs
            t = time.perf_counter()
            store.insert_points(self.db, [p for _, p in self.pending], sweep_id=sweep_id)
            took = time.perf_counter() - t
            self.write_s.append(took)
            self.write_batches.append(len(self.pending))
            for job, p in self.pending:
                if job.first_point_s is None:
                    job.first_point_s = time.time() - job.submitted
                if job.bar is not None:
                    tps = f" {p.total_tps:.1f} tok/s" if p.total_tps else ""
                    job.bar.advance(f"batch {p.batch} #{p.repeat} {p.status}{tps}")
            self.pending = []
        return len(items)

    def _handle(self, msg: dict[str, Any], sweep_id: str) -> None:
        job = self.jobs.get(msg["job"])
        if job is None or job.final:
            return
        kind, payload = msg["kind"], msg["payload"]
        if kind == "start":
            if job.attempt is not None and job.attempt != msg["attempt"]:
                return  # a rerun the scheduler started on its own: the coordinator already has this job
            job.attempt, job.worker = msg["attempt"], msg["worker"]
            job.start_s, job.gpu = time.time() - job.submitted, payload["gpu"]
            gpu = WorkerGpu(**payload["gpu"])
            store.update_run(self.db, job.run.run_id, state="running", started_at=utcnow(), host=gpu.host,
                             gpu_index=gpu.index, gpu_uuid=gpu.uuid, worker_address=job.worker,
                             device_name=gpu.name if gpu.kind == "cuda" else None)
            job.bar = ProgressBar(f"{job.variant.name} @ {self._where(job.worker)}", total=len(job.todo),
                                  enabled=self.progress)
            return
        if msg["attempt"] != job.attempt:
            return
        if kind == "waiting":
            if self.progress:
                print(f"[{job.variant.name}] waiting for {payload['device']} on {self._where(job.worker)}: held by "
                      f"{payload['owner'] or 'another sweep'}", file=sys.stderr)
        elif kind == "spawned":
            job.spawn_s = max(0.0, time.time() - job.submitted)
            self.overheads.append(job.spawn_s)
        elif kind == "run" and isinstance(payload, RunInfo):
            self._record_cluster_run_info(job.run, payload)
        elif kind == "point" and isinstance(payload, PointRecord):
            key = (payload.batch, payload.repeat)
            if payload.run_id != job.run.run_id or key not in job.remaining:
                return  # not ours, or already written: every point is written once
            job.remaining.discard(key)
            self.pending.append((job, payload))
        elif kind == "exit":
            job.exit = payload
            job.exit_s = time.time() - job.submitted

    def _where(self, address: str | None) -> str:
        info = self.inventory.get(address or "", {})
        gpu = info.get("gpu") or {}
        if gpu.get("kind") == "cuda":
            return f"{gpu.get('host')} GPU {gpu.get('index')}"
        return f"{gpu.get('host', '?')} {info.get('name', address)}"

    def _record_cluster_run_info(self, run: RunRecord, info: RunInfo) -> None:
        self._record_run_info(run, info)
        e = info.env
        store.update_run(self.db, run.run_id, gpu_index=e.gpu_index, gpu_uuid=e.gpu_uuid,
                         worker_address=e.worker_address)

    def _finish(self, job: _Job, sweep_id: str, reason: str | None = None) -> None:
        """Close a job: its missing points become error rows naming the worker and why."""
        self._drain(sweep_id)
        if job.final:
            return
        if reason is None:
            reason = self._failure_reason(job)
        job.final = True
        job.end_s = time.time() - job.submitted
        where = job.worker or "no worker"
        for batch, repeat in sorted(job.remaining):
            store.insert_point(self.db, PointRecord(
                run_id=job.run.run_id, batch=batch, repeat=repeat, status="error",
                error=f"{LOST_PREFIX} (worker {where}): {reason}"[:3000], started_at=utcnow(), finished_at=utcnow(),
            ), sweep_id=sweep_id)
        failed = bool(job.remaining)
        if failed:
            print(f"[{job.variant.name}] {reason.splitlines()[0] if reason else 'failed'} (worker {where}); "
                  f"{len(job.remaining)} point(s) recorded as errors; `--resume {sweep_id}` runs them again",
                  file=sys.stderr)
        job.remaining.clear()
        store.update_run(self.db, job.run.run_id, state="failed" if failed else "done", finished_at=utcnow(),
                         **({"notes": reason[:2000]} if failed and reason else {}))
        if job.bar is not None:
            job.bar.close()

    def _failure_reason(self, job: _Job) -> str:
        ex = job.exit or {}
        if ex.get("fatal"):
            return str(ex["fatal"])
        if ex.get("reason"):
            return str(ex["reason"])
        if ex.get("code") not in (None, 0):
            code = int(ex["code"])
            return (f"variant process killed by signal {signal.Signals(-code).name}" if code < 0
                    else f"variant process exited with code {code}")
        status = job.future.status if job.future is not None else "?"
        if status == "error":
            try:
                exc = job.future.exception(timeout=1)
                return f"{type(exc).__name__}: {exc}"
            except Exception as err:
                return f"task failed ({type(err).__name__})"
        return f"task ended ({status}) before these points"

    def _check_workers(self, sweep_id: str) -> None:
        """Close the jobs of workers that left. Asks the scheduler directly (Client.scheduler_info can return a
        cached identity without workers when a query times out), and a worker must be missing twice in a row."""
        try:
            info = self.client.sync(self.client.scheduler.identity, n_workers=-1)
            alive = set(info["workers"])
        except Exception:
            return
        missing = {j.worker for j in self.jobs.values() if not j.final and j.worker and j.worker not in alive}
        confirmed, self.suspects = missing & self.suspects, missing
        for job in self.jobs.values():
            if not job.final and job.worker in confirmed:
                self.stop.append(job.run.run_id)  # a rerun elsewhere exits at once; --resume decides instead
                self._set_control()
                with contextlib.suppress(Exception):
                    self.client.cancel([job.future], force=True)
                self._finish(job, sweep_id, reason=f"Dask worker {job.worker} left the cluster (killed or its "
                                                   "host went down)")

    def _cancel_all(self, sweep_id: str) -> None:
        self._set_control(cancel=True)
        if self.cluster is not None:
            self._kill_local_workers()  # the variant processes die with their workers, before any bookkeeping
        futures = [j.future for j in self.jobs.values() if j.future is not None and not j.final]
        with contextlib.suppress(Exception):
            self.client.cancel(futures, force=True)
        # The tasks poll the control value every second and kill their processes; wait for them to say so.
        # Points that arrive meanwhile are real measurements and are kept. A local cluster's workers are killed
        # right after (their variant processes die with them), so only a remote cluster is waited for.
        deadline = time.monotonic() + (0.0 if self.cluster is not None else 3.0)
        while time.monotonic() < deadline:
            self._drain(sweep_id)
            if not [j for j in self.jobs.values() if j.worker and not j.final and j.exit is None]:
                break
            time.sleep(0.1)
        open_jobs = [j for j in self.jobs.values() if not j.final]
        store.update_runs(self.db, [j.run.run_id for j in open_jobs], state="failed", finished_at=utcnow(),
                          notes="cancelled by the user")
        for job in open_jobs:
            job.final = True

    def stats(self) -> dict[str, Any]:
        """Cost figures for docs/SCALE.md: per task (submit -> running -> process started -> first point -> end,
        seconds on the coordinator's clock) and per point (the coordinator's DuckDB write)."""
        w = sorted(self.write_s)
        # Scheduler overhead of a task: from the moment its GPU was free (submit, or the end of the task before it
        # on the same worker) to its variant process starting. Waiting for a busy GPU is not overhead.
        overhead: dict[str, float] = {}
        by_worker: dict[str, list[_Job]] = {}
        for j in self.jobs.values():
            if j.worker and j.start_s is not None:
                by_worker.setdefault(j.worker, []).append(j)
        for jobs in by_worker.values():
            ready = 0.0
            for j in sorted(jobs, key=lambda j: j.start_s or 0.0):
                if j.spawn_s is not None and j.start_s is not None:
                    # the exit message is seen a drain late, so never count from before the task started
                    overhead[j.run.run_id] = j.spawn_s - (ready if j.start_s >= ready else j.start_s)
                ready = j.exit_s if j.exit_s is not None else (j.end_s if j.end_s is not None else ready)
        o = sorted(overhead.values())
        return {
            "host": socket.gethostname(), "cluster": str(self.target), "workers": len(self.inventory),
            "wall_s": time.monotonic() - self.t0,
            "tasks": [{"variant": j.variant.name, "worker": j.worker, "gpu": j.gpu, "points": len(j.todo),
                       "submit_to_start_s": j.start_s, "submit_to_process_s": j.spawn_s,
                       "submit_to_first_point_s": j.first_point_s, "submit_to_end_s": j.end_s,
                       "overhead_s": overhead.get(j.run.run_id)}
                      for j in self.jobs.values()],
            "overhead_s_median": o[len(o) // 2] if o else None, "overhead_s_max": o[-1] if o else None,
            "write_s_median": w[len(w) // 2] if w else None, "write_s_max": w[-1] if w else None,
            "writes": len(w), "points_written": sum(self.write_batches),
            "points_per_write_max": max(self.write_batches) if self.write_batches else None,
        }
