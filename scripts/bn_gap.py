"""Batch statistics against moving statistics: the batch-norm trap, measured.

Usage: python scripts/bn_gap.py RUN_DIR [RUN_DIR ...] [--split val|train]

For the best model of each run (its deepest head), prints the foreground IoU
on a split computed with batch statistics (training mode, what the training
logs of a plain Keras loop would show) and with the moving statistics
(inference mode, what predict() and TF Serving use). A large gap means the
moving statistics lag behind the weights.
"""

import argparse
import sys

from keras_unetpp import evaluation
from keras_unetpp.description import model_depth
from keras_unetpp.pruning import prune
from keras_unetpp.runs import load_run_model, read_run_config
from keras_unetpp.sources import source_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    args = parser.parse_args(argv)
    for run in args.runs:
        settings = read_run_config(run)["data"]
        model = load_run_model(run)
        depth = model_depth(model)
        dataset, _ = source_dataset(
            settings["source"],
            args.split,
            image_size=tuple(settings["image_size"]),
            channels=settings["channels"],
            batch_size=settings["batch_size"],
            resize_mode=settings["resize_mode"],
            depth=depth,
        )
        batch_iou, inference_iou = evaluation.batch_norm_gap(
            prune(model, depth), dataset
        )
        print(
            f"{run}: L{depth} IoU on {args.split} with batch statistics "
            f"{batch_iou:.4f}, in inference mode {inference_iou:.4f} "
            f"(gap {batch_iou - inference_iou:+.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
