"""Intensity normalization and resampling of volumes (NumPy).

Normalization choices (`INTENSITIES`):

- `"zscore"`: per volume and channel, `(x - mean) / std` over every voxel
  (MRI, whose intensities have no fixed scale).
- `"zscore-nonzero"`: the same statistics over the voxels where any channel
  is nonzero (skull-stripped or cropped MRI, whose background is 0); the
  other voxels stay 0.
- `"ct"`: clip to a window in Hounsfield units `(low, high)` and map it
  linearly to [0, 1] (CT, whose intensities are calibrated).
- `"none"`: the voxels as stored, as float32.

Resampling maps a volume to a target voxel spacing by separable linear
interpolation (images) or nearest neighbour (label maps), with voxel
centres aligned as in `scipy.ndimage.zoom(..., grid_mode=True)`: output
voxel `i` of an axis resampled from `n` to `m` voxels samples the input at
`(i + 0.5) * n / m - 0.5`, clamped to the edge.
"""

import numpy as np

from keras_unetpp.errors import InputError
from keras_unetpp.validation import check_choice

INTENSITIES = ("zscore", "zscore-nonzero", "ct", "none")
# A soft-tissue-to-bone CT window, in Hounsfield units (lung: -1000 to 400).
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)
MIN_STD = 1e-8


def check_ct_window(window):
    """The CT window as `(low, high)` floats, `low < high`."""
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise InputError(
            "`ct_window` must be (low, high) in Hounsfield units, low < high. "
            f"Received: ct_window={window!r}"
        )
    return low, high


def normalize_intensity(image, intensity="zscore", ct_window=DEFAULT_CT_WINDOW):
    """Normalizes an image volume's intensities.

    Args:
        image: float array `(depth, height, width, channels)`.
        intensity: one of `"zscore"`, `"zscore-nonzero"`, `"ct"`, `"none"`
            (see the module docstring). Defaults to `"zscore"`.
        ct_window: `(low, high)` in Hounsfield units, for `"ct"`. Defaults
            to `(-1000.0, 1000.0)`.

    Returns:
        A float32 array of the same shape.

    Example:

    ```python
    z = normalize_intensity(mri[..., None], "zscore")
    float(z.mean()), float(z.std())  # (~0.0, ~1.0)
    ```
    """
    check_choice(intensity, "intensity", INTENSITIES)
    image = np.asarray(image, np.float32)
    if intensity == "none":
        return image
    if intensity == "ct":
        low, high = check_ct_window(ct_window)
        return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)
    values = image.reshape(-1, image.shape[-1]).astype(np.float64)
    if intensity == "zscore-nonzero":
        inside = np.any(values != 0, axis=-1)
        if not inside.any():
            return np.zeros_like(image)
        chosen = values[inside]
    else:
        inside = None
        chosen = values
    mean = chosen.mean(axis=0)
    std = np.maximum(chosen.std(axis=0), MIN_STD)
    result = (values - mean) / std
    if inside is not None:
        result[~inside] = 0.0
    return result.reshape(image.shape).astype(np.float32)


def resampled_shape(shape, spacing, target):
    """The spatial shape after resampling from `spacing` to `target`.

    Each axis keeps its physical extent: `round(n * spacing / target)`,
    at least 1.
    """
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target)
    )


def _coordinates(n, m):
    return np.clip((np.arange(m) + 0.5) * (n / m) - 0.5, 0.0, n - 1.0)


def resample(array, shape, order=1):
    """Resamples the first three axes of `array` to `shape`.

    Args:
        array: array `(depth, height, width, ...)`.
        shape: the new `(depth, height, width)`.
        order: 1 (linear, for images; float32 result) or 0 (nearest
            neighbour, for label maps; the input's dtype). Defaults to `1`.

    Returns:
        The resampled array.
    """
    if order not in (0, 1):
        raise InputError(f"`order` must be 0 or 1. Received: order={order!r}")
    result = array if order == 0 else np.asarray(array, np.float32)
    for axis, m in enumerate(shape):
        n = result.shape[axis]
        if n == m:
            continue
        x = _coordinates(n, m)
        if order == 0:
            result = np.take(result, np.floor(x + 0.5).astype(np.int64), axis=axis)
            continue
        low = np.floor(x).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        weight = (x - low).astype(np.float32)
        shape_w = [1] * result.ndim
        shape_w[axis] = m
        weight = weight.reshape(shape_w)
        result = (
            np.take(result, low, axis=axis) * (1 - weight)
            + np.take(result, high, axis=axis) * weight
        )
    return result
