"""Model sources and pruning: presets (data/presets/), loading (synthetic:<preset>, HF id, local dir), pruning.

Worker-side: imports torch/transformers (lazily), never duckdb or streamlit.
"""
