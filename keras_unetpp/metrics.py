"""Streaming IoU and Dice metrics, binary and multi-class.

Predictions are thresholded (binary) or arg-maxed (multi-class) and compared
with the targets. With `average="global"` the metric keeps running totals of
the intersection and of the union (or of the summed areas, for Dice) over the
whole evaluation and divides only in `result()`: it is not a mean of batch
values. With `average="per_image"` it keeps the sum of the per-image scores
and the number of images, and reports their mean (how papers usually report
IoU). An empty prediction on an empty mask scores 1.
"""

import keras
from keras import ops

from keras_unetpp.errors import InputError
from keras_unetpp.validation import check_bool, check_choice, check_int, check_number

AVERAGES = ("global", "per_image")


class _OverlapScore(keras.metrics.Metric):
    """Shared machinery of `IoUScore` and `DiceScore`."""

    def __init__(
        self,
        num_classes=1,
        threshold=0.5,
        from_logits=False,
        average="global",
        name=None,
        dtype=None,
    ):
        check_int(num_classes, "num_classes")
        check_number(threshold, "threshold")
        check_bool(from_logits, "from_logits")
        check_choice(average, "average", AVERAGES)
        super().__init__(name=name, dtype=dtype)
        self.num_classes = num_classes
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self.average = average
        channels = 1 if num_classes == 1 else num_classes
        if average == "global":
            self.intersection = self.add_variable(
                shape=(channels,), initializer="zeros", name="intersection"
            )
            self.total = self.add_variable(
                shape=(channels,), initializer="zeros", name="total"
            )
        else:
            self.score_sum = self.add_variable(
                shape=(), initializer="zeros", name="score_sum"
            )
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _one_hot(self, y_true, y_pred):
        """Binary (batch, ..., C) masks of the targets and the predictions."""
        y_pred = ops.cast(y_pred, "float32")
        if self.num_classes == 1:
            if len(y_true.shape) == len(y_pred.shape) - 1:
                y_true = ops.expand_dims(y_true, -1)
            cut = self.threshold
            if self.from_logits:
                y_pred = ops.sigmoid(y_pred)
            # The one rule of the package: foreground where p >= threshold
            # (as predict, evaluate and the serving graph threshold).
            pred = ops.cast(y_pred >= cut, "float32")
            true = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
            return true, pred
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        if y_true.shape[-1] == self.num_classes and len(y_true.shape) == len(
            y_pred.shape
        ):
            labels = ops.argmax(y_true, axis=-1)
        else:
            if len(y_true.shape) == len(y_pred.shape):
                y_true = ops.squeeze(y_true, axis=-1)
            labels = ops.cast(y_true, "int32")
        true = ops.one_hot(labels, self.num_classes)
        return true, pred

    def _score(self, intersection, total):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise InputError(
                f"{type(self).__name__} does not take sample weights; mask the "
                "images instead."
            )
        true, pred = self._one_hot(y_true, y_pred)
        rank = len(true.shape)
        spatial = tuple(range(1, rank - 1))
        inter = ops.sum(true * pred, axis=spatial)  # (batch, C)
        total = ops.sum(true, axis=spatial) + ops.sum(pred, axis=spatial)
        if self.average == "global":
            self.intersection.assign_add(ops.sum(inter, axis=0))
            self.total.assign_add(ops.sum(total, axis=0))
            return
        score = self._score(inter, total)  # (batch, C), NaN where empty
        present = ops.logical_not(ops.isnan(score))
        n_present = ops.sum(ops.cast(present, "float32"), axis=-1)
        summed = ops.sum(ops.where(present, score, 0.0), axis=-1)
        # An image where no class appears in target or prediction is perfect.
        image_score = ops.where(
            n_present > 0, summed / ops.maximum(n_present, 1.0), 1.0
        )
        self.score_sum.assign_add(ops.sum(image_score))
        self.count.assign_add(ops.cast(ops.shape(image_score)[0], "float32"))

    def result(self):
        if self.average == "per_image":
            return ops.where(
                self.count > 0, self.score_sum / ops.maximum(self.count, 1.0), 0.0
            )
        score = self._score(self.intersection, self.total)
        present = ops.logical_not(ops.isnan(score))
        n_present = ops.sum(ops.cast(present, "float32"))
        summed = ops.sum(ops.where(present, score, 0.0))
        return ops.where(n_present > 0, summed / ops.maximum(n_present, 1.0), 1.0)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            threshold=self.threshold,
            from_logits=self.from_logits,
            average=self.average,
        )
        return config


def _nan_where_empty(numerator, denominator):
    safe = ops.maximum(denominator, 1.0)
    return ops.where(denominator > 0, numerator / safe, float("nan"))


@keras.saving.register_keras_serializable(package="keras_unetpp")
class IoUScore(_OverlapScore):
    """Intersection over union (Jaccard index) of thresholded masks.

    Binary (`num_classes=1`): the IoU of the foreground, `|T & P| / |T | P|`
    with `P = y_pred >= threshold`. Multi-class: the IoU of each class after
    an arg-max, averaged over the classes that appear in the targets or the
    predictions.

    Args:
        num_classes: int, 1 for sigmoid outputs, more for softmax outputs.
            Defaults to `1`.
        threshold: float, probability threshold for the binary case.
            Defaults to `0.5`.
        from_logits: bool, apply a sigmoid first (binary case).
            Defaults to `False`.
        average: `"global"` (running totals over all pixels of the
            evaluation) or `"per_image"` (mean of per-image IoUs).
            Defaults to `"global"`.
        name: str. Defaults to `"iou"` (`"iou_per_image"` when averaged
            per image).
        dtype: the metric's dtype. Defaults to `None`.

    Example:

    ```python
    m = keras_unetpp.IoUScore()
    m.update_state([[[[1.0]], [[0.0]]]], [[[[0.9]], [[0.8]]]])
    m.result()  # 1 / 2 = 0.5
    ```
    """

    def __init__(
        self,
        num_classes=1,
        threshold=0.5,
        from_logits=False,
        average="global",
        name=None,
        dtype=None,
    ):
        name = name or ("iou" if average == "global" else "iou_per_image")
        super().__init__(num_classes, threshold, from_logits, average, name, dtype)

    def _score(self, intersection, total):
        return _nan_where_empty(intersection, total - intersection)


@keras.saving.register_keras_serializable(package="keras_unetpp")
class DiceScore(_OverlapScore):
    """Dice coefficient (F1 score) of thresholded masks: `2|T & P| / (|T| + |P|)`.

    Args:
        num_classes: int, 1 for sigmoid outputs, more for softmax outputs.
            Defaults to `1`.
        threshold: float, probability threshold for the binary case.
            Defaults to `0.5`.
        from_logits: bool, apply a sigmoid first (binary case).
            Defaults to `False`.
        average: `"global"` or `"per_image"`. Defaults to `"global"`.
        name: str. Defaults to `"dice"` (`"dice_per_image"` when averaged
            per image).
        dtype: the metric's dtype. Defaults to `None`.

    Example:

    ```python
    m = keras_unetpp.DiceScore()
    m.update_state([[[[1.0]], [[0.0]]]], [[[[0.9]], [[0.8]]]])
    m.result()  # 2 * 1 / (1 + 2) = 0.667
    ```
    """

    def __init__(
        self,
        num_classes=1,
        threshold=0.5,
        from_logits=False,
        average="global",
        name=None,
        dtype=None,
    ):
        name = name or ("dice" if average == "global" else "dice_per_image")
        super().__init__(num_classes, threshold, from_logits, average, name, dtype)

    def _score(self, intersection, total):
        return _nan_where_empty(2.0 * intersection, total)
