"""The serving function of an exported model: named input, named outputs.

The function written into every SavedModel takes one batch of images of any
height and width under the input name `image` and returns a dict with two
stable keys, `probabilities` and `mask`. Everything a client would otherwise
have to know about the network happens inside the graph: checking the
input's rank and channels, scaling the pixels to [0, 1] as the training
pipeline did, and the run's size policy (`keras_unetpp.size_policy`):
resizing to the training size and the probabilities back for a resize-mode
run, padding to a multiple of the stride `2**level` and cropping back for a
crop-mode one. The size policy is the very code `keras-unetpp predict` runs.

The input signature has unknown rank (`TensorSpec(None, dtype)`), so that a
wrongly shaped request reaches `check_input`, which names what it expected
and what it received ("image must be (batch, height, width, 1): received
rank 3 / 3 channels (shape [520 696 3])"). A fixed `(None, None, None, C)`
signature does not help: a reloaded signature function does not check what
it is fed against it, and the graph, told the rank is 4, folds the rank in
such a check to the constant 4, so a 3-D request failed with "indices = 4
is not in [0, 4)" and a 5-D one slipped past the check (tried with
TensorFlow 2.21).
"""

import tensorflow as tf

from keras_unetpp import validation
from keras_unetpp.errors import InputError
from keras_unetpp.export import tiled_serving, volume_intensity
from keras_unetpp.size_policy import SizePolicy, pad_to_stride
from keras_unetpp.validation import PIXEL_SCALINGS, check_pixel_scaling  # noqa: F401

__all__ = [
    "INPUT_NAME",
    "MASK",
    "PROBABILITIES",
    "check_input",
    "input_layout",
    "input_signature",
    "make_serving_fn",
    "normalize",
    "pad_to_stride",
]

INPUT_NAME = "image"
PROBABILITIES = "probabilities"
MASK = "mask"

# Input dtypes a serving signature may take, with the divisor that maps them
# to [0, 1] as the training pipeline does (`pixel_scaling="dtype"` of
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


def input_signature(channels, input_dtype="float32"):
    """The `[tf.TensorSpec]` of the `image` input, of unknown rank.

    The serving function checks in the graph that the input is
    `(batch, height, width, channels)` (`check_input`), with a message that
    names the expected and received shape; a fixed-rank signature would
    make TensorFlow refuse other ranks before that check runs.

    Args:
        channels: int, the number of image channels of the model (checked
            by the serving function, not by the signature).
        input_dtype: one of `"float32"`, `"uint8"`, `"uint16"`.
            Defaults to `"float32"`.

    Returns:
        A one-element list holding a `tf.TensorSpec` of unknown shape named
        `"image"`.
    """
    del channels  # Checked in the graph, see `check_input`.
    check_input_dtype(input_dtype)
    return [tf.TensorSpec(None, tf.as_dtype(input_dtype), name=INPUT_NAME)]


def input_layout(rank=2):
    """The names of the `image` input's axes before the channels.

    Args:
        rank: int, 2 for images, 3 for volumes. Defaults to `2`.

    Returns:
        str, `"batch, height, width"` or `"batch, depth, height, width"`.
    """
    return "batch, height, width" if rank == 2 else "batch, depth, height, width"


def check_input(image, channels, rank=2):
    """Checks in the graph that `image` is `(batch, height, width, channels)`.

    Args:
        image: the `image` tensor as received, of any rank.
        channels: int, the channels the model takes.
        rank: int, the model's spatial rank: 2 for images, 3 for volumes
            (`(batch, depth, height, width, channels)`). Defaults to `2`.

    Returns:
        `image` with the static shape `(None, ..., None, channels)`; the
        graph fails with an `InvalidArgumentError` such as "image must be
        (batch, height, width, 1): received rank 3 / 3 channels (shape
        [520 696 3])" for any other shape.
    """
    shape = tf.shape(image)
    received_rank = tf.size(shape)
    # The last axis (-1 for a scalar), without indexing out of range.
    received = tf.gather(tf.concat([[-1], shape], 0), received_rank)
    valid = tf.logical_and(
        tf.equal(received_rank, rank + 2), tf.equal(received, channels)
    )
    message = tf.strings.format(
        f"{INPUT_NAME} must be ({input_layout(rank)}, {channels}): received "
        "rank {} / {} channels (shape {})",
        (received_rank, received, shape),
    )
    check = tf.debugging.Assert(valid, [message])
    with tf.control_dependencies([check]):
        image = tf.identity(image)
    return tf.ensure_shape(image, (None,) * (rank + 1) + (channels,))


def normalize(image, input_dtype="float32", pixel_scaling="dtype"):
    """Maps a batch of `input_dtype` pixels to the model's float32 input.

    Args:
        image: tensor `(batch, height, width, channels)` (or a batch of
            volumes) of `input_dtype`.
        input_dtype: one of `INPUT_DTYPES`. Defaults to `"float32"`.
        pixel_scaling: `"dtype"` (integers divided by 255 or 65535, floats
            unchanged) or `"minmax"` (each image's range mapped to [0, 1]).
            Defaults to `"dtype"`.

    Returns:
        A float32 tensor of the same shape.
    """
    x = tf.cast(image, tf.float32)
    if pixel_scaling == "minmax":
        axes = list(range(1, x.shape.rank))
        low = tf.reduce_min(x, axis=axes, keepdims=True)
        span = tf.reduce_max(x, axis=axes, keepdims=True) - low
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
    """The dtype of the `mask` output: `validation.mask_dtype`, the one rule."""
    return validation.mask_dtype(num_classes)


def make_serving_fn(
    model,
    stride,
    input_dtype="float32",
    threshold=0.5,
    output_activation="sigmoid",
    pixel_scaling="dtype",
    size_policy=None,
    jit_compile=False,
    tiled=None,
    intensity=None,
    ct_window=None,
    tta=None,
):
    """The function exported as `serving_default` for one pruned model.

    Args:
        model: a single-output `keras.Model` with `None` spatial input
            dimensions (a pruned keras_unetpp model, or the accurate mode).
        stride: int, the multiple the network needs (`2**level`).
        input_dtype: dtype of the `image` input. Defaults to `"float32"`.
        threshold: float, the probability at or above which a one-class
            model's mask is 1. Defaults to `0.5`.
        output_activation: what the model's head returns: `"sigmoid"` or
            `"softmax"` probabilities, or `None` for logits (then the
            function applies a sigmoid for one class, a softmax for more).
            Defaults to `"sigmoid"`.
        pixel_scaling: how pixels become the model's input, see
            `normalize`. Defaults to `"dtype"`.
        size_policy: `keras_unetpp.size_policy.SizePolicy`, how an image of
            any size meets the network (the run's: resized to the training
            size and back, or padded to the stride and cropped), or `None`
            for `SizePolicy.native()`. Defaults to `None`.
        jit_compile: bool, mark the computation for XLA: everything after
            the input check (XLA drops assertions) in native mode, the
            network alone in resize mode (the antialiased resize has no XLA
            kernel). Defaults to `False`.
        tiled: `keras_unetpp.export.tiled_serving.TiledServing`, predict
            each request tile by tile as `predict_tiled` does (native size
            policy only, no XLA), or `None` for the whole image at once.
            Defaults to `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: whole-image test-time
            augmentation (`SizePolicy.probabilities`); a tiled function
            takes it from `tiled`. Defaults to `None`.

    Returns:
        A Python function `serve(image)` returning
        `{"probabilities": float32 (batch, height, width, classes),
        "mask": (batch, height, width, 1)}` (volumes: with a depth axis
        after the batch); the mask is
        `probabilities >= threshold` (uint8 0 or 1) for one class and the
        arg-max class index for several (`mask_dtype(num_classes)`).
    """
    check_input_dtype(input_dtype)
    check_pixel_scaling(pixel_scaling)
    policy = SizePolicy.native() if size_policy is None else size_policy
    policy.check_stride(stride)
    num_classes = model.outputs[0].shape[-1]
    channels = model.inputs[0].shape[-1]
    rank = len(model.inputs[0].shape) - 2
    dtype = tf.as_dtype(mask_dtype(num_classes))
    if intensity is not None:
        if rank != 3:
            raise InputError(
                "`intensity` is the normalization of volumes; this model takes "
                f"{rank}D images (use pixel_scaling). Received: intensity="
                f"{intensity!r}"
            )
        window = volume_intensity.DEFAULT_CT_WINDOW if ct_window is None else ct_window
        volume_intensity.normalize_volumes(tf.zeros((1, 1, 1, 1, 1)), intensity, window)

    if tiled is not None and tta is not None:
        raise InputError(
            "A tiled serving function takes its test-time augmentation from "
            f"`tiled` (its `tta`). Received: tta={tta!r} with tiled"
        )
    if tiled is not None:
        if policy.mode != "native" or jit_compile:
            raise InputError(
                "A tiled serving function runs at the images' own scale "
                "(native size policy) and without XLA. Received: "
                f"size_policy={policy.mode!r}, jit_compile={jit_compile!r}"
            )
        tiled.check_stride(stride)
    network = model
    if jit_compile and policy.mode == "resize":
        # The antialiased resize (ScaleAndTranslate) has no XLA kernel: only
        # the network is compiled.
        compiled = tf.function(
            lambda x: model(x, training=False), jit_compile=True, autograph=False
        )

        def network(x, training=False):
            return compiled(x)

    def predict(image):
        if intensity is None:
            x = normalize(image, input_dtype, pixel_scaling)
        else:
            x = volume_intensity.normalize_volumes(
                tf.cast(image, tf.float32), intensity, window
            )
        if tiled is None:
            outputs = policy.probabilities(network, x, stride, output_activation, tta)
        else:
            outputs = tiled_serving.tiled_probabilities(
                network, x, tiled, stride, output_activation
            )
        if num_classes == 1:
            mask = tf.cast(outputs >= threshold, dtype)
        else:
            mask = tf.cast(tf.argmax(outputs, axis=-1)[..., None], dtype)
        return {PROBABILITIES: outputs, MASK: mask}

    if jit_compile and policy.mode != "resize":
        predict = tf.function(predict, jit_compile=True, autograph=False)

    def serve(image):
        return predict(check_input(image, channels, rank))

    return serve
