"""`python -m bench env`: the environment fingerprint of this machine (and optionally its copy bandwidth)."""

from __future__ import annotations

import argparse
import json

from bench.errors import EXIT_OK, BadInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print the environment fingerprint (GPU, driver, CUDA, versions, commit, host)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="device to describe")
    p.add_argument("--bandwidth", action="store_true", help="also measure the copy bandwidth (GB/s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.measure.env import fingerprint, resolve_device

    if args.device == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA device is visible here; use --device auto or cpu")
    device = resolve_device(args.device)
    info = fingerprint(device).to_dict()
    if args.bandwidth:
        from bench.measure.bandwidth import measure_bandwidth

        info["bandwidth_gbs"] = measure_bandwidth(device) / 1e9
    for key, value in info.items():
        print(f"{key:>14}: {value}")
    print(json.dumps({"ok": True, "command": "env", **info}))
    return EXIT_OK
