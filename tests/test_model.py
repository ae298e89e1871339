"""The UNet++ graph: parameter counts, wiring against the paper, outputs, errors."""

import keras
import numpy as np
import pytest

import keras_unetpp
from keras_unetpp.description import node_name

PAPER = dict(
    depth=4,
    input_shape=(96, 96, 1),
    filters=(32, 64, 128, 256, 512),
    normalization="none",
    upsampling="transpose",
)
TINY = dict(input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))


def _producer(tensor):
    """Name of the layer that produced a Keras tensor."""
    return tensor._keras_history.operation.name


def _node_output_layer(i, j, convs=2):
    return f"{node_name(i, j)}_act{convs}"


def _nodes(model):
    names = {layer.name for layer in model.layers}
    return {
        (i, j)
        for i in range(8)
        for j in range(8)
        if f"{node_name(i, j)}_conv1" in names
    }


def test_paper_parameter_counts():
    # Counts of the authors' UNet++ (arXiv 1807.10165, Table 1 and their code):
    # 3x3 convs with bias, no batch norm, 2x2 stride-2 transposed convs.
    model = keras_unetpp.build(**PAPER)
    assert model.count_params() == 9_041_601
    supervised = keras_unetpp.build(**PAPER, deep_supervision=True)
    # Three more 1x1 heads of 32 weights + 1 bias each: 3 * 33 = 99.
    assert supervised.count_params() == 9_041_700
    pruned = {
        level: keras_unetpp.prune(supervised, level).count_params()
        for level in (1, 2, 3, 4)
    }
    assert pruned == {1: 100_961, 2: 511_105, 3: 2_204_961, 4: 9_041_601}


def test_l1_parameter_count_by_hand():
    # X(0,0): 1->32 (9*1*32+32=320) + 32->32 (9*32*32+32=9248)      =  9,568
    # X(1,0): 32->64 (18,496) + 64->64 (36,928)                      = 55,424
    # U(X(1,0)) -> 32: 2*2*64*32 + 32                                =  8,224
    # X(0,1): [32 + 32] -> 32 (18,464) + 32->32 (9,248)              = 27,712
    # head 1x1: 32 + 1                                               =     33
    model = keras_unetpp.build(**{**PAPER, "depth": 1, "filters": (32, 64)})
    assert model.count_params() == 9_568 + 55_424 + 8_224 + 27_712 + 33


def test_unet_baseline_parameter_count():
    # The paper's U-Net of the same widths has 7.76M parameters.
    model = keras_unetpp.build_unet(**PAPER)
    assert model.count_params() == 7_759_521
    assert _nodes(model) == {(i, 0) for i in range(5)} | {
        (3, 1),
        (2, 2),
        (1, 3),
        (0, 4),
    }


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_graph_follows_the_paper_equation(depth):
    """X(i,j) = H([X(i,0), ..., X(i,j-1), U(X(i+1,j-1))]) for i + j <= depth."""
    model = keras_unetpp.build(
        depth=depth, input_shape=(32, 32, 1), filters=TINY["filters"][: depth + 1]
    )
    assert _nodes(model) == {
        (i, j) for i in range(depth + 1) for j in range(depth + 1) if i + j <= depth
    }
    for i in range(1, depth + 1):
        pool = model.get_layer(f"x_{i}_0_pool")
        assert _producer(pool.input) == _node_output_layer(i - 1, 0)
        assert _producer(model.get_layer(f"x_{i}_0_conv1").input) == pool.name
    assert _producer(model.get_layer("x_0_0_conv1").input) == "image"
    for i in range(depth + 1):
        for j in range(1, depth + 1 - i):
            concat = model.get_layer(f"x_{i}_{j}_concat")
            fed_by = [_producer(t) for t in concat.input]
            expected = [_node_output_layer(i, k) for k in range(j)]
            assert fed_by == expected + [f"x_{i}_{j}_up"]
            up = model.get_layer(f"x_{i}_{j}_up")
            assert _producer(up.input) == _node_output_layer(i + 1, j - 1)
            assert _producer(model.get_layer(f"x_{i}_{j}_conv1").input) == concat.name
            # H works at the width of its level.
            assert model.get_layer(f"x_{i}_{j}_conv2").filters == TINY["filters"][i]
    head = model.get_layer(f"output_l{depth}_logits")
    assert _producer(head.input) == _node_output_layer(0, depth)


def test_deep_supervision_outputs_dict_by_name():
    model = keras_unetpp.build(
        depth=3, deep_supervision=True, **{**TINY, "filters": TINY["filters"][:4]}
    )
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    out = model(x)
    assert sorted(out) == ["output_l1", "output_l2", "output_l3"]
    for value in out.values():
        assert value.shape == (2, 32, 32, 1)
        v = keras.ops.convert_to_numpy(value)
        assert v.min() >= 0.0 and v.max() <= 1.0
    for level in (1, 2, 3):
        head = model.get_layer(f"output_l{level}_logits")
        assert _producer(head.input) == _node_output_layer(0, level)


def test_deep_supervision_compiles_and_fits_with_per_output_losses():
    model = keras_unetpp.build(
        depth=2, deep_supervision=True, input_shape=(32, 32, 1), filters=(4, 8, 16)
    )
    names = ["output_l1", "output_l2"]
    model.compile(
        optimizer="adam",
        loss={name: keras_unetpp.BCEDiceLoss() for name in names},
        loss_weights={"output_l1": 0.5, "output_l2": 1.0},
        metrics={"output_l2": [keras_unetpp.IoUScore()]},
    )
    rng = np.random.default_rng(1)
    x = rng.random((4, 32, 32, 1), dtype=np.float32)
    y = (rng.random((4, 32, 32, 1)) > 0.5).astype("float32")
    history = model.fit(x, {n: y for n in names}, epochs=1, batch_size=2, verbose=0)
    assert "output_l2_iou" in history.history
    assert np.isfinite(history.history["loss"][0])


def test_multiclass_softmax_and_logits():
    model = keras_unetpp.build(
        depth=2, num_classes=3, input_shape=(32, 32, 2), filters=(4, 8, 16)
    )
    x = np.random.default_rng(2).random((1, 32, 32, 2), dtype=np.float32)
    probs = keras.ops.convert_to_numpy(model(x))
    assert probs.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits_model = keras_unetpp.build(
        depth=2,
        num_classes=3,
        input_shape=(32, 32, 2),
        filters=(4, 8, 16),
        output_activation=None,
    )
    logits_model.set_weights(model.get_weights())
    logits = keras.ops.convert_to_numpy(logits_model(x))
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_variable_spatial_size_and_channels():
    model = keras_unetpp.build(depth=2, input_shape=(None, None, 4), filters=(4, 8, 16))
    for shape in [(1, 32, 32, 4), (2, 48, 64, 4)]:
        out = model(np.zeros(shape, "float32"))
        assert tuple(out.shape) == shape[:3] + (1,)


def test_mixed_precision_outputs_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = keras_unetpp.build(
            depth=2, deep_supervision=True, input_shape=(32, 32, 1), filters=(4, 8, 16)
        )
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("x_0_0_conv1").compute_dtype == "bfloat16"
    out = model(np.ones((1, 32, 32, 1), "float32"))
    assert {keras.backend.standardize_dtype(v.dtype) for v in out.values()} == {
        "float32"
    }


@pytest.mark.parametrize(
    "options,extra_layer",
    [
        (dict(upsampling="resize"), "x_0_1_up_resize"),
        (dict(normalization="group"), "x_0_1_gn1"),
        (dict(dropout=0.2), "x_0_1_drop2"),
        (dict(convs_per_node=3), "x_0_1_conv3"),
    ],
)
def test_options_add_named_layers(options, extra_layer):
    model = keras_unetpp.build(
        depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16), **options
    )
    assert model.get_layer(extra_layer) is not None
    assert model(np.zeros((1, 32, 32, 1), "float32")).shape == (1, 32, 32, 1)


def test_batch_norm_layers_and_no_redundant_bias():
    model = keras_unetpp.build(depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16))
    assert model.get_layer("x_1_1_bn2").momentum == pytest.approx(0.9)
    assert not model.get_layer("x_1_1_conv2").use_bias
    plain = keras_unetpp.build(
        depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16), normalization="none"
    )
    assert plain.get_layer("x_1_1_conv2").use_bias


def test_filters_as_int_doubles_per_level():
    model = keras_unetpp.build(depth=3, filters=8, input_shape=(32, 32, 1))
    assert [model.get_layer(f"x_{i}_0_conv1").filters for i in range(4)] == [
        8,
        16,
        32,
        64,
    ]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=0), r"`depth` must be an int in \[1, 6\]. Received: depth=0"),
        (dict(depth=7), r"Received: depth=7"),
        (dict(depth=2.5), r"`depth` must be an int in \[1, 6\].*Received: depth=2.5"),
        (dict(depth=True), r"Received: depth=True"),
        (
            dict(filters=(32, 64)),
            r"`filters` must have 5 .*Received: filters=\(32, 64\)",
        ),
        (dict(filters=(32, 64, 0, 1, 2)), r"Received: filters="),
        (dict(num_classes=0), r"`num_classes` .*Received: num_classes=0"),
        (dict(data_format="channels_first"), r"Received: data_format='channels_first'"),
        (
            dict(input_shape=(100, 96, 1)),
            r"height in `input_shape` must be a multiple of 2\*\*depth = 16",
        ),
        (dict(input_shape=(96, 8, 1)), r"width"),
        (dict(input_shape=(96, 96)), r"input_shape"),
        (dict(normalization="instance"), r"Received: normalization='instance'"),
        (dict(upsampling="nearest"), r"Received: upsampling='nearest'"),
        (dict(dropout=1.5), r"Received: dropout=1.5"),
        (dict(output_activation="softmax"), r"num_classes=1"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_unetpp.build(**kwargs)


def test_channels_first_global_setting_is_rejected():
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="channels_first"):
            keras_unetpp.build(depth=2)
    finally:
        keras.config.set_image_data_format(previous)


def test_only_core_keras_layers():
    model = keras_unetpp.build(
        depth=2,
        deep_supervision=True,
        input_shape=(32, 32, 1),
        filters=(4, 8, 16),
        upsampling="resize",
        normalization="group",
        dropout=0.1,
    )
    for layer in model.layers:
        assert type(layer).__module__.startswith("keras.src.layers"), layer
        assert type(layer).__name__ != "Lambda"


def test_batch_norm_uses_fused_kernel_only_on_tensorflow():
    """On TensorFlow, build() serves batch norm with the fused kernel.

    The layers stay core Keras either way; on JAX and PyTorch nothing is
    patched (the fused kernel is a TensorFlow op).
    """
    model = keras_unetpp.build(depth=1, input_shape=(8, 8, 1), filters=4)
    norms = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 6
    assert all(type(layer) is keras.layers.BatchNormalization for layer in norms)
    on_tensorflow = keras.backend.backend() == "tensorflow"
    for layer in norms:
        assert ("call" in vars(layer)) == on_tensorflow
