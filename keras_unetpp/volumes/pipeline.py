"""Volume files -> checked arrays -> a `tf.data` pipeline of 3D patches.

As in the 2D pipeline (`keras_unetpp.data.pipeline`), every file is read and
checked *before* the pipeline exists (`load_volumes`, in threads), and a bad
one raises a `DataError` naming it. The checked, normalized (and resampled)
volumes are then packed into a few tensors held in memory (the cache) and
the pipeline cuts patches out of them with TensorFlow ops only: no Python
runs while it is read.

Training pipelines draw one random patch per volume and epoch (in a
shuffled order). A share of them (`foreground_share`) is centred near a
foreground voxel drawn at random (class imbalance is extreme in 3D: the
hippocampus is about 5% of its crops, a lung nodule far less); the others
lie anywhere in the volume. A volume smaller than the patch is zero-padded
around (the label map with background). Augmentation flips each spatial
axis with probability 1/2 and turns the patch by a random quarter turn in
its last two (in-plane) axes (half turns only for a non-square patch
face); image and label map get the very same transform. Evaluation
pipelines give whole volumes, zero-padded at the end of each axis to a
multiple of the model's stride.
"""

import collections
import concurrent.futures
import functools

import numpy as np
import tensorflow as tf

from keras_unetpp.data.pipeline import CHECK_THREADS, MEMORY_LIMIT, first_error
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.validation import check_bool, check_choice, check_int, check_number
from keras_unetpp.volumes import io, processing

AUTOTUNE = tf.data.AUTOTUNE

# Foreground voxels kept per volume to draw patch centres from (a seeded
# subsample beyond this).
MAX_FOREGROUND_VOXELS = 100_000

Preprocessing = collections.namedtuple(
    "Preprocessing", ["num_classes", "channels", "intensity", "ct_window", "spacing"]
)
Preprocessing.__doc__ = """How volume files become model inputs (`preprocessing()`)."""


def preprocessing(
    num_classes=1,
    channels=1,
    intensity="zscore",
    ct_window=processing.DEFAULT_CT_WINDOW,
    spacing=None,
):
    """Checks the reading and normalization settings into a `Preprocessing`.

    Args:
        num_classes: int, 1 for binary label maps (values 0/1), more for
            class indices 0..num_classes-1. Defaults to `1`.
        channels: int, the image channels. Defaults to `1`.
        intensity: `"zscore"`, `"zscore-nonzero"`, `"ct"` or `"none"` (see
            `keras_unetpp.volumes.processing`). Defaults to `"zscore"`.
        ct_window: `(low, high)` in Hounsfield units for `"ct"`. Defaults
            to `(-1000.0, 1000.0)`.
        spacing: `None` (keep each file's voxel grid) or the target voxel
            size `(depth, height, width)` (e.g. mm), read against each
            NIfTI header's spacing; images are resampled linearly, label
            maps by nearest neighbour. Defaults to `None`.

    Returns:
        A `Preprocessing`.
    """
    num_classes = check_int(num_classes, "num_classes", 1, 65535)
    channels = check_int(channels, "channels", 1)
    check_choice(intensity, "intensity", processing.INTENSITIES)
    ct_window = processing.check_ct_window(ct_window)
    if spacing is not None:
        try:
            spacing = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            spacing = ()
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(
                "`spacing` must be None or 3 positive voxel sizes (depth, "
                f"height, width). Received: spacing={spacing!r}"
            )
    return Preprocessing(num_classes, channels, intensity, ct_window, spacing)


def as_preprocessing(settings):
    """`settings` (a `Preprocessing`, a dict of its arguments or `None`) checked."""
    if isinstance(settings, Preprocessing):
        return settings
    return preprocessing(**(settings or {}))


def target_shape(volume, settings, path):
    """The spatial shape a volume is given to the model at."""
    shape = volume.array.shape[:3]
    if settings.spacing is None:
        return tuple(shape)
    if volume.spacing is None:
        raise DataError(
            f"{path}: no voxel spacing (a .npy file has no header) to resample "
            f"to spacing={settings.spacing}; use NIfTI files or spacing=None",
            path=path,
        )
    return processing.resampled_shape(shape, volume.spacing, settings.spacing)


def load_image(path, settings):
    """Reads, checks, normalizes and resamples one image volume.

    Returns:
        `(array, volume)`: float32 `(depth, height, width, channels)` as the
        model takes it, and the `io.Volume` as read (its shape, affine and
        header).
    """
    settings = as_preprocessing(settings)
    volume = io.read_image(path, settings.channels)
    image = processing.normalize_intensity(
        volume.array, settings.intensity, settings.ct_window
    )
    shape = target_shape(volume, settings, path)
    if shape != image.shape[:3]:
        image = processing.resample(image, shape, order=1)
    return np.ascontiguousarray(image, np.float32), volume


def load_pair(pair, settings):
    """Reads and checks one `VolumePair`.

    Returns:
        `(image, label)`: float32 `(depth, height, width, channels)` and
        uint8 (or uint16) `(depth, height, width)`, on the same grid.

    Raises:
        DataError: a bad file, named.
    """
    settings = as_preprocessing(settings)
    image, volume = load_image(pair.image, settings)
    label = io.read_label(pair.label, settings.num_classes, volume.array.shape[:3])
    if label.array.shape != image.shape[:3]:
        label = label._replace(
            array=processing.resample(label.array, image.shape[:3], order=0)
        )
    return image, np.ascontiguousarray(label.array)


def _attempt(pair, settings):
    try:
        return load_pair(pair, settings), None
    except DataError as e:
        return None, e


def load_volumes(pairs, settings=None, threads=None):
    """Reads and checks every pair now, in threads; the one full check.

    Args:
        pairs: list of `VolumePair` with label maps.
        settings: a `Preprocessing` or a dict of `preprocessing()`
            arguments. Defaults to `None` (the defaults).
        threads: int, or `None` for as many as the 2D check uses. Defaults
            to `None`.

    Returns:
        A list of `(image, label)` (see `load_pair`), in the order of
        `pairs`.

    Raises:
        DataError: the first bad file (the message counts the others).
    """
    settings = as_preprocessing(settings)
    pairs = check_pairs(pairs)
    threads = CHECK_THREADS if threads is None else threads
    loaded, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        attempt = functools.partial(_attempt, settings=settings)
        for index, (arrays, error) in enumerate(pool.map(attempt, pairs)):
            if error is not None:
                errors.append((index, error))
            else:
                loaded.append(arrays)
    if errors:
        raise first_error(pairs, errors)
    return loaded


def check_volumes(pairs, settings=None):
    """Reads every pair and lists the problems instead of raising.

    Returns:
        A list of `(stem, message)`, empty when every pair is fine.
    """
    settings = as_preprocessing(settings)
    pairs = check_pairs(pairs)
    problems = []
    for pair in pairs:
        _, error = _attempt(pair, settings)
        if error is not None:
            problems.append((pair.stem, str(error)))
    return problems


def check_pairs(pairs):
    """`pairs` as a non-empty list of `VolumePair`s with label maps."""
    try:
        pairs = [io.VolumePair(*p) for p in pairs]
    except TypeError:
        raise InputError(
            "`pairs` must be a list of VolumePair(stem, image, label), e.g. "
            f"from volume_pairs(). Received: pairs={pairs!r:.200}"
        ) from None
    if not pairs:
        raise InputError("`pairs` is empty: nothing to load. Received: pairs=[]")
    for pair in pairs:
        if pair.label is None:
            raise InputError(
                f"Sample {pair.stem!r} has no label map; training and "
                "evaluation need one. Received: label=None"
            )
    return pairs


def foreground_voxels(label, seed=0, limit=MAX_FOREGROUND_VOXELS):
    """The `(z, y, x)` coordinates of the foreground (label > 0) voxels.

    Returns:
        int32 array `(n, 3)`; a seeded subsample of `limit` rows when there
        are more.
    """
    coords = np.argwhere(np.asarray(label) > 0).astype(np.int32)
    if len(coords) > limit:
        rng = np.random.default_rng(seed)
        coords = coords[np.sort(rng.choice(len(coords), limit, replace=False))]
    return coords


def _pack(volumes, channels, seed):
    """Packs `(image, label)` arrays into tensors and a map index -> volume."""
    total = sum(image.nbytes + label.nbytes for image, label in volumes)
    if total > MEMORY_LIMIT:
        raise InputError(
            f"The volumes take {total / 2**30:.2f} GiB decoded; the volume "
            f"pipeline keeps them in memory, up to {MEMORY_LIMIT / 2**30:.0f} "
            "GiB. Use fewer volumes, or a coarser `spacing`."
        )
    shapes = np.array([image.shape[:3] for image, _ in volumes], np.int64)
    sizes = np.prod(shapes, axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    coords = [foreground_voxels(v[1], seed + k) for k, v in enumerate(volumes)]
    counts = np.array([len(c) for c in coords], np.int64)
    # One dummy row after each volume's rows, so that an index is always valid.
    coord_offsets = np.concatenate([[0], np.cumsum(counts + 1)])
    packed_coords = np.concatenate(
        [np.concatenate([c, np.zeros((1, 3), np.int32)]) for c in coords]
    )
    label_dtype = volumes[0][1].dtype
    images = np.concatenate([image.ravel() for image, _ in volumes])
    labels = np.concatenate([label.ravel() for _, label in volumes]).astype(label_dtype)
    images, labels = tf.constant(images), tf.constant(labels)
    shapes_t, offsets_t = tf.constant(shapes), tf.constant(offsets)
    coords_t = tf.constant(packed_coords)
    counts_t, coord_offsets_t = tf.constant(counts), tf.constant(coord_offsets)

    def volume(index):
        start, end = offsets_t[index], offsets_t[index + 1]
        shape = shapes_t[index]
        image = tf.reshape(
            images[start * channels : end * channels],
            tf.concat([shape, [channels]], 0),
        )
        label = tf.reshape(labels[start:end], tf.concat([shape, [1]], 0))
        first = coord_offsets_t[index]
        fg = coords_t[first : first + counts_t[index] + 1]
        image = tf.ensure_shape(image, (None, None, None, channels))
        label = tf.ensure_shape(label, (None, None, None, 1))
        return image, label, fg, counts_t[index]

    return volume


def _seeds(seed, stream):
    return tf.data.Dataset.random(
        seed=2 * seed + stream, rerandomize_each_iteration=True
    ).batch(2)


def sample_patch(image, label, foreground, count, seed, patch, share):
    """One random patch of a volume (TF ops), forced onto foreground at `share`.

    Args:
        image: `(depth, height, width, channels)` tensor.
        label: `(depth, height, width, 1)` tensor.
        foreground: int32 `(count + 1, 3)` foreground coordinates (the last
            row a placeholder).
        count: int64 scalar, the number of foreground voxels.
        seed: int64 `(2,)` stateless seed.
        patch: tuple of 3 ints.
        share: float, the probability of a patch forced onto foreground.

    Returns:
        `(image, label)` patches of spatial shape `patch`.
    """
    patch_t = tf.constant(patch, tf.int32)
    shape = tf.shape(image, out_type=tf.int32)[:3]
    pad = tf.maximum(patch_t - shape, 0)
    before = pad // 2
    widths = tf.stack([before, pad - before], axis=1)
    image = tf.pad(image, tf.concat([widths, [[0, 0]]], 0))
    label = tf.pad(label, tf.concat([widths, [[0, 0]]], 0))
    room = shape + pad - patch_t
    seeds = [tf.cast(seed, tf.int64) + tf.constant([0, k], tf.int64) for k in range(4)]
    forced = tf.logical_and(
        tf.random.stateless_uniform((), seeds[0]) < share, count > 0
    )
    anywhere = tf.cast(
        tf.floor(
            tf.random.stateless_uniform((3,), seeds[1]) * tf.cast(room + 1, tf.float32)
        ),
        tf.int32,
    )
    index = tf.random.stateless_uniform(
        (), seeds[2], 0, tf.maximum(tf.cast(count, tf.int32), 1), tf.int32
    )
    offset = tf.random.stateless_uniform((3,), seeds[3], 0, 2**30, tf.int32) % patch_t
    centre = foreground[index] + before
    on_foreground = tf.clip_by_value(centre - offset, 0, room)
    corner = tf.minimum(tf.where(forced, on_foreground, anywhere), room)
    begin = tf.concat([corner, [0]], 0)
    image = tf.slice(image, begin, tf.concat([patch_t, [-1]], 0))
    label = tf.slice(label, begin, tf.concat([patch_t, [-1]], 0))
    image = tf.ensure_shape(image, (*patch, image.shape[-1]))
    label = tf.ensure_shape(label, (*patch, 1))
    return image, label


def augment_pair(image, label, seed):
    """Random flips of each axis and an in-plane quarter turn, on both alike.

    Args:
        image: `(depth, height, width, channels)` tensor.
        label: `(depth, height, width, 1)` tensor.
        seed: int64 `(2,)` stateless seed.

    Returns:
        The transformed `(image, label)`; a quarter turn swaps height and
        width, so for a non-square in-plane shape only half turns are
        drawn.
    """
    seed = tf.cast(seed, tf.int64)
    flips = tf.random.stateless_uniform((3,), seed) < 0.5
    for axis in range(3):
        image, label = tf.cond(
            flips[axis],
            lambda i=image, m=label, a=axis: (tf.reverse(i, [a]), tf.reverse(m, [a])),
            lambda i=image, m=label: (i, m),
        )
    height, width = image.shape[1], image.shape[2]
    square = height is not None and height == width
    turns = tf.random.stateless_uniform(
        (), seed + tf.constant([0, 1], tf.int64), 0, 4 if square else 2, tf.int32
    )
    if not square:
        turns = 2 * turns
    shape = image.shape
    image = tf.ensure_shape(tf.image.rot90(image, turns), shape)
    label = tf.ensure_shape(tf.image.rot90(label, turns), (*shape[:3], 1))
    return image, label


def _pad_to_stride(image, label, stride):
    shape = tf.shape(image)[:3]
    pad = (-shape) % stride
    widths = tf.concat([tf.stack([tf.zeros_like(pad), pad], axis=1), [[0, 0]]], 0)
    image = tf.ensure_shape(tf.pad(image, widths), (None, None, None, image.shape[-1]))
    label = tf.ensure_shape(tf.pad(label, widths), (None, None, None, 1))
    return image, label


def check_patch_size(patch_size, depth):
    """`patch_size` as 3 ints, each a positive multiple of `2**depth`."""
    stride = 2 ** int(depth)
    patch = (patch_size,) * 3 if isinstance(patch_size, int) else patch_size
    try:
        patch = tuple(patch)
    except TypeError:
        patch = ()
    if len(patch) != 3 or not all(
        isinstance(p, (int, np.integer))
        and not isinstance(p, bool)
        and p > 0
        and p % stride == 0
        for p in patch
    ):
        raise InputError(
            "`patch_size` must be an int or (depth, height, width), positive "
            f"multiples of 2**depth = {stride}. Received: patch_size={patch_size!r}"
        )
    return tuple(int(p) for p in patch)


def make_volume_dataset(
    pairs,
    patch_size=(32, 32, 32),
    batch_size=2,
    training=False,
    foreground_share=0.33,
    augment=True,
    output_names=None,
    num_classes=1,
    channels=1,
    intensity="zscore",
    ct_window=processing.DEFAULT_CT_WINDOW,
    spacing=None,
    seed=0,
    depth=4,
    deterministic=False,
):
    """Builds a `tf.data` pipeline of 3D patches (training) or volumes.

    Every file is read and checked first (`load_volumes`): a missing or
    unreadable file, a 2D file, NaN or infinite voxels, an image and label
    map of different shapes, label values outside `num_classes`, a `.npy`
    file where `spacing` asks for a header: each raises a `DataError` that
    names the file. The volumes are normalized (`intensity`), resampled to
    `spacing` if given, and kept in memory; the pipeline then runs TF ops
    only: random patch (training) or the whole volume padded to the
    model's stride (evaluation), augmentation, batch, prefetch.

    Args:
        pairs: list of `VolumePair` (from `volume_pairs`).
        patch_size: int or `(depth, height, width)`, multiples of
            `2**depth`, the training patch. Defaults to `(32, 32, 32)`.
        batch_size: int, patches (or volumes) per batch. Defaults to `2`.
        training: bool: random patches, shuffled, augmented; otherwise whole
            volumes in file order. Defaults to `False`.
        foreground_share: float in [0, 1], the share of training patches
            forced to contain a foreground voxel (of volumes that have
            one). Defaults to `0.33` (nnU-Net's).
        augment: bool, random flips and in-plane quarter turns (training
            only). Defaults to `True`.
        output_names: model output names to give the target to each by
            name (deep supervision), or `None`. Defaults to `None`.
        num_classes: int, 1 (binary, float32 0/1 targets) or more (int32
            class indices). Defaults to `1`.
        channels: int, image channels. Defaults to `1`.
        intensity: `"zscore"`, `"zscore-nonzero"`, `"ct"` or `"none"`.
            Defaults to `"zscore"`.
        ct_window: `(low, high)` Hounsfield units for `"ct"`. Defaults to
            `(-1000.0, 1000.0)`.
        spacing: target voxel size `(depth, height, width)`, or `None`.
            Defaults to `None`.
        seed: int, seeds the order, patches and augmentation (each epoch
            differs, every run is the same). Defaults to `0`.
        depth: int, the model's depth (its stride is `2**depth`). Defaults
            to `4`.
        deterministic: bool, fixed element order of the parallel stages of
            a training pipeline. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of `(image, target)`: image float32 `(batch,
        depth, height, width, channels)`, target `(batch, depth, height,
        width, 1)` (float32 0/1 or int32 classes) or a dict by
        `output_names`.

    Example:

    ```python
    from keras_unetpp import volumes
    pairs = volumes.volume_pairs("msd_hippocampus/images", "msd_hippocampus/labels")
    train_ds = volumes.make_volume_dataset(
        pairs, patch_size=(32, 48, 48), training=True, num_classes=3, depth=3)
    ```
    """
    settings = preprocessing(num_classes, channels, intensity, ct_window, spacing)
    depth = check_int(depth, "depth", 1, 6)
    patch = check_patch_size(patch_size, depth)
    batch_size = check_int(batch_size, "batch_size")
    training = check_bool(training, "training")
    augment = check_bool(augment, "augment")
    share = check_number(foreground_share, "foreground_share", 0.0, 1.0)
    seed = check_int(seed, "seed", 0)
    deterministic = check_bool(deterministic, "deterministic")
    if isinstance(output_names, str):
        output_names = [output_names]
    volumes = load_volumes(pairs, settings)
    volume = _pack(volumes, settings.channels, seed)
    count = len(volumes)
    del volumes
    ds = tf.data.Dataset.range(count)
    if training:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        ds = tf.data.Dataset.zip((ds.map(volume), _seeds(seed, 0)))

        def sample(element, patch_seed):
            return sample_patch(*element, patch_seed, patch, share)

        ds = ds.map(sample, num_parallel_calls=AUTOTUNE)
        if augment:
            ds = tf.data.Dataset.zip((ds, _seeds(seed, 1)))
            ds = ds.map(
                lambda pair, s: augment_pair(pair[0], pair[1], s),
                num_parallel_calls=AUTOTUNE,
            )
        ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
    else:
        stride = 2**depth
        ds = ds.map(
            lambda index: _pad_to_stride(*volume(index)[:2], stride),
            num_parallel_calls=AUTOTUNE,
        )
        ds = ds.padded_batch(batch_size)
    binary = settings.num_classes == 1

    def to_target(image, label):
        label = tf.cast(label, tf.float32 if binary else tf.int32)
        if output_names is not None:
            return image, {name: label for name in output_names}
        return image, label

    ds = ds.map(to_target, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    return ds.with_options(options)
