"""`python -m bench sweep`: run a sweep from a TOML spec and/or flags, or `--resume SWEEP_ID`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.errors import EXIT_OK, EXIT_RUN_FAILED, BadInputError
from bench.paths import resolve_db_path
from bench.spec import DEVICES, DTYPES, ENGINE_NAMES, LIMITS, SweepSpec, check_id, read_spec_toml, spec_from_dict

SWEEP_FLAGS = ("prompt_len", "new_tokens", "batch_sizes", "repeats", "engine", "dtype", "device", "seed", "weights")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of GiB")
    return value


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="DuckDB file (default: $BENCH_DB or data/bench.duckdb)")
    p.add_argument("--sweep-id", metavar="ID", help="id to register the sweep under (the dashboard passes one); "
                   "letters, digits, '.', '_', '-' (default: a new s<date>-<time>-<hex> id)")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    p.add_argument("--gpu-mem-cap-gib", type=_positive_float, metavar="GIB",
                   help="cap the worker's CUDA memory (to test OOM handling)")
    p.add_argument("--no-memory-check", dest="check_memory", action="store_false",
                   help="skip the preflight that refuses a model larger than the device's free memory")
    p.add_argument("--cluster", metavar="WHERE",
                   help="spread the variants over a Dask cluster: local (every GPU of this host), local:N, or a "
                        "scheduler address tcp://host:8786 (overrides the spec's sweep.cluster; see docs/SCALE.md)")


def _range(name: str) -> str:
    lo, hi = LIMITS[name]
    return f"{lo}..{hi:,}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a batch sweep over the variants of a spec",
        description="Run a sweep from a TOML spec (--spec) and/or flags; a flag overrides the spec's value, and "
        "without a spec the defaults below apply.",
    )
    p.add_argument("--spec", help="TOML spec file (see data/specs/)")
    p.add_argument("--resume", metavar="SWEEP_ID", help="run only the points still missing from this sweep")
    p.add_argument("--retry-errors", action="store_true",
                   help="with --resume: also measure again the points that ended as error, oom or skipped")
    p.add_argument("--title", help="sweep title shown in the dashboard (default: 'moe-bench sweep')")
    p.add_argument("--prompt-len", type=int, metavar="N",
                   help=f"prompt tokens per stream, {_range('prompt_len')} (required without a spec)")
    p.add_argument("--new-tokens", type=int, metavar="N",
                   help=f"generated tokens per stream, {_range('new_tokens')}; decode is timed over N-1 steps "
                   "(required without a spec)")
    p.add_argument("--batch-sizes", metavar="B,B,...",
                   help=f"comma-separated, each {_range('batch_size')}, e.g. 1,2,4,8 (required without a spec)")
    p.add_argument("--repeats", type=int, metavar="N", help=f"timed repeats per point, {_range('repeats')} "
                   "(default 3)")
    p.add_argument("--engine", choices=ENGINE_NAMES,
                   help="hf: transformers generate; graph: the bench's fused decoder (CUDA graphs on a GPU) "
                   "(default hf)")
    p.add_argument("--dtype", choices=DTYPES, help="weights and activations (default auto: bfloat16 on cuda, "
                   "float32 on cpu)")
    p.add_argument("--device", choices=DEVICES, help="default auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--seed", type=int, metavar="N",
                   help=f"seed of the synthetic weights and prompts, {_range('seed')} (default 0)")
    p.add_argument("--weights", choices=("bf16", "mxfp4"),
                   help="expert weight format of variants that do not set one (mxfp4: the released checkpoint layout)")
    p.add_argument(
        "--variant", action="append", default=[], metavar="KEY=VAL,...",
        help="add a variant: name=x,model=synthetic:tiny-moe,top_k=2[,weights=mxfp4][,experts=4,method=first|keep=F"
             "|union=A;B|method=union,domains=code;prose]",
    )
    add_run_options(p)
    p.set_defaults(func=run)


def parse_batch_sizes(text: str) -> list[Any]:
    out: list[Any] = []
    for item in text.split(","):
        item = item.strip()
        try:
            out.append(int(item))
        except ValueError as exc:
            raise BadInputError(f"--batch-sizes: {item!r} is not an integer; write e.g. 1,2,4,8") from exc
    return out


def parse_variant(text: str) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for part in text.split(","):
        if "=" not in part:
            raise BadInputError(f"--variant: {part!r} is not KEY=VALUE (in {text!r})")
        key, value = (s.strip() for s in part.split("=", 1))
        raw[key] = value
    variant: dict[str, Any] = {}
    prune: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("name", "model", "weights"):
            variant[key] = value
        elif key == "top_k":
            variant[key] = _as_int(value, "--variant top_k")
        elif key == "experts":
            prune[key] = _as_int(value, "--variant experts")
        elif key in ("method", "keep"):
            prune[key] = value
        elif key in ("union", "domains"):
            prune[key] = [s for s in value.split(";") if s]
        elif key == "rank":
            prune[key] = value
        elif key == "per_domain":
            prune[key] = _as_int(value, "--variant per_domain")
        else:
            raise BadInputError(f"--variant: unknown key {key!r}; use name, model, top_k, weights, experts, method, "
                                "keep, union, domains, rank, per_domain")
    if prune:
        variant["prune"] = prune
    variant["_explicit"] = True  # paths given on the command line are the user's own choice
    return variant


def _as_int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise BadInputError(f"{where}: {value!r} is not an integer") from exc


def build_spec(args: argparse.Namespace) -> SweepSpec:
    raw: dict[str, Any] = {"sweep": {}, "variants": []}
    base_dir = None
    if args.spec:
        path = Path(args.spec)
        raw = read_spec_toml(path)
        raw.setdefault("sweep", {})
        raw.setdefault("variants", [])
        base_dir = path.parent.resolve()
    if args.title:
        raw["title"] = args.title
    for name in SWEEP_FLAGS:
        value = getattr(args, name)
        if value is not None:
            raw["sweep"][name] = parse_batch_sizes(value) if name == "batch_sizes" else value
    if args.variant:
        raw["variants"] = list(raw.get("variants") or []) + [parse_variant(v) for v in args.variant]
    return spec_from_dict(raw, base_dir=base_dir, source_path=args.spec, restrict_paths=bool(args.spec))


def make_runner(db: Path, spec: SweepSpec, args: argparse.Namespace):
    """The serial runner, or bench.cluster's when --cluster (or the spec's sweep.cluster) names a cluster."""
    from bench.cluster.target import parse_cluster
    from bench.runner import SweepRunner

    flag = getattr(args, "cluster", None)
    target = parse_cluster(flag) if flag is not None else parse_cluster(spec.sweep.cluster, where="sweep.cluster")
    if target is None:
        return SweepRunner(db, progress=not args.quiet, gpu_mem_cap_gib=args.gpu_mem_cap_gib,
                           check_memory=getattr(args, "check_memory", True))
    from bench.cluster.coordinator import ClusterSweepRunner

    spec.sweep.cluster = str(target)
    return ClusterSweepRunner(db, target, progress=not args.quiet, gpu_mem_cap_gib=args.gpu_mem_cap_gib)


def run(args: argparse.Namespace) -> int:
    from bench.runner import spec_for_resume
    from bench.store import reads

    if args.sweep_id is not None:
        check_id(args.sweep_id, "--sweep-id")
    if args.resume is not None:
        check_id(args.resume, "--resume")
    if args.retry_errors and not args.resume:
        raise BadInputError("--retry-errors goes with --resume SWEEP_ID: it re-measures that sweep's failed points")
    db = resolve_db_path(args.db)
    if args.resume and not reads.has_sweep(db, args.resume):  # read-only: a refused command writes nothing
        raise BadInputError(f"--resume: no sweep {args.resume!r} in {db}; `python -m bench ls` lists the sweeps")
    if args.resume:
        spec = spec_for_resume(db, args.resume)
        sweep_id, resume = args.resume, True
    else:
        if not args.spec and not args.variant:
            raise BadInputError("sweep: give --spec FILE.toml or at least one --variant (or --resume SWEEP_ID)")
        spec = build_spec(args)
        sweep_id, resume = args.sweep_id, False
    runner = make_runner(db, spec, args)
    outcome = runner.run(spec, sweep_id=sweep_id, resume=resume, retry_errors=args.retry_errors)
    summary = outcome.summary()
    summary["db"] = str(db)
    print(json.dumps(summary))
    code = EXIT_OK if summary["ok"] else EXIT_RUN_FAILED
    if getattr(runner, "exit_now", False):  # bench.cluster killed its local Dask cluster: skip Dask's atexit close
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
