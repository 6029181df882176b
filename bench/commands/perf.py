"""`python -m bench perf`: decode engines side by side (default hf vs graph) on one card, with roofline and MBU.

For each expert count (pruned by keeping the first N experts per layer) and top_k, the model is built once;
each engine then runs each batch size: prepare (untimed: warm-up, capture), `--repeats` timed generations.
Every repeat is a JSONL line with PointRecord field names plus the run's fields; a markdown table of medians
(ms/step, tok/s, ceiling, MBU) is printed and optionally written. The ceiling uses the distinct experts the
engine counted and the mean decode context. Worker-side: imports torch, never duckdb or streamlit.
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
    p.add_argument("--weights", default="bf16",
                   help="comma-separated expert weight formats, run side by side: bf16, mxfp4 (default bf16)")
    p.add_argument("--top-k", default="4,2", help="comma-separated top_k values (default 4,2)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (default 256)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per stream (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per point (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, float32 on cpu) | bfloat16 | float32")
    p.add_argument("--out-jsonl", default=None, help="append one JSON line per repeat to this file")
    p.add_argument("--out-md", default=None, help="write the markdown table of medians to this file")
    p.add_argument("--run", default=None, help="run name prefix (default perf-<date>)")
    p.set_defaults(func=run)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise BadInputError(f"{flag} {text!r}: give comma-separated positive integers, e.g. 1,8,32")
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
    weights: str = "bf16"


def _fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def markdown_table(rows: list[PerfRow]) -> str:
    lines = [
        "| experts | top_k | batch | engine | weights | ms/step | tok/s (total) | ceiling tok/s | MBU | spread | U "
        "| mem GiB |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mbu = "—" if r.mbu is None else f"{100 * r.mbu:.0f}%"
        spread = "—" if r.spread_pct is None else f"±{r.spread_pct:.1f}%"
        status = "" if r.status == "ok" else f" ({r.status})"
        lines.append(
            f"| {r.experts} | {r.top_k} | {r.batch} | {r.engine}{status} | {r.weights} | {_fmt(r.ms_per_step, 2)} | "
            f"{_fmt(r.total_tps)} | {_fmt(r.ceiling_tps)} | {mbu} | {spread} | {_fmt(r.distinct_experts, 2)} | "
            f"{_fmt(r.mem_used_gib, 2)} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    engines = [e.strip() for e in str(args.engines).split(",") if e.strip()]
    from bench.spec import ENGINE_NAMES

    bad = [e for e in engines if e not in ENGINE_NAMES]
    if not engines or bad:
        raise BadInputError(f"--engines {args.engines!r}: choose from {', '.join(ENGINE_NAMES)}")
    experts_list = _ints(args.experts, "--experts")
    weights_list = [w.strip() for w in str(args.weights).split(",") if w.strip()]
    if not weights_list or any(w not in ("bf16", "mxfp4") for w in weights_list):
        raise BadInputError(f"--weights {args.weights!r}: give bf16, mxfp4 or bf16,mxfp4")
    topks = _ints(args.top_k, "--top-k")
    batches = _ints(args.batch_sizes, "--batch-sizes")
    if args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1:
        raise BadInputError("--prompt-len >= 1, --new-tokens >= 2 and --repeats >= 1 are required")

    import torch

    from bench.engines import get_engine
    from bench.measure.bandwidth import measure_bandwidth
    from bench.measure.env import fingerprint
    from bench.measure.memory import MemoryTracker
    from bench.models.loading import load_model, resolve_device, torch_dtype, weights_impl
    from bench.models.pruning import apply_variant, set_top_k
    from bench.records import PointRecord, utcnow
    from bench.roofline import ArchSummary, mbu, mean_decode_context
    from bench.spec import PruneSpec
    from bench.worker import point_from_result

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    env = fingerprint(device)
    bandwidth = measure_bandwidth(device)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    run_prefix = args.run or f"perf-{date}"
    context = mean_decode_context(args.prompt_len, args.new_tokens)
    out_jsonl = Path(args.out_jsonl) if args.out_jsonl else None
    if out_jsonl:
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"perf: {env.device_name}, torch {env.torch}, transformers {env.transformers}, commit {env.git_commit}, "
        f"bandwidth {bandwidth / 1e9:.0f} GB/s, {dtype}, prompt {args.prompt_len}, new {args.new_tokens}",
        file=sys.stderr,
        flush=True,
    )
    rows: list[PerfRow] = []
    for wfmt, n_exp in [(w, n) for w in weights_list for n in experts_list]:
        tracker = MemoryTracker(device)
        tracker.baseline()
        loaded = load_model(args.model, device=device, dtype=dtype, seed=args.seed, weights=wfmt)
        tracker.after_load()
        base = loaded.base_experts
        if n_exp > base:
            raise BadInputError(f"--experts {n_exp}: the model has {base} experts per layer")
        for k in topks:
            if k > n_exp:
                continue
            prune = PruneSpec(experts=n_exp, method="first") if n_exp < base else None
            if prune is not None and loaded.config.num_local_experts != n_exp:
                apply_variant(loaded, prune, k, args.seed)
            else:
                set_top_k(loaded.model, k)
            model = loaded.model
            arch = ArchSummary.from_model(model)
            gen = torch.Generator().manual_seed(args.seed)
            vocab = int(loaded.config.vocab_size)
            for eng_name in engines:
                run_name = f"{run_prefix}-{eng_name}-{wfmt}-e{n_exp}-k{k}"
                run_rec = _perf_run(run_name, args, env, n_exp, base, k, eng_name, bandwidth, dtype)
                run_rec.weights, run_rec.weights_impl = wfmt, weights_impl(loaded, eng_name, device)
                for b in batches:
                    ids = torch.randint(0, vocab, (b, args.prompt_len), generator=gen).to(device)
                    engine = get_engine(eng_name)
                    row = PerfRow(n_exp, k, eng_name, b, "ok", weights=wfmt)
                    times: list[float] = []
                    try:
                        tracker.reset_peak()
                        engine.prepare(model, ids, args.new_tokens)
                        for rep in range(args.repeats):
                            started = utcnow()
                            res = engine.generate(model, ids, args.new_tokens)
                            rec = point_from_result(
                                run_name, b, rep, res, expected_tokens=args.new_tokens, arch=arch, top_k=k,
                                context=context, bandwidth=bandwidth, mem=tracker.point_stats(), window=None,
                                started=started,
                            )
                            times.append(res.decode_s)
                            row.distinct_experts = res.distinct_experts
                            row.ceiling_tps = rec.ceiling_tps
                            row.mem_used_gib = rec.mem_used_gib
                            _append(out_jsonl, run_rec, rec)
                    except torch.cuda.OutOfMemoryError as exc:
                        row.status, row.error = "oom", str(exc).splitlines()[0]
                    except Exception as exc:  # one failing point must not lose the others
                        row.status, row.error = "error", f"{type(exc).__name__}: {exc}"
                    finally:
                        engine.release()
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                    if times:
                        med = statistics.median(times)
                        steps = args.new_tokens - 1
                        row.ms_per_step = 1000 * med / steps
                        row.total_tps = b * steps / med
                        row.mbu = mbu(row.total_tps, row.ceiling_tps)
                        row.spread_pct = 100 * (max(times) - min(times)) / med
                    if row.status != "ok":
                        _append(out_jsonl, run_rec, PointRecord(
                            run_id=run_name, batch=b, repeat=len(times), status=row.status, error=row.error,
                            started_at=utcnow(), finished_at=utcnow()))
                    rows.append(row)
                    print(
                        f"  {wfmt} e{n_exp} k{k} {eng_name:5s} b{b:<3d} {row.status:5s} "
                        f"ms/step {_fmt(row.ms_per_step, 2):>7s} "
                        f"tok/s {_fmt(row.total_tps):>8s} ceiling {_fmt(row.ceiling_tps):>8s} "
                        f"MBU {_fmt(None if row.mbu is None else 100 * row.mbu, 0)}% {row.error or ''}",
                        file=sys.stderr,
                        flush=True,
                    )
        del loaded, model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    table = markdown_table(rows)
    print(table)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(table + "\n")
    ok = sum(r.status == "ok" for r in rows)
    print(json.dumps({"ok": ok == len(rows), "points": len(rows), "points_ok": ok, "out_jsonl": args.out_jsonl}))
    return EXIT_OK


def _perf_run(run_name: str, args: argparse.Namespace, env: Any, experts: int, base_experts: int, k: int,
              engine: str, bandwidth: float, dtype: Any) -> Any:
    """The RunRecord of one (experts, top_k, engine) combination, so the JSONL is the bench's own export format."""
    from bench.records import RunRecord

    dtype_name = str(dtype).removeprefix("torch.")
    prune = {"experts": experts, "method": "first"} if experts < base_experts else None
    variant: dict[str, Any] = {"name": run_name, "model": args.model, "top_k": k}
    if "-mxfp4-" in run_name:
        variant["weights"] = "mxfp4"
    if prune:
        variant["prune"] = prune
    sweep = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
             "batch_sizes": _ints(args.batch_sizes, "--batch-sizes"), "repeats": args.repeats, "engine": engine,
             "dtype": dtype_name, "device": env.device_kind, "seed": args.seed, "warmup": True}
    config = {"title": f"perf {run_name}", "sweep": sweep, "variant": variant,
              "resolved": {"device": env.device_kind, "dtype": dtype_name}}
    return RunRecord(
        run_id=run_name, sweep_id=None, name=run_name, model=args.model, top_k=k, engine=engine, dtype=dtype_name,
        device=env.device_kind, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
        seed=args.seed, experts=experts, base_experts=base_experts, prune=prune, env=env,
        bandwidth_gbs=bandwidth / 1e9, config_json=json.dumps(config, sort_keys=True), source="measured",
        state="done", notes="python -m bench perf",
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
