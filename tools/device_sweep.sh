#!/usr/bin/env bash
# Batch 2 of the GPU runs behind data/checkpoints/ and docs/ (needs 1 GPU and 16 CPU cores).
# Runs from the repository root; writes W (default runs/device2) and, where $OUT is set, a tarball of
# it there. Every run has a time budget so the whole batch ends within BUDGET seconds (default 540).
#   GPU : float training (convolution mode) of paper-small, seeds 3..8, the recipe of seeds 0..2
#         then a 3-epoch frozen-Abar QAT screen from each, on the core its training frees
#   CPU : QAT with frozen Abar from the seed-2 float model (the default's recipe, hetero-3b-x12,
#         from seed 2), one core per run:
#         four more QAT seeds, and three configs that spend the slack between 6.36x and 6x
#         (B-bar 4 bits, C-bar 4 bits, mixing 6 bits), two seeds each.
# Dry run on a machine without a GPU: DEV=cpu BUDGET=200 LIMIT=640 EPOCHS=1 W=runs/devtest tools/device_sweep.sh
set -u
W=${W:-runs/device2}
PY=${PY:-python3}
BUDGET=${BUDGET:-540}
LIMIT=${LIMIT:-}
EPOCHS=${EPOCHS:-6}
mkdir -p "$W/ck" "$W/log"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
{ nvidia-smi -L; nproc; $PY -c "import torch, numba, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__, 'numpy', numpy.__version__)"; } >"$W/log/machine.txt" 2>&1
LIM=${LIMIT:+--limit $LIMIT}
FM=${FM:-5.5}  # float budget (minutes); 30 epochs took 2.5-7 s each on the H200 in the first batch
for s in 3 4 5 6 7 8; do
  ( timeout $(left) $PY -m intssm train --device "${DEV:-cuda}" --threads 1 --json --preset paper-small --epochs 30 --seed $s \
      --max-minutes "$FM" $LIM -o "$W/ck/paper-small-seed$s-fp32.pt" >"$W/log/float-seed$s.json" 2>"$W/log/float-seed$s.log"
    # then, on the core it frees, a short frozen-Abar QAT from it (3 epochs, a screen of the float seed)
    M=$($PY -c "print(round(($(left) - 45) / 60, 2))")
    [ -f "$W/ck/paper-small-seed$s-fp32.pt" ] && timeout $(left) $PY -m intssm qat "$W/ck/paper-small-seed$s-fp32.pt" \
      --config docs/configs/progressive/hetero-x10-6x-x12.json --param frozen --epochs 3 --lr 1e-3 --seed 0 --distill 0.5 \
      --ema 0.999 --max-minutes "$M" $LIM --json -o "$W/ck/x12-float$s.pt" >"$W/log/x12-float$s.json" 2>"$W/log/x12-float$s.log" ) &
done

# compile the Numba kernels once (cache=True) before the QAT runs start
$PY -m intssm qat data/checkpoints/paper-small-seed2-fp32.pt -o "$W/warm.pt" --config paper-hetero --param frozen \
  --limit 64 --val-limit 16 --json >"$W/log/warm.json" 2>"$W/log/warm.log"
echo "warm-up done at +$(( $(date +%s) - T0 )) s" >>"$W/log/machine.txt"
QM=$($PY -c "print(round(($(left) - 45) / 60, 2))")
P=docs/configs/progressive/hetero-x10-6x-x12
qat() {  # name, config, seed
  timeout $(left) $PY -m intssm qat data/checkpoints/paper-small-seed2-fp32.pt --config "$2" --param frozen \
    --epochs "$EPOCHS" --lr 1e-3 --seed "$3" --distill 0.5 --ema 0.999 --max-minutes "$QM" $LIM --json \
    -o "$W/ck/$1.pt" >"$W/log/$1.json" 2>"$W/log/$1.log" &
}
for s in 3 4 5 6; do qat "x12-s$s" "$P.json" $s; done
for v in B4 C4 mix6; do for s in 0 1; do qat "$v-s$s" "$P-$v.json" $s; done; done
wait
echo "all done at +$(( $(date +%s) - T0 )) s" >>"$W/log/machine.txt"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" -C "$(dirname "$W")" "$(basename "$W")"; fi
