"""The serving function of an exported model: named input, named outputs.

The function written into every SavedModel takes one batch of images of any
height and width under the input name `image` and returns a dict with two
stable keys, `probabilities` and `mask`. Everything a client would otherwise
have to know about the network happens inside the graph: scaling the pixels
to [0, 1] as the training pipeline did, padding to a multiple of the
network's stride `2**level` and cropping the predictions back to the input's
size.
"""

import tensorflow as tf

from keras_unetpp.errors import InputError

INPUT_NAME = "image"
PROBABILITIES = "probabilities"
MASK = "mask"

# Input dtypes a serving signature may take, with the divisor that maps them
# to [0, 1] as the training pipeline does (`normalization="dtype"` of
# keras_unetpp.data): integers are divided by their largest value, floats are
# passed through unchanged.
INPUT_DTYPES = {
    "float32": None,
    "uint8": 255.0,
    "uint16": 65535.0,
}

# How the pixels are mapped to the model's input range, as in keras_unetpp.data:
# "dtype" divides integers by 255 or 65535; "minmax" maps each image's own
# range to [0, 1] (a constant image to 0).
NORMALIZATIONS = ("dtype", "minmax")


def input_signature(channels, input_dtype="float32"):
    """The `[tf.TensorSpec]` of the `image` input: any batch, height, width.

    Args:
        channels: int, the number of image channels of the model.
        input_dtype: one of `"float32"`, `"uint8"`, `"uint16"`.
            Defaults to `"float32"`.

    Returns:
        A one-element list holding a `tf.TensorSpec` of shape
        `(None, None, None, channels)` named `"image"`.
    """
    check_input_dtype(input_dtype)
    return [
        tf.TensorSpec((None, None, None, channels), tf.as_dtype(input_dtype),
                      name=INPUT_NAME)
    ]


def check_normalization(normalization):
    """Raises a `ValueError` unless `normalization` is "dtype" or "minmax"."""
    if normalization not in NORMALIZATIONS:
        raise InputError(
            f"`normalization` must be one of {NORMALIZATIONS}. "
            f"Received: normalization={normalization!r}"
        )
    return normalization


def normalize(image, input_dtype="float32", normalization="dtype"):
    """Maps a batch of `input_dtype` pixels to the model's float32 input.

    Args:
        image: tensor `(batch, height, width, channels)` of `input_dtype`.
        input_dtype: one of `INPUT_DTYPES`. Defaults to `"float32"`.
        normalization: `"dtype"` (integers divided by 255 or 65535, floats
            unchanged) or `"minmax"` (each image's range mapped to [0, 1]).
            Defaults to `"dtype"`.

    Returns:
        A float32 tensor of the same shape.
    """
    x = tf.cast(image, tf.float32)
    if normalization == "minmax":
        low = tf.reduce_min(x, axis=(1, 2, 3), keepdims=True)
        span = tf.reduce_max(x, axis=(1, 2, 3), keepdims=True) - low
        safe = tf.where(span > 0.0, span, tf.ones_like(span))
        return tf.where(span > 0.0, (x - low) / safe, tf.zeros_like(x))
    divisor = INPUT_DTYPES[input_dtype]
    return x if divisor is None else x / divisor


def check_input_dtype(input_dtype):
    """Raises a `ValueError` unless `input_dtype` is a supported input dtype."""
    if input_dtype not in INPUT_DTYPES:
        raise InputError(
            f"`input_dtype` must be one of {tuple(INPUT_DTYPES)}. "
            f"Received: input_dtype={input_dtype!r}"
        )
    return input_dtype


def mask_dtype(num_classes):
    """The dtype of the `mask` output: `"uint8"` up to 256 classes, else int32."""
    return "uint8" if num_classes <= 256 else "int32"


def _pad_indices(size, padded_size, reflect):
    """Source indices along one axis for reflect or edge padding."""
    positions = tf.range(padded_size)
    reflected = tf.where(positions < size, positions, 2 * (size - 1) - positions)
    edge = tf.minimum(positions, size - 1)
    return tf.where(reflect, reflected, edge)


def pad_to_stride(images, stride):
    """Pads a batch at the bottom and right to a multiple of `stride`, in-graph.

    The same rule as `keras_unetpp.pad_to_multiple`: reflect padding, or edge
    padding when the padding of either axis is not smaller than that axis
    (a reflection needs that many pixels to mirror). Written with gathers of
    computed indices, so it traces with unknown sizes and compiles with XLA.

    Args:
        images: float tensor `(batch, height, width, channels)`.
        stride: int, e.g. `2**level`.

    Returns:
        `(padded, height, width)` with the original height and width as
        scalar int32 tensors.
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    padded_height = (height + stride - 1) // stride * stride
    padded_width = (width + stride - 1) // stride * stride
    reflect = tf.logical_and(
        padded_height - height < height, padded_width - width < width
    )
    rows = _pad_indices(height, padded_height, reflect)
    columns = _pad_indices(width, padded_width, reflect)
    padded = tf.gather(tf.gather(images, rows, axis=1), columns, axis=2)
    return padded, height, width


def make_serving_fn(model, stride, input_dtype="float32", threshold=0.5,
                    output_activation="sigmoid", normalization="dtype"):
    """The function exported as `serving_default` for one pruned model.

    Args:
        model: a single-output `keras.Model` with `None` spatial input
            dimensions (a pruned keras_unetpp model).
        stride: int, the multiple the spatial sizes are padded to
            (`2**level`).
        input_dtype: dtype of the `image` input. Defaults to `"float32"`.
        threshold: float, the probability at or above which a one-class
            model's mask is 1. Defaults to `0.5`.
        output_activation: what the model's head returns: `"sigmoid"` or
            `"softmax"` probabilities, or `None` for logits (then the
            function applies a sigmoid for one class, a softmax for more).
            Defaults to `"sigmoid"`.
        normalization: how pixels become the model's input, see
            `normalize`. Defaults to `"dtype"`.

    Returns:
        A Python function `serve(image)` returning
        `{"probabilities": float32 (batch, height, width, classes),
        "mask": (batch, height, width, 1)}`; the mask is
        `probabilities >= threshold` (uint8 0 or 1) for one class and the
        arg-max class index for several (`mask_dtype(num_classes)`).
    """
    check_input_dtype(input_dtype)
    check_normalization(normalization)
    num_classes = model.outputs[0].shape[-1]
    dtype = tf.as_dtype(mask_dtype(num_classes))

    def serve(image):
        x = normalize(image, input_dtype, normalization)
        padded, height, width = pad_to_stride(x, stride)
        outputs = tf.cast(model(padded, training=False), tf.float32)
        outputs = outputs[:, :height, :width, :]
        if output_activation is None:
            outputs = (
                tf.sigmoid(outputs) if num_classes == 1 else tf.nn.softmax(outputs)
            )
        if num_classes == 1:
            mask = tf.cast(outputs >= threshold, dtype)
        else:
            mask = tf.cast(tf.argmax(outputs, axis=-1)[..., None], dtype)
        return {PROBABILITIES: outputs, MASK: mask}

    return serve
