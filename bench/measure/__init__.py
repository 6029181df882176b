"""Measurement inside the worker: environment fingerprint, memory, NVML sampling, bandwidth.

Worker-side: imports torch and pynvml only, never duckdb or streamlit. Everything degrades to None on CPU.
"""
