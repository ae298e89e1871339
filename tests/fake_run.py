"""A run folder without training: a model, a run.json and a history.csv.

The export and prediction tests need run folders trained in resize mode and
in crop mode; training even a tiny one costs a minute of CPU, so these
tests write the folder `train_run` would leave, around a model with
non-trivial batch-norm statistics and fixed weights.
"""

import json
import pathlib

import keras
import numpy as np

import keras_unetpp as ku
from keras_unetpp import training


def randomize_normalization(model, seed=0):
    """Gives every batch norm non-trivial statistics, as after training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, n).astype("float32"))
    return model


def tiny_model(channels=1, depth=3, seed=0, num_classes=1, deep_supervision=True):
    """A small deep-supervision UNet++ with fixed weights, any input size."""
    keras.utils.set_random_seed(seed)
    model = ku.build(
        depth=depth,
        input_shape=(None, None, channels),
        filters=tuple(4 * 2**i for i in range(depth + 1)),
        num_classes=num_classes,
        deep_supervision=deep_supervision,
        name="unetpp",
    )
    return randomize_normalization(model, seed)


def make_run(run_dir, model, source, resize_mode="resize", image_size=(64, 96)):
    """Writes `run_dir` (best.keras, run.json, history.csv) for `model`."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True)
    info = ku.describe(model)
    model.save(run_dir / "best.keras")
    config = {
        "keras_unetpp": "test",
        "data": {
            "source": source,
            "image_size": list(image_size),
            "channels": info.channels,
            "num_classes": info.num_classes,
            "resize_mode": resize_mode,
            "batch_size": 2,
            "augment": False,
            "seed": 0,
        },
        "model": {
            "architecture": "unetpp",
            "depth": info.depth,
            "filters": list(info.filters),
            "deep_supervision": info.deep_supervision,
            "normalization": "batch",
        },
        "training": {"epochs": 1, "monitor": "iou"},
    }
    (run_dir / "run.json").write_text(json.dumps(config, indent=2))
    monitor = training.monitor_name(model, "iou")
    (run_dir / "history.csv").write_text(f"epoch,{monitor}\n0,0.25\n1,0.5\n")
    return run_dir
