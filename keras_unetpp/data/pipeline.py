"""`make_dataset`: image/mask files -> a batched, augmented `tf.data.Dataset`."""

import collections
import functools
import numbers

import tensorflow as tf

from keras_unetpp.data import augment, decode, processing
from keras_unetpp.data.augment import Augmentation
from keras_unetpp.data.pairs import SamplePair
from keras_unetpp.errors import InputError
from keras_unetpp.validation import check_bool, check_int

AUTOTUNE = tf.data.AUTOTUNE

# The checked processing arguments shared by `make_dataset` and `tfds_dataset`.
Settings = collections.namedtuple(
    "Settings",
    ["image_size", "batch_size", "training", "augmentation", "output_names",
     "resize_mode", "cache", "shuffle_buffer", "seed", "drop_remainder",
     "deterministic", "decode"],
)


def processing_settings(
    image_size=(256, 256),
    channels=1,
    num_classes=1,
    batch_size=8,
    training=False,
    augmentation=None,
    output_names=None,
    resize_mode="resize",
    cache=True,
    shuffle_buffer=256,
    seed=0,
    drop_remainder=False,
    deterministic=False,
    mask_threshold=None,
    invert_mask=False,
    mask_map=None,
    normalization="dtype",
    depth=4,
):
    """Checks the processing arguments (see `make_dataset`) into `Settings`."""
    depth = check_int(depth, "depth", 0, 6)
    try:
        image_size = tuple(image_size)
    except TypeError:
        image_size = ()
    stride = 2**depth
    if len(image_size) != 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
        and s % stride == 0
        for s in image_size
    ):
        raise InputError(
            "`image_size` must be (height, width), positive multiples of "
            f"2**depth = {stride} (UNet++ of depth {depth} halves the size "
            f"{depth} times). Received: image_size={image_size!r}"
        )
    image_size = (int(image_size[0]), int(image_size[1]))
    channels = check_int(channels, "channels", 1, 3)
    if channels == 2:
        raise InputError(f"`channels` must be 1 or 3. Received: channels={channels}")
    num_classes = check_int(num_classes, "num_classes", 1, 65535)
    batch_size = check_int(batch_size, "batch_size", 1)
    training = check_bool(training, "training")
    if augmentation is not None:
        if not isinstance(augmentation, Augmentation):
            raise InputError(
                "`augmentation` must be a keras_unetpp.data.Augmentation or None. "
                f"Received: augmentation={augmentation!r}"
            )
        if not training:
            raise InputError(
                "Augmentation only applies to training pipelines; pass "
                "training=True or augmentation=None. "
                f"Received: training=False, augmentation={augmentation!r}"
            )
    if output_names is not None:
        if isinstance(output_names, str):
            output_names = [output_names]
        output_names = list(output_names)
        if not output_names or not all(isinstance(n, str) for n in output_names) or (
            len(set(output_names)) != len(output_names)
        ):
            raise InputError(
                "`output_names` must be None or a non-empty list of distinct "
                f"output names. Received: output_names={output_names!r}"
            )
    if resize_mode not in processing.RESIZE_MODES:
        raise InputError(
            f"`resize_mode` must be one of {processing.RESIZE_MODES}. "
            f"Received: resize_mode={resize_mode!r}"
        )
    if not isinstance(cache, (bool, str)):
        raise InputError(
            "`cache` must be True (memory), False or a file path prefix. "
            f"Received: cache={cache!r}"
        )
    shuffle_buffer = check_int(shuffle_buffer, "shuffle_buffer", 0)
    seed = check_int(seed, "seed", 0)
    drop_remainder = check_bool(drop_remainder, "drop_remainder")
    deterministic = check_bool(deterministic, "deterministic")
    invert_mask = check_bool(invert_mask, "invert_mask")
    if mask_threshold is not None:
        if isinstance(mask_threshold, bool) or not isinstance(
            mask_threshold, numbers.Real
        ):
            raise InputError(
                "`mask_threshold` must be None or a number (foreground = value "
                f"> threshold). Received: mask_threshold={mask_threshold!r}"
            )
        if num_classes > 1:
            raise InputError(
                "`mask_threshold` is for binary masks (num_classes=1). "
                f"Received: mask_threshold={mask_threshold!r}, "
                f"num_classes={num_classes}"
            )
        if mask_map is not None:
            raise InputError(
                "Pass `mask_threshold` or `mask_map`, not both. "
                f"Received: mask_threshold={mask_threshold!r}, mask_map={mask_map!r}"
            )
    if invert_mask and num_classes > 1:
        raise InputError(
            "`invert_mask` swaps a binary mask's foreground and background; it "
            f"needs num_classes=1. Received: num_classes={num_classes}"
        )
    if mask_map is not None:
        top = 1 if num_classes == 1 else num_classes - 1
        if not isinstance(mask_map, dict) or not mask_map or not all(
            isinstance(k, numbers.Integral) and isinstance(v, numbers.Integral)
            and not isinstance(v, bool) and 0 <= v <= top
            for k, v in mask_map.items()
        ):
            raise InputError(
                "`mask_map` must be a non-empty dict from mask values (ints) to "
                f"classes in [0, {top}] for num_classes={num_classes}. "
                f"Received: mask_map={mask_map!r}"
            )
        mask_map = {int(k): int(v) for k, v in mask_map.items()}
    if normalization not in decode.NORMALIZATIONS:
        raise InputError(
            f"`normalization` must be one of {decode.NORMALIZATIONS}. "
            f"Received: normalization={normalization!r}"
        )
    options = decode.DecodeOptions(
        channels, num_classes, normalization, mask_threshold, invert_mask, mask_map
    )
    return Settings(
        image_size, batch_size, training, augmentation, output_names, resize_mode,
        cache, shuffle_buffer, seed, drop_remainder, deterministic, options,
    )


def _check_pairs_argument(pairs, num_classes):
    try:
        pairs = [SamplePair(*p) for p in pairs]
    except TypeError:
        raise InputError(
            "`pairs` must be a list of SamplePair(stem, image, masks), e.g. from "
            f"folder_pairs(). Received: pairs={pairs!r:.200}"
        ) from None
    if not pairs:
        raise InputError("`pairs` is empty: nothing to load. Received: pairs=[]")
    for pair in pairs:
        if isinstance(pair.masks, str) or not pair.masks:
            raise InputError(
                f"Sample {pair.stem!r}: `masks` must be a non-empty tuple of "
                f"paths. Received: masks={pair.masks!r}"
            )
        if num_classes > 1 and len(pair.masks) > 1:
            raise InputError(
                f"Sample {pair.stem!r} has {len(pair.masks)} mask files; masks "
                "are merged by union, which only makes sense for binary masks "
                f"(num_classes=1). Received: num_classes={num_classes}"
            )
    decode.check_files_exist(pairs)
    return pairs


def _seeds(seed, stream):
    """An endless, seeded stream of `(2,)` seeds, new in every epoch."""
    return tf.data.Dataset.random(
        seed=2 * seed + stream, rerandomize_each_iteration=True
    ).batch(2)


def _random_crop(size, scale_range, pair, seed):
    image, mask = pair
    if scale_range is not None:
        return augment.scaled_crop_pair(image, mask, size, scale_range, seed)
    fractions = tf.random.stateless_uniform((2,), seed)
    return processing.crop_or_pad_pair(image, mask, size, fractions)


def finish(ds, settings, shuffled=False):
    """Turns a dataset of decoded `(image, mask)` into batches for `fit`.

    Args:
        ds: dataset of float32 `(height, width, channels)` images and integer
            `(height, width, 1)` masks, any size.
        settings: `Settings` from `processing_settings`.
        shuffled: bool, whether `ds` is already shuffled (then it is not
            shuffled again). Defaults to `False`.

    Returns:
        The batched, prefetched dataset of `(image, target)`.
    """
    size = settings.image_size
    training = settings.training
    augmentation = settings.augmentation
    if settings.resize_mode == "resize":
        ds = ds.map(
            lambda image, mask: processing.resize_pair(image, mask, size),
            num_parallel_calls=AUTOTUNE,
        )
    elif not training:
        ds = ds.map(
            lambda image, mask: processing.center_crop_or_pad_pair(image, mask, size),
            num_parallel_calls=AUTOTUNE,
        )
    if settings.cache is not False:
        ds = ds.cache("" if settings.cache is True else settings.cache)
    if training:
        if settings.shuffle_buffer and not shuffled:
            ds = ds.shuffle(
                settings.shuffle_buffer,
                seed=settings.seed,
                reshuffle_each_iteration=True,
            )
        if settings.resize_mode == "crop":
            scale_range = augmentation.scale_range if augmentation else None
            ds = tf.data.Dataset.zip((ds, _seeds(settings.seed, 0)))
            ds = ds.map(
                functools.partial(_random_crop, size, scale_range),
                num_parallel_calls=AUTOTUNE,
            )
    ds = ds.batch(
        settings.batch_size,
        drop_remainder=settings.drop_remainder,
        num_parallel_calls=AUTOTUNE,
    )
    binary = settings.decode.num_classes == 1
    output_names = settings.output_names

    def to_target(image, mask):
        mask = tf.cast(mask, tf.float32 if binary else tf.int32)
        if output_names is not None:
            return image, {name: mask for name in output_names}
        return image, mask

    if training and augmentation is not None:
        # One seed per batch; every sample in it still gets its own draw.
        scale = settings.resize_mode == "resize"

        def augment_map(pair, seed):
            return to_target(*augmentation(pair[0], pair[1], seed, scale=scale))

        ds = tf.data.Dataset.zip((ds, _seeds(settings.seed, 1)))
        ds = ds.map(augment_map, num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(to_target, num_parallel_calls=AUTOTUNE)
    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    # Evaluation keeps the file order, so predictions line up with files.
    options.deterministic = settings.deterministic or not training
    return ds.with_options(options)


def _load_index(pairs, options, index):
    return decode.load_pair(pairs[int(index)], options)


def make_dataset(
    pairs,
    image_size=(256, 256),
    channels=1,
    num_classes=1,
    batch_size=8,
    training=False,
    augmentation=None,
    output_names=None,
    resize_mode="resize",
    cache=True,
    shuffle_buffer=256,
    seed=0,
    drop_remainder=False,
    deterministic=False,
    mask_threshold=None,
    invert_mask=False,
    mask_map=None,
    normalization="dtype",
    depth=4,
):
    """Builds a `tf.data` pipeline of image/mask batches for `model.fit`.

    Files are decoded in Python (OpenCV), so that any problem - unreadable
    file, image and mask of different sizes, mask values that do not fit
    `num_classes`, unsupported channels - stops the pipeline with an error
    that names the file; nothing is skipped. Missing files are reported
    here, when the pipeline is made. The stages are: decode (parallel),
    resize (or centre crop/pad when not training), cache, shuffle, random
    crop and augmentation (training only, seeded, stateless), batch,
    prefetch (`AUTOTUNE`).

    Args:
        pairs: list of `SamplePair` (from `folder_pairs`, `dsb2018_pairs`,
            `split_pairs`).
        image_size: `(height, width)`, multiples of `2**depth`. Defaults to
            `(256, 256)`.
        channels: 1 (gray) or 3 (RGB), the channels the model takes; other
            images are converted. Defaults to `1`.
        num_classes: int, 1 for a binary mask (float32 0/1 targets), more
            for class-index masks (int32 targets). Defaults to `1`.
        batch_size: int. Defaults to `8`.
        training: bool; `True` shuffles, crops at random in crop mode and
            augments. Defaults to `False`.
        augmentation: an `Augmentation` or `None`. Needs `training=True`.
            Defaults to `None`.
        output_names: list of model output names (e.g. `["output_l1", ...,
            "output_l4"]` for deep supervision) to give the target to each
            by name as a dict; `None` gives the mask itself. Defaults to
            `None`.
        resize_mode: `"resize"` (scale every image to `image_size`) or
            `"crop"` (random crop/zero-pad to `image_size` when training,
            centre crop/pad otherwise; no resampling). Defaults to
            `"resize"`.
        cache: `True` (in memory, after decoding and resizing), `False`, or
            a file path prefix for an on-disk cache. Defaults to `True`.
        shuffle_buffer: int, shuffle buffer size when training (0 = keep the
            file order). Defaults to `256`.
        seed: int, seeds shuffling, random crops and augmentation: the same
            seed gives the same epochs in every run, each epoch differs.
            Defaults to `0`.
        drop_remainder: bool, drop the last partial batch (static batch
            size, e.g. for TPUs). Defaults to `False`.
        deterministic: bool, keep the element order of the parallel stages
            of a training pipeline fixed, so that the same seed gives the
            same batches (slightly slower). Evaluation pipelines
            (`training=False`) always keep the order of `pairs`. Defaults
            to `False`.
        mask_threshold: `None` (binary masks hold 0 and one other value) or
            a number (foreground = value > threshold, for soft or JPEG
            masks). Defaults to `None`.
        invert_mask: bool, swap foreground and background of binary masks.
            Defaults to `False`.
        mask_map: dict from raw mask values to classes (or to 0/1 for a
            binary mask), or `None`. Defaults to `None`.
        normalization: `"dtype"` (divide by 255 or 65535) or `"minmax"`
            (each image's range to [0, 1]). Defaults to `"dtype"`.
        depth: int, the depth of the model, to check `image_size`.
            Defaults to `4`.

    Returns:
        A `tf.data.Dataset` of `(image, target)`: image float32
        `(batch, height, width, channels)` in [0, 1]; target float32 0/1
        `(batch, height, width, 1)` for `num_classes=1`, int32 class indices
        `(batch, height, width, 1)` otherwise, or a dict of them keyed by
        `output_names`.

    Example:

    ```python
    from keras_unetpp import data
    root = "dsb2018_nuclei"
    pairs = data.folder_pairs(f"{root}/images", f"{root}/masks")
    train, val = data.split_pairs(pairs, val_fraction=0.2, seed=0)
    names = [f"output_l{level}" for level in range(1, 5)]
    train_ds = data.make_dataset(
        train, training=True, augmentation=data.Augmentation(), output_names=names
    )
    val_ds = data.make_dataset(val, output_names=names)
    ```
    """
    settings = processing_settings(
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        batch_size=batch_size,
        training=training,
        augmentation=augmentation,
        output_names=output_names,
        resize_mode=resize_mode,
        cache=cache,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        drop_remainder=drop_remainder,
        deterministic=deterministic,
        mask_threshold=mask_threshold,
        invert_mask=invert_mask,
        mask_map=mask_map,
        normalization=normalization,
        depth=depth,
    )
    options = settings.decode
    pairs = _check_pairs_argument(pairs, options.num_classes)
    mask_dtype = tf.as_dtype(decode.mask_dtype(options.num_classes))
    load = functools.partial(_load_index, pairs, options)

    def decode_map(index):
        image, mask = tf.numpy_function(
            load, [index], (tf.float32, mask_dtype), stateful=False, name="load_pair"
        )
        image = tf.ensure_shape(image, (None, None, options.channels))
        mask = tf.ensure_shape(mask, (None, None, 1))
        return image, mask

    ds = tf.data.Dataset.range(len(pairs))
    shuffled = False
    if settings.training and settings.shuffle_buffer and settings.cache is False:
        # Without a cache, shuffle the cheap indices instead of decoded images.
        ds = ds.shuffle(
            settings.shuffle_buffer, seed=settings.seed, reshuffle_each_iteration=True
        )
        shuffled = True
    ds = ds.map(decode_map, num_parallel_calls=AUTOTUNE)
    return finish(ds, settings, shuffled=shuffled)


def check_pairs(pairs, **kwargs):
    """Decodes every pair now and lists the problems instead of raising.

    `make_dataset` stops at the first bad file, while it reads it. This
    function reads all of them up front (in Python, one after the other) and
    returns every problem, so that bad samples can be fixed, or dropped
    knowingly, before training.

    Args:
        pairs: list of `SamplePair`.
        **kwargs: the `make_dataset` arguments that decide how files are
            read: `channels`, `num_classes`, `mask_threshold`,
            `invert_mask`, `mask_map`, `normalization` (others are checked
            and ignored).

    Returns:
        A list of `(stem, message)` tuples, empty when every pair is fine.

    Example:

    ```python
    problems = data.check_pairs(pairs, num_classes=1)
    bad = {stem for stem, _ in problems}
    for stem, message in problems:
        print(stem, message)
    pairs = [p for p in pairs if p.stem not in bad]
    ```
    """
    options = processing_settings(**kwargs).decode
    problems = []
    for pair in pairs:
        pair = SamplePair(*pair)
        try:
            decode.check_files_exist([pair])
            decode.load_pair(pair, options)
        except ValueError as e:
            problems.append((pair.stem, str(e)))
    return problems
