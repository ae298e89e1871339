"""Streaming IoU/Dice metrics against NumPy over several batches."""

import keras
import numpy as np
import pytest

import keras_unetpp


def np_scores(trues, preds, num_classes=1, threshold=0.5):
    """Reference global and per-image IoU and Dice, from plain NumPy."""
    if num_classes == 1:
        t = np.concatenate([x.reshape(len(x), -1, 1) > 0.5 for x in trues])
        p = np.concatenate([x.reshape(len(x), -1, 1) > threshold for x in preds])
    else:
        eye = np.eye(num_classes, dtype=bool)
        t = np.concatenate([eye[x.reshape(len(x), -1)] for x in trues])
        p = np.concatenate([eye[np.argmax(x, -1).reshape(len(x), -1)] for x in preds])
    inter = (t & p).sum(1).astype(float)  # (images, classes)
    union = (t | p).sum(1).astype(float)
    total = t.sum(1) + p.sum(1).astype(float)

    def mean_present(num, den):
        present = den > 0
        if not present.any():
            return 1.0
        return float((num[present] / den[present]).mean())

    iou_global = mean_present(inter.sum(0), union.sum(0))
    dice_global = mean_present(2 * inter.sum(0), total.sum(0))
    iou_images = [mean_present(inter[i], union[i]) for i in range(len(inter))]
    dice_images = [mean_present(2 * inter[i], total[i]) for i in range(len(inter))]
    return (
        iou_global,
        dice_global,
        float(np.mean(iou_images)),
        float(np.mean(dice_images)),
    )


def _batches(num_classes=1, sizes=(3, 1, 5), seed=0):
    rng = np.random.default_rng(seed)
    trues, preds = [], []
    for n in sizes:
        if num_classes == 1:
            trues.append((rng.random((n, 12, 12, 1)) > 0.7).astype("float32"))
            preds.append(rng.random((n, 12, 12, 1)).astype("float32"))
        else:
            trues.append(rng.integers(0, num_classes, (n, 12, 12, 1)).astype("int32"))
            preds.append(rng.random((n, 12, 12, num_classes)).astype("float32"))
    # One image with empty target and empty prediction (perfect by definition).
    if num_classes == 1:
        trues[0][0] = 0
        preds[0][0] = 0.1
    return trues, preds


def _run(metric, trues, preds):
    metric.reset_state()
    for t, p in zip(trues, preds):
        metric.update_state(t, p)
    return float(metric.result())


@pytest.mark.parametrize("num_classes", [1, 3])
def test_streaming_matches_numpy_over_batches_of_different_sizes(num_classes):
    trues, preds = _batches(num_classes)
    # Squeeze sparse labels for the reference.
    ref_trues = trues if num_classes == 1 else [t[..., 0] for t in trues]
    iou_g, dice_g, iou_i, dice_i = np_scores(ref_trues, preds, num_classes)
    make = dict(num_classes=num_classes)
    assert _run(keras_unetpp.IoUScore(**make), trues, preds) == pytest.approx(
        iou_g, 1e-6
    )
    assert _run(keras_unetpp.DiceScore(**make), trues, preds) == pytest.approx(
        dice_g, 1e-6
    )
    assert _run(keras_unetpp.IoUScore(average="per_image", **make), trues, preds) == (
        pytest.approx(iou_i, 1e-6)
    )
    assert _run(keras_unetpp.DiceScore(average="per_image", **make), trues, preds) == (
        pytest.approx(dice_i, 1e-6)
    )


def test_global_is_not_a_mean_of_batch_values():
    # Batch 1: IoU 1/1; batch 2: IoU 1/3 (1 hit of a 3-pixel union).
    # Running totals give 2/4 = 0.5; a mean of batch values would give 0.667.
    t1 = np.array([[[[1.0]], [[0.0]], [[0.0]]]], "float32")
    p1 = np.array([[[[0.9]], [[0.1]], [[0.1]]]], "float32")
    t2 = np.array([[[[1.0]], [[1.0]], [[0.0]]]], "float32")
    p2 = np.array([[[[0.9]], [[0.1]], [[0.8]]]], "float32")
    metric = keras_unetpp.IoUScore()
    assert _run(metric, [t1, t2], [p1, p2]) == pytest.approx(0.5)


def test_empty_prediction_on_empty_mask_is_perfect():
    zeros = np.zeros((2, 8, 8, 1), "float32")
    for average in ("global", "per_image"):
        assert _run(keras_unetpp.IoUScore(average=average), [zeros], [zeros]) == 1.0
        assert _run(keras_unetpp.DiceScore(average=average), [zeros], [zeros]) == 1.0
    ones = np.ones_like(zeros)
    assert _run(keras_unetpp.IoUScore(), [zeros], [ones]) == 0.0


def test_threshold_and_logits():
    t = np.array([[[[1.0]], [[0.0]]]], "float32")
    p = np.array([[[[0.6]], [[0.4]]]], "float32")
    assert _run(keras_unetpp.IoUScore(threshold=0.5), [t], [p]) == 1.0
    assert _run(keras_unetpp.IoUScore(threshold=0.7), [t], [p]) == 0.0
    logits = np.log(p / (1 - p))
    assert _run(keras_unetpp.DiceScore(from_logits=True), [t], [logits]) == 1.0


def test_reset_state_and_names():
    metric = keras_unetpp.IoUScore(average="per_image")
    assert metric.name == "iou_per_image"
    assert keras_unetpp.DiceScore().name == "dice"
    trues, preds = _batches()
    first = _run(metric, trues, preds)
    assert _run(metric, trues, preds) == pytest.approx(first)
    metric.reset_state()
    assert float(metric.result()) == 0.0


@pytest.mark.parametrize("cls", [keras_unetpp.IoUScore, keras_unetpp.DiceScore])
def test_config_round_trip(cls):
    metric = cls(
        num_classes=4, threshold=0.3, from_logits=True, average="per_image", name="m"
    )
    config = metric.get_config()
    assert {
        k: config[k]
        for k in ("num_classes", "threshold", "from_logits", "average", "name")
    } == dict(
        num_classes=4, threshold=0.3, from_logits=True, average="per_image", name="m"
    )
    assert cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert type(restored) is cls and restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=0), "Received: num_classes=0"),
        (dict(average="macro"), "Received: average='macro'"),
        (dict(threshold="half"), "Received: threshold='half'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_unetpp.IoUScore(**kwargs)


def test_sample_weight_is_refused():
    with pytest.raises(ValueError, match="sample weights"):
        keras_unetpp.IoUScore().update_state(
            np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1)), sample_weight=np.ones((1,))
        )


def test_a_probability_at_the_threshold_is_foreground():
    # The package's one rule, as predict and the serving graph apply it:
    # foreground where p >= threshold. Logits of exactly 0 (a ReLU-dead
    # pixel with zero bias) are sigmoid 0.5: foreground at threshold 0.5.
    y_true = np.array([[[[1.0], [0.0]], [[1.0], [0.0]]]], "float32")
    logits = np.array([[[[0.0], [-3.0]], [[2.0], [0.0]]]], "float32")
    metric = keras_unetpp.IoUScore(from_logits=True)
    metric.update_state(y_true, logits)
    # Predicted foreground: (0,0), (1,0), (1,1); true: (0,0), (1,0).
    # Intersection 2, union 3.
    assert float(metric.result()) == pytest.approx(2 / 3)
    probabilities = keras.ops.sigmoid(logits)
    direct = keras_unetpp.IoUScore(threshold=0.5)
    direct.update_state(y_true, probabilities)
    assert float(direct.result()) == pytest.approx(2 / 3)
