#!/usr/bin/env bash
# 3D UNet++ (deep supervision) against the 3D U-Net of the same widths on
# MSD Task04 hippocampus (../shared/data/msd_hippocampus: 260 MRI volumes,
# labels 0/1/2), with the same time budget each (BUDGET) or the same number
# of epochs, so the same optimizer steps (EPOCHS), on the manifest's
# suggested split (213 train / 47 val). Then both are evaluated on the 47 val volumes,
# whole, by sliding window in inference mode: per-level Dice and IoU of
# labels 1 and 2 and their mean, parameters, GFLOPs and ms per volume.
#
#   BUDGET=45 bash scripts/hippocampus.sh          # minutes per model
#   EPOCHS=9 bash scripts/hippocampus.sh           # the same steps per model
#
# Environment: DATA (data folder), OUT (runs folder), BUDGET (minutes per
# model, default 45), EPOCHS (epochs per model, no time budget; overrides
# BUDGET), PYTHON (default .venv/bin/python), FILTERS (level-0 width,
# default 8), DEPTH (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/msd_hippocampus}
OUT=${OUT:-runs/hippocampus}
BUDGET=${BUDGET:-45}
PYTHON=${PYTHON:-.venv/bin/python}
FILTERS=${FILTERS:-8}
DEPTH=${DEPTH:-3}
export TF_CPP_MIN_LOG_LEVEL=2
if [ -n "${EPOCHS:-}" ]; then
  SCHEDULE=(--epochs "$EPOCHS")
else
  SCHEDULE=(--epochs 1000 --time-budget "$BUDGET")
fi
COMMON=(--data "$DATA" --num-classes 3 --depth "$DEPTH" --filters "$FILTERS"
  --patch-size 32 32 32 --batch-size 4 "${SCHEDULE[@]}"
  --learning-rate 0.003 --lr-schedule cosine --monitor dice --seed 0
  --no-tensorboard --verbose 2)
"$PYTHON" -m keras_unetpp train "${COMMON[@]}" --architecture unetpp --output "$OUT/unetpp"
"$PYTHON" -m keras_unetpp train "${COMMON[@]}" --architecture unet --output "$OUT/unet"
"$PYTHON" -m keras_unetpp evaluate "$OUT/unetpp"
"$PYTHON" -m keras_unetpp evaluate "$OUT/unet"
