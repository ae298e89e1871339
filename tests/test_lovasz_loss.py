"""The Lovasz loss against an independent NumPy computation, on every backend.

The reference never uses the cumulative-sum formula of the library: it
evaluates the Jaccard loss as a set function on the sets of mistaken pixels
and takes its Lovasz extension as the Choquet integral over the error
levels, `sum_k (e_(k) - e_(k+1)) * Delta({pixels with the k largest
errors})`.
"""

import keras
import numpy as np
import pytest
from gradients import value_and_gradient

import keras_unetpp
from keras_unetpp import imbalance_losses


def _np(x):
    return keras.ops.convert_to_numpy(x)


def np_jaccard_loss_of_mistakes(truth, mistakes):
    """`1 - IoU` of the prediction that is wrong exactly on `mistakes`."""
    prediction = np.where(mistakes, 1 - truth, truth)
    union = np.logical_or(truth, prediction).sum()
    if union == 0:
        return 0.0
    return 1.0 - np.logical_and(truth, prediction).sum() / union


def np_lovasz_extension(truth, errors):
    """Choquet integral of the Jaccard set function (one image, one class)."""
    truth = truth.ravel().astype(bool)
    errors = errors.ravel().astype(np.float64)
    order = np.argsort(-errors, kind="stable")
    levels = np.append(errors[order], 0.0)
    total = 0.0
    for k in range(len(order)):
        mistakes = np.zeros(len(truth), bool)
        mistakes[order[: k + 1]] = True
        total += (levels[k] - levels[k + 1]) * np_jaccard_loss_of_mistakes(
            truth, mistakes
        )
    return total


def np_lovasz(y, p, per_image=True):
    """Reference loss per image for one-class heads (`(n, h, w, 1)`)."""
    y = y.astype(np.float64)
    p = p.astype(np.float64)
    if not per_image:
        value = np_lovasz_extension(y, np.abs(y - p))
        return np.full(len(y), value)
    return np.array([np_lovasz_extension(a, np.abs(a - b)) for a, b in zip(y, p)])


def _binary(seed, shape=(3, 6, 5, 1)):
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) > 0.6).astype("float32")
    p = rng.uniform(0.01, 0.99, shape).astype("float32")
    return y, p


def test_hard_predictions_score_exactly_one_minus_iou():
    # Touching squares, a one-pixel object, an empty mask with a false alarm.
    y = np.zeros((3, 8, 8, 1), "float32")
    y[0, 1:4, 1:4] = 1
    y[0, 1:4, 4:7] = 1
    y[1, 5, 5] = 1
    p = np.zeros_like(y)
    p[0, 1:4, 2:7] = 1  # 15 of 18 found, no false alarm: IoU 15/18
    p[1, 5, 5] = 1
    p[1, 0, 0] = 1  # the one pixel and one false alarm: IoU 1/2
    p[2, 2, 2] = 1  # empty truth, one false alarm: IoU 0
    got = _np(imbalance_losses.lovasz(y, p))
    np.testing.assert_allclose(got, [1 - 15 / 18, 0.5, 1.0], atol=1e-6)
    assert float(keras_unetpp.LovaszLoss()(y, y)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_choquet_integral_of_the_jaccard_loss(per_image, seed):
    y, p = _binary(seed)
    got = _np(imbalance_losses.lovasz(y, p, per_image=per_image))
    np.testing.assert_allclose(got, np_lovasz(y, p, per_image), rtol=1e-5, atol=1e-6)
    loss = keras_unetpp.LovaszLoss(per_image=per_image)
    assert float(loss(y, p)) == pytest.approx(np_lovasz(y, p, per_image).mean(), 1e-5)


def test_logits_targets_without_channel_axis_and_the_cross_entropy_term():
    y, p = _binary(2)
    logits = np.log(p / (1 - p)).astype("float32")
    expected = np_lovasz(y, p)
    got = _np(imbalance_losses.lovasz(y[..., 0], logits, from_logits=True))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    pd = p.astype(np.float64)
    bce = -(y * np.log(pd) + (1 - y) * np.log(1 - pd)).reshape(len(y), -1).mean(1)
    got = _np(imbalance_losses.lovasz(y, p, ce_weight=0.5))
    np.testing.assert_allclose(got, expected + 0.5 * bce, rtol=1e-5)


def test_multiclass_averages_the_classes_present():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (2, 5, 4))  # class 2 is never present
    logits = rng.normal(size=(2, 5, 4, 3)).astype("float32")
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(3)[labels]
    errors = np.abs(onehot - prob)
    expected = [
        np.mean(
            [
                np_lovasz_extension(onehot[i, ..., c], errors[i, ..., c])
                for c in range(3)
                if onehot[i, ..., c].any()
            ]
        )
        for i in range(2)
    ]  # fmt: skip
    for target in (labels[..., None].astype("int32"), onehot.astype("float32")):
        got = _np(imbalance_losses.lovasz(target, logits, from_logits=True))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["logits+100", "logits-100", "perfect", "empty"])
def test_gradients_are_finite_and_point_down(case):
    shape = (2, 8, 8, 1)
    y = np.zeros(shape, "float32")
    y[0, :4] = 1.0
    from_logits = case.startswith("logits")
    pred = {
        "logits+100": np.full(shape, 100.0, "float32"),
        "logits-100": np.full(shape, -100.0, "float32"),
        "perfect": y.copy(),
        "empty": np.zeros(shape, "float32"),
    }[case]
    loss = keras_unetpp.LovaszLoss(from_logits=from_logits, ce_weight=0.5)
    value, grad = value_and_gradient(lambda v: loss(y, v), pred)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # On probabilities, a small step against the gradient lowers the loss.
    y, p = _binary(4)
    loss = keras_unetpp.LovaszLoss()
    value, grad = value_and_gradient(lambda v: loss(y, v), p)
    stepped = np.clip(p - 0.01 * grad / np.abs(grad).max(), 0.0, 1.0)
    assert float(loss(y, stepped)) < value


def test_config_round_trip_and_head_loss():
    loss = keras_unetpp.LovaszLoss(from_logits=True, per_image=False, ce_weight=0.25)
    config = loss.get_config()
    assert (config["from_logits"], config["per_image"], config["ce_weight"]) == (
        True,
        False,
        0.25,
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is keras_unetpp.LovaszLoss
    assert restored.get_config() == config
    spec = imbalance_losses.loss_spec("lovasz", ce_weight=0.5)
    assert spec == {"name": "lovasz", "ce_weight": 0.5}
    head = imbalance_losses.head_loss(spec, num_classes=3, from_logits=True)
    assert isinstance(head, keras_unetpp.LovaszLoss) and head.ce_weight == 0.5
    with pytest.raises(keras_unetpp.InputError, match="lovasz loss takes"):
        imbalance_losses.loss_spec("lovasz", alpha=0.5)
    with pytest.raises(Exception, match="ce_weight"):
        keras_unetpp.LovaszLoss(ce_weight=-1.0)
