"""Shared pytest fixtures. Models: real tiny gpt-oss-shaped transformers models on CPU (synthetic:tiny-moe)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.paths import KEEP_DIR

TINY_SOURCE = "synthetic:tiny-moe"

# The files with the longest tests (`pytest --durations`, 2026-11-30), longest first, run before the rest: make test's
# wall time is its slowest pytest-xdist worker's, and a long test started last leaves the other core idle meanwhile.
# Whole files move, in their own order, so module-scoped fixtures are still built once per worker.
SLOW_FIRST = ["test_browser.py", "test_triton_interpreter.py", "test_cluster.py", "test_sweep.py", "test_models.py",
              "test_app_runs.py", "test_processes.py", "test_disk_full.py", "test_app_research.py",
              "test_cli_sweeps.py", "test_reliability_concurrency.py", "test_research.py", "test_perf_command.py",
              "test_graph_engine.py", "test_mxfp4.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order


def randomize_expert_biases(model, seed: int = 123) -> None:
    """Give the experts' (zero-initialised) biases random values, so tests see a wrongly sliced bias."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for name in ("gate_up_proj_bias", "down_proj_bias"):
                p = getattr(layer.mlp.experts, name)
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * 0.05)


@pytest.fixture
def tiny_model():
    """A fresh tiny-moe LoadedModel (float32, CPU, seed 0, random expert biases); tests may mutate it."""
    import torch

    from bench.models.loading import load_model

    loaded = load_model(TINY_SOURCE, device="cpu", dtype=torch.float32, seed=0)
    randomize_expert_biases(loaded.model)
    return loaded


@pytest.fixture
def tiny_model_factory():
    """Call with seed=..., experts_implementation=... to build more tiny-moe LoadedModels (random expert biases)."""
    import torch

    from bench.models.loading import load_model

    def make(seed: int = 0, experts_implementation: str | None = None, biases: bool = True):
        loaded = load_model(
            TINY_SOURCE, device="cpu", dtype=torch.float32, seed=seed, experts_implementation=experts_implementation
        )
        if biases:
            randomize_expert_biases(loaded.model)
        return loaded

    return make


@pytest.fixture
def tiny_input_ids():
    """A seeded [2, 24] batch of token ids for tiny-moe (longer than its sliding window of 16)."""
    import torch

    return torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(7))


@pytest.fixture
def tiny_keep_files() -> tuple[Path, Path]:
    """The two committed tiny-moe calibration-domain keep files (3 experts per layer each)."""
    return KEEP_DIR / "tiny-moe-domain-a.json", KEEP_DIR / "tiny-moe-domain-b.json"


@pytest.fixture(autouse=True)
def _private_device_locks(tmp_path_factory, monkeypatch):
    """Each test gets its own device-lock folder, so tests never see a real sweep's (or each other's) locks."""
    monkeypatch.setenv("MOE_BENCH_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))
