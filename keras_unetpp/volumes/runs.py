"""Training runs on volumes: the library side of `keras-unetpp` on 3D data.

A volume run folder has the layout of a 2D run (`keras_unetpp.runs`):
`run.json` (with `"data": {"kind": "volumes", ...}`: the source folders
and split, the patch size, the intensity normalization, the voxel spacing),
`splits.csv`, `best.keras`, `last.keras`, `history.csv`, `logs/`,
`state/` (resume by running the same command again), and later
`evaluation/` and `predictions/`. Training is `keras_unetpp.training.train`
itself (resume, TensorBoard, CSV history, best checkpoint by validation
IoU or Dice, time budget); validation scores whole validation volumes
padded to the model's stride. `evaluate_volume_run` and
`predict_volume_run` read the run's settings, so that evaluation and
prediction normalize, resample and tile as training did.
"""

import csv
import io as _io
import os
import pathlib

import keras
import numpy as np

from keras_unetpp import atomic, training
from keras_unetpp.data.pairs import manifest_stems
from keras_unetpp.description import describe, output_name
from keras_unetpp.errors import InputError
from keras_unetpp.model import build, build_unet
from keras_unetpp.precision import precision_scope
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.recompute import recompute_nodes
from keras_unetpp.runs import (
    load_run_model,
    model_settings,
    read_run_config,
    training_settings,
)
from keras_unetpp.schedule import check_positive
from keras_unetpp.validation import check_int, check_number
from keras_unetpp.version import __version__
from keras_unetpp.volumes import inference, io, pipeline, processing

KIND = "volumes"
RUN_CONFIG = "run.json"
SPLITS_CSV = "splits.csv"
MANIFEST = "manifest.csv"
EVALUATION_DIR = "evaluation"
PREDICTION_DIR = "predictions"
TABLE_STEM = "volume_levels"
# Settings a resumed run may change (as in 2D).
_RESUMABLE_CHANGES = ("epochs", "save_every", "recompute", "xla")
_DERIVED = ("train_volumes", "val_volumes", "precision_policy")


def is_volume_data(data_dir=None, images_dir=None):
    """Whether a `--data` folder or an `--images` folder holds volumes.

    A data folder holds volumes when it has `imagesTr/` + `labelsTr/` or
    `images/` + `labels/` (or `masks/`) with a volume file in the images
    folder; an images folder when its first visible file is a `.nii`,
    `.nii.gz` or `.npy` volume.
    """
    if data_dir is not None and os.path.isdir(data_dir):
        return io.find_volume_folders(data_dir) is not None
    if images_dir is not None and os.path.isdir(images_dir):
        names = sorted(n for n in os.listdir(images_dir) if not n.startswith("."))
        return bool(names) and io.is_volume_file(names[0])
    return False


def is_volume_run(run_dir):
    """Whether `run_dir` is a run trained on volumes."""
    path = pathlib.Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return False
    return read_run_config(run_dir).get("data", {}).get("kind") == KIND


def volume_source(
    data_dir=None,
    images_dir=None,
    labels_dir=None,
    manifest=None,
    split_column="suggested_split",
    val_fraction=0.2,
    no_val=False,
    seed=0,
):
    """The data source of a volume run, as recorded in `run.json`.

    The split comes from a manifest CSV (`stem` column and `split_column`
    with values `train`/`val`, as `msd_hippocampus/manifest.csv`): the
    given one, or `<data_dir>/manifest.csv`; without one, a seeded random
    split of `val_fraction` of the volumes (none with `no_val`).

    Args:
        data_dir: folder with `imagesTr/` + `labelsTr/` or `images/` +
            `labels/`. Defaults to `None`.
        images_dir: image volume folder (with `labels_dir`). Defaults to
            `None`.
        labels_dir: label map folder. Defaults to `None`.
        manifest: CSV path, or `None`. Defaults to `None`.
        split_column: str. Defaults to `"suggested_split"`.
        val_fraction: float in (0, 1), for a random split. Defaults to
            `0.2`.
        no_val: bool, train on everything, validate on nothing. Defaults
            to `False`.
        seed: int, seeds a random split. Defaults to `0`.

    Returns:
        dict: `kind`, `images`, `labels`, `manifest`, `split_column`,
        `val_fraction`, `validation`, `seed`.
    """
    if (data_dir is None) == (images_dir is None):
        raise InputError(
            "Give a volume data folder or an images folder (with its labels "
            f"folder), not {'both' if data_dir else 'neither'}. Received: "
            f"data_dir={data_dir!r}, images_dir={images_dir!r}"
        )
    if data_dir is not None:
        found = io.find_volume_folders(data_dir)
        if found is None:
            raise InputError(
                f"{data_dir!r} has no imagesTr/ + labelsTr/ or images/ + "
                "labels/ folders with volume files "
                f"({', '.join(io.VOLUME_EXTENSIONS)}). Received: data_dir={data_dir!r}"
            )
        images_dir, labels_dir = found
        if manifest is None and (pathlib.Path(data_dir) / MANIFEST).is_file():
            manifest = pathlib.Path(data_dir) / MANIFEST
    elif labels_dir is None:
        raise InputError(
            "An images folder of volumes needs its labels folder (--masks). "
            "Received: labels_dir=None"
        )
    val_fraction = check_number(val_fraction, "val_fraction", 0.0, 1.0, True, True)
    return {
        "kind": KIND,
        "images": os.path.abspath(images_dir),
        "labels": os.path.abspath(labels_dir),
        "manifest": None if manifest is None else os.path.abspath(manifest),
        "split_column": split_column,
        "val_fraction": float(val_fraction),
        "validation": not no_val,
        "seed": int(seed),
    }


def source_pairs(source, split):
    """The `VolumePair`s of one split (`"train"`, `"val"` or `"all"`)."""
    if split == "all":
        return io.volume_pairs(source["images"], source["labels"])
    if split not in ("train", "val"):
        raise InputError(
            f"`split` must be 'train', 'val' or 'all'. Received: split={split!r}"
        )
    if source.get("manifest"):
        stems = manifest_stems(source["manifest"], split, source["split_column"])
        return io.volume_pairs(source["images"], source["labels"], stems=stems)
    pairs = io.volume_pairs(source["images"], source["labels"])
    if not source.get("validation", True):
        return pairs if split == "train" else []
    order = np.random.default_rng(source.get("seed", 0)).permutation(len(pairs))
    count = max(1, int(round(source["val_fraction"] * len(pairs))))
    if count >= len(pairs):
        raise InputError(
            f"A random split of {len(pairs)} volume(s) leaves none to train on. "
            f"Received: val_fraction={source['val_fraction']}"
        )
    val = set(order[:count].tolist())
    return [p for k, p in enumerate(pairs) if (k in val) == (split == "val")]


def _write_splits(path, train, val):
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stem", "split", "image"])
    for split, pairs in (("train", train), ("val", val)):
        for pair in pairs:
            writer.writerow([pair.stem, split, os.path.basename(pair.image)])
    atomic.write_text(path, buffer.getvalue())


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
            "same command to resume it (only --epochs, --save-every, "
            "--recompute and --xla may change), or choose a new --output "
            "folder. "
            f"Received: {'; '.join(changed)}"
        )


def train_volume_run(
    output_dir,
    source,
    architecture="unetpp",
    depth=4,
    filters=None,
    deep_supervision=True,
    normalization="batch",
    patch_size=(32, 32, 32),
    channels=1,
    num_classes=1,
    foreground_share=0.33,
    intensity="zscore",
    ct_window=processing.DEFAULT_CT_WINDOW,
    spacing=None,
    batch_size=2,
    epochs=10,
    steps_per_epoch=None,
    learning_rate=1e-3,
    lr_schedule="constant",
    loss_weights=None,
    monitor="iou",
    augment=True,
    precision="float32",
    recompute=False,
    xla=False,
    save_every=None,
    seed=0,
    tensorboard=True,
    time_budget=None,
    verbose=1,
):
    """Builds a 3D model, trains it on random patches of volumes, records the run.

    As `keras_unetpp.runs.train_run`, for volumes: the same run folder,
    resume (run it again with the same settings), TensorBoard, CSV history
    and best checkpoint. Each epoch draws one patch per training volume
    (`steps_per_epoch` sets more); validation predicts the whole
    validation volumes (zero-padded to the stride) in inference mode.

    Args:
        output_dir: the run folder.
        source: dict from `volume_source()`.
        architecture: `"unetpp"` or `"unet"`. Defaults to `"unetpp"`.
        depth: int. Defaults to `4`.
        filters: widths (as in `build`), or `None`. Defaults to `None`.
        deep_supervision: bool (UNet++ only). Defaults to `True`.
        normalization: `"batch"`, `"group"` or `"none"`. Defaults to
            `"batch"`.
        patch_size: int or `(depth, height, width)`, multiples of
            `2**depth`. Defaults to `(32, 32, 32)`.
        channels: int. Defaults to `1`.
        num_classes: int (1 = binary). Defaults to `1`.
        foreground_share: float in [0, 1]. Defaults to `0.33`.
        intensity: see `keras_unetpp.volumes.processing`. Defaults to
            `"zscore"`.
        ct_window: `(low, high)` HU. Defaults to `(-1000.0, 1000.0)`.
        spacing: target voxel size or `None`. Defaults to `None`.
        batch_size: int, patches per step. Defaults to `2`.
        epochs: int. Defaults to `10`.
        steps_per_epoch: int or `None` (one patch per volume). Defaults to
            `None`.
        learning_rate: float. Defaults to `1e-3`.
        lr_schedule: `"constant"` or `"cosine"`. Defaults to `"constant"`.
        loss_weights: per-head weights or `None`. Defaults to `None`.
        monitor: `"iou"` or `"dice"`. Defaults to `"iou"`.
        augment: bool, flips and in-plane quarter turns. Defaults to
            `True`.
        precision: a Keras dtype policy name or `"auto"`. Defaults to
            `"float32"`.
        recompute: bool. Defaults to `False`.
        xla: bool, compile the training step with XLA. Defaults to `False`.
        save_every: int or `None`. Defaults to `None`.
        seed: int. Defaults to `0`.
        tensorboard: bool. Defaults to `True`.
        time_budget: seconds or `None`. Defaults to `None`.
        verbose: 0, 1 or 2. Defaults to `1`.

    Returns:
        The dict of `training.train`, plus `run_dir`.

    Example:

    ```python
    source = volume_source(data_dir="../shared/data/msd_hippocampus")
    train_volume_run("runs/hippo", source, depth=3, filters=(16, 32, 64, 128),
                     patch_size=(32, 48, 48), num_classes=3)
    ```
    """
    if architecture not in ("unetpp", "unet"):
        raise InputError(
            "`architecture` must be 'unetpp' or 'unet'. "
            f"Received: architecture={architecture!r}"
        )
    if architecture == "unet" and deep_supervision:
        raise InputError(
            "The U-Net baseline has one head; deep supervision is a UNet++ "
            "option. Received: architecture='unet', deep_supervision=True"
        )
    depth = check_int(depth, "depth", 1, 6)
    patch = pipeline.check_patch_size(patch_size, depth)
    settings = pipeline.preprocessing(
        num_classes, channels, intensity, ct_window, spacing
    )
    batch_size = check_int(batch_size, "batch_size")
    learning_rate = check_positive(learning_rate, "learning_rate")
    training.check_loss_weight_values(loss_weights)
    share = check_number(foreground_share, "foreground_share", 0.0, 1.0)
    if time_budget is not None:
        check_positive(time_budget, "time_budget")
    config = {
        "keras_unetpp": __version__,
        "data": {
            "kind": KIND,
            "source": source,
            "patch_size": list(patch),
            "channels": settings.channels,
            "num_classes": settings.num_classes,
            "intensity": settings.intensity,
            "ct_window": list(settings.ct_window),
            "spacing": None if settings.spacing is None else list(settings.spacing),
            "foreground_share": share,
            "batch_size": batch_size,
            "augment": bool(augment),
            "seed": int(seed),
        },
        "model": model_settings(
            architecture, depth, filters, deep_supervision, normalization
        ),
        "training": training_settings(
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
    }
    output_dir = pathlib.Path(output_dir)
    if (output_dir / RUN_CONFIG).is_file() and training.read_state(output_dir):
        _check_resume(output_dir, config)
    names = None
    if deep_supervision:
        names = [output_name(level) for level in range(1, depth + 1)]
    train_pairs = source_pairs(source, "train")
    val_pairs = source_pairs(source, "val") if source.get("validation", True) else []
    common = dict(
        num_classes=settings.num_classes,
        channels=settings.channels,
        intensity=settings.intensity,
        ct_window=settings.ct_window,
        spacing=settings.spacing,
        depth=depth,
        output_names=names,
        seed=seed,
    )
    train_ds = pipeline.make_volume_dataset(
        train_pairs,
        patch_size=patch,
        batch_size=batch_size,
        training=True,
        foreground_share=share,
        augment=augment,
        **common,
    )
    val_ds = None
    if val_pairs:
        val_ds = pipeline.make_volume_dataset(val_pairs, batch_size=1, **common)
    keras.utils.set_random_seed(seed)
    with precision_scope(precision) as policy:
        config["training"]["precision_policy"] = policy
        model_kwargs = dict(
            depth=depth,
            input_shape=(None, None, None, settings.channels),
            num_classes=settings.num_classes,
            filters=filters,
            normalization=normalization,
        )
        if architecture == "unet":
            model = build_unet(**model_kwargs)
        else:
            model = build(deep_supervision=deep_supervision, **model_kwargs)
        if recompute:
            recompute_nodes(model)
        output_dir.mkdir(parents=True, exist_ok=True)
        config["data"]["train_volumes"] = len(train_pairs)
        config["data"]["val_volumes"] = len(val_pairs)
        _write_splits(output_dir / SPLITS_CSV, train_pairs, val_pairs)
        atomic.write_json(output_dir / RUN_CONFIG, config, indent=2)
        if verbose:
            print(
                f"{model.name} (3D): depth {depth}, {model.count_params():,} "
                f"parameters; {len(train_pairs)} training / {len(val_pairs)} "
                f"validation volumes, patches {'x'.join(map(str, patch))}, "
                f"intensity {settings.intensity}; run folder {output_dir}"
            )
        steps = steps_per_epoch or max(1, -(-len(train_pairs) // batch_size))
        result = training.train(
            model,
            train_ds,
            val_ds,
            output_dir,
            epochs=epochs,
            steps_per_epoch=steps,
            learning_rate=learning_rate,
            lr_schedule=lr_schedule,
            loss_weights=loss_weights,
            monitor=monitor,
            save_every=save_every,
            tensorboard=tensorboard,
            time_budget=time_budget,
            verbose=verbose,
            jit_compile=xla,
        )
    result["run_dir"] = output_dir
    return result


def _run_settings(run_dir):
    config = read_run_config(run_dir)
    data = config.get("data", {})
    if data.get("kind") != KIND:
        raise InputError(
            f"{str(run_dir)!r} is not a run trained on volumes. "
            f"Received: run_dir={str(run_dir)!r}"
        )
    settings = pipeline.preprocessing(
        data["num_classes"],
        data["channels"],
        data["intensity"],
        data["ct_window"],
        data["spacing"],
    )
    return config, data, settings


def _tile(tile_size, data):
    if tile_size is None:
        return tuple(data["patch_size"])
    if isinstance(tile_size, int):
        return (tile_size,) * 3
    return tuple(tile_size)


def evaluate_volume_run(
    run_dir,
    model="best",
    split="val",
    source=None,
    tile_size=None,
    overlap=0.5,
    tta=None,
    threshold=0.5,
    output_dir=None,
):
    """The per-level table of a volume run, on whole volumes.

    Args:
        run_dir: the run folder.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        split: `"val"`, `"train"` or `"all"` of the run's source (or of
            `source`). Defaults to `"val"`.
        source: another `volume_source()` to evaluate on, or `None`.
            Defaults to `None`.
        tile_size: the sliding-window tile; `None` is the run's patch size.
            Defaults to `None`.
        overlap: float. Defaults to `0.5`.
        tta: `None`, `"flips"` or `"flips+rot90"`. Defaults to `None`.
        threshold: float, for binary runs. Defaults to `0.5`.
        output_dir: where to write `volume_levels.{csv,json}`; `None` is
            `<run_dir>/evaluation`. Defaults to `None`.

    Returns:
        dict: `rows`, `table` (text), `csv`, `json`, `volumes`, `tile`.
    """
    _, data, settings = _run_settings(run_dir)
    pairs = source_pairs(source or data["source"], split)
    if not pairs:
        raise InputError(
            f"The {split!r} split of the run's data is empty. Received: split={split!r}"
        )
    keras_model = load_run_model(run_dir, model)
    tile = _tile(tile_size, data)
    rows = inference.evaluate_volume_levels(
        keras_model,
        pairs,
        settings,
        tile_size=tile,
        overlap=overlap,
        threshold=threshold,
        tta=tta,
    )
    output_dir = pathlib.Path(output_dir or pathlib.Path(run_dir) / EVALUATION_DIR)
    csv_path, json_path = inference.write_volume_table(rows, output_dir, TABLE_STEM)
    return {
        "rows": rows,
        "table": inference.format_volume_table(rows),
        "csv": csv_path,
        "json": json_path,
        "volumes": len(pairs),
        "tile": tile,
    }


def predict_volume_run(
    run_dir,
    input_dir=None,
    split=None,
    output_dir=None,
    model="best",
    level=None,
    accurate=False,
    tile_size=None,
    overlap=0.5,
    tta=None,
    threshold=0.5,
    overwrite=False,
):
    """Writes label maps of volumes with a run's model.

    Each volume is normalized (and resampled) as in training, predicted
    whole by sliding window (tiles of the run's patch size by default), and
    written as `<output_dir>/labels/<stem>` with its input's extension and,
    for NIfTI, its affine and header.

    Args:
        run_dir: the run folder.
        input_dir: folder of image volumes, or `None` with `split`.
            Defaults to `None`.
        split: `"train"` or `"val"` of the run's data, or `None`. Defaults
            to `None`.
        output_dir: results folder; `None` is `<run_dir>/predictions`.
            Defaults to `None`.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        level: int, the pruned level to use, or `None` (the accurate mode
            of a deep-supervision model). Defaults to `None`.
        accurate: bool, the accurate mode, said explicitly. Defaults to
            `False`.
        tile_size: tile, or `None` (the run's patch size). Defaults to
            `None`.
        overlap: float. Defaults to `0.5`.
        tta: `None`, `"flips"` or `"flips+rot90"`. Defaults to `None`.
        threshold: float. Defaults to `0.5`.
        overwrite: bool, replace existing label maps. Defaults to `False`.

    Returns:
        dict: `labels` (paths written), `output_dir`, `model` (which head),
        `tile`.
    """
    _, data, settings = _run_settings(run_dir)
    if (input_dir is None) == (split is None):
        raise InputError(
            "Give either a folder of volumes or a split of the run's own data "
            f"(split='val'), not {'both' if split else 'neither'}. "
            f"Received: input_dir={input_dir!r}, split={split!r}"
        )
    if level is not None and accurate:
        raise InputError(
            "Give a level or the accurate mode, not both. "
            f"Received: level={level!r}, accurate=True"
        )
    if input_dir is not None:
        inputs = io.volume_pairs(input_dir)
    else:
        inputs = source_pairs(data["source"], split)
    keras_model = load_run_model(run_dir, model)
    info = describe(keras_model)
    if level is not None:
        net, used = prune(keras_model, level), f"L{level}"
    elif info.deep_supervision:
        net, used = inference_model(keras_model, "accurate"), "accurate mode"
    else:
        net, used = keras_model, f"L{info.depth}"
    tile = _tile(tile_size, data)
    output_dir = pathlib.Path(output_dir or pathlib.Path(run_dir) / PREDICTION_DIR)
    written = inference.predict_volume_files(
        net,
        inputs,
        output_dir / "labels",
        settings,
        tile_size=tile,
        overlap=overlap,
        tta=tta,
        threshold=threshold,
        overwrite=overwrite,
    )
    return {"labels": written, "output_dir": output_dir, "model": used, "tile": tile}


def export_volume_run(
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
):
    """Exports the pruned levels of a volume run as 3D SavedModels for TF Serving.

    Each SavedModel (`export_pruned` with the run's settings) takes a batch
    of volumes `(batch, depth, height, width, channels)` of any size on the
    run's voxel grid, normalizes each one in the graph as training did (the
    run's `intensity` and CT window), predicts it by sliding window with
    Gaussian blending (the run's patch, overlap 0.5, as
    `keras-unetpp predict` does, unless `tiling` says otherwise) and returns
    `probabilities` and the label map `mask`: what `predict_volume_run`
    computes for a volume that needs no resampling.

    Args:
        run_dir: the volume run's folder.
        export_dir: target folder; `None` is `<run_dir>/export`. Defaults
            to `None`.
        levels: ints, the levels to export; `None` exports every head.
            Defaults to `None`.
        model: `"best"`, `"last"` or a `.keras` path. Defaults to `"best"`.
        version: int, the version folder; `None` for the next free one.
            Defaults to `None`.
        model_name: served name prefix; `None` uses the model's name.
            Defaults to `None`.
        input_dtype: `"float32"`, `"uint8"` or `"uint16"`, the dtype of the
            voxels a client sends (cast to float32 as stored, then
            normalized). Defaults to `"float32"`.
        threshold: float, for one-class runs. Defaults to `0.5`.
        overwrite: bool. Defaults to `False`.
        accurate: bool, also export the accurate mode; `None` does so for a
            deep-supervision model. Defaults to `None`.
        record_paths: bool, record the absolute data paths in the metadata.
            Defaults to `False`.
        tiling: `None` (tiles of the run's patch size, overlap 0.5), or a
            dict of `predict_tiled` arguments (`tile_size` as N or
            `(d, h, w)`, `overlap`, `tta`, ...). Defaults to `None`.

    Returns:
        dict level -> version folder, and `"accurate"` -> its folder.

    Example:

    ```python
    paths = export_volume_run("runs/hippocampus", model_name="hippocampus")
    # runs/hippocampus/export/hippocampus_l1/1/ ... and models.config
    ```
    """
    from keras_unetpp.export import export_pruned
    from keras_unetpp.runs import EXPORT_DIR, export_training_info, has_several_heads

    config, data, _ = _run_settings(run_dir)
    keras_model = load_run_model(run_dir, model)
    info = export_training_info(
        run_dir,
        config,
        keras_model,
        record_paths,
        kind=KIND,
        patch_size=data["patch_size"],
        intensity=data["intensity"],
        spacing=data["spacing"],
    )
    if accurate is None:
        accurate = has_several_heads(keras_model)
    if tiling is None:
        tiling = {"tile_size": tuple(data["patch_size"]), "overlap": 0.5}
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
        accurate=accurate,
        tiling=tiling,
        intensity=data["intensity"],
        ct_window=tuple(data["ct_window"]) if data["intensity"] == "ct" else None,
    )
