"""The `graph` decode engine: our own gpt-oss decode over the HF weights, one step captured as a CUDA graph.

engine.py owns the Engine protocol side (prepare, timed decode), decoder.py the model body and KV cache,
kernels.py the Triton kernels.
"""

from bench.engines.graph.engine import GraphEngine

__all__ = ["GraphEngine"]
