#!/usr/bin/env bash
# The lever table behind scripts/dsb_recipe.sh: the recipe and one change at
# a time, each trained for the same short BUDGET (minutes) on the same
# machine, then scored on the DSB 2018 val split at native resolution. The
# table (pooled foreground IoU per level, with TTA, DSB AP) is printed and
# written to $OUT/levers.md.
#
# Usage: bash scripts/dsb_levers.sh                   (6 minutes per lever)
#        BUDGET=10 LEVERS="recipe crop192" bash scripts/dsb_levers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/dsb_levers}
BUDGET=${BUDGET:-6}
LEVERS=${LEVERS:-recipe resize96 filters32 crop192 no_augment focal_tversky}
for lever in $LEVERS; do
  settings=()
  case "$lever" in
    recipe) ;;
    resize96) settings=(MODE=resize CROP=96) ;;
    filters32) settings=(FILTERS=32) ;;
    crop192) settings=(CROP=192) ;;
    crop256) settings=(CROP=256) ;;
    no_augment) settings=(AUGMENT=0) ;;
    focal_tversky) settings=(LOSS=focal-tversky) ;;
    tversky) settings=(LOSS=tversky) ;;
    lovasz) settings=(LOSS=lovasz) ;;
    lovasz_ce) settings=(LOSS=lovasz "TRAIN_ARGS=--loss-ce-weight 0.5") ;;
    bfloat16) settings=(PRECISION=mixed_bfloat16) ;;
    threshold0.6) settings=(THRESHOLD=0.6) ;;
    threshold_train) settings=(THRESHOLD=train) ;;
    minmax) settings=(PIXEL_SCALING=minmax) ;;
    boundary2) settings=("TRAIN_ARGS=--loss-boundary-weight 2") ;;
    no_zoom) settings=(ZOOM=none) ;;
    bilinear_masks) settings=(MASK_INTERPOLATION=bilinear) ;;
    lr1e-3) settings=(LR=0.001) ;;
    unet) settings=(ARCH=unet) ;;
    *) echo "unknown lever: $lever" >&2; exit 2 ;;
  esac
  echo "== lever $lever: ${settings[*]:-recipe settings}, $BUDGET min"
  env "${settings[@]}" BUDGET="$BUDGET" DSB_INSTANCES="${DSB_INSTANCES:-components}" \
    OUT="$OUT/$lever" bash scripts/dsb_recipe.sh
done
python scripts/lever_table.py $(for lever in $LEVERS; do echo "$OUT/$lever"; done) \
  --output "$OUT/levers.md"
