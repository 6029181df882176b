"""`python -m bench prune`: write a pruned checkpoint (save_pretrained) that loads back with from_pretrained.

    python -m bench prune --model SRC --out DIR (--experts N --method first|random|frequency
                                                 | --keep FILE | --union A B ... --experts N)
                          [--top-k K] [--seed S] [--device auto|cpu|cuda] [--dtype auto|bfloat16|float16|float32]

Besides the weights and config, DIR gets `moe_bench_prune.json` (source, fingerprint, kept experts per layer).
Last stdout line: a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import EXIT_OK, BadInputError
from bench.spec import PRUNE_METHODS, PruneSpec, resolve_data_path

PRUNE_INFO_FILE = "moe_bench_prune.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="write an expert-pruned checkpoint (save_pretrained)")
    p.add_argument("--model", required=True, help="synthetic:<preset>, a local checkpoint dir or a Hugging Face id")
    p.add_argument("--out", required=True, help="output directory for the pruned checkpoint")
    p.add_argument("--experts", type=int, help="experts kept per layer (with --method or --union)")
    p.add_argument("--method", choices=PRUNE_METHODS, help="how to choose the kept experts (with --experts)")
    p.add_argument("--keep", help='keep file: JSON {"layers": [[...], ...]} or a bare list of lists')
    p.add_argument("--union", nargs="+", metavar="KEEP_FILE", help="per-layer union of keep files (with --experts)")
    p.add_argument("--top-k", type=int, default=None, help="experts routed per token (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic weights, random keep and calibration")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="auto: bfloat16 on cuda, float32 on cpu",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    p.set_defaults(func=run)


def prune_spec_from_args(args: argparse.Namespace) -> PruneSpec:
    """The PruneSpec the flags describe; exactly one of --method, --keep, --union."""
    chosen = [
        flag for flag, value in (("--method", args.method), ("--keep", args.keep), ("--union", args.union)) if value
    ]
    if len(chosen) != 1:
        raise BadInputError(
            "prune: give exactly one of --experts N --method M, --keep FILE, or --union A B --experts N"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if args.keep:
        if args.experts is not None:
            raise BadInputError("--keep: the keep file sets the expert count; drop --experts")
        return PruneSpec(keep=resolve_data_path(args.keep, Path.cwd(), "--keep"))
    if args.experts is None or args.experts < 1:
        raise BadInputError(f"--experts: give a positive expert count with {chosen[0]}, e.g. --experts 16")
    if args.union:
        files = [resolve_data_path(f, Path.cwd(), f"--union[{i}]") for i, f in enumerate(args.union)]
        return PruneSpec(union=files, experts=args.experts)
    return PruneSpec(experts=args.experts, method=args.method)


def check_writable_dir(out: Path, flag: str) -> None:
    """Refuse (exit 2) an output directory that cannot be created or written, before any work: the nearest
    existing ancestor must be a directory where a directory can be made (probed, then removed)."""
    import tempfile

    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInputError(f"{flag} {out}: {ancestor} is not a directory; choose another path")
    try:
        Path(tempfile.mkdtemp(prefix=".moe-bench-probe-", dir=ancestor)).rmdir()
    except OSError as exc:
        raise BadInputError(f"{flag} {out}: cannot create a directory in {ancestor} ({exc.strerror or exc}); "
                            "choose a writable path") from None


def run(args: argparse.Namespace) -> int:
    from bench.models.loading import load_model, resolve_device, torch_dtype
    from bench.models.pruning import apply_variant

    prune = prune_spec_from_args(args)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise BadInputError(f"--out {out} is not empty; choose an empty directory or pass --force")
    check_writable_dir(out, "--out")
    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    # sliced experts must be plain tensors: an MXFP4 checkpoint is always dequantized before pruning
    loaded = load_model(args.model, device=device, dtype=dtype, seed=args.seed, dequantize_mxfp4=True)
    top_k = args.top_k if args.top_k is not None else int(loaded.config.num_experts_per_tok)
    print(f"pruning {args.model} ({loaded.base_experts} experts per layer) ...", file=sys.stderr)
    keep = apply_variant(loaded, prune, top_k, seed=args.seed)
    assert keep is not None
    try:
        out.mkdir(parents=True, exist_ok=True)
        loaded.model.save_pretrained(out)
    except OSError as exc:
        raise BadInputError(f"--out {out}: cannot write the checkpoint there ({exc}); choose another directory") \
            from None
    experts = len(keep[0])
    params = sum(p.numel() for p in loaded.model.parameters())
    info = {
        "source": args.model,
        "source_fingerprint": loaded.fingerprint,
        "seed": args.seed,
        "prune": prune.to_dict(),
        "base_experts": loaded.base_experts,
        "experts": experts,
        "top_k": top_k,
        "dtype": loaded.dtype,
        "notes": loaded.notes,
        "layers": keep,
    }
    (out / PRUNE_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {out}: {experts} of {loaded.base_experts} experts per layer, top_k {top_k}", file=sys.stderr)
    print(
        json.dumps(
            {
                "ok": True,
                "out": str(out),
                "model": args.model,
                "base_experts": loaded.base_experts,
                "experts": experts,
                "top_k": top_k,
                "layers": len(keep),
                "params": params,
                "dtype": loaded.dtype,
                "notes": loaded.notes,
            }
        )
    )
    return EXIT_OK
