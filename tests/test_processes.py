"""bench.processes: workers are new processes forked from a server that imported torch once, and they run with
the parent's environment as of their start (a forked child would otherwise see the server's)."""

from __future__ import annotations

import os

from bench.processes import start_process
from tests.helpers.probe import report


def _probe(name: str) -> dict:
    proc, conn = start_process(report, (), name=name)
    assert conn.poll(120), "the probe process sent nothing within 120 s"
    got = conn.recv()
    proc.join(30)
    assert proc.exitcode == 0
    return got


def test_workers_start_with_imports_done_and_the_parents_current_environment(monkeypatch) -> None:
    monkeypatch.setenv("MOE_BENCH_PROBE", "one")
    first = _probe("probe-1")
    second = _probe("probe-2")
    assert first["pid"] != second["pid"] != os.getpid()  # a new process each time
    assert first["preloaded"] == ["bench.worker", "torch", "transformers"]  # imported by the server, not the child
    assert first["parent"] == second["parent"] != os.getpid()  # one server forks both
    assert first["probe_env"] == second["probe_env"] == "one"
    assert first["main_file"] is None  # the parent's main script is never re-run in a worker

    monkeypatch.setenv("MOE_BENCH_PROBE", "two")  # the environment changed after the server started
    third = _probe("probe-3")
    assert third["probe_env"] == "two"
    assert third["parent"] != first["parent"]  # a new server, started with the new environment
