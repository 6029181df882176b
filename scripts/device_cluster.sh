#!/usr/bin/env bash
# The two-GPU scale-out check (issue 11), one device call on nvidia-h200-x2:
#   run(kind="nvidia-h200-x2", carry=[".wheels"], timeout_s=600,
#       command="MOE_BENCH_GIT_COMMIT=<commit> bash scripts/device_cluster.sh")
# Needs `make gpu-wheels` first (duckdb, dask, distributed, dask-cuda and the Dask dependencies the image lacks).
# Runs data/specs/union-prunes.toml with the graph engine and NEW_TOKENS (default 64) / REPEATS (default 2):
# first with --cluster local (every GPU, LocalCUDACluster), then on one GPU; each run gets a fresh Triton cache so
# neither inherits the other's compiled kernels. Writes to $OUT: cluster.jsonl, single.jsonl (the bench's JSONL
# export), cluster.log, single.log, stats.json (coordinator's per-task and per-point costs), summary.json and
# summary.md (wall times, their ratio, per-point tok/s agreement, scheduler overhead per task).
# On CPU (to test this script): DEVICE=cpu SPEC=data/specs/tiny-cpu.toml CLUSTER=local:2 ENGINE=hf bash ...
set -uo pipefail
out=${OUT:-/tmp/device-cluster}; mkdir -p "$out"
NEW_TOKENS=${NEW_TOKENS:-64}; REPEATS=${REPEATS:-2}; SPEC=${SPEC:-data/specs/union-prunes.toml}
ENGINE=${ENGINE:-graph}; DEVICE=${DEVICE:-auto}; CLUSTER=${CLUSTER:-local}
# Time limits per run (the device call has 600 s): H100 figures give ~45 s per variant at 64 tokens, so about
# 150 s for the cluster (3 variants on one GPU) and 250 s for one GPU. A run cut short still exports its points.
BUDGET_CLUSTER_S=${BUDGET_CLUSTER_S:-220}; BUDGET_SINGLE_S=${BUDGET_SINGLE_S:-320}
PY=${PY:-python3}
if [ -d .wheels ] && ls .wheels/*.whl >/dev/null 2>&1 && ! $PY -c "import duckdb, distributed" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .wheels/*.whl \
    || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MOE_BENCH_LOCK_DIR=${MOE_BENCH_LOCK_DIR:-/tmp/moe-bench-locks}
export MOE_BENCH_GIT_COMMIT=${MOE_BENCH_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
$PY -c "import dask, distributed; print('dask', dask.__version__, 'distributed', distributed.__version__)"
$PY -c "import dask_cuda; print('dask-cuda', dask_cuda.__version__)" 2>&1 | tail -1
nvidia-smi -L 2>/dev/null || true
args=(--spec "$SPEC" --engine "$ENGINE" --device "$DEVICE" --new-tokens "$NEW_TOKENS" --repeats "$REPEATS" --quiet)
work=$(mktemp -d)
run() {  # NAME BUDGET_S EXTRA...
  local name=$1 budget=$2; shift 2
  local t0 rc
  t0=$(date +%s.%N)
  TRITON_CACHE_DIR="$work/triton-$name" MOE_BENCH_CLUSTER_STATS="$out/stats.json" \
    timeout "$budget" $PY -m bench sweep --db "$work/$name.duckdb" "${args[@]}" "$@" >"$out/$name.log" 2>&1
  rc=$?
  if [ "$rc" = 124 ]; then echo "$name rc=124: cut at ${budget} s" | tee -a "$out/$name.log"
  else echo "$name rc=$rc" | tee -a "$out/$name.log"; fi
  echo "$name $($PY -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$t0")" >>"$work/wall.txt"
  $PY -m bench export --format jsonl --db "$work/$name.duckdb" --out "$out/$name.jsonl" || true
}
run cluster "$BUDGET_CLUSTER_S" --cluster "$CLUSTER"
run single "$BUDGET_SINGLE_S"
$PY - "$work/wall.txt" "$work/wall.json" <<'PYEOF'
import json, sys
wall = dict(line.split() for line in open(sys.argv[1]))
json.dump({f"{k}_s": float(v) for k, v in wall.items()}, open(sys.argv[2], "w"))
PYEOF
cp "$work/wall.json" "$out/wall.json" 2>/dev/null || true
$PY scripts/cluster_report.py "$work/cluster.duckdb" "$work/single.duckdb" "$work/wall.json" "$out/stats.json" \
  "$out/summary.json" "$out/summary.md"
tail -n 3 "$out/cluster.log" "$out/single.log"
