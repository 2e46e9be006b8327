#!/usr/bin/env bash
# The second lent-GPU run of this project, in one call (see README "GPU"): the issue-12 check
# (benchmarks/gpu_check.py, GPU to itself), then the skill runs of benchmarks/skill_sweep.py (several
# recipes sharing the GPU through MPS). Results: $OUT/gpu_check.tgz and $OUT/sweep.tgz.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/gpu_check /tmp/sweep
timeout "${CHECK_TIMEOUT_S:-200}" python3 benchmarks/gpu_check.py --out /tmp/gpu_check --budget-s "${CHECK_BUDGET_S:-160}" \
  > /tmp/gpu_check/stdout.txt 2>&1
tail -40 /tmp/gpu_check/stdout.txt
tar czf "$OUT/gpu_check.tgz" -C /tmp gpu_check
if nvidia-cuda-mps-control -d 2>/dev/null; then
  if ! timeout 60 python3 -c "import torch; torch.zeros(1, device='cuda').sum().item()"; then
    echo quit | nvidia-cuda-mps-control; echo "MPS unusable: off"
  else echo "MPS on"; fi
fi
timeout "${SWEEP_TIMEOUT_S:-285}" python3 benchmarks/skill_sweep.py --out /tmp/sweep --days 120 --size 96 --seed 7 \
  --recipes trajgru_graph,convgru_graph,trajgru_2k,convgru_2k,convlstm_2k,trajgru_noaug_2k \
  --minutes "${SWEEP_MINUTES:-4}" --no-baselines --deadline-s "${SWEEP_DEADLINE_S:-225}" --val-every 250 2>&1 \
  | grep -v -i "warning\|code.add_\|return float" > /tmp/sweep/sweep.log
tail -25 /tmp/sweep/sweep.log
rm -f /tmp/sweep/data.npz
tar czf "$OUT/sweep.tgz" -C /tmp sweep
