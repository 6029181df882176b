"""Decode engines. `get_engine(name, options)` returns a fresh engine; names are listed in `bench.spec.ENGINE_NAMES`.

Importing this package does not load torch (the spec validates engine options through it); the engines do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.engines.base import DecodeResult, Engine


def validate_engine_options(engine: str, raw: dict[str, Any] | None, where: str = "sweep.engine_options") -> dict:
    """The engine's options as a plain dict (defaults filled), or BadInputError naming the field."""
    if engine == "graph":
        from bench.engines.graph.options import GraphOptions

        return GraphOptions.from_dict(raw, where).to_dict()
    if raw:
        from bench.errors import BadInputError

        raise BadInputError(f"{where}: engine {engine!r} takes no options; remove the table or use engine = \"graph\"")
    return {}


def get_engine(name: str, options: dict[str, Any] | None = None) -> Engine:
    if name == "hf":
        validate_engine_options(name, options)
        from bench.engines.hf import HFEngine

        return HFEngine()
    if name == "graph":
        from bench.engines.graph.engine import GraphEngine
        from bench.engines.graph.options import GraphOptions

        return GraphEngine(GraphOptions.from_dict(options))
    raise ValueError(f"unknown engine {name!r}")


def __getattr__(name: str):
    if name in ("DecodeResult", "Engine"):
        from bench.engines import base

        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["DecodeResult", "Engine", "get_engine", "validate_engine_options"]
