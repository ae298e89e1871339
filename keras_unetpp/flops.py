"""Counting the floating-point operations of a model's forward pass."""

import keras


def _static_clone(model, height, width):
    channels = model.inputs[0].shape[-1]
    inputs = keras.Input((height, width, channels), batch_size=1)
    return keras.models.clone_model(model, input_tensors=inputs)


def count_flops(model, height, width):
    """FLOPs of one forward pass of one `height` x `width` image.

    Counts 2 FLOPs per multiply-add of the convolutions and transposed
    convolutions (which hold almost all of a UNet++'s work), plus one FLOP
    per output element of the bias additions and of the average of the
    accurate mode. Normalization, activations and pooling are not counted,
    as is usual for convolutional networks.

    Args:
        model: a functional `keras.Model` (any keras_unetpp model).
        height: int, image height.
        width: int, image width.

    Returns:
        int, the number of FLOPs.

    Example:

    ```python
    model = keras_unetpp.build(depth=4)
    keras_unetpp.count_flops(model, 256, 256) / 1e9  # GFLOPs
    ```
    """
    clone = _static_clone(model, height, width)
    flops = 0
    for layer in clone.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kh, kw = layer.kernel_size
            cin, cout = layer.input.shape[-1], layer.filters
            if isinstance(layer, keras.layers.Conv2DTranspose):
                # Every input pixel scatters a kh x kw x cout patch.
                positions = _spatial(layer.input.shape)
            else:
                positions = _spatial(layer.output.shape)
            flops += 2 * kh * kw * cin * cout * positions
            if layer.use_bias:
                flops += _spatial(layer.output.shape) * cout
        elif isinstance(layer, keras.layers.Average):
            shape = layer.output.shape
            flops += len(layer.input) * _spatial(shape) * shape[-1]
    return int(flops)


def _spatial(shape):
    return int(shape[1]) * int(shape[2])
