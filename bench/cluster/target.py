"""The `--cluster` value (and the spec's `sweep.cluster`): where a sweep runs. Parsing only; no Dask import.

  (none)            this GPU, in the bench process's own worker (no Dask)
  local             a Dask cluster of this host: one worker per GPU (one CPU worker when there is no GPU)
  local:N           the same with N workers (the first N GPUs; N CPU worker processes on a CPU-only host)
  tcp://host:8786   an existing Dask scheduler (dask-jobqueue, dask-kubernetes, `dask scheduler`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench.errors import BadInputError

_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+(:\d+)?/?$")
HELP = "local (every GPU of this host), local:N (N workers) or a scheduler address such as tcp://host:8786"


@dataclass(frozen=True)
class ClusterTarget:
    kind: str  # "local" | "address"
    workers: int | None = None  # local:N
    address: str | None = None

    def __str__(self) -> str:
        if self.kind == "address":
            return str(self.address)
        return "local" if self.workers is None else f"local:{self.workers}"


def parse_cluster(value: str | None, where: str = "--cluster") -> ClusterTarget | None:
    """None/"" -> None (this GPU); else a ClusterTarget. BadInputError names `where` and the accepted forms."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or text in ("none", "this"):
        return None
    if text == "local":
        return ClusterTarget("local")
    if text.startswith("local:"):
        n = text.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise BadInputError(f"{where}: {text!r}: N in local:N must be a whole number >= 1, e.g. local:2")
        return ClusterTarget("local", workers=int(n))
    if "://" not in text and re.match(r"^[\w.-]+:\d+$", text):
        text = "tcp://" + text
    if _ADDRESS.match(text):
        return ClusterTarget("address", address=text.rstrip("/"))
    raise BadInputError(f"{where}: {value!r} is not a cluster; use {HELP}")
