#!/usr/bin/env bash
# keras_unetpp's UNet++ and U-Net baseline against keras-unet-collection's
# unet_plus_2d, MONAI's BasicUNetPlusPlus and segmentation_models.pytorch's
# UnetPlusPlus (no pretrained weights) on the shared DSB 2018 split: the same
# data, batches, loss, wall-clock budget per model, machine and metric code
# (keras_unetpp.field_metrics). See benchmarks/peers_dsb.py.
#
# Usage: bash scripts/peers_dsb.sh                 (2 minutes per model)
#        MINUTES=14 OUT=runs/peers bash scripts/peers_dsb.sh
#        MINUTES=8 bash scripts/peers_dsb.sh --protocol crop --size 128 \
#          --schedule cosine --lr 2e-3     (the recipe's protocol, 43 min)
# Extra arguments go to benchmarks/peers_dsb.py.
# Needs the bench extra: pip install -e ".[bench]"
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  . .venv/bin/activate
fi
DATA=${DATA:-../shared/data/dsb2018_nuclei}
OUT=${OUT:-runs/peers_dsb}
MINUTES=${MINUTES:-2}
start=$(date +%s)
python benchmarks/peers_dsb.py --data "$DATA" --minutes "$MINUTES" --output "$OUT" "$@"
echo "wall time: $(( $(date +%s) - start )) s ($(nproc) CPU cores)"
