"""Throw issue 14's bad inputs at the CLI and count what goes wrong: tracebacks, database changes, accepted input.

Each case runs `python -m bench ...` in a subprocess against its own copy of a small database (the committed OOM
check results, imported) and records: the exit code, whether stdout/stderr holds a Python traceback, whether the
database file (and its WAL) changed or appeared, whether files appeared where they must not, and whether the input
was accepted where it must be refused. A case is "handled cleanly" when it is refused with exit code 2, without a
traceback, with the database and the rest of the disk as they were (a few cases expect success instead: noted).

    .venv/bin/python scripts/fuzz_inputs.py            # a table on stdout, one JSON line per case with --json
    .venv/bin/python scripts/fuzz_inputs.py --json

The table goes to docs/RELIABILITY.md ("Bad inputs"). Cases that would start a real measurement are run with
`--device cpu` on `synthetic:tiny-moe` and a time limit, so an input that is wrongly accepted costs seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "results" / "oom-check-h100-2026-11-27.jsonl"
REPORT = ROOT / "data" / "reports" / "union-prunes-20b-decode-report.md"
TIMEOUT_S = 90

SPEC = """title = "{title}"
[sweep]
prompt_len = 8
new_tokens = 2
batch_sizes = {batches}
repeats = {repeats}
device = "cpu"
dtype = "float32"
seed = {seed}
[[variants]]
name = "base"
model = "{model}"
top_k = 2
"""


def spec(**kw: object) -> str:
    values = {"title": "fuzz", "batches": "[1]", "repeats": 1, "seed": 0, "model": "synthetic:tiny-moe", **kw}
    return SPEC.format(**values)


def jsonl_line(mutate: Callable[[dict], None] | None = None, raw: str | None = None) -> str:
    obj = json.loads(RESULTS.read_text().splitlines()[0])
    if mutate:
        mutate(obj)
    return (raw if raw is not None else json.dumps(obj)) + "\n"


def with_config(config: object, as_text: str | None = None, run_id: str | None = None) -> str:
    def mutate(obj: dict) -> None:
        obj["run_meta"]["config_json"] = as_text if as_text is not None else json.dumps(config)
        if run_id:
            obj["run_id"] = obj["run_meta"]["run_id"] = run_id
    return jsonl_line(mutate)


def with_ids(run_id: str, sweep_id: str | None) -> str:
    def mutate(obj: dict) -> None:
        obj["run_id"] = obj["run_meta"]["run_id"] = run_id
        obj["run_meta"]["sweep_id"] = sweep_id
    return jsonl_line(mutate)


def report(old: str, new: str, count: int = 1) -> str:
    return REPORT.read_text().replace(old, new, count)


@dataclass
class Case:
    item: int
    name: str
    argv: list[str]  # {db}, {dir} are replaced
    files: dict[str, str] = field(default_factory=dict)  # written into the case folder first
    setup: list[list[str]] = field(default_factory=list)  # commands run first (may change the database)
    expect: str = "refuse"  # "refuse" (rc 2) | "ok" (rc 0)
    check: Callable[[Path], str | None] | None = None  # extra check on the case folder: a problem, or None
    fresh_db: bool = False  # start without a database (and check that none appears)


def _outside_untouched(d: Path) -> str | None:
    victim = d / "outside" / "victim.lock"
    return None if victim.read_text() == "precious\n" else "a file outside the logs folder was overwritten"


def _no_building_leftover(d: Path) -> str | None:
    left = list(d.glob(".bench.duckdb.building-*"))
    return f"stale build files left: {[p.name for p in left]}" if left else None


def _toml_round_trip(d: Path) -> str | None:
    return None if (d / "ok").exists() else "spec_to_toml wrote TOML that does not read back"


CASES: list[Case] = [
    # 1. ids that escape the logs folder
    Case(1, "sweep --sweep-id /../../outside/victim",
         ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet", "--sweep-id", "/../../outside/victim"],
         files={"s.toml": spec(), "outside/victim.lock": "precious\n"}, check=_outside_untouched),
    Case(1, "sweep --sweep-id with ../",
         ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet", "--sweep-id", "../outside/victim"],
         files={"s.toml": spec(), "outside/victim.lock": "precious\n"}, check=_outside_untouched),
    Case(1, "import a JSONL whose sweep_id escapes", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": with_ids("r-esc", "../../outside/victim")}),
    Case(1, "import a JSONL whose run_id escapes", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": with_ids("../../r-esc", "s-ok")}),
    Case(1, "sweep --resume /../../outside/victim",
         ["sweep", "--resume", "/../../outside/victim", "--db", "{db}", "--quiet"],
         files={"outside/victim.lock": "precious\n"}, check=_outside_untouched),
    # 2. presets from anywhere
    Case(2, "model synthetic:/tmp/outside", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet"],
         files={"s.toml": spec(model="synthetic:/tmp/outside")}),
    Case(2, "model synthetic:../presets/tiny-moe", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet"],
         files={"s.toml": spec(model="synthetic:../presets/tiny-moe")}),
    # 3. imported config reaching files
    Case(3, "rerun of an imported run with prune.keep=/etc/shadow", ["rerun", "r-shadow", "--db", "{db}", "--quiet"],
         files={"x.jsonl": with_config({
             "sweep": {"batch_sizes": [1], "prompt_len": 8, "new_tokens": 2, "repeats": 1, "device": "cpu"},
             "variant": {"name": "v", "model": "synthetic:tiny-moe", "top_k": 2,
                         "prune": {"keep": "/etc/shadow"}}}, run_id="r-shadow")},
         setup=[["import", "{dir}/x.jsonl", "--db", "{db}", "--replace"]]),
    # 4. integers past 2**31-1
    Case(4, "batch_sizes = [3000000000]", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet"],
         files={"s.toml": spec(batches="[3000000000]")}),
    Case(4, "repeats = 10000000000", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet"],
         files={"s.toml": spec(repeats=10000000000)}),
    Case(4, "--seed 99999999999", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet",
                                   "--seed", "99999999999"], files={"s.toml": spec()}),
    Case(4, "--batch-sizes 1,99999999999", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet",
                                            "--batch-sizes", "1,99999999999"], files={"s.toml": spec()}),
    # 5. emoji in a title: spec_to_toml must write TOML that reads back (the form's path)
    Case(5, "emoji title through spec_to_toml", [
        "-c", "import tomllib, pathlib, sys; from bench.spec import spec_from_dict, spec_to_toml; "
        "s = spec_from_dict({'title': '\U0001f680 launch \\u2603', "
        "'sweep': {'batch_sizes': [1], 'prompt_len': 8, 'new_tokens': 2}, "
        "'variants': [{'name': 'b', 'model': 'synthetic:tiny-moe', 'top_k': 2}]}); "
        "d = tomllib.loads(spec_to_toml(s)); assert d['title'] == s.title; pathlib.Path(sys.argv[1]).write_text('')",
        "{dir}/ok"], expect="ok", check=_toml_round_trip),
    # 6. import tracebacks
    Case(6, "config_json not JSON", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": with_config(None, as_text="{not json")}),
    Case(6, "config_json a list", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": with_config([1, 2, 3])}),
    Case(6, "config_json nested 200,000 deep", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": with_config(None, as_text="[" * 200_000 + "]" * 200_000)}),
    Case(6, "JSONL line nested 200,000 deep", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": '{"run": ' + "[" * 200_000 + "]" * 200_000 + "}\n"}),
    Case(6, "markdown error bullet with 5000 digits", ["import", "{dir}/r.md", "--db", "{db}"],
         files={"r.md": report("\n### base_topk2\n", "\n- error at batch " + "9" * 5000 + ": x\n\n### base_topk2\n")}),
    # 7. deep TOML
    Case(7, "spec TOML nested 5000 deep", ["sweep", "--spec", "{dir}/s.toml", "--db", "{db}", "--quiet"],
         files={"s.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n"}),
    # 8. rerun of an imported run without a sweep in its config
    Case(8, "rerun: imported config without 'sweep'", ["rerun", "r-nosweep", "--db", "{db}", "--quiet"],
         files={"x.jsonl": with_config({"variant": {"name": "v", "model": "synthetic:tiny-moe", "top_k": 2}},
                                       run_id="r-nosweep")},
         setup=[["import", "{dir}/x.jsonl", "--db", "{db}", "--replace"]]),
    # 9. prune to an impossible place
    Case(9, "prune --out /proc/x", ["prune", "--model", "synthetic:tiny-moe", "--out", "/proc/x", "--experts", "4",
                                    "--method", "first", "--device", "cpu"]),
    # 10. unknown ids write nothing
    Case(10, "sweep --resume nope (no database yet)", ["sweep", "--resume", "nope", "--db", "{dir}/new/x.duckdb",
                                                       "--quiet"], fresh_db=True),
    Case(10, "rerun nope (no database yet)", ["rerun", "nope", "--db", "{dir}/new/x.duckdb", "--quiet"],
         fresh_db=True),
    Case(10, "sweep --resume nope (existing database)", ["sweep", "--resume", "nope", "--db", "{db}", "--quiet"]),
    Case(10, "rerun nope (existing database)", ["rerun", "nope", "--db", "{db}", "--quiet"]),
    # 11. lenient parsing
    Case(11, "markdown integer 1_0", ["import", "{dir}/r.md", "--db", "{db}"],
         files={"r.md": report("| 2 |", "| 1_0 |")}),
    Case(11, "markdown Arabic-Indic digits", ["import", "{dir}/r.md", "--db", "{db}"],
         files={"r.md": report("| 2 |", "| \u0661\u0660 |")}),
    Case(11, "markdown nan", ["import", "{dir}/r.md", "--db", "{db}"], files={"r.md": report("| 35.53 |", "| nan |")}),
    Case(11, "markdown inf", ["import", "{dir}/r.md", "--db", "{db}"], files={"r.md": report("| 35.53 |", "| inf |")}),
    Case(11, "markdown 1e400", ["import", "{dir}/r.md", "--db", "{db}"],
         files={"r.md": report("| 35.53 |", "| 1e400 |")}),
    Case(11, "markdown trailing garbage", ["import", "{dir}/r.md", "--db", "{db}"],
         files={"r.md": REPORT.read_text() + "\ngarbage\n" + "x" * 100_000 + "\n"}),
    Case(11, "JSONL duplicated key", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": jsonl_line()[:-2] + ', "batch": 7}\n'}),
    Case(11, "JSONL NaN literal", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": jsonl_line().replace('"total_tps": ', '"total_tps": NaN, "x": ', 1)}),
    # 14. re-measuring error points needs a flag that exists
    Case(14, "sweep --resume nope --retry-errors (refused, nothing written)",
         ["sweep", "--resume", "nope", "--retry-errors", "--db", "{db}", "--quiet"]),
    # 15. a partial JSONL must not silently replace a stored run
    Case(15, "one-line JSONL over a stored 3-point run", ["import", "{dir}/x.jsonl", "--db", "{db}"],
         files={"x.jsonl": jsonl_line()}),
    # 16. build-db leftovers
    Case(16, "build-db after a killed build", ["build-db", "--db", "{dir}/bench.duckdb"],
         files={".bench.duckdb.building-999999": "half a database", ".bench.duckdb.building-999999.wal": "x"},
         expect="ok", check=_no_building_leftover, fresh_db=True),
]


def _digest(path: Path) -> str | None:
    parts = []
    for p in (path, Path(str(path) + ".wal")):
        parts.append(hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-")
    return None if parts == ["-", "-"] else ":".join(parts)


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one command in its own process group; on timeout the whole group (bench and worker) is killed."""
    cmd = [sys.executable, *argv] if argv[0] == "-c" else [sys.executable, "-m", "bench", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, 124, out, err + "\n(timed out: the input was accepted and ran)")


def run_case(case: Case, base_db: Path, work: Path, env: dict[str, str]) -> dict:
    d = work / f"case-{CASES.index(case):02d}"
    d.mkdir()
    db = d / "bench.duckdb"
    if not case.fresh_db:
        shutil.copy(base_db, db)
    for name, text in case.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)

    def fill(args: list[str]) -> list[str]:
        return [a.replace("{db}", str(db)).replace("{dir}", str(d)) for a in args]

    for cmd in case.setup:
        _run(fill(cmd), env)
    before = _digest(db)
    listing = sorted(str(p.relative_to(d)) for p in d.rglob("*") if ".logs" not in p.parts)
    t0 = time.monotonic()
    proc = _run(fill(case.argv), env)
    seconds = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    traceback = "Traceback (most recent call last)" in text
    db_changed = _digest(db) != before and case.expect == "refuse"
    after = sorted(str(p.relative_to(d)) for p in d.rglob("*") if ".logs" not in p.parts)
    created = [p for p in after if p not in listing and not p.startswith("bench.duckdb")]
    if case.expect == "refuse" and created:
        db_changed = True  # a refused command wrote files (a new database folder, say)
    problem = case.check(d) if case.check else None
    accepted = case.expect == "refuse" and proc.returncode == 0
    ok_rc = 2 if case.expect == "refuse" else 0
    clean = proc.returncode == ok_rc and not traceback and not db_changed and problem is None
    message = next((ln for ln in proc.stderr.splitlines() if ln.startswith("error:")), proc.stderr.strip()[-200:])
    return {"item": case.item, "case": case.name, "rc": proc.returncode, "traceback": traceback,
            "db_changed": db_changed, "created": created, "accepted": accepted, "problem": problem, "clean": clean,
            "seconds": round(seconds, 1), "message": message[:300]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
    ap.add_argument("--json-out", type=Path, help="also write one JSON object per case to this file")
    ap.add_argument("--only", type=int, action="append", help="run only the cases of this issue item (repeatable)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-inputs-"))
    env = {**os.environ, "MOE_BENCH_LOCK_DIR": str(work / "locks"), "PYTHONPATH": str(ROOT)}
    env.pop("BENCH_DB", None)
    base = work / "base.duckdb"
    built = _run(["import", str(RESULTS), "--db", str(base)], env)
    if built.returncode:
        print(built.stderr, file=sys.stderr)
        return 1
    results = [run_case(c, base, work, env) for c in CASES if not args.only or c.item in args.only]
    shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text("".join(json.dumps(r) + "\n" for r in results))
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print("| Item | Input | rc | Traceback | DB/disk changed | Accepted | Clean | Message |")
        print("|---:|---|---:|---|---|---|---|---|")
        for r in results:
            msg = (r["problem"] or r["message"]).replace("|", "\\|").replace("\n", " ")[:140]
            print(f"| {r['item']} | {r['case']} | {r['rc']} | {'**yes**' if r['traceback'] else 'no'} | "
                  f"{'**yes**' if r['db_changed'] else 'no'} | {'**yes**' if r['accepted'] else 'no'} | "
                  f"{'yes' if r['clean'] else '**no**'} | {msg} |")
    n = len(results)
    summary = {"tried": n, "clean": sum(r["clean"] for r in results),
               "tracebacks": sum(r["traceback"] for r in results),
               "db_changed": sum(r["db_changed"] for r in results),
               "accepted": sum(r["accepted"] for r in results)}
    print(json.dumps(summary), file=sys.stderr)
    return 0 if summary["clean"] == n else 1


if __name__ == "__main__":
    sys.exit(main())
