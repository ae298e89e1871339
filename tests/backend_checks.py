"""The core of keras_unetpp on one Keras backend: build, prune, losses,
metrics, fit and predict, and weights saved for TensorFlow.

Keras fixes its backend when it is imported, so tests/test_backends.py runs
this file once per backend in a process of its own:

    KERAS_BACKEND=jax python -m pytest tests/backend_checks.py
    KERAS_BACKEND=torch python -m pytest tests/backend_checks.py

(The file name does not match `test_*.py`, so the main TensorFlow run does
not collect it.) With `KERAS_UNETPP_ARTIFACTS=<folder>` set, the trained
model's `.weights.h5`, `.keras`, build arguments, test images and
predictions are written there, for tests/test_backends.py to rebuild the
model under TensorFlow and compare.
"""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
from gradients import value_and_gradient
from keras import ops

import keras_unetpp
from keras_unetpp import distribute

BACKEND = keras.backend.backend()
CONFIG = dict(
    depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16), deep_supervision=True
)


def _squares(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.2, (n, 32, 32, 1)).astype("float32")
    masks = np.zeros((n, 32, 32, 1), "float32")
    for k in range(n):
        top, left = rng.integers(0, 20, size=2)
        masks[k, top : top + 10, left : left + 10] = 1.0
    return images + masks, masks


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras_unetpp.build(**CONFIG)


def test_runs_on_the_requested_backend():
    assert BACKEND == os.environ.get("KERAS_BACKEND", "tensorflow")


def test_build_predict_prune_and_inference_modes(model):
    images, _ = _squares(3, seed=1)
    outputs = model.predict(images, verbose=0)
    assert sorted(outputs) == ["output_l1", "output_l2"]
    assert all(
        v.shape == (3, 32, 32, 1) and v.dtype == np.float32 for v in outputs.values()
    )
    pruned = keras_unetpp.prune(model, 1)
    assert pruned.count_params() < model.count_params()
    np.testing.assert_allclose(
        pruned.predict(images, verbose=0), outputs["output_l1"], atol=1e-6
    )
    accurate = keras_unetpp.inference_model(model, "accurate")
    np.testing.assert_allclose(
        accurate.predict(images, verbose=0),
        (outputs["output_l1"] + outputs["output_l2"]) / 2,
        atol=1e-6,
    )


def test_bce_dice_against_numpy_and_finite_gradients():
    rng = np.random.default_rng(2)
    y = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    p = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype("float32")
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).reshape(2, -1).mean(1)
    dice = (2 * (y * p).reshape(2, -1).sum(1) + 1) / (
        y.reshape(2, -1).sum(1) + p.reshape(2, -1).sum(1) + 1
    )
    expected = np.mean(0.5 * bce + 1 - dice)
    loss = keras_unetpp.BCEDiceLoss()
    assert float(ops.convert_to_numpy(loss(y, p))) == pytest.approx(expected, rel=1e-5)
    empty = np.zeros((1, 8, 8, 1), "float32")
    for logits in (np.full_like(empty, 100.0), np.full_like(empty, -100.0)):
        value, grad = value_and_gradient(
            lambda v, t=empty: keras_unetpp.bce_dice(t, v, from_logits=True), logits
        )
        assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_imbalance_losses_against_numpy_and_finite_gradients():
    # Tversky (alpha 0.7, beta 0.3, smooth 1), its focal form (gamma 0.75)
    # and the binary focal loss (alpha 0.25, gamma 2), by explicit sums.
    rng = np.random.default_rng(6)
    y = (rng.random((2, 8, 8, 1)) > 0.6).astype("float32")
    p = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype("float32")
    tp = (y * p).reshape(2, -1).sum(1)
    fn = (y * (1 - p)).reshape(2, -1).sum(1)
    fp = ((1 - y) * p).reshape(2, -1).sum(1)
    index = (tp + 1) / (tp + 0.7 * fn + 0.3 * fp + 1)
    focal = -(
        0.25 * y * (1 - p) ** 2 * np.log(p) + 0.75 * (1 - y) * p**2 * np.log(1 - p)
    )
    expected = {
        keras_unetpp.TverskyLoss(): np.mean(1 - index),
        keras_unetpp.FocalTverskyLoss(): np.mean((1 - index) ** 0.75),
        keras_unetpp.FocalLoss(): focal.mean(),
    }
    for loss, value in expected.items():
        got = float(ops.convert_to_numpy(loss(y, p)))
        assert got == pytest.approx(value, rel=1e-5), loss.name
        for logits in (np.full_like(y, 100.0), np.full_like(y, -100.0)):
            fn_ = loss.__class__(from_logits=True)
            value, grad = value_and_gradient(lambda v, f=fn_: f(y, v), logits)
            assert np.isfinite(value) and np.all(np.isfinite(grad)), loss.name


def test_categorical_loss_and_multiclass_metrics():
    # Two pixels, three classes, labels [0, 2]; predictions put 0.7 on the
    # true class. CE = -log 0.7; per-class Dice with smooth 1:
    # class 0: (2*0.7 + 1) / (1 + 0.85 + 1), class 1: 1 / (0 + 0.3 + 1),
    # class 2: (2*0.7 + 1) / (1 + 0.85 + 1).
    labels = np.array([[[0, 2]]], "int32")
    probs = np.array([[[[0.7, 0.15, 0.15], [0.15, 0.15, 0.7]]]], "float32")
    dice = np.mean([2.4 / 2.85, 1 / 1.3, 2.4 / 2.85])
    expected = 0.5 * -np.log(0.7) + 1 - dice
    got = keras_unetpp.CategoricalCEDiceLoss()(labels, probs)
    assert float(ops.convert_to_numpy(got)) == pytest.approx(expected, rel=1e-5)
    iou = keras_unetpp.IoUScore(num_classes=3)
    iou.update_state(labels, probs)
    assert float(iou.result()) == pytest.approx(1.0)  # classes 0 and 2 perfect


def test_streaming_iou_and_dice_against_numpy():
    rng = np.random.default_rng(3)
    batches = [
        ((rng.random((n, 8, 8, 1)) > 0.5).astype("float32"), rng.random((n, 8, 8, 1)))
        for n in (2, 3)
    ]
    iou, dice = keras_unetpp.IoUScore(), keras_unetpp.DiceScore()
    per_image = keras_unetpp.IoUScore(average="per_image")
    for y, p in batches:
        for metric in (iou, dice, per_image):
            metric.update_state(y, p.astype("float32"))
    truth = np.concatenate([y for y, _ in batches]) > 0.5
    predicted = np.concatenate([p for _, p in batches]) > 0.5
    inter = (truth & predicted).sum()
    assert float(iou.result()) == pytest.approx(inter / (truth | predicted).sum())
    assert float(dice.result()) == pytest.approx(
        2 * inter / (truth.sum() + predicted.sum())
    )
    images_iou = (truth & predicted).sum((1, 2, 3)) / (truth | predicted).sum((1, 2, 3))
    assert float(per_image.result()) == pytest.approx(images_iou.mean())
    iou.reset_state()
    assert float(iou.result()) == 1.0  # nothing seen: empty on empty


def test_fit_lowers_the_loss_and_weights_reload_for_tensorflow(tmp_path):
    keras.utils.set_random_seed(4)
    model = keras_unetpp.build(**CONFIG)
    heads = ["output_l1", "output_l2"]
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss={name: keras_unetpp.BCEDiceLoss() for name in heads},
        metrics={"output_l2": [keras_unetpp.IoUScore()]},
    )
    images, masks = _squares(8, seed=5)
    targets = {name: masks for name in heads}
    # The training loss (batch statistics, as in training) goes down.
    history = model.fit(images, targets, batch_size=4, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.9 * history["loss"][0], history["loss"]
    assert 0.0 <= history["output_l2_iou"][-1] <= 1.0

    folder = pathlib.Path(os.environ.get("KERAS_UNETPP_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_weights(folder / "model.weights.h5")
    model.save(folder / "model.keras")
    predictions = model.predict(images, verbose=0)
    np.save(folder / "images.npy", images)
    np.savez(folder / "predictions.npz", **predictions)
    (folder / "config.json").write_text(json.dumps({"backend": BACKEND, **CONFIG}))
    # The same weights, loaded into a rebuilt model on this backend.
    rebuilt = keras_unetpp.build(**CONFIG)
    rebuilt.load_weights(folder / "model.weights.h5")
    again = rebuilt.predict(images, verbose=0)
    for name in heads:
        np.testing.assert_allclose(again[name], predictions[name], atol=1e-6)


def test_tf_distribute_strategies_need_tensorflow():
    assert distribute.get_strategy("default").num_replicas_in_sync == 1
    if BACKEND == "tensorflow":
        assert distribute.get_strategy("mirrored").num_replicas_in_sync >= 1
    else:
        with pytest.raises(ValueError, match=f"TensorFlow backend.*'{BACKEND}'"):
            distribute.get_strategy("mirrored")
