"""Runs the Triton kernel cases (tests/interpreter/*_cases.py) under the Triton interpreter on CPU, in a child
pytest: TRITON_INTERPRET=1 only takes effect when set before triton is first imported, and the HF model code
imports triton in this session. Fails when triton is missing (it is in the test dependency group), when any case
fails, or when a case is skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.paths import PROJECT_ROOT


def test_triton_kernels_under_interpreter():
    import importlib.util

    assert importlib.util.find_spec("triton") is not None, (
        "triton is missing: install the test group (`pip install --group test`, or `make test`)"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_files=*_cases.py",
         "tests/interpreter"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = out.strip().splitlines()[-1]
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    assert passed >= 9 and "skipped" not in summary and "deselected" not in summary, summary
