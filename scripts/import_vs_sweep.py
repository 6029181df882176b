"""Measure how long a sweep's point writes wait while a big JSONL import runs (issue 14 item 13).

Builds a JSONL of about --mb megabytes (copies of a committed results file with fresh run and sweep ids), then, in
one fresh database: starts a tiny CPU sweep (`python -m bench sweep`), starts a probe process that writes a point
with `bench.store.insert_point` (the call the sweep's runner makes for every point) every 0.25 s and times each
write, and runs `python -m bench import` of the big file. Prints one JSON line: the import's time, the sweep's
outcome (it must end `done` with every point), and the probe's write waits (median, p90, worst).

    .venv/bin/python scripts/import_vs_sweep.py --mb 50

Not part of `make test` (minutes); the small version of the same check is
tests/test_import_hardening.py::test_an_import_writes_in_batches_that_let_another_writer_in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.sweeps import BASE, HALF, last_json, run_bench, start_bench, sweep_spec  # noqa: E402

SOURCE = ROOT / "data" / "results" / "union-prunes-hf-h100-2026-11-27.jsonl"
SPEC = sweep_spec(BASE, HALF, title="sweep during a big import", batches=(1, 2, 3), repeats=4)

PROBE = r"""
import json, sys, time
from bench import store
from bench.records import PointRecord, RunRecord, SweepRecord, utcnow
db, stop = sys.argv[1], sys.argv[2]
store.insert_sweep(db, SweepRecord(sweep_id="s-probe", title="probe", spec_json="{}", state="running"))
run = RunRecord(run_id="r-probe", sweep_id="s-probe", name="probe", model="synthetic:tiny-moe", top_k=2,
                engine="hf", dtype="float32", device="cpu", prompt_len=8, new_tokens=8, repeats=1, seed=0)
store.insert_run(db, run)
waits, i = [], 0
import os
while not os.path.exists(stop):
    i += 1
    t0 = time.monotonic()
    store.insert_point(db, PointRecord(run_id="r-probe", batch=i, repeat=0, status="ok", total_tps=1.0,
                                       started_at=utcnow(), finished_at=utcnow()), sweep_id="s-probe")
    waits.append(time.monotonic() - t0)
    time.sleep(0.25)
print(json.dumps(waits))
"""


def build_jsonl(out: Path, megabytes: float) -> int:
    lines = [json.loads(line) for line in SOURCE.read_text().splitlines() if line.strip()]
    size = n = copy = 0
    with out.open("w") as f:
        while size < megabytes * 1e6:
            for obj in lines:
                obj = json.loads(json.dumps(obj))
                rid = f"{obj['run_id']}-c{copy}"
                obj["run_id"] = obj["run_meta"]["run_id"] = rid
                obj["run_meta"]["sweep_id"] = f"{obj['run_meta']['sweep_id']}-c{copy}"
                text = json.dumps(obj) + "\n"
                f.write(text)
                size += len(text)
                n += 1
            copy += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="size of the JSONL to import (MB)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="import-vs-sweep-"))
    env = {**os.environ, "MOE_BENCH_LOCK_DIR": str(tmp / "locks"), "PYTHONPATH": str(ROOT)}
    db, big, spec, stop = tmp / "bench.duckdb", tmp / "big.jsonl", tmp / "spec.toml", tmp / "stop"
    lines = build_jsonl(big, args.mb)
    spec.write_text(SPEC)
    py = sys.executable
    first = run_bench("import", str(SOURCE), "--db", str(db), env=env, timeout=600)
    if first.returncode:
        raise SystemExit(f"import of {SOURCE.name} failed: {first.stderr[-500:]}")
    sweep = start_bench("sweep", "--spec", str(spec), "--db", str(db), "--quiet", env=env)
    probe = subprocess.Popen([py, "-c", PROBE, str(db), str(stop)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(5)
    t0 = time.monotonic()
    imp = run_bench("import", str(big), "--db", str(db), env=env, timeout=3600)
    import_s = time.monotonic() - t0
    stop.write_text("")
    probe_out, probe_err = probe.communicate(timeout=600)
    sweep_out, sweep_err = sweep.communicate(timeout=3600)
    waits = json.loads(probe_out) if probe.returncode == 0 else []
    result = {
        "jsonl_mb": round(big.stat().st_size / 1e6, 1),
        "jsonl_lines": lines,
        "import_rc": imp.returncode,
        "import_s": round(import_s, 1),
        "import_error": imp.stderr.strip()[-300:] if imp.returncode else None,
        "sweep_rc": sweep.returncode,
        "sweep": last_json(sweep_out) if sweep_out.strip() else sweep_err[-300:],
        "probe_writes": len(waits),
        "probe_wait_median_s": round(statistics.median(waits), 3) if waits else None,
        "probe_wait_p90_s": round(sorted(waits)[int(0.9 * (len(waits) - 1))], 3) if waits else None,
        "probe_wait_max_s": round(max(waits), 3) if waits else None,
        "probe_error": probe_err.strip()[-300:] if probe.returncode else None,
    }
    print(json.dumps(result))
    if not args.keep:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()
    return 0 if imp.returncode == 0 and sweep.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
