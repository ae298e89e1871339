"""A training run on disk, and the four jobs the command line does with it.

A run directory holds everything one training produced and the settings it
was made with (`run.json`), so that the later steps need only its path:

    <run>/run.json        settings: data source, model, training
    <run>/splits.csv      stem, split, image: where every image went
    <run>/best.keras      best epoch by validation IoU (or Dice), or by the
                          lowest training loss without validation
    <run>/last.keras      the model after the last epoch (with optimizer)
    <run>/history.csv     one row per epoch; <run>/logs/ for TensorBoard
    <run>/state/          resumable training state
    <run>/evaluation/     levels.csv, levels.json, levels.png, scored.json
    <run>/export/         SavedModels for TF Serving, one per level
    <run>/predictions/    masks/ and overlays/

`train_run`, `evaluate_run`, `predict_run` and `export_run` are the library
side of `keras-unetpp train|evaluate|predict|export`.
"""

import csv
import io
import json
import pathlib

import keras
import numpy as np

from keras_unetpp import (
    atomic,
    data,
    evaluation,
    field_metrics,
    prediction,
    sources,
    training,
)
from keras_unetpp.data.augment import DEFAULT_SCALE_RANGE
from keras_unetpp.data.decode import prepare_image, read_image
from keras_unetpp.description import describe, output_name
from keras_unetpp.distribute import (
    check_global_batch,
    get_strategy,
    is_chief,
    prepare_for_strategy,
)
from keras_unetpp.errors import InputError
from keras_unetpp.export import edge, export_pruned, signatures
from keras_unetpp.fused_batch_norm import fuse_batch_norm
from keras_unetpp.imbalance_losses import normalize_loss
from keras_unetpp.model import build, build_unet
from keras_unetpp.precision import precision_scope, runnable_model
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.recompute import recompute_nodes
from keras_unetpp.schedule import check_positive
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.sources import source_dataset, source_pairs
from keras_unetpp.thresholds import SWEEP_COLUMNS, ThresholdSweep
from keras_unetpp.validation import check_int, check_pixel_scaling, check_stride
from keras_unetpp.version import __version__

RUN_CONFIG = "run.json"
ARCHITECTURES = ("unetpp", "unet")
MODEL_CHOICES = ("best", "last")
EVALUATION_DIR = "evaluation"
EXPORT_DIR = "export"
PREDICTION_DIR = "predictions"

# Settings a resumed run may change: how long, how often to save,
# recomputation (the same training with less memory, e.g. after running out)
# and XLA (the same training, compiled another way).
_RESUMABLE_CHANGES = ("epochs", "save_every", "recompute", "xla")
# The augmentation settings of run.json, as runs recorded before them used.
_AUGMENTATION_DEFAULTS = {
    "scale_range": list(DEFAULT_SCALE_RANGE),
    "mask_interpolation": "nearest",
}
# Recorded facts, not settings.
_DERIVED = ("train_images", "val_images", "precision_policy", "split", "split_counts")


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
    check_stride((height, width), depth, "image_size")
    return [height, width]


def _check_resume(run_dir, config):
    previous = read_run_config(run_dir)
    old_data = previous.get("data", {})
    # Runs from before these settings were recorded used their defaults
    # when augmenting, and none without augmentation.
    for key, default in _AUGMENTATION_DEFAULTS.items():
        if key not in old_data and "augment" in old_data:
            old_data[key] = default if old_data["augment"] else None
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
            "same command to resume it (only --epochs, --save-every, "
            "--recompute and --xla may change), or choose a new --output "
            "folder. "
            f"Received: {'; '.join(changed)}"
        )


def model_settings(architecture, depth, filters, deep_supervision, normalization):
    """The `model` section of a run's `run.json` (2D and volume runs)."""
    return {
        "architecture": architecture,
        "depth": int(depth),
        "filters": (
            filters if filters is None or isinstance(filters, int) else list(filters)
        ),
        "deep_supervision": bool(deep_supervision),
        "normalization": normalization,
    }


def training_settings(
    epochs,
    steps_per_epoch,
    learning_rate,
    lr_schedule,
    loss_weights,
    monitor,
    precision,
    recompute,
    save_every,
    xla=False,
):
    """The settings of a run's `run.json` `training` section that every run has."""
    return {
        "epochs": int(epochs),
        "steps_per_epoch": steps_per_epoch,
        "learning_rate": float(learning_rate),
        "lr_schedule": lr_schedule,
        "loss_weights": None if loss_weights is None else list(loss_weights),
        "monitor": monitor,
        "precision": precision,
        "recompute": bool(recompute),
        "save_every": save_every,
        "xla": bool(xla),
    }


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
    scale_range=DEFAULT_SCALE_RANGE,
    mask_interpolation="nearest",
    pixel_scaling="dtype",
    precision="float32",
    recompute=False,
    xla=False,
    strategy="default",
    save_every=None,
    seed=0,
    tensorboard=True,
    time_budget=None,
    verbose=1,
    backbone=None,
    encoder_weights=None,
    freeze_encoder_epochs=0,
    unfreeze_lr_factor=0.1,
    loss=None,
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
        scale_range: `(low, high)`, the random zoom of the augmentation
            (`data.Augmentation`), or `None` for none: then crops are cut
            at whole-pixel offsets and neither images nor masks are
            resampled. Recorded in `run.json` as `data.scale_range`
            (`null` also when `augment` is off). Defaults to
            `(0.8, 1.25)`.
        mask_interpolation: `"nearest"` or `"bilinear"`, how the zoom
            resamples masks (`data.Augmentation`). Recorded in `run.json`
            as `data.mask_interpolation` (`null` when `augment` is off).
            Defaults to `"nearest"`.
        pixel_scaling: `"dtype"` (integers divided by 255 or 65535) or
            `"minmax"` (each image's range to [0, 1]); recorded in `run.json`,
            so that evaluate, predict and the exported SavedModels scale
            pixels the same way. Defaults to `"dtype"`.
        precision: `"auto"` or a Keras dtype policy name (see
            `keras_unetpp.resolve_precision`); the policy it resolves to is
            recorded in `run.json` as `precision_policy`. Defaults to
            `"float32"`.
        recompute: bool, recompute each node's activations in the
            backward pass (`keras_unetpp.recompute_nodes`): less memory per
            training step, more compute. Defaults to `False`.
        xla: bool, compile the training step with XLA
            (`training.train(jit_compile=True)`). Defaults to `False`.
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
        backbone: `None` (UNet++'s own encoder) or a `keras.applications`
            trunk name (see `keras_unetpp.backbones.BACKBONES`); UNet++
            only. Recorded in `run.json`. Defaults to `None`.
        encoder_weights: `None`, `"imagenet"` or the path of a weights file
            of the backbone (see `build`); `run.json` records the name or the
            file's name, not its folder. Defaults to `None`.
        freeze_encoder_epochs: int, epochs with the backbone frozen before
            it is fine-tuned (see `training.train`). Defaults to `0`.
        unfreeze_lr_factor: float in (0, 1], the learning-rate multiplier
            after the unfreeze. Defaults to `0.1`.
        loss: the heads' loss, as `training.train` takes it (a name, a
            `loss_spec` dict, or a dict of those by head name), recorded in
            `run.json` as `training.loss` (`null`: the paper's BCE-Dice).
            Defaults to `None`.

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
    encoder = check_encoder_settings(
        architecture,
        depth,
        backbone,
        encoder_weights,
        freeze_encoder_epochs,
        unfreeze_lr_factor,
    )
    batch_size = check_int(batch_size, "batch_size")
    # Before run.json is written: it must never hold NaN or Infinity.
    learning_rate = check_positive(learning_rate, "learning_rate")
    training.check_loss_weight_values(loss_weights)
    if time_budget is not None:
        check_positive(time_budget, "time_budget")
    augmentation = (
        data.Augmentation(
            scale_range=scale_range, mask_interpolation=mask_interpolation
        )
        if augment
        else None
    )
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
            "scale_range": (
                list(augmentation.scale_range)
                if augmentation and augmentation.scale_range
                else None
            ),
            "mask_interpolation": (
                augmentation.mask_interpolation if augmentation else None
            ),
            "pixel_scaling": check_pixel_scaling(pixel_scaling),
            "seed": int(seed),
        },
        "model": {
            **model_settings(
                architecture, depth, filters, deep_supervision, normalization
            ),
            **encoder["model"],
        },
        "training": {
            **training_settings(
                epochs,
                steps_per_epoch,
                learning_rate,
                lr_schedule,
                loss_weights,
                monitor,
                precision,
                recompute,
                save_every,
                xla,
            ),
            "strategy": strategy,
            **encoder["training"],
            "loss": normalize_loss(loss, json_only=True),
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
        pixel_scaling=pixel_scaling,
    )
    distribution = get_strategy(strategy)
    check_global_batch(batch_size, distribution)
    train_ds, train_count = source_dataset(
        source,
        "train",
        training=True,
        augmentation=augmentation,
        **processing,
    )
    if source.get("validation", True):
        val_ds, val_count = source_dataset(source, "val", **processing)
    else:
        val_ds, val_count = None, 0
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
            model = build(
                deep_supervision=deep_supervision,
                backbone=backbone,
                encoder_weights=encoder_weights,
                **model_kwargs,
            )
        prepare_for_strategy(model, distribution)
        if recompute:
            recompute_nodes(model)
        run_dir.mkdir(parents=True, exist_ok=True)
        config["data"]["train_images"] = train_count
        config["data"]["val_images"] = val_count
        config["data"]["split"] = sources.describe_split(source)
        splits_path, split_counts = sources.write_splits(
            source, run_dir / sources.SPLITS_CSV
        )
        config["data"]["split_counts"] = split_counts
        # Atomic and strict JSON: a kill leaves the old run.json or the new.
        atomic.write_json(run_dir / RUN_CONFIG, config, indent=2)
        if verbose:
            print(
                f"{model.name}: depth {depth}, {model.count_params():,} parameters; "
                f"{train_count} training / {val_count} validation images at "
                f"{image_size[0]}x{image_size[1]}; run folder {output_dir}"
            )
            print(f"Split: {config['data']['split']}.")
            if splits_path is not None:
                print(
                    f"Wrote {splits_path} (the split of every image: "
                    f"{sources.count_text(split_counts)})."
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
            freeze_encoder_epochs=freeze_encoder_epochs,
            unfreeze_lr_factor=unfreeze_lr_factor,
            loss=config["training"]["loss"],
            jit_compile=xla,
        )
    result["run_dir"] = output_dir
    return result


def check_encoder_settings(
    architecture,
    depth,
    backbone,
    encoder_weights,
    freeze_encoder_epochs,
    unfreeze_lr_factor,
):
    """Checks a run's backbone settings up front; returns what run.json records.

    Returns:
        dict with the `model` entries (`backbone`, `encoder_weights`: the
        name, or the weights file's name without its folder) and the
        `training` entries (`freeze_encoder_epochs`, `unfreeze_lr_factor`)
        of `run.json`; empty dicts for a run on the built-in encoder.

    Raises:
        InputError: an unknown backbone, a missing weights file, a depth
            the backbone cannot feed, or options that need a backbone.
    """
    from keras_unetpp import backbones
    from keras_unetpp.fine_tuning import check_fine_tuning

    freeze_encoder_epochs, unfreeze_lr_factor = check_fine_tuning(
        freeze_encoder_epochs, unfreeze_lr_factor
    )
    if backbone is None:
        if encoder_weights is not None or freeze_encoder_epochs:
            given = (
                f"encoder_weights={encoder_weights!r}"
                if encoder_weights is not None
                else f"freeze_encoder_epochs={freeze_encoder_epochs}"
            )
            raise InputError(
                "Encoder weights and a frozen encoder need a pretrained "
                f"backbone; give `backbone` too. Received: backbone=None, {given}"
            )
        return {"model": {}, "training": {}}
    entry = backbones.get_backbone(backbone)
    if architecture != "unetpp":
        raise InputError(
            "Backbones are for UNet++ (the U-Net baseline keeps its own "
            f"encoder). Received: architecture={architecture!r}, "
            f"backbone={backbone!r}"
        )
    if depth > entry.max_depth:
        raise InputError(
            f"The {backbone} backbone has feature maps down to stride "
            f"{2**entry.max_depth}, so `depth` can be at most {entry.max_depth}. "
            f"Received: depth={depth}"
        )
    weights = backbones.check_encoder_weights(encoder_weights)
    if weights not in (None, "imagenet"):
        weights = pathlib.Path(weights).name
    return {
        "model": {"backbone": backbone, "encoder_weights": weights},
        "training": {
            "freeze_encoder_epochs": freeze_encoder_epochs,
            "unfreeze_lr_factor": unfreeze_lr_factor,
        },
    }


def _worker_dir(output_dir, distribution):
    """The run folder of this process: `output_dir` for the chief."""
    if is_chief(distribution):
        return output_dir
    resolver = distribution.cluster_resolver
    return output_dir / ".workers" / f"{resolver.task_type}_{resolver.task_id}"


def _pixel_scaling(settings):
    """How the run scaled pixels (`run.json` data.pixel_scaling; older: dtype)."""
    return settings.get("pixel_scaling", "dtype")


def load_run_model(run_dir, model="best"):
    """Loads the best or last model of a run (or a `.keras` file), uncompiled.

    A model trained in bfloat16 is cast to float32 (with a warning) on a CPU
    whose TensorFlow cannot compute bfloat16, see
    `keras_unetpp.precision.runnable_model`.

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
    loaded = runnable_model(keras.saving.load_model(path, compile=False))
    fuse_batch_norm(loaded)
    return loaded


def evaluate_run(
    run_dir,
    model="best",
    split=None,
    source=None,
    batch_size=None,
    threshold=0.5,
    latency_batch_size=1,
    latency_runs=10,
    output_dir=None,
    at_training_size=False,
    tiling=None,
    tta=None,
    instance_methods=field_metrics.INSTANCE_METHODS,
    per_image=False,
    thresholds=None,
):
    """Writes the per-level table of a run: IoU, Dice, params, FLOPs, ms.

    The model is evaluated in inference mode, without augmentation, on one
    split of the run's own data source (as recorded in `run.json`) or of
    another labelled source. By default every image is scored whole, at its
    own resolution, against its mask as stored
    (`evaluation.evaluate_levels_native`): the image goes through the run's
    size policy (`resize`: resized to the training size and the
    probabilities back; `crop`: padded to the stride) and nothing is
    cropped. `at_training_size=True` scores instead as training validates:
    images and masks resized to the training size (masks nearest-neighbour),
    or centre-cropped in crop mode; the rows say so in `scored_at`.

    Args:
        run_dir: the run folder.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        split: `"train"`, `"val"`, `"test"` or `"all"`; `None` is `"val"`
            for the run's own source and `"all"` for another `source`.
            Defaults to `None`.
        source: dict from `sources.data_source()` (e.g. another labelled
            folder), or `None` for the run's own. Defaults to `None`.
        batch_size: int, or `None` for the run's (training size only).
            Defaults to `None`.
        threshold: float. Defaults to `0.5`.
        latency_batch_size: int, images per timed call. Defaults to `1`.
        latency_runs: int, timed calls per level. Defaults to `10`.
        output_dir: where to write `levels.csv/.json/.png` and
            `scored.json`; `None` is `<run_dir>/evaluation`. Defaults to
            `None`.
        at_training_size: bool, score at the training size instead of at
            native resolution. Defaults to `False`.
        tiling: `None`, or a dict of `predict_tiled` arguments without
            `tta` (`tile_size`, `overlap`, ...): predict each image tile by
            tile, as `predict_run(tiling=...)` and a tiled export do;
            crop-mode runs at native resolution only. Defaults to `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: also score with
            test-time augmentation (`iou_tta`, `dice_tta` next to `iou`,
            `dice`); native resolution only. Defaults to `None`.
        instance_methods: the instance separations of the DSB 2018 score
            (native resolution, one-class models): `"components"` and/or
            `"watershed"`; `()` leaves it out. The true nuclei are the
            per-nucleus masks of a `dsb2018` source, else the connected
            components of the masks. Defaults to both.
        per_image: bool, also write `per_image.csv`: every image's IoU,
            Dice, precision and recall at every level (`image` is the file
            name, or the example's index for TFDS), to find the images or
            the kind of image where the score is lost (native resolution,
            one-class models). Defaults to `False`.
        thresholds: `None`, or a sequence of thresholds in [0, 1]: also
            write `thresholds.csv`, every level's pooled IoU and Dice at
            each of them (`thresholds.ThresholdSweep`; native resolution,
            one-class models, predictions without TTA). Pick the threshold
            on the train split, report it on val. Defaults to `None`.

    Returns:
        dict: `rows` (one per level), `csv`, `json`, `plot`, `scored`,
        `per_image` (the CSV's path, or `None`), `thresholds` (the sweep's
        CSV, or `None`), `best_thresholds` (level -> the sweep's row of
        its best threshold, or `None`)
        (paths), `table` (printable text), `what` (what was scored, in
        words), `images` (how many) and `resolution` (how, in words).
    """
    config = read_run_config(run_dir)
    settings = config["data"]
    keras_model = load_run_model(run_dir, model)
    own = source is None
    if own:
        source = settings["source"]
        split = split or "val"
        if split == "val" and not sources.has_split(source, "val"):
            raise InputError(
                f"The run {str(run_dir)!r} has no validation split "
                f"({sources.describe_split(source)}); choose one with --split "
                "train|test, or score other data with --data DIR (or --images "
                "DIR --masks DIR)."
            )
    else:
        split = split or "all"
    depth = describe(keras_model).depth
    image_size = tuple(settings["image_size"])
    height, width = image_size
    resize = settings["resize_mode"] == "resize"
    where = sources.describe_source(source)
    if split == "all":
        what = f"every image of {where}"
    elif split == "val" and source.get("val_source"):
        what = f"the val split: {sources.describe_source(source['val_source'])}"
    else:
        what = f"the {split} split of {where} ({sources.describe_split(source)})"
    if at_training_size and thresholds is not None:
        raise InputError(
            "A threshold sweep scores whole images at their own resolution; "
            "--at-training-size scores training-size batches. Received: "
            "at_training_size=True with thresholds"
        )
    sweep = None if thresholds is None else ThresholdSweep(thresholds)
    if at_training_size and per_image:
        raise InputError(
            "Per-image scores are taken on whole images at their own "
            "resolution; --at-training-size scores training-size batches. "
            "Received: at_training_size=True with per_image=True"
        )
    if at_training_size and (tiling is not None or tta is not None):
        raise InputError(
            "Tiles and test-time augmentation score whole images at their own "
            "resolution; --at-training-size scores the training-size batches "
            "instead. Received: at_training_size=True with tiling or tta"
        )
    if tiling is not None and resize:
        raise InputError(
            "Tiled evaluation runs at the images' own scale; this run resizes "
            f"every image to {height}x{width}, which needs no tiles. Received: "
            "tiling with a resize-mode run"
        )
    if at_training_size:
        dataset, count = source_dataset(
            source,
            split,
            image_size=image_size,
            channels=settings["channels"],
            num_classes=settings["num_classes"],
            batch_size=batch_size or settings["batch_size"],
            resize_mode=settings["resize_mode"],
            depth=depth,
            pixel_scaling=_pixel_scaling(settings),
        )
        rows = evaluation.evaluate_levels(
            keras_model,
            dataset,
            image_size,
            threshold=threshold,
            latency_batch_size=latency_batch_size,
            latency_runs=latency_runs,
        )
        resolution = (
            f"at the training size {height}x{width}: images resized, masks "
            "resized (nearest neighbour)"
            if resize
            else f"at the training size {height}x{width}: the centre "
            f"{height}x{width} crop (or zero padding) of each image and mask"
        )
    else:
        samples, count = sources.source_samples(
            source,
            split,
            settings["channels"],
            settings["num_classes"],
            pixel_scaling=_pixel_scaling(settings),
        )
        image_records = [] if per_image else None
        instances = None
        if source.get("kind") == "dsb2018" and instance_methods:
            # Per-nucleus truth: touching nuclei stay apart.
            instances = field_metrics.pair_instances(
                source_pairs(source, split),
                sources.mask_rules(source)["mask_threshold"],
            )
        rows = evaluation.evaluate_levels_native(
            keras_model,
            samples,
            image_size if resize else None,
            latency_image_size=image_size,
            threshold=threshold,
            latency_batch_size=latency_batch_size,
            latency_runs=latency_runs,
            tiling=tiling,
            tta=tta,
            instance_methods=tuple(instance_methods),
            instances=instances,
            per_image=image_records,
            sweep=sweep,
        )
        resolution = "at native resolution: whole images against the masks " + (
            f"as stored (each image resized to {height}x{width} for the "
            "network, the probabilities resized back)"
            if resize
            else "as stored (each image padded to the network's stride)"
        )
        if tiling is not None:
            resolution += f", predicted {rows[0]['inference']}"
        if tta is not None:
            resolution += f"; with and without test-time augmentation ({tta})"
    count = rows[0]["images"]
    output_dir = pathlib.Path(output_dir or pathlib.Path(run_dir) / EVALUATION_DIR)
    csv_path, json_path = evaluation.write_table(rows, output_dir)
    plot = evaluation.plot_tradeoff(
        rows,
        output_dir / "levels.png",
        title=f"{keras_model.name}, {split} ({count} images, "
        + ("native resolution" if not at_training_size else f"{height}x{width}")
        + "): IoU vs inference time",
    )
    per_image_csv = None
    if per_image:
        names = None
        if source.get("kind") != "tfds" or (
            split == "val" and source.get("val_source")
        ):
            names = [
                pathlib.Path(pair.image).name for pair in source_pairs(source, split)
            ]
        per_image_csv = _write_per_image(image_records, names, output_dir)
    sweep_csv = best_thresholds = None
    if sweep is not None:
        sweep_csv = _write_rows(
            sweep.rows(), SWEEP_COLUMNS, pathlib.Path(output_dir) / "thresholds.csv"
        )
        best_thresholds = sweep.best()
    scored = output_dir / "scored.json"
    with open(scored, "w") as f:
        json.dump(
            {
                "run": str(run_dir),
                "model": str(model),
                "source": source,
                "split": split,
                "what": what,
                "images": count,
                "resolution": resolution,
                "flops_and_latency_at": [height, width],
                "threshold": threshold,
                "best_thresholds": best_thresholds,
            },
            f,
            indent=2,
        )
        f.write("\n")
    return {
        "rows": rows,
        "csv": csv_path,
        "json": json_path,
        "plot": plot,
        "scored": scored,
        "per_image": per_image_csv,
        "thresholds": sweep_csv,
        "best_thresholds": best_thresholds,
        "table": evaluation.format_table(rows),
        "what": what,
        "images": count,
        "resolution": resolution,
    }


def _write_rows(rows, columns, path):
    """Writes dicts as a CSV of `columns`, atomically; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = io.StringIO()
    writer = csv.DictWriter(lines, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, lines.getvalue())
    return path


def _write_per_image(records, names, output_dir):
    """`per_image.csv` from `evaluate_levels_native(per_image=...)` records.

    `image` becomes the file name when `names` (in sample order) are known.
    """
    rows = []
    for record in records:
        row = {k: "" if v is None else v for k, v in record.items()}
        if names is not None:
            row["image"] = names[record["image"]]
        rows.append(row)
    return _write_rows(
        rows,
        evaluation.PER_IMAGE_COLUMNS,
        pathlib.Path(output_dir) / "per_image.csv",
    )


def _single_output(keras_model, level=None, accurate=False):
    """The single-output model predict uses, and its name for messages."""
    levels = describe(keras_model).heads
    if level is not None and accurate:
        raise InputError(
            "Give a level or the accurate mode, not both. "
            f"Received: level={level!r}, accurate=True"
        )
    if level is not None:
        return prune(keras_model, level), f"L{level}"
    if len(levels) > 1:
        return inference_model(keras_model, "accurate"), (
            f"accurate mode, mean of heads L{levels[0]}..L{levels[-1]}"
        )
    # One head: it is the model's accurate mode too.
    return prune(keras_model, levels[-1]), f"L{levels[-1]}"


def _prediction_inputs(settings, input_dir, split):
    """`(stem, path)` of the images to predict: a folder, or a split of the run."""
    if (input_dir is None) == (split is None):
        raise InputError(
            "Give either a folder of images or a split of the run's own data "
            f"(split='val'), not {'both' if split else 'neither'}. "
            f"Received: input_dir={input_dir!r}, split={split!r}"
        )
    if input_dir is not None:
        return [(path.stem, path) for path in prediction.image_files(input_dir)]
    if "source" not in settings:
        raise InputError(
            "run.json records no data source to take a split from. "
            f"Received: split={split!r}"
        )
    pairs = source_pairs(settings["source"], split)
    return [(pair.stem, pathlib.Path(pair.image)) for pair in pairs]


def predict_run(
    run_dir,
    input_dir=None,
    output_dir=None,
    model="best",
    level=None,
    threshold=0.5,
    overlays=False,
    split=None,
    accurate=False,
    probabilities=None,
    tiling=None,
    tta=None,
):
    """Writes mask PNGs (and overlays, probabilities) with a run's model.

    The images go through the run's size policy (`SizePolicy.from_run_config`),
    the same code the exported SavedModels run: a resize-mode run resizes
    each image to its training size (squashing the aspect ratio, as
    training did) and the probabilities back; a crop-mode run predicts at
    each image's own scale.

    Args:
        run_dir: the run folder.
        input_dir: folder of images of any size, or `None` with `split`.
            Defaults to `None`.
        output_dir: results folder; `None` is `<run_dir>/predictions`.
            Defaults to `None`.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        level: int, predict with the model pruned to this level; `None`
            uses the accurate mode (all heads averaged) of a
            deep-supervision model, or its only head. Defaults to `None`.
        threshold: float. Defaults to `0.5`.
        overlays: bool. Defaults to `False`.
        split: `"train"` or `"val"`: predict the images of that split of
            the run's own data source (`sources.source_pairs`) instead of a
            folder. Defaults to `None`.
        accurate: bool, the accurate mode (the default of a
            deep-supervision model, said explicitly); not with `level`.
            Defaults to `False`.
        probabilities: `None`, `"png16"` (16-bit PNGs, 0..65535) or
            `"npy"` (float32): also write the probabilities to
            `<output_dir>/probabilities/`. Defaults to `None`.
        tiling: `None`, or `keras_unetpp.predict_tiled` arguments
            (`tile_size`, `overlap`, `tta`) for sliding-window prediction
            of crop-mode runs (see `prediction.predict_images`). Defaults to
            `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: test-time augmentation
            of whole images, as `evaluate --tta` scores it and
            `export --tta` serves it (tiled: the `"tta"` of `tiling`).
            Defaults to `None`.

    Returns:
        dict: `"masks"`, `"overlays"`, `"probabilities"` (lists of the
        files written), `"output_dir"`, `"model"` (which head(s)) and
        `"size_policy"` (the `SizePolicy` used).
    """
    config = read_run_config(run_dir)
    settings = config.get("data", {})
    keras_model, used = _single_output(load_run_model(run_dir, model), level, accurate)
    policy = SizePolicy.from_run_config(config)
    inputs = _prediction_inputs(settings, input_dir, split)
    output_dir = pathlib.Path(output_dir or pathlib.Path(run_dir) / PREDICTION_DIR)
    written = prediction.predict_images(
        keras_model,
        inputs,
        output_dir,
        size_policy=policy,
        threshold=threshold,
        overlays=overlays,
        probabilities=probabilities,
        tiling=tiling,
        tta=tta,
        pixel_scaling=_pixel_scaling(settings),
    )
    return {**written, "output_dir": output_dir, "model": used, "size_policy": policy}


_SOURCE_PATHS = ("images", "masks", "manifest", "root", "data_dir")


def _short_path(path):
    """The last two components of a path, e.g. `"dsb2018_nuclei/images"`."""
    pure = pathlib.PurePath(path)
    parts = [part for part in pure.parts if part != pure.anchor]
    return "/".join(parts[-2:])


def source_summary(source, record_paths=False):
    """The data source as export metadata records it.

    Args:
        source: the `data.source` dict of `run.json`.
        record_paths: bool, keep the absolute paths. Defaults to `False`:
            every path is shortened to its last two components (e.g.
            `"dsb2018_nuclei/images"`), so that the metadata of a served
            model does not reveal the training machine's folders.

    Returns:
        dict.
    """
    if record_paths:
        return source
    return _shorten_paths(source)


def _shorten_paths(value, key=None):
    """`source_summary`'s walk: nested sources (the split, a validation source)."""
    if isinstance(value, dict):
        return {k: _shorten_paths(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten_paths(v, key) for v in value]
    if key in _SOURCE_PATHS and isinstance(value, str):
        return _short_path(value)
    return value


def export_training_info(run_dir, config, keras_model, record_paths, **fields):
    """What an export records of the run it came from (`training_info`).

    Args:
        run_dir: the run folder (its `history.csv` gives the epochs and the
            best monitored score).
        config: the run's `run.json` settings (`read_run_config`).
        keras_model: the exported Keras model (it names the monitored
            score).
        record_paths: bool, record the data's absolute paths; otherwise
            only their last two components (`source_summary`).
        **fields: what the kind of run adds after `data`: the image size
            and resize mode of a 2D run, the patch size and intensity of a
            volume run.

    Returns:
        dict: `data`, the `fields`, `epochs`, `architecture` and, once
        validation ran, the best value of the monitored score under its
        name.
    """
    history = training.read_history(run_dir)
    info = {
        "data": source_summary(config["data"]["source"], record_paths),
        **fields,
        "epochs": len(history),
        "architecture": config["model"]["architecture"],
    }
    monitor = training.monitor_name(keras_model, config["training"]["monitor"])
    scores = [row[monitor] for row in history if monitor in row]
    if scores:
        info[monitor] = max(scores)
    return info


def has_several_heads(keras_model):
    """Whether a model has deep-supervision heads (an accurate mode to export)."""
    return len(describe(keras_model).heads) > 1


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
    accurate=None,
    record_paths=False,
    tiling=None,
    formats=("savedmodel",),
    calibration_images=32,
    tta=None,
):
    """Exports the pruned levels of a run's model as SavedModels for TF Serving.

    Every SavedModel applies the run's size policy
    (`SizePolicy.from_run_config`): a run trained on images resized to
    `image_size` is served the same way (the graph resizes each request to
    `image_size` and the probabilities back), a crop-mode run at native
    scale, so the served masks are those of `predict_run`.

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
        accurate: bool, also export the accurate mode (the mean of every
            head, `predict`'s default) as `<name>_accurate`; `None` does so
            for a deep-supervision model. Defaults to `None`.
        record_paths: bool, record the absolute paths of the run's data in
            the metadata's `training.data`; by default only their last two
            components. Defaults to `False`.
        tiling: `None`, or a dict of `predict_tiled` arguments (`tile_size`,
            `overlap`, `tta`, ...): serve tile by tile inside the graph
            (`export_pruned(tiling=...)`), as `predict_run(tiling=...)`
            predicts; crop-mode runs only. A volume run is always served
            by sliding window: `None` is its patch size, overlap 0.5
            (`keras_unetpp.volumes.runs.export_volume_run`). Defaults to
            `None`.
        formats: what each version folder holds: any of `"savedmodel"`,
            `"tflite"` (float32, dynamic-range and int8 files) and
            `"onnx"`, as for `export_pruned`. The TFLite and ONNX files
            take the run's `image_size` (the client resizes a resize-mode
            run's images; see `keras_unetpp.export.edge`). Defaults to
            `("savedmodel",)`.
        calibration_images: int, how many images of the run's training
            split (evenly spread over it, read as the training pipeline
            reads them) calibrate the int8 TFLite files. Defaults to `32`.
        tta: `None`, `"flips"` or `"flips+rot90"`: serve whole images with
            test-time augmentation inside the graph (`export_pruned(tta=...)`),
            as `predict_run(tta=...)` predicts and `evaluate --tta` scores.
            Defaults to `None`.

    Returns:
        dict level -> version folder, and `"accurate"` -> its folder (see
        `export_pruned`).
    """
    from keras_unetpp.volumes import runs as volume_runs

    if volume_runs.is_volume_run(run_dir):
        if tta is not None:
            raise InputError(
                "A volume run is served by sliding window: its test-time "
                "augmentation is the `tta` of `tiling`. Received: tta="
                f"{tta!r}"
            )
        if tuple(edge.check_formats(formats)) != (edge.SAVEDMODEL,):
            raise InputError(
                "A volume run is exported as SavedModels only (the TFLite and "
                f"ONNX files are for 2D images). Received: formats={formats!r}"
            )
        return volume_runs.export_volume_run(
            run_dir,
            export_dir=export_dir,
            levels=levels,
            model=model,
            version=version,
            model_name=model_name,
            input_dtype=input_dtype,
            threshold=threshold,
            overwrite=overwrite,
            accurate=accurate,
            record_paths=record_paths,
            tiling=tiling,
        )
    config = read_run_config(run_dir)
    keras_model = load_run_model(run_dir, model)
    policy = SizePolicy.from_run_config(config)
    info = export_training_info(
        run_dir,
        config,
        keras_model,
        record_paths,
        image_size=config["data"]["image_size"],
        resize_mode=config["data"].get("resize_mode", "resize"),
    )
    if accurate is None:
        accurate = has_several_heads(keras_model)
    formats = edge.check_formats(formats)
    calibration = None
    if edge.TFLITE in formats:
        calibration = _calibration_images(config, calibration_images, input_dtype)
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
        size_policy=policy,
        accurate=accurate,
        pixel_scaling=_pixel_scaling(config.get("data", {})),
        tiling=tiling,
        tta=tta,
        formats=formats,
        input_size=None if policy.mode == "resize" else config["data"]["image_size"],
        calibration_images=calibration,
    )


def _calibration_images(config, count, input_dtype):
    """`count` training images of a run in the `input_dtype` range.

    Evenly spread over the run's training split, decoded and scaled as the
    training pipeline does (`prepare_image`), then mapped back to the range
    of `input_dtype` (uint8 0..255, uint16 0..65535, float32 [0, 1]).
    """
    check_int(count, "calibration_images")
    settings = config["data"]
    pairs = source_pairs(settings["source"], "train")
    chosen = sorted(
        {int(i) for i in np.linspace(0, len(pairs) - 1, min(count, len(pairs)))}
    )
    divisor = signatures.INPUT_DTYPES[input_dtype] or 1.0
    images = []
    for index in chosen:
        path = str(pairs[index].image)
        image = prepare_image(
            read_image(path), settings["channels"], _pixel_scaling(settings), path
        )
        if input_dtype == "float32":
            images.append(image)
        else:
            images.append(np.round(image * divisor).astype(input_dtype))
    return images
