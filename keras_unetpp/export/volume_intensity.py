"""A volume's intensity normalization inside a serving graph.

`keras_unetpp.volumes.processing.normalize_intensity` is NumPy: the volume
pipeline, `predict_volume_files` and `evaluate` normalize each volume with
it before the network sees it. `normalize_volumes` is the same computation
in TensorFlow ops on a batch of volumes, so that an exported 3D model takes
the voxels as stored (MRI intensities, CT Hounsfield units) and returns
what `keras-unetpp predict` returns:

- `"zscore"`: per volume and channel, `(x - mean) / max(std, 1e-8)` over
  every voxel (population standard deviation, as `np.std`);
- `"zscore-nonzero"`: the same statistics over the voxels where any channel
  is nonzero; the other voxels are 0 (all 0 for an all-zero volume);
- `"ct"`: clipped to `(low, high)` and mapped linearly to [0, 1];
- `"none"`: unchanged.

The statistics are two-pass (mean, then the mean squared deviation) in
float32, which agrees with the float64 NumPy statistics to about 1e-6
relative on volumes of a few million voxels.
"""

import tensorflow as tf

from keras_unetpp.validation import check_choice
from keras_unetpp.volumes.processing import (
    DEFAULT_CT_WINDOW,
    INTENSITIES,
    MIN_STD,
    check_ct_window,
)

__all__ = ["DEFAULT_CT_WINDOW", "INTENSITIES", "normalize_volumes"]


def normalize_volumes(volumes, intensity="zscore", ct_window=DEFAULT_CT_WINDOW):
    """Normalizes a batch of volumes as `normalize_intensity` does each one.

    Args:
        volumes: float32 tensor `(batch, depth, height, width, channels)`.
        intensity: one of `"zscore"`, `"zscore-nonzero"`, `"ct"`, `"none"`.
            Defaults to `"zscore"`.
        ct_window: `(low, high)` in Hounsfield units, for `"ct"`. Defaults
            to `(-1000.0, 1000.0)`.

    Returns:
        A float32 tensor of the same shape.

    Example:

    ```python
    x = tf.random.normal((2, 8, 8, 8, 1), 300.0, 40.0)
    z = normalize_volumes(x, "zscore")  # each volume: mean 0, std 1
    ```
    """
    check_choice(intensity, "intensity", INTENSITIES)
    x = tf.convert_to_tensor(volumes, tf.float32)
    if intensity == "none":
        return x
    if intensity == "ct":
        low, high = check_ct_window(ct_window)
        return (tf.clip_by_value(x, low, high) - low) / (high - low)
    axes = [1, 2, 3]
    if intensity == "zscore":
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        variance = tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=True)
        return (x - mean) / tf.maximum(tf.sqrt(variance), MIN_STD)
    inside = tf.cast(
        tf.reduce_any(tf.not_equal(x, 0.0), axis=-1, keepdims=True), tf.float32
    )
    count = tf.reduce_sum(inside, axis=axes, keepdims=True)
    safe_count = tf.maximum(count, 1.0)
    mean = tf.reduce_sum(x * inside, axis=axes, keepdims=True) / safe_count
    variance = (
        tf.reduce_sum(tf.square(x - mean) * inside, axis=axes, keepdims=True)
        / safe_count
    )
    result = (x - mean) / tf.maximum(tf.sqrt(variance), MIN_STD)
    return result * inside
