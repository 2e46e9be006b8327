#!/usr/bin/env bash
# One lent-GPU session (issue 18): the pipeline on the GPU, the skill benchmark through `nowcast train
# --gpu`, the CUDA tests, the kernel checks and the speed benchmark; see benchmarks/gpu/session.py for
# the stages and their budgets. Everything goes to $OUT (summary.json, results.tgz, session.log).
#
#   GPU machine (repo root, bundle carried):  OUT=/some/dir bash benchmarks/gpu/session.sh
#   here, on the CPU, at tiny sizes:          OUT=/tmp/smoke bash benchmarks/gpu/session.sh --cpu-smoke
#   list the stages and commands:             bash benchmarks/gpu/session.sh --dry-run
#   part of it:                               OUT=... bash benchmarks/gpu/session.sh --stages gpu_check
set -u -o pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=$(command -v python3 || command -v python)
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  "$PY" benchmarks/gpu/session.py "$@" 2>&1 | tee "$OUT/session.log"
else
  "$PY" benchmarks/gpu/session.py "$@"
fi
