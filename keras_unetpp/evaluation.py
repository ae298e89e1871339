"""The paper's pruning trade-off: score, size, cost and speed of every level.

`evaluate_levels_native()` and `evaluate_levels()` give one row per pruned
level L1..L<depth> of a deep-supervision UNet++ and one for the accurate
mode (the average of all heads); a single-output model (a U-Net, or a UNet++
without deep supervision) gives one row. Each row holds the foreground IoU
and Dice over the data set (running totals over all pixels, and the mean per
image), the parameter count, the FLOPs of one image and the measured
milliseconds per image, all in inference mode: as `predict()` and a served
model run. `evaluate_levels_native()` scores whole images against their
masks as stored, at each image's own size (what `keras-unetpp evaluate`
reports); `evaluate_levels()` scores batches as a pipeline gives them (e.g.
resized to the training size), and its rows say at which size
(`scored_at`).
`write_table()` saves the rows as CSV and JSON, `plot_tradeoff()` draws IoU
against latency like the paper's figure, and `format_table()` prints them.
"""

import csv
import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from keras_unetpp import field_metrics
from keras_unetpp import tiling as tiling_lib
from keras_unetpp.description import describe, output_name
from keras_unetpp.errors import InputError
from keras_unetpp.flops import count_flops
from keras_unetpp.metrics import DiceScore, IoUScore
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.validation import check_choice, check_int

COLUMNS = (
    "model",
    "level",
    "iou",
    "dice",
    "iou_per_image",
    "params",
    "flops",
    "ms_per_image",
    "images",
    "scored_at",
)
# How native evaluation predicted (`"whole image"` or the tiles) and, with
# test-time augmentation, its IoU and Dice next to those without.
INFERENCE_COLUMNS = ("inference", "tta", "iou_tta", "dice_tta")
# The field's scores (`keras_unetpp.field_metrics`) that native evaluation of
# a one-class model adds to each row: the per-image Dice, the UNet++
# authors' Keras `mean_iou` (two classes, thresholds 0.5-0.95: not the
# foreground IoU) and the DSB 2018 average precision of the instances
# found by connected components and by the distance watershed. Rows without
# them (multi-class models, training-size evaluation) leave them out.
FIELD_COLUMNS = (
    "dice_per_image",
    "mean_iou_keras",
    "dsb_ap",
    "dsb_ap_watershed",
)
_FIELD_HEADERS = ("Dice/img", "mIoU(K)", "DSB-AP", "DSB-AP(ws)")
# One image at one level (`evaluate_levels_native(per_image=...)`,
# `keras-unetpp evaluate --per-image`): where the score is lost.
PER_IMAGE_COLUMNS = (
    "image",
    "level",
    "iou",
    "dice",
    "precision",
    "recall",
    "true_pixels",
    "predicted_pixels",
    "iou_tta",
    *field_metrics.ERROR_SPLIT_KEYS,
)
BASE_COLUMNS = COLUMNS
COLUMNS = BASE_COLUMNS + INFERENCE_COLUMNS + FIELD_COLUMNS

# `scored_at` of rows scored on the masks as stored, at each image's size.
NATIVE = "native"


def measure_latency(model, image_shape, batch_size=1, runs=10, warmup=2):
    """Milliseconds per image of a model's forward pass (best of `runs`).

    The model runs in inference mode inside a `tf.function` on a fixed
    random batch; the first `warmup` calls (tracing, memory allocation) are
    not timed, then `runs` calls are, and the shortest call time is divided
    by the batch size. The shortest time is the one least disturbed by
    other processes on the machine.

    Args:
        model: a single-output `keras.Model`.
        image_shape: `(height, width, channels)` of one image.
        batch_size: int, images per call. Defaults to `1` (latency of one
            request).
        runs: int, timed calls. Defaults to `10`.
        warmup: int, untimed calls first. Defaults to `2`.

    Returns:
        float, milliseconds per image.
    """
    return measure_latencies([model], image_shape, batch_size, runs, warmup)[0]


def measure_latencies(models, image_shape, batch_size=1, runs=10, warmup=2):
    """`measure_latency` of several models, timed in turn, round by round.

    Each round times one call of every model, so a busy spell of the machine
    slows all of them alike instead of one, and the models compare fairly.

    Args:
        models: list of single-output `keras.Model`s.
        image_shape: `(height, width, channels)` of one image.
        batch_size: int, images per call. Defaults to `1`.
        runs: int, rounds of timed calls. Defaults to `10`.
        warmup: int, untimed calls of each model first. Defaults to `2`.

    Returns:
        list of floats, milliseconds per image, in the order of `models`.
    """
    batch_size = check_int(batch_size, "batch_size")
    runs = check_int(runs, "runs")
    images = tf.random.stateless_uniform((batch_size, *image_shape), seed=(0, 0))
    forwards = [tf.function(model) for model in models]
    for forward in forwards:
        for _ in range(warmup):
            forward(images, training=False).numpy()
    best = [float("inf")] * len(models)
    for _ in range(runs):
        for k, forward in enumerate(forwards):
            start = time.perf_counter()
            forward(images, training=False).numpy()
            best[k] = min(best[k], time.perf_counter() - start)
    return [1000.0 * t / batch_size for t in best]


def _metrics(info, threshold, from_logits=None):
    kwargs = dict(
        num_classes=info.num_classes,
        threshold=threshold,
        from_logits=info.from_logits if from_logits is None else from_logits,
    )
    return (
        IoUScore(**kwargs),
        DiceScore(**kwargs),
        IoUScore(average="per_image", **kwargs),
    )


def evaluate_levels(
    model,
    dataset,
    image_size,
    threshold=0.5,
    latency_batch_size=1,
    latency_runs=10,
):
    """Scores, parameters, FLOPs and latency of every level of a UNet++.

    One inference-mode pass of the full model over `dataset` gives every
    head's prediction at once; head L is exactly the output of
    `prune(model, L)` (the pruned model is that sub-graph with the same
    weights), and the accurate mode is the mean of the heads, as in
    `inference_model(model, "accurate")`. Parameters, FLOPs and latency are
    those of the pruned (or accurate-mode) model itself; the latencies are
    measured round by round over all levels (`measure_latencies`).

    Args:
        model: a model from `keras_unetpp.build` or `build_unet`, with
            sigmoid or softmax outputs.
        dataset: `tf.data.Dataset` of `(image, mask)` batches (a dict of
            masks is accepted; its first entry is used).
        image_size: `(height, width)` at which FLOPs and latency are
            measured (the size the model runs at).
        threshold: float, probability threshold of one-class models.
            Defaults to `0.5`.
        latency_batch_size: int, images per timed call. Defaults to `1`.
        latency_runs: int, timed calls per model. Defaults to `10`.

    Returns:
        list of dicts with the keys of `COLUMNS`: `model` (the model name),
        `level` (`"L1"`... or `"accurate"`), `iou`, `dice`,
        `iou_per_image`, `params`, `flops` (one image), `ms_per_image`,
        `images` (number scored) and `scored_at` (`"<height>x<width>"`: the
        batches' masks as given, e.g. resized to the training size).

    Example:

    ```python
    rows = evaluate_levels(model, val_ds, (96, 96))
    print(format_table(rows))
    ```
    """
    height, width = (int(s) for s in image_size)
    info = describe(model)
    levels = info.heads
    names = [output_name(level) for level in levels]
    keys = names + (["accurate"] if len(levels) > 1 else [])
    scores = {key: _metrics(info, threshold) for key in keys}
    forward = tf.function(lambda x: model(x, training=False))
    count = 0
    for images, masks in dataset:
        if isinstance(masks, dict):
            masks = next(iter(masks.values()))
        outputs = forward(images)
        if not isinstance(outputs, dict):
            outputs = {names[0]: outputs}
        outputs = {name: outputs[name] for name in names}
        if len(levels) > 1:
            outputs["accurate"] = tf.add_n(list(outputs.values())) / len(levels)
        for key, metrics in scores.items():
            for metric in metrics:
                metric.update_state(masks, outputs[key])
        count += int(images.shape[0])
    if count == 0:
        raise InputError("The evaluation dataset is empty. Received: 0 images")
    return _level_rows(
        model,
        levels,
        scores,
        count,
        (height, width),
        latency_batch_size,
        latency_runs,
        scored_at=f"{height}x{width}",
    )


def _level_rows(
    model,
    levels,
    scores,
    count,
    size,
    latency_batch_size,
    latency_runs,
    scored_at,
    inference="whole image",
    tta=None,
    scores_tta=None,
    field_scores=None,
):
    """The table rows from the metrics of each level, with params, FLOPs, ms.

    `field_scores` (a `FieldScores` by output key) adds the field's columns.
    """
    height, width = size
    info = describe(model)
    keys = [output_name(level) for level in levels]
    keys += ["accurate"] if len(levels) > 1 else []
    subs, labels = [], []
    for key, level in zip(keys, [*levels, None]):
        if key == "accurate":
            subs.append(inference_model(model, "accurate"))
            labels.append("accurate")
        else:
            subs.append(prune(model, level))
            labels.append(f"L{level}")
    latencies = measure_latencies(
        subs,
        (height, width, info.channels),
        batch_size=latency_batch_size,
        runs=latency_runs,
    )
    rows = []
    for key, sub, label, ms in zip(keys, subs, labels, latencies):
        iou, dice, iou_per_image = (float(m.result()) for m in scores[key])
        rows.append(
            {
                "model": model.name,
                "level": label,
                "iou": iou,
                "dice": dice,
                "iou_per_image": iou_per_image,
                "params": int(sub.count_params()),
                "flops": count_flops(sub, height, width),
                "ms_per_image": ms,
                "images": count,
                "scored_at": scored_at,
                "inference": inference,
                "tta": tta,
                "iou_tta": None,
                "dice_tta": None,
            }
        )
        if scores_tta is not None:
            iou_tta, dice_tta = (float(m.result()) for m in scores_tta[key])
            rows[-1].update(iou_tta=iou_tta, dice_tta=dice_tta)
        if field_scores is not None:
            field = field_scores[key].result()
            rows[-1].update({k: field[k] for k in FIELD_COLUMNS if k in field})
    return rows


def heads_model(model):
    """One single-output model of every head's probabilities, side by side.

    The output concatenates, along the channel axis and in level order, the
    probabilities of each head (the head's activation applied to logits
    heads) and, for several heads, those of the accurate mode computed as
    `inference_model(model, "accurate")` and its SavedModel compute them
    (the mean of the heads' outputs, then the activation for logits heads).
    One forward pass then gives every level's prediction, and the size
    policy resizes or pads it like any model's probabilities.

    Args:
        model: a model from `keras_unetpp.build` or `build_unet`.

    Returns:
        `keras.Model` with `(len(heads) + 1) * num_classes` output channels
        (`num_classes` for a single-head model), all probabilities.
    """
    info = describe(model)
    heads = [model.get_layer(output_name(level)).output for level in info.heads]
    if len(heads) > 1:
        heads.append(
            keras.layers.Average(dtype="float32", name="evaluation_accurate")(heads)
        )
    if info.from_logits:
        activation = "sigmoid" if info.num_classes == 1 else "softmax"
        heads = [
            keras.layers.Activation(
                activation, dtype="float32", name=f"evaluation_probabilities_{k}"
            )(head)
            for k, head in enumerate(heads)
        ]
    if len(heads) == 1:
        output = heads[0]
    else:
        output = keras.layers.Concatenate(
            axis=-1, dtype="float32", name="evaluation_heads"
        )(heads)
    return keras.Model(model.input, output, name=f"{model.name}_heads")


def evaluate_levels_native(
    model,
    samples,
    image_size=None,
    latency_image_size=None,
    threshold=0.5,
    latency_batch_size=1,
    latency_runs=10,
    tiling=None,
    tta=None,
    instance_methods=field_metrics.INSTANCE_METHODS,
    instances=None,
    per_image=None,
    sweep=None,
):
    """`evaluate_levels` on whole images, at the masks' own resolution.

    Every image is predicted at its own size by
    `prediction.predict_probabilities` under the run's size policy
    (`image_size`: resized to the training size and the probabilities
    resized back; `None`: padded to the stride and cropped back), with one
    pass of the full model for all heads (`heads_model`); the accurate
    mode is the mean of the heads. Each level is scored on what its pruned
    model (`prune(model, L)`, as `keras-unetpp predict --level L` and the
    level's SavedModel run it) returns: without `image_size`, a level whose
    own stride `2**L` pads an image to a smaller size than the full model's
    stride `2**depth` is run on its own, padded to `2**L` (reflected
    padding of another size changes the pixels near the bottom and right
    edges); where the two paddings agree, the head of the full pass is the
    same computation.
    The prediction is thresholded (arg-max for classes) and compared with
    the mask as given, pixel for pixel: no mask is resized or cropped. IoU
    and Dice are running totals over all pixels of all images (`IoUScore`,
    `DiceScore`); `iou_per_image` is the mean of the images' IoUs.
    Parameters, FLOPs and latency are those of each pruned model at
    `latency_image_size`.

    For a one-class model each row also holds the field's scores
    (`FIELD_COLUMNS`, from `field_metrics.FieldScores`): `dice_per_image`,
    the authors' Keras `mean_iou` (`mean_iou_keras`, two classes averaged
    over thresholds 0.5-0.95) and the DSB 2018 average precision of the
    instances found in the prediction (`dsb_ap`: connected components;
    `dsb_ap_watershed`: distance watershed), matched to the true instances
    (`instances`, or the connected components of the mask).

    Args:
        model: a model from `keras_unetpp.build` or `build_unet`.
        samples: iterable of `(image, mask)`: float32 `(h, w, channels)` in
            [0, 1] and integer labels `(h, w)` or `(h, w, 1)` (0/1, or class
            indices), e.g. from `sources.source_samples`.
        image_size: `(height, width)` the model was trained at, for a run
            that resizes its images, or `None` for one that crops (the image
            is then used at its own scale). Defaults to `None`.
        latency_image_size: `(height, width)` at which FLOPs and latency are
            measured; `None` is `image_size`. Defaults to `None`.
        threshold: float, probability threshold of one-class models.
            Defaults to `0.5`.
        latency_batch_size: int, images per timed call. Defaults to `1`.
        latency_runs: int, timed calls per model. Defaults to `10`.
        tiling: `None` (each image predicted whole), or a dict of
            `predict_tiled` arguments without `tta` (`tile_size`,
            `overlap`, `blending`, `batch_size`, `sigma_scale`): every
            image predicted tile by tile, each level by its own
            sub-network with its own stride, as `keras-unetpp predict
            --level L --tile-size` and a SavedModel exported with the same
            tiling do. Native only (`image_size=None`). Defaults to
            `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: also score every level
            with test-time augmentation (the predictions of the transformed
            images, transformed back and averaged: whole images as
            `keras-unetpp predict --tta` and a SavedModel exported with
            `tta` compute them, `SizePolicy.probabilities`; tiles as
            `predict_tiled`), in the columns `iou_tta` and `dice_tta`; `iou`
            and `dice` stay without. Defaults to `None`.

        instance_methods: the instance separations scored with the DSB
            metric (`"components"`, `"watershed"`); `()` leaves the DSB
            columns out (faster). Defaults to both.
        instances: iterable of int label images of the true objects, one
            per sample in order (e.g. `field_metrics.pair_instances` of
            the DSB per-nucleus masks), or `None` to take the connected
            components of each mask. Defaults to `None`.
        per_image: `None`, or a list that receives, for a one-class model,
            one dict per image and level with the keys of
            `PER_IMAGE_COLUMNS` (`image` is the sample's index; `iou_tta`
            is `None` without `tta`; the wrong pixels split into false or
            missed objects and edges by `field_metrics.error_split`): where
            a data set's score is lost. Defaults to `None`.
        sweep: `None`, or a `thresholds.ThresholdSweep` that receives, for
            a one-class model, every image's probabilities at every level
            (without TTA, as `predict` and the SavedModels return them):
            the pooled IoU and Dice at each of its thresholds, to pick one.
            Defaults to `None`.

    Returns:
        list of dicts with the keys of `COLUMNS` (the field's columns for
        one-class models), `scored_at` `"native"`, `inference` `"whole
        image"` or `"tiled <h>x<w>, overlap <o>"`.

    Example:

    ```python
    samples, _ = sources.source_samples(source, "val", channels=3)
    rows = evaluate_levels_native(model, samples, (96, 96))
    ```
    """

    size = image_size if latency_image_size is None else latency_image_size
    if size is None:
        raise InputError(
            "evaluate_levels_native needs `latency_image_size` (the size at "
            "which FLOPs and latency are measured) when `image_size` is None."
        )
    size = tuple(int(s) for s in size)
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
    info = describe(model)
    levels = info.heads
    names = [output_name(level) for level in levels]
    keys = names + (["accurate"] if len(levels) > 1 else [])
    # The heads model returns probabilities, logits heads included.
    scores = {key: _metrics(info, threshold, from_logits=False) for key in keys}
    classes = info.num_classes
    stacked = heads_model(model)
    policy = SizePolicy.from_image_size(image_size)

    if tiling is not None and image_size is not None:
        raise InputError(
            "Tiled evaluation runs at the images' own scale; this model was "
            f"trained on images resized to {image_size}, which needs no tiles. "
            "Received: tiling with image_size"
        )
    check_choice(tta, "tta", tiling_lib.TTAS)
    scores_tta = None
    if tta is not None:
        scores_tta = {key: _metrics(info, threshold, False)[:2] for key in keys}

    # The size policy of predict and the SavedModels, traced as they run it
    # (`predict --tta` and `export --tta` for the TTA scores): of the heads
    # model, and of the pruned model of a level that pads apart from it
    # (see `own_strides`), each made when first needed.
    graphs = {}

    def graph(level, with_tta):
        key = (level, with_tta)
        if key not in graphs:
            augmentation = tta if with_tta else None
            if level is None:
                graphs[key] = policy.graph(
                    stacked, info.stride, "sigmoid", augmentation
                )
            else:
                pruned = prune(model, level)
                level_info = describe(pruned)
                graphs[key] = policy.graph(
                    pruned, level_info.stride, level_info.head_activation, augmentation
                )
        return graphs[key]

    def own_strides(image):
        """(channel block, level) of the levels padded apart from the full model.

        A level's own model pads to `2**L`; where that makes another size
        than the full model's `2**depth`, the head of the full pass saw
        other (reflected) pixels near the bottom and right edges.
        """
        if image_size is not None:
            return []

        def padded(stride):
            return tuple(
                tiling_lib.padded_size(n, stride, stride) for n in image.shape[:2]
            )

        return [
            (k, level)
            for k, level in enumerate(levels)
            if padded(2**level) != padded(info.stride)
        ]

    def whole(image, with_tta):
        batch = np.asarray(image, np.float32)[None]
        output = graph(None, with_tta)(batch).numpy()[0]
        for k, level in own_strides(image):
            # What this level's pruned model returns, padded to its own
            # stride, in place of the head of the full pass.
            own = graph(level, with_tta)(batch).numpy()[0]
            output[..., k * classes : (k + 1) * classes] = own
        return output

    def predict(image, with_tta):
        if tiling is not None:
            # Each level as `predict --level L --tile-size` and its tiled
            # SavedModel predict it: its own sub-network and stride, so its
            # own tile grid.
            return np.concatenate(
                [
                    tiling_lib.predict_tiled(
                        model,
                        image[None],
                        output=key,
                        tta=tta if with_tta else None,
                        **tiling,
                    )[0]
                    for key in keys
                ],
                axis=-1,
            )
        return whole(image, with_tta)

    if per_image is not None and classes != 1:
        raise InputError(
            "Per-image scores are of one-class models (foreground against "
            f"background); this model has {classes} classes."
        )
    if sweep is not None and classes != 1:
        raise InputError(
            "A threshold sweep is for one-class models (a probability "
            f"threshold); this model has {classes} classes, whose masks are "
            "the arg-max."
        )
    level_labels = [
        key if key == "accurate" else f"L{level}"
        for key, level in zip(keys, [*levels, None])
    ]
    target_dtype = "float32" if classes == 1 else "int32"
    field_scores = None
    if classes == 1:
        field_scores = {
            key: field_metrics.FieldScores(threshold, instance_methods) for key in keys
        }
    true_instances = iter(instances) if instances is not None else None
    count = 0
    for image, mask in samples:
        image = np.asarray(image, np.float32)
        mask = np.asarray(mask)
        if mask.ndim == 2:
            mask = mask[..., None]
        if mask.shape[:2] != image.shape[:2]:
            raise InputError(
                f"Image {count} is {image.shape[1]}x{image.shape[0]} but its "
                f"mask is {mask.shape[1]}x{mask.shape[0]} (width x height)."
            )
        target = mask[None].astype(target_dtype)
        runs = [(predict(image, False), scores)]
        if tta is not None:
            runs.append((predict(image, True), scores_tta))
        for output, metrics_of in runs:
            for k, key in enumerate(keys):
                prediction = output[None, ..., k * classes : (k + 1) * classes]
                for metric in metrics_of[key]:
                    metric.update_state(target, prediction)
        # The one-class truth of the field's scores, per-image records and
        # the sweep (all of the predictions without TTA).
        truth = mask[..., 0] > 0
        if field_scores is not None:
            plain = runs[0][0]
            labels = None if true_instances is None else next(true_instances)
            for k, key in enumerate(keys):
                field_scores[key].update(truth, plain[..., k], labels)
        if per_image is not None:
            for k, label in enumerate(level_labels):
                # The package's one rule, as the metrics: p >= threshold.
                predicted = runs[0][0][..., k] >= threshold
                record = image_scores(truth, predicted)
                record.update(image=count, level=label, iou_tta=None)
                record.update(field_metrics.error_split(truth, predicted))
                if tta is not None:
                    record["iou_tta"] = image_scores(
                        truth, runs[1][0][..., k] >= threshold
                    )["iou"]
                per_image.append(record)
        if sweep is not None:
            for k, label in enumerate(level_labels):
                sweep.update(label, truth, runs[0][0][..., k])
        count += 1
    if count == 0:
        raise InputError("There are no images to evaluate. Received: 0 images")
    return _level_rows(
        model,
        levels,
        scores,
        count,
        size,
        latency_batch_size,
        latency_runs,
        scored_at=NATIVE,
        inference=_inference(tiling),
        tta=tta,
        scores_tta=scores_tta,
        field_scores=field_scores,
    )


def image_scores(truth, prediction):
    """IoU, Dice, precision and recall of one boolean mask against the truth.

    An empty truth predicted empty scores 1 on every count; precision (or
    recall) of an empty prediction (or truth) alone is `None`.

    Args:
        truth: bool array, the true foreground.
        prediction: bool array of the same shape.

    Returns:
        dict: `iou`, `dice`, `precision`, `recall`, `true_pixels`,
        `predicted_pixels`.
    """
    tp = int(np.count_nonzero(truth & prediction))
    true_pixels = int(np.count_nonzero(truth))
    predicted_pixels = int(np.count_nonzero(prediction))
    union = true_pixels + predicted_pixels - tp
    both_empty = union == 0
    return {
        "iou": 1.0 if both_empty else tp / union,
        "dice": 1.0 if both_empty else 2 * tp / (true_pixels + predicted_pixels),
        "precision": (
            tp / predicted_pixels if predicted_pixels else (1.0 if both_empty else None)
        ),
        "recall": tp / true_pixels if true_pixels else (1.0 if both_empty else None),
        "true_pixels": true_pixels,
        "predicted_pixels": predicted_pixels,
    }


def _inference(tiling):
    """How the images were predicted, in a few words, for the table."""
    if tiling is None:
        return "whole image"
    size = tiling["tile_size"]
    tile = "x".join(map(str, size)) if not isinstance(size, int) else f"{size}x{size}"
    return f"tiled {tile}, overlap {tiling.get('overlap', 0.5):g}"


def write_table(rows, output_dir, stem="levels"):
    """Saves evaluation rows as `<stem>.csv` and `<stem>.json`.

    Args:
        rows: list of dicts from `evaluate_levels()` (rows of several
            models may be concatenated).
        output_dir: folder (created if missing).
        stem: file name without extension. Defaults to `"levels"`.

    Returns:
        `(csv_path, json_path)`.
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / f"{stem}.csv"
    json_path = output_dir / f"{stem}.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in COLUMNS})
    # JSON: every base column, and the inference and field columns of the
    # rows that have them (so that tables written before them read back the
    # same).
    records = [
        {
            **{k: row.get(k) for k in BASE_COLUMNS},
            **{k: row[k] for k in INFERENCE_COLUMNS + FIELD_COLUMNS if k in row},
        }
        for row in rows
    ]
    with open(json_path, "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    return csv_path, json_path


def read_table(path):
    """Reads rows written by `write_table()` (the `.json` file)."""
    with open(path) as f:
        return json.load(f)


def format_table(rows):
    """The rows as an aligned text table (IoU, Dice, params, GFLOPs, ms).

    Rows scored with test-time augmentation (`iou_tta`) get two more
    columns, IoU and Dice with TTA, next to those without.
    When the rows hold the field's scores (`FIELD_COLUMNS`), they are
    printed too, after the latency: `Dice/img`, `mIoU(K)` (the authors'
    Keras two-class mean IoU), `DSB-AP` and `DSB-AP(ws)` (connected
    components, watershed); `-` where a row lacks one.

    Returns:
        str, one line per row under a header line.
    """
    with_tta = any(row.get("iou_tta") is not None for row in rows)
    header = ["model", "level", "IoU", "Dice", "IoU/img"]
    if with_tta:
        header += ["IoU+TTA", "Dice+TTA"]
    header += ["params", "GFLOPs", "ms/image"]

    def cells(row):
        line = [
            row["model"],
            row["level"],
            f"{row['iou']:.4f}",
            f"{row['dice']:.4f}",
            f"{row['iou_per_image']:.4f}",
        ]
        if with_tta:
            line += [
                "" if row.get(key) is None else f"{row[key]:.4f}"
                for key in ("iou_tta", "dice_tta")
            ]
        return line + [
            f"{row['params']:,}",
            f"{row['flops'] / 1e9:.3f}",
            f"{row['ms_per_image']:.2f}",
        ]

    lines = [cells(row) for row in rows]
    field = [
        (key, label)
        for key, label in zip(FIELD_COLUMNS, _FIELD_HEADERS)
        if any(row.get(key) is not None for row in rows)
    ]
    if field:
        header = header + [label for _, label in field]
        lines = [
            line
            + ["-" if row.get(key) is None else f"{row[key]:.4f}" for key, _ in field]
            for line, row in zip(lines, rows)
        ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    text = [
        "  ".join(
            str(c).rjust(w) if i > 1 else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths))
        )
        for line in [header, *lines]
    ]
    return "\n".join(text)


def plot_tradeoff(rows, path, title=None):
    """Draws IoU against milliseconds per image, one labelled point per level.

    Rows of each model are joined by a line in level order (like the
    paper's figure of the pruned UNet++), so several models (e.g. UNet++
    and the U-Net baseline) can share one plot. Uses Matplotlib's Agg
    canvas: no display needed.

    Args:
        rows: list of dicts from `evaluate_levels()`.
        path: the PNG file to write.
        title: str or `None`. Defaults to `None`.

    Returns:
        `pathlib.Path` of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise InputError("Nothing to plot. Received: rows=[]")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    models = list(dict.fromkeys(row["model"] for row in rows))
    for model_name in models:
        own = [row for row in rows if row["model"] == model_name]
        levels = [row for row in own if row["level"] != "accurate"]
        (line,) = axes.plot(
            [row["ms_per_image"] for row in levels],
            [row["iou"] for row in levels],
            marker="o",
            label=model_name,
        )
        for row in own:
            if row["level"] == "accurate":
                axes.plot(
                    row["ms_per_image"],
                    row["iou"],
                    marker="*",
                    markersize=12,
                    color=line.get_color(),
                    linestyle="",
                )
            axes.annotate(
                row["level"] if len(models) == 1 else f"{model_name} {row['level']}",
                (row["ms_per_image"], row["iou"]),
                textcoords="offset points",
                xytext=(5, -10),
                fontsize=8,
            )
    axes.set_xlabel("inference time (ms per image)")
    axes.set_ylabel("foreground IoU")
    axes.set_xscale("log" if _spread(rows) > 10 else "linear")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(title or "Pruned UNet++: IoU vs inference time")
    figure.tight_layout()
    figure.savefig(path)
    return path


def _spread(rows):
    times = [row["ms_per_image"] for row in rows if row["ms_per_image"] > 0]
    if not times:
        return 1.0
    return max(times) / min(times)


def batch_norm_gap(model, dataset, threshold=0.5):
    """Foreground IoU of a model in training mode and in inference mode.

    The "batch-norm trap": a network with batch normalization can score well
    with batch statistics (training mode, as the training logs show) and
    badly with its moving statistics (inference mode, as `predict()` and a
    served model run), when the moving averages lag behind the weights. This
    runs both modes over `dataset` and returns both IoUs; their difference
    measures the trap. The model's weights and moving statistics are not
    changed.

    Args:
        model: a single-output binary model (e.g. `prune(model, depth)`).
        dataset: `tf.data.Dataset` of `(image, mask)` batches.
        threshold: float, probability threshold. Defaults to `0.5`.

    Returns:
        `(training_mode_iou, inference_mode_iou)`, floats.
    """
    batch_norms = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    saved = [
        [v.numpy() for v in (layer.moving_mean, layer.moving_variance)]
        for layer in batch_norms
    ]
    scores = {True: IoUScore(threshold=threshold), False: IoUScore(threshold=threshold)}
    try:
        for images, masks in dataset:
            if isinstance(masks, dict):
                masks = masks[model.output_names[0]]
            for training, metric in scores.items():
                metric.update_state(masks, model(images, training=training))
    finally:
        for layer, (mean, variance) in zip(batch_norms, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
    return float(scores[True].result()), float(scores[False].result())
