"""Measurement on CPU: bandwidth, RSS-based memory tracking, NVML degrading to None, the env fingerprint."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path

import pytest
import torch
import transformers

from bench import __version__
from bench.cli import main
from bench.measure.bandwidth import CPU_COPY_BYTES, measure_bandwidth
from bench.measure.env import GIT_COMMIT_ENV, fingerprint, git_commit
from bench.measure.memory import MEMORY_FIELDS, MemoryTracker, rss_bytes
from bench.measure.nvml import NvmlSampler, NvmlWindow
from bench.records import PointRecord

MIB = 2**20


def test_cpu_bandwidth_is_positive_and_bounded() -> None:
    """A plausible figure from a bounded amount of work: six copies of CPU_COPY_BYTES (256 MiB). The time bound only
    guards against a hang: under `make test`'s parallel workers on two cores the probe took up to 7 s where it takes
    well under one alone, so a tight bound here measured the machine's load, not the probe."""
    assert CPU_COPY_BYTES <= 256 * MIB
    t0 = time.perf_counter()
    bw = measure_bandwidth("cpu")
    elapsed = time.perf_counter() - t0
    assert 1e8 < bw < 1e13  # bytes/s: somewhere between 0.1 GB/s and 10 TB/s
    assert elapsed < 60.0


def _touch(nbytes: int) -> torch.Tensor:
    return torch.ones(nbytes // 4, dtype=torch.float32)  # written, so resident


def test_memory_tracker_cpu_uses_rss_and_none_for_cuda_fields() -> None:
    tracker = MemoryTracker("cpu")
    tracker.baseline()
    weights = _touch(96 * MIB)  # the "model"
    weights_bytes = tracker.after_load()
    assert weights_bytes is not None and weights_bytes >= 80 * MIB

    tracker.reset_peak()
    scratch = _touch(192 * MIB)  # a point's transient activations
    del scratch
    busy = tracker.point_stats()
    assert set(busy) == set(MEMORY_FIELDS)
    assert busy["mem_peak_alloc_gib"] is None
    assert busy["mem_peak_reserved_gib"] is None
    assert busy["mem_nvml_peak_gib"] is None
    assert busy["mem_weights_gib"] == pytest.approx(weights_bytes / 2**30)
    assert busy["mem_used_gib"] * 2**30 >= weights_bytes + 150 * MIB
    assert tracker.used_source == "rss" and tracker.weights_source == "rss"

    # the peak resets per point: a quiet point does not inherit the previous point's transient peak
    tracker.reset_peak()
    quiet = tracker.point_stats(NvmlWindow())
    assert quiet["mem_nvml_peak_gib"] is None
    assert quiet["mem_used_gib"] * 2**30 <= busy["mem_used_gib"] * 2**30 - 150 * MIB
    assert quiet["mem_used_gib"] * 2**30 >= weights_bytes
    PointRecord(run_id="r", batch=1, repeat=0, status="ok", **quiet)  # fits the record
    del weights


def test_rss_is_read() -> None:
    rss = rss_bytes()
    assert rss is not None and rss > 10 * MIB


def test_nvml_sampler_without_gpu_degrades_to_none() -> None:
    with NvmlSampler(None) as cpu:
        time.sleep(0.02)
    w = cpu.window
    assert cpu.result is w
    assert (w.peak_process_mem_bytes, w.sm_clock_mhz, w.throttle_reasons, w.energy_j) == (None, None, None, None)
    assert w.seconds >= 0.02
    assert any("cpu" in n for n in w.notes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-driver path")
def test_nvml_sampler_with_no_driver_does_not_raise() -> None:
    with NvmlSampler(0, interval_s=0.01) as sampler:
        time.sleep(0.05)
    w = sampler.window
    assert (w.peak_process_mem_bytes, w.sm_clock_mhz, w.throttle_reasons, w.energy_j) == (None, None, None, None)
    assert w.seconds >= 0.05 and w.notes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvml_sampler_on_cuda_sees_clock_and_energy() -> None:  # pragma: no cover - GPU only
    x = torch.ones(2**28, device="cuda")
    with NvmlSampler(0, interval_s=0.02) as sampler:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            x.mul_(1.0001)
        torch.cuda.synchronize()
    w = sampler.window
    assert w.samples >= 5 and w.sm_clock_mhz and w.sm_clock_mhz > 0
    assert w.throttle_reasons is not None
    assert w.energy_j is None or w.energy_j > 0
    assert w.peak_process_mem_bytes is None or w.peak_process_mem_bytes >= 2**30


def test_fingerprint_cpu_fields() -> None:
    fp = fingerprint("cpu")
    assert fp.device_kind == "cpu"
    assert fp.device_name.startswith("cpu: ") and len(fp.device_name) > 5
    assert fp.driver is None and fp.cuda is None
    assert fp.torch == torch.__version__
    assert fp.transformers == transformers.__version__
    assert fp.bench_version == __version__
    assert fp.python == platform.python_version()
    assert fp.host
    assert fp.git_commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", fp.git_commit)


def test_git_commit_falls_back_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GIT_COMMIT_ENV, "abc123")
    assert git_commit(tmp_path) == "abc123"  # not a git checkout
    monkeypatch.delenv(GIT_COMMIT_ENV)
    assert git_commit(tmp_path) is None


def test_git_commit_env_wins_over_a_stale_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree copied to a GPU machine may carry an old .git: the commit named explicitly is the one recorded."""
    from bench.paths import PROJECT_ROOT

    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    from_git = git_commit(PROJECT_ROOT)
    monkeypatch.setenv(GIT_COMMIT_ENV, "feedbee")
    assert git_commit(PROJECT_ROOT) == "feedbee" != from_git


def test_env_command_prints_fingerprint_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["env", "--device", "cpu", "--bandwidth"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] and summary["command"] == "env"
    assert summary["device_kind"] == "cpu" and summary["device_name"].startswith("cpu: ")
    assert summary["torch"] == torch.__version__ and summary["bench_version"] == __version__
    assert summary["bandwidth_gbs"] > 0.1


def test_memory_tracker_cpu_weights_from_model_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.LayerNorm(512))
    tracker = MemoryTracker("cpu")
    tracker.baseline()
    weights = tracker.after_load(model)
    assert weights == (256 * 512 + 512 + 512 + 512) * 4
    assert tracker.weights_source == "params"
    assert tracker.point_stats()["mem_weights_gib"] == pytest.approx(weights / 2**30)
