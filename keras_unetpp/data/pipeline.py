"""`make_dataset`: image/mask files -> a batched, augmented `tf.data.Dataset`.

Bad data files and tf.data
--------------------------

Every file is decoded and checked *before* the pipeline exists
(`load_pairs`, in threads): a bad file raises a `DataError` that names it,
while no tf.data iterator and no TensorFlow thread is running yet.

The pipeline itself then holds no Python code where it can: the checked
arrays are packed into two tensors and sliced by TF ops
(`MEMORY_LIMIT`). Python called from tf.data (`tf.numpy_function`) is what
made a bad file hang or abort the process: the call runs on a TensorFlow
thread and needs the GIL, so

- when the iterator is destroyed by a thread that holds the GIL (the
  cyclic garbage collector frees the iterator kept alive by the error's
  traceback in whatever thread it runs, often a decoding thread itself),
  its destructor waits for the in-flight decodes, which wait for the GIL:
  a deadlock;
- when the interpreter exits while decodes are still in flight or
  scheduled, a TensorFlow thread that asks for the GIL is ended by Python
  in the middle of C++ code: `terminate called without an active
  exception`, exit status 134.

Data larger than `MEMORY_LIMIT` (and TFDS data, see `tfds_source`) is
still decoded by Python in the pipeline; there the Python function never
raises (`guarded`): it returns empty arrays and the error as a string, a TF
assertion stops the pipeline with it, and `data_errors()` or
`as_data_error()` turn that `InvalidArgumentError` back into the
`DataError` naming the file.
"""

import atexit
import binascii
import collections
import concurrent.futures
import contextlib
import functools
import gc
import json
import numbers
import os
import threading
import traceback

import numpy as np
import tensorflow as tf

from keras_unetpp.data import augment, decode, processing
from keras_unetpp.data.augment import Augmentation
from keras_unetpp.data.pairs import SamplePair
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.validation import check_bool, check_int, check_pixel_scaling

AUTOTUNE = tf.data.AUTOTUNE

# A pipeline up to this many bytes of decoded samples (float32 images and
# masks at file size) keeps them in memory and slices them with TF ops only;
# larger data is decoded again from the files, by Python, while it runs.
MEMORY_LIMIT = 1 << 30

# Threads that decode and check the files before a pipeline is made.
CHECK_THREADS = min(8, os.cpu_count() or 1)

# Marks an error message carried through tf.data as an encoded DataError.
_MARK = "keras_unetpp.DataError:"

# The checked processing arguments shared by `make_dataset` and `tfds_dataset`.
Settings = collections.namedtuple(
    "Settings",
    [
        "image_size",
        "batch_size",
        "training",
        "augmentation",
        "output_names",
        "resize_mode",
        "cache",
        "shuffle_buffer",
        "seed",
        "drop_remainder",
        "deterministic",
        "decode",
    ],
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
    pixel_scaling="dtype",
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
        isinstance(s, numbers.Integral)
        and not isinstance(s, bool)
        and s > 0
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
        if (
            not output_names
            or not all(isinstance(n, str) for n in output_names)
            or (len(set(output_names)) != len(output_names))
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
        if (
            not isinstance(mask_map, dict)
            or not mask_map
            or not all(
                isinstance(k, numbers.Integral)
                and isinstance(v, numbers.Integral)
                and not isinstance(v, bool)
                and 0 <= v <= top
                for k, v in mask_map.items()
            )
        ):
            raise InputError(
                "`mask_map` must be a non-empty dict from mask values (ints) to "
                f"classes in [0, {top}] for num_classes={num_classes}. "
                f"Received: mask_map={mask_map!r}"
            )
        mask_map = {int(k): int(v) for k, v in mask_map.items()}
    check_pixel_scaling(pixel_scaling)
    options = decode.DecodeOptions(
        channels, num_classes, pixel_scaling, mask_threshold, invert_mask, mask_map
    )
    return Settings(
        image_size,
        batch_size,
        training,
        augmentation,
        output_names,
        resize_mode,
        cache,
        shuffle_buffer,
        seed,
        drop_remainder,
        deterministic,
        options,
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
    return pairs


def _load_one(pair, options):
    decode.check_files_exist([pair])
    return decode.load_pair(pair, options)


def load_pairs(pairs, options, keep=True, threads=None):
    """Decodes and checks every pair now, in threads; the one full check.

    Args:
        pairs: list of `SamplePair`.
        options: a `decode.DecodeOptions`.
        keep: bool, return the decoded arrays (while they fit in
            `MEMORY_LIMIT`). Defaults to `True`.
        threads: int, decoding threads, or `None` for `CHECK_THREADS`.
            Defaults to `None`.

    Returns:
        A tuple `(arrays, errors)`: `arrays` is the list of `(image, mask)`
        as from `decode.load_pair`, in the order of `pairs`, or `None`
        (not kept, too large, or some pair is bad); `errors` is a list of
        `(index, DataError)`, in the order of `pairs`.
    """
    threads = CHECK_THREADS if threads is None else threads
    load = functools.partial(_load_one, options=options)

    def attempt(pair):
        try:
            return load(pair), None
        except DataError as e:
            return None, e

    arrays = [] if keep else None
    errors = []
    size = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        for index, (pair_arrays, error) in enumerate(pool.map(attempt, pairs)):
            if error is not None:
                errors.append((index, error))
                arrays = None
            elif arrays is not None:
                size += sum(a.nbytes for a in pair_arrays)
                if size > MEMORY_LIMIT:
                    arrays = None
                else:
                    arrays.append(pair_arrays)
    return arrays, errors


def first_error(pairs, errors):
    """The `DataError` to raise for the problems found by `load_pairs`."""
    _, error = errors[0]
    if len(errors) == 1:
        return error
    others = [repr(pairs[i].stem) for i, _ in errors[1:11]]
    more = f", ... and {len(errors) - 11} more" if len(errors) > 11 else ""
    return DataError(
        f"{error} ({len(errors) - 1} other sample(s) are bad too: "
        f"{', '.join(others)}{more}; keras_unetpp.data.check_pairs lists all "
        "problems.)",
        error.path,
    )


def _encode_error(error):
    """A DataError as a string that survives a TF error message."""
    payload = json.dumps({"message": str(error), "path": error.path})
    hexed = binascii.hexlify(payload.encode("utf-8")).decode("ascii")
    return f"{error} <{_MARK}{hexed}>".encode()


def as_data_error(error):
    """The `DataError` carried by a TensorFlow error from a pipeline, or None.

    Args:
        error: an exception, typically the `tf.errors.InvalidArgumentError`
            raised by iterating a `make_dataset` or `tfds_dataset` pipeline
            (or by `model.fit` on one).

    Returns:
        The `DataError` naming the bad file, or `None` if `error` does not
        come from a bad data file.
    """
    if isinstance(error, DataError):
        return error
    text = getattr(error, "message", None) or str(error)
    start = text.find(_MARK)
    if start < 0:
        return None
    start += len(_MARK)
    end = start
    while end < len(text) and text[end] in "0123456789abcdef":
        end += 1
    try:
        payload = json.loads(binascii.unhexlify(text[start:end]).decode("utf-8"))
    except (ValueError, binascii.Error):
        return None
    return DataError(payload["message"], payload["path"])


def release_iterators(error):
    """Frees the tf.data iterators an exception's traceback keeps alive.

    The frames of a failed `fit` (or loop) hold the iterator; left to the
    cyclic garbage collector it is destroyed in whatever thread runs it,
    possibly a TensorFlow thread inside a Python decode (which then waits
    for itself), or at interpreter exit while decodes are in flight. This
    clears those frames and collects them now, in the calling thread.

    Args:
        error: the exception whose traceback to release.
    """
    traceback.clear_frames(error.__traceback__)
    gc.collect()


@contextlib.contextmanager
def data_errors():
    """Re-raises a bad data file met inside a pipeline as its `DataError`.

    The failed pipeline's iterators are released first (see
    `release_iterators`), so that the process can go on or exit cleanly.

    Example:

    ```python
    with data.data_errors():
        model.fit(train_ds, epochs=10)
    ```
    """
    try:
        yield
    except tf.errors.OpError as e:
        error = as_data_error(e)
        if error is None:
            raise
        release_iterators(e)
        raise error from None


@functools.cache
def _collect_at_exit():
    # Before the interpreter finalizes, free (in the main thread, where it
    # is safe) any iterator that only a dropped exception still holds, so
    # that no TensorFlow thread runs a decode during finalization.
    atexit.register(gc.collect)


def guarded(function, channels, mask_dtype):
    """Wraps a `(image, mask)` decoder for `tf.numpy_function`: never raises.

    A `DataError` becomes empty arrays and the encoded error (an empty
    string when all is well); after the first one every later call returns
    the same error at once, so that little Python still runs while the
    pipeline stops, and whichever element the pipeline reports first names
    the file. Other exceptions (bugs) are carried the same way, with their
    type.

    Args:
        function: callable returning `(image, mask)` or raising.
        channels: int, the image channels.
        mask_dtype: the NumPy dtype of the mask.

    Returns:
        A callable returning `(image, mask, error)`.
    """
    _collect_at_exit()
    failed = []
    lock = threading.Lock()

    def empty(error):
        return (
            np.zeros((0, 0, channels), np.float32),
            np.zeros((0, 0, 1), mask_dtype),
            error,
        )

    def fail(error):
        with lock:
            if not failed:
                failed.append(error)
            return empty(failed[0])

    def call(*args):
        if failed:
            return empty(failed[0])
        try:
            image, mask = function(*args)
            return image, mask, b""
        except DataError as e:
            return fail(_encode_error(e))
        except Exception as e:  # noqa: BLE001 - a bug, reported by TF below.
            return fail(f"{type(e).__name__}: {e}".encode("utf-8", "replace"))

    return call


def checked_map(function, channels, mask_dtype, name):
    """A dataset map function calling a `guarded` Python decoder.

    Args:
        function: callable of tensors' NumPy values returning `(image,
            mask)` or raising a `DataError`.
        channels: int, the image channels.
        mask_dtype: the NumPy dtype of the mask.
        name: str, the name of the `numpy_function` op.

    Returns:
        A function of tensors returning `(image, mask)`; a bad sample stops
        the pipeline with an `InvalidArgumentError` that `as_data_error`
        reads.
    """
    call = guarded(function, channels, mask_dtype)

    def decode_map(*args):
        image, mask, error = tf.numpy_function(
            call,
            list(args),
            (tf.float32, tf.as_dtype(mask_dtype), tf.string),
            stateful=False,
            name=name,
        )
        ok = tf.debugging.Assert(
            tf.equal(tf.strings.length(error), 0), [error], summarize=1
        )
        with tf.control_dependencies([ok]):
            image = tf.identity(image)
            mask = tf.identity(mask)
        image = tf.ensure_shape(image, (None, None, channels))
        mask = tf.ensure_shape(mask, (None, None, 1))
        return image, mask

    return decode_map


def _memory_map(arrays, channels, mask_dtype):
    """A map from sample index to `(image, mask)` sliced from packed tensors."""
    shapes = np.array([image.shape[:2] for image, _ in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    images = np.empty(offsets[-1] * channels, np.float32)
    masks = np.empty(offsets[-1], mask_dtype)
    for k, (image, mask) in enumerate(arrays):
        images[offsets[k] * channels : offsets[k + 1] * channels] = image.ravel()
        masks[offsets[k] : offsets[k + 1]] = mask.ravel()
    images = tf.constant(images)
    masks = tf.constant(masks)
    shapes = tf.constant(shapes)
    offsets = tf.constant(offsets)

    def decode_map(index):
        start, end = offsets[index], offsets[index + 1]
        height, width = shapes[index][0], shapes[index][1]
        image = tf.reshape(
            images[start * channels : end * channels],
            tf.stack([height, width, channels]),
        )
        mask = tf.reshape(masks[start:end], tf.stack([height, width, 1]))
        image = tf.ensure_shape(image, (None, None, channels))
        mask = tf.ensure_shape(mask, (None, None, 1))
        return image, mask

    return decode_map


def _seeds(seed, stream):
    """An endless, seeded stream of `(2,)` seeds, new in every epoch."""
    return tf.data.Dataset.random(
        seed=2 * seed + stream, rerandomize_each_iteration=True
    ).batch(2)


def _random_crop(size, augmentation, pair, seed):
    image, mask = pair
    if augmentation is not None and augmentation.scale_range is not None:
        return augment.scaled_crop_pair(
            image,
            mask,
            size,
            augmentation.scale_range,
            seed,
            augmentation.mask_interpolation,
        )
    fractions = tf.random.stateless_uniform((2,), seed)
    return processing.crop_or_pad_pair(image, mask, size, fractions)


def finish(ds, settings, shuffled=False, may_fail=False):
    """Turns a dataset of decoded `(image, mask)` into batches for `fit`.

    Args:
        ds: dataset of float32 `(height, width, channels)` images and integer
            `(height, width, 1)` masks, any size.
        settings: `Settings` from `processing_settings`.
        shuffled: bool, whether `ds` is already shuffled (then it is not
            shuffled again). Defaults to `False`.
        may_fail: bool, whether an element of `ds` can still fail while it
            is read (a Python decoder: data larger than `MEMORY_LIMIT`, or
            TFDS). Such a dataset is not cached: after a pass that failed,
            TensorFlow's cache may take the elements read before the error
            for the whole dataset, and a second pass would silently drop
            the bad sample (seen with `cache()` on TF 2.21). Defaults to
            `False`.

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
    if settings.cache is not False and not may_fail:
        ds = ds.cache("" if settings.cache is True else settings.cache)
    if training:
        if settings.shuffle_buffer and not shuffled:
            ds = ds.shuffle(
                settings.shuffle_buffer,
                seed=settings.seed,
                reshuffle_each_iteration=True,
            )
        if settings.resize_mode == "crop":
            ds = tf.data.Dataset.zip((ds, _seeds(settings.seed, 0)))
            ds = ds.map(
                functools.partial(_random_crop, size, augmentation),
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
    return _load_one(pairs[int(index)], options)


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
    pixel_scaling="dtype",
    depth=4,
):
    """Builds a `tf.data` pipeline of image/mask batches for `model.fit`.

    Every file is decoded (OpenCV, in threads) and checked here, before the
    pipeline exists: a missing, empty, truncated or corrupt file, NaN or
    infinite pixels, an image and mask of different sizes, mask values
    that do not fit `num_classes`, unsupported channels - any problem
    raises a `DataError` that names the file (and `.path`); nothing is
    skipped. Data up to `MEMORY_LIMIT` bytes decoded is then kept in memory
    and the pipeline runs TF ops only; larger data is decoded again while
    the pipeline runs (see the module docstring). The stages are: decode
    (parallel), resize (or centre crop/pad when not training), cache,
    shuffle, random crop and augmentation (training only, seeded,
    stateless), batch, prefetch (`AUTOTUNE`).

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
        pixel_scaling: `"dtype"` (divide by 255 or 65535) or `"minmax"`
            (each image's range to [0, 1]). Defaults to `"dtype"`.
        depth: int, the depth of the model, to check `image_size`.
            Defaults to `4`.

    Returns:
        A `tf.data.Dataset` of `(image, target)`: image float32
        `(batch, height, width, channels)` in [0, 1]; target float32 0/1
        `(batch, height, width, 1)` for `num_classes=1`, int32 class indices
        `(batch, height, width, 1)` otherwise, or a dict of them keyed by
        `output_names`.

    Raises:
        DataError: a file is bad; the message says what was expected.
        InputError: a bad argument.

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
        pixel_scaling=pixel_scaling,
        depth=depth,
    )
    options = settings.decode
    pairs = _check_pairs_argument(pairs, options.num_classes)
    mask_dtype = decode.mask_dtype(options.num_classes)
    arrays, errors = load_pairs(pairs, options)
    if errors:
        raise first_error(pairs, errors)
    may_fail = arrays is None  # decoded by Python while it is read
    if arrays is not None:
        decode_map = _memory_map(arrays, options.channels, mask_dtype)
        del arrays
    else:
        decode_map = checked_map(
            functools.partial(_load_index, pairs, options),
            options.channels,
            mask_dtype,
            "load_pair",
        )

    ds = tf.data.Dataset.range(len(pairs))
    shuffled = False
    if (
        settings.training
        and settings.shuffle_buffer
        and (settings.cache is False or may_fail)
    ):
        # Without a cache, shuffle the cheap indices instead of decoded images.
        ds = ds.shuffle(
            settings.shuffle_buffer, seed=settings.seed, reshuffle_each_iteration=True
        )
        shuffled = True
    ds = ds.map(decode_map, num_parallel_calls=AUTOTUNE)
    return finish(ds, settings, shuffled=shuffled, may_fail=may_fail)


def check_pairs(pairs, **kwargs):
    """Decodes every pair now and lists the problems instead of raising.

    `make_dataset` runs the same check (`load_pairs`) and raises a
    `DataError` for the first bad file. This function returns every
    problem, so that bad samples can be fixed, or dropped knowingly, before
    training.

    Args:
        pairs: list of `SamplePair`.
        **kwargs: the `make_dataset` arguments that decide how files are
            read: `channels`, `num_classes`, `mask_threshold`,
            `invert_mask`, `mask_map`, `pixel_scaling` (others are checked
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
    pairs = [SamplePair(*pair) for pair in pairs]
    _, errors = load_pairs(pairs, options, keep=False)
    return [(pairs[index].stem, str(error)) for index, error in errors]
