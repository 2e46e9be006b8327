#!/usr/bin/env bash
# The second lent-GPU run of this project, in one call (see README "GPU"): the issue-12 check
# (benchmarks/gpu_check.py, GPU to itself), then the skill benchmark through `nowcast train --gpu`
# (benchmarks/bench_skill.py --gpu). Results: $OUT/gpu_check.tgz and $OUT/sweep.tgz.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/gpu_check /tmp/sweep
timeout "${CHECK_TIMEOUT_S:-200}" python3 benchmarks/gpu_check.py --out /tmp/gpu_check --budget-s "${CHECK_BUDGET_S:-160}" \
  > /tmp/gpu_check/stdout.txt 2>&1
tail -40 /tmp/gpu_check/stdout.txt
tar czf "$OUT/gpu_check.tgz" -C /tmp gpu_check
# the skill runs through the pipeline: nowcast synth -> ingest -> train --gpu --workers 1 -> evaluate
timeout "${SWEEP_TIMEOUT_S:-285}" python3 benchmarks/bench_skill.py --gpu --workdir /tmp/sweep/work --out /tmp/sweep \
  --steps "${SKILL_STEPS:-2000}" > /tmp/sweep/sweep.log 2>&1
tail -25 /tmp/sweep/sweep.log
rm -rf /tmp/sweep/work/archive
tar czf "$OUT/sweep.tgz" -C /tmp sweep
