"""Error types and the exit codes they map to (0 ok, 1 running failed, 2 bad input)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2


class BenchError(Exception):
    """Base class: a message meant for the user, and an exit code."""

    exit_code = EXIT_RUN_FAILED


class BadInputError(BenchError):
    """The user's input (spec, flag, file) is wrong. The message names the field or file and the fix."""

    exit_code = EXIT_BAD_INPUT


class StoreError(BenchError):
    """The database cannot be used: corrupt, locked for too long, or from a newer schema."""

    exit_code = EXIT_BAD_INPUT


class SweepBusyError(BenchError):
    """Another sweep already runs on the same device."""

    exit_code = EXIT_BAD_INPUT
