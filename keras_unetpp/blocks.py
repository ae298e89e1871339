"""Building blocks of the UNet++ graph: the convolution unit H, U and pooling.

Every function here takes a Keras tensor and the node it builds and returns a
Keras tensor. All layers are core Keras layers, named after their node by
`keras_unetpp.description` (the one place that owns the names), so that a
model built from these blocks saves and reloads with
`keras.saving.load_model(path)` in safe mode and needs no custom objects.
"""

import keras

from keras_unetpp import description
from keras_unetpp.description import NORMALIZATIONS, UPSAMPLINGS  # noqa: F401

# Momentum of the batch-normalization moving statistics. Keras' default (0.99)
# averages over about 100 steps; a UNet++ trained for a few hundred steps then
# runs in inference mode with statistics that lag far behind its weights (the
# "batch norm trap": good training IoU, poor inference IoU). 0.9 averages over
# about 10 steps, which keeps the moving statistics close to the final weights.
BATCH_NORM_MOMENTUM = 0.9

# The layer classes of each spatial rank: 2 for images, 3 for volumes.
_CONV = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_CONV_TRANSPOSE = {2: keras.layers.Conv2DTranspose, 3: keras.layers.Conv3DTranspose}
_POOL = {2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}


def spatial_rank(x):
    """The spatial rank of a channels-last Keras tensor: 2 (images) or 3."""
    return len(x.shape) - 2


def _normalization(x, normalization, name):
    if normalization == "batch":
        return keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=name)(
            x
        )
    if normalization == "group":
        channels = x.shape[-1]
        groups = min(8, channels)
        while channels % groups:
            groups -= 1
        return keras.layers.GroupNormalization(groups=groups, name=name)(x)
    return x


def conv_unit(
    x,
    filters,
    node,
    convs=2,
    kernel_size=3,
    activation="relu",
    normalization="batch",
    dropout=0.0,
    kernel_initializer="he_normal",
):
    """The convolution unit H of a node X(i,j).

    `convs` times: 3x3 convolution, optional normalization, activation and
    optional dropout. The convolution has a bias only when no normalization
    follows it (a bias before a normalization layer is redundant).

    Args:
        x: Keras tensor, channels last.
        filters: int, number of output channels.
        node: `(i, j)`, the node X(i,j) whose unit this is; its layers are
            named by `keras_unetpp.description` (`(2, 1)` gives
            `x_2_1_conv1`, `x_2_1_bn1`, `x_2_1_act1`, ...).
        convs: int, number of convolutions. Defaults to `2`.
        kernel_size: int, convolution kernel size. Defaults to `3`.
        activation: str, Keras activation name. Defaults to `"relu"`.
        normalization: one of `"batch"`, `"group"`, `"none"`.
            Defaults to `"batch"`.
        dropout: float, dropout rate after each activation (0 disables it).
            Defaults to `0.0`.
        kernel_initializer: str, Keras initializer name.
            Defaults to `"he_normal"`.

    Returns:
        The Keras tensor of the node's output.
    """
    i, j = node
    conv = _CONV[spatial_rank(x)]
    for k in range(1, convs + 1):
        x = conv(
            filters,
            kernel_size,
            padding="same",
            use_bias=normalization == "none",
            kernel_initializer=kernel_initializer,
            name=description.conv_name(i, j, k),
        )(x)
        norm = description.norm_name(i, j, k, normalization)
        if norm:
            x = _normalization(x, normalization, norm)
        x = keras.layers.Activation(
            activation, name=description.activation_name(i, j, k)
        )(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=description.dropout_name(i, j, k))(x)
    return x


def upsample(x, filters, node, mode="transpose", kernel_initializer="he_normal"):
    """The up-sampling U: doubles each spatial size and sets the channels.

    Rank-generic: a 2x2 (2D) or 2x2x2 (3D) transposed convolution, or a
    resize (bilinear in 2D; in 3D Keras' `UpSampling3D`, which repeats
    voxels) followed by a 3x3 (3x3x3) convolution.

    Args:
        x: Keras tensor, channels last.
        filters: int, output channels (the width of the level it feeds).
        node: `(i, j)`, the node X(i,j) this U feeds (layer `x_{i}_{j}_up`).
        mode: `"transpose"` for a 2x2 stride-2 transposed convolution (the
            paper's choice), or `"resize"` for bilinear resizing followed by
            a 3x3 convolution (no checkerboard artefacts). Defaults to
            `"transpose"`.
        kernel_initializer: str, Keras initializer name.
            Defaults to `"he_normal"`.

    Returns:
        The up-sampled Keras tensor.
    """
    name = description.up_name(*node)
    rank = spatial_rank(x)
    if mode == "transpose":
        return _CONV_TRANSPOSE[rank](
            filters,
            2,
            strides=2,
            padding="same",
            kernel_initializer=kernel_initializer,
            name=name,
        )(x)
    if rank == 2:
        x = keras.layers.UpSampling2D(
            2, interpolation="bilinear", name=f"{name}_resize"
        )(x)
    else:
        x = keras.layers.UpSampling3D(2, name=f"{name}_resize")(x)
    return _CONV[rank](
        filters,
        3,
        padding="same",
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


def downsample(x, level):
    """2x2 (2x2x2) max pooling, stride 2, as in U-Net and UNet++: feeds X(level, 0)."""
    return _POOL[spatial_rank(x)](2, name=description.pool_name(level))(x)


def output_head(x, num_classes, activation, level):
    """A 1x1 convolution head with a float32 output.

    The head is a 1x1 convolution named `output_l<L>_logits` followed by an
    activation layer named `output_l<L>` that computes in float32, so that
    mixed-precision models still return float32 probabilities (or logits
    when `activation` is `None`).

    Args:
        x: Keras tensor X(0,j).
        num_classes: int, output channels.
        activation: `"sigmoid"`, `"softmax"` or `None` (logits).
        level: int, the head's level L (the output `output_l<L>`).

    Returns:
        The head's Keras tensor.
    """
    logits = _CONV[spatial_rank(x)](
        num_classes, 1, name=description.logits_name(level)
    )(x)
    return keras.layers.Activation(
        activation or "linear", dtype="float32", name=description.output_name(level)
    )(logits)
