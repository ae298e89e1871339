"""Accuracy parity of mixed precision: the same training in two precisions.

Trains `keras_unetpp.build(depth)` on the DSB 2018 nuclei images (the
paper's data, resized to the paper's 96x96) from the same initial weights
and the same batches, once per precision, and reports the validation IoU and
Dice of each and the time per step. Run it alone: it reads the data set's
`manifest.csv` for the train/val split.

Usage:

    python benchmarks/precision_parity.py \
        --data ../shared/data/dsb2018_nuclei --steps 300
"""

import argparse
import csv
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _read(path):
    return pathlib.Path(path).read_bytes()


def load_split(root, split, size):
    """Grayscale images in [0, 1] and 0/1 masks of one split, resized."""
    import numpy as np
    import tensorflow as tf

    images, masks = [], []
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["suggested_split"] != split:
                continue
            stem = row["stem"]
            image = tf.io.decode_png(_read(root / "images" / f"{stem}.png"), 3)
            mask = tf.io.decode_png(_read(root / "masks" / f"{stem}.png"), 1)
            image = tf.image.rgb_to_grayscale(image)
            image = tf.image.resize(tf.cast(image, "float32") / 255.0, (size, size))
            mask = tf.image.resize(mask, (size, size), method="nearest")
            images.append(image.numpy())
            masks.append((mask.numpy() > 127).astype("float32"))
    return np.stack(images), np.stack(masks)


def train_once(precision, data, args):
    """Trains from seed `args.seed`; returns the validation metrics and timing."""
    import keras
    import numpy as np

    import keras_unetpp
    from keras_unetpp.precision import precision_scope

    (x_train, y_train), (x_val, y_val) = data
    keras.utils.set_random_seed(args.seed)
    with precision_scope(precision):
        model = keras_unetpp.build(args.depth, (args.size, args.size, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras_unetpp.BCEDiceLoss(),
        metrics=[
            keras_unetpp.IoUScore(name="iou"),
            keras_unetpp.DiceScore(name="dice"),
        ],
    )
    rng = np.random.default_rng(args.seed)
    times = []
    for _ in range(args.steps):
        index = rng.choice(len(x_train), args.batch, replace=False)
        flips = rng.random(2) < 0.5
        x, y = x_train[index], y_train[index]
        if flips[0]:
            x, y = x[:, ::-1], y[:, ::-1]
        if flips[1]:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        start = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        times.append(time.perf_counter() - start)
    val = model.evaluate(
        x_val, y_val, batch_size=args.batch, verbose=0, return_dict=True
    )
    return {
        "record": "parity",
        "precision": precision,
        "depth": args.depth,
        "size": args.size,
        "steps": args.steps,
        "train_loss": float(logs["loss"]),
        "val_loss": float(val["loss"]),
        "val_iou": float(val["iou"]),
        "val_dice": float(val["dice"]),
        "median_step_s": float(np.median(times[5:] or times)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=pathlib.Path,
        default=REPO.parent / "shared" / "data" / "dsb2018_nuclei",
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["float32", "mixed_bfloat16"]
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = (
        load_split(args.data, "train", args.size),
        load_split(args.data, "val", args.size),
    )
    results = [train_once(p, data, args) for p in args.precisions]
    for result in results:
        print(json.dumps(result, sort_keys=True), flush=True)
    base = results[0]
    for result in results[1:]:
        speedup = base["median_step_s"] / result["median_step_s"]
        print(
            f"{result['precision']} vs {base['precision']}: val IoU "
            f"{result['val_iou']:.4f} vs {base['val_iou']:.4f} "
            f"(difference {result['val_iou'] - base['val_iou']:+.4f}); "
            f"speed-up per step {speedup:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
