"""`python -m bench sweep`: run a sweep from a TOML spec and/or flags, or `--resume SWEEP_ID`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.errors import EXIT_OK, EXIT_RUN_FAILED, BadInputError
from bench.paths import resolve_db_path
from bench.spec import SweepSpec, read_spec_toml, spec_from_dict

SWEEP_FLAGS = ("prompt_len", "new_tokens", "batch_sizes", "repeats", "engine", "dtype", "device", "seed", "weights")


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="DuckDB file (default: $BENCH_DB or data/bench.duckdb)")
    p.add_argument("--sweep-id", help="id to register the sweep under (the dashboard passes one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    p.add_argument("--gpu-mem-cap-gib", type=float, help="cap the worker's CUDA memory (to test OOM handling)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a batch sweep over the variants of a spec")
    p.add_argument("--spec", help="TOML spec file (see data/specs/)")
    p.add_argument("--resume", metavar="SWEEP_ID", help="run only the points still missing from this sweep")
    p.add_argument("--title")
    p.add_argument("--prompt-len", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--batch-sizes", help="comma-separated, e.g. 1,2,4,8")
    p.add_argument("--repeats", type=int)
    p.add_argument("--engine")
    p.add_argument("--dtype")
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--weights", choices=("bf16", "mxfp4"),
                   help="expert weight format of variants that do not set one (mxfp4: the released checkpoint layout)")
    p.add_argument(
        "--variant", action="append", default=[], metavar="KEY=VAL,...",
        help="add a variant: name=x,model=synthetic:tiny-moe,top_k=2[,weights=mxfp4][,experts=4,method=first|keep=F"
        "|union=A;B]",
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
        elif key == "union":
            prune[key] = [s for s in value.split(";") if s]
        else:
            raise BadInputError(
                f"--variant: unknown key {key!r}; use name, model, top_k, weights, experts, method, keep, union"
            )
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


def run(args: argparse.Namespace) -> int:
    from bench.runner import SweepRunner, spec_for_resume

    db = resolve_db_path(args.db)
    if args.resume:
        spec = spec_for_resume(db, args.resume)
        sweep_id, resume = args.resume, True
    else:
        if not args.spec and not args.variant:
            raise BadInputError("sweep: give --spec FILE.toml or at least one --variant (or --resume SWEEP_ID)")
        spec = build_spec(args)
        sweep_id, resume = args.sweep_id, False
    outcome = SweepRunner(db, progress=not args.quiet, gpu_mem_cap_gib=args.gpu_mem_cap_gib).run(
        spec, sweep_id=sweep_id, resume=resume
    )
    summary = outcome.summary()
    summary["db"] = str(db)
    print(json.dumps(summary))
    return EXIT_OK if summary["ok"] else EXIT_RUN_FAILED
