"""Whole-volume inference and the per-level table of a 3D model.

`predict_volume` predicts one volume of any shape with `predict_tiled`
(sliding window with Gaussian blending, rank 3); `predict_volume_files`
reads volume files, predicts them and writes NIfTI (or `.npy`) label maps
on each input's own voxel grid, with its affine and header;
`evaluate_volume_levels` scores every pruned level (and the accurate
mode) on labelled volumes: per-class Dice and IoU, parameters, FLOPs and
milliseconds per volume.
"""

import csv
import io as _io
import itertools
import os
import pathlib
import time

import numpy as np

from keras_unetpp import atomic
from keras_unetpp.description import describe, output_name
from keras_unetpp.errors import InputError
from keras_unetpp.flops import count_flops
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.tiling import padded_size, predict_tiled, tile_positions
from keras_unetpp.validation import check_threshold
from keras_unetpp.volumes import io, processing
from keras_unetpp.volumes.pipeline import as_preprocessing, check_pairs, load_image

ACCURATE = "accurate"


def _tile(tile_size, shape, stride):
    """The tile: `tile_size`, or the whole volume padded to the stride."""
    if tile_size is None:
        return tuple(padded_size(n, stride, stride) for n in shape)
    if isinstance(tile_size, (int, np.integer)):
        return (int(tile_size),) * 3
    return tuple(tile_size)


def predict_volume(
    model,
    volume,
    tile_size=None,
    overlap=0.5,
    output=None,
    tta=None,
    batch_size=2,
    blending="gaussian",
):
    """Predicts the class probabilities of one volume of any shape.

    The volume is cut into overlapping tiles (`predict_tiled` with rank 3:
    padding at the end of each axis to the model's stride, tiles at
    multiples of it, Gaussian blending), so that memory stays bounded
    whatever its size.

    Args:
        model: a 3D keras_unetpp model (full, pruned or inference-mode).
        volume: float array `(depth, height, width, channels)`, normalized
            as in training (see `keras_unetpp.volumes.pipeline.load_image`).
        tile_size: int or `(depth, height, width)`, multiples of the
            model's stride (typically the training patch), or `None` for
            one tile: the whole volume padded to the stride. Defaults to
            `None`.
        overlap: float in [0, 1), the share of a tile its neighbours
            overlap. Defaults to `0.5`.
        output: `None`, a head name `"output_l<L>"` (its pruned
            sub-network runs) or `"accurate"` (see `predict_tiled`).
            Defaults to `None`.
        tta: `None`, `"flips"` (8 flips) or `"flips+rot90"` (16).
            Defaults to `None`.
        batch_size: int, tiles per model call. Defaults to `2`.
        blending: `"gaussian"` or `"constant"`. Defaults to `"gaussian"`.

    Returns:
        float32 array `(depth, height, width, classes)` of probabilities.

    Example:

    ```python
    model = keras_unetpp.build(3, (None, None, None, 1), num_classes=3)
    probabilities = volumes.predict_volume(model, np.zeros((37, 41, 29, 1)),
                                           tile_size=(32, 32, 32))
    labels = probabilities.argmax(-1)
    ```
    """
    volume = np.asarray(volume, np.float32)
    if volume.ndim != 4:
        raise InputError(
            "`volume` must be (depth, height, width, channels) (one volume, "
            f"no batch axis). Received: shape={volume.shape}"
        )
    info = describe(model)
    if info.rank != 3:
        raise InputError(
            f"predict_volume needs a 3D model; {model.name!r} takes "
            f"{info.rank}D inputs. Received: input_shape={info.input_shape}"
        )
    stride = 2**info.depth
    tile = _tile(tile_size, volume.shape[:3], stride)
    return predict_tiled(
        model,
        volume[None],
        tile,
        overlap=overlap,
        blending=blending,
        batch_size=batch_size,
        tta=tta,
        output=output,
    )[0]


def labels_from_probabilities(probabilities, threshold=0.5):
    """Class indices of probabilities `(..., classes)`: argmax, or
    `p > threshold` for one class."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > threshold).astype(np.uint8)
    labels = probabilities.argmax(axis=-1)
    return labels.astype(np.uint8 if probabilities.shape[-1] <= 256 else np.uint16)


def _to_original_grid(probabilities, shape):
    """Probabilities resampled (linearly) back to the file's voxel grid."""
    if tuple(probabilities.shape[:3]) == tuple(shape):
        return probabilities
    return processing.resample(probabilities, shape, order=1)


def _output_path(output_dir, source, stem):
    extension = io.split_extension(os.path.basename(str(source)))[1] or ".nii.gz"
    return pathlib.Path(output_dir) / f"{stem}{extension}"


def predict_volume_files(
    model,
    inputs,
    output_dir,
    preprocessing=None,
    tile_size=None,
    overlap=0.5,
    output=None,
    tta=None,
    threshold=0.5,
    batch_size=2,
    overwrite=False,
):
    """Predicts volume files and writes their label maps.

    Each image is read, normalized and resampled as in training
    (`preprocessing`), predicted whole by sliding window
    (`predict_volume`), its probabilities resampled back to the file's own
    voxel grid, and its label map written to `<output_dir>/<stem>` with the
    input's extension: a NIfTI file gets the input's affine and header (so
    that 3D Slicer or ITK-SNAP overlays it on the image), a `.npy` file the
    array.

    Args:
        model: a 3D keras_unetpp model.
        inputs: list of volume file paths, or of `VolumePair`s.
        output_dir: folder for the label maps (created if missing).
        preprocessing: a `Preprocessing` or dict of `preprocessing()`
            arguments (`intensity`, `ct_window`, `spacing`, `channels`,
            `num_classes`), the training run's. Defaults to `None` (the
            defaults).
        tile_size: the sliding-window tile, or `None` (whole volume).
            Defaults to `None`.
        overlap: float. Defaults to `0.5`.
        output: head or `"accurate"`, as in `predict_volume`. Defaults to
            `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`. Defaults to `None`.
        threshold: float, for one-class models. Defaults to `0.5`.
        batch_size: int, tiles per call. Defaults to `2`.
        overwrite: bool, replace existing label maps. Defaults to `False`.

    Returns:
        The list of paths written, in the order of `inputs`.
    """
    settings = as_preprocessing(preprocessing)
    threshold = check_threshold(threshold)
    items = []
    for item in inputs:
        if isinstance(item, io.VolumePair):
            items.append((item.stem, item.image))
        else:
            stem = io.split_extension(os.path.basename(str(item)))[0]
            items.append((stem, str(item)))
    output_dir = pathlib.Path(output_dir)
    targets = [_output_path(output_dir, path, stem) for stem, path in items]
    if not overwrite:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise FileExistsError(
                f"{len(existing)} label map(s) exist in {output_dir}, e.g. "
                f"{existing[0]}; not overwritten (choose another output folder)"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (_, path), target in zip(items, targets):
        image, volume = load_image(path, settings)
        probabilities = predict_volume(
            model, image, tile_size, overlap, output, tta, batch_size
        )
        probabilities = _to_original_grid(probabilities, volume.array.shape[:3])
        labels = labels_from_probabilities(probabilities, threshold)
        written.append(io.write_label_map(target, labels, volume, overwrite=True))
    return written


def overlap_scores(prediction, truth, num_classes):
    """Per-class Dice and IoU of two label maps (1 where both are empty).

    Args:
        prediction: integer array of class indices.
        truth: integer array of class indices, the same shape.
        num_classes: int; class 1 is scored for a binary model, classes
            1..num_classes-1 otherwise.

    Returns:
        `(dice, iou)`: dicts from class index to float.
    """
    classes = [1] if num_classes == 1 else list(range(1, num_classes))
    dice, iou = {}, {}
    for c in classes:
        p, t = prediction == c, truth == c
        intersection = float(np.logical_and(p, t).sum())
        total = float(p.sum() + t.sum())
        union = total - intersection
        dice[c] = 1.0 if total == 0 else 2.0 * intersection / total
        iou[c] = 1.0 if union == 0 else intersection / union
    return dice, iou


def _outputs(model):
    info = describe(model)
    if info.deep_supervision:
        keys = [output_name(level) for level in info.heads] + [ACCURATE]
        nets = [prune(model, level) for level in info.heads]
        nets.append(inference_model(model, "accurate"))
        labels = [f"L{level}" for level in info.heads] + [ACCURATE]
    else:
        keys, nets, labels = [None], [model], [f"L{info.depth}"]
    return list(zip(keys, nets, labels))


def _tile_count(shape, tile, overlap, stride):
    return int(
        np.prod(
            [len(tile_positions(n, t, overlap, stride)) for n, t in zip(shape, tile)]
        )
    )


def evaluate_volume_levels(
    model,
    pairs,
    preprocessing=None,
    tile_size=None,
    overlap=0.5,
    threshold=0.5,
    tta=None,
    batch_size=2,
):
    """Per-level per-class Dice and IoU on labelled volumes, with costs.

    Every level L of a deep-supervision model (its pruned sub-network) and
    the accurate mode, or the one head of another model, predicts each
    volume whole by sliding window in inference mode (`predict_volume`);
    the label map, on the file's own voxel grid, is compared with the
    file's. Scores are per volume, then averaged over the volumes (as the
    Medical Segmentation Decathlon reports them): Dice and IoU of each
    foreground class (class 1 of a binary model; 1..C-1 of a C-class one)
    and their mean over the foreground classes.

    Args:
        model: a 3D keras_unetpp model with probability or logit heads.
        pairs: list of `VolumePair` with label maps.
        preprocessing: the training run's `Preprocessing` (or dict).
            Defaults to `None` (the defaults).
        tile_size: sliding-window tile, or `None` (whole volume). Defaults
            to `None`.
        overlap: float. Defaults to `0.5`.
        threshold: float, for one-class models. Defaults to `0.5`.
        tta: `None`, `"flips"` or `"flips+rot90"`. Defaults to `None`.
        batch_size: int, tiles per call. Defaults to `2`.

    Returns:
        A list of dicts, one per level: `model`, `level` (`"L1"`, ...,
        `"accurate"`), `dice` and `iou` (means over the foreground classes
        and volumes), `dice_<c>` and `iou_<c>` per foreground class `c`,
        `params`, `flops` (mean FLOPs per volume: per tile times tiles,
        times the TTA transforms), `ms_per_volume` (mean wall time of the
        prediction of a volume, after one warm-up volume) and `volumes`.

    Example:

    ```python
    rows = volumes.evaluate_volume_levels(model, val_pairs, {"num_classes": 3},
                                          tile_size=(32, 48, 48))
    print(volumes.format_volume_table(rows))
    ```
    """
    settings = as_preprocessing(preprocessing)
    threshold = check_threshold(threshold)
    pairs = check_pairs(pairs)
    info = describe(model)
    num_classes = info.num_classes
    loaded = []
    for pair in pairs:
        image, volume = load_image(pair.image, settings)
        truth = io.read_label(pair.label, settings.num_classes, volume.array.shape[:3])
        loaded.append((image, volume.array.shape[:3], truth.array))
    transforms = {None: 1, "flips": 8, "flips+rot90": 16}.get(tta, 1)
    rows = []
    for _, net, label in _outputs(model):
        # The single-output sub-network itself (the pruned head, or the
        # accurate mode), built once: its predict function is traced once.
        stride = 2 ** describe(net).depth

        def run(image, net=net):
            return predict_volume(net, image, tile_size, overlap, None, tta, batch_size)

        run(loaded[0][0])  # warm-up: tracing, allocation
        dice_sums, iou_sums = None, None
        seconds = 0.0
        flops = 0
        flops_cache = {}
        for image, shape, truth in loaded:
            start = time.perf_counter()
            probabilities = run(image)
            seconds += time.perf_counter() - start
            probabilities = _to_original_grid(probabilities, shape)
            prediction = labels_from_probabilities(probabilities, threshold)
            dice, iou = overlap_scores(prediction, truth, num_classes)
            if dice_sums is None:
                dice_sums = dict.fromkeys(dice, 0.0)
                iou_sums = dict.fromkeys(iou, 0.0)
            for c in dice:
                dice_sums[c] += dice[c]
                iou_sums[c] += iou[c]
            tile = _tile(tile_size, image.shape[:3], stride)
            if tile not in flops_cache:
                flops_cache[tile] = count_flops(net, tile[1], tile[2], depth=tile[0])
            flops += (
                flops_cache[tile]
                * _tile_count(image.shape[:3], tile, overlap, stride)
                * transforms
            )
        count = len(loaded)
        row = {
            "model": model.name,
            "level": label,
            "dice": float(np.mean([v / count for v in dice_sums.values()])),
            "iou": float(np.mean([v / count for v in iou_sums.values()])),
        }
        for c in dice_sums:
            row[f"dice_{c}"] = dice_sums[c] / count
            row[f"iou_{c}"] = iou_sums[c] / count
        row.update(
            params=int(net.count_params()),
            flops=int(flops // count),
            ms_per_volume=1000.0 * seconds / count,
            volumes=count,
        )
        rows.append(row)
    return rows


def format_volume_table(rows):
    """The rows of `evaluate_volume_levels` as an aligned text table."""
    classes = sorted(
        {int(k.split("_")[1]) for row in rows for k in row if k.startswith("dice_")}
    )
    header = ["model", "level", *(f"Dice {c}" for c in classes)]
    header += [*(f"IoU {c}" for c in classes), "mean Dice", "mean IoU"]
    header += ["params", "GFLOPs/vol", "ms/volume"]
    lines = []
    for row in rows:
        line = [row["model"], row["level"]]
        line += [f"{row[f'dice_{c}']:.4f}" for c in classes]
        line += [f"{row[f'iou_{c}']:.4f}" for c in classes]
        line += [f"{row['dice']:.4f}", f"{row['iou']:.4f}", f"{row['params']:,}"]
        line += [f"{row['flops'] / 1e9:.3f}", f"{row['ms_per_volume']:.1f}"]
        lines.append(line)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    return "\n".join(
        "  ".join(
            str(c).rjust(w) if i > 1 else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths))
        )
        for line in [header, *lines]
    )


def write_volume_table(rows, output_dir, stem="volume_levels"):
    """Writes the rows as `<stem>.csv` and `<stem>.json`, atomically.

    Returns:
        `(csv_path, json_path)`.
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(itertools.chain.from_iterable(rows)))
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    csv_path = output_dir / f"{stem}.csv"
    json_path = output_dir / f"{stem}.json"
    atomic.write_text(csv_path, buffer.getvalue())
    atomic.write_json(json_path, rows, indent=2)
    return csv_path, json_path
