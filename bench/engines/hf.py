"""Engine `hf`: transformers `generate` with its default (dynamic) cache, greedy, exact token counts.

Timing: a logits processor synchronizes the device and stamps the clock each time logits are ready. The
first stamp ends prefill; decode_s runs from it to the return of `generate` (new_tokens - 1 steps).
The distinct-expert count comes from router hooks during the untimed warm-up, never the timed run.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from bench.engines.base import DecodeResult, sync

WARMUP_TOKENS = 16


class _StepClock(LogitsProcessor):
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


class RouterCounter:
    """Forward hooks on every router: distinct experts routed per layer in each decode step (one token/stream)."""

    def __init__(self, model: torch.nn.Module, batch: int) -> None:
        self.batch = batch
        self.counts: list[int] = []
        self.handles = []
        for module in model.modules():
            if type(module).__name__.endswith("TopKRouter") or (
                hasattr(module, "top_k") and hasattr(module, "num_experts") and hasattr(module, "weight")
            ):
                self.handles.append(module.register_forward_hook(self._hook))

    def _hook(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        indices = output[-1] if isinstance(output, tuple) else None
        if isinstance(indices, torch.Tensor) and not indices.is_floating_point() and indices.shape[0] == self.batch:
            self.counts.append(int(torch.unique(indices).numel()))

    def mean(self) -> float | None:
        return statistics.fmean(self.counts) if self.counts else None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def greedy_config(new_tokens: int, pad_token_id: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id,
        eos_token_id=None,
    )


class HFEngine:
    name = "hf"

    def __init__(self) -> None:
        self.distinct_experts: float | None = None

    def prepare(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> None:
        counter = RouterCounter(model, batch=input_ids.shape[0])
        try:
            self._run(model, input_ids, min(new_tokens, WARMUP_TOKENS))
        finally:
            counter.remove()
        self.distinct_experts = counter.mean()

    def _run(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> DecodeResult:
        device = input_ids.device
        clock = _StepClock(device)
        attention_mask = torch.ones_like(input_ids)
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=greedy_config(new_tokens, pad_token_id=0),
                logits_processor=LogitsProcessorList([clock]),
            )
        sync(device)
        end = time.perf_counter()
        tokens = out[:, input_ids.shape[1] :].detach().cpu()
        first = clock.stamps[0] if clock.stamps else end
        steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
        return DecodeResult(
            tokens=tokens,
            prefill_s=first - start,
            decode_s=end - first,
            step_s=steps,
            distinct_experts=self.distinct_experts,
        )

    def generate(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> DecodeResult:
        return self._run(model, input_ids, new_tokens)

    def release(self) -> None:
        self.distinct_experts = None

    def describe(self, device: str) -> dict[str, object]:
        return {"api": "generate", "cache": "dynamic", "warmup_tokens": WARMUP_TOKENS,
                "distinct_experts": "router hooks during warm-up"}
