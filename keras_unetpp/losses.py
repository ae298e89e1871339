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

from keras_unetpp.validation import check_bool, check_int, check_number

_EPSILON = 1e-7


def _validate(
    from_logits, smooth, per_image, bce_weight, dice_weight, boundary_weight=0.0
):
    check_bool(from_logits, "from_logits")
    check_bool(per_image, "per_image")
    for arg, value in (
        ("smooth", smooth),
        ("bce_weight", bce_weight),
        ("dice_weight", dice_weight),
        ("boundary_weight", boundary_weight),
    ):
        check_number(value, arg, low=0.0)


def boundary_band(y_true, width=1):
    """Marks the pixels within `width` pixels of a boundary of the targets.

    A pixel is on the band when its `(2 * width + 1)`-wide square (cube, for
    volumes) window holds both foreground and background of some class:
    the last `width` pixels inside each object and the first `width`
    outside it. Computed with max pooling (a dilation minus an erosion), so
    it runs on every backend.

    Args:
        y_true: float tensor `(batch, ..., channels)` of targets in [0, 1]
            (one channel, or one-hot classes).
        width: int >= 1, the band's half-width in pixels. Defaults to `1`.

    Returns:
        Tensor `(batch, ..., 1)`: 1 on the band, 0 elsewhere (in between for
        soft targets).
    """
    width = check_int(width, "width")
    window = 2 * width + 1
    y_true = ops.stop_gradient(ops.cast(y_true, "float32"))
    dilated = ops.max_pool(y_true, window, strides=1, padding="same")
    eroded = -ops.max_pool(-y_true, window, strides=1, padding="same")
    return ops.max(dilated - eroded, axis=-1, keepdims=True)


def _pixel_mean(values, y_true, boundary_weight, boundary_width):
    """Mean of per-pixel `values` per image, band pixels weighted up.

    `values` has the targets' shape without (or with a size-1) channel axis;
    the weight of a pixel is `1 + boundary_weight * band` and the mean is
    `sum(w * values) / sum(w)`, the plain mean when `boundary_weight` is 0.
    """
    axes = tuple(range(1, len(values.shape)))
    if not boundary_weight:
        return ops.mean(values, axis=axes)
    band = boundary_band(y_true, boundary_width)
    if len(values.shape) == len(band.shape) - 1:
        band = ops.squeeze(band, axis=-1)
    weights = 1.0 + boundary_weight * band
    return ops.sum(weights * values, axis=axes) / ops.sum(weights, axis=axes)


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
    boundary_weight=0.0,
    boundary_width=1,
):
    """Binary BCE-Dice loss of each image: `0.5 * BCE + (1 - Dice)`.

    With `boundary_weight > 0` the BCE is a weighted mean over the pixels:
    those within `boundary_width` pixels of a mask boundary
    (`boundary_band`) count `1 + boundary_weight` times, so misplaced edges
    cost more; the Dice term is unchanged.

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
        boundary_weight: float >= 0, extra BCE weight of the pixels near a
            boundary. Defaults to `0.0` (the paper's plain mean).
        boundary_width: int >= 1, how near, in pixels. Defaults to `1`.

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
    bce = _pixel_mean(bce, y_true, boundary_weight, boundary_width)
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
    boundary_weight=0.0,
    boundary_width=1,
):
    """Multi-class CE-Dice loss of each image: `0.5 * CE + (1 - mean Dice)`.

    The Dice term is the mean over classes of the soft per-class Dice. With
    `boundary_weight > 0` the pixels within `boundary_width` pixels of any
    class boundary count `1 + boundary_weight` times in the CE's mean.

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
        boundary_weight: float >= 0, extra CE weight of the pixels near a
            class boundary. Defaults to `0.0`.
        boundary_width: int >= 1, how near, in pixels. Defaults to `1`.

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
    ce = _pixel_mean(ce, y_true, boundary_weight, boundary_width)
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
        boundary_weight: float >= 0: the BCE's pixels within
            `boundary_width` pixels of a mask boundary count
            `1 + boundary_weight` times (`boundary_band`). Defaults to `0.0`
            (the paper's loss).
        boundary_width: int >= 1. Defaults to `1`.
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
        boundary_weight=0.0,
        boundary_width=1,
        reduction="sum_over_batch_size",
        name="bce_dice",
        dtype=None,
    ):
        _validate(
            from_logits, smooth, per_image, bce_weight, dice_weight, boundary_weight
        )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.smooth = float(smooth)
        self.per_image = per_image
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.boundary_weight = float(boundary_weight)
        self.boundary_width = check_int(boundary_width, "boundary_width")

    def call(self, y_true, y_pred):
        return bce_dice(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            bce_weight=self.bce_weight,
            dice_weight=self.dice_weight,
            boundary_weight=self.boundary_weight,
            boundary_width=self.boundary_width,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            bce_weight=self.bce_weight,
            dice_weight=self.dice_weight,
            boundary_weight=self.boundary_weight,
            boundary_width=self.boundary_width,
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
        boundary_weight: float >= 0: the CE's pixels within
            `boundary_width` pixels of a class boundary count
            `1 + boundary_weight` times. Defaults to `0.0`.
        boundary_width: int >= 1. Defaults to `1`.
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
        boundary_weight=0.0,
        boundary_width=1,
        reduction="sum_over_batch_size",
        name="categorical_ce_dice",
        dtype=None,
    ):
        _validate(
            from_logits, smooth, per_image, ce_weight, dice_weight, boundary_weight
        )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.smooth = float(smooth)
        self.per_image = per_image
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.boundary_weight = float(boundary_weight)
        self.boundary_width = check_int(boundary_width, "boundary_width")

    def call(self, y_true, y_pred):
        return categorical_ce_dice(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            ce_weight=self.ce_weight,
            dice_weight=self.dice_weight,
            boundary_weight=self.boundary_weight,
            boundary_width=self.boundary_width,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            from_logits=self.from_logits,
            smooth=self.smooth,
            per_image=self.per_image,
            ce_weight=self.ce_weight,
            dice_weight=self.dice_weight,
            boundary_weight=self.boundary_weight,
            boundary_width=self.boundary_width,
        )
        return config
