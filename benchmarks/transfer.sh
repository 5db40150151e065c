#!/usr/bin/env bash
# The transfer table of BENCHMARKS.md: kNN and linear probe per pretrained run, transfer to scikit-learn's digits,
# fine-tuning against the same network from scratch at equal budget, and the linear probe with augmentation.
#   BYOL=<run> DINO=<run> MAE=<run> benchmarks/transfer.sh   (runs under runs/; each line prints its figures)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
EVAL="$PY -m pipelines.evaluate"
SUPERVISED="--epochs ${EPOCHS:-3} --train-limit ${TRAIN_LIMIT:-10000} --test-limit ${TEST_LIMIT:-2000}"
[ -f data/digits/dataset.json ] || $PY -m pipelines.ingest digits --out data/digits
for run in ${DINO:-} ${MAE:-}; do
  echo "== $run: knn,linear on Fashion-MNIST"; time $EVAL --run "$run" --protocol knn,linear
done
echo "== raw pixels on digits"; time $EVAL --weights pixels --data data/digits --protocol knn,linear
echo "== $BYOL on digits"; time $EVAL --run "$BYOL" --data data/digits --protocol knn,linear
echo "== $BYOL: finetune, scratch, linear_aug ($SUPERVISED)"; time $EVAL --run "$BYOL" --protocol finetune,scratch,linear_aug $SUPERVISED
if [ -n "${MAE:-}" ]; then
  echo "== $MAE: finetune, scratch ($SUPERVISED)"; time $EVAL --run "$MAE" --protocol finetune,scratch $SUPERVISED
fi
