"""Tversky, focal Tversky and focal losses against NumPy, on every backend."""

import keras
import numpy as np
import pytest
from gradients import value_and_gradient

import keras_unetpp
from keras_unetpp import imbalance_losses
from keras_unetpp.errors import InputError


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _one_hot_np(y, p):
    """(targets, probabilities) with a class axis, float64, both head kinds."""
    p = p.astype(np.float64)
    if p.shape[-1] == 1:
        return y.astype(np.float64), p
    return np.eye(p.shape[-1])[y.reshape(p.shape[:-1])], p


def np_tversky(y, p, alpha=0.7, beta=0.3, gamma=1.0, smooth=1.0, per_image=True):
    """Reference (focal) Tversky loss per image, by explicit sums."""
    y, p = _one_hot_np(y, p)
    axes = (1, 2) if per_image else (0, 1, 2)
    tp = (y * p).sum(axes)
    fn = (y * (1 - p)).sum(axes)
    fp = ((1 - y) * p).sum(axes)
    index = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    loss = 1 - index.mean(-1)
    loss = np.broadcast_to(loss, (len(y),))
    return np.maximum(loss, 1e-7) ** gamma if gamma != 1.0 else loss


def np_focal(y, p, alpha=0.25, gamma=2.0):
    """Reference focal loss per image."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    if p.shape[-1] == 1:
        y = y.astype(np.float64)
        term = -(
            alpha * y * (1 - p) ** gamma * np.log(p)
            + (1 - alpha) * (1 - y) * p**gamma * np.log(1 - p)
        )
    else:
        onehot = np.eye(p.shape[-1])[y.reshape(p.shape[:-1])]
        term = -(alpha * onehot * (1 - p) ** gamma * np.log(p))
    return term.reshape(len(p), -1).sum(1) / np.prod(p.shape[1:3])


def _binary(seed=0, shape=(3, 8, 8, 1)):
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) > 0.7).astype("float32")
    p = rng.uniform(0.02, 0.98, shape).astype("float32")
    return y, p


def _multiclass(seed=0, shape=(2, 8, 8), classes=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, shape).astype("int32")
    logits = rng.normal(0, 2, (*shape, classes)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, logits, probs


def test_hand_worked_values():
    # Two pixels: y = [1, 0], p = [0.8, 0.2]. TP 0.8, FN 0.2, FP 0.2:
    # TI = (0.8 + 1) / (0.8 + 0.7*0.2 + 0.3*0.2 + 1) = 1.8 / 2.0 = 0.9.
    y = np.array([[[[1.0]], [[0.0]]]], "float32")
    p = np.array([[[[0.8]], [[0.2]]]], "float32")
    assert float(keras_unetpp.TverskyLoss()(y, p)) == pytest.approx(0.1, abs=1e-6)
    # Focal Tversky, gamma 0.75: 0.1 ** 0.75 = 0.177828.
    got = float(keras_unetpp.FocalTverskyLoss()(y, p))
    assert got == pytest.approx(0.177828, abs=1e-5)
    # Focal, alpha 0.25, gamma 2: pixel 1: 0.25 * 0.2**2 * -log 0.8 = 0.0022314;
    # pixel 2: 0.75 * 0.2**2 * -log 0.8 = 0.0066943; mean 0.0044629.
    got = float(keras_unetpp.FocalLoss()(y, p))
    assert got == pytest.approx(0.0044629, abs=1e-6)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("alpha,beta,smooth", [(0.7, 0.3, 1.0), (0.5, 0.5, 0.0)])
def test_tversky_matches_numpy(per_image, alpha, beta, smooth):
    y, p = _binary()
    for gamma in (1.0, 0.75, 2.0):
        got = imbalance_losses.tversky(
            y, p, alpha=alpha, beta=beta, gamma=gamma, smooth=smooth,
            per_image=per_image,
        )  # fmt: skip
        expected = np_tversky(y, p, alpha, beta, gamma, smooth, per_image)
        np.testing.assert_allclose(_np(got), expected, rtol=1e-5)


def test_tversky_with_equal_weights_is_the_soft_dice_loss():
    # (TP + s) / (TP + (FN + FP) / 2 + s) = (2 TP + 2 s) / (|y| + |p| + 2 s):
    # the soft Dice with smoothing 2 s.
    y, p = _binary(1)
    dice = _np(keras_unetpp.soft_dice(y, p, smooth=2.0))[:, 0]
    got = _np(imbalance_losses.tversky(y, p, alpha=0.5, beta=0.5))
    np.testing.assert_allclose(got, 1 - dice, rtol=1e-5)


def test_multiclass_tversky_and_focal_match_numpy_sparse_onehot_and_logits():
    labels, logits, probs = _multiclass()
    onehot = np.eye(3, dtype="float32")[labels]
    for loss, reference in (
        (keras_unetpp.TverskyLoss(), np_tversky(labels, probs).mean()),
        (
            keras_unetpp.FocalTverskyLoss(gamma=0.5),
            np_tversky(labels, probs, gamma=0.5).mean(),
        ),
        (keras_unetpp.FocalLoss(), np_focal(labels, probs).mean()),
    ):
        for target in (labels, labels[..., None], onehot):
            assert float(loss(target, probs)) == pytest.approx(reference, rel=1e-5)
        from_logits = loss.__class__.from_config(
            {**loss.get_config(), "from_logits": True}
        )
        assert float(from_logits(labels, logits)) == pytest.approx(reference, rel=1e-4)


def test_binary_focal_matches_numpy_and_logits():
    y, p = _binary(2)
    for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.9, 1.5)):
        got = _np(imbalance_losses.focal(y, p, alpha=alpha, gamma=gamma))
        np.testing.assert_allclose(got, np_focal(y, p, alpha, gamma), rtol=1e-5)
    logits = np.log(p / (1 - p))
    a = float(keras_unetpp.FocalLoss(from_logits=True)(y, logits))
    b = float(keras_unetpp.FocalLoss()(y, p))
    assert a == pytest.approx(b, rel=1e-4)
    # gamma = 0, alpha = 0.5: half the binary cross-entropy.
    bce = float(keras.losses.BinaryCrossentropy()(y, p))
    half = float(keras_unetpp.FocalLoss(alpha=0.5, gamma=0.0)(y, p))
    assert half == pytest.approx(0.5 * bce, rel=1e-4)


def test_perfect_prediction_scores_zero_and_empty_masks_are_finite():
    y, _ = _binary(3)
    for loss in (keras_unetpp.TverskyLoss(), keras_unetpp.FocalLoss()):
        assert float(loss(y, y)) == pytest.approx(0.0, abs=1e-5)
    zeros = np.zeros((1, 8, 8, 1), "float32")
    # Empty target, empty prediction, no smoothing: the index is 1, loss 0.
    assert float(keras_unetpp.TverskyLoss(smooth=0.0)(zeros, zeros)) == 0.0


@pytest.mark.parametrize(
    "loss_cls", [keras_unetpp.TverskyLoss, keras_unetpp.FocalTverskyLoss,
                 keras_unetpp.FocalLoss],
)  # fmt: skip
@pytest.mark.parametrize("case", ["logits+100", "logits-100", "perfect", "empty"])
def test_gradients_are_finite(loss_cls, case):
    shape = (2, 8, 8, 1)
    y = np.zeros(shape, "float32")
    y[0, :4] = 1.0
    from_logits = case.startswith("logits")
    if case == "logits+100":
        pred = np.full(shape, 100.0, "float32")
    elif case == "logits-100":
        pred = np.full(shape, -100.0, "float32")
    elif case == "perfect":
        pred = y.copy()
    else:
        y = np.zeros(shape, "float32")
        pred = np.zeros(shape, "float32")
    kwargs = {} if loss_cls is keras_unetpp.FocalLoss else {"smooth": 0.0}
    for extra in ({}, kwargs):
        loss_fn = loss_cls(from_logits=from_logits, **extra)
        value, grad = value_and_gradient(lambda v, f=loss_fn: f(y, v), pred)
        assert np.isfinite(value), (case, extra)
        assert np.all(np.isfinite(grad)), (case, extra)


def test_multiclass_gradients_finite_on_extreme_logits():
    labels = np.zeros((1, 4, 4, 1), "int32")
    logits = np.stack([np.full((1, 4, 4), v) for v in (-100, 100, 0)], -1).astype(
        "float32"
    )
    for loss_fn in (
        keras_unetpp.TverskyLoss(from_logits=True),
        keras_unetpp.FocalTverskyLoss(from_logits=True),
        keras_unetpp.FocalLoss(from_logits=True),
    ):
        value, grad = value_and_gradient(lambda v, f=loss_fn: f(labels, v), logits)
        assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (keras_unetpp.TverskyLoss,
         dict(from_logits=True, alpha=0.6, beta=0.4, smooth=0.5, per_image=False)),
        (keras_unetpp.FocalTverskyLoss,
         dict(alpha=0.8, beta=0.2, gamma=0.5, smooth=2.0, name="ft")),
        (keras_unetpp.FocalLoss, dict(from_logits=True, alpha=0.4, gamma=1.5)),
    ],
)  # fmt: skip
def test_config_round_trip(cls, kwargs):
    loss = cls(**kwargs)
    config = loss.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    assert cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is cls and restored.get_config() == config
    y, p = _binary(5)
    assert float(restored(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


def test_compiled_model_reloads_in_safe_mode_with_its_losses(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_unetpp.build(
        depth=2, input_shape=(16, 16, 1), filters=(4, 8, 16), deep_supervision=True
    )
    losses = {
        "output_l1": keras_unetpp.FocalLoss(gamma=1.0),
        "output_l2": keras_unetpp.FocalTverskyLoss(alpha=0.8, beta=0.2),
    }
    model.compile(optimizer="adam", loss=losses)
    y, _ = _binary(6, (2, 16, 16, 1))
    images = y + 0.1
    model.fit(images, {"output_l1": y, "output_l2": y}, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert {k: type(v) for k, v in loaded.loss.items()} == {
        k: type(v) for k, v in losses.items()
    }
    assert loaded.loss["output_l2"].get_config() == losses["output_l2"].get_config()
    expected = model.evaluate(images, {"output_l1": y, "output_l2": y}, verbose=0)
    got = loaded.evaluate(images, {"output_l1": y, "output_l2": y}, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_head_loss_and_loss_spec():
    assert isinstance(imbalance_losses.head_loss("bce-dice"), keras_unetpp.BCEDiceLoss)
    assert isinstance(
        imbalance_losses.head_loss("bce-dice", num_classes=3),
        keras_unetpp.CategoricalCEDiceLoss,
    )
    spec = imbalance_losses.loss_spec("focal-tversky", alpha=0.6, gamma=None)
    assert spec == {"name": "focal-tversky", "alpha": 0.6}
    loss = imbalance_losses.head_loss(spec, from_logits=True)
    assert isinstance(loss, keras_unetpp.FocalTverskyLoss)
    assert loss.alpha == 0.6 and loss.from_logits and loss.gamma == 0.75
    with pytest.raises(InputError, match="Received: loss='dice'"):
        imbalance_losses.loss_spec("dice")
    with pytest.raises(InputError, match=r"The focal loss takes \['alpha', 'gamma'\]"):
        imbalance_losses.loss_spec("focal", beta=0.3)
    with pytest.raises(InputError, match="Received: alpha=1.5"):
        imbalance_losses.loss_spec("focal", alpha=1.5)


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (keras_unetpp.TverskyLoss, dict(alpha=-1), "Received: alpha=-1"),
        (keras_unetpp.FocalTverskyLoss, dict(gamma=0), "Received: gamma=0"),
        (keras_unetpp.FocalLoss, dict(from_logits="yes"), "from_logits='yes'"),
    ],
)
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
