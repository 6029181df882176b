"""Real `python -m bench` sweeps for tests (and scripts/import_vs_sweep.py): the tiny CPU spec text, starting a bench
process in its own session, waiting on its DuckDB file (points stored, sweep state) instead of sleeping, reading
rows read-only, and finding the processes a sweep started (from /proc).

Every wait polls a real event (a row, a log line, a process) and fails with the process's output when the process
exits first or the time runs out, so a test never sleeps a fixed time nor hangs without saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from bench.paths import PROJECT_ROOT

TINY = "synthetic:tiny-moe"
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------------- specs


def variant(name: str, top_k: int = 2, experts: int | None = None) -> str:
    """One `[[variants]]` table of tiny-moe; `experts`: keep that many experts per layer (the first ones)."""
    text = f'[[variants]]\nname = "{name}"\nmodel = "{TINY}"\ntop_k = {top_k}\n'
    if experts is not None:
        text += f'prune = {{ experts = {experts}, method = "first" }}\n'
    return text


BASE = variant("base")
HALF = variant("half", experts=4)


def sweep_spec(*variants: str, title: str = "test sweep", batches: Sequence[int] = (1, 2), repeats: int = 1,
               new_tokens: int = 4, prompt_len: int = 8, warmup: bool | None = None) -> str:
    """The TOML text of a tiny CPU float32 sweep (seed 0) over `variants` (default: BASE)."""
    lines = [f'title = "{title}"', "[sweep]", f"prompt_len = {prompt_len}", f"new_tokens = {new_tokens}",
             f"batch_sizes = [{', '.join(str(b) for b in batches)}]", f"repeats = {repeats}", 'device = "cpu"',
             'dtype = "float32"', "seed = 0"]
    if warmup is not None:
        lines.append(f"warmup = {str(warmup).lower()}")
    return "\n".join(lines) + "\n" + "".join(variants or (BASE,))


def write_spec(path: Path, *variants: str, **sweep: Any) -> Path:
    """sweep_spec(...) written to `path`; returns `path`."""
    path.write_text(sweep_spec(*variants, **sweep))
    return path


# --------------------------------------------------------------------------------------------------- processes


def bench_env(**extra: str) -> dict[str, str]:
    """This process's environment (with the test's private MOE_BENCH_LOCK_DIR), unbuffered, plus `extra`."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def start_bench(*args: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE,
                stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """`python -m bench ARGS` from the repo root in its own session (os.killpg(proc.pid, ...) stops it all)."""
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=PROJECT_ROOT, env=env or bench_env(),
                            stdout=stdout, stderr=stderr, text=True, start_new_session=True)


def run_bench(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` to the end; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=PROJECT_ROOT, env=env or bench_env(),
                          capture_output=True, text=True, timeout=timeout)


def last_json(text: str) -> dict:
    """The JSON object on the last line of a command's stdout (sweep summaries, `ls --json`, ...)."""
    return json.loads(text.strip().splitlines()[-1])


def _output(proc: subprocess.Popen) -> str:
    """What an exited process wrote to its pipes (empty where they went elsewhere)."""
    try:
        out, err = proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
        return ""
    return f"rc {proc.returncode}\nstdout: {(out or '')[-2000:]}\nstderr: {(err or '')[-4000:]}"


def wait_for(check: Callable[[], T], what: str, timeout: float = 300, proc: subprocess.Popen | None = None,
             alive: Callable[[], bool] | None = None, log: Path | None = None, poll: float = 0.2) -> T:
    """Call `check()` every `poll` seconds until it returns something truthy, and return that. Fails naming `what`
    (with the process's output or `log`'s tail) when `proc` exits or `alive()` turns false first, or at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited before {what}:\n{_output(proc)}\n{tail}")
        if alive is not None and not alive():
            raise AssertionError(f"the process died before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s\n{tail}")
        time.sleep(poll)


# ------------------------------------------------------------------------------------------------ the database


def rows(db: Path, sql: str) -> list[tuple]:
    """The rows of `sql` on `db`, through a read-only connection closed at once."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stored_points(db: Path) -> int:
    """How many point rows `db` holds; 0 while the file is missing or a writer holds it."""
    try:
        return rows(db, "SELECT count(*) FROM points")[0][0] if db.exists() else 0
    except duckdb.Error:
        return 0


def wait_points(db: Path, n: int, timeout: float = 300, **how: Any) -> int:
    """Wait until `db` holds at least `n` points (wait_for's proc/alive/log apply); returns the count."""
    return wait_for(lambda: (c := stored_points(db)) >= n and c, f"{n} stored points in {db.name}", timeout, **how)


def sweep_row(db: Path, sweep_id: str) -> dict | None:
    """The dashboard's view of one sweep (bench.store.queries.sweep), None while it is not stored yet."""
    from bench.store import queries

    return queries.sweep(db, sweep_id) if db.exists() else None


def wait_sweep(db: Path, sweep_id: str, done: Callable[[dict], bool], what: str, timeout: float = 300,
               **how: Any) -> dict:
    """Wait until the sweep's row satisfies `done(row)`; returns the row."""
    return wait_for(lambda: (r := sweep_row(db, sweep_id)) is not None and done(r) and r, f"sweep {sweep_id}: {what}",
                    timeout, **how)


# ---------------------------------------------------------------------------------------------- process trees


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<pid>/task/*/children."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def cmdline(pid: int) -> str:
    """The command line of `pid` ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent(pid: int) -> int:
    """The parent pid of `pid`."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def variant_children(pid: int) -> dict[str, int]:
    """variant name -> pid of its bench.cluster.child process, among the descendants of `pid`."""
    out = {}
    for p in tree(pid):
        cmd = cmdline(p).split()
        if "bench.cluster.child" in cmd and "--variant" in cmd:
            out[cmd[cmd.index("--variant") + 1]] = p
    return out
