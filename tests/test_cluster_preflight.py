"""The cluster coordinator's memory preflight: the serial runner's estimate (bench.models.footprint), per GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster.coordinator import ClusterSweepRunner
from bench.cluster.gpus import WorkerGpu
from bench.cluster.target import parse_cluster
from bench.errors import BadInputError
from bench.models.footprint import GIB, estimate
from bench.spec import spec_from_dict

MODEL = "synthetic:gpt-oss-20b"


def _runner(tmp_path: Path, gpu_gib: list[float]) -> ClusterSweepRunner:
    runner = ClusterSweepRunner(tmp_path / "c.duckdb", parse_cluster("local:2", where="--cluster"), progress=False)
    runner.inventory = {f"tcp://10.0.0.{i}:1": {"gpu": WorkerGpu(host=f"h{i}", kind="cuda", index=0, name="H",
                                                                 total_gib=g).to_dict()}
                        for i, g in enumerate(gpu_gib)}
    return runner


def _spec(batch: int):
    return spec_from_dict({"sweep": {"prompt_len": 256, "new_tokens": 64, "batch_sizes": [1, batch],
                                     "device": "cuda"},
                           "variants": [{"name": "base", "model": MODEL, "top_k": 4}]})


def test_cluster_preflight_uses_the_serial_estimate(tmp_path: Path) -> None:
    gib = _runner(tmp_path, [141.0])._memory_preflight(_spec(32), "cuda", "bfloat16")["base"]
    assert gib == pytest.approx(estimate(MODEL, "bfloat16", 32, 256, 64).total_bytes / GIB)
    assert 38 < gib < 48  # ~21B params in bf16 (the whole model is loaded before pruning) + a small KV cache


def test_cluster_preflight_refuses_a_variant_no_gpu_holds(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as err:
        _runner(tmp_path, [24.0, 40.0])._memory_preflight(_spec(32), "cuda", "bfloat16")
    msg = str(err.value)
    assert "variants[0] (base)" in msg and "largest GPU in the cluster has 40.0 GiB" in msg and "batch 32" in msg


def test_cluster_preflight_skips_cpu(tmp_path: Path) -> None:
    assert _runner(tmp_path, [1.0])._memory_preflight(_spec(32), "cpu", "float32") == {"base": None}
