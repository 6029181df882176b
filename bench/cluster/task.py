"""The Dask task: one variant on the worker's GPU, in a fresh child process (bench.cluster.child).

Runs inside a Dask worker; imports neither duckdb nor torch. Steps:
  1. describe the worker's GPU and tell the coordinator ("start");
  2. take this host's device lock for that GPU (the same lock file serial sweeps take), waiting while another
     sweep holds it ("waiting");
  3. start the child pinned to the GPU (CUDA_VISIBLE_DEVICES), relay every message it writes to the
     coordinator's Dask Queue as it arrives ("run", "point"), and finish with "exit";
  4. meanwhile poll the coordinator's control Variable: cancel, a stop for this job (the coordinator gave up on
     it), or a coordinator that stopped beating all kill the child's process group at once.
Every message carries the job key and an attempt id, so the coordinator can ignore a rerun it did not ask for.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.cluster.child import read_frame
from bench.cluster.gpus import WorkerGpu, worker_gpu
from bench.locks import lock_owner, try_lock
from bench.paths import PROJECT_ROOT, device_locks_dir
from bench.worker import RunInfo, WorkerJob

POLL_S = 0.5
CONTROL_EVERY_S = 1.0


@dataclass
class TaskSpec:
    """What the coordinator submits: the worker job plus the names of its queue and control variable."""

    sweep_id: str
    job_key: str  # the run id: one task per run
    job: WorkerJob
    queue_name: str
    control_name: str
    stale_s: float = 60.0  # kill the child when the coordinator's control value has not changed for this long
    submitted: float = 0.0  # coordinator's time.time() at submit (same-host overhead figures)


def probe(dask_worker: Any) -> dict[str, Any]:
    """Run on every worker by the coordinator (client.run passes the worker): its GPU, host and name."""
    return {"gpu": worker_gpu().to_dict(), "name": str(dask_worker.name), "nthreads": dask_worker.state.nthreads}


class _Control:
    """The coordinator's control Variable, read at most once a second."""

    def __init__(self, name: str, job_key: str, stale_s: float) -> None:
        from distributed import Variable

        self.var = Variable(name)
        self.job_key = job_key
        self.stale_s = stale_s
        self.seq: Any = None
        self.changed = time.monotonic()
        self.checked = 0.0
        self.verdict: str | None = None

    def stop_reason(self) -> str | None:
        now = time.monotonic()
        if self.verdict is not None or now - self.checked < CONTROL_EVERY_S:
            return self.verdict
        self.checked = now
        try:
            value = self.var.get(timeout=2)
        except Exception:
            value = None
        if isinstance(value, dict):
            if value.get("seq") != self.seq:
                self.seq, self.changed = value.get("seq"), now
            if value.get("cancel"):
                self.verdict = "cancelled by the user"
            elif self.job_key in (value.get("stop") or ()):
                self.verdict = "stopped by the coordinator"
        if self.verdict is None and now - self.changed > self.stale_s:
            self.verdict = f"the coordinator stopped answering for {self.stale_s:.0f} s"
        return self.verdict


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()


def _spawn(job: WorkerJob, gpu: WorkerGpu) -> tuple[subprocess.Popen, Any]:
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, MOE_BENCH_PARENT_PID=str(os.getpid()), PYTHONUNBUFFERED="1")
    if gpu.kind == "cuda" and gpu.visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu.visible
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + path if path else "")
    argv = [sys.executable, "-m", "bench.cluster.child", str(write_fd), "--run", job.run_id,
            "--variant", job.variant_name]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env, cwd=str(PROJECT_ROOT),
                                start_new_session=True)
    finally:
        os.close(write_fd)
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
    proc.stdin.close()
    return proc, os.fdopen(read_fd, "rb")


def run_variant_task(spec: TaskSpec) -> dict[str, Any]:
    """The Dask task. Returns a summary; every point has already gone to the coordinator through the queue."""
    from distributed import Queue, get_worker

    worker = get_worker()
    attempt = uuid.uuid4().hex[:10]
    out = Queue(spec.queue_name)
    gpu = worker_gpu()

    def send(kind: str, payload: Any = None) -> None:
        out.put(pickle.dumps({"job": spec.job_key, "attempt": attempt, "kind": kind, "payload": payload,
                              "worker": worker.address, "t": time.time()}))

    send("start", {"gpu": gpu.to_dict(), "worker_name": str(worker.name), "pid": os.getpid()})
    control = _Control(spec.control_name, spec.job_key, spec.stale_s)
    key = gpu.lock_key(str(worker.name))
    lock_path = device_locks_dir() / f"device-{key}.lock"
    lock = None
    told = False
    while lock is None:
        reason = control.stop_reason()
        if reason:
            send("exit", {"code": None, "reason": reason, "fatal": None})
            return {"job": spec.job_key, "reason": reason}
        lock = try_lock(lock_path, f"{spec.sweep_id} {spec.job.variant_name} worker {worker.address} "
                                   f"pid {os.getpid()}")
        if lock is None:
            if not told:
                send("waiting", {"device": key, "owner": lock_owner(lock_path)})
                told = True
            time.sleep(POLL_S)
    fatal: str | None = None
    reason: str | None = None
    try:
        proc, stream = _spawn(spec.job, gpu)
        send("spawned", {"pid": proc.pid, "t": time.time()})
        inbox: queue.Queue = queue.Queue()

        def pump() -> None:
            while True:
                message = read_frame(stream)
                inbox.put(message)
                if message is None:
                    return

        threading.Thread(target=pump, name="bench-child-reader", daemon=True).start()
        while True:
            try:
                message = inbox.get(timeout=POLL_S)
            except queue.Empty:
                message = ...
            if message is None:
                break
            if message is not ...:
                kind, payload = message
                if kind == "run" and isinstance(payload, RunInfo):
                    payload.env.gpu_index = gpu.index
                    payload.env.gpu_uuid = gpu.uuid
                    payload.env.worker_address = worker.address
                    send("run", payload)
                elif kind == "point":
                    send("point", payload)
                elif kind == "fatal":
                    fatal = str(payload)
            reason = control.stop_reason()
            if reason:
                _kill_group(proc)
                break
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = proc.wait(timeout=5)
        stream.close()
    finally:
        lock.release()
    send("exit", {"code": code, "reason": reason, "fatal": fatal})
    return {"job": spec.job_key, "code": code, "reason": reason}
