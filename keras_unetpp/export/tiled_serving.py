"""Sliding-window prediction inside a serving graph, as `predict_tiled` does it.

`keras_unetpp.predict_tiled` is NumPy around model calls, so it cannot be
written into a SavedModel. `tiled_probabilities` is the same computation in
TensorFlow ops that trace with unknown batch, height and width: the same
padding (reflect, or edge where an axis is too small to mirror), the same
tile grid (`tiling.tile_positions`: tiles at multiples of the stride,
evenly spread, mirror-symmetric), the same blending weights
(`tiling.tile_weights`), the same test-time transforms and their inverses,
and the same per-pixel normalization. A SavedModel exported with
`export_pruned(..., tile_size=...)` therefore returns what `predict_tiled`
returns for the same sub-network, and its peak memory is that of one batch
of tiles, however large the request.
"""

import dataclasses

import tensorflow as tf

from keras_unetpp import tiling
from keras_unetpp.errors import InputError
from keras_unetpp.size_policy import pad_indices, transform_batch, untransform_batch
from keras_unetpp.validation import check_choice, check_int, check_number, is_int


@dataclasses.dataclass(frozen=True)
class TiledServing:
    """How a serving graph tiles its requests (the `predict_tiled` arguments).

    Attributes:
        tile_size: `(height, width)` of a tile (`(depth, height, width)`
            for volumes), multiples of the stride of every exported level.
        overlap: float in [0, 1), as in `predict_tiled`.
        blending: `"gaussian"` or `"constant"`.
        tta: `None`, `"flips"` or `"flips+rot90"`.
        batch_size: tiles per network call.
        sigma_scale: the Gaussian's standard deviation as a fraction of the
            tile.

    Example:

    ```python
    TiledServing.create(256, overlap=0.25, tta="flips")
    ```
    """

    tile_size: tuple
    overlap: float = 0.5
    blending: str = "gaussian"
    tta: str | None = None
    batch_size: int = 8
    sigma_scale: float = 0.125

    @classmethod
    def create(
        cls,
        tile_size,
        overlap=0.5,
        blending="gaussian",
        tta=None,
        batch_size=8,
        sigma_scale=0.125,
        rank=2,
    ):
        """A checked `TiledServing`.

        `tile_size` is an int or `(height, width)`; for volumes (`rank=3`)
        an int or `(depth, height, width)`.
        """
        tile = (tile_size,) * rank if is_int(tile_size) else tile_size
        try:
            tile = tuple(tile)
        except TypeError:
            tile = ()
        if len(tile) != rank or not all(is_int(t) and t > 0 for t in tile):
            axes = "(height, width)" if rank == 2 else "(depth, height, width)"
            raise InputError(
                f"`tile_size` must be a positive int or {axes}. "
                f"Received: tile_size={tile_size!r}"
            )
        check_choice(blending, "blending", tiling.BLENDINGS)
        check_choice(tta, "tta", tiling.TTAS)
        return cls(
            tile_size=tuple(int(t) for t in tile),
            overlap=check_number(overlap, "overlap", 0.0, 1.0, high_open=True),
            blending=blending,
            tta=tta,
            batch_size=check_int(batch_size, "tile_batch_size"),
            sigma_scale=check_number(sigma_scale, "sigma_scale", 0.0, low_open=True),
        )

    def check_stride(self, stride):
        """Raises an `InputError` unless every tile side is a multiple of `stride`."""
        if any(t % stride for t in self.tile_size):
            raise InputError(
                f"`tile_size` must be a multiple of the stride {stride} of every "
                "exported level (2**level; the accurate mode needs 2**depth). "
                f"Received: tile_size={self.tile_size}"
            )
        return self

    def to_dict(self):
        """The settings as recorded in the export metadata."""
        return {
            "tile_size": list(self.tile_size),
            "overlap": self.overlap,
            "blending": self.blending,
            "tta": self.tta,
            "batch_size": self.batch_size,
            "sigma_scale": self.sigma_scale,
            "description": (
                "the image is predicted tile by tile as keras_unetpp."
                "predict_tiled does, with these arguments"
            ),
        }

    def predict_tiled_arguments(self):
        """The keyword arguments of `predict_tiled` that give the same result."""
        return {
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "blending": self.blending,
            "tta": self.tta,
            "batch_size": self.batch_size,
            "sigma_scale": self.sigma_scale,
        }


def _pad_axis(images, axis, target):
    """Pads `axis` at its end to `target`: reflect, or edge if too short."""
    size = tf.shape(images)[axis]
    indices = pad_indices(size, target, target - size < size)
    return tf.gather(images, indices, axis=axis)


def _padded_size(size, tile, stride):
    return tf.maximum(tile, (size + stride - 1) // stride * stride)


def _positions(padded, tile, overlap, stride):
    """`tiling.tile_positions` for a padded axis length given as a tensor."""
    units = padded // stride
    tile_units = tile // stride
    step = tiling.tile_step(tile_units, overlap)
    last = units - tile_units
    count = tf.maximum((last + step - 1) // step + 1, 1)
    index = tf.range(count)
    denominator = tf.maximum(2 * (count - 1), 1)
    even = (2 * index * last + count - 1) // denominator
    mirrored = last - tf.gather(even, count - 1 - index)
    units_at = tf.where(2 * index < count, even, mirrored)
    return tf.where(last > 0, units_at, tf.zeros_like(units_at)) * stride


def _to_probabilities(outputs, output_activation):
    """Probabilities from the network's outputs (`None`: they are logits)."""
    outputs = tf.cast(outputs, tf.float32)
    if output_activation is not None:
        return outputs
    if outputs.shape[-1] == 1:
        return tf.sigmoid(outputs)
    return tf.nn.softmax(outputs)


def tiled_probabilities(network, images, settings, stride, output_activation):
    """Probabilities of a batch of images, tile by tile, in TensorFlow ops.

    Args:
        network: a single-output Keras model that maps
            `(batch, th, tw, channels)` tiles to `(batch, th, tw, classes)`
            (or tiles of volumes to their probabilities).
        images: float32 tensor `(batch, height, width, channels)` in [0, 1],
            any height and width (also smaller than a tile); or a batch of
            volumes `(batch, depth, height, width, channels)`.
        settings: `TiledServing`, with a tile of the images' rank.
        stride: int, the multiple the network needs (`2**level`).
        output_activation: what `network` returns: `"sigmoid"` or
            `"softmax"` probabilities, or `None` for logits (then a sigmoid
            for one class, a softmax for more is applied per tile, before
            blending, as `predict_tiled` does).

    Returns:
        float32 tensor `(batch, height, width, classes)` (or of the
        volumes' size), what `predict_tiled(network, images,
        **settings.predict_tiled_arguments())` returns for a keras_unetpp
        sub-network.
    """
    settings.check_stride(stride)
    tile = settings.tile_size
    images = tf.convert_to_tensor(images, tf.float32)
    rank = images.shape.rank - 2
    if len(tile) != rank:
        raise InputError(
            f"The tile {tile} is not of the inputs' spatial rank {rank}. "
            f"Received: images of rank {images.shape.rank}"
        )
    shape = tf.shape(images)
    batch = shape[0]
    sizes = [shape[axis] for axis in range(1, rank + 1)]
    padded_sizes = [_padded_size(n, t, stride) for n, t in zip(sizes, tile)]
    padded = images
    for axis, target in enumerate(padded_sizes, start=1):
        padded = _pad_axis(padded, axis, target)

    starts_per_axis = [
        _positions(n, t, settings.overlap, stride) for n, t in zip(padded_sizes, tile)
    ]
    grid = tf.meshgrid(*starts_per_axis, indexing="ij")
    corners = tf.stack([tf.reshape(axis, [-1]) for axis in grid], axis=1)
    tiles_per_image = tf.shape(corners)[0]
    jobs = batch * tiles_per_image  # Image-major, as predict_tiled orders them.

    weights = tf.constant(
        tiling.tile_weights(tile, settings.blending, settings.sigma_scale)
    )
    offsets = tf.stack(
        tf.meshgrid(*(tf.range(t) for t in tile), indexing="ij"), axis=-1
    )  # (*tile, rank)
    corner_shape = [1] * rank + [rank]

    def pixel_indices(corner):
        return tf.reshape(corner, corner_shape) + offsets

    transforms = tiling.transforms(rank, settings.tta)
    classes = network.outputs[0].shape[-1]
    size = settings.batch_size
    channels = images.shape[-1]

    def predict_chunk(start):
        job = tf.range(start, tf.minimum(start + size, jobs))
        image_index = job // tiles_per_image
        corner = tf.gather(corners, job % tiles_per_image)
        starts = tf.concat([image_index[:, None], corner], axis=1)

        def cut(begin):
            return tf.slice(
                padded,
                tf.concat([begin, [0]], 0),
                tf.stack([1, *tile, tf.shape(padded)[-1]]),
            )[0]

        tiles = tf.map_fn(
            cut, starts, fn_output_signature=tf.TensorSpec(None, tf.float32)
        )
        tiles = tf.ensure_shape(tiles, (None, *tile, channels))
        total = None
        for transform in transforms:
            output = network(transform_batch(tiles, transform, rank), training=False)
            output = untransform_batch(
                _to_probabilities(output, output_activation), transform, rank
            )
            total = output if total is None else total + output
        if len(transforms) > 1:
            total = total / len(transforms)
        # The weights ride along as one more channel: their sum per pixel
        # is the normalization, with no image-sized index tensor.
        tile_weights = tf.broadcast_to(
            weights[None, ..., None], tf.concat([tf.shape(total)[:-1], [1]], 0)
        )
        total = tf.concat([total * tile_weights, tile_weights], axis=-1)
        pixels = tf.map_fn(
            pixel_indices, corner, fn_output_signature=tf.TensorSpec(None, tf.int32)
        )
        image_axis = tf.broadcast_to(
            tf.reshape(image_index, [-1] + [1] * (rank + 1)),
            tf.concat([tf.shape(pixels)[:-1], [1]], 0),
        )
        return tf.concat([image_axis, pixels], axis=-1), total

    def body(start, result):
        indices, values = predict_chunk(start)
        return start + size, tf.tensor_scatter_nd_add(result, indices, values)

    result = tf.zeros(tf.stack([batch, *padded_sizes, classes + 1]))
    _, result = tf.while_loop(
        lambda start, _: start < jobs,
        body,
        (tf.constant(0), result),
        shape_invariants=(
            tf.TensorShape([]),
            tf.TensorShape([None] * (rank + 1) + [classes + 1]),
        ),
    )
    crop = tuple(slice(0, n) for n in sizes)
    result = result[(slice(None), *crop, slice(None))]
    return result[..., :classes] / result[..., classes:]
