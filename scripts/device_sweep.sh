#!/usr/bin/env bash
# Run `python -m bench sweep ARGS...` on the lent GPU machine, which has torch but no duckdb and no network.
# Needs the duckdb wheel carried in .wheels/ (make gpu-wheels). Writes $OUT/<name>.duckdb and $OUT/<name>.log.
# Usage: scripts/device_sweep.sh NAME [sweep args...]
set -euo pipefail
name=$1; shift
python3 -m pip install -q --no-index --no-deps .wheels/duckdb-*.whl >/dev/null 2>&1 || python3 -m pip install --no-index --no-deps .wheels/duckdb-*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp}
python3 -m bench sweep --db "$out/$name.duckdb" "$@" 2>&1 | tee "$out/$name.log" | grep -v '^\[' || true
