#!/usr/bin/env bash
# The recipe sweep as run on one lent GPU (see skill_sweep.py); results land in $OUT/sweep.tgz.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu/skill_sweep.sh [extra skill_sweep.py options]
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# Several recipes share the GPU: use MPS if it starts and a CUDA client can use it.
if nvidia-cuda-mps-control -d 2>/dev/null; then
  if ! timeout 60 python3 -c "import torch; torch.zeros(1, device='cuda').sum().item()"; then
    echo quit | nvidia-cuda-mps-control; echo "MPS unusable: off"
  else echo "MPS on"; fi
fi
mkdir -p /tmp/sweep
timeout "${SWEEP_TIMEOUT_S:-450}" python3 benchmarks/skill_sweep.py --out /tmp/sweep "$@" 2>&1 \
  | grep -v -i "warning\|code.add_\|return float" | tee /tmp/sweep/sweep.log
rm -f /tmp/sweep/data.npz
tar czf "$OUT/sweep.tgz" -C /tmp sweep
