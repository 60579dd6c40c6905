#!/usr/bin/env bash
# Batch 1 of the GPU runs behind data/checkpoints/ and docs/ (needs 1 GPU and 16 CPU cores). Runs from the repository root; writes W (default
# runs/device) and, where $OUT is set, a tarball of it there. Every run has a time budget so the
# whole batch ends within ~9 minutes; each run's log is kept beside its result.
#   GPU : float training (convolution mode) of the d_model 32/64/128 variants of paper-small,
#         of `base`, and of two more seeds of paper-small
#   CPU : part c of the study (QAT, 3 parameterisations x Abar/x bits 2..8) on 7 processes; QAT of
#         w8a8-state6 (Abar and x at 6 bits) from the seed-0 float model
set -u
W=${W:-runs/device}
mkdir -p "$W/ck" "$W/log"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
T0=$(date +%s)
nvidia-smi -L 2>&1 | tee "$W/log/gpu.txt"
$PY -c "import torch, numba, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$W/log/gpu.txt"

gpu() {  # name, args...
  local n=$1; shift
  OMP_NUM_THREADS=1 timeout 530 $PY -m intssm train --device cuda --threads 1 --json "$@" -o "$W/ck/$n.pt" >"$W/log/$n.json" 2>"$W/log/$n.log" &
}
gpu paper-d32-fp32 --preset paper-small --d-model 32 --epochs 30 --max-minutes 7.5
gpu paper-d64-fp32 --preset paper-small --d-model 64 --epochs 30 --max-minutes 7.5
gpu paper-d128-fp32 --preset paper-small --d-model 128 --epochs 30 --max-minutes 7.5
gpu base-fp32 --preset base --epochs 30 --max-minutes 7.5
(OMP_NUM_THREADS=1 timeout 260 $PY -m intssm train --device cuda --threads 1 --json --preset paper-small --epochs 30 --seed 1 --max-minutes 3.6 -o "$W/ck/paper-small-seed1-fp32.pt" >"$W/log/seed1.json" 2>"$W/log/seed1.log";
 OMP_NUM_THREADS=1 timeout 260 $PY -m intssm train --device cuda --threads 1 --json --preset paper-small --epochs 30 --seed 2 --max-minutes 3.6 -o "$W/ck/paper-small-seed2-fp32.pt" >"$W/log/seed2.json" 2>"$W/log/seed2.log") &

# compile the Numba kernels once (cache=True) before the CPU runs start
OMP_NUM_THREADS=1 $PY -m intssm qat data/checkpoints/paper-small-fp32.pt -o "$W/warm.pt" --config paper-hetero --param discrete --limit 64 --val-limit 16 --json >"$W/log/warm.json" 2>"$W/log/warm.log"
echo "warm-up done at +$(( $(date +%s) - T0 )) s" | tee -a "$W/log/gpu.txt"
LEFT=$(( ${BUDGET:-500} - ($(date +%s) - T0) ))
M=$(python3 -c "print(round(($LEFT - 75) / 60, 2))")

OMP_NUM_THREADS=3 NUMBA_NUM_THREADS=3 timeout $LEFT $PY -m intssm qat data/checkpoints/paper-small-fp32.pt -o "$W/ck/state6.pt" \
  --config w8a8-state6 --param discrete --epochs 5 --max-minutes "$M" --json >"$W/log/state6.json" 2>"$W/log/state6.log" &
CM=$(python3 -c "print(round(($LEFT - 60) / 3 / 60 - 0.6, 2))")
timeout $LEFT $PY tools/reproduce_paper.py --parts c --workers 7 --qat-epochs 1 --qat-limit 15000 --qat-minutes "$CM" \
  --out "$W/study" >"$W/log/part_c.log" 2>&1 &
wait
echo "all done at +$(( $(date +%s) - T0 )) s" | tee -a "$W/log/gpu.txt"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" -C "$(dirname "$W")" "$(basename "$W")"; fi
