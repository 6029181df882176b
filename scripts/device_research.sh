#!/usr/bin/env bash
# The research loop on the lent GPU (torch, no duckdb, no network): calibrate two built-in domains on synthetic
# gpt-oss-20b, sweep data/specs/union-research-20b.toml (union50/unionAgg/reap16/freq16 from those calibrations, prompts
# from the code domain, quality after the speed points), export JSONL + markdown, and write timings.
# Needs the duckdb wheel carried in .wheels/ (make gpu-wheels), like scripts/device_sweep.sh.
# Writes to $OUT: research.duckdb, calibrate.json, sweep.json, research-<card>.jsonl, research.md, timings.json, *.log
# Usage: scripts/device_research.sh [calibration tokens per domain, default 262144]
set -euo pipefail
tokens=${1:-262144}
python3 -m pip install -q --no-index --no-deps .wheels/duckdb-*.whl >/dev/null 2>&1 || python3 -m pip install --no-index --no-deps .wheels/duckdb-*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp}
db="$out/research.duckdb"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" || true
git rev-parse HEAD > "$out/commit.txt" 2>/dev/null || true

t0=$(date +%s)
python3 -m bench calibrate --model synthetic:gpt-oss-20b --domain code --domain prose --tokens "$tokens" \
    --db "$db" > "$out/calibrate.json" 2> "$out/calibrate.log"
t1=$(date +%s)
python3 -m bench sweep --spec data/specs/union-research-20b.toml --db "$db" --quiet > "$out/sweep.json" 2> "$out/sweep.log" || true
t2=$(date +%s)
card=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())" 2>/dev/null || echo gpu)
python3 -m bench export --db "$db" --format jsonl --out "$out/research-$card.jsonl" > /dev/null
python3 -m bench export --db "$db" --format markdown --out "$out/research.md" > /dev/null
python3 - "$db" "$out" "$t0" "$t1" "$t2" <<'PY'
import json, sys
import duckdb
db, out, t0, t1, t2 = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
con = duckdb.connect(db, read_only=True)
cal = con.execute("SELECT domain, tokens, seconds, tokenizer, text_source FROM calibrations").fetchall()
q = con.execute("SELECT r.name, q.domain, max(q.tokens), max(q.seconds) FROM quality q JOIN runs r USING (run_id) "
                "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
kl = con.execute("SELECT r.name, q.domain, q.value FROM quality q JOIN runs r USING (run_id) WHERE q.metric = 'kl' "
                 "ORDER BY 1, 2").fetchall()
cal_tok, cal_s = sum(r[1] for r in cal), sum(r[2] for r in cal)
q_tok, q_s = sum(r[2] for r in q), sum(r[3] for r in q)
t = {"calibrate_wall_s": t1 - t0, "sweep_wall_s": t2 - t1,
     "calibration": [dict(zip(("domain", "tokens", "seconds", "tokenizer", "text"), r)) for r in cal],
     "calibration_s_per_100k_tokens": round(cal_s * 1e5 / max(cal_tok, 1), 2),
     "quality": [dict(zip(("variant", "domain", "positions", "seconds"), r)) for r in q],
     "quality_s_per_100k_tokens": round(q_s * 1e5 / max(q_tok, 1), 2),
     "kl": [dict(zip(("variant", "domain", "kl"), r)) for r in kl]}
json.dump(t, open(f"{out}/timings.json", "w"), indent=1)
print(json.dumps({k: t[k] for k in ("calibrate_wall_s", "sweep_wall_s", "calibration_s_per_100k_tokens",
                                      "quality_s_per_100k_tokens")}))
PY
tail -n 3 "$out/sweep.log"
