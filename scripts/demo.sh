#!/usr/bin/env bash
# Quick start: the whole job - train, evaluate the pruned levels, export them
# for TF Serving, predict masks - on a small SYNTHETIC data set that the
# package generates (no download). A few minutes on 2 CPU cores.
#
# Usage: bash scripts/demo.sh            (results in runs/demo/)
#        OUT=/tmp/demo bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
OUT=${OUT:-runs/demo}
mkdir -p "$OUT"
start=$(date +%s)
echo "== installing keras_unetpp into .venv (log: $OUT/pip.log) =="
pip install -e . >"$OUT/pip.log" 2>&1 || { tail -n 30 "$OUT/pip.log"; exit 1; }
# No TF_CPP_MIN_LOG_LEVEL here: the command filters TensorFlow's harmless
# start-up lines itself (and stands aside when the user sets it).

echo "== 1/5 synthetic data (random blurred ellipses, NOT real images) =="
# --overwrite replaces the data set of an earlier demo (the same seed writes
# the same files); it refuses a folder that is not a synthetic data set.
keras-unetpp synthetic "$OUT/data" --num-images 96 --image-size 64 64 --overwrite

echo "== 2/5 train a depth-3 UNet++ with deep supervision =="
keras-unetpp train --data "$OUT/data" --output "$OUT/run" \
  --image-size 64 64 --depth 3 --filters 8 --batch-size 8 --epochs 12 \
  --learning-rate 0.003 --verbose 2

echo "== 3/5 evaluate every pruned level (inference mode, val split) =="
keras-unetpp evaluate "$OUT/run"

echo "== 4/5 export the pruned levels as SavedModels for TF Serving =="
keras-unetpp export "$OUT/run"

echo "== 5/5 predict masks and overlays for the validation images =="
mkdir -p "$OUT/val_images"
tail -n +2 "$OUT/data/manifest.csv" | tr -d '\r' | awk -F, '$NF == "val" {print $1}' |
  while read -r stem; do cp "$OUT/data/images/$stem.png" "$OUT/val_images/"; done
keras-unetpp predict "$OUT/run" "$OUT/val_images" --overlays

cat <<EOM

Done in $(( $(date +%s) - start )) s. Results (synthetic data):
  $OUT/run/evaluation/levels.csv, levels.json, levels.png   per-level IoU/Dice/params/FLOPs/ms
  $OUT/run/best.keras, last.keras, history.csv, logs/         model, history, TensorBoard
  $OUT/run/export/models.config and unetpp_l1..l3/<version>/  TF Serving
  $OUT/run/predictions/masks/ and overlays/                   predicted masks
EOM
