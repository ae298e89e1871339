"""The `keras-unetpp` command: synthetic, train, evaluate, predict, export.

This module only parses flags and calls the library (`keras_unetpp.runs`,
`keras_unetpp.synthetic`, `keras_unetpp.sources`). TensorFlow is imported
when a command runs, not for `--help` or a bad flag. Any bad argument, path
or setting (an `InputError`, or a file the system refuses) ends the command
with exit status 2 and one line on stderr:
`keras-unetpp <command>: error: <what is wrong>`. A training run whose loss
became NaN or infinite (`keras_unetpp.training.TrainingDiverged`) ends with
exit status 3 and one line; its run folder keeps the last good state. Any
other exception is a bug: it keeps its traceback (exit status 1).
"""

import argparse
import json
import math
import sys

from keras_unetpp.errors import InputError

PROG = "keras-unetpp"
EXIT_DIVERGED = 3
# `imbalance_losses.LOSS_NAMES`, written out so that `--help` loads no Keras
# (tests/test_train_loss.py checks that they agree).
LOSS_NAMES = ("bce-dice", "tversky", "focal-tversky", "focal", "lovasz")
# `evaluate --dsb-instances`: the `field_metrics.INSTANCE_METHODS` scored.
DSB_INSTANCES = {
    "both": ("components", "watershed"),
    "components": ("components",),
    "watershed": ("watershed",),
    "none": (),
}

_EPILOG = """\
Quick start (synthetic data, no download):
  keras-unetpp synthetic runs/demo/data
  keras-unetpp train --data runs/demo/data --output runs/demo \\
      --image-size 64 64 --depth 3 --filters 8 --epochs 6
  keras-unetpp evaluate runs/demo
  keras-unetpp export runs/demo
  keras-unetpp predict runs/demo runs/demo/data/images --overlays
"""


class UsageError(InputError):
    """A bad combination of flags that argparse cannot see."""


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line on stderr."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _json_dict(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        message = f"not valid JSON ({e.msg}): {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object: {text!r}")
    return value


def _number(text, kind, accept, expected):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}: {text!r}")
    return value


def _positive_int(text):
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def _positive_float(text):
    return _number(
        text, float, lambda v: math.isfinite(v) and v > 0, "a finite positive number"
    )


def _weight(text):
    return _number(
        text,
        float,
        lambda v: math.isfinite(v) and v >= 0,
        "a finite non-negative number",
    )


def _overlap(text):
    return _number(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _fraction(text):
    return _number(text, float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


def _scale_range(values):
    """`--scale-range` as `train_run` takes it: `(low, high)` or `None`."""
    from keras_unetpp.data.augment import DEFAULT_SCALE_RANGE

    if values is None:
        return DEFAULT_SCALE_RANGE
    if len(values) == 1 and values[0].lower() == "none":
        return None
    if len(values) != 2:
        raise UsageError(
            "--scale-range takes LOW HIGH (two numbers) or 'none'. "
            f"Received: {' '.join(values)}"
        )
    try:
        low, high = (_positive_float(v) for v in values)
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--scale-range: {error}") from None
    if low > high:
        raise UsageError(f"--scale-range needs LOW <= HIGH. Received: {low} {high}")
    return low, high


def _loss(args):
    """The `--loss` flags as a loss spec; `None` for the plain default."""
    from keras_unetpp.imbalance_losses import loss_spec

    parameters = dict(
        alpha=args.loss_alpha,
        beta=args.loss_beta,
        gamma=args.loss_gamma,
        smooth=args.loss_smooth,
        ce_weight=args.loss_ce_weight,
        boundary_weight=args.loss_boundary_weight,
        boundary_width=args.loss_boundary_width,
    )
    if args.loss == "bce-dice" and all(v is None for v in parameters.values()):
        return None
    return loss_spec(args.loss, **parameters)


def _add_synthetic(commands):
    p = commands.add_parser(
        "synthetic",
        help="write a small SYNTHETIC image/mask data set (no download)",
        description="Writes random blurred ellipses on a noisy background "
        "(images/), their exact masks (masks/), a manifest.csv with a "
        "train/val split and a README.txt saying that the data are synthetic.",
    )
    p.add_argument("output", help="folder to write (images/, masks/, manifest.csv)")
    p.add_argument(
        "--num-images",
        type=_positive_int,
        default=64,
        help="number of image/mask pairs (default: 64)",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        nargs=2,
        default=(64, 64),
        metavar=("HEIGHT", "WIDTH"),
        help="(default: 64 64)",
    )
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.25,
        help="share marked 'val' in the manifest (default: 0.25)",
    )
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it is a synthetic data set made by "
        "this command (a non-empty folder is refused otherwise)",
    )


def _add_train(commands):
    p = commands.add_parser(
        "train",
        help="train a UNet++ (or the U-Net baseline) on a data source",
        description="Trains with Keras progress bars, keeps the best epoch "
        "by validation IoU (or Dice; with --no-val by the lowest training "
        "loss) as best.keras, writes splits.csv, logs to TensorBoard "
        "(logs/) and history.csv, and saves a resumable state: run the same "
        "command again after an interruption to continue where it stopped.",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="RUN_DIR",
        help="run folder for checkpoints, logs and later steps",
    )
    src = p.add_argument_group("data source (give exactly one)")
    _add_folder_source(src, "train")
    src.add_argument("--tfds", metavar="NAME", help="a TFDS data set name")
    src.add_argument(
        "--tfds-train-split",
        default="train",
        help="TFDS split to train on (default: train)",
    )
    src.add_argument(
        "--tfds-val-split",
        default="validation",
        help="TFDS split to validate on (default: validation)",
    )
    src.add_argument(
        "--tfds-image-key", default="image", help="TFDS image feature (default: image)"
    )
    src.add_argument(
        "--tfds-mask-key",
        default="segmentation_mask",
        help="TFDS mask feature (default: segmentation_mask)",
    )
    src.add_argument("--tfds-data-dir", metavar="DIR", help="TFDS data directory")
    _add_mask_rules(
        p.add_argument_group(
            "masks (recorded in the run: evaluate and predict --split read "
            "its masks the same way)"
        )
    )
    sp = p.add_argument_group(
        "split (a manifest's split is always used; a random split only when "
        "none is given)"
    )
    _add_split_flags(sp)
    sp.add_argument(
        "--val-data",
        metavar="DIR",
        help="validate on this folder (images/ + masks/) instead of "
        "a split of the training data",
    )
    sp.add_argument(
        "--val-images",
        metavar="DIR",
        help="validation images folder (with --val-masks)",
    )
    sp.add_argument(
        "--val-masks", metavar="DIR", help="validation masks folder, same file stems"
    )
    sp.add_argument(
        "--no-val",
        action="store_true",
        help="train without validation; best.keras is then the epoch "
        "with the lowest training loss",
    )
    sp.add_argument(
        "--val-fraction",
        type=_fraction,
        help="validation share of a random split, which is made only "
        "when nothing else gives the split (default: 0.2)",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--architecture",
        choices=("unetpp", "unet"),
        default="unetpp",
        help="UNet++ or the plain U-Net baseline of the same widths (default: unetpp)",
    )
    m.add_argument("--depth", type=_positive_int, default=4, help="(default: 4)")
    m.add_argument(
        "--filters",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="width of level 0 (doubled per level), or depth+1 widths "
        "(default: the paper's 32 64 128 256 512)",
    )
    m.add_argument(
        "--deep-supervision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one head per level, needed to prune (default: on for "
        "unetpp, off for unet)",
    )
    m.add_argument(
        "--normalization",
        choices=("batch", "group", "none"),
        default="batch",
        help="(default: batch)",
    )
    m.add_argument(
        "--num-classes",
        type=_positive_int,
        default=1,
        help="1 = binary (default), more = class-index masks",
    )
    _add_backbone_flags(p)
    d = p.add_argument_group("input")
    d.add_argument(
        "--pixel-scaling",
        choices=("dtype", "minmax"),
        default="dtype",
        help="how pixels become [0, 1]: dtype divides 8-bit by 255 and 16-bit "
        "by 65535, minmax maps each image's range; recorded in the run for "
        "evaluate, predict and export (default: dtype)",
    )
    d.add_argument(
        "--image-size",
        type=_positive_int,
        nargs=2,
        default=(96, 96),
        metavar=("HEIGHT", "WIDTH"),
        help="training size, multiples of 2**depth (default: 96 96)",
    )
    d.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=1,
        help="1 = gray (default), 3 = RGB",
    )
    d.add_argument(
        "--resize-mode",
        choices=("resize", "crop"),
        default="resize",
        help="scale images to --image-size, or crop/pad them (default: resize)",
    )
    d.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random flips, quarter turns, scale, intensity (default: on)",
    )
    d.add_argument(
        "--scale-range",
        nargs="+",
        metavar="LOW HIGH",
        default=None,
        help="the augmentation's random zoom, log-uniform in [LOW, HIGH]; "
        "'none' for no zoom: crops at whole-pixel offsets, nothing resampled "
        "(default: 0.8 1.25)",
    )
    d.add_argument(
        "--mask-interpolation",
        choices=("nearest", "bilinear"),
        default="nearest",
        help="how the zoom resamples masks: nearest (outlines move up to half "
        "a pixel against the image) or bilinear (each class's share "
        "resampled like the image, the largest wins) (default: nearest)",
    )
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=_positive_int, default=8, help="(default: 8)")
    t.add_argument("--epochs", type=_positive_int, default=10, help="(default: 10)")
    t.add_argument(
        "--steps-per-epoch",
        type=_positive_int,
        help="batches per epoch (default: one pass over the data)",
    )
    t.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=1e-3,
        help="Adam learning rate (default: 0.001)",
    )
    t.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="cosine: decay to 5%% of the rate over all epochs, or "
        "over the epochs that fit in --time-budget; a resumed run "
        "continues its decay (default: constant)",
    )
    t.add_argument(
        "--loss-weights",
        type=_weight,
        nargs="+",
        metavar="W",
        help="loss weight of each head from L1 up (default: all 1)",
    )
    t.add_argument(
        "--loss",
        choices=LOSS_NAMES,
        default="bce-dice",
        help="loss of every head: the paper's BCE-Dice, Tversky, focal "
        "Tversky or focal (for class imbalance), or Lovasz (the IoU's convex "
        "surrogate) (recorded in run.json) "
        "(default: bce-dice)",
    )
    t.add_argument(
        "--loss-alpha",
        type=_weight,
        help="tversky/focal-tversky: weight of missed foreground (default 0.7); "
        "focal: weight of the foreground class (default 0.25)",
    )
    t.add_argument(
        "--loss-beta",
        type=_weight,
        help="tversky/focal-tversky: weight of false foreground (default 0.3)",
    )
    t.add_argument(
        "--loss-gamma",
        type=_weight,
        help="focal-tversky: exponent (default 0.75); focal: focusing "
        "exponent (default 2)",
    )
    t.add_argument(
        "--loss-smooth",
        type=_weight,
        help="bce-dice/tversky/focal-tversky: additive smoothing (default 1)",
    )
    t.add_argument(
        "--loss-ce-weight",
        type=_weight,
        help="lovasz: weight of the cross-entropy added to it (default 0)",
    )
    t.add_argument(
        "--loss-boundary-weight",
        type=_weight,
        help="bce-dice: the cross-entropy's pixels within --loss-boundary-width "
        "pixels of a mask boundary count 1 + this many times (default 0)",
    )
    t.add_argument(
        "--loss-boundary-width",
        type=_positive_int,
        help="bce-dice: the boundary band's half-width in pixels (default 1)",
    )
    t.add_argument(
        "--monitor",
        choices=("iou", "dice"),
        default="iou",
        help="validation score that picks best.keras (default: iou)",
    )
    t.add_argument(
        "--precision",
        default="float32",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        help="Keras dtype policy; auto picks mixed_float16 on a GPU, "
        "mixed_bfloat16 on a TPU or a CPU with native bfloat16, "
        "float32 elsewhere (default: float32)",
    )
    t.add_argument(
        "--recompute",
        action="store_true",
        help="recompute each node's activations in the backward "
        "pass: less memory per step (larger batches or images), "
        "more compute (default: off)",
    )
    t.add_argument(
        "--xla",
        action="store_true",
        help="compile the training step with XLA (a one-off compile "
        "first; on CPUs measured 1.03x on oneDNN's AVX2 kernels, no gain "
        "on AVX-512: docs/performance.md) (default: off)",
    )
    t.add_argument(
        "--strategy",
        default="default",
        choices=("default", "mirrored", "multi_worker", "tpu"),
        help="tf.distribute strategy (default: default)",
    )
    t.add_argument(
        "--save-every",
        type=_positive_int,
        metavar="BATCHES",
        help="also save the resumable state every this many batches "
        "(default: at epoch ends)",
    )
    t.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="MINUTES",
        help="start no epoch that would end after this many minutes; "
        "the same command continues later (default: no limit)",
    )
    t.add_argument("--seed", type=int, default=0, help="(default: 0)")
    t.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write TensorBoard logs (default: on)",
    )
    t.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="0 silent, 1 progress bars (default), 2 one line per epoch",
    )
    _add_volume_flags(p)


def _add_volume_flags(p):
    v = p.add_argument_group(
        "volumes (3D; used when --data holds imagesTr/ + labelsTr/ or images/ "
        "+ labels/ with .nii, .nii.gz or .npy volumes, or --images holds volumes)"
    )
    v.add_argument(
        "--patch-size",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="training patch, N or D H W voxels, multiples of 2**depth; also "
        "the sliding-window tile of evaluate and predict (default: 32 32 32)",
    )
    v.add_argument(
        "--foreground-share",
        type=_fraction,
        help="share of patches forced to contain foreground (default: 0.33)",
    )
    v.add_argument(
        "--intensity",
        choices=("zscore", "zscore-nonzero", "ct", "none"),
        help="per-volume z-score (MRI; over nonzero voxels with "
        "zscore-nonzero), a CT window in HU (--ct-window) mapped to [0, 1], "
        "or none (default: zscore)",
    )
    v.add_argument(
        "--ct-window",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="Hounsfield units clipped by --intensity ct (default: -1000 1000)",
    )
    v.add_argument(
        "--spacing",
        type=_positive_float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="resample every volume to this voxel size (from its NIfTI "
        "header; labels nearest-neighbour) (default: keep each file's grid)",
    )


def _add_backbone_flags(p):
    b = p.add_argument_group(
        "pretrained encoder (UNet++ on a keras.applications trunk; docs/backbones.md)"
    )
    b.add_argument(
        "--backbone",
        metavar="NAME",
        help="encoder trunk, e.g. vgg16, resnet50, densenet121, "
        "efficientnetb0, convnext_tiny, mobilenetv2 (default: the "
        "built-in UNet++ encoder)",
    )
    b.add_argument(
        "--encoder-weights",
        metavar="imagenet|none|PATH",
        help="the trunk's weights: imagenet (Keras' download and cache), "
        "none (random) or a weights file saved from the same "
        "keras.applications model (default: none)",
    )
    b.add_argument(
        "--freeze-encoder-epochs",
        type=int,
        metavar="N",
        help="train N epochs with the trunk frozen (its batch norms in "
        "inference mode), then fine-tune it (default: 0)",
    )
    b.add_argument(
        "--unfreeze-lr-factor",
        type=_positive_float,
        metavar="F",
        help="learning-rate multiplier after the unfreeze, in (0, 1] (default: 0.1)",
    )


def _backbone_settings(args):
    """The backbone keyword arguments of `runs.train_run` from the flags."""
    weights = args.encoder_weights
    if weights is not None and weights.lower() == "none":
        weights = None
    elif weights is not None and weights.lower() == "imagenet":
        weights = "imagenet"
    if args.unfreeze_lr_factor is not None and not args.freeze_encoder_epochs:
        raise UsageError("--unfreeze-lr-factor goes with --freeze-encoder-epochs N")
    if args.freeze_encoder_epochs is not None and args.freeze_encoder_epochs < 0:
        raise UsageError(
            "--freeze-encoder-epochs must be 0 or more. Received: "
            f"{args.freeze_encoder_epochs}"
        )
    return dict(
        backbone=args.backbone,
        encoder_weights=weights,
        freeze_encoder_epochs=args.freeze_encoder_epochs or 0,
        unfreeze_lr_factor=(
            0.1 if args.unfreeze_lr_factor is None else args.unfreeze_lr_factor
        ),
    )


def _add_folder_source(group, command):
    manifest = (
        "its split column (--split-column) gives train/val/test"
        if command == "train"
        else "its split column gives --split"
    )
    group.add_argument(
        "--data",
        metavar="DIR",
        help="folder with images/ and masks/ (and an optional "
        f"manifest.csv: {manifest})",
    )
    group.add_argument("--images", metavar="DIR", help="images folder (with --masks)")
    group.add_argument("--masks", metavar="DIR", help="masks folder, same file stems")
    group.add_argument(
        "--mask-suffix",
        metavar="TEXT",
        help="masks named <image stem>TEXT, e.g. _mask for abc.png / "
        "abc_mask.png (default: the image's stem)",
    )
    group.add_argument(
        "--manifest",
        metavar="CSV",
        help="manifest CSV (stem column and a split column) for "
        "--images/--masks, or instead of DIR/manifest.csv",
    )
    group.add_argument(
        "--dsb2018",
        metavar="DIR",
        help="Data Science Bowl 2018 stage1_train folder (<id>/images, <id>/masks)",
    )


def _add_mask_rules(group):
    group.add_argument(
        "--mask-threshold",
        type=float,
        metavar="T",
        help="binary masks whose foreground is the values above T, for soft "
        "or JPEG masks, e.g. 127 (default: 0 and one other value)",
    )
    group.add_argument(
        "--invert-mask",
        action="store_true",
        help="binary masks whose nonzero (or above T) value is the background",
    )
    group.add_argument(
        "--mask-map",
        type=_json_dict,
        metavar="JSON",
        help='mask values to classes (or to 0/1), e.g. \'{"1": 1, "2": 0}\'',
    )


def _mask_rule_arguments(args):
    """The mask flags given, as `data_source` arguments (empty: none given)."""
    given = {}
    if args.mask_threshold is not None:
        given["mask_threshold"] = args.mask_threshold
    if args.invert_mask:
        given["invert_mask"] = True
    if args.mask_map is not None:
        given["mask_map"] = args.mask_map
    return given


def _add_split_flags(group):
    group.add_argument(
        "--split-column",
        metavar="NAME",
        help="the manifest column that holds the split (default: suggested_split)",
    )
    group.add_argument(
        "--split-map",
        nargs="+",
        metavar="VALUE=SPLIT",
        help="map the split column's values to train, val, test or "
        "ignore, e.g. --split-map training=train test=test "
        "(default: the values must be train/val/test)",
    )


def _add_model_choice(p):
    p.add_argument(
        "--model",
        default="best",
        metavar="best|last|PATH",
        help="which model of the run (default: best)",
    )


def _add_evaluate(commands):
    p = commands.add_parser(
        "evaluate",
        help="per-level table: IoU, Dice, params, FLOPs, ms/image (+ plot)",
        description="Evaluates the run's model in inference mode on its "
        "validation split (as recorded in the run), another split, or other "
        "labelled data: one row per pruned level L1..L<depth> and the "
        "accurate mode. Whole images are scored at their own resolution "
        "against the masks as stored. Prints what was scored and the table, "
        "and writes levels.csv, levels.json, levels.png (IoU against latency) "
        "and scored.json.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a folder made by train")
    _add_model_choice(p)
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        help="which images: a split of the run's data (default: val) "
        "or of --data (default: all)",
    )
    src = p.add_argument_group("other labelled data (default: the run's own)")
    _add_folder_source(src, "evaluate")
    _add_split_flags(src)
    _add_mask_rules(
        p.add_argument_group(
            "masks of other data (default: read as the run's own were)"
        )
    )
    _add_tiling_flags(
        p,
        "predict each image tile by tile as predict --tile-size (and an "
        "export with --tile-size) does; crop-mode runs only (default: whole "
        "images); volume runs: the sliding-window tile, N or D H W voxels "
        "(default: the run's --patch-size)",
        tta_help="also score with test-time augmentation: the table gains "
        "IoU and Dice with TTA next to those without (whole images, or "
        "tiles with --tile-size)",
    )
    p.add_argument(
        "--at-training-size",
        action="store_true",
        help="score as training validates instead: at the training "
        "size (masks resized nearest-neighbour; crop mode: the centre "
        "crop)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="with --at-training-size (default: the run's)",
    )
    p.add_argument("--threshold", type=_fraction, default=0.5, help="(default: 0.5)")
    p.add_argument(
        "--per-image",
        action="store_true",
        help="also write per_image.csv: each image's IoU, Dice, precision and "
        "recall at every level (native resolution, one-class runs)",
    )
    p.add_argument(
        "--thresholds",
        type=_fraction,
        nargs="+",
        metavar="T",
        help="also write thresholds.csv: every level's pooled IoU and Dice "
        "at each probability threshold T (native resolution, one-class runs) "
        "and print the best; pick it with --split train, then report val "
        "with --threshold",
    )
    p.add_argument(
        "--dsb-instances",
        choices=tuple(DSB_INSTANCES),
        default="both",
        help="nuclei found in the prediction for the DSB 2018 score "
        "(columns dsb_ap, dsb_ap_watershed): connected components, a "
        "distance watershed that splits touching nuclei, both, or none "
        "(faster) (default: both)",
    )
    p.add_argument(
        "--latency-batch-size",
        type=_positive_int,
        default=1,
        help="images per timed call (default: 1)",
    )
    p.add_argument(
        "--latency-runs",
        type=_positive_int,
        default=10,
        help="timed calls per level (default: 10)",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        help="where to write the files (default: RUN_DIR/evaluation)",
    )


def _add_predict(commands):
    p = commands.add_parser(
        "predict",
        help="mask PNGs (and overlays, probabilities) for images of any size",
        description="Writes OUTPUT/masks/<name>.png (0/255, or class indices) "
        "with the same size as each input image, with --overlays "
        "OUTPUT/overlays/<name>.png and with --probabilities "
        "OUTPUT/probabilities/<name>.png|.npy. Images go through the run's "
        "size policy, as the exported SavedModels do: a run trained with "
        "--resize-mode resize sees each image resized to its --image-size "
        "(aspect ratio not kept, as in training) and the probabilities "
        "resized back; a crop-mode run predicts at native scale.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a folder made by train")
    p.add_argument(
        "input",
        metavar="IMAGES_DIR",
        nargs="?",
        help="folder of images (or give --split)",
    )
    p.add_argument(
        "--split",
        choices=("val", "train"),
        help="predict this split of the run's own data instead of a folder",
    )
    p.add_argument(
        "--output", metavar="DIR", help="results folder (default: RUN_DIR/predictions)"
    )
    _add_model_choice(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--level",
        type=_positive_int,
        help="use the model pruned to this level (default: "
        "accurate mode, the mean of all heads)",
    )
    which.add_argument(
        "--accurate",
        action="store_true",
        help="the accurate mode, the mean of all heads (the default)",
    )
    p.add_argument("--threshold", type=_fraction, default=0.5, help="(default: 0.5)")
    p.add_argument(
        "--overlays",
        action="store_true",
        help="also write the images with the masks drawn on them",
    )
    p.add_argument(
        "--probabilities",
        choices=("png16", "npy"),
        help="also write the probabilities: 16-bit PNGs scaled to "
        "0..65535, or float32 .npy ((h, w) for one class, "
        "(h, w, classes) for several)",
    )
    _add_tiling_flags(
        p,
        "predict tile by tile (sliding window, gaussian blending) with tiles "
        "of N (or H W) pixels, a multiple of 2**depth: memory bounded by the "
        "tile batch, for large images; crop-mode runs only (default: whole "
        "image, as the SavedModels); volume runs: N or D H W voxels, always "
        "tiled (default: the run's --patch-size)",
        tta_help="test-time augmentation: average the predictions of flipped "
        "(and quarter-turned) copies of each image, or of each tile with "
        "--tile-size; what evaluate --tta scores and export --tta serves",
    )


def _add_tiling_flags(p, tile_help, tta_help=None):
    """--tile-size, --overlap, --tta: `predict_tiled`'s settings."""
    p.add_argument(
        "--tile-size", type=_positive_int, nargs="+", metavar="N", help=tile_help
    )
    p.add_argument(
        "--overlap",
        type=_overlap,
        default=0.5,
        help="share of a tile its neighbours overlap, in [0, 1) (default: 0.5)",
    )
    p.add_argument(
        "--tta",
        choices=("flips", "flips+rot90"),
        help=tta_help
        or "test-time augmentation with --tile-size: average the "
        "predictions of flipped (and quarter-turned) images",
    )


def _tiling(args, tta_needs_tiles=True, with_tta=True):
    """The `predict_tiled` arguments of --tile-size/--overlap/--tta, or None."""
    if args.tta and not args.tile_size and tta_needs_tiles:
        raise UsageError("--tta works with --tile-size")
    if not args.tile_size:
        return None
    if len(args.tile_size) > 2:
        raise UsageError("--tile-size takes N or H W")
    tile = args.tile_size[0] if len(args.tile_size) == 1 else tuple(args.tile_size)
    tiling = {"tile_size": tile, "overlap": args.overlap}
    if args.tta and with_tta:
        tiling["tta"] = args.tta
    return tiling


def _describe_tiling(tiling):
    """E.g. "tiled 256, overlap 0.5, TTA flips"."""
    size = tiling["tile_size"]
    tile = "x".join(map(str, size)) if isinstance(size, tuple) else f"{size}"
    text = f"tiled {tile}, overlap {tiling['overlap']:g}"
    return text + (f", TTA {tiling['tta']}" if "tta" in tiling else "")


def _add_export(commands):
    p = commands.add_parser(
        "export",
        help="SavedModels of the pruned levels for TF Serving",
        description="Writes EXPORT_DIR/<name>_l<L>/<version>/ for each level, "
        "EXPORT_DIR/<name>_accurate/<version>/ for the accurate mode (the "
        "mean of all heads, predict's default) of a deep-supervision model, "
        "and EXPORT_DIR/models.config for tensorflow_model_server "
        "--model_config_file. Every SavedModel applies the run's size "
        "policy, so its masks are predict's. A volume run's SavedModels take "
        "(batch, depth, height, width, channels) voxels on the run's grid, "
        "normalize them as training did and predict by sliding window.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a folder made by train")
    p.add_argument("--export-dir", metavar="DIR", help="(default: RUN_DIR/export)")
    p.add_argument(
        "--levels",
        type=_positive_int,
        nargs="+",
        metavar="L",
        help="levels to export (default: every head)",
    )
    _add_model_choice(p)
    p.add_argument("--version", type=int, help="version folder (default: next)")
    p.add_argument("--model-name", help="served name prefix (default: model name)")
    p.add_argument(
        "--input-dtype",
        choices=("float32", "uint8", "uint16"),
        default="float32",
        help="(default: float32)",
    )
    p.add_argument("--threshold", type=_fraction, default=0.5, help="(default: 0.5)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing version folder"
    )
    p.add_argument(
        "--accurate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also export the accurate mode as <name>_accurate "
        "(default: on for deep-supervision models)",
    )
    p.add_argument(
        "--record-paths",
        action="store_true",
        help="record the absolute paths of the run's data in the "
        "metadata (default: only their last two components)",
    )
    _add_tiling_flags(
        p,
        "serve tile by tile inside the graph, as predict --tile-size does, "
        "with tiles of N (or H W) pixels, a multiple of 2**depth: a server "
        "takes images of any size with the memory of one tile batch; "
        "crop-mode runs only (default: the whole image at once); volume "
        "runs: N or D H W voxels, always tiled (default: the run's "
        "--patch-size, as predict)",
        tta_help="serve with test-time augmentation inside the graph: the "
        "mean of the predictions of flipped (and quarter-turned) copies of "
        "each image (of each tile with --tile-size), as predict --tta; "
        "SavedModel format only",
    )
    p.add_argument(
        "--format",
        default="savedmodel",
        metavar="F[,F...]",
        help="what to write per level, comma-separated: savedmodel, tflite "
        "(float32, dynamic-range and int8 files), onnx (default: savedmodel)",
    )
    p.add_argument(
        "--calibration-images",
        type=_positive_int,
        default=32,
        metavar="N",
        help="training images that calibrate the int8 TFLite files (default: 32)",
    )


def make_parser():
    """The argument parser of `keras-unetpp` (all subcommands)."""
    parser = _Parser(
        prog=PROG,
        description="UNet++ segmentation: train, evaluate the pruned levels, "
        "predict masks and export SavedModels for TF Serving.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from keras_unetpp.version import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_synthetic(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_export(commands)
    return parser


def _filters(values):
    if values is None:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _run_synthetic(args):
    from keras_unetpp.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(
        args.output,
        num_images=args.num_images,
        image_size=tuple(args.image_size),
        val_fraction=args.val_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(
        f"Wrote {args.num_images} SYNTHETIC image/mask pairs to {root} "
        "(images/, masks/, manifest.csv, README.txt)."
    )


def _model_arguments(args):
    """The model keyword arguments of a training run, 2D or volumes."""
    deep_supervision = args.deep_supervision
    if deep_supervision is None:
        deep_supervision = args.architecture == "unetpp"
    return dict(
        architecture=args.architecture,
        depth=args.depth,
        filters=_filters(args.filters),
        deep_supervision=deep_supervision,
        normalization=args.normalization,
    )


def _run_train(args):
    from keras_unetpp import runs, sources
    from keras_unetpp.volumes import runs as volume_runs

    if volume_runs.is_volume_data(args.data, args.images):
        return _run_train_volumes(args)
    _refuse_volume_flags(args)
    backbone = _backbone_settings(args)
    if args.manifest is not None and args.images is None and args.data is None:
        raise UsageError("--manifest goes with --images/--masks or --data")
    source = sources.data_source(
        data_dir=args.data,
        images_dir=args.images,
        masks_dir=args.masks,
        manifest=args.manifest,
        dsb2018_dir=args.dsb2018,
        split_column=args.split_column,
        split_map=args.split_map,
        val_data_dir=args.val_data,
        val_images_dir=args.val_images,
        val_masks_dir=args.val_masks,
        no_val=args.no_val,
        tfds_name=args.tfds,
        tfds_train_split=args.tfds_train_split,
        tfds_val_split=args.tfds_val_split,
        tfds_image_key=args.tfds_image_key,
        tfds_mask_key=args.tfds_mask_key,
        tfds_data_dir=args.tfds_data_dir,
        mask_suffix=args.mask_suffix,
        **_mask_rule_arguments(args),
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    result = runs.train_run(
        args.output,
        source,
        **_model_arguments(args),
        pixel_scaling=args.pixel_scaling,
        image_size=tuple(args.image_size),
        channels=args.channels,
        num_classes=args.num_classes,
        resize_mode=args.resize_mode,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        loss_weights=args.loss_weights,
        loss=_loss(args),
        monitor=args.monitor,
        augment=args.augment,
        scale_range=_scale_range(args.scale_range),
        mask_interpolation=args.mask_interpolation,
        precision=args.precision,
        recompute=args.recompute,
        xla=args.xla,
        strategy=args.strategy,
        save_every=args.save_every,
        seed=args.seed,
        tensorboard=args.tensorboard,
        time_budget=None if args.time_budget is None else 60.0 * args.time_budget,
        verbose=args.verbose,
        **backbone,
    )
    best = result["best"]
    best_text = "n/a" if best is None else f"{best:.4f}"
    epochs = len(result["history"])
    epochs = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    if result["stopped_by_time_budget"]:
        print(
            f"Stopped by --time-budget after {epochs}; run the same "
            "command to continue."
        )
    monitor = result["monitor"]
    if monitor == "loss":
        monitor = "training loss (lowest; no validation)"
    print(
        f"Done ({epochs}): best {monitor} = {best_text}. Run folder "
        f"{result['run_dir']}: best.keras, last.keras, history.csv, splits.csv, "
        f"logs/ (tensorboard --logdir {result['run_dir']}/logs)."
    )


def _run_evaluate(args):
    from keras_unetpp import runs, sources
    from keras_unetpp.volumes import runs as volume_runs

    if volume_runs.is_volume_run(args.run):
        return _run_evaluate_volumes(args)
    other = (args.data, args.images, args.masks, args.dsb2018)
    if args.manifest is not None and args.images is None and args.data is None:
        raise UsageError("--manifest goes with --images/--masks or --data")
    rules = _mask_rule_arguments(args)
    if any(v is not None for v in other):
        split = args.split or "all"
        if not rules:
            # Another folder's masks are read as the run's were, unless the
            # mask flags say otherwise.
            recorded = runs.read_run_config(args.run)["data"]["source"]
            rules = sources.mask_rules(recorded)
        source = sources.data_source(
            data_dir=args.data,
            images_dir=args.images,
            masks_dir=args.masks,
            manifest=args.manifest,
            dsb2018_dir=args.dsb2018,
            split_column=args.split_column,
            split_map=args.split_map,
            required_splits=() if split == "all" else (split,),
            mask_suffix=args.mask_suffix,
            **rules,
        )
    elif args.split_column is not None or args.split_map is not None:
        raise UsageError(
            "--split-column/--split-map go with --data or --images/--masks; "
            "the run's own split is the one recorded in its run.json"
        )
    elif args.mask_suffix is not None:
        raise UsageError(
            "--mask-suffix goes with --data or --images/--masks; the run's own "
            "masks are found as recorded in its run.json"
        )
    elif rules:
        raise UsageError(
            "--mask-threshold/--invert-mask/--mask-map go with --data or "
            "--images/--masks; the run's own masks are read by the rules "
            "recorded in its run.json"
        )
    else:
        source = None
    result = runs.evaluate_run(
        args.run,
        model=args.model,
        split=args.split,
        source=source,
        batch_size=args.batch_size,
        threshold=args.threshold,
        latency_batch_size=args.latency_batch_size,
        latency_runs=args.latency_runs,
        output_dir=args.output,
        at_training_size=args.at_training_size,
        tiling=_tiling(args, tta_needs_tiles=False, with_tta=False),
        tta=args.tta,
        instance_methods=DSB_INSTANCES[args.dsb_instances],
        per_image=args.per_image,
        thresholds=args.thresholds,
    )
    print(
        f"Scored {args.model} on {result['what']}: {result['images']} images, "
        f"{result['resolution']}. FLOPs and ms/image at the training size."
    )
    print(result["table"])
    print(
        f"Wrote {result['csv']}, {result['json']}, {result['plot']} and "
        f"{result['scored']}."
    )
    if result["per_image"] is not None:
        worst = _worst_images(result["per_image"])
        print(f"Per-image scores: {result['per_image']}; {worst}")
    if result["thresholds"] is not None:
        print(_threshold_summary(result, args.threshold, args.split))


def _threshold_summary(result, threshold, split):
    """Each level's best threshold of the sweep, in words."""
    scored = {row["level"]: row for row in result["rows"]}
    parts = []
    for level, row in result["best_thresholds"].items():
        at = scored.get(level, {}).get("iou")
        than = "" if at is None else f" (at {threshold:g}: {at:.4f})"
        parts.append(f"{level} {row['threshold']:g}: IoU {row['iou']:.4f}{than}")
    text = (
        f"Threshold sweep: {result['thresholds']}; best pooled IoU per level: "
        + "; ".join(parts)
        + "."
    )
    if split != "train":
        text += (
            " A threshold picked on the images it is then reported on "
            "flatters their score: pick it with --split train, report the val "
            "split with --threshold."
        )
    return text


def _worst_images(path, count=3):
    """The images with the lowest IoU at the deepest level, and where the
    wrong pixels of that level lie, in words."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    levels = [r["level"] for r in rows if r["level"] != "accurate"]
    deepest = max(levels, key=lambda label: int(label[1:])) if levels else "accurate"
    mine = [r for r in rows if r["level"] == deepest]
    chosen = sorted(mine, key=lambda r: float(r["iou"]))[:count]
    text = f"lowest IoU at {deepest}: " + ", ".join(
        f"{r['image']} {float(r['iou']):.3f}" for r in chosen
    )
    kinds = {
        "fp_edges": "objects drawn too large",
        "fn_edges": "objects drawn too small",
        "fp_objects": "false objects",
        "fn_objects": "missed objects",
    }
    totals = {key: sum(int(r[key]) for r in mine) for key in kinds}
    wrong = sum(totals.values())
    if wrong:
        text += f". Its wrong pixels ({wrong}): " + ", ".join(
            f"{100 * totals[key] / wrong:.0f}% {words}" for key, words in kinds.items()
        )
    return text


def _run_predict(args):
    from keras_unetpp import runs
    from keras_unetpp.volumes import runs as volume_runs

    if volume_runs.is_volume_run(args.run):
        return _run_predict_volumes(args)
    if (args.input is None) == (args.split is None):
        raise UsageError(
            f"give IMAGES_DIR or --split, not {'both' if args.input else 'neither'}"
        )
    tiling = _tiling(args, tta_needs_tiles=False)
    result = runs.predict_run(
        args.run,
        args.input,
        tiling=tiling,
        tta=args.tta if tiling is None else None,
        output_dir=args.output,
        model=args.model,
        level=args.level,
        threshold=args.threshold,
        overlays=args.overlays,
        split=args.split,
        accurate=args.accurate,
        probabilities=args.probabilities,
    )
    folder = result["output_dir"]
    count = len(result["masks"])
    parts = [f"{count} mask{'' if count == 1 else 's'} to {folder}/masks/"]
    if result["overlays"]:
        parts.append(f"{len(result['overlays'])} overlays to overlays/")
    if result["probabilities"]:
        parts.append(
            f"{len(result['probabilities'])} probability files to probabilities/"
        )
    how = result["size_policy"].short_description()
    if tiling:
        how += "; " + _describe_tiling(tiling)
    elif args.tta:
        how += f"; TTA {args.tta}"
    print(f"Wrote {', '.join(parts)} ({result['model']}; {how}).")


def _run_export(args):
    from keras_unetpp.volumes import runs as volume_runs

    if volume_runs.is_volume_run(args.run):
        paths = _export_volumes(args)
    else:
        paths = _export_images(args)
    _report_export(paths)


def _export_volumes(args):
    from keras_unetpp.export import edge
    from keras_unetpp.volumes import runs as volume_runs

    if edge.check_formats(args.format) != (edge.SAVEDMODEL,):
        raise UsageError("volume runs are exported as SavedModels only (--format)")
    tiling = None
    if args.tile_size:
        tiling = {"tile_size": _triple(args.tile_size, "--tile-size")}
    if args.tta or args.tile_size or args.overlap != 0.5:
        tiling = tiling or {"tile_size": tuple(_run_patch(args.run))}
        tiling["overlap"] = args.overlap
        if args.tta:
            tiling["tta"] = args.tta
    return volume_runs.export_volume_run(
        args.run, tiling=tiling, **_export_options(args)
    )


def _run_patch(run_dir):
    from keras_unetpp.runs import read_run_config

    return read_run_config(run_dir)["data"]["patch_size"]


def _export_images(args):
    from keras_unetpp import runs

    tiling = _tiling(args, tta_needs_tiles=False)
    return runs.export_run(
        args.run,
        tiling=tiling,
        tta=args.tta if tiling is None else None,
        formats=args.format,
        calibration_images=args.calibration_images,
        **_export_options(args),
    )


def _export_options(args):
    """The `export` flags that 2D and volume runs take alike, as keywords."""
    names = (
        "export_dir",
        "levels",
        "model",
        "version",
        "model_name",
        "input_dtype",
        "threshold",
        "overwrite",
        "accurate",
        "record_paths",
    )
    return {name: getattr(args, name) for name in names}


def _report_export(paths):
    for key, path in paths.items():
        label = "accurate" if key == "accurate" else f"L{key}"
        print(f"{label}: {path}")
    from keras_unetpp.export import load_metadata

    first = next(iter(paths.values()))
    metadata = load_metadata(first)
    print(f"Each request is {metadata['size_policy']['description']}.")
    if metadata["tiling"] is not None:
        settings = metadata["tiling"]
        summary = {
            "tile_size": tuple(settings["tile_size"]),
            "overlap": settings["overlap"],
        }
        if settings["tta"]:
            summary["tta"] = settings["tta"]
        print(f"Served {_describe_tiling(summary)}, inside the graph.")
    if "savedmodel" in metadata.get("formats", ["savedmodel"]):
        print(f"TF Serving config: {first.parent.parent / 'models.config'}")
    edge_files = sorted(metadata.get("edge", {}).get("files", {}))
    if edge_files:
        print(f"Next to each: {', '.join(edge_files)} (see the metadata's 'edge').")


_VOLUME_FLAGS = ("patch_size", "foreground_share", "intensity", "ct_window", "spacing")


def _refuse_volume_flags(args):
    given = [f for f in _VOLUME_FLAGS if getattr(args, f) is not None]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise UsageError(
            f"{flags}: for volumes, but the data holds no .nii, .nii.gz or .npy "
            "volumes (imagesTr/ + labelsTr/ or images/ + labels/)"
        )


def _triple(values, flag):
    if values is None:
        return None
    if len(values) not in (1, 3):
        raise UsageError(f"{flag} takes N or D H W")
    return values[0] if len(values) == 1 else tuple(values)


def _run_train_volumes(args):
    from keras_unetpp.volumes import runs as volume_runs

    for flag in ("val_data", "val_images", "val_masks", "dsb2018", "tfds"):
        if getattr(args, flag) is not None:
            raise UsageError(
                f"--{flag.replace('_', '-')} is not for volumes; their "
                "split comes from manifest.csv or --val-fraction"
            )
    if args.strategy != "default":
        raise UsageError("--strategy is not supported for volumes yet")
    for flag in ("backbone", "encoder_weights", "freeze_encoder_epochs"):
        if getattr(args, flag) is not None:
            raise UsageError(
                f"--{flag.replace('_', '-')} is for 2D images; the pretrained "
                "encoders are 2D keras.applications trunks"
            )
    if _mask_rule_arguments(args) or args.mask_suffix is not None:
        raise UsageError(
            "--mask-threshold/--invert-mask/--mask-map/--mask-suffix are for "
            "2D masks; volume labels are class indices (--num-classes) in "
            "files named as their images"
        )
    source = volume_runs.volume_source(
        data_dir=args.data,
        images_dir=args.images,
        labels_dir=args.masks,
        manifest=args.manifest,
        split_column=args.split_column or "suggested_split",
        val_fraction=0.2 if args.val_fraction is None else args.val_fraction,
        no_val=args.no_val,
        seed=args.seed,
    )
    result = volume_runs.train_volume_run(
        args.output,
        source,
        **_model_arguments(args),
        patch_size=_triple(args.patch_size, "--patch-size") or (32, 32, 32),
        channels=args.channels,
        num_classes=args.num_classes,
        foreground_share=(
            0.33 if args.foreground_share is None else args.foreground_share
        ),
        intensity=args.intensity or "zscore",
        ct_window=args.ct_window or (-1000.0, 1000.0),
        spacing=args.spacing,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        loss_weights=args.loss_weights,
        monitor=args.monitor,
        augment=args.augment,
        precision=args.precision,
        recompute=args.recompute,
        xla=args.xla,
        save_every=args.save_every,
        seed=args.seed,
        tensorboard=args.tensorboard,
        time_budget=None if args.time_budget is None else 60.0 * args.time_budget,
        verbose=args.verbose,
    )
    best = result["best"]
    best_text = "n/a" if best is None else f"{best:.4f}"
    epochs = len(result["history"])
    if result["stopped_by_time_budget"]:
        print(
            f"Stopped by --time-budget after {epochs} epoch(s); run the same "
            "command to continue."
        )
    print(
        f"Done ({epochs} epoch(s)): best {result['monitor']} = {best_text}. Run "
        f"folder {result['run_dir']}: best.keras, last.keras, history.csv, "
        "splits.csv, logs/."
    )


def _run_evaluate_volumes(args):
    from keras_unetpp.volumes import runs as volume_runs

    for flag in ("images", "masks", "manifest", "dsb2018", "batch_size"):
        if getattr(args, flag, None) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} is not for volume runs")
    if args.per_image:
        raise UsageError(
            "--per-image is for 2D runs (image by image); a volume run is "
            "scored volume by volume already"
        )
    if args.thresholds:
        raise UsageError(
            "--thresholds is for 2D runs; a volume run is scored at --threshold"
        )
    source = None
    if args.data is not None:
        source = volume_runs.volume_source(data_dir=args.data)
    result = volume_runs.evaluate_volume_run(
        args.run,
        model=args.model,
        split=args.split or ("all" if source else "val"),
        source=source,
        tile_size=_triple(args.tile_size, "--tile-size"),
        overlap=args.overlap,
        tta=args.tta,
        threshold=args.threshold,
        output_dir=args.output,
    )
    tile = "x".join(map(str, result["tile"]))
    print(
        f"Scored {args.model} on {result['volumes']} volumes, whole, by sliding "
        f"window (tiles {tile}, overlap {args.overlap:g}); Dice and IoU per "
        "volume, averaged; GFLOPs and ms per volume."
    )
    print(result["table"])
    print(f"Wrote {result['csv']} and {result['json']}.")


def _run_predict_volumes(args):
    from keras_unetpp.volumes import runs as volume_runs

    if (args.input is None) == (args.split is None):
        raise UsageError(
            f"give VOLUMES_DIR or --split, not {'both' if args.input else 'neither'}"
        )
    if args.overlays or args.probabilities:
        raise UsageError("--overlays and --probabilities are for 2D runs")
    result = volume_runs.predict_volume_run(
        args.run,
        input_dir=args.input,
        split=args.split,
        output_dir=args.output,
        model=args.model,
        level=args.level,
        accurate=args.accurate,
        tile_size=_triple(args.tile_size, "--tile-size"),
        overlap=args.overlap,
        tta=args.tta,
        threshold=args.threshold,
    )
    count = len(result["labels"])
    tile = "x".join(map(str, result["tile"]))
    print(
        f"Wrote {count} label map{'' if count == 1 else 's'} to "
        f"{result['output_dir']}/labels/ ({result['model']}; tiles {tile}, "
        f"overlap {args.overlap:g}; each with its input's affine and header)."
    )


_COMMANDS = {
    "synthetic": _run_synthetic,
    "train": _run_train,
    "evaluate": _run_evaluate,
    "predict": _run_predict,
    "export": _run_export,
}


def main(argv=None):
    """Runs `keras-unetpp` with `argv` (default: `sys.argv[1:]`).

    Args:
        argv: list of str, the arguments after the program name, or `None`.
            Defaults to `None`.

    Returns:
        int, the exit status: 0 on success. Usage errors and bad values or
        paths exit with status 2 (`SystemExit`) after one line on stderr;
        a training run that diverged (NaN or infinite loss,
        `training.TrainingDiverged`) with status 3, also after one line; an
        interruption (Ctrl-C) exits with 130.

    Example:

    ```python
    from keras_unetpp import cli
    cli.main(["synthetic", "runs/demo/data"])
    ```
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    command = args.command
    try:
        _COMMANDS[command](args)
    except (
        UsageError,
        InputError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as e:
        # What the user got wrong: one line. Anything else is a bug and
        # keeps its traceback (exit status 1).
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG} {command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        hint = " (run the same command to resume)" if command == "train" else ""
        print(f"{PROG} {command}: interrupted{hint}", file=sys.stderr)
        raise SystemExit(130) from None
    except RuntimeError as e:
        # A diverged run (NaN/inf loss) is no bug: one line, exit status 3.
        # keras_unetpp.training is loaded by then if it raised this.
        training = sys.modules.get("keras_unetpp.training")
        if training is None or not isinstance(e, training.TrainingDiverged):
            raise
        message = " ".join(str(e).split())
        print(f"{PROG} {command}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED) from None
    return 0
