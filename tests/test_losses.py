"""BCE-Dice losses against an independent NumPy computation."""

import keras
import numpy as np
import pytest
from gradients import value_and_gradient

import keras_unetpp


def np_bce_dice(
    y, p, smooth=1.0, per_image=True, bce_weight=0.5, dice_weight=1.0, weights=None
):
    """Reference: per-image 0.5 * mean BCE + (1 - soft Dice), float64.

    `weights` (shaped like `y`) makes the BCE's mean a weighted one.
    """
    y = y.astype(np.float64)
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    w = np.ones_like(bce) if weights is None else weights.astype(np.float64)
    bce = (w * bce).reshape(len(y), -1).sum(1) / w.reshape(len(y), -1).sum(1)
    p = p.reshape(len(p), -1)
    y = y.reshape(len(y), -1)
    if per_image:
        dice = (2 * (y * p).sum(1) + smooth) / (y.sum(1) + p.sum(1) + smooth)
    else:
        dice = (2 * (y * p).sum() + smooth) / (y.sum() + p.sum() + smooth)
        dice = np.full(len(y), dice)
    return bce_weight * bce + dice_weight * (1 - dice)


def np_ce_dice(labels, probs, smooth=1.0, weights=None):
    """Reference multi-class loss: 0.5 * CE + (1 - mean per-class Dice)."""
    classes = probs.shape[-1]
    onehot = np.eye(classes)[labels]
    p = np.clip(probs.astype(np.float64), 1e-7, 1.0)
    p = p / p.sum(-1, keepdims=True)
    ce = -(onehot * np.log(p)).sum(-1)
    w = np.ones_like(ce) if weights is None else weights.astype(np.float64)
    ce = (w * ce).reshape(len(p), -1).sum(1) / w.reshape(len(p), -1).sum(1)
    axes = (1, 2)
    inter = (onehot * probs).sum(axes)
    total = onehot.sum(axes) + probs.sum(axes)
    dice = ((2 * inter + smooth) / (total + smooth)).mean(-1)
    return 0.5 * ce + (1 - dice)


def _batch(seed=0, shape=(3, 16, 16, 1)):
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) > 0.6).astype("float32")
    p = rng.random(shape).astype("float32")
    return y, p


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_hand_worked_value():
    # One image, two pixels: y = [1, 0], p = [0.8, 0.2].
    # BCE = -(log 0.8 + log 0.8) / 2 = 0.22314; Dice = (2*0.8 + 1)/(1 + 1 + 1) = 0.86667
    # loss = 0.5 * 0.22314 + (1 - 0.86667) = 0.24491
    y = np.array([[[[1.0]], [[0.0]]]], "float32")
    p = np.array([[[[0.8]], [[0.2]]]], "float32")
    assert float(keras_unetpp.BCEDiceLoss()(y, p)) == pytest.approx(0.24491, abs=1e-5)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("smooth", [1.0, 0.0, 10.0])
def test_matches_numpy(per_image, smooth):
    y, p = _batch()
    loss = keras_unetpp.BCEDiceLoss(per_image=per_image, smooth=smooth)
    expected = np_bce_dice(y, p, smooth=smooth, per_image=per_image).mean()
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)
    per_sample = keras_unetpp.bce_dice(y, p, smooth=smooth, per_image=per_image)
    np.testing.assert_allclose(
        _np(per_sample),
        np_bce_dice(y, p, smooth=smooth, per_image=per_image),
        rtol=1e-5,
    )


def test_empty_and_full_masks():
    rng = np.random.default_rng(1)
    p = rng.random((2, 8, 8, 1)).astype("float32")
    for y in (np.zeros_like(p), np.ones_like(p)):
        got = _np(keras_unetpp.bce_dice(y, p))
        np.testing.assert_allclose(got, np_bce_dice(y, p), rtol=1e-5)
        assert np.all(got >= 0)
    # Empty mask predicted empty, no smoothing: Dice is defined as 1, loss = BCE part.
    zeros = np.zeros((1, 8, 8, 1), "float32")
    got = float(keras_unetpp.BCEDiceLoss(smooth=0.0)(zeros, zeros))
    assert got == pytest.approx(0.5 * -np.log(1 - 1e-7), abs=1e-6)


def test_perfect_prediction_is_near_zero_and_loss_is_non_negative():
    y, _ = _batch(2)
    assert float(keras_unetpp.BCEDiceLoss()(y, y)) == pytest.approx(0.0, abs=1e-5)
    for seed in range(5):
        y, p = _batch(seed)
        assert float(keras_unetpp.BCEDiceLoss()(y, p)) >= 0


def test_from_logits_equals_probabilities():
    y, _ = _batch(3)
    logits = np.random.default_rng(3).normal(0, 3, y.shape).astype("float32")
    probs = 1 / (1 + np.exp(-logits))
    a = float(keras_unetpp.BCEDiceLoss(from_logits=True)(y, logits))
    b = float(keras_unetpp.BCEDiceLoss()(y, probs))
    assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize(
    "case", ["logits+100", "logits-100", "empty_mask", "zero_prediction", "full_mask"]
)
def test_gradients_are_finite(case):
    shape = (2, 8, 8, 1)
    y = np.zeros(shape, "float32") if case != "full_mask" else np.ones(shape, "float32")
    from_logits = case.startswith("logits")
    if case == "logits+100":
        pred = np.full(shape, 100.0, "float32")
        y[0, :4] = 1.0
    elif case == "logits-100":
        pred = np.full(shape, -100.0, "float32")
        y[1, 2:] = 1.0
    elif case == "zero_prediction":
        pred = np.zeros(shape, "float32")
        y[0, 1] = 1.0
    else:
        pred = np.full(shape, 0.3, "float32")
    for smooth in (1.0, 0.0):
        loss_fn = keras_unetpp.BCEDiceLoss(from_logits=from_logits, smooth=smooth)
        loss, grad = value_and_gradient(lambda v, f=loss_fn: f(y, v), pred)
        assert np.isfinite(loss), (case, smooth)
        assert np.all(np.isfinite(grad)), (case, smooth)


def test_multiclass_matches_numpy_and_accepts_sparse_or_one_hot():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (2, 8, 8))
    logits = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    loss = keras_unetpp.CategoricalCEDiceLoss()
    expected = np_ce_dice(labels, probs).mean()
    sparse = float(loss(labels[..., None].astype("int32"), probs))
    onehot = float(loss(np.eye(3, dtype="float32")[labels], probs))
    flat = float(loss(labels.astype("int32"), probs))
    assert sparse == pytest.approx(expected, rel=1e-5)
    assert onehot == pytest.approx(expected, rel=1e-5)
    assert flat == pytest.approx(expected, rel=1e-5)
    from_logits = float(
        keras_unetpp.CategoricalCEDiceLoss(from_logits=True)(labels[..., None], logits)
    )
    assert from_logits == pytest.approx(expected, rel=1e-4)


def test_multiclass_gradients_finite_on_extreme_logits():
    labels = np.zeros((1, 4, 4, 1), "int32")
    logits = np.stack([np.full((1, 4, 4), v) for v in (-100, 100, 0)], -1).astype(
        "float32"
    )
    loss_fn = keras_unetpp.CategoricalCEDiceLoss(from_logits=True)
    loss, grad = value_and_gradient(lambda v: loss_fn(labels, v), logits)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (
            keras_unetpp.BCEDiceLoss,
            dict(
                from_logits=True,
                smooth=0.5,
                per_image=False,
                bce_weight=1.0,
                dice_weight=2.0,
                name="custom",
            ),
        ),
        (
            keras_unetpp.CategoricalCEDiceLoss,
            dict(from_logits=True, smooth=2.0, ce_weight=0.3, dice_weight=0.7),
        ),
    ],
)
def test_config_round_trip(cls, kwargs):
    loss = cls(**kwargs)
    config = loss.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is cls and restored.get_config() == config
    y, p = _batch(5, (2, 8, 8, 3))
    if cls is keras_unetpp.BCEDiceLoss:
        y, p = y[..., :1], p[..., :1]
    else:
        y = np.argmax(y, -1)[..., None]
    assert float(restored(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(smooth=-1), "Received: smooth=-1"),
        (dict(from_logits="yes"), "Received: from_logits='yes'"),
        (dict(per_image=1), "Received: per_image=1"),
        (dict(bce_weight=-0.5), "Received: bce_weight=-0.5"),
        (dict(boundary_weight=-1.0), "Received: boundary_weight=-1.0"),
        (dict(boundary_width=0), "Received: boundary_width=0"),
        (dict(boundary_width=1.5), "Received: boundary_width=1.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_unetpp.BCEDiceLoss(**kwargs)


def np_band(y, width):
    """Reference band: max minus min filter over the (2w+1) window, per class."""
    from scipy import ndimage

    size = (1,) + (2 * width + 1,) * (y.ndim - 2) + (1,)
    high = ndimage.maximum_filter(y, size=size, mode="nearest")
    low = ndimage.minimum_filter(y, size=size, mode="nearest")
    return (high - low).max(-1, keepdims=True)


def test_boundary_band_on_a_hand_made_square():
    y = np.zeros((1, 7, 8, 1), "float32")
    y[0, 2:5, 2:6] = 1.0  # a 3x4 object
    band = _np(keras_unetpp.losses.boundary_band(y, 1))[0, ..., 0]
    expected = np.zeros((7, 8))
    expected[1:6, 1:7] = 1.0  # the object and one pixel around it...
    expected[3, 3:5] = 0.0  # ...but not its interior, 3x4 less the rim
    np.testing.assert_array_equal(band, expected)
    # An object touching the image edge has no boundary along the edge.
    y = np.zeros((1, 4, 4, 1), "float32")
    y[0, :, :2] = 1.0
    band = _np(keras_unetpp.losses.boundary_band(y, 1))[0, ..., 0]
    np.testing.assert_array_equal(band, np.tile([0.0, 1.0, 1.0, 0.0], (4, 1)))


@pytest.mark.parametrize(
    "shape, width", [((2, 12, 10, 1), 1), ((2, 12, 10, 1), 2), ((1, 6, 7, 5, 3), 1)]
)
def test_boundary_band_matches_min_max_filters(shape, width):
    rng = np.random.default_rng(width)
    y = (rng.random(shape) > 0.7).astype("float32")
    band = _np(keras_unetpp.losses.boundary_band(y, width))
    np.testing.assert_array_equal(band, np_band(y, width))


@pytest.mark.parametrize("weight, width", [(2.0, 1), (5.0, 2)])
def test_boundary_weighted_bce_dice_matches_numpy(weight, width):
    _, p = _batch(7, (3, 16, 12, 1))
    # Objects with interiors, so that the band is not every pixel.
    y = np.zeros_like(p)
    y[0, 2:9, 1:8] = y[1, 5:15, 4:12] = y[2, 0:6, 0:5] = y[2, 10:16, 6:11] = 1.0
    loss = keras_unetpp.BCEDiceLoss(
        boundary_weight=weight, boundary_width=width, reduction=None
    )
    weights = 1.0 + weight * np_band(y, width)
    expected = np_bce_dice(y, p, weights=weights)
    np.testing.assert_allclose(_np(loss(y, p)), expected, rtol=1e-5, atol=1e-6)
    plain = _np(keras_unetpp.BCEDiceLoss(reduction=None)(y, p))
    np.testing.assert_allclose(plain, np_bce_dice(y, p), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(_np(loss(y, p)) - plain) > 1e-4)  # the weights matter
    # Logits, 3D masks without a channel axis: the same weighting.
    logits = np.log(p / (1 - p)).astype("float32")
    from_logits = keras_unetpp.BCEDiceLoss(
        from_logits=True, boundary_weight=weight, boundary_width=width, reduction=None
    )
    np.testing.assert_allclose(
        _np(from_logits(y[..., 0], logits)), expected, rtol=1e-4, atol=1e-5
    )


def test_boundary_weight_without_a_boundary_is_the_plain_loss():
    _, p = _batch(8, (2, 8, 8, 1))
    for y in (np.zeros_like(p), np.ones_like(p)):
        weighted = keras_unetpp.BCEDiceLoss(boundary_weight=9.0, reduction=None)
        plain = keras_unetpp.BCEDiceLoss(reduction=None)
        np.testing.assert_allclose(_np(weighted(y, p)), _np(plain(y, p)), rtol=1e-6)


def test_boundary_weighted_categorical_ce_dice_matches_numpy():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, (2, 10, 9))
    logits = rng.normal(size=(2, 10, 9, 3)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    loss = keras_unetpp.CategoricalCEDiceLoss(
        boundary_weight=3.0, boundary_width=1, reduction=None
    )
    weights = 1.0 + 3.0 * np_band(np.eye(3)[labels], 1)[..., 0]
    np.testing.assert_allclose(
        _np(loss(labels, probs.astype("float32"))),
        np_ce_dice(labels, probs, weights=weights),
        rtol=1e-5,
        atol=1e-6,
    )


def test_boundary_weighted_gradients_are_finite_and_scaled():
    # One edge: the band's pixels get (1 + w) times the BCE gradient of the
    # same error elsewhere (the Dice term off).
    y = np.zeros((1, 8, 8, 1), "float32")
    y[0, :, :4] = 1.0
    logits = np.zeros_like(y)
    loss_fn = keras_unetpp.BCEDiceLoss(
        from_logits=True, boundary_weight=3.0, dice_weight=0.0
    )
    value, grad = value_and_gradient(lambda v: loss_fn(y, v), logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    band, inside = grad[0, 0, 3, 0], grad[0, 0, 0, 0]
    assert band / inside == pytest.approx(4.0, rel=1e-5)


def test_boundary_loss_config_round_trip_and_spec():
    loss = keras_unetpp.BCEDiceLoss(boundary_weight=2.5, boundary_width=2)
    config = loss.get_config()
    assert (config["boundary_weight"], config["boundary_width"]) == (2.5, 2)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert restored.get_config() == config
    from keras_unetpp import imbalance_losses

    spec = imbalance_losses.loss_spec("bce-dice", boundary_weight=2, boundary_width=2)
    assert spec == {"name": "bce-dice", "boundary_weight": 2.0, "boundary_width": 2}
    head = imbalance_losses.head_loss(spec)
    assert isinstance(head, keras_unetpp.BCEDiceLoss) and head.boundary_width == 2
    classes = imbalance_losses.head_loss(spec, num_classes=3)
    assert isinstance(classes, keras_unetpp.CategoricalCEDiceLoss)
    assert classes.boundary_weight == 2.0
    with pytest.raises(ValueError, match="boundary_width"):
        imbalance_losses.loss_spec("bce-dice", boundary_width=0)
    with pytest.raises(ValueError, match="takes"):
        imbalance_losses.loss_spec("focal", boundary_weight=1.0)
