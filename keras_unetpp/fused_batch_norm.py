"""Batch normalization as one fused TensorFlow kernel, in unchanged Keras layers.

Keras 3's `BatchNormalization` computes the batch moments and the
normalization with separate element-wise ops (`tf.nn.moments`, then
`tf.nn.batch_normalization`), and under mixed precision it casts each
activation to float32 and back. On TensorFlow that is 10% of a UNet++
training step in float32 and 20% in bfloat16 on a CPU
(`docs/performance.md`; keras-team/keras-core#225 reports the same slowness).
TensorFlow has a fused kernel for it, `FusedBatchNormV3`: one pass forward,
one backward, bfloat16 and float16 inputs with float32 statistics, and the
oneDNN (CPU) and cuDNN (GPU) builds fuse it further with the ReLU that
follows and, in inference, into the preceding convolution.

`fuse_batch_norm(model)` makes the model's batch-normalization layers run
that kernel. The layers stay `keras.layers.BatchNormalization`: same
configuration, same variables, same `.keras` file (which still loads in safe
mode without keras_unetpp), and the same results up to float rounding: the
outputs, the gradients and the moving statistics (Keras keeps the *biased*
batch variance in its moving average; TensorFlow's kernel returns the
unbiased one, which is corrected here). Layers the kernel can't serve keep
Keras' own computation, decided at each call: synchronized batch
normalization (`tf.distribute`), masks, renormalization, an axis other than
the last, rank other than 4, epsilon below TensorFlow's minimum.

`keras_unetpp.build()` applies it to every model it builds when Keras runs
on TensorFlow; call it yourself on a model loaded from a `.keras` file.
"""

import keras
import tensorflow as tf

from keras_unetpp import keras_patches
from keras_unetpp.errors import InputError

# `FusedBatchNormV3` rejects a smaller epsilon.
_MIN_EPSILON = 1.001e-5
_FUSED_DTYPES = ("float16", "bfloat16", "float32")
_FEATURE = "fused"


def fuse_batch_norm(model):
    """Runs the model's batch normalization as fused TensorFlow kernels.

    Every `keras.layers.BatchNormalization` of `model` (nested models
    included) computes with TensorFlow's `FusedBatchNormV3` from then on,
    in training and in inference. Nothing that is saved changes: the layer
    classes, configurations and weights are Keras' own. Calling it again is
    a no-op. The model's compiled step functions are reset so that the next
    `fit`, `evaluate` or `predict` traces the fused graph.

    Args:
        model: a `keras.Model` (or a single layer) on the TensorFlow backend.

    Returns:
        int, the number of batch-normalization layers it serves (including
        those it served already).

    Example:

    ```python
    model = keras.saving.load_model("run/best.keras")
    keras_unetpp.fuse_batch_norm(model)  # faster fit/predict, same results
    ```
    """
    if keras.backend.backend() != "tensorflow":
        raise InputError(
            "fuse_batch_norm() uses TensorFlow kernels and needs the TensorFlow "
            "backend (KERAS_BACKEND=tensorflow). Received: "
            f"backend={keras.backend.backend()!r}"
        )
    if not isinstance(model, keras.layers.Layer):
        raise InputError(
            f"fuse_batch_norm() needs a Keras model or layer. Received: {model!r}"
        )
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            keras_patches.patch(layer, "call", _fused_call, _FEATURE)
            count += 1
    keras_patches.reset_step_functions(model)
    return count


def is_fused(layer):
    """Whether `fuse_batch_norm` serves this batch-normalization layer."""
    return bool(keras_patches.patched(layer, _FEATURE))


def _can_fuse(layer, inputs, mask):
    rank = len(inputs.shape)
    return (
        mask is None
        and rank == 4
        and layer.axis in (-1, 3)
        and not layer.synchronized
        and not getattr(layer, "renorm", False)
        and layer.epsilon >= _MIN_EPSILON
        and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
    )


def _fused_call(layer, inputs, training=None, mask=None):
    """`BatchNormalization.call` through `FusedBatchNormV3` (bound per layer)."""
    if not _can_fuse(layer, inputs, mask):
        return type(layer).call(layer, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    scale = _as_float32(layer.gamma) if layer.scale else tf.ones([channels])
    offset = _as_float32(layer.beta) if layer.center else tf.zeros([channels])
    if training and layer.trainable:
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, epsilon=layer.epsilon, is_training=True
        )
        # The kernel normalizes with the biased variance but returns the
        # unbiased one; Keras' moving average takes the biased one.
        count = tf.cast(
            tf.reduce_prod(tf.shape(inputs, out_type=tf.int64)[:-1]), tf.float32
        )
        variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(
            layer.moving_variance * momentum + variance * (1.0 - momentum)
        )
        return outputs
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
        inputs,
        scale,
        offset,
        mean=_as_float32(layer.moving_mean),
        variance=_as_float32(layer.moving_variance),
        epsilon=layer.epsilon,
        is_training=False,
    )
    return outputs


def _as_float32(variable):
    return tf.cast(tf.convert_to_tensor(variable), tf.float32)
