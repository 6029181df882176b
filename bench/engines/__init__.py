"""Decode engines. `get_engine(name)` returns a fresh engine; names are listed in `bench.spec.ENGINE_NAMES`."""

from __future__ import annotations

from bench.engines.base import DecodeResult, Engine


def get_engine(name: str) -> Engine:
    if name == "hf":
        from bench.engines.hf import HFEngine

        return HFEngine()
    if name == "graph":
        from bench.engines.graph import GraphEngine

        return GraphEngine()
    raise ValueError(f"unknown engine {name!r}")


__all__ = ["DecodeResult", "Engine", "get_engine"]
