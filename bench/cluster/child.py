"""The fresh process that runs one variant for a Dask task: `python -m bench.cluster.child FD`.

It reads a pickled WorkerJob on stdin, runs `bench.worker.run_job` (the same code a serial sweep runs) and writes
each message ("run", "point", "done", "fatal") as a length-prefixed pickle to file descriptor FD, so nothing the
model or a library prints on stdout can garble the stream. It asks the kernel to kill it when its parent (the Dask
worker) dies, so a lost worker never leaves a model running on the GPU.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import traceback
from typing import Any, BinaryIO

_HEADER = struct.Struct("!I")


def write_frame(fh: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)) + data)
    fh.flush()


def read_frame(fh: BinaryIO) -> Any | None:
    """The next message, or None at end of stream (the child exited or was killed)."""
    head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = fh.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): the kernel kills this process when the thread that started it exits."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    parent = int(os.environ.get("MOE_BENCH_PARENT_PID", "0") or 0)
    die_with_parent()
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = os.fdopen(int(argv[0]), "wb")
    job = pickle.load(sys.stdin.buffer)

    from bench.worker import run_job

    try:
        run_job(job, lambda message: write_frame(out, message))
        write_frame(out, ("done", None))
    except BaseException as exc:  # the variant cannot run at all
        write_frame(out, ("fatal", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)[-3000:]}"))
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
