"""Counting the floating-point operations of a model's forward pass."""

import math

import keras

from keras_unetpp.errors import InputError

_CONVS = (
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_TRANSPOSED = (keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)


def _static_clone(model, sizes):
    channels = model.inputs[0].shape[-1]
    inputs = keras.Input((*sizes, channels), batch_size=1)
    return keras.models.clone_model(model, input_tensors=inputs)


def count_flops(model, height, width, depth=None):
    """FLOPs of one forward pass of one `height` x `width` image (or volume).

    Counts 2 FLOPs per multiply-add of the convolutions and transposed
    convolutions (which hold almost all of a UNet++'s work), plus one FLOP
    per output element of the bias additions and of the average of the
    accurate mode. A backbone's depthwise convolutions and position-wise
    dense layers (MobileNetV2, EfficientNet, ConvNeXt) count the same way.
    Normalization, activations and pooling are not counted, as is usual for
    convolutional networks.

    Args:
        model: a functional `keras.Model` (any keras_unetpp model).
        height: int, image height.
        width: int, image width.
        depth: int, the volume's depth (first spatial axis) for a 3D
            model, `None` for a 2D one. Defaults to `None`.

    Returns:
        int, the number of FLOPs.

    Example:

    ```python
    model = keras_unetpp.build(depth=4)
    keras_unetpp.count_flops(model, 256, 256) / 1e9  # GFLOPs
    volume = keras_unetpp.build(depth=4, input_shape=(None, None, None, 1))
    keras_unetpp.count_flops(volume, 64, 64, depth=64)
    ```
    """
    rank = len(model.inputs[0].shape) - 2
    sizes = (height, width) if depth is None else (depth, height, width)
    if len(sizes) != rank:
        raise InputError(
            f"The model takes {rank}D inputs; give `depth` for a 3D model "
            f"only. Received: height={height}, width={width}, depth={depth}"
        )
    clone = _static_clone(model, sizes)
    flops = 0
    for layer in clone.layers:
        if isinstance(layer, _CONVS):
            kernel = math.prod(layer.kernel_size)
            cin, cout = layer.input.shape[-1], layer.filters
            if isinstance(layer, _TRANSPOSED):
                # Every input voxel scatters a kernel-sized patch of cout.
                positions = _spatial(layer.input.shape)
            else:
                positions = _spatial(layer.output.shape)
            flops += 2 * kernel * cin * cout * positions
            if layer.use_bias:
                flops += _spatial(layer.output.shape) * cout
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            # A backbone's depthwise convolution: one kernel per channel.
            kernel = math.prod(layer.kernel_size)
            cout = layer.input.shape[-1] * layer.depth_multiplier
            positions = _spatial(layer.output.shape)
            flops += 2 * kernel * cout * positions
            if layer.use_bias:
                flops += positions * cout
        elif isinstance(layer, keras.layers.Dense):
            # A backbone's pointwise layer (ConvNeXt) on every position.
            cin, cout = layer.input.shape[-1], layer.units
            positions = _spatial(layer.output.shape)
            flops += 2 * cin * cout * positions
            if layer.use_bias:
                flops += positions * cout
        elif isinstance(layer, keras.layers.Average):
            shape = layer.output.shape
            flops += len(layer.input) * _spatial(shape) * shape[-1]
    return int(flops)


def _spatial(shape):
    return math.prod(int(size) for size in shape[1:-1])
