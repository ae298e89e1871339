"""Training-time augmentation applied identically to an image and its mask."""

import math

import tensorflow as tf

from keras_unetpp.errors import InputError
from keras_unetpp.validation import check_bool, check_choice, check_number

# The random zoom of `Augmentation` unless it is told otherwise.
DEFAULT_SCALE_RANGE = (0.8, 1.25)
# How a mask follows the image through a zoom (see `Augmentation`).
MASK_INTERPOLATIONS = ("nearest", "bilinear")


def _check_fraction(value, arg):
    return check_number(value, arg, 0.0, 1.0, high_open=True)


class Augmentation:
    """Random paired augmentation: flips, 90-degree turns, scale, intensity.

    Each transform is optional. Geometric transforms move the image and the
    mask together (the mask keeps its label values: see
    `mask_interpolation`); intensity transforms touch the image only. The
    transforms run on whole batches, with an independent draw for every
    sample. All randomness is stateless and comes from one seed per batch,
    which `make_dataset` derives from its `seed`: the same seed gives the
    same augmented batches in every run, and every epoch gets new ones.

    In order, per sample:

    1. orientation: flips (left-right and up-down, each with probability
       1/2) and 0 to 3 quarter turns; with both on, each of the 8
       orientations is equally likely. For a non-square `image_size` only
       0 or 2 quarter turns are used, so the shape is kept.
    2. scale (random crop / zoom): a window of `image_size / s` is cut at a
       random place (padded with zeros where it sticks out) and resized to
       `image_size`, with `s` log-uniform in `scale_range` (`s > 1` zooms
       in). In crop mode this is the random crop itself.
    3. brightness: adds `d`, uniform in `[-brightness, brightness]`.
    4. contrast: `(x - mean) * c + mean` per channel, `c` uniform in
       `[1 - contrast, 1 + contrast]`; then the image is clipped to [0, 1].

    Args:
        flip: bool, random horizontal and vertical flips. Defaults to `True`.
        rotate90: bool, random quarter turns. Defaults to `True`.
        scale_range: `(low, high)` with `0 < low <= high`, or `None` for no
            scaling. Defaults to `(0.8, 1.25)`.
        brightness: float in [0, 1), the largest brightness shift (0 = off).
            Defaults to `0.1`.
        contrast: float in [0, 1), the largest relative contrast change
            (0 = off). Defaults to `0.1`.
        mask_interpolation: how a zoomed mask is resampled. `"nearest"`:
            each output pixel takes the label of the source pixel nearest
            to it, so outlines move by up to half a pixel against the
            bilinearly resampled image. `"bilinear"`: each class's indicator
            is resampled bilinearly, like the image, and the class with the
            largest share wins (binary masks: foreground where its share is
            above 0.5), so outlines stay where the image's edges are; it
            holds one float plane per class present in the batch. Flips and
            quarter turns move whole pixels either way. Defaults to
            `"nearest"`.

    Example:

    ```python
    aug = data.Augmentation(rotate90=False, scale_range=(0.9, 1.1))
    ds = data.make_dataset(train_pairs, training=True, augmentation=aug, seed=1)
    ```
    """

    def __init__(
        self,
        flip=True,
        rotate90=True,
        scale_range=DEFAULT_SCALE_RANGE,
        brightness=0.1,
        contrast=0.1,
        mask_interpolation="nearest",
    ):
        check_bool(flip, "flip")
        check_bool(rotate90, "rotate90")
        check_choice(mask_interpolation, "mask_interpolation", MASK_INTERPOLATIONS)
        if scale_range is not None:
            try:
                low, high = (float(v) for v in scale_range)
            except (TypeError, ValueError):
                low = high = float("nan")
            if not (0.0 < low <= high < math.inf):
                raise InputError(
                    "`scale_range` must be None or (low, high) with "
                    f"0 < low <= high. Received: scale_range={scale_range!r}"
                )
            scale_range = (low, high)
        self.flip = flip
        self.rotate90 = rotate90
        self.scale_range = scale_range
        self.brightness = _check_fraction(brightness, "brightness")
        self.contrast = _check_fraction(contrast, "contrast")
        self.mask_interpolation = mask_interpolation

    def get_config(self):
        """The constructor arguments, so `Augmentation(**config)` rebuilds it."""
        return {
            "flip": self.flip,
            "rotate90": self.rotate90,
            "scale_range": self.scale_range,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "mask_interpolation": self.mask_interpolation,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augmentation({args})"

    def __eq__(self, other):
        if not isinstance(other, Augmentation):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __call__(self, images, masks, seed, scale=True):
        """Augments a batch of image/mask pairs (graph code, for `map`).

        Every sample of the batch gets its own random transform; the
        randomness of the whole batch comes from `seed`.

        Args:
            images: float32 tensor `(batch, height, width, channels)` in
                [0, 1].
            masks: integer tensor `(batch, height, width, 1)`.
            seed: int tensor `(2,)`, the stateless seed of this batch.
            scale: bool, apply `scale_range` here (`False` when the samples
                were already scaled one by one, in crop mode). Defaults to
                `True`.

        Returns:
            The tuple `(images, masks)`, same shapes and dtypes.
        """
        seeds = tf.random.experimental.stateless_split(seed, num=4)
        batch = tf.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        square = height == width
        transpose, flip_lr, flip_ud = self._orientations(batch, square, seeds[0])
        if transpose is not None:
            images = _where(transpose, tf.transpose(images, (0, 2, 1, 3)), images)
            masks = _where(transpose, tf.transpose(masks, (0, 2, 1, 3)), masks)
        scaled = self.scale_range is not None and scale
        if scaled or flip_lr is not None:
            if scaled:
                boxes = _scale_boxes(
                    batch, (height, width), (height, width), self.scale_range, seeds[1]
                )
            else:
                boxes = tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), (batch, 1))
            if flip_lr is not None:
                # crop_and_resize flips a box whose end comes before its start.
                y1, x1, y2, x2 = tf.unstack(boxes, axis=1)
                boxes = tf.stack(
                    [
                        tf.where(flip_ud, y2, y1),
                        tf.where(flip_lr, x2, x1),
                        tf.where(flip_ud, y1, y2),
                        tf.where(flip_lr, x1, x2),
                    ],
                    axis=1,
                )
            images, masks = _crop_and_resize(
                images, masks, boxes, (height, width), self.mask_interpolation
            )
        if self.brightness:
            images = images + tf.random.stateless_uniform(
                (batch, 1, 1, 1), seeds[2], -self.brightness, self.brightness
            )
        if self.contrast:
            factor = tf.random.stateless_uniform(
                (batch, 1, 1, 1), seeds[3], 1.0 - self.contrast, 1.0 + self.contrast
            )
            mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
            images = (images - mean) * factor + mean
        if self.brightness or self.contrast:
            images = tf.clip_by_value(images, 0.0, 1.0)
        return images, masks

    def _orientations(self, batch, square, seed):
        """Per-sample (transpose, flip left-right, flip up-down) flags.

        A flip (left-right `lr`, up-down `ud`) followed by `k` quarter turns
        counter-clockwise equals: transpose if `k` is odd, then flip
        left-right if `a`, then up-down if `b`, where, with `t = k odd`,
        `a = (k in (2, 3)) xor (ud if t else lr)` and
        `b = (k in (1, 2)) xor (lr if t else ud)`. Flips and turns together
        make all 8 orientations equally likely. Returns `None` for flags
        that are always off.
        """
        if not (self.flip or self.rotate90):
            return None, None, None
        draws = tf.random.stateless_uniform((3, batch), seed)
        zeros = tf.zeros((batch,), tf.bool)
        lr = draws[0] < 0.5 if self.flip else zeros
        ud = draws[1] < 0.5 if self.flip else zeros
        if self.rotate90:
            turns = tf.cast(tf.floor(draws[2] * 4.0), tf.int32)
            if not square:
                turns = 2 * (turns // 2)  # 0 or 2: the shape must not change.
        else:
            turns = tf.zeros((batch,), tf.int32)
        transpose = tf.equal(turns % 2, 1)
        a = tf.math.logical_xor(turns >= 2, tf.where(transpose, ud, lr))
        b = tf.math.logical_xor(
            tf.logical_or(tf.equal(turns, 1), tf.equal(turns, 2)),
            tf.where(transpose, lr, ud),
        )
        return (transpose if self.rotate90 and square else None), a, b


def _where(flags, yes, no):
    return tf.where(flags[:, None, None, None], yes, no)


def _scale_boxes(count, source_size, target_size, scale_range, seed):
    """`count` random windows as normalized `crop_and_resize` boxes.

    With `s` log-uniform in `scale_range`, a window of `target_size / s`
    pixels is placed uniformly where it fits inside the source, or uniformly
    where the source fits inside it when it is larger (the rest is zero
    padding). In `tf.image.crop_and_resize` coordinates pixel centres run
    from 0 to 1.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    scale = tf.exp(tf.random.stateless_uniform((count, 1), seeds[0], low, high))
    source = tf.cast(source_size, tf.float32)[None, :]  # (1, 2): height, width
    window = tf.constant(target_size, tf.float32)[None, :] / scale
    start = tf.random.stateless_uniform((count, 2), seeds[1]) * (source - window)
    span = tf.maximum(source - 1.0, 1.0)
    return tf.concat([start / span, (start + window - 1.0) / span], axis=1)


def _crop_and_resize(images, masks, boxes, size, mask_interpolation="nearest"):
    indices = tf.range(tf.shape(images)[0])
    images = tf.image.crop_and_resize(images, boxes, indices, size)
    images = tf.clip_by_value(images, 0.0, 1.0)
    if mask_interpolation == "nearest":
        scaled_masks = tf.image.crop_and_resize(
            masks, boxes, indices, size, method="nearest"
        )
        return images, tf.cast(scaled_masks, masks.dtype)
    # Each class's share of every output pixel, sampled where the image is;
    # outside the source every share is 0 and the background (class 0) wins,
    # as the zero padding of the nearest-neighbour path gives.
    labels = tf.cast(masks[..., 0], tf.int32)
    depth = tf.maximum(tf.reduce_max(labels) + 1, 2)
    shares = tf.image.crop_and_resize(tf.one_hot(labels, depth), boxes, indices, size)
    winner = tf.argmax(shares, axis=-1, output_type=tf.int32)
    return images, tf.cast(winner[..., None], masks.dtype)


def scaled_crop_pair(
    image, mask, size, scale_range, seed, mask_interpolation="nearest"
):
    """Cuts a random window of `size / s` from one image and resizes it.

    `s` is log-uniform in `scale_range`; the window is placed uniformly at
    random where it fits (zero-padded where it is larger than the image).
    The image is resampled bilinearly, the mask as `mask_interpolation`
    says (`Augmentation`). This is the crop mode's random crop when
    `scale_range` is set.

    Args:
        image: float32 tensor `(height, width, channels)`, any size.
        mask: integer tensor `(height, width, 1)`.
        size: `(height, width)`, Python ints, the output size.
        scale_range: `(low, high)` floats.
        seed: int tensor `(2,)`.
        mask_interpolation: `"nearest"` or `"bilinear"`. Defaults to
            `"nearest"`.

    Returns:
        The tuple `(image, mask)` of spatial size `size`.
    """
    boxes = _scale_boxes(1, tf.shape(image)[:2], size, scale_range, seed)
    images, masks = _crop_and_resize(
        image[None], mask[None], boxes, size, mask_interpolation
    )
    return images[0], masks[0]
