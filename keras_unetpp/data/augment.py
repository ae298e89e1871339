"""Training-time augmentation applied identically to an image and its mask."""

import math
import numbers

import tensorflow as tf

from keras_unetpp.data import processing


def _check_fraction(value, arg):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        0.0 <= value < 1.0
    ):
        raise ValueError(
            f"`{arg}` must be a float in [0, 1). Received: {arg}={value!r}"
        )
    return float(value)


class Augmentation:
    """Random paired augmentation: flips, 90-degree turns, scale, intensity.

    Each transform is optional. Geometric transforms move the image and the
    mask together (the mask with nearest-neighbour resampling, so it keeps
    its label values); intensity transforms touch the image only. All
    randomness is stateless and comes from one seed per sample, which
    `make_dataset` derives from its `seed`: the same seed gives the same
    augmented batches in every run, and every epoch gets new ones.

    In order, per sample:

    1. scale (random crop / zoom): a window of `image_size / s` is cut at a
       random place (padded with zeros where it sticks out) and resized to
       `image_size`, with `s` log-uniform in `scale_range` (`s > 1` zooms
       in).
    2. flips: left-right and up-down, each with probability 1/2.
    3. 90-degree turns: 0, 1, 2 or 3 quarter turns (0 or 2 for non-square
       `image_size`, so the shape is kept).
    4. brightness: adds `d`, uniform in `[-brightness, brightness]`.
    5. contrast: `(x - mean) * c + mean` per channel, `c` uniform in
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
        scale_range=(0.8, 1.25),
        brightness=0.1,
        contrast=0.1,
    ):
        for arg, value in (("flip", flip), ("rotate90", rotate90)):
            if not isinstance(value, bool):
                raise ValueError(f"`{arg}` must be a bool. Received: {arg}={value!r}")
        if scale_range is not None:
            try:
                low, high = (float(v) for v in scale_range)
            except (TypeError, ValueError):
                low = high = float("nan")
            if not (0.0 < low <= high < math.inf):
                raise ValueError(
                    "`scale_range` must be None or (low, high) with "
                    f"0 < low <= high. Received: scale_range={scale_range!r}"
                )
            scale_range = (low, high)
        self.flip = flip
        self.rotate90 = rotate90
        self.scale_range = scale_range
        self.brightness = _check_fraction(brightness, "brightness")
        self.contrast = _check_fraction(contrast, "contrast")

    def get_config(self):
        """The constructor arguments, so `Augmentation(**config)` rebuilds it."""
        return {
            "flip": self.flip,
            "rotate90": self.rotate90,
            "scale_range": self.scale_range,
            "brightness": self.brightness,
            "contrast": self.contrast,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augmentation({args})"

    def __eq__(self, other):
        if not isinstance(other, Augmentation):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __call__(self, image, mask, size, seed):
        """Augments one image/mask pair (graph code, for `Dataset.map`).

        Args:
            image: float32 tensor `(height, width, channels)` in [0, 1],
                already `size` unless `scale_range` is set.
            mask: integer tensor `(height, width, 1)`.
            size: `(height, width)`, Python ints, the output size.
            seed: int tensor `(2,)`, the stateless seed of this sample.

        Returns:
            The tuple `(image, mask)` of spatial size `size`.
        """
        seeds = tf.random.experimental.stateless_split(seed, num=7)
        if self.scale_range is not None:
            image, mask = scaled_crop_pair(
                image, mask, size, self.scale_range, seeds[0]
            )
        if self.flip:
            flips = tf.random.stateless_uniform((2,), seeds[1]) < 0.5
            image, mask = _flip_if(image, mask, flips[0], axis=1)
            image, mask = _flip_if(image, mask, flips[1], axis=0)
        if self.rotate90:
            square = size[0] == size[1]
            turns = tf.random.stateless_uniform(
                (), seeds[2], minval=0, maxval=4 if square else 2, dtype=tf.int32
            )
            turns = turns if square else 2 * turns
            image = tf.image.rot90(image, turns)
            mask = tf.image.rot90(mask, turns)
        if self.brightness:
            delta = tf.random.stateless_uniform(
                (), seeds[3], -self.brightness, self.brightness
            )
            image = image + delta
        if self.contrast:
            factor = tf.random.stateless_uniform(
                (), seeds[4], 1.0 - self.contrast, 1.0 + self.contrast
            )
            mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
            image = (image - mean) * factor + mean
        if self.brightness or self.contrast:
            image = tf.clip_by_value(image, 0.0, 1.0)
        channels, mask_channels = image.shape[-1], mask.shape[-1]
        image = tf.ensure_shape(image, (size[0], size[1], channels))
        mask = tf.ensure_shape(mask, (size[0], size[1], mask_channels))
        return image, mask


def _flip_if(image, mask, flag, axis):
    return tf.cond(
        flag,
        lambda: (tf.reverse(image, [axis]), tf.reverse(mask, [axis])),
        lambda: (image, mask),
    )


def scaled_crop_pair(image, mask, size, scale_range, seed):
    """Cuts a random window of `size / s` and resizes it to `size`.

    `s` is log-uniform in `scale_range`; the window is placed uniformly at
    random (and zero-padded where it is larger than the image). The image is
    resized bilinearly, the mask with nearest neighbour.

    Args:
        image: float32 tensor `(height, width, channels)`.
        mask: integer tensor `(height, width, 1)`.
        size: `(height, width)`, Python ints.
        scale_range: `(low, high)` floats.
        seed: int tensor `(2,)`.

    Returns:
        The tuple `(image, mask)` of spatial size `size`.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    scale = tf.exp(tf.random.stateless_uniform((), seeds[0], low, high))
    window = tf.cast(
        tf.maximum(tf.round(tf.constant(size, tf.float32) / scale), 1.0), tf.int32
    )
    fractions = tf.random.stateless_uniform((2,), seeds[1])
    image, mask = processing.crop_or_pad_pair(image, mask, window, fractions)
    return processing.resize_pair(image, mask, size)
