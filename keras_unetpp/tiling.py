"""Sliding-window prediction of images and volumes of any size.

`predict_tiled` cuts each image into overlapping tiles of a fixed size,
predicts them in batches, and blends the tile predictions back into one
probability map with a weighted average, so that memory is bounded by the
tile batch instead of the image size. It uses NumPy and model calls only,
so it runs on every Keras backend.

The weighted average is normalized per pixel: with tile weights `w_t` and
tile predictions `p_t`, a pixel's output is `sum_t w_t p_t / sum_t w_t` over
the tiles that cover it. A model that predicts a constant therefore returns
that constant everywhere, and a pointwise model returns exactly its
untiled prediction. Tiles start at multiples of the model's stride, so that
each sees the pooling grid of the whole image.
"""

import itertools

import keras
import numpy as np

from keras_unetpp.description import describe, output_name, parse_head
from keras_unetpp.errors import InputError
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.validation import check_choice, check_int, check_number, is_int

BLENDINGS = ("gaussian", "constant")
TTAS = (None, "flips", "flips+rot90")
ACCURATE = "accurate"

# Gaussian weights are floored here (relative to their peak of 1), so that
# every pixel has a positive weight sum even for a tiny `sigma_scale`.
MIN_WEIGHT = 1e-8


def predict_tiled(
    model,
    images,
    tile_size,
    overlap=0.5,
    blending="gaussian",
    batch_size=8,
    tta=None,
    output=None,
    sigma_scale=0.125,
    stride=None,
):
    """Predicts images (or volumes) of any size tile by tile, blending tiles.

    Each image is padded (reflect, or edge where the image is too small to
    reflect) at the end of each spatial axis to a multiple of the model's
    stride and at least the tile size, and covered by a grid of tiles that
    overlap by at least `overlap` of the tile, the first tile at the start
    and the last flush with the end of the padded image. The tiles start at
    multiples of the stride, so that every tile sees the pooling grid of
    the whole image (see `keras_unetpp.tiling.tile_positions`). The tiles
    of all images are predicted in batches of `batch_size`, turned into
    probabilities (sigmoid or softmax of logits heads), and averaged per
    pixel with the weights of `blending`, normalized by the sum of the
    weights that cover each pixel. Peak memory is the output plus one batch
    of tiles through the network, whatever the image size.

    Blending weights, for a tile of size `t` along an axis, pixel `x` in
    `0..t-1`:

    - `"constant"`: 1 everywhere (a plain average of the overlapping tiles).
    - `"gaussian"`: `exp(-(x - (t - 1) / 2)**2 / (2 * sigma**2))` with
      `sigma = sigma_scale * t`, the product over the spatial axes, floored
      at `1e-8` (nnU-Net's importance map): tile centres, which see the
      most context, count most, and seams vanish.

    Test-time augmentation predicts each tile under every transform of
    `tta`, undoes the transform on the prediction and averages the
    probabilities: `"flips"` uses the flips of every subset of the spatial
    axes (4 in 2D, 8 in 3D), `"flips+rot90"` adds a 90-degree rotation in
    the last two spatial axes to each of them (the 8 symmetries of the
    square in 2D, 16 in 3D).

    The result is a probability map; thresholding (or `argmax` over the
    classes) is the caller's.

    Args:
        model: a keras_unetpp model (full, deep-supervision, pruned or
            inference-mode, `None` spatial dimensions or a static size equal
            to the tile), or any single-output Keras model that maps
            `(batch, *tile, channels)` to `(batch, *tile, classes)`
            probabilities, with `stride` given.
        images: array `(batch, height, width, channels)`, or
            `(batch, depth, height, width, channels)` for a 3D model; any
            spatial size, also smaller than a tile.
        tile_size: int, or one int per spatial axis; each a multiple of the
            model's stride.
        overlap: float in [0, 1), the fraction of a tile that neighbouring
            tiles share at least (more where the steps are rounded down to
            the stride or the tiles spread to end flush with the image).
            Defaults to `0.5`.
        blending: `"gaussian"` or `"constant"`. Defaults to `"gaussian"`.
        batch_size: int, tiles per model call. Defaults to `8`.
        tta: `None`, `"flips"` or `"flips+rot90"`. Defaults to `None`.
        output: which prediction of a keras_unetpp model: a head name
            `"output_l<L>"` (the pruned sub-network of that head is run, not
            the whole model) or `"accurate"` (the mean of the heads, as in
            `inference_model(model, "accurate")`: probabilities, or logits
            averaged before the sigmoid or softmax). `None` means the
            model's output for a single-output model and `"accurate"` for a
            deep-supervision model. Must be `None` for other models.
            Defaults to `None`.
        sigma_scale: float > 0, the Gaussian's standard deviation as a
            fraction of the tile size. Defaults to `0.125`.
        stride: int, the spatial sizes the model accepts are multiples of
            it. `None` means `2**depth` of the sub-network that runs for a
            keras_unetpp model (`describe(prune(model, L)).stride` for a
            head `"output_l<L>"`, `describe(model).stride` otherwise);
            required for other models (1 for a fully convolutional model
            without pooling). Defaults to `None`.

    Returns:
        A float32 NumPy array `(batch, *spatial, classes)` of probabilities,
        the spatial size of `images`.

    Raises:
        InputError: a bad argument: a tile that is not a multiple of the
            stride, `overlap` outside [0, 1), an unknown blending, TTA or
            output, images of the wrong rank or channel count, ...

    Example:

    ```python
    model = keras_unetpp.build(depth=4, deep_supervision=True)
    image = np.random.rand(1, 4001, 2999, 1).astype("float32")
    probabilities = keras_unetpp.predict_tiled(model, image, tile_size=256)
    masks = probabilities > 0.5
    fast = keras_unetpp.predict_tiled(model, image, 256, output="output_l2",
                                      tta="flips")
    ```
    """
    if not isinstance(model, keras.Model):
        raise InputError(f"`model` must be a keras.Model. Received: model={model!r}")
    overlap = check_number(overlap, "overlap", 0.0, 1.0, high_open=True)
    check_choice(blending, "blending", BLENDINGS)
    batch_size = check_int(batch_size, "batch_size")
    check_choice(tta, "tta", TTAS)
    sigma_scale = check_number(sigma_scale, "sigma_scale", 0.0, low_open=True)
    net, stride, activation = _prediction_model(model, output, stride)
    return blend_tiles(
        net,
        images,
        tile_size,
        stride,
        activation=activation,
        overlap=overlap,
        blending=blending,
        batch_size=batch_size,
        tta=tta,
        sigma_scale=sigma_scale,
    )


def blend_tiles(
    network,
    images,
    tile_size,
    stride,
    activation=None,
    overlap=0.5,
    blending="gaussian",
    batch_size=8,
    tta=None,
    sigma_scale=0.125,
):
    """`predict_tiled`'s sliding window around any single-output network.

    `predict_tiled` picks the sub-network of a keras_unetpp model's head
    and its stride, then calls this; call it directly for a network that
    `predict_tiled` cannot interpret, e.g. a keras_unetpp model wrapped in
    a model of your own.

    Args:
        network: a single-output `keras.Model` mapping
            `(batch, *tile, channels)` to `(batch, *tile, classes)`.
        images: array `(batch, *spatial, channels)`, any spatial size.
        tile_size: int or one int per spatial axis, multiples of `stride`.
        stride: int, the multiple the network's spatial sizes must be.
        activation: `None` (the network returns probabilities), or
            `"sigmoid"` / `"softmax"` to apply to its logits per tile.
            Defaults to `None`.
        overlap, blending, batch_size, tta, sigma_scale: as in
            `predict_tiled`.

    Returns:
        float32 NumPy array `(batch, *spatial, classes)`.

    Example:

    ```python
    from keras_unetpp import tiling
    wrapped = keras.Sequential([keras.Input((None, None, 1)), model])
    probabilities = tiling.blend_tiles(wrapped, images, 256, stride=16)
    ```
    """
    overlap = check_number(overlap, "overlap", 0.0, 1.0, high_open=True)
    check_choice(blending, "blending", BLENDINGS)
    batch_size = check_int(batch_size, "batch_size")
    check_choice(tta, "tta", TTAS)
    check_choice(activation, "activation", (None, "sigmoid", "softmax"))
    sigma_scale = check_number(sigma_scale, "sigma_scale", 0.0, low_open=True)
    stride = check_int(stride, "stride")
    net = network
    images = np.asarray(images)
    rank = _check_images(net, images)
    tile = _tile_shape(tile_size, rank, stride, net, tta)

    spatial = images.shape[1:-1]
    padded = _pad(images, [padded_size(n, t, stride) for n, t in zip(spatial, tile)])
    grid = [tile_positions(n, t, overlap, stride) for n, t in zip(spatial, tile)]
    weights = tile_weights(tile, blending, sigma_scale)
    weight_sum = np.zeros(padded.shape[1:-1], dtype=np.float32)
    for corner in itertools.product(*grid):
        weight_sum[_window(corner, tile)] += weights
    tile_transforms = transforms(rank, tta)

    result = None
    jobs = list(itertools.product(range(len(images)), itertools.product(*grid)))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        batch = np.stack([padded[(i, *_window(c, tile))] for i, c in chunk])
        probabilities = _predict_batch(net, batch, tile_transforms, activation)
        if result is None:
            result = np.zeros(
                (*padded.shape[:-1], probabilities.shape[-1]), dtype=np.float32
            )
        probabilities *= weights[..., None]
        for (i, corner), tile_prediction in zip(chunk, probabilities):
            result[(i, *_window(corner, tile))] += tile_prediction
    if result is None:  # An empty batch of images.
        classes = net.outputs[0].shape[-1] or 1
        return np.zeros((*images.shape[:-1], classes), dtype=np.float32)
    result /= weight_sum[None, ..., None]
    crop = (slice(None), *(slice(0, n) for n in spatial))
    return np.ascontiguousarray(result[crop])


def tile_weights(tile, blending="gaussian", sigma_scale=0.125):
    """The blending weights of one tile, before the per-pixel normalization.

    Args:
        tile: tuple of ints, the tile's spatial shape.
        blending: `"gaussian"` or `"constant"`. Defaults to `"gaussian"`.
        sigma_scale: float, the Gaussian's standard deviation as a fraction
            of the tile size along each axis. Defaults to `0.125`.

    Returns:
        A float32 array of shape `tile`: ones for `"constant"`; for
        `"gaussian"`, the product over the axes of
        `exp(-(x - (t - 1) / 2)**2 / (2 * (sigma_scale * t)**2))`, whose
        peak is 1, floored at `1e-8`.

    Example:

    ```python
    from keras_unetpp.tiling import tile_weights
    tile_weights((4, 4), "constant").sum()  # 16.0
    ```
    """
    check_choice(blending, "blending", BLENDINGS)
    tile = tuple(int(t) for t in tile)
    if blending == "constant":
        return np.ones(tile, dtype=np.float32)
    weights = np.ones(tile, dtype=np.float64)
    for axis, t in enumerate(tile):
        x = np.arange(t, dtype=np.float64)
        sigma = sigma_scale * t
        profile = np.exp(-((x - (t - 1) / 2) ** 2) / (2 * sigma**2))
        shape = [1] * len(tile)
        shape[axis] = t
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    return np.maximum(weights, MIN_WEIGHT).astype(np.float32)


def padded_size(size, tile, stride=1):
    """The length an axis of `size` pixels is padded to: a multiple of
    `stride`, and at least `tile`.

    Example:

    ```python
    from keras_unetpp.tiling import padded_size
    padded_size(4001, 256, 16)  # 4016
    padded_size(3, 256, 16)     # 256
    ```
    """
    return max(int(tile), -(-int(size) // int(stride)) * int(stride))


def tile_positions(size, tile, overlap=0.5, stride=1):
    """Where the tiles start along one axis of `size` pixels.

    The axis is first padded to `padded_size(size, tile, stride)`. The
    tiles start at multiples of `stride`, so that each tile sees the same
    pooling grid as the whole (padded) image does: a network with `depth`
    poolings is shift-variant for shifts that are not multiples of
    `2**depth`. They are as few as keep the steps at most
    `tile * (1 - overlap)` (rounded down to a multiple of the stride, at
    least one stride), spread evenly from 0 to `padded - tile`: neighbours
    share at least `overlap * tile` pixels (or `tile - stride`, if fewer).
    In units of
    the stride, the grid is mirror-symmetric (flipping the padded axis maps
    tiles onto tiles), except for the middle tile of an odd count when the
    span is odd, which is half a unit off.

    Args:
        size: int, the axis' length in pixels.
        tile: int, the tile's length, a multiple of `stride`.
        overlap: float in [0, 1). Defaults to `0.5`.
        stride: int, the model's stride. Defaults to `1`.

    Returns:
        A list of ints, the first 0, the last `padded - tile`.

    Example:

    ```python
    from keras_unetpp.tiling import tile_positions
    tile_positions(10, 4, 0.5)      # [0, 2, 4, 6]
    tile_positions(3, 4)            # [0] (the axis is padded to the tile)
    tile_positions(37, 8, 0.5, 4)   # [0, 4, 8, ..., 32] (padded to 40)
    ```
    """
    tile, stride = int(tile), int(stride)
    if stride < 1 or tile < stride or tile % stride:
        raise InputError(
            f"`tile` must be a positive multiple of `stride`. Received: "
            f"tile={tile}, stride={stride}"
        )
    padded = padded_size(size, tile, stride)
    units = _positions(padded // stride, tile // stride, float(overlap))
    return [unit * stride for unit in units]


def _positions(size, tile, overlap):
    if size <= tile:
        return [0]
    step = tile_step(tile, overlap)
    last = size - tile
    count = -(-last // step) + 1
    # Evenly spread, rounded to the nearest unit.
    even = [
        (2 * index * last + count - 1) // (2 * (count - 1)) for index in range(count)
    ]
    # Mirror the first half onto the second, so that the grid is symmetric.
    return [
        even[index] if 2 * index < count else last - even[count - 1 - index]
        for index in range(count)
    ]


def tile_step(tile, overlap):
    """The largest step between tiles (in stride units) that keeps `overlap`.

    Example:

    ```python
    from keras_unetpp.tiling import tile_step
    tile_step(16, 0.5)   # 8
    tile_step(1, 0.9)    # 1 (at least one unit)
    ```
    """
    return max(1, int(np.floor(tile * (1.0 - overlap) + 1e-9)))


def _window(corner, tile):
    return tuple(slice(c, c + t) for c, t in zip(corner, tile))


def _prediction_model(model, output, stride):
    """The single-output model to run, its stride and the head activation."""
    try:
        info = describe(model)
    except InputError:
        info = None
    if info is None:
        if output is not None:
            raise InputError(
                "`output` picks a head of a keras_unetpp model; this model "
                f"({model.name!r}) is not one, so it must be None. "
                f"Received: output={output!r}"
            )
        if stride is None:
            raise InputError(
                f"Model {model.name!r} was not built by keras_unetpp, so its "
                "stride (the multiple its spatial sizes must be) is unknown; "
                "pass it, e.g. stride=1 for a model without pooling. "
                "Received: stride=None"
            )
        if len(model.outputs) != 1:
            raise InputError(
                "predict_tiled needs a single-output model (one probability "
                f"map). Received: a model with {len(model.outputs)} outputs"
            )
        return model, check_int(stride, "stride"), None
    heads = tuple(output_name(level) for level in info.heads)
    choices = (None, ACCURATE, *heads)
    if output not in choices:
        raise InputError(
            f"`output` must be one of {choices} for model {model.name!r}. "
            f"Received: output={output!r}"
        )
    if output is None:
        output = ACCURATE if info.deep_supervision else info.outputs[0]
    if output == ACCURATE:
        net = inference_model(model, "accurate") if info.deep_supervision else model
    elif info.outputs == (output,):
        net = model
    else:
        net = prune(model, parse_head(output))
    # The stride of the sub-network that runs: a shallow head needs less.
    net_stride = describe(net).stride
    if stride is None:
        stride = net_stride
    elif not is_int(stride) or stride < 1 or stride % net_stride:
        raise InputError(
            f"`stride` must be a multiple of the stride of the model's "
            f"{output!r} output, 2**depth = {net_stride}. "
            f"Received: stride={stride!r}"
        )
    if info.head_activation is None:
        activation = "sigmoid" if info.num_classes == 1 else "softmax"
    else:
        activation = None
    return net, int(stride), activation


def _check_images(model, images):
    input_shape = tuple(model.inputs[0].shape)
    rank = len(input_shape) - 2
    if images.ndim != rank + 2:
        layout = "(batch, height, width, channels)"
        if rank == 3:
            layout = "(batch, depth, height, width, channels)"
        raise InputError(
            f"`images` must be a batch {layout} for this {rank}D model (add a "
            f"batch axis with images[None]). Received: shape={images.shape}"
        )
    channels = input_shape[-1]
    if channels is not None and images.shape[-1] != channels:
        raise InputError(
            f"The model takes {channels}-channel images. Received: shape={images.shape}"
        )
    if 0 in images.shape[1:]:
        raise InputError(
            f"`images` must have a non-empty spatial size and channels. "
            f"Received: shape={images.shape}"
        )
    return rank


def _tile_shape(tile_size, rank, stride, model, tta):
    tile = (tile_size,) * rank if is_int(tile_size) else tile_size
    try:
        tile = tuple(tile)
    except TypeError:
        tile = None
    if (
        tile is None
        or len(tile) != rank
        or not all(is_int(t) and t > 0 and t % stride == 0 for t in tile)
    ):
        raise InputError(
            f"`tile_size` must be an int or {rank} ints, each a positive "
            f"multiple of the model's stride {stride} (each level halves the "
            f"size). Received: tile_size={tile_size!r}"
        )
    tile = tuple(int(t) for t in tile)
    static = tuple(model.inputs[0].shape[1:-1])
    if any(s is not None and s != t for s, t in zip(static, tile)):
        raise InputError(
            f"The model takes spatial size {static}; `tile_size` must match "
            f"it. Received: tile_size={tile_size!r}"
        )
    if tta == "flips+rot90" and tile[-1] != tile[-2] and static[-1] is not None:
        raise InputError(
            "90-degree rotations turn a non-square tile around, which this "
            f"model's static input size {static} does not accept. Received: "
            f"tta={tta!r}, tile_size={tile_size!r}"
        )
    return tile


def _pad(images, sizes):
    """Pads the end of each spatial axis to `sizes` (reflect, else edge)."""
    for axis, target in enumerate(sizes, start=1):
        size = images.shape[axis]
        pad = target - size
        if pad > 0:
            widths = [(0, 0)] * images.ndim
            widths[axis] = (0, pad)
            mode = "reflect" if pad < size else "edge"
            images = np.pad(images, widths, mode=mode)
    return images


def transforms(rank, tta):
    """The test-time transforms of `tta` on a batch of rank-`rank` images.

    Args:
        rank: int, 2 for images, 3 for volumes.
        tta: `None`, `"flips"` or `"flips+rot90"`.

    Returns:
        A list of `(flip_axes, rotate)` pairs on the spatial axes `1..rank`
        of a batch: the flips of every subset of the axes, each also with a
        90-degree rotation in the last two spatial axes for `"flips+rot90"`;
        `[((), False)]` (the identity) for `None`.

    Example:

    ```python
    from keras_unetpp.tiling import transforms
    len(transforms(2, "flips"))         # 4
    len(transforms(3, "flips+rot90"))   # 16
    ```
    """
    if tta is None:
        return [((), False)]
    axes = range(1, rank + 1)
    flips = [
        combo
        for count in range(rank + 1)
        for combo in itertools.combinations(axes, count)
    ]
    rotations = (False, True) if tta == "flips+rot90" else (False,)
    return [(flip, rotate) for rotate in rotations for flip in flips]


def apply_transform(batch, transform, rank):
    """Applies one of `transforms(rank, tta)` to a NumPy batch."""
    return _apply(batch, transform, rank)


def invert_transform(batch, transform, rank):
    """Undoes `apply_transform(batch, transform, rank)` on a NumPy batch."""
    return np.ascontiguousarray(_invert(batch, transform, rank))


def _apply(batch, transform, rank):
    flip, rotate = transform
    if flip:
        batch = np.flip(batch, axis=flip)
    if rotate:
        batch = np.rot90(batch, 1, axes=(rank - 1, rank))
    return np.ascontiguousarray(batch)


def _invert(batch, transform, rank):
    flip, rotate = transform
    if rotate:
        batch = np.rot90(batch, -1, axes=(rank - 1, rank))
    if flip:
        batch = np.flip(batch, axis=flip)
    return batch


def _predict_batch(model, batch, transforms, activation):
    """The mean over `transforms` of the probabilities of one tile batch."""
    rank = batch.ndim - 2
    total = None
    for transform in transforms:
        tiles = _apply(batch, transform, rank)
        prediction = model.predict_on_batch(tiles)
        prediction = np.asarray(keras.ops.convert_to_numpy(prediction), np.float32)
        if prediction.ndim != tiles.ndim or prediction.shape[:-1] != tiles.shape[:-1]:
            raise InputError(
                "The model must return one prediction per pixel of its input "
                f"tiles. Received: tiles {tiles.shape}, predictions "
                f"{prediction.shape}"
            )
        prediction = _probabilities(prediction, activation)
        prediction = _invert(prediction, transform, rank)
        total = prediction if total is None else total + prediction
    if len(transforms) > 1:
        total /= len(transforms)
    return np.ascontiguousarray(total)


def _probabilities(logits, activation):
    if activation == "sigmoid":
        return np.exp(-np.logaddexp(0.0, -logits)).astype(np.float32)
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits
