"""Helpers shared by the tests (and scripts/import_vs_sweep.py); not collected by pytest (no test_*.py here)."""
