"""`python -m bench perf`: decode engines side by side (default hf vs graph) on one card, with roofline and MBU.

perf is a launcher of the worker's point loop (`bench.worker.run_job`), the one loop sweeps use too: for each
expert count (pruned by keeping the first N experts per layer), top_k and engine it runs one job in this process
(a fresh model per job, so no engine sees a model another engine changed); the job prepares each batch
(untimed: warm-up, capture) and times `--repeats` generations, with NVML and memory as in a sweep. Every
PointRecord it sends is a JSONL line with the run's fields (the bench's export format, written without duckdb);
a markdown table of medians (ms/step, tok/s, ceiling, MBU) is printed and optionally written. A memory
preflight refuses (exit 2) a model larger than the device's free memory before anything is built.
Worker-side: imports torch, never duckdb or streamlit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.errors import EXIT_OK, BadInputError

DEFAULT_MODEL = "synthetic:gpt-oss-20b"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="hf vs graph decode engines side by side: ms/step, tok/s, ceiling, MBU")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model source (default {DEFAULT_MODEL})")
    p.add_argument("--engines", default="hf,graph", help="comma-separated engines (default hf,graph)")
    p.add_argument(
        "--experts", default="32,16", help="experts per layer, pruned by keeping the first N (default 32,16)"
    )
    p.add_argument("--top-k", default="4,2", help="comma-separated top_k values (default 4,2)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (default 256)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per stream (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per point (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and prompts (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="default auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                   help="default auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--no-memory-check", dest="check_memory", action="store_false",
                   help="skip the preflight that refuses a model larger than the device's free memory")
    p.add_argument("--out-jsonl", default=None, help="append one JSON line per repeat to this file")
    p.add_argument("--out-md", default=None, help="write the markdown table of medians to this file")
    p.add_argument("--run", default=None, help="run name prefix (default perf-<date>)")
    p.set_defaults(func=run)


def _ints(text: str, flag: str, limit: str) -> list[int]:
    from bench.spec import LIMITS

    lo, hi = LIMITS[limit]
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not lo <= v <= hi for v in values):
        raise BadInputError(f"{flag} {text!r}: give comma-separated integers in {lo}..{hi:,}, e.g. 1,8,32")
    return values


@dataclass
class PerfRow:
    """Median of one (experts, top_k, engine, batch) point."""

    experts: int
    top_k: int
    engine: str
    batch: int
    status: str
    ms_per_step: float | None = None
    total_tps: float | None = None
    ceiling_tps: float | None = None
    mbu: float | None = None
    spread_pct: float | None = None
    distinct_experts: float | None = None
    mem_used_gib: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def markdown_table(rows: list[PerfRow]) -> str:
    lines = [
        "| experts | top_k | batch | engine | ms/step | tok/s (total) | ceiling tok/s | MBU | spread | U | mem GiB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mbu = "—" if r.mbu is None else f"{100 * r.mbu:.0f}%"
        spread = "—" if r.spread_pct is None else f"±{r.spread_pct:.1f}%"
        status = "" if r.status == "ok" else f" ({r.status})"
        lines.append(
            f"| {r.experts} | {r.top_k} | {r.batch} | {r.engine}{status} | {_fmt(r.ms_per_step, 2)} | "
            f"{_fmt(r.total_tps)} | {_fmt(r.ceiling_tps)} | {mbu} | {spread} | {_fmt(r.distinct_experts, 2)} | "
            f"{_fmt(r.mem_used_gib, 2)} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    engines = [e.strip() for e in str(args.engines).split(",") if e.strip()]
    from bench.spec import ENGINE_NAMES, LIMITS

    bad = [e for e in engines if e not in ENGINE_NAMES]
    if not engines or bad:
        raise BadInputError(f"--engines {args.engines!r}: choose from {', '.join(ENGINE_NAMES)}")
    experts_list = _ints(args.experts, "--experts", "experts")
    topks = _ints(args.top_k, "--top-k", "top_k")
    batches = _ints(args.batch_sizes, "--batch-sizes", "batch_size")
    for flag, value, name in (("--prompt-len", args.prompt_len, "prompt_len"),
                              ("--new-tokens", args.new_tokens, "new_tokens"), ("--repeats", args.repeats, "repeats"),
                              ("--seed", args.seed, "seed")):
        lo, hi = LIMITS[name]
        if not lo <= value <= hi:
            raise BadInputError(f"{flag} {value}: must be in {lo}..{hi:,}")

    if args.run is not None:
        from bench.spec import check_id

        check_id(args.run, "--run")  # it prefixes the run ids, which name files once imported and resumed
    from bench.models.footprint import preflight_memory
    from bench.models.loading import resolve_config, resolve_device, torch_dtype
    from bench.worker import WorkerJob, run_job

    device = resolve_device(args.device)
    dtype = str(torch_dtype(args.dtype, device)).removeprefix("torch.")
    base = int(getattr(resolve_config(args.model), "num_local_experts", 0) or 0)
    too_many = [n for n in experts_list if n > base]
    if too_many:
        raise BadInputError(f"--experts {too_many[0]}: the model has {base} experts per layer")
    if args.check_memory:  # the full model is built before pruning: one check covers every expert count
        preflight_memory(args.model, device, dtype, max(batches), args.prompt_len, args.new_tokens, "perf")
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    run_prefix = args.run or f"perf-{date}"
    out_jsonl = Path(args.out_jsonl) if args.out_jsonl else None
    if out_jsonl:
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    print(f"perf: {args.model} on {device} in {dtype}, prompt {args.prompt_len}, new {args.new_tokens}, "
          f"repeats {args.repeats}", file=sys.stderr, flush=True)
    rows: list[PerfRow] = []
    for n_exp in experts_list:
        for k in topks:
            if k > n_exp:
                continue
            prune = {"experts": n_exp, "method": "first"} if n_exp < base else None
            for eng_name in engines:
                run_name = f"{run_prefix}-{eng_name}-e{n_exp}-k{k}"
                job = WorkerJob(
                    run_id=run_name, variant_name=run_name, model=args.model, top_k=k, prune=prune, engine=eng_name,
                    device=device, dtype=dtype, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                    seed=args.seed, warmup=True, points=[(b, r) for b in batches for r in range(args.repeats)],
                )
                launcher = _InlineLauncher(args, run_name, n_exp, base, k, eng_name, dtype, out_jsonl)
                try:
                    run_job(job, launcher.send)  # the worker's point loop, in this process
                except BadInputError:
                    raise
                except Exception as exc:  # the variant cannot run at all (load failed, ...): its points fail
                    launcher.fail_remaining(job.points, f"{type(exc).__name__}: {exc}")
                rows += perf_rows(launcher.points, n_exp, k, eng_name, batches, args.new_tokens)
    table = markdown_table(rows)
    print(table)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(table + "\n")
    ok = sum(r.status == "ok" for r in rows)
    print(json.dumps({"ok": ok == len(rows), "points": len(rows), "points_ok": ok, "out_jsonl": args.out_jsonl}))
    return EXIT_OK


class _InlineLauncher:
    """perf's launcher: receives the worker's messages in-process, writes JSONL lines and progress as they come."""

    def __init__(self, args: argparse.Namespace, run_name: str, experts: int, base: int, k: int, engine: str,
                 dtype: str, out: Path | None) -> None:
        self.args, self.run_name, self.experts, self.base, self.k = args, run_name, experts, base, k
        self.engine, self.dtype, self.out = engine, dtype, out
        self.run: Any = None
        self.points: list[Any] = []

    def send(self, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "run":
            self.run = _perf_run(self.run_name, self.args, payload, self.experts, self.base, self.k, self.engine,
                                 self.dtype)
        elif kind == "point":
            self.points.append(payload)
            _append(self.out, self.run, payload)
            p = payload
            tpot = "" if p.tpot_p50_ms is None else f" tpot p50 {p.tpot_p50_ms:.2f} ms"
            tps = "" if p.total_tps is None else f" {p.total_tps:.1f} tok/s"
            print(f"  e{self.experts} k{self.k} {self.engine:5s} b{p.batch:<4d} #{p.repeat} {p.status:5s}{tps}{tpot}"
                  + (f" {p.error.splitlines()[0]}" if p.error else ""), file=sys.stderr, flush=True)

    def fail_remaining(self, planned: list[tuple[int, int]], error: str) -> None:
        from bench.records import PointRecord, utcnow

        seen = {(p.batch, p.repeat) for p in self.points}
        for b, r in planned:
            if (b, r) not in seen:
                self.send(("point", PointRecord(run_id=self.run_name, batch=b, repeat=r, status="error",
                                                error=error[:2000], started_at=utcnow(), finished_at=utcnow())))


def perf_rows(points: list[Any], experts: int, k: int, engine: str, batches: list[int], new_tokens: int
              ) -> list[PerfRow]:
    """One median row per batch from the worker's PointRecords (the same records a sweep stores)."""
    from bench.roofline import mbu

    rows = []
    for b in batches:
        pts = [p for p in points if p.batch == b]
        ok = [p for p in pts if p.status == "ok"]
        bad = next((p for p in pts if p.status != "ok"), None)
        row = PerfRow(experts, k, engine, b, "ok" if ok and bad is None else (bad.status if bad else "missing"))
        if bad is not None:
            row.error = (bad.error or "").splitlines()[0] if bad.error else None
        if ok:
            times = [p.decode_s for p in ok]
            med = statistics.median(times)
            steps = new_tokens - 1
            row.ms_per_step = 1000 * med / steps
            row.total_tps = b * steps / med
            row.ceiling_tps = ok[-1].ceiling_tps
            row.mbu = mbu(row.total_tps, row.ceiling_tps)
            row.spread_pct = 100 * (max(times) - min(times)) / med
            row.distinct_experts = ok[-1].distinct_experts
            row.mem_used_gib = max((p.mem_used_gib for p in ok if p.mem_used_gib is not None), default=None)
            energy = [p.energy_j_per_token for p in ok if p.energy_j_per_token is not None]
            if energy:
                row.extra["energy_j_per_token"] = statistics.median(energy)
        rows.append(row)
    return rows


def _perf_run(run_name: str, args: argparse.Namespace, info: Any, experts: int, base_experts: int, k: int,
              engine: str, dtype_name: str) -> Any:
    """The RunRecord of one (experts, top_k, engine) combination from the worker's RunInfo, so the JSONL is the
    bench's own export format and carries what a sweep's run records (env, kept experts, fingerprint, options)."""
    from bench.records import RunRecord

    env = info.env
    prune = {"experts": experts, "method": "first"} if experts < base_experts else None
    variant: dict[str, Any] = {"name": run_name, "model": args.model, "top_k": k}
    if prune:
        variant["prune"] = prune
    sweep = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
             "batch_sizes": _ints(args.batch_sizes, "--batch-sizes", "batch_size"), "repeats": args.repeats,
             "engine": engine, "dtype": dtype_name, "device": env.device_kind, "seed": args.seed, "warmup": True}
    config = {"title": f"perf {run_name}", "sweep": sweep, "variant": variant,
              "resolved": {"device": env.device_kind, "dtype": dtype_name}}
    return RunRecord(
        run_id=run_name, sweep_id=None, name=run_name, model=args.model, top_k=k, engine=engine, dtype=dtype_name,
        device=env.device_kind, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
        seed=args.seed, experts=info.experts, base_experts=info.base_experts, prune=prune, env=env,
        kept_experts=info.kept_experts, model_fingerprint=info.model_fingerprint, bandwidth_gbs=info.bandwidth_gbs,
        engine_options=json.dumps(info.engine_options, sort_keys=True) if info.engine_options else None,
        config_json=json.dumps(config, sort_keys=True), source="measured",
        state="done", notes="; ".join(["python -m bench perf", *info.notes]),
    )


def _append(out: Path | None, run: Any, point: Any) -> None:
    """Append one point in the bench's JSONL export format (importable with `python -m bench import`)."""
    if out is None:
        return
    from bench.report.jsonl import render_jsonl  # no duckdb needed: runs on the GPU box too

    with out.open("a") as f:
        f.write(render_jsonl([run], [point]))


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.commands.perf ...`: the same command without the CLI front door (which imports the
    DuckDB store; the GPU machine has no duckdb)."""
    parser = argparse.ArgumentParser(prog="python -m bench.commands.perf")
    register(parser.add_subparsers())
    args = parser.parse_args(["perf", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
