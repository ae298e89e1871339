"""Padding images to the network's stride and cropping predictions back."""

import numpy as np

from keras_unetpp.description import describe
from keras_unetpp.errors import InputError


def pad_to_multiple(images, multiple, mode="reflect"):
    """Pads a batch so that every spatial axis divides `multiple`.

    The padding goes to the end of each spatial axis (the bottom and the
    right of an image), so cropping `[:, :height, :width]` (or
    `[:, :depth, :height, :width]` for volumes) restores the original frame.

    Args:
        images: array `(batch, height, width, channels)`, or a batch of
            volumes `(batch, depth, height, width, channels)`.
        multiple: int, e.g. `2**depth` of the model.
        mode: NumPy padding mode. Defaults to `"reflect"` (falls back to
            `"edge"` when any axis is too small to reflect its padding).

    Returns:
        `(padded, sizes)`: the padded batch and the original spatial sizes,
        `(height, width)` for images, `(depth, height, width)` for volumes.

    Example:

    ```python
    padded, (h, w) = keras_unetpp.pad_to_multiple(images, 16)
    masks = model.predict(padded)[:, :h, :w]
    ```
    """
    images = np.asarray(images)
    if images.ndim not in (4, 5):
        raise InputError(
            "`images` must be a batch (batch, height, width, channels) or a "
            "batch of volumes (batch, depth, height, width, channels). "
            f"Received: shape={images.shape}"
        )
    sizes = tuple(images.shape[1:-1])
    pads = [-size % multiple for size in sizes]
    if any(pads):
        if mode == "reflect" and any(p >= n for p, n in zip(pads, sizes)):
            mode = "edge"
        widths = [(0, 0), *((0, p) for p in pads), (0, 0)]
        images = np.pad(images, widths, mode=mode)
    return images, sizes


def predict_padded(model, images, batch_size=8):
    """`model.predict` on images of any size: pads to `2**depth`, crops back.

    Args:
        model: a keras_unetpp model (full, pruned or inference-mode) with
            `None` spatial input dimensions.
        images: array `(batch, height, width, channels)`, or a batch of
            volumes for a 3D model.
        batch_size: int. Defaults to `8`.

    Returns:
        The predictions cropped to `(batch, height, width, classes)` (or
        the volumes' size); a dict of them for multi-output models.
    """
    padded, sizes = pad_to_multiple(images, describe(model).stride)
    crop = (slice(None), *(slice(0, n) for n in sizes))
    outputs = model.predict(padded, batch_size=batch_size, verbose=0)
    if isinstance(outputs, dict):
        return {k: v[crop] for k, v in outputs.items()}
    return outputs[crop]
