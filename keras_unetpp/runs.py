"""A training run on disk, and the four jobs the command line does with it.

A run directory holds everything one training produced and the settings it
was made with (`run.json`), so that the later steps need only its path:

    <run>/run.json        settings: data source, model, training
    <run>/best.keras      best epoch by validation IoU (or Dice)
    <run>/last.keras      the model after the last epoch (with optimizer)
    <run>/history.csv     one row per epoch; <run>/logs/ for TensorBoard
    <run>/state/          resumable training state
    <run>/evaluation/     levels.csv, levels.json, levels.png
    <run>/export/         SavedModels for TF Serving, one per level
    <run>/predictions/    masks/ and overlays/

`train_run`, `evaluate_run`, `predict_run` and `export_run` are the library
side of `keras-unetpp train|evaluate|predict|export`.
"""

import json
import pathlib

import keras

from keras_unetpp import atomic, data, evaluation, prediction, training
from keras_unetpp.description import describe, output_name
from keras_unetpp.distribute import (
    check_global_batch,
    get_strategy,
    is_chief,
    prepare_for_strategy,
)
from keras_unetpp.errors import InputError
from keras_unetpp.export import export_pruned
from keras_unetpp.fused_batch_norm import fuse_batch_norm
from keras_unetpp.model import build, build_unet
from keras_unetpp.precision import precision_scope
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.recompute import recompute_nodes
from keras_unetpp.schedule import check_positive
from keras_unetpp.sources import source_dataset
from keras_unetpp.validation import check_int
from keras_unetpp.version import __version__

RUN_CONFIG = "run.json"
ARCHITECTURES = ("unetpp", "unet")
MODEL_CHOICES = ("best", "last")
EVALUATION_DIR = "evaluation"
EXPORT_DIR = "export"
PREDICTION_DIR = "predictions"

# Settings that may change when a run is continued (more epochs, quieter
# output); anything else must match the recorded run.
# Settings a resumed run may change: how long, how often to save, and
# recomputation (the same training with less memory, e.g. after running out).
_RESUMABLE_CHANGES = ("epochs", "save_every", "recompute")
# Recorded facts, not settings.
_DERIVED = ("train_images", "val_images", "precision_policy")


def read_run_config(run_dir):
    """The settings recorded in `<run_dir>/run.json`.

    Raises:
        ValueError: `run_dir` is not a folder made by `train_run`.
    """
    path = pathlib.Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise InputError(
            f"{str(run_dir)!r} is not a training run (it has no {RUN_CONFIG}); "
            f"give the --output folder of `keras-unetpp train`. "
            f"Received: run_dir={str(run_dir)!r}"
        )
    with open(path) as f:
        return json.load(f)


def _image_size(image_size, depth):
    try:
        height, width = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise InputError(
            f"`image_size` must be (height, width). Received: image_size={image_size!r}"
        ) from None
    stride = 2**depth
    if height < stride or width < stride or height % stride or width % stride:
        raise InputError(
            f"`image_size` must be multiples of 2**depth = {stride} for "
            f"depth={depth}. Received: image_size={image_size!r}"
        )
    return [height, width]


def _check_resume(run_dir, config):
    previous = read_run_config(run_dir)
    changed = []
    for section in ("data", "model", "training"):
        old, new = previous.get(section, {}), config[section]
        for key in sorted(set(old) | set(new)):
            if key in _RESUMABLE_CHANGES + _DERIVED:
                continue
            if old.get(key) != new.get(key):
                changed.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if changed:
        raise InputError(
            f"{str(run_dir)!r} holds a run made with other settings; run the "
            "same command to resume it (only --epochs, --save-every and "
            "--recompute may change), or choose a new --output folder. "
            f"Received: {'; '.join(changed)}"
        )


def train_run(
    output_dir,
    source,
    architecture="unetpp",
    depth=4,
    filters=None,
    deep_supervision=True,
    normalization="batch",
    image_size=(96, 96),
    channels=1,
    num_classes=1,
    resize_mode="resize",
    batch_size=8,
    epochs=10,
    steps_per_epoch=None,
    learning_rate=1e-3,
    lr_schedule="constant",
    loss_weights=None,
    monitor="iou",
    augment=True,
    precision="float32",
    recompute=False,
    strategy="default",
    save_every=None,
    seed=0,
    tensorboard=True,
    time_budget=None,
    verbose=1,
):
    """Builds a model, trains it on a data source, and records the run.

    Running it again with the same `output_dir` and settings resumes an
    interrupted run from its last saved batch (see `training.train`); a
    larger `epochs` continues a finished one.

    Args:
        output_dir: the run folder (created if missing).
        source: dict from `keras_unetpp.sources.data_source()`.
        architecture: `"unetpp"` or `"unet"` (the U-Net baseline of the
            same widths). Defaults to `"unetpp"`.
        depth: int, model depth. Defaults to `4`.
        filters: widths per level (as in `build`), or `None` for the
            paper's. Defaults to `None`.
        deep_supervision: bool, one head per level (UNet++ only; needed to
            prune). Defaults to `True`.
        normalization: `"batch"`, `"group"` or `"none"`. Defaults to
            `"batch"`.
        image_size: `(height, width)` of the training images. Defaults to
            `(96, 96)` (the paper's nuclei setting).
        channels: 1 or 3. Defaults to `1`.
        num_classes: int. Defaults to `1`.
        resize_mode: `"resize"` or `"crop"` (see `data.make_dataset`).
            Defaults to `"resize"`.
        batch_size: int. Defaults to `8`.
        epochs: int. Defaults to `10`.
        steps_per_epoch: int or `None` (one pass over the training split).
            Defaults to `None`.
        learning_rate: float. Defaults to `1e-3`.
        lr_schedule: `"constant"` or `"cosine"`. Defaults to `"constant"`.
        loss_weights: one weight per head from L1 up, or `None` (all 1).
            Defaults to `None`.
        monitor: `"iou"` or `"dice"`, picks `best.keras`. Defaults to
            `"iou"`.
        augment: bool, random flips, quarter turns, scale and intensity.
            Defaults to `True`.
        precision: `"auto"` or a Keras dtype policy name (see
            `keras_unetpp.resolve_precision`); the policy it resolves to is
            recorded in `run.json` as `precision_policy`. Defaults to
            `"float32"`.
        recompute: bool, recompute each node's activations in the
            backward pass (`keras_unetpp.recompute_nodes`): less memory per
            training step, more compute. Defaults to `False`.
        strategy: `"default"`, `"mirrored"`, `"multi_worker"` or `"tpu"`.
            Defaults to `"default"`.
        save_every: int, save the resumable state every this many batches
            too. Defaults to `None` (epoch ends only).
        seed: int, seeds weights, shuffling and augmentation. Defaults to
            `0`.
        tensorboard: bool, write TensorBoard logs. Defaults to `True`.
        time_budget: float, seconds of training after which no new epoch
            starts (the same command continues later), or `None`.
            Defaults to `None`.
        verbose: 0, 1 (progress bars) or 2. Defaults to `1`.

    Returns:
        The dict of `training.train`, plus `run_dir`.

    Example:

    ```python
    source = data_source(data_dir="../shared/data/dsb2018_nuclei")
    train_run("runs/nuclei", source, image_size=(96, 96), channels=3,
              epochs=40)
    ```
    """
    if architecture not in ARCHITECTURES:
        raise InputError(
            f"`architecture` must be one of {ARCHITECTURES}. "
            f"Received: architecture={architecture!r}"
        )
    if architecture == "unet" and deep_supervision:
        raise InputError(
            "The U-Net baseline has one head; deep supervision is a UNet++ "
            "option. Received: architecture='unet', deep_supervision=True"
        )
    image_size = _image_size(image_size, depth)
    batch_size = check_int(batch_size, "batch_size")
    # Before run.json is written: it must never hold NaN or Infinity.
    learning_rate = check_positive(learning_rate, "learning_rate")
    training.check_loss_weight_values(loss_weights)
    if time_budget is not None:
        check_positive(time_budget, "time_budget")
    config = {
        "keras_unetpp": __version__,
        "data": {
            "source": source,
            "image_size": image_size,
            "channels": int(channels),
            "num_classes": int(num_classes),
            "resize_mode": resize_mode,
            "batch_size": batch_size,
            "augment": bool(augment),
            "seed": int(seed),
        },
        "model": {
            "architecture": architecture,
            "depth": int(depth),
            "filters": (
                filters if filters is None or isinstance(filters, int)
                else list(filters)
            ),
            "deep_supervision": bool(deep_supervision),
            "normalization": normalization,
        },
        "training": {
            "epochs": int(epochs),
            "steps_per_epoch": steps_per_epoch,
            "learning_rate": float(learning_rate),
            "lr_schedule": lr_schedule,
            "loss_weights": None if loss_weights is None else list(loss_weights),
            "monitor": monitor,
            "precision": precision,
            "recompute": bool(recompute),
            "strategy": strategy,
            "save_every": save_every,
        },
    }
    output_dir = pathlib.Path(output_dir)
    if (output_dir / RUN_CONFIG).is_file() and training.read_state(output_dir):
        # Only a run with saved progress is bound to its settings.
        _check_resume(output_dir, config)
    if deep_supervision:
        names = [output_name(level) for level in range(1, depth + 1)]
    else:
        names = None
    processing = dict(
        image_size=tuple(image_size),
        channels=channels,
        num_classes=num_classes,
        batch_size=batch_size,
        output_names=names,
        resize_mode=resize_mode,
        seed=seed,
        depth=depth,
    )
    distribution = get_strategy(strategy)
    check_global_batch(batch_size, distribution)
    train_ds, train_count = source_dataset(
        source,
        "train",
        training=True,
        augmentation=data.Augmentation() if augment else None,
        **processing,
    )
    val_ds, val_count = source_dataset(source, "val", **processing)
    # In a multi-worker job only the chief writes the run folder; the other
    # workers keep their own checkpoints and logs in a scratch subfolder.
    run_dir = _worker_dir(output_dir, distribution)
    keras.utils.set_random_seed(seed)
    with precision_scope(precision) as policy, distribution.scope():
        config["training"]["precision_policy"] = policy
        model_kwargs = dict(
            depth=depth,
            input_shape=(None, None, channels),
            num_classes=num_classes,
            filters=filters,
            normalization=normalization,
        )
        if architecture == "unet":
            model = build_unet(**model_kwargs)
        else:
            model = build(deep_supervision=deep_supervision, **model_kwargs)
        prepare_for_strategy(model, distribution)
        if recompute:
            recompute_nodes(model)
        run_dir.mkdir(parents=True, exist_ok=True)
        config["data"]["train_images"] = train_count
        config["data"]["val_images"] = val_count
        # Atomic and strict JSON: a kill leaves the old run.json or the new.
        atomic.write_json(run_dir / RUN_CONFIG, config, indent=2)
        if verbose:
            print(
                f"{model.name}: depth {depth}, {model.count_params():,} parameters; "
                f"{train_count} training / {val_count} validation images at "
                f"{image_size[0]}x{image_size[1]}; run folder {output_dir}"
            )
        result = training.train(
            model,
            train_ds,
            val_ds,
            run_dir,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            learning_rate=learning_rate,
            lr_schedule=lr_schedule,
            loss_weights=loss_weights,
            monitor=monitor,
            save_every=save_every,
            tensorboard=tensorboard,
            time_budget=time_budget,
            verbose=verbose,
        )
    result["run_dir"] = output_dir
    return result


def _worker_dir(output_dir, distribution):
    """The run folder of this process: `output_dir` for the chief."""
    if is_chief(distribution):
        return output_dir
    resolver = distribution.cluster_resolver
    return output_dir / ".workers" / f"{resolver.task_type}_{resolver.task_id}"


def load_run_model(run_dir, model="best"):
    """Loads the best or last model of a run (or a `.keras` file), uncompiled.

    Args:
        run_dir: the run folder.
        model: `"best"`, `"last"` or a path to a `.keras` file. Defaults to
            `"best"`.

    Returns:
        `keras.Model`.
    """
    if model in MODEL_CHOICES:
        path = pathlib.Path(run_dir) / f"{model}.keras"
    else:
        path = pathlib.Path(model)
    if not path.is_file():
        raise InputError(
            f"No saved model at {str(path)!r}; train the run first (or pass "
            f"a .keras file). Received: model={str(model)!r}"
        )
    loaded = keras.saving.load_model(path, compile=False)
    fuse_batch_norm(loaded)
    return loaded


def evaluate_run(
    run_dir,
    model="best",
    split="val",
    batch_size=None,
    threshold=0.5,
    latency_batch_size=1,
    latency_runs=10,
    output_dir=None,
):
    """Writes the per-level table of a run: IoU, Dice, params, FLOPs, ms.

    The model is evaluated in inference mode on a split of the run's own
    data source, at the run's image size, without augmentation.

    Args:
        run_dir: the run folder.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        split: `"val"` or `"train"`. Defaults to `"val"`.
        batch_size: int, or `None` for the run's. Defaults to `None`.
        threshold: float. Defaults to `0.5`.
        latency_batch_size: int, images per timed call. Defaults to `1`.
        latency_runs: int, timed calls per level. Defaults to `10`.
        output_dir: where to write `levels.csv/.json/.png`; `None` is
            `<run_dir>/evaluation`. Defaults to `None`.

    Returns:
        dict: `rows` (from `evaluation.evaluate_levels`), `csv`, `json`,
        `plot` (paths) and `table` (printable text).
    """
    config = read_run_config(run_dir)
    settings = config["data"]
    keras_model = load_run_model(run_dir, model)
    depth = describe(keras_model).depth
    dataset, _ = source_dataset(
        settings["source"],
        split,
        image_size=tuple(settings["image_size"]),
        channels=settings["channels"],
        num_classes=settings["num_classes"],
        batch_size=batch_size or settings["batch_size"],
        resize_mode=settings["resize_mode"],
        depth=depth,
    )
    rows = evaluation.evaluate_levels(
        keras_model,
        dataset,
        settings["image_size"],
        threshold=threshold,
        latency_batch_size=latency_batch_size,
        latency_runs=latency_runs,
    )
    output_dir = pathlib.Path(output_dir or pathlib.Path(run_dir) / EVALUATION_DIR)
    csv_path, json_path = evaluation.write_table(rows, output_dir)
    plot = evaluation.plot_tradeoff(
        rows,
        output_dir / "levels.png",
        title=f"{keras_model.name} on the {split} split: IoU vs inference time",
    )
    return {
        "rows": rows,
        "csv": csv_path,
        "json": json_path,
        "plot": plot,
        "table": evaluation.format_table(rows),
    }


def _single_output(keras_model, level):
    levels = describe(keras_model).heads
    if level is None:
        return inference_model(keras_model, "accurate") if len(levels) > 1 else (
            prune(keras_model, levels[-1])
        )
    return prune(keras_model, level)


def predict_run(
    run_dir,
    input_dir,
    output_dir=None,
    model="best",
    level=None,
    threshold=0.5,
    overlays=False,
):
    """Writes mask PNGs (and overlays) for a folder of images with a run's model.

    Args:
        run_dir: the run folder.
        input_dir: folder of images of any size.
        output_dir: results folder; `None` is `<run_dir>/predictions`.
            Defaults to `None`.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        level: int, predict with the model pruned to this level; `None`
            uses the accurate mode (all heads averaged) of a
            deep-supervision model, or its only head. Defaults to `None`.
        threshold: float. Defaults to `0.5`.
        overlays: bool. Defaults to `False`.

    Returns:
        list of the mask paths written.
    """
    config = read_run_config(run_dir)
    settings = config["data"]
    keras_model = _single_output(load_run_model(run_dir, model), level)
    image_size = (
        tuple(settings["image_size"]) if settings["resize_mode"] == "resize" else None
    )
    output_dir = output_dir or pathlib.Path(run_dir) / PREDICTION_DIR
    return prediction.predict_folder(
        keras_model,
        input_dir,
        output_dir,
        image_size=image_size,
        threshold=threshold,
        overlays=overlays,
    )


def export_run(
    run_dir,
    export_dir=None,
    levels=None,
    model="best",
    version=None,
    model_name=None,
    input_dtype="float32",
    threshold=0.5,
    overwrite=False,
):
    """Exports the pruned levels of a run's model as SavedModels for TF Serving.

    Args:
        run_dir: the run folder.
        export_dir: target folder; `None` is `<run_dir>/export`. Defaults to
            `None`.
        levels: ints, the levels to export; `None` exports every head.
            Defaults to `None`.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        version: int, version folder; `None` for the next free one.
            Defaults to `None`.
        model_name: served name prefix; `None` uses the model's name.
            Defaults to `None`.
        input_dtype: `"float32"`, `"uint8"` or `"uint16"`. Defaults to
            `"float32"`.
        threshold: float. Defaults to `0.5`.
        overwrite: bool. Defaults to `False`.

    Returns:
        dict level -> version folder (see `export_pruned`).
    """
    config = read_run_config(run_dir)
    keras_model = load_run_model(run_dir, model)
    history = training.read_history(run_dir)
    info = {
        "data": config["data"]["source"],
        "image_size": config["data"]["image_size"],
        "epochs": len(history),
        "architecture": config["model"]["architecture"],
    }
    monitor = training.monitor_name(keras_model, config["training"]["monitor"])
    scores = [row[monitor] for row in history if monitor in row]
    if scores:
        info[monitor] = max(scores)
    return export_pruned(
        keras_model,
        export_dir or pathlib.Path(run_dir) / EXPORT_DIR,
        levels=levels,
        version=version,
        model_name=model_name,
        input_dtype=input_dtype,
        threshold=threshold,
        overwrite=overwrite,
        training_info=info,
    )
