"""Pruning and the inference modes: shared weights, node sets, exact outputs."""

import re

import keras
import numpy as np
import pytest

import keras_unetpp

FILTERS = (4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def supervised():
    keras.utils.set_random_seed(0)
    return keras_unetpp.build(
        depth=4, deep_supervision=True, input_shape=(None, None, 2), filters=FILTERS
    )


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((3, 32, 48, 2), dtype=np.float32)


def _node_set(model):
    nodes = set()
    for layer in model.layers:
        m = re.match(r"^x_(\d+)_(\d+)_", layer.name)
        if m:
            nodes.add((int(m.group(1)), int(m.group(2))))
    return nodes


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_pruned_model_holds_only_nodes_up_to_its_level(supervised, level):
    pruned = keras_unetpp.prune(supervised, level)
    assert _node_set(pruned) == {
        (i, j) for i in range(5) for j in range(5) if i + j <= level
    }
    heads = [layer.name for layer in pruned.layers if layer.name.startswith("output_")]
    assert heads == [f"output_l{level}_logits", f"output_l{level}"]
    assert keras_unetpp.model_depth(pruned) == level
    # Its parameters are exactly those of the layers it kept.
    assert pruned.count_params() == sum(
        supervised.get_layer(layer.name).count_params() for layer in pruned.layers
    )


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_pruned_output_equals_full_model_head(supervised, images, level):
    full = supervised(images, training=False)
    pruned = keras_unetpp.prune(supervised, level)(images, training=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(pruned),
        keras.ops.convert_to_numpy(full[f"output_l{level}"]),
    )


def test_pruned_model_shares_the_same_variables(supervised, images):
    pruned = keras_unetpp.prune(supervised, 2)
    kernel = supervised.get_layer("x_0_1_conv1").kernel
    assert pruned.get_layer("x_0_1_conv1").kernel is kernel
    before = keras.ops.convert_to_numpy(pruned(images))
    original = keras.ops.convert_to_numpy(kernel)
    try:
        kernel.assign(original * 2.0)
        after = keras.ops.convert_to_numpy(pruned(images))
        assert not np.allclose(before, after)
        full = supervised(images)["output_l2"]
        np.testing.assert_array_equal(after, keras.ops.convert_to_numpy(full))
    finally:
        kernel.assign(original)


def test_accurate_mode_averages_every_head(supervised, images):
    accurate = keras_unetpp.inference_model(supervised, "accurate")
    heads = supervised(images)
    expected = np.mean(
        [keras.ops.convert_to_numpy(heads[f"output_l{k}"]) for k in range(1, 5)], axis=0
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(accurate(images)), expected, rtol=1e-6, atol=1e-7
    )
    assert accurate.count_params() == supervised.count_params()


def test_fast_mode_is_the_pruned_head(supervised, images):
    fast = keras_unetpp.inference_model(supervised, "fast", level=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fast(images)),
        keras.ops.convert_to_numpy(supervised(images)["output_l3"]),
    )
    default = keras_unetpp.inference_model(supervised, "fast")
    assert default.output.shape[-1] == 1
    assert keras_unetpp.model_depth(default) == 4


def test_prune_errors(supervised):
    with pytest.raises(
        ValueError, match=r"between 1 and the model's depth \(4\).*level=5"
    ):
        keras_unetpp.prune(supervised, 5)
    with pytest.raises(ValueError, match="level=0"):
        keras_unetpp.prune(supervised, 0)
    with pytest.raises(ValueError, match="level=2.0"):
        keras_unetpp.prune(supervised, 2.0)
    plain = keras_unetpp.build(depth=3, input_shape=(32, 32, 1), filters=FILTERS[:4])
    with pytest.raises(ValueError, match="deep_supervision=True.*level=2"):
        keras_unetpp.prune(plain, 2)
    assert keras_unetpp.prune(plain, 3).count_params() == plain.count_params()
    with pytest.raises(ValueError, match="mode='slow'"):
        keras_unetpp.inference_model(supervised, "slow")
    with pytest.raises(ValueError, match="level=2"):
        keras_unetpp.inference_model(supervised, "accurate", level=2)
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not built by keras_unetpp"):
        keras_unetpp.prune(other, 1)


def test_pad_to_multiple_and_predict_padded(supervised):
    rng = np.random.default_rng(3)
    odd = rng.random((2, 37, 50, 2), dtype=np.float32)
    padded, (h, w) = keras_unetpp.pad_to_multiple(odd, 16)
    assert padded.shape == (2, 48, 64, 2) and (h, w) == (37, 50)
    np.testing.assert_array_equal(padded[:, :37, :50], odd)
    pruned = keras_unetpp.prune(supervised, 2)
    out = keras_unetpp.predict_padded(pruned, odd)
    assert out.shape == (2, 37, 50, 1)
    # The pruned L2 model has stride 4: the padding it gets is to 40 x 52.
    direct = keras.ops.convert_to_numpy(
        pruned(keras_unetpp.pad_to_multiple(odd, 4)[0])
    )[:, :37, :50]
    np.testing.assert_allclose(out, direct, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape=\(37, 50, 2\)"):
        keras_unetpp.pad_to_multiple(odd[0], 16)


def test_count_flops_matches_hand_count():
    model = keras_unetpp.build(
        depth=1, input_shape=(None, None, 1), filters=(2, 4), normalization="none"
    )
    h = w = 8
    # X(0,0): 1->2 and 2->2 convs at 8x8; X(1,0): 2->4, 4->4 at 4x4;
    # up 4->2 (2x2 kernel scattered from 4x4 input); X(0,1): 4->2, 2->2; head 2->1.
    macs = (9 * 1 * 2 + 9 * 2 * 2) * 64 + (9 * 2 * 4 + 9 * 4 * 4) * 16
    macs += 4 * 4 * 2 * 16 + (9 * 4 * 2 + 9 * 2 * 2) * 64 + 2 * 1 * 64
    biases = (2 + 2 + 2 + 2 + 2 + 1) * 64 + (4 + 4) * 16
    assert keras_unetpp.count_flops(model, h, w) == 2 * macs + biases
