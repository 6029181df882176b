"""`python -m bench roofline`: the bandwidth ceiling of decode for a model, per batch size, as a table + JSON."""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from bench.errors import EXIT_OK, BadInputError

DTYPE_BYTES: dict[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4}
DEFAULT_BANDWIDTH_GBS = 3000.0
DEFAULT_BANDWIDTH_SOURCE = "assumed: the copy bandwidth measured on an H100 80GB HBM3 (no GPU here to measure)"
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roofline", help="bytes per decode step and the bandwidth ceiling tok/s per batch size")
    p.add_argument("--model", required=True, help="HF id, local directory or synthetic:<preset>")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--top-k", type=int, default=None, help="experts routed per token (default: the config's)")
    p.add_argument("--experts", type=int, default=None, help="experts per layer after pruning (default: all)")
    p.add_argument("--context", type=float, default=1280.0, help="mean context length in tokens (default 1280)")
    p.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="memory bandwidth in GB/s (default: measured on the GPU; 3000, an H100's, without one)",
    )
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES), help="weight dtype (default bf16)")
    p.add_argument("--weights", default="bf16", choices=("bf16", "mxfp4"),
                   help="expert weight format: bf16, or mxfp4 (blocks + scales, 4.25 bits; other weights stay bf16)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="where to measure bandwidth")
    p.set_defaults(func=run)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError as exc:
        raise BadInputError(f"--batch-sizes {text!r}: give comma-separated positive integers, e.g. 1,8,32") from exc
    if not sizes or any(b <= 0 for b in sizes):
        raise BadInputError(f"--batch-sizes {text!r}: give comma-separated positive integers, e.g. 1,8,32")
    return sizes


def _with_experts(config: Any, experts: int) -> Any:
    config = copy.deepcopy(config)
    target = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _EXPERT_KEYS:
        if isinstance(getattr(target, key, None), int):
            setattr(target, key, experts)
            return config
    raise BadInputError("--experts: this model's config has no expert count (is it a Mixture-of-Experts model?)")


def resolve_bandwidth(given_gbs: float | None, device: str) -> tuple[float, str]:
    """(bytes/s, where the figure comes from): given, measured on a GPU, or the stated H100 default."""
    if given_gbs is not None:
        if given_gbs <= 0:
            raise BadInputError(f"--bandwidth-gbs {given_gbs}: give a positive number of GB/s, e.g. 3000")
        return given_gbs * 1e9, "given (--bandwidth-gbs)"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA device is visible; use --device auto or --bandwidth-gbs")
    if device != "cpu" and torch.cuda.is_available():
        from bench.measure.bandwidth import measure_bandwidth

        name = torch.cuda.get_device_name()
        return measure_bandwidth("cuda"), f"measured: 2 GiB device-to-device copy on {name}"
    return DEFAULT_BANDWIDTH_GBS * 1e9, DEFAULT_BANDWIDTH_SOURCE


def run(args: argparse.Namespace) -> int:
    from bench.models.loading import resolve_config
    from bench.roofline import ArchSummary, config_num_experts, config_top_k, roofline_point

    batches = parse_batch_sizes(args.batch_sizes)
    if args.context <= 0:
        raise BadInputError(f"--context {args.context}: give a positive number of tokens, e.g. 1280")
    config = resolve_config(args.model)
    base_experts = config_num_experts(config)
    if args.experts is not None:
        if args.experts <= 0:
            raise BadInputError(f"--experts {args.experts}: give a positive expert count")
        if base_experts and args.experts > base_experts:
            raise BadInputError(f"--experts {args.experts}: the model has only {base_experts} experts per layer")
        config = _with_experts(config, args.experts)
    top_k = args.top_k if args.top_k is not None else config_top_k(config)
    experts = config_num_experts(config)
    if experts and not 1 <= top_k <= experts:
        raise BadInputError(f"--top-k {top_k}: must be between 1 and the expert count ({experts})")
    bandwidth, bw_source = resolve_bandwidth(args.bandwidth_gbs, args.device)
    if args.weights not in ("bf16", "mxfp4"):
        raise BadInputError(f"--weights {args.weights!r}: must be bf16 or mxfp4")
    arch = ArchSummary.from_config(config, dtype_bytes=DTYPE_BYTES[args.dtype], weights=args.weights)
    source = "measured" if bw_source.startswith("measured") else "datasheet"
    points = [roofline_point(arch, b, top_k, args.context, bandwidth, bandwidth_source=source) for b in batches]

    print(
        f"model {args.model}: {arch.total_params / 1e9:.2f}B params, {experts} experts/layer, top_k {top_k}, "
        f"{arch.active_params(top_k) / 1e9:.2f}B active/token, {args.dtype}, experts {args.weights}, "
        f"context {args.context:g}"
    )
    print(f"bandwidth {bandwidth / 1e9:.0f} GB/s ({bw_source})")
    header = ("batch", "distinct experts", "MB/step", "ceiling tok/s", "per-stream tok/s")
    rows = [
        (
            str(p.batch),
            f"{p.distinct_experts:.2f}",
            f"{p.bytes_per_step / 1e6:,.0f}",
            f"{p.ceiling_tps:,.0f}",
            f"{p.per_stream_tps:,.1f}",
        )
        for p in points
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    summary = {
        "ok": True,
        "command": "roofline",
        "model": args.model,
        "experts": experts,
        "top_k": top_k,
        "context": args.context,
        "dtype": args.dtype,
        "weights": args.weights,
        "total_params": arch.total_params,
        "active_params": arch.active_params(top_k),
        "bandwidth_gbs": bandwidth / 1e9,
        "bandwidth_source": bw_source,
        "points": [
            {
                "batch": p.batch,
                "distinct_experts": p.distinct_experts,
                "bytes_per_step": p.bytes_per_step,
                "ceiling_tps": p.ceiling_tps,
                "per_stream_tps": p.per_stream_tps,
            }
            for p in points
        ],
    }
    print(json.dumps(summary))
    return EXIT_OK
