"""count_flops on the layers backbones add: depthwise convolutions, dense."""

import keras

import keras_unetpp


def test_depthwise_and_position_wise_dense_layers_are_counted():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False)(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    # 8x8 input. Depthwise 1: 3 channels x 2 = 6 kernels of 3x3 at 8x8, plus
    # 6 biases per position. Depthwise 2 ("valid", stride 2): 6 kernels at
    # 3x3 positions, no bias. Dense: 6 -> 5 at each of the 3x3 positions.
    first = 2 * 9 * 6 * 64 + 6 * 64
    second = 2 * 9 * 6 * 9
    dense = 2 * 6 * 5 * 9 + 5 * 9
    assert keras_unetpp.count_flops(model, 8, 8) == first + second + dense
