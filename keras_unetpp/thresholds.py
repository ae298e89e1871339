"""Choosing the probability threshold of a one-class model on held-in data.

A one-class model's masks are its probabilities at `p >= threshold` (the
package's one rule: `IoUScore`, `predict`, the SavedModels' `mask`). 0.5 is
a convention, not a property of the model: a model whose masks come out a
pixel too wide scores higher at 0.6. `ThresholdSweep` counts the pooled
foreground IoU and Dice of every level at many thresholds in one pass over
the images, so a threshold can be picked on the train split and then
reported, once, on the val split (`keras-unetpp evaluate --split train
--thresholds ...`, then `evaluate --threshold T`).
"""

import numpy as np

from keras_unetpp.errors import InputError

# The columns of `ThresholdSweep.rows()` and of `thresholds.csv`.
SWEEP_COLUMNS = (
    "level",
    "threshold",
    "iou",
    "dice",
    "intersection",
    "predicted_pixels",
    "true_pixels",
)


def check_thresholds(thresholds):
    """The thresholds as a sorted float32 array, or an `InputError`.

    Args:
        thresholds: a non-empty sequence of distinct numbers in [0, 1].

    Returns:
        A sorted 1-D float32 NumPy array.
    """
    try:
        values = np.asarray(list(thresholds), dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            "`thresholds` must be a sequence of numbers in [0, 1]. "
            f"Received: thresholds={thresholds!r}"
        ) from None
    if values.ndim != 1 or values.size == 0:
        raise InputError(
            "`thresholds` must hold at least one number in [0, 1]. "
            f"Received: thresholds={thresholds!r}"
        )
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise InputError(
            f"Every threshold must lie in [0, 1]. Received: thresholds={list(values)}"
        )
    # Compared as the metrics compare: float32 probabilities against the
    # threshold in float32.
    values = np.sort(values.astype(np.float32))
    if np.any(np.diff(values) == 0):
        raise InputError(
            f"The thresholds must be distinct. Received: thresholds={list(values)}"
        )
    return values


class ThresholdSweep:
    """Pooled foreground IoU and Dice of each level at many thresholds.

    Each `update` adds one image's pixels: for every threshold `t`, the
    pixels predicted foreground (`p >= t`), those also true, and the true
    pixels, summed over all images as `IoUScore` pools them. One pass
    sorts every pixel into the thresholds it passes, so a sweep over many
    thresholds costs about as much as one.

    Args:
        thresholds: the thresholds to score, distinct numbers in [0, 1].

    Example:

    ```python
    sweep = ThresholdSweep([0.4, 0.5, 0.6])
    sweep.update("L4", truth, probabilities)   # bool and float (h, w)
    best = sweep.best()["L4"]                   # {"threshold": ..., "iou": ...}
    ```
    """

    def __init__(self, thresholds):
        self.thresholds = check_thresholds(thresholds)
        self._counts = {}

    @property
    def levels(self):
        """The levels updated so far, in the order first seen."""
        return list(self._counts)

    def update(self, level, truth, probabilities):
        """Adds one image of one level.

        Args:
            level: str, the level's label (`"L1"`, ..., `"accurate"`).
            truth: bool array, the true foreground.
            probabilities: float array of the same shape, the foreground
                probabilities.
        """
        truth = np.asarray(truth, dtype=bool).ravel()
        probabilities = np.asarray(probabilities, dtype=np.float32).ravel()
        if truth.shape != probabilities.shape:
            raise InputError(
                f"The truth has {truth.size} pixels but the probabilities "
                f"{probabilities.size}; expected the same image."
            )
        if np.isnan(probabilities).any():
            raise InputError(
                f"The probabilities of level {level} hold NaN; expected "
                "numbers in [0, 1]."
            )
        size = self.thresholds.size
        # passed[i]: how many thresholds pixel i reaches (p >= t).
        passed = np.searchsorted(self.thresholds, probabilities, side="right")
        # reached[j]: pixels with p >= thresholds[j].
        every = np.bincount(passed, minlength=size + 1)[::-1].cumsum()[::-1][1:]
        hits = np.bincount(passed[truth], minlength=size + 1)[::-1].cumsum()[::-1][1:]
        counts = self._counts.setdefault(level, np.zeros((3, size), dtype=np.int64))
        counts[0] += hits
        counts[1] += every
        counts[2] += int(np.count_nonzero(truth))

    def rows(self):
        """One dict per level and threshold, with the keys of `SWEEP_COLUMNS`.

        An empty truth predicted empty scores 1.

        Returns:
            list of dicts, levels in the order seen, thresholds ascending.
        """
        rows = []
        for level, (hits, predicted, true) in self._counts.items():
            for j, threshold in enumerate(self.thresholds):
                union = predicted[j] + true[j] - hits[j]
                total = predicted[j] + true[j]
                rows.append(
                    {
                        "level": level,
                        "threshold": round(float(threshold), 6),
                        "iou": float(hits[j] / union) if union else 1.0,
                        "dice": float(2 * hits[j] / total) if total else 1.0,
                        "intersection": int(hits[j]),
                        "predicted_pixels": int(predicted[j]),
                        "true_pixels": int(true[j]),
                    }
                )
        return rows

    def best(self):
        """Each level's threshold of the highest pooled IoU.

        Ties go to the threshold closest to 0.5, then to the lower one.

        Returns:
            dict: level -> the row (see `rows`) of its best threshold.
        """
        best = {}
        for row in self.rows():
            kept = best.get(row["level"])
            key = (row["iou"], -abs(row["threshold"] - 0.5), -row["threshold"])
            if kept is None or key > (
                kept["iou"],
                -abs(kept["threshold"] - 0.5),
                -kept["threshold"],
            ):
                best[row["level"]] = row
        return best
