#!/usr/bin/env bash
# The DSB 2018 recipe: UNet++ (depth 4, deep supervision) trained on random
# crops at the images' native scale (no resizing), scored on the manifest's
# val split (86 images) whole, at their own resolution (256x256, 320x256),
# with and without flips+rot90 test-time augmentation, with every metric of
# keras_unetpp.field_metrics (pooled IoU/Dice, per image, the authors' Keras
# mean_iou, the DSB 2018 average precision).
#
# Usage: bash scripts/dsb_recipe.sh                     (the recipe, 45 min)
#        BUDGET=6 OUT=runs/dsb_lever CROP=192 bash scripts/dsb_recipe.sh
#        DATA=../shared/data/isbi2012_em_membrane CHANNELS=1 DSB_INSTANCES=none \
#          BUDGET=15 OUT=runs/isbi_recipe bash scripts/dsb_recipe.sh   (EM slices)
#
# Settings (environment): DATA the image/mask folder, BUDGET minutes of
# training (the cosine schedule decays over the epochs that fit), CROP
# training crop, FILTERS level-0 width, CHANNELS (3; 1 for grayscale such
# as the ISBI 2012 EM slices), BATCH, LR, LOSS (bce-dice, tversky,
# focal-tversky, focal, lovasz), MODE (crop = native scale; resize = scale every
# image to CROP x CROP, the older 96x96 protocol), AUGMENT (1 = flips, quarter turns, scale 0.8-1.25,
# intensity; 0 = none), ARCH (unetpp, unet), DSB_INSTANCES (both,
# components, watershed, none), PRECISION (float32, auto: mixed_bfloat16 on
# a CPU with native bfloat16), THRESHOLD (of the scored masks; "train":
# the deepest level's best on the train split, from a sweep of 0.3-0.7 that
# `evaluate --split train --thresholds` writes to $OUT/threshold_sweep),
# PIXEL_SCALING (dtype; minmax: each image's range to [0, 1]),
# ZOOM (the augmentation's random zoom, "0.8 1.25"; "none": crops cut at
# whole-pixel offsets, nothing resampled), MASK_INTERPOLATION (of the
# zoomed masks: nearest; bilinear: each class's share resampled like the
# image),
# TRAIN_ARGS (more `keras-unetpp train` flags). Run the same
# command again to continue a
# budget-stopped or interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  . .venv/bin/activate
fi

DATA=${DATA:-../shared/data/dsb2018_nuclei}
OUT=${OUT:-runs/dsb_recipe}
BUDGET=${BUDGET:-45}
CROP=${CROP:-128}
FILTERS=${FILTERS:-16}
CHANNELS=${CHANNELS:-3}
BATCH=${BATCH:-8}
LR=${LR:-0.002}
LOSS=${LOSS:-bce-dice}
MODE=${MODE:-crop}
AUGMENT=${AUGMENT:-1}
ARCH=${ARCH:-unetpp}
DSB_INSTANCES=${DSB_INSTANCES:-both}
PRECISION=${PRECISION:-float32}
THRESHOLD=${THRESHOLD:-0.5}
PIXEL_SCALING=${PIXEL_SCALING:-dtype}
ZOOM=${ZOOM:-0.8 1.25}
MASK_INTERPOLATION=${MASK_INTERPOLATION:-nearest}
TRAIN_ARGS=${TRAIN_ARGS:-}
augment=--augment
[ "$AUGMENT" = 1 ] || augment=--no-augment
supervision=--deep-supervision
[ "$ARCH" = unetpp ] || supervision=--no-deep-supervision

start=$(date +%s)
keras-unetpp train --data "$DATA" --output "$OUT" --architecture "$ARCH" \
  $supervision --channels "$CHANNELS" --filters "$FILTERS" \
  --resize-mode "$MODE" --image-size "$CROP" "$CROP" $augment --scale-range $ZOOM \
  --mask-interpolation "$MASK_INTERPOLATION" \
  --loss "$LOSS" --precision "$PRECISION" --pixel-scaling "$PIXEL_SCALING" --batch-size "$BATCH" --learning-rate "$LR" \
  --lr-schedule cosine --epochs 1000 --time-budget "$BUDGET" \
  --save-every 100 --verbose 2 --no-tensorboard $TRAIN_ARGS
trained=$(date +%s)
if [ "$THRESHOLD" = train ]; then
  # Picked on the train split, never on the val split it is reported on.
  keras-unetpp evaluate "$OUT" --split train --dsb-instances none \
    --thresholds 0.3 0.35 0.4 0.45 0.5 0.55 0.6 0.65 0.7 \
    --latency-runs 1 --output "$OUT/threshold_sweep"
  # The deepest level's best threshold, as `evaluate` recorded it.
  THRESHOLD=$(python -c 'import json, sys
best = json.load(open(sys.argv[1]))["best_thresholds"]
print(best[max((k for k in best if k != "accurate"), key=lambda k: int(k[1:]))]["threshold"])' \
    "$OUT/threshold_sweep/scored.json")
  echo "threshold picked on the train split: $THRESHOLD"
fi
keras-unetpp evaluate "$OUT" --tta flips+rot90 --dsb-instances "$DSB_INSTANCES" --threshold "$THRESHOLD" \
  --latency-batch-size 1 --latency-runs 5
end=$(date +%s)
echo "wall time: training $(( (trained - start) / 60 )) min, evaluation $(( (end - trained) / 60 )) min ($(nproc) CPU cores)"
