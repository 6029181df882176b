"""The `graph` decode engine: our own gpt-oss decode over the HF weights, one step captured as a CUDA graph.

Modules, one job each:
- options.py  `GraphOptions`: the typed engine options a spec may set (`[sweep.engine_options]`), resolved per
  device and stored with the run (runs.engine_options). Torch-free.
- engine.py   `GraphEngine`: the Engine protocol (prepare: build, warm up, capture; generate: timed replays).
- decoder.py  `GptOssDecoder`: static KV caches, device-side decode state, and the one layer body that prefill and
  decode share (they differ only in the attention function).
- ops.py      the ops backends, `TorchOps` (reference, CPU) and `TritonOps`: add+RMSNorm, router, decode attention.
- experts.py  the expert path: one `Experts` object per layer, from a registry of weight formats.
- kernels.py  the Triton kernels.

Adding an expert weight format (e.g. MXFP4): write a class with `num_experts`, `weight_format` and
`__call__(x (T, H), topi (T, k), topw (T, k) float32, counter: int32 scalar tensor | None) -> (T*k, H)` that
returns each (token, slot)'s expert output times its routing weight (row t*k + j), applies gpt-oss's clamped
SwiGLU (`experts.swiglu`), adds the number of distinct routed experts to `counter` when given, and is capturable
in a CUDA graph; then `@register_experts` a factory `(hf_experts_module, resolved GraphOptions) -> Experts | None`
that recognises the module's weights. Triton kernels can share the row logic: `kernels.routing_plan` (host) and
`kernels.routed_rows` (@triton.jit) give each program its expert and rows, compact grid included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.engines.graph.options import GraphOptions

if TYPE_CHECKING:
    from bench.engines.graph.engine import GraphEngine


def __getattr__(name: str):
    if name == "GraphEngine":  # lazily: importing the options (spec, dashboard) must not load torch
        from bench.engines.graph.engine import GraphEngine

        return GraphEngine
    raise AttributeError(name)


__all__ = ["GraphEngine", "GraphOptions"]
