#!/usr/bin/env bash
# The reference measurements of the engine issues on the lent GPU (torch, no duckdb, no network), in one call:
#   1. the GPU tests of the graph engine's kernels (bf16 and MXFP4);
#   2. the reference report's sweep (data/specs/union-prunes.toml) with the graph engine, in MXFP4 and in bf16,
#      cut to fit a device call: 64 new tokens, one repeat, batch sizes 1, 4, 32 (the report: 2048, 3, 1-32);
#   3. the MXFP4 issue's side-by-side command (bench perf --weights bf16,mxfp4, E32/E16, batch 1 and 32);
#   4. the MXFP4 teacher-forced accuracy check (scripts/gpu_mxfp4.py: graph vs HF bf16 against float32), at batch
#      ACC_BATCH (default 32) and, with ACC_ONE_BY_ONE=16, 16 sequences generated one at a time (batch 1).
# Each result is exported with the bench's own JSONL export. Needs the duckdb wheel carried in .wheels/
# (make gpu-wheels). Set MOE_BENCH_GIT_COMMIT to the commit the tree came from (the copy has no .git).
# Writes to $OUT (at most 8 files, what the device tool brings back): pytest.txt, sweeps.log (both sweeps' logs),
# union-prunes-{mxfp4-,}graph.jsonl, perf-bf16-mxfp4.jsonl, perf.log, accuracy.jsonl, timings.txt (the card, then a
# line a step); the sweeps' DuckDB files and run logs stay in $WORK (default /tmp/device_reference).
# Usage: scripts/device_reference.sh [steps...]   steps: tests mxfp4 bf16 perf accuracy (default: the first four,
# in that order)
set -uo pipefail
out=${OUT:-/tmp}
work=${WORK:-/tmp/device_reference}
mkdir -p "$work"
steps=${*:-tests mxfp4 bf16 perf}
python3 -m pip install -q --no-index --no-deps .wheels/duckdb-*.whl >/dev/null 2>&1 \
    || python3 -m pip install --no-index --no-deps .wheels/duckdb-*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/timings.txt" || true
commit=${MOE_BENCH_GIT_COMMIT:-}
sweep_args=(--spec data/specs/union-prunes.toml --engine graph --new-tokens 64 --repeats 1 --batch-sizes 1,4,32)

stamp() { echo "$1 $(date +%s)" >> "$out/timings.txt"; }
stamp start
for step in $steps; do
    case $step in
    tests)
        # test_measure's fingerprint test wants a 40-digit commit: run pytest without the variable.
        env -u MOE_BENCH_GIT_COMMIT python3 -m pytest -q -p no:cacheprovider tests/test_mxfp4_gpu.py \
            tests/test_graph_kernels_gpu.py > "$out/pytest.txt" 2>&1
        tail -n 2 "$out/pytest.txt" ;;
    mxfp4)
        OUT=$work MOE_BENCH_GIT_COMMIT=$commit bash scripts/device_sweep.sh mx "${sweep_args[@]}" --weights mxfp4
        cat "$work/mx.log" >> "$out/sweeps.log"
        python3 -m bench export --db "$work/mx.duckdb" --format jsonl --out "$out/union-prunes-mxfp4-graph.jsonl" ;;
    bf16)
        OUT=$work MOE_BENCH_GIT_COMMIT=$commit bash scripts/device_sweep.sh bf "${sweep_args[@]}"
        cat "$work/bf.log" >> "$out/sweeps.log"
        python3 -m bench export --db "$work/bf.duckdb" --format jsonl --out "$out/union-prunes-graph.jsonl" ;;
    perf)
        MOE_BENCH_GIT_COMMIT=$commit python3 -m bench perf --model synthetic:gpt-oss-20b --engines graph \
            --weights bf16,mxfp4 --experts 32,16 --top-k 4 --batch-sizes 1,32 --new-tokens 64 --repeats 3 \
            --out-jsonl "$out/perf-bf16-mxfp4.jsonl" > "$out/perf.log" 2>&1
        tail -n 30 "$out/perf.log" ;;
    accuracy)
        n=0
        for acc in "--accuracy-batch ${ACC_BATCH:-32}" ${ACC_ONE_BY_ONE:+"--accuracy-batch $ACC_ONE_BY_ONE --accuracy-one-by-one"}; do
            n=$((n + 1))
            # shellcheck disable=SC2086  # $acc holds two or three arguments
            MOE_BENCH_GIT_COMMIT=$commit python3 scripts/gpu_mxfp4.py --out "$work/acc$n" --budget-s 400 --skip-probe \
                --skip-engine --skip-bf16 $acc > "$work/acc$n.log" 2>&1
            grep '"accuracy"' "$work/acc$n/mxfp4.jsonl" >> "$out/accuracy.jsonl" || tail -n 5 "$work/acc$n.log"
        done
        tail -n 3 "$out/accuracy.jsonl" ;;
    *) echo "unknown step '$step' (use: tests mxfp4 bf16 perf accuracy)" >&2; exit 2 ;;
    esac
    stamp "$step"
done
