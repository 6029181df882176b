"""Engine `graph`: our own gpt-oss decode (decoder.py) with one decode step captured as a CUDA graph per batch size.

prepare(): builds the decoder for (batch, prompt + new_tokens), runs one prefill and WARMUP_STEPS eager decode
steps (Triton compilation, cuBLAS workspaces), then captures one `decode_step` as a CUDA graph — all outside the
timed region. generate(): prefill (timed, eager), then new_tokens - 1 graph replays that only touch device-side
state, one synchronisation at the end; per-step times come from CUDA events between replays. On CPU the same
decoder runs eagerly with torch ops (no capture), which is what the CI tests check.

Options: a `GraphOptions` (options.py), from the spec's `[sweep.engine_options]`; `describe(device)` returns them
resolved for the device, stored with the run.
"""

from __future__ import annotations

import itertools
import time

import torch

from bench.engines.base import DecodeResult, sync
from bench.engines.graph.decoder import GptOssDecoder
from bench.engines.graph.options import GraphOptions

WARMUP_STEPS = 2


def _check_model(model: torch.nn.Module) -> None:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    ok = layers is not None and len(layers) > 0
    if ok:
        first = layers[0]
        ok = all(hasattr(first, n) for n in ("self_attn", "mlp")) and hasattr(first.mlp, "router")
        ok = ok and hasattr(first.mlp, "experts") and hasattr(first.self_attn, "sinks")
    if not ok:
        from bench.errors import BadInputError

        raise BadInputError(
            f"engine 'graph' supports gpt-oss models (got {type(model).__name__}); use engine = \"hf\" for this model"
        )


class GraphEngine:
    name = "graph"

    def __init__(self, options: GraphOptions | None = None, keep_logits: bool = False) -> None:
        self.options = options or GraphOptions()
        self.keep_logits = keep_logits
        self.decoder: GptOssDecoder | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple[int, int, int] | None = None

    def describe(self, device: str) -> dict[str, object]:
        resolved = self.options.resolve(torch.device(device).type)
        out: dict[str, object] = {**resolved.to_dict(), "cache": "static"}
        out["cuda_graph"] = resolved.capture == "on"
        return out

    def prepare(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> None:
        _check_model(model)
        self.release()
        device = input_ids.device
        b, t = input_ids.shape
        with torch.inference_mode():
            dec = GptOssDecoder(model, b, t, new_tokens, self.options, keep_logits=self.keep_logits,
                                extra_steps=WARMUP_STEPS)
            dec.prefill(input_ids)
            if dec.options.capture == "on":
                stream = torch.cuda.Stream(device)
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    for _ in range(WARMUP_STEPS):
                        dec.decode_step()
                torch.cuda.current_stream(device).wait_stream(stream)
                sync(device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    dec.decode_step()
                sync(device)
                self.graph = graph
            else:
                for _ in range(WARMUP_STEPS):
                    dec.decode_step()
        self.decoder = dec
        self._key = (b, t, new_tokens)

    def step(self) -> None:
        """One decode step: a graph replay, or the eager step where there is no graph."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.decoder.decode_step()

    def generate(self, model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> DecodeResult:
        b, t = input_ids.shape
        if self.decoder is None or self._key != (b, t, new_tokens):
            self.prepare(model, input_ids, new_tokens)
        dec = self.decoder
        device = input_ids.device
        cuda = device.type == "cuda"
        steps = new_tokens - 1
        with torch.inference_mode():
            sync(device)
            t0 = time.perf_counter()
            dec.prefill(input_ids)
            sync(device)
            t1 = time.perf_counter()
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)] if cuda else []
            cpu_stamps = [t1]
            if events:
                events[0].record()
            for i in range(steps):
                self.step()
                if events:
                    events[i + 1].record()
                else:
                    cpu_stamps.append(time.perf_counter())
            sync(device)
            t2 = time.perf_counter()
            tokens = dec.out_tokens.detach().cpu()
            hits = int(dec.expert_hits.item())
        if events:
            step_s = [events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(steps)]
        else:
            step_s = [b2 - a for a, b2 in itertools.pairwise(cpu_stamps)]
        distinct = hits / (len(dec.layers) * steps) if steps > 0 else None
        return DecodeResult(
            tokens=tokens, prefill_s=t1 - t0, decode_s=t2 - t1, step_s=step_s, distinct_experts=distinct
        )

    def release(self) -> None:
        self.graph = None
        self.decoder = None
        self._key = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
