"""`python -m bench calibrate`: routing statistics of a model over text domains, stored in DuckDB.

    python -m bench calibrate --model synthetic:tiny-moe --domain code --domain chat=chats.jsonl

Each domain's text (a file, a folder, or a built-in: code | prose, see bench.corpus) is tokenized with the
model's own tokenizer (synthetic presets: the labelled byte-level mapping), cut to the token budget from its
calibration part (the first 90%; the rest is held out for quality), and run through the model in a spawned
worker. Per layer and expert it stores the routed-token count, mean routing weight and REAP saliency. The same
model, domain, text and budget again reuses the stored calibration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.calibrated import CAL_BATCH, DEFAULT_BUDGET, SEQ_LEN, expected_fingerprint, run_research_job
from bench.corpus import DomainText, load_domain, parse_domain_arg
from bench.errors import EXIT_OK, BadInputError
from bench.paths import resolve_db_path
from bench.store import research as rstore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="record per-expert routing of a model over text domains")
    p.add_argument("--model", required=True, help="synthetic:<preset>, a checkpoint folder or a Hugging Face id")
    p.add_argument("--domain", action="append", default=[], metavar="NAME[=PATH]",
                   help="NAME=PATH (.txt/.md/.jsonl file or folder) or a built-in: code | prose (repeatable)")
    p.add_argument("--tokens", type=int, help="token budget per domain (default: 262144 on cuda, 2048 on cpu)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 1024 on cuda, 128 on cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic weights (part of the model's identity)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    p.add_argument("--replace", action="store_true",
                   help="a domain name already calibrated on other text for this model: replace it")
    p.add_argument("--db", help="DuckDB file (default: $BENCH_DB or data/bench.duckdb)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled, self.last = enabled, 0.0

    def __call__(self, domain: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last > 1.0 or done >= total):
            self.last = now
            print(f"[calibrate {domain}] {done}/{total} tokens ({100 * done / max(total, 1):.0f}%)", file=sys.stderr)


def _plan(db, fp: str, domains: list[DomainText], budget: int, replace: bool) -> tuple[list, list]:
    """(domains to run, reused calibration rows). Raises when a name is reused with other text."""
    todo, reused = [], []
    for d in domains:
        cid = rstore.calibration_id(fp, d.name, d.text_hash, budget)
        rows = rstore.calibrations_for(db, fp, d.name)
        same = [r for r in rows if r["calibration_id"] == cid]
        if same:
            reused.append(same[0])
            continue
        other_text = [r for r in rows if r["text_hash"] != d.text_hash]
        if other_text and not replace:
            r = other_text[0]
            raise BadInputError(
                f"--domain {d.name}: this model already has a calibration of domain {d.name!r} on other text "
                f"({r['text_source']}, hash {r['text_hash']}; now {d.description}, hash {d.text_hash}); use another "
                "domain name, or --replace to replace it"
            )
        todo.append(d)
    return todo, reused


def run(args: argparse.Namespace) -> int:
    from bench.runner import resolve_device_dtype

    if not args.domain:
        raise BadInputError("calibrate: give at least one --domain NAME=PATH (or a built-in: --domain code)")
    parsed = [parse_domain_arg(text) for text in args.domain]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise BadInputError(f"--domain: a domain name is given twice ({names}); give each name once")
    domains = [load_domain(n, spec) for n, spec in parsed]
    for d in domains:
        if not d.calibration_text.strip():
            raise BadInputError(f"--domain {d.name}: the text is too short to split into calibration and held-out "
                                "parts; give more text")
    db = resolve_db_path(args.db)
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    budget = args.tokens if args.tokens is not None else DEFAULT_BUDGET[device]
    seq_len = args.seq_len if args.seq_len is not None else SEQ_LEN[device]
    if budget < 2 or seq_len < 2:
        raise BadInputError("--tokens and --seq-len must be at least 2")
    fp = expected_fingerprint(args.model, args.seed)
    todo, reused = _plan(db, fp, domains, budget, args.replace)
    summary: dict[str, dict] = {r["domain"]: {"calibration_id": r["calibration_id"], "reused": True,
                                              "tokens": int(r["tokens"]), "tokenizer": r["tokenizer"]}
                                for r in reused}
    if todo:
        from bench.research_worker import CalibrationJob, CalibrationOut

        by_name = {d.name: d for d in todo}
        progress = _Progress(not args.quiet)
        top_k: dict[str, int] = {}

        def on_message(kind: str, payload) -> None:
            if kind == "progress":
                progress(*payload)
            elif kind == "model":
                if payload["fingerprint"] != fp:
                    raise BadInputError(f"model {args.model} loaded with fingerprint {payload['fingerprint']}, "
                                        f"expected {fp}")
                top_k["k"] = payload["top_k"]
            elif kind == "calibration":
                out: CalibrationOut = payload
                d = by_name[out.domain]
                row = rstore.CalibrationRow(
                    calibration_id=rstore.calibration_id(fp, d.name, d.text_hash, budget), model=args.model,
                    model_fingerprint=fp, domain=d.name, text_hash=d.text_hash, text_source=d.description,
                    text_spec=d.spec, tokenizer=out.tokenizer, tokens=out.stats.tokens, budget=budget,
                    layers=out.stats.layers, experts=out.stats.experts, top_k=out.stats.top_k, device=device,
                    seconds=out.seconds)
                rstore.save_calibration(db, row, out.stats, replace_domain=True)
                summary[d.name] = {"calibration_id": row.calibration_id, "reused": False, "tokens": row.tokens,
                                   "tokenizer": row.tokenizer, "seconds": round(out.seconds, 3),
                                   "seconds_per_100k_tokens": round(out.seconds * 1e5 / max(row.tokens, 1), 3)}

        job = CalibrationJob(model=args.model, seed=args.seed, device=device, dtype=dtype,
                             domains=[(d.name, d.calibration_text) for d in todo], budget=budget, seq_len=seq_len,
                             batch=CAL_BATCH[device])
        run_research_job(job, on_message)
    for name, info in summary.items():
        state = "reused" if info["reused"] else f"{info.get('seconds', 0):.1f} s"
        print(f"calibration {name}: {info['tokens']} tokens, tokenizer {info['tokenizer']} ({state})", file=sys.stderr)
    print(json.dumps({"ok": True, "db": str(db), "model": args.model, "model_fingerprint": fp, "budget": budget,
                      "domains": summary}))
    return EXIT_OK
