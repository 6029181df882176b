"""Dashboard-side analysis over the frames `bench.store.queries` returns: run labels and selection (labels.py),
comparisons between runs (compare.py). Pure pandas: no SQL, no streamlit, no torch."""
