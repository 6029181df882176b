"""`python -m bench quality`: how far pruned variants' outputs moved from their base, on held-out text.

    python -m bench quality --sweep SWEEP_ID            # every run of a sweep, on the domains its prunes name
    python -m bench quality --run RUN_ID --domain code  # one run, one domain

For each run it rebuilds the variant as it ran (model, seed, top_k, the stored keep set) and its base (the same
model unpruned at its native top_k) in one spawned worker, and compares their next-token distributions on the
held-out tail of each domain's text (never the calibration part): mean KL(base ‖ variant), top-1 agreement and
perplexity (meaningful only for trained weights). Stored per run in the `quality` table.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.calibrated import DEFAULT_QUALITY_TOKENS, SEQ_LEN, domain_text, run_research_job
from bench.corpus import load_domain, parse_domain_arg
from bench.errors import EXIT_OK, BadInputError
from bench.paths import resolve_db_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help="KL / top-1 agreement / perplexity of runs against their base")
    p.add_argument("--run", action="append", default=[], metavar="RUN_ID", help="a run id (repeatable)")
    p.add_argument("--sweep", help="every run of this sweep")
    p.add_argument("--domain", action="append", default=[], metavar="NAME[=PATH]",
                   help="held-out text: a calibrated domain, a built-in (code | prose) or NAME=PATH "
                        "(default: the domains the run's prune was calibrated on)")
    p.add_argument("--tokens", type=int, help="positions compared per domain (default: 32768 on cuda, 512 on cpu)")
    p.add_argument("--db", help="DuckDB file (default: $BENCH_DB or data/bench.duckdb)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def _domains_of(run, args, db, where: str):
    if args.domain:
        out = []
        for text in args.domain:
            name, spec = parse_domain_arg(text) if "=" in text else (text, None)
            out.append(load_domain(name, spec) if spec else domain_text(db, run.model, run.seed, name, where))
        return out
    names = (run.prune or {}).get("domains") or []
    if not names or names == ["random-tokens"]:
        raise BadInputError(f"{where}: the run names no calibrated domains; pass --domain NAME (e.g. --domain code)")
    return [domain_text(db, run.model, run.seed, n, where) for n in names]


def run(args: argparse.Namespace) -> int:
    from bench import store
    from bench.research_worker import QualityJob
    from bench.store import research as rstore

    db = resolve_db_path(args.db)
    if not db.exists():
        raise BadInputError(f"database {db} does not exist; run a sweep first or pass --db")
    runs = list(store.read_runs(db, sweep_id=args.sweep)) if args.sweep else []
    for rid in args.run:
        found = store.read_runs(db, run_id=rid)
        if not found:
            raise BadInputError(f"--run {rid}: no such run in {db}; `python -m bench ls` lists them")
        runs += found
    if not runs:
        raise BadInputError("quality: give --run RUN_ID or --sweep SWEEP_ID (with runs in the database)")
    summary = {}
    for r in runs:
        if r.source != "measured":
            raise BadInputError(f"--run {r.run_id}: imported runs cannot be rebuilt; pick a measured run")
        where = f"run {r.run_id} ({r.name})"
        domains = _domains_of(r, args, db, where)
        tokens = args.tokens if args.tokens is not None else DEFAULT_QUALITY_TOKENS.get(r.device, 512)
        job = QualityJob(model=r.model, seed=r.seed, device=r.device, dtype=r.dtype, top_k=r.top_k, prune=r.prune,
                         domains=[(d.name, d.heldout_text, d.text_hash) for d in domains], budget=tokens,
                         seq_len=SEQ_LEN.get(r.device, 128))
        results = []

        def on_message(kind: str, payload, results=results) -> None:
            if kind == "quality":
                results.append(payload)
            elif kind == "progress" and not args.quiet:
                pass

        run_research_job(job, on_message)
        rstore.save_quality(db, r.run_id, results)
        summary[r.run_id] = {q.domain: {**{k: round(v, 6) for k, v in q.values.items()}, "tokens": q.tokens,
                                        "seconds": round(q.seconds, 3)} for q in results}
        for q in results:
            print(f"[{r.name}] {q.domain}: KL {q.values.get('kl', float('nan')):.4g} nats, top-1 agreement "
                  f"{q.values.get('top1_agreement', float('nan')):.3f} over {q.tokens} positions "
                  f"({q.seconds:.1f} s)", file=sys.stderr)
    print(json.dumps({"ok": True, "db": str(db), "runs": summary}))
    return EXIT_OK
