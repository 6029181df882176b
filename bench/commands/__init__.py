"""Sub-commands of `python -m bench`, one module each (see docs/ARCHITECTURE.md)."""
