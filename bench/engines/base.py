"""The engine interface: prepare once per batch size (warm-up, capture), then time `generate` repeats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class DecodeResult:
    """One timed generation of exactly `new_tokens` tokens per stream, greedy.

    prefill_s: prompt forward up to the first token being available.
    decode_s: the remaining new_tokens - 1 steps. step_s: per-step durations when the engine has them.
    distinct_experts: mean number of distinct experts routed per layer per decode step, when counted.
    """

    tokens: torch.Tensor  # (batch, new_tokens) generated ids, on CPU
    prefill_s: float
    decode_s: float
    step_s: list[float] = field(default_factory=list)
    distinct_experts: float | None = None


class Engine(Protocol):
    name: str

    def prepare(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> None:
        """Everything that must stay out of the timed region: warm-up, cache allocation, graph capture."""
        ...

    def generate(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> DecodeResult:
        """Prefill `input_ids` (batch, prompt_len) and decode exactly `new_tokens` tokens, timed."""
        ...

    def release(self) -> None:
        """Free per-batch state (graphs, static caches) before the next batch size."""
        ...

    def describe(self, device: str) -> dict[str, object]:
        """The engine's settings as they apply on `device`, stored with the run (runs.engine_options)."""
        ...


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
