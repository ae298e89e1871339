"""Padding images to the network's stride and cropping predictions back."""

import numpy as np

from keras_unetpp.description import describe
from keras_unetpp.errors import InputError


def pad_to_multiple(images, multiple, mode="reflect"):
    """Pads a batch of NHWC images so that height and width divide `multiple`.

    The padding goes to the bottom and the right, so cropping
    `[:, :height, :width]` restores the original frame.

    Args:
        images: array `(batch, height, width, channels)`.
        multiple: int, e.g. `2**depth` of the model.
        mode: NumPy padding mode. Defaults to `"reflect"` (falls back to
            `"edge"` for images too small to reflect).

    Returns:
        `(padded, (height, width))`.

    Example:

    ```python
    padded, (h, w) = keras_unetpp.pad_to_multiple(images, 16)
    masks = model.predict(padded)[:, :h, :w]
    ```
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(
            "`images` must be a batch (batch, height, width, channels). "
            f"Received: shape={images.shape}"
        )
    height, width = images.shape[1:3]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if pad_h or pad_w:
        if mode == "reflect" and (pad_h >= height or pad_w >= width):
            mode = "edge"
        images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    return images, (height, width)


def predict_padded(model, images, batch_size=8):
    """`model.predict` on images of any size: pads to `2**depth`, crops back.

    Args:
        model: a keras_unetpp model (full, pruned or inference-mode) with
            `None` spatial input dimensions.
        images: array `(batch, height, width, channels)`.
        batch_size: int. Defaults to `8`.

    Returns:
        The predictions cropped to `(batch, height, width, classes)`; a dict
        of them for multi-output models.
    """
    padded, (height, width) = pad_to_multiple(images, describe(model).stride)
    outputs = model.predict(padded, batch_size=batch_size, verbose=0)
    if isinstance(outputs, dict):
        return {k: v[:, :height, :width] for k, v in outputs.items()}
    return outputs[:, :height, :width]
