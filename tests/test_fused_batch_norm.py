"""`fuse_batch_norm`: Keras batch normalization through TensorFlow's fused kernel.

Every check compares against Keras' own `BatchNormalization` computation on
the same weights and inputs: outputs, gradients, moving statistics, a few
optimizer steps of a UNet++, and what is saved.
"""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp
from keras_unetpp.fused_batch_norm import fuse_batch_norm, is_fused

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="fuse_batch_norm serves the TensorFlow backend only",
)


def _conv_bn_relu(policy="float32", bn_kwargs=None, shape=(12, 10, 6)):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(
        5, 3, padding="same", use_bias=False, dtype=policy, name="conv"
    )(inputs)
    x = keras.layers.BatchNormalization(
        momentum=0.9, dtype=policy, name="bn", **(bn_kwargs or {})
    )(x)
    x = keras.layers.Activation("relu", dtype=policy, name="relu")(x)
    outputs = keras.layers.Activation("linear", dtype="float32", name="out")(x)
    return keras.Model(inputs, outputs)


def _twins(policy="float32", bn_kwargs=None, shape=(12, 10, 6)):
    """A Keras model and a fused copy with the same (non-trivial) weights."""
    plain = _conv_bn_relu(policy, bn_kwargs, shape)
    bn = plain.get_layer("bn")
    channels = bn.gamma.shape[0]
    bn.gamma.assign(np.linspace(0.5, 2.0, channels))
    bn.beta.assign(np.linspace(-1.0, 1.0, channels))
    bn.moving_mean.assign(np.linspace(-0.3, 0.4, channels))
    bn.moving_variance.assign(np.linspace(0.5, 3.0, channels))
    fused = _conv_bn_relu(policy, bn_kwargs, shape)
    fused.set_weights(plain.get_weights())
    assert fuse_batch_norm(fused) == 1
    return plain, fused


def _step(model, images):
    """Training-mode outputs, gradients of a weighted sum, then moving stats."""
    weights = tf.constant(np.linspace(0.0, 1.0, 5), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = model(images, training=True)
        loss = tf.reduce_sum(tf.square(outputs) * weights)
    gradients = tape.gradient(loss, [images] + model.trainable_variables)
    moving = [v.numpy() for v in model.non_trainable_variables]
    return outputs.numpy(), [g.numpy() for g in gradients], moving


def _images(shape=(4, 12, 10, 6), seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(2.0, 3.0, shape).astype("float32"))


@pytest.mark.parametrize("policy, rtol", [("float32", 2e-5), ("mixed_bfloat16", 2e-2)])
def test_training_step_matches_keras(policy, rtol):
    plain, fused = _twins(policy)
    images = _images()
    expected = _step(plain, images)
    received = _step(fused, images)
    scale = np.abs(expected[0]).max()
    np.testing.assert_allclose(received[0], expected[0], atol=rtol * scale)
    # Input, kernel, gamma and beta gradients.
    for got, want in zip(received[1], expected[1]):
        np.testing.assert_allclose(got, want, atol=rtol * np.abs(want).max())
    # Moving mean and (biased) moving variance after one update.
    for got, want in zip(received[2], expected[2]):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6)
    # The update really happened: 0.9 * old + 0.1 * batch statistics.
    conv = plain.get_layer("conv")(images)
    batch_mean = np.mean(np.asarray(conv, "float64"), axis=(0, 1, 2))
    old_mean = np.linspace(-0.3, 0.4, 5)
    np.testing.assert_allclose(
        received[2][0], 0.9 * old_mean + 0.1 * batch_mean, rtol=10 * rtol, atol=1e-4
    )


@pytest.mark.parametrize("policy, rtol", [("float32", 2e-5), ("mixed_bfloat16", 2e-2)])
def test_inference_matches_keras(policy, rtol):
    plain, fused = _twins(policy)
    images = _images(seed=1)
    expected = plain(images, training=False).numpy()
    received = fused(images, training=False).numpy()
    np.testing.assert_allclose(received, expected, atol=rtol * np.abs(expected).max())
    # Inference leaves the moving statistics alone.
    before = [v.numpy() for v in fused.non_trainable_variables]
    fused(images, training=False)
    for got, want in zip(fused.non_trainable_variables, before):
        np.testing.assert_array_equal(got.numpy(), want)


def _op_types(model, shape, training):
    spec = tf.TensorSpec((None,) + shape, tf.float32)
    graph = (
        tf.function(lambda x: model(x, training=training))
        .get_concrete_function(spec)
        .graph
    )
    return {op.type for op in graph.get_operations()}


def test_graph_runs_the_fused_kernel():
    model = keras_unetpp.build(depth=2, input_shape=(16, 16, 1))
    layers = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert layers and all(is_fused(layer) for layer in layers)
    for training in (True, False):
        ops = _op_types(model, (16, 16, 1), training)
        assert "FusedBatchNormV3" in ops
        # Keras' element-wise moments are gone.
        assert "SquaredDifference" not in ops
        assert "Rsqrt" not in ops


@pytest.mark.parametrize(
    "bn_kwargs, shape",
    [
        ({"synchronized": True}, (12, 10, 6)),
        ({"axis": 1}, (6, 12, 10)),
        ({"epsilon": 1e-6}, (12, 10, 6)),
    ],
    ids=["synchronized", "channels-first-axis", "tiny-epsilon"],
)
def test_falls_back_to_keras_where_the_kernel_cannot_serve(bn_kwargs, shape):
    plain, fused = _twins(bn_kwargs=bn_kwargs, shape=shape)
    ops = _op_types(fused, shape, True)
    assert "FusedBatchNormV3" not in ops
    images = _images((3,) + shape, seed=2)
    if "axis" in bn_kwargs:
        expected = plain(images, training=True).numpy()
        received = fused(images, training=True).numpy()
        np.testing.assert_allclose(received, expected, rtol=1e-6, atol=1e-6)
        return
    expected = _step(plain, images)
    received = _step(fused, images)
    np.testing.assert_allclose(received[0], expected[0], rtol=1e-6, atol=1e-6)


def test_rank_three_inputs_fall_back():
    layer = keras.layers.BatchNormalization()
    fuse_batch_norm(layer)
    sequences = tf.constant(np.random.default_rng(3).normal(size=(2, 7, 4)), tf.float32)
    reference = keras.layers.BatchNormalization()
    np.testing.assert_allclose(
        layer(sequences, training=True).numpy(),
        reference(sequences, training=True).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )


def test_fit_matches_keras_batch_norm():
    """Five Adam steps of a depth-2 UNet++: fused vs Keras' computation."""
    fused = keras_unetpp.build(depth=2, input_shape=(16, 16, 1), filters=4)
    # A clone is rebuilt from the configs: plain Keras batch norm.
    plain = keras.models.clone_model(fused)
    plain.set_weights(fused.get_weights())
    bn_plain = [
        layer
        for layer in plain.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bn_plain and not any(is_fused(layer) for layer in bn_plain)
    rng = np.random.default_rng(4)
    images = rng.random((8, 16, 16, 1), dtype=np.float32)
    masks = (images > 0.5).astype("float32")
    for model in (fused, plain):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit(images, masks, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(fused.weights, plain.weights):
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), atol=1e-4, err_msg=got.path
        )
    np.testing.assert_allclose(
        fused.predict(images, verbose=0), plain.predict(images, verbose=0), atol=1e-4
    )


def test_saved_file_is_plain_keras(tmp_path):
    model = keras_unetpp.build(depth=1, input_shape=(8, 8, 1), filters=4)
    layer = model.get_layer("x_0_0_bn1")
    assert type(layer) is keras.layers.BatchNormalization
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    saved = [
        entry
        for entry in config["config"]["layers"]
        if entry["config"]["name"] == "x_0_0_bn1"
    ][0]
    assert (saved["module"], saved["class_name"]) == (
        "keras.layers",
        "BatchNormalization",
    )
    assert "registered_name" not in saved or saved["registered_name"] is None
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(5).random((2, 8, 8, 1), dtype=np.float32)
    # The reloaded copy computes with Keras' kernels: same numbers.
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    # X(0,0), X(1,0), X(0,1): two batch norms each.
    assert fuse_batch_norm(reloaded) == 6


def test_is_idempotent_and_resets_traced_functions():
    model = keras_unetpp.build(depth=1, input_shape=(8, 8, 1), filters=4)
    calls = {layer.name: vars(layer).get("call") for layer in model.layers}
    model.compile(optimizer="adam", loss="binary_crossentropy")
    images = np.zeros((2, 8, 8, 1), np.float32)
    model.predict(images, verbose=0)
    assert model.predict_function is not None
    assert fuse_batch_norm(model) == 6
    assert model.predict_function is None
    for layer in model.layers:
        assert vars(layer).get("call") is calls[layer.name]


def test_rejects_what_is_not_a_keras_layer():
    with pytest.raises(ValueError, match="needs a Keras model or layer"):
        fuse_batch_norm("model.keras")


def test_trains_under_xla():
    """`jit_compile=True` (GPUs, TPUs): XLA compiles the fused kernel too."""
    fused = keras_unetpp.build(depth=1, input_shape=(16, 16, 1), filters=4)
    plain = keras.models.clone_model(fused)
    plain.set_weights(fused.get_weights())
    rng = np.random.default_rng(6)
    images = rng.random((4, 16, 16, 1), dtype=np.float32)
    masks = (images > 0.5).astype("float32")
    for model, jit in ((fused, True), (plain, False)):
        model.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=jit)
        model.fit(images, masks, batch_size=2, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(fused.weights, plain.weights):
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), atol=1e-4, err_msg=got.path
        )
