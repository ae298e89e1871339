"""`ThresholdSweep`: pooled IoU and Dice at many thresholds in one pass."""

import numpy as np
import pytest

import keras_unetpp as ku
from keras_unetpp import thresholds
from keras_unetpp.metrics import DiceScore, IoUScore

THRESHOLDS = [0.3, 0.45, 0.5, 0.7, 0.9]


def _images(count=4, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for k in range(count):
        h, w = 9 + k, 13 - k
        truth = rng.random((h, w)) < 0.3
        # Probabilities that lean towards the truth, with many ties.
        prob = np.clip(truth * 0.35 + rng.random((h, w)) * 0.65, 0, 1)
        images.append((truth, np.round(prob, 2).astype(np.float32)))
    return images


def _pooled(images, threshold):
    """Pooled IoU and Dice at one threshold, pixel by pixel."""
    hits = predicted = true = 0
    for truth, prob in images:
        pred = prob >= np.float32(threshold)
        hits += np.count_nonzero(pred & truth)
        predicted += np.count_nonzero(pred)
        true += np.count_nonzero(truth)
    return hits / (predicted + true - hits), 2 * hits / (predicted + true)


def test_sweep_equals_one_threshold_at_a_time():
    images = _images()
    sweep = ku.ThresholdSweep(THRESHOLDS[::-1])  # any order
    for truth, prob in images:
        sweep.update("L1", truth, prob)
        sweep.update("L2", truth, 1.0 - prob)
    rows = sweep.rows()
    assert [r["level"] for r in rows] == ["L1"] * 5 + ["L2"] * 5
    assert [r["threshold"] for r in rows[:5]] == pytest.approx(THRESHOLDS)
    flipped = [(truth, 1.0 - prob) for truth, prob in images]
    for row in rows:
        data = images if row["level"] == "L1" else flipped
        iou, dice = _pooled(data, row["threshold"])
        assert row["iou"] == pytest.approx(iou, abs=1e-12)
        assert row["dice"] == pytest.approx(dice, abs=1e-12)
        assert row["true_pixels"] == sum(t.sum() for t, _ in images)
    assert set(sweep.best()) == {"L1", "L2"} and sweep.levels == ["L1", "L2"]


@pytest.mark.parametrize("threshold", [0.45, 0.7, 0.9])
def test_sweep_agrees_with_the_package_metrics(threshold):
    images = _images(seed=2)
    sweep = thresholds.ThresholdSweep(THRESHOLDS)
    iou, dice = IoUScore(threshold=threshold), DiceScore(threshold=threshold)
    for truth, prob in images:
        sweep.update("L4", truth, prob)
        for metric in (iou, dice):
            metric.update_state(
                truth[None, ..., None].astype("float32"), prob[None, ..., None]
            )
    row = [r for r in sweep.rows() if r["threshold"] == pytest.approx(threshold)][0]
    assert row["iou"] == pytest.approx(float(iou.result()), abs=1e-6)
    assert row["dice"] == pytest.approx(float(dice.result()), abs=1e-6)


def test_a_probability_equal_to_the_threshold_is_foreground():
    # float32(0.7) lies below 0.7: compared in float64 it would be missed.
    at = np.float32(0.7)
    below = np.nextafter(at, np.float32(0))
    truth = np.array([[True, True, False]])
    prob = np.array([[at, below, at]], np.float32)
    sweep = ku.ThresholdSweep([0.7])
    sweep.update("L1", truth, prob)
    (row,) = sweep.rows()
    assert (row["intersection"], row["predicted_pixels"], row["true_pixels"]) == (
        1,
        2,
        2,
    )
    assert row["iou"] == pytest.approx(1 / 3)


def test_best_threshold_and_its_ties():
    truth = np.array([True, True, False, False])
    sweep = ku.ThresholdSweep([0.2, 0.4, 0.6, 0.8])
    # 0.4 and 0.6 both give the perfect mask; 0.2 and 0.8 do not.
    sweep.update("L1", truth, np.array([0.9, 0.65, 0.3, 0.1]))
    sweep.update("L2", truth, np.array([0.9, 0.85, 0.7, 0.1]))
    best = sweep.best()
    assert best["L1"]["threshold"] == pytest.approx(0.4)  # tie: nearest 0.5, lower
    assert best["L1"]["iou"] == 1.0
    assert best["L2"]["threshold"] == pytest.approx(0.8) and best["L2"]["iou"] == 1.0


def test_empty_truth_and_prediction_score_one():
    sweep = ku.ThresholdSweep([0.5, 0.95])
    empty = np.zeros((3, 3), bool)
    sweep.update("L1", empty, np.full((3, 3), 0.9, np.float32))
    low, high = sweep.rows()
    assert (low["iou"], low["dice"]) == (0.0, 0.0)  # all false alarms
    assert (high["iou"], high["dice"]) == (1.0, 1.0)  # nothing, rightly


@pytest.mark.parametrize(
    "values, message",
    [
        ([], "at least one"),
        ([0.5, 1.5], "must lie in"),
        ([-0.1], "must lie in"),
        ([0.5, float("nan")], "must lie in"),
        ([0.5, 0.5], "distinct"),
        (["a"], "sequence of numbers"),
        (0.5, "sequence of numbers"),
    ],
)
def test_bad_thresholds_are_refused(values, message):
    with pytest.raises(ku.InputError, match=message):
        thresholds.ThresholdSweep(values)


def test_bad_updates_are_refused():
    sweep = ku.ThresholdSweep([0.5])
    with pytest.raises(ku.InputError, match="6 pixels but the probabilities 4"):
        sweep.update("L1", np.zeros((2, 3), bool), np.zeros((2, 2)))
    with pytest.raises(ku.InputError, match="level L1 hold NaN"):
        sweep.update("L1", np.zeros(2, bool), np.array([0.1, np.nan]))
    assert sweep.rows() == []
