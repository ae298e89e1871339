"""The paper's BCE-Dice loss, binary and multi-class, as Keras losses.

The UNet++ paper trains with

    L = -1/N sum_b ( 1/2 * Y_b log P_b  +  2 Y_b P_b / (Y_b + P_b) )

i.e. half the binary cross-entropy plus the negative soft Dice coefficient.
Here the Dice term is written as the Dice *loss* `1 - Dice`, which shifts the
paper's value by the constant 1 and makes the loss non-negative (0 for a
perfect prediction); the gradients are the paper's.

All math uses `keras.ops`, so the losses run on every Keras backend.
"""

import keras
from keras import ops

from keras_unetpp.validation import check_bool, check_number

_EPSILON = 1e-7


def _validate(from_logits, smooth, per_image, bce_weight, dice_weight):
    check_bool(from_logits, "from_logits")
    check_bool(per_image, "per_image")
    for arg, value in (
        ("smooth", smooth),
        ("bce_weight", bce_weight),
        ("dice_weight", dice_weight),
    ):
        check_number(value, arg, low=0.0)


def soft_dice(y_true, y_prob, smooth=1.0, per_image=True):
    """Soft Dice coefficient of each class, per image or over the batch.

    Dice = (2 * sum(y * p) + smooth) / (sum(y) + sum(p) + smooth), with sums
    over the spatial axes (and the batch axis when `per_image=False`). When
    both masks are empty and `smooth == 0` the Dice is defined as 1.

    Args:
        y_true: float tensor `(batch, ..., channels)` of targets in [0, 1].
        y_prob: float tensor of the same shape, probabilities.
        smooth: float, additive smoothing. Defaults to `1.0`.
        per_image: bool, one value per image (`True`) or one for the whole
            batch, broadcast to every image (`False`). Defaults to `True`.

    Returns:
        Tensor `(batch, channels)` of Dice coefficients.
    """
    rank = len(y_true.shape)
    axes = tuple(range(1, rank - 1))
    if not per_image:
        axes = (0,) + axes
    intersection = ops.sum(y_true * y_prob, axis=axes, keepdims=True)
    total = ops.sum(y_true, axis=axes, keepdims=True) + ops.sum(
        y_prob, axis=axes, keepdims=True
    )
    denominator = total + smooth
    # Empty target and empty prediction: perfect overlap, and no 0/0.
    safe = ops.maximum(denominator, _EPSILON)
    dice = ops.where(denominator > _EPSILON, (2.0 * intersection + smooth) / safe, 1.0)
    dice = ops.reshape(dice, (ops.shape(dice)[0], ops.shape(dice)[-1]))
    if not per_image:
        dice = ops.broadcast_to(dice, (ops.shape(y_true)[0], ops.shape(dice)[-1]))
    return dice


def bce_dice(
    y_true,
    y_pred,
    from_logits=False,
    smooth=1.0,
    per_image=True,
    bce_weight=0.5,
    dice_weight=1.0,
):
    """Binary BCE-Dice loss of each image: `0.5 * BCE + (1 - Dice)`.

    Args:
        y_true: tensor `(batch, height, width, 1)` (or `(batch, height,
            width)`) of 0/1 targets.
        y_pred: tensor of the same shape, probabilities or logits.
        from_logits: bool, whether `y_pred` holds logits. Defaults to `False`.
        smooth: float, Dice smoothing. Defaults to `1.0`.
        per_image: bool, Dice per image (`True`) or over the batch.
            Defaults to `True`.
        bce_weight: float, weight of the mean binary cross-entropy.
            Defaults to `0.5` (the paper's).
        dice_weight: float, weight of the Dice loss. Defaults to `1.0`.

    Returns:
        Tensor `(batch,)` of loss values, each >= 0.
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    if len(y_pred.shape) == 3:
        y_pred = ops.expand_dims(y_pred, -1)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    bce = ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)
    rank = len(bce.shape)
    bce = ops.mean(bce, axis=tuple(range(1, rank)))
    y_prob = ops.sigmoid(y_pred) if from_logits else y_pred
    dice = soft_dice(y_true, y_prob, smooth=smooth, per_image=per_image)
    dice_loss = 1.0 - ops.mean(dice, axis=-1)
    return bce_weight * bce + dice_weight * dice_loss


def categorical_ce_dice(
    y_true,
    y_pred,
    from_logits=False,
    smooth=1.0,
    per_image=True,
    ce_weight=0.5,
    dice_weight=1.0,
):
    """Multi-class CE-Dice loss of each image: `0.5 * CE + (1 - mean Dice)`.

    The Dice term is the mean over classes of the soft per-class Dice.

    Args:
        y_true: either class indices `(batch, height, width)` or
            `(batch, height, width, 1)`, or one-hot targets
            `(batch, height, width, classes)`.
        y_pred: tensor `(batch, height, width, classes)` of softmax
            probabilities or logits.
        from_logits: bool. Defaults to `False`.
        smooth: float, Dice smoothing. Defaults to `1.0`.
        per_image: bool, Dice per image or over the batch. Defaults to `True`.
        ce_weight: float, weight of the categorical cross-entropy.
            Defaults to `0.5`.
        dice_weight: float, weight of the Dice loss. Defaults to `1.0`.

    Returns:
        Tensor `(batch,)` of loss values, each >= 0.
    """
    y_pred = ops.cast(y_pred, "float32")
    num_classes = y_pred.shape[-1]
    if y_true.shape[-1] != num_classes or len(y_true.shape) != len(y_pred.shape):
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        y_true = ops.one_hot(ops.cast(y_true, "int32"), num_classes)
    y_true = ops.cast(y_true, "float32")
    ce = ops.categorical_crossentropy(y_true, y_pred, from_logits=from_logits)
    rank = len(ce.shape)
    ce = ops.mean(ce, axis=tuple(range(1, rank)))
    y_prob = ops.softmax(y_pred, axis=-1) if from_logits else y_pred
    dice = soft_dice(y_true, y_prob, smooth=smooth, per_image=per_image)
    return ce_weight * ce + dice_weight * (1.0 - ops.mean(dice, axis=-1))


@keras.saving.register_keras_serializable(package="keras_unetpp")
class BCEDiceLoss(keras.losses.Loss):
    """The UNet++ paper's loss for binary segmentation: 0.5 * BCE + Dice loss.

    Computes, per image, `bce_weight * mean(BCE) + dice_weight * (1 - Dice)`
    with the soft Dice `(2 sum(y p) + smooth) / (sum(y) + sum(p) + smooth)`.
    This is the paper's loss shifted by a constant so that it is >= 0.

    Args:
        from_logits: bool, whether predictions are logits. Defaults to
            `False`.
        smooth: float, Dice smoothing (keeps the loss finite and the
            gradient defined on empty masks). Defaults to `1.0`.
        per_image: bool, Dice per image (`True`, every image counts the
            same) or over the whole batch (`False`). Defaults to `True`.
        bce_weight: float. Defaults to `0.5`.
        dice_weight: float. Defaults to `1.0`.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"bce_dice"`.
        dtype: the loss computation dtype. Defaults to `None`.

    Example:

    ```python
    loss = keras_unetpp.BCEDiceLoss(from_logits=False)
    model.compile(optimizer="adam", loss=loss)
    ```

    Reference:
    - [Zhou et al., 2018. UNet++](https://arxiv.org/abs/1807.10165)
    """

    def __init__(
        self,
        from_logits=False,
        smooth=1.0,
        per_image=True,
        bce_weight=0.5,
        dice_weight=1.0,
        reduction="sum_over_batch_size",
        name="bce_dice",
        dtype=None,
    ):
        _validate(from_logits, smooth, per_image, bce_weight, dice_weight)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.smooth = float(smooth)
        self.per_image = per_image
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return bce_dice(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            bce_weight=self.bce_weight,
            dice_weight=self.dice_weight,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            bce_weight=self.bce_weight,
            dice_weight=self.dice_weight,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_unetpp")
class CategoricalCEDiceLoss(keras.losses.Loss):
    """Multi-class form of the paper's loss: 0.5 * CE + mean per-class Dice loss.

    Targets may be class-index masks (`(batch, height, width[, 1])`) or
    one-hot masks; predictions are softmax probabilities or logits.

    Args:
        from_logits: bool. Defaults to `False`.
        smooth: float, Dice smoothing. Defaults to `1.0`.
        per_image: bool, Dice per image or over the batch. Defaults to
            `True`.
        ce_weight: float. Defaults to `0.5`.
        dice_weight: float. Defaults to `1.0`.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"categorical_ce_dice"`.
        dtype: the loss computation dtype. Defaults to `None`.

    Example:

    ```python
    model = keras_unetpp.build(num_classes=3)
    model.compile(optimizer="adam", loss=keras_unetpp.CategoricalCEDiceLoss())
    ```
    """

    def __init__(
        self,
        from_logits=False,
        smooth=1.0,
        per_image=True,
        ce_weight=0.5,
        dice_weight=1.0,
        reduction="sum_over_batch_size",
        name="categorical_ce_dice",
        dtype=None,
    ):
        _validate(from_logits, smooth, per_image, ce_weight, dice_weight)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.smooth = float(smooth)
        self.per_image = per_image
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return categorical_ce_dice(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            ce_weight=self.ce_weight,
            dice_weight=self.dice_weight,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            ce_weight=self.ce_weight,
            dice_weight=self.dice_weight,
        )
        return config
