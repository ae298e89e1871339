"""Geometric processing of image/mask pairs in the TensorFlow graph.

Images are resized bilinearly (with anti-aliasing when they shrink); masks
are always resized with nearest neighbour, so a mask never gains values that
were not in it. Padding fills the image with 0 and the mask with 0
(background).
"""

import tensorflow as tf

RESIZE_MODES = ("resize", "crop")


def resize_pair(image, mask, size):
    """Resizes an image (bilinear) and its mask (nearest neighbour) to `size`.

    Args:
        image: float tensor `(height, width, channels)`.
        mask: integer tensor `(height, width, 1)`.
        size: `(height, width)` of the result.

    Returns:
        The tuple `(image, mask)` resized; the mask keeps its dtype.
    """
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    mask = tf.image.resize(mask, size, method="nearest")
    return image, mask


def _axis_window(length, target, fraction):
    """Crop start and pad before along one axis; `fraction` in [0, 1)."""
    slack = tf.abs(length - target)
    offset = tf.minimum(
        tf.cast(tf.floor(fraction * tf.cast(slack + 1, tf.float32)), tf.int32), slack
    )
    crop = tf.where(length >= target, offset, 0)
    pad = tf.where(length < target, offset, 0)
    return crop, pad


def crop_or_pad_pair(image, mask, size, fractions):
    """Crops or pads an image and its mask to `size` at one position.

    Along each axis an image longer than the target is cropped and a shorter
    one is padded with zeros (the mask with 0, background). `fractions`
    places the window: 0 = top/left, 0.5 = centre, values near 1 =
    bottom/right; random fractions give a random crop.

    Args:
        image: tensor `(height, width, channels)`.
        mask: tensor `(height, width, 1)`.
        size: `(height, width)` of the result: Python ints (the result then
            has a static shape) or an int tensor `(2,)`.
        fractions: float tensor `(2,)` in [0, 1), the position of the window
            along height and width.

    Returns:
        The tuple `(image, mask)`, both of spatial size `size`.
    """
    shape = tf.shape(image)
    target_h, target_w = size[0], size[1]
    crop_h, pad_h = _axis_window(shape[0], target_h, fractions[0])
    crop_w, pad_w = _axis_window(shape[1], target_w, fractions[1])
    keep_h = tf.minimum(shape[0], target_h)
    keep_w = tf.minimum(shape[1], target_w)
    paddings = [
        [pad_h, target_h - keep_h - pad_h],
        [pad_w, target_w - keep_w - pad_w],
        [0, 0],
    ]
    static = all(isinstance(s, int) for s in (target_h, target_w))

    def place(x):
        x = tf.pad(x[crop_h : crop_h + keep_h, crop_w : crop_w + keep_w], paddings)
        if static:
            x = tf.ensure_shape(x, (target_h, target_w, x.shape[-1]))
        return x

    return place(image), place(mask)


def center_crop_or_pad_pair(image, mask, size):
    """Crops or pads an image and its mask to `size`, centred."""
    return crop_or_pad_pair(image, mask, size, tf.constant([0.5, 0.5]))
