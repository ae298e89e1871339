#!/usr/bin/env bash
# The real-data result: UNet++ with deep supervision against the plain U-Net
# of the same widths, on the 2018 Data Science Bowl nuclei (the UNet++
# paper's "cell nuclei" set), trained on the manifest's suggested train split
# (359 images) and evaluated in inference mode on its val split (86 images),
# at the paper's 96x96 input.
#
# Usage: bash scripts/dsb2018_experiment.sh          (settings below)
#        EPOCHS=3 OUT=runs/dsb2018_smoke bash scripts/dsb2018_experiment.sh
#
# Both models get the same number of epochs; TIME_BUDGET (minutes per model)
# is a safety net that ends training after the last epoch that fits. Run the
# same command again to continue an interrupted or budget-stopped run.
# Results: $OUT/comparison.{md,csv,json,png} and each run's evaluation/;
# the last lines compare batch-statistics and inference-mode IoU (the
# batch-norm trap).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  . .venv/bin/activate
fi

DATA=${DATA:-../shared/data/dsb2018_nuclei}
OUT=${OUT:-runs/dsb2018}
EPOCHS=${EPOCHS:-60}
FILTERS=${FILTERS:-16}
BATCH=${BATCH:-8}
LR=${LR:-0.002}
TIME_BUDGET=${TIME_BUDGET:-25}
COMMON=(--data "$DATA" --image-size 96 96 --channels 3 --filters "$FILTERS"
        --lr-schedule cosine --learning-rate "$LR"
        --batch-size "$BATCH" --epochs "$EPOCHS" --time-budget "$TIME_BUDGET"
        --save-every 20 --verbose 2)

start=$(date +%s)
keras-unetpp train "${COMMON[@]}" --output "$OUT/unetpp" \
  --architecture unetpp --deep-supervision
mid=$(date +%s)
keras-unetpp train "${COMMON[@]}" --output "$OUT/unet" --architecture unet
end=$(date +%s)
echo "training wall time: UNet++ $(( (mid - start) / 60 )) min, U-Net $(( (end - mid) / 60 )) min ($(nproc) CPU cores)"

keras-unetpp evaluate "$OUT/unetpp" --latency-batch-size 8 --latency-runs 20
keras-unetpp evaluate "$OUT/unet" --latency-batch-size 8 --latency-runs 20
python scripts/compare_runs.py "$OUT/unetpp" "$OUT/unet" --output "$OUT"
python scripts/bn_gap.py "$OUT/unetpp" "$OUT/unet"
