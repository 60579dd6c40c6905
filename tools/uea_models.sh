#!/usr/bin/env bash
# The shipped models of the UEA/UCR datasets (data/uea/): float training on all training sequences
# (no validation split: the last of 60 epochs is kept), PTQ at hetero-3b-x10 with the input
# quantizer calibrated on the training sequences, 10 epochs of frozen-Abar QAT, then the integer
# model scored and verified bit for bit on the whole test set. Writes data/checkpoints/NAME-*.pt
# and .log. About a minute per dataset on 2 cores.
#   bash tools/uea_models.sh [BasicMotions JapaneseVowels]
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/checkpoints
for name in "${@:-BasicMotions JapaneseVowels}"; do
  for ds in $name; do
    key=$(echo "$ds" | tr '[:upper:]' '[:lower:]')
    f=$out/$key-fp32.pt q=$out/$key-hetero.pt
    train=(intssm train --seq data/uea/$ds --preset paper-small --epochs 60 --dropout 0.1 --val-fraction 0 --seed 0 -o "$f" --json)
    qat=(intssm qat "$f" --config hetero-3b-x10 --param frozen --epochs 10 --batch-size 16 --lr 1e-3 --seed 0 -o "$q" --json)
    sim=(intssm simulate "$q" --seq data/uea/$ds --verify all --json)
    {
      echo "# ${train[*]}"
      "${train[@]}" 2>/dev/null | python -c "import json,sys; r=json.load(sys.stdin); [print(json.dumps(h)) for h in r['history']]"
      echo "# intssm eval $f --seq data/uea/$ds --json"
      intssm eval "$f" --seq data/uea/$ds --json 2>/dev/null
    } > "$out/$key-fp32.log"
    {
      echo "# ${qat[*]}"
      "${qat[@]}" 2>/dev/null | python -c "import json,sys; r=json.load(sys.stdin); [print(json.dumps(h)) for h in r['history']]"
      echo "# ${sim[*]}"
      "${sim[@]}" 2>/dev/null
      echo "# intssm memory $q --json"
      intssm memory "$q" --json | python -c "import json,sys; r=json.load(sys.stdin); r.pop('rows'); print(json.dumps(r))"
    } > "$out/$key-hetero.log"
    tail -n 3 "$out/$key-hetero.log" | head -n 1 | cut -c1-160
  done
done
