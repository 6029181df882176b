"""The dashboard's side of scale-out: the New sweep form's "Run on" choice, and a cluster sweep's GPU lanes.

The page only lays these out. The choice becomes a validated `--cluster` value (or the spec's sweep.cluster);
nothing typed into the form reaches a shell (bench.ui.launch passes an argument list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.lanes import gpu_lanes, lanes_frame
from bench.cluster.target import parse_cluster
from bench.errors import BadInputError
from bench.store import queries

THIS_GPU, THIS_HOST, ADDRESS = "this GPU", "all GPUs of this host", "a cluster address"
WHERE_OPTIONS: tuple[str, ...] = (THIS_GPU, THIS_HOST, ADDRESS)
WHERE_HELP = ("this GPU: one variant after another on this machine's GPU (or CPU). All GPUs of this host: a local "
              "Dask cluster with one worker per GPU, variants in parallel. A cluster address: a running Dask "
              "scheduler (Slurm/Kubernetes, see docs/SCALE.md), e.g. tcp://head-node:8786.")


def cluster_choice(where: str, address: str = "") -> str | None:
    """The `--cluster` value for the form's choice; BadInputError (naming the field) for a bad address."""
    if where == THIS_GPU:
        return None
    if where == THIS_HOST:
        return "local"
    if where != ADDRESS:
        raise BadInputError(f"Run on: {where!r} is not one of {', '.join(WHERE_OPTIONS)}")
    text = (address or "").strip()
    if not text:
        raise BadInputError("Cluster address: empty; give the Dask scheduler's address, e.g. tcp://head-node:8786")
    target = parse_cluster(text, where="Cluster address")
    if target is None or target.kind != "address":
        raise BadInputError(f"Cluster address: {text!r} is not a scheduler address; write e.g. tcp://head-node:8786")
    return str(target)


def lanes_for(db: Path | str, sweep_id: str, row: dict[str, Any]) -> pd.DataFrame:
    """The GPU lanes of a cluster sweep (empty for a serial sweep, or before a task has started)."""
    if not row.get("cluster"):
        return lanes_frame([])
    try:
        spec = json.loads(row.get("spec_json") or "{}")
        sweep = spec.get("sweep") or {}
        n_batches, repeats = len(sweep.get("batch_sizes") or [1]), int(sweep.get("repeats") or 1)
    except (ValueError, TypeError):
        n_batches, repeats = 1, 1
    return lanes_frame(gpu_lanes(queries.sweep_run_progress(db, sweep_id), n_batches, repeats))
