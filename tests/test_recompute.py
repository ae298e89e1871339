"""`recompute_nodes`: the same training, with nodes recomputed for their gradients."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp
from keras_unetpp.recompute import is_recomputing, recompute_nodes

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="recompute_nodes uses TensorFlow custom gradients",
)


def _twins(**kwargs):
    kwargs = {"depth": 2, "input_shape": (16, 16, 1), "filters": 4, **kwargs}
    plain = keras_unetpp.build(**kwargs)
    recomputed = keras_unetpp.build(**kwargs)
    recomputed.set_weights(plain.get_weights())
    return plain, recomputed


def _batch(seed=0, size=16):
    rng = np.random.default_rng(seed)
    images = rng.random((4, size, size, 1), dtype=np.float32)
    masks = (images > 0.6).astype("float32")
    return tf.constant(images), tf.constant(masks)


def _loss_and_gradients(model, images, masks):
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        heads = outputs.values() if isinstance(outputs, dict) else [outputs]
        loss = tf.add_n(
            [tf.reduce_mean(keras.losses.binary_crossentropy(masks, h)) for h in heads]
        )
    return loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"deep_supervision": True}, {"normalization": "group"}],
    ids=["plain", "deep-supervision", "group-norm"],
)
def test_gradients_and_statistics_equal_a_plain_step(kwargs):
    plain, recomputed = _twins(**kwargs)
    # X(0,0), X(1,0), X(2,0), X(0,1), X(1,1), X(0,2).
    assert recompute_nodes(recomputed) == 6
    images, masks = _batch()
    loss, gradients = _loss_and_gradients(plain, images, masks)
    loss_r, gradients_r = _loss_and_gradients(recomputed, images, masks)
    np.testing.assert_allclose(loss_r.numpy(), loss.numpy(), rtol=1e-6)
    assert len(gradients_r) == len(gradients) == len(plain.trainable_variables)
    for variable, got, want in zip(plain.trainable_variables, gradients_r, gradients):
        assert got is not None, variable.path
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6, err_msg=variable.path
        )
    # One moving-average update, as in the plain step (not two).
    pairs = zip(recomputed.non_trainable_variables, plain.non_trainable_variables)
    for got, want in pairs:
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7, err_msg=want.path
        )


def test_fit_matches_plain_training_and_saves_a_plain_model(tmp_path):
    plain, recomputed = _twins(deep_supervision=True)
    recompute_nodes(recomputed)
    images, masks = _batch(seed=1)
    targets = {f"output_l{level}": masks for level in (1, 2)}
    for model in (plain, recomputed):
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss={name: "binary_crossentropy" for name in targets},
        )
        model.fit(images, targets, batch_size=2, epochs=2, shuffle=False, verbose=0)
    for got, want in zip(recomputed.weights, plain.weights):
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5, err_msg=want.path
        )
    # Inference runs the ordinary graph; the saved file is a plain UNet++.
    np.testing.assert_allclose(
        recomputed.predict(images, verbose=0)["output_l2"],
        plain.predict(images, verbose=0)["output_l2"],
        atol=1e-5,
    )
    path = tmp_path / "recomputed.keras"
    recomputed.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert not is_recomputing(reloaded)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0)["output_l2"],
        recomputed.predict(images, verbose=0)["output_l2"],
        atol=1e-6,
    )


def test_keras_batch_norm_fallback_updates_statistics_once():
    """Synchronized batch norm runs Keras' computation: still one update."""
    plain, recomputed = _twins()
    for model in (plain, recomputed):
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    recompute_nodes(recomputed)
    images, masks = _batch(seed=2)
    _loss_and_gradients(plain, images, masks)
    _loss_and_gradients(recomputed, images, masks)
    pairs = zip(recomputed.non_trainable_variables, plain.non_trainable_variables)
    for got, want in pairs:
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7, err_msg=want.path
        )


def test_unet_baseline_and_idempotence():
    model = keras_unetpp.build_unet(depth=2, input_shape=(16, 16, 1), filters=4)
    # X(0,0), X(1,0), X(2,0), X(1,1), X(0,2): the U-Net's nodes.
    assert recompute_nodes(model) == 5
    call = vars(model)["call"]
    assert recompute_nodes(model) == 5
    assert vars(model)["call"] is call
    images, masks = _batch(seed=3)
    loss, gradients = _loss_and_gradients(model, images, masks)
    assert np.isfinite(loss.numpy())
    assert all(g is not None for g in gradients)


def test_refuses_dropout_and_foreign_models():
    model = keras_unetpp.build(depth=1, input_shape=(8, 8, 1), filters=4, dropout=0.2)
    with pytest.raises(ValueError, match="x_0_0_drop1.*dropout"):
        recompute_nodes(model)
    assert not is_recomputing(model)
    inputs = keras.Input((8, 8, 1))
    other = keras.Model(inputs, keras.layers.Conv2D(1, 3)(inputs))
    with pytest.raises(ValueError, match="not built by keras_unetpp"):
        recompute_nodes(other)
    with pytest.raises(ValueError, match="needs a keras_unetpp model"):
        recompute_nodes("model.keras")


def _conv_ops(model, images, masks):
    graph = (
        tf.function(lambda x, y: _loss_and_gradients(model, x, y))
        .get_concrete_function(images, masks)
        .graph
    )
    return sum(op.type == "Conv2D" for op in graph.get_operations())


def test_backward_pass_runs_the_nodes_again():
    plain, recomputed = _twins()
    recompute_nodes(recomputed)
    images, masks = _batch(seed=4)
    forward = _conv_ops(plain, images, masks)
    # 6 nodes x 2 convolutions + the 1x1 head, and the input gradients of the
    # 3 transposed convolutions (a transposed convolution is a
    # Conv2DBackpropInput op; its input gradient is a Conv2D).
    assert forward == 13 + 3
    # The forward convolutions, then the 12 of the nodes once more.
    assert _conv_ops(recomputed, images, masks) == forward + 12


_MEMORY_SCRIPT = """
import json
import sys
import numpy as np

sys.path.insert(0, {benchmarks!r})
import memory

# Before the first TensorFlow op: allocator statistics with or without oneDNN.
allocator = memory.enable_allocator_stats()
import keras_unetpp

def step_memory(model, images, masks):
    # Allocator bytes one training step needs above what is allocated before.
    model.train_on_batch(images, masks)  # traced and warmed up
    steps = [
        memory.step_peak(lambda: model.train_on_batch(images, masks))["step"]
        for _ in range(2)
    ]
    return min(steps)

rng = np.random.default_rng(5)
images = rng.random((8, 128, 128, 1), dtype=np.float32)
masks = (images > 0.6).astype("float32")
needs = {{"allocator": allocator}}
for name in ("plain", "recomputed"):
    model = keras_unetpp.build(depth=3, input_shape=(128, 128, 1), filters=8)
    if name == "recomputed":
        keras_unetpp.recompute_nodes(model)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    needs[name] = step_memory(model, images, masks)
print("@@", json.dumps(needs))
"""

# Largest recomputed / plain ratio of the step memory, per CPU allocator. With
# oneDNN, the peak is mostly the stored activations (measured on this machine:
# plain 162 MiB, recomputed 63, 0.39). Without oneDNN, both peaks are some
# 60-80 MiB higher, in both models alike (TensorFlow's own convolution
# gradients' scratch buffers, it seems: a 32x32 batch-2 step peaks at ~60 MiB
# too; not profiled further), so the ratio is higher (measured: plain 234-257
# MiB, recomputed 123-145, 0.48-0.60).
_MAX_RATIO = {"onednn": 0.6, "bfc": 0.7}


def test_training_step_needs_less_memory():
    """TensorFlow's allocator peak of one training step, plain vs recomputed.

    In a fresh process, the smaller of two steps each, batch 8 of 128x128.
    With or without oneDNN (`TF_ENABLE_ONEDNN_OPTS=0`; CPUs without AVX-512):
    `benchmarks/memory.py` turns on the BFC allocator's statistics there.
    """
    benchmarks = str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks")
    completed = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT.format(benchmarks=benchmarks)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    line = [x for x in completed.stdout.splitlines() if x.startswith("@@ ")][-1]
    needs = json.loads(line[3:])
    print(
        {k: v if k == "allocator" else round(v / 2**20, 1) for k, v in needs.items()},
        "MiB, ratio",
        round(needs["recomputed"] / needs["plain"], 3),
    )
    # Activations of one 128x128x8 float32 image tensor: 512 KiB; a batch of
    # 8 through 10 nodes keeps tens of MiB without recomputation.
    assert needs["plain"] > 32 * 2**20, needs
    ratio = _MAX_RATIO[needs["allocator"]]
    assert needs["recomputed"] < ratio * needs["plain"], needs


def test_trains_under_xla():
    plain, recomputed = _twins()
    recompute_nodes(recomputed)
    images, masks = _batch(seed=6)
    for model, jit in ((recomputed, True), (plain, False)):
        model.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=jit)
        model.fit(images, masks, batch_size=2, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(recomputed.weights, plain.weights):
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), atol=1e-4, err_msg=want.path
        )


def test_pruned_model_and_list_inputs():
    """A pruned sub-model trains with recomputation too; `[x]` is accepted."""
    model = keras_unetpp.build(
        depth=2, input_shape=(16, 16, 1), filters=4, deep_supervision=True
    )
    pruned = keras_unetpp.prune(model, 1)
    reference = keras_unetpp.prune(keras.models.clone_model(model), 1)
    reference.set_weights(pruned.get_weights())
    # X(0,0), X(1,0), X(0,1).
    assert recompute_nodes(pruned) == 3
    images, masks = _batch(seed=7)
    loss, gradients = _loss_and_gradients(reference, images, masks)
    with tf.GradientTape() as tape:
        outputs = pruned([images], training=True)
        loss_r = tf.reduce_mean(keras.losses.binary_crossentropy(masks, outputs))
    gradients_r = tape.gradient(loss_r, pruned.trainable_variables)
    np.testing.assert_allclose(loss_r.numpy(), loss.numpy(), rtol=1e-6)
    for got, want in zip(gradients_r, gradients):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
