"""Losses for class imbalance: Tversky, focal Tversky and focal, as Keras losses.

Small objects on a large background (nuclei, lesions) give the BCE-Dice loss
little to learn from the rare class. These losses weigh it up:

- Tversky (Salehi et al., 2017): `1 - TI`, with the Tversky index
  `TI = (TP + s) / (TP + alpha FN + beta FP + s)` of soft counts; `alpha >
  beta` penalises missed foreground more than false alarms (alpha = beta =
  0.5 is the soft Dice).
- focal Tversky (Abraham and Khan, 2019): `(1 - TI) ** gamma`; `gamma < 1`
  keeps the gradient large when the index is already high.
- focal (Lin et al., 2017): `-alpha_t (1 - p_t) ** gamma log(p_t)`, the
  cross-entropy with easy pixels weighed down.
- Lovasz (Berman et al., 2018): the Lovasz extension of the Jaccard loss
  `1 - IoU` of each image, a convex surrogate that is exactly `1 - IoU` on
  hard predictions; it optimizes the score the field reports, so its
  gradient is largest where the IoU is lost (object boundaries), with an
  optional cross-entropy term beside it.

Each works on one-class heads (sigmoid probabilities or logits, targets 0/1)
and on multi-class heads (softmax, targets as class indices or one-hot; the
index is averaged over classes, the focal term summed over them). The math
uses `keras.ops` only, so the losses run on every Keras backend, and every
class is registered, so a `.keras` file that holds them reloads in safe
mode.

`head_loss()` turns a loss name (`"bce-dice"`, `"tversky"`,
`"focal-tversky"`, `"focal"`, `"lovasz"`) and its parameters into the loss of one head;
`training.train(..., loss=...)` and `keras-unetpp train --loss` use it.
"""

import keras
from keras import ops

from keras_unetpp.errors import InputError
from keras_unetpp.losses import BCEDiceLoss, CategoricalCEDiceLoss
from keras_unetpp.validation import check_bool, check_int, check_number

_EPSILON = 1e-7
LOSS_NAMES = ("bce-dice", "tversky", "focal-tversky", "focal", "lovasz")


def _targets_and_probabilities(y_true, y_pred, from_logits):
    """Targets, probabilities, the focal terms' inputs, and whether binary.

    A one-channel `y_pred` is a sigmoid head; its targets are 0/1 masks of
    the same shape (or without the channel axis). More channels are a
    softmax head; targets are class indices (with or without a channel axis
    of 1) or one-hot. The log-probabilities of logits come from
    `log_sigmoid` / `log_softmax`, finite for any logit. A sigmoid head
    returns two channels, background and foreground, for the focal term.
    """
    y_pred = ops.cast(y_pred, "float32")
    if len(y_pred.shape) == 3:
        y_pred = ops.expand_dims(y_pred, -1)
    channels = y_pred.shape[-1]
    if channels == 1:
        y_true = ops.cast(y_true, "float32")
        if len(y_true.shape) == len(y_pred.shape) - 1:
            y_true = ops.expand_dims(y_true, -1)
        if from_logits:
            log_p = ops.log_sigmoid(y_pred)
            log_q = ops.log_sigmoid(-y_pred)
            prob = ops.sigmoid(y_pred)
        else:
            # Clipped for the logarithms only: an empty prediction stays empty.
            prob = y_pred
            clipped = ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
            log_p, log_q = ops.log(clipped), ops.log(1.0 - clipped)
        two_true = ops.concatenate([1.0 - y_true, y_true], axis=-1)
        two_prob = ops.concatenate([1.0 - prob, prob], axis=-1)
        two_log = ops.concatenate([log_q, log_p], axis=-1)
        return y_true, prob, (two_true, two_prob, two_log), True
    if y_true.shape[-1] != channels or len(y_true.shape) != len(y_pred.shape):
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        y_true = ops.one_hot(ops.cast(y_true, "int32"), channels)
    y_true = ops.cast(y_true, "float32")
    if from_logits:
        log_prob = ops.log_softmax(y_pred, axis=-1)
        prob = ops.softmax(y_pred, axis=-1)
    else:
        prob = y_pred
        log_prob = ops.log(ops.clip(y_pred, _EPSILON, 1.0))
    return y_true, prob, (y_true, prob, log_prob), False


def tversky_index(y_true, y_prob, alpha=0.7, beta=0.3, smooth=1.0, per_image=True):
    """Soft Tversky index of each class, per image or over the batch.

    `TI = (TP + smooth) / (TP + alpha FN + beta FP + smooth)` with
    `TP = sum(y p)`, `FN = sum(y (1 - p))`, `FP = sum((1 - y) p)` over the
    spatial axes (and the batch axis when `per_image=False`). With both
    masks empty and `smooth == 0` the index is 1.

    Args:
        y_true: float tensor `(batch, ..., channels)` of targets in [0, 1].
        y_prob: float tensor of the same shape, probabilities.
        alpha: float >= 0, weight of the false negatives. Defaults to `0.7`.
        beta: float >= 0, weight of the false positives. Defaults to `0.3`.
        smooth: float >= 0. Defaults to `1.0`.
        per_image: bool. Defaults to `True`.

    Returns:
        Tensor `(batch, channels)`.
    """
    rank = len(y_true.shape)
    axes = tuple(range(1, rank - 1))
    if not per_image:
        axes = (0,) + axes
    tp = ops.sum(y_true * y_prob, axis=axes)
    fn = ops.sum(y_true * (1.0 - y_prob), axis=axes)
    fp = ops.sum((1.0 - y_true) * y_prob, axis=axes)
    denominator = tp + alpha * fn + beta * fp + smooth
    safe = ops.maximum(denominator, _EPSILON)
    index = ops.where(denominator > _EPSILON, (tp + smooth) / safe, 1.0)
    if not per_image:
        index = ops.broadcast_to(
            ops.expand_dims(index, 0), (ops.shape(y_true)[0], ops.shape(index)[-1])
        )
    return index


def tversky(
    y_true,
    y_pred,
    from_logits=False,
    alpha=0.7,
    beta=0.3,
    gamma=1.0,
    smooth=1.0,
    per_image=True,
):
    """(Focal) Tversky loss of each image: `(1 - mean class TI) ** gamma`.

    Args:
        y_true: 0/1 masks (one-class head) or class indices / one-hot
            targets (multi-class head).
        y_pred: probabilities or logits `(batch, height, width, channels)`.
        from_logits: bool. Defaults to `False`.
        alpha: weight of false negatives. Defaults to `0.7`.
        beta: weight of false positives. Defaults to `0.3`.
        gamma: exponent; `1` is the Tversky loss, below 1 the focal Tversky
            loss. Defaults to `1.0`.
        smooth: float. Defaults to `1.0`.
        per_image: bool, index per image or over the batch. Defaults to
            `True`.

    Returns:
        Tensor `(batch,)` of loss values in [0, 1].
    """
    y_true, prob, _, _ = _targets_and_probabilities(y_true, y_pred, from_logits)
    index = tversky_index(y_true, prob, alpha, beta, smooth, per_image)
    loss = ops.maximum(1.0 - ops.mean(index, axis=-1), 0.0)
    if gamma == 1.0:
        return loss
    # x ** gamma has an infinite slope at 0 for gamma < 1.
    return ops.power(ops.maximum(loss, _EPSILON), gamma)


def focal(y_true, y_pred, from_logits=False, alpha=0.25, gamma=2.0):
    """Focal loss of each image: mean over pixels of the focal term.

    One-class head: `-alpha y (1 - p)**gamma log p - (1 - alpha) (1 - y)
    p**gamma log(1 - p)`. Multi-class head: `-alpha sum_c y_c (1 - p_c)**gamma
    log p_c` (one alpha for every class). `gamma = 0` gives the (weighted)
    cross-entropy.

    Args:
        y_true: 0/1 masks or class indices / one-hot targets.
        y_pred: probabilities or logits.
        from_logits: bool. Defaults to `False`.
        alpha: float in [0, 1], weight of the foreground term. Defaults to
            `0.25` (Lin et al.).
        gamma: float >= 0, focusing exponent. Defaults to `2.0`.

    Returns:
        Tensor `(batch,)` of loss values >= 0.
    """
    _, _, (target, prob, log_prob), binary = _targets_and_probabilities(
        y_true, y_pred, from_logits
    )
    if binary:
        weights = ops.convert_to_tensor([1.0 - alpha, alpha], "float32")
    else:
        weights = ops.full((target.shape[-1],), alpha, "float32")
    modulation = ops.power(ops.maximum(1.0 - prob, 0.0), gamma)
    term = -ops.sum(weights * target * modulation * log_prob, axis=-1)
    rank = len(term.shape)
    return ops.mean(term, axis=tuple(range(1, rank)))


def _lovasz_gradient(sorted_targets):
    """The Jaccard loss's increments along pixels sorted by error.

    For targets `g` ordered by decreasing error, entry `k` is
    `J(k + 1) - J(k)`, where `J(k)` is the Jaccard loss when the first `k`
    pixels are wrong: `1 - (G - cumsum(g)) / (G + cumsum(1 - g))` with `G`
    the foreground count (the union is never empty: either `G >= 1` or the
    first pixel is a false alarm).
    """
    total = ops.sum(sorted_targets, axis=-1, keepdims=True)
    intersection = total - ops.cumsum(sorted_targets, axis=-1)
    union = total + ops.cumsum(1.0 - sorted_targets, axis=-1)
    jaccard = 1.0 - intersection / union
    return ops.concatenate(
        [jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1
    )


def lovasz(y_true, y_pred, from_logits=False, per_image=True, ce_weight=0.0):
    """Lovasz loss of each image: the convex extension of `1 - IoU`.

    With errors `e = |y - p|` of one class sorted in decreasing order, the
    loss is `sum_k e_k (J(k + 1) - J(k))`, `J(k)` the Jaccard loss when the
    `k` largest errors are mistakes (`_lovasz_gradient`): the Lovasz
    extension of the Jaccard loss, equal to `1 - IoU` when `p` is 0/1. A
    one-class head scores its foreground (an empty mask makes every false
    alarm count); a multi-class head averages the classes present in the
    target. `ce_weight` adds that much of the mean cross-entropy.

    Args:
        y_true: 0/1 masks or class indices / one-hot targets.
        y_pred: probabilities or logits.
        from_logits: bool. Defaults to `False`.
        per_image: bool, one extension per image (`True`) or one over the
            whole batch (`False`, every image gets the batch's value).
            Defaults to `True`.
        ce_weight: float >= 0, weight of the cross-entropy term. Defaults
            to `0.0`.

    Returns:
        Tensor `(batch,)` of loss values >= 0.
    """
    y_true, prob, (target, _, log_prob), binary = _targets_and_probabilities(
        y_true, y_pred, from_logits
    )
    batch = ops.shape(prob)[0]
    channels = prob.shape[-1]
    rows = batch if per_image else 1
    # (rows, channels, pixels): one sorted error list per image and class.
    truth = ops.transpose(ops.reshape(y_true, (rows, -1, channels)), (0, 2, 1))
    errors = ops.abs(
        truth - ops.transpose(ops.reshape(prob, (rows, -1, channels)), (0, 2, 1))
    )
    order = ops.argsort(-errors, axis=-1)
    sorted_errors = ops.take_along_axis(errors, order, axis=-1)
    sorted_truth = ops.stop_gradient(ops.take_along_axis(truth, order, axis=-1))
    per_class = ops.sum(sorted_errors * _lovasz_gradient(sorted_truth), axis=-1)
    if binary:
        loss = per_class[:, 0]
    else:
        present = ops.cast(ops.sum(truth, axis=-1) > 0, "float32")
        loss = ops.sum(per_class * present, axis=-1) / ops.maximum(
            ops.sum(present, axis=-1), 1.0
        )
    if not per_image:
        loss = ops.broadcast_to(loss, (batch,))
    if ce_weight:
        term = -ops.sum(target * log_prob, axis=-1)
        rank = len(term.shape)
        loss = loss + ce_weight * ops.mean(term, axis=tuple(range(1, rank)))
    return loss


def _check_fraction_weights(**weights):
    for arg, value in weights.items():
        check_number(value, arg, low=0.0)


class _ConfigLoss(keras.losses.Loss):
    """A loss whose `get_config` is its own arguments (`_ARGS`)."""

    _ARGS = ()

    def get_config(self):
        config = super().get_config()
        config.update({arg: getattr(self, arg) for arg in self._ARGS})
        return config


@keras.saving.register_keras_serializable(package="keras_unetpp")
class TverskyLoss(_ConfigLoss):
    """Tversky loss: `1 - TI`, missed foreground weighed by `alpha`.

    The Tversky index `TI = (TP + s) / (TP + alpha FN + beta FP + s)` of
    soft counts, averaged over classes (one-class heads: the foreground).
    With `alpha = beta = 0.5` it is the soft Dice loss; `alpha > beta`
    trades false alarms for recall, for small objects.

    Args:
        from_logits: bool. Defaults to `False`.
        alpha: float >= 0, weight of false negatives. Defaults to `0.7`.
        beta: float >= 0, weight of false positives. Defaults to `0.3`.
        smooth: float >= 0. Defaults to `1.0`.
        per_image: bool, index per image or over the batch. Defaults to
            `True`.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"tversky"`.
        dtype: Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=keras_unetpp.TverskyLoss(alpha=0.7))
    ```

    Reference:
    - [Salehi et al., 2017](https://arxiv.org/abs/1706.05721)
    """

    _ARGS = ("from_logits", "alpha", "beta", "smooth", "per_image")

    def __init__(
        self,
        from_logits=False,
        alpha=0.7,
        beta=0.3,
        smooth=1.0,
        per_image=True,
        reduction="sum_over_batch_size",
        name="tversky",
        dtype=None,
    ):
        check_bool(from_logits, "from_logits")
        check_bool(per_image, "per_image")
        _check_fraction_weights(alpha=alpha, beta=beta, smooth=smooth)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)
        self.per_image = per_image

    def call(self, y_true, y_pred):
        return tversky(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            alpha=self.alpha,
            beta=self.beta,
            smooth=self.smooth,
            per_image=self.per_image,
        )


@keras.saving.register_keras_serializable(package="keras_unetpp")
class FocalTverskyLoss(_ConfigLoss):
    """Focal Tversky loss: `(1 - TI) ** gamma`.

    The Tversky loss raised to `gamma`; with `gamma < 1` (the paper's 3/4)
    the loss stays steep when the index is already high, so that small,
    hard objects keep contributing late in training.

    Args:
        from_logits: bool. Defaults to `False`.
        alpha: float >= 0, weight of false negatives. Defaults to `0.7`.
        beta: float >= 0, weight of false positives. Defaults to `0.3`.
        gamma: float > 0. Defaults to `0.75`.
        smooth: float >= 0. Defaults to `1.0`.
        per_image: bool. Defaults to `True`.
        reduction: Defaults to `"sum_over_batch_size"`.
        name: str. Defaults to `"focal_tversky"`.
        dtype: Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=keras_unetpp.FocalTverskyLoss())
    ```

    Reference:
    - [Abraham and Khan, 2019](https://arxiv.org/abs/1810.07842)
    """

    _ARGS = ("from_logits", "alpha", "beta", "gamma", "smooth", "per_image")

    def __init__(
        self,
        from_logits=False,
        alpha=0.7,
        beta=0.3,
        gamma=0.75,
        smooth=1.0,
        per_image=True,
        reduction="sum_over_batch_size",
        name="focal_tversky",
        dtype=None,
    ):
        check_bool(from_logits, "from_logits")
        check_bool(per_image, "per_image")
        _check_fraction_weights(alpha=alpha, beta=beta, smooth=smooth)
        check_number(gamma, "gamma", low=0.0, low_open=True)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.smooth = float(smooth)
        self.per_image = per_image

    def call(self, y_true, y_pred):
        return tversky(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            smooth=self.smooth,
            per_image=self.per_image,
        )


@keras.saving.register_keras_serializable(package="keras_unetpp")
class FocalLoss(_ConfigLoss):
    """Focal loss: cross-entropy with easy pixels weighed down.

    Per pixel `-alpha_t (1 - p_t) ** gamma log(p_t)` where `p_t` is the
    probability of the true class; one-class heads weigh the foreground by
    `alpha` and the background by `1 - alpha`, multi-class heads every
    class by `alpha`. The value of an image is the mean over its pixels.

    Args:
        from_logits: bool. Defaults to `False`.
        alpha: float in [0, 1]. Defaults to `0.25`.
        gamma: float >= 0. Defaults to `2.0`.
        reduction: Defaults to `"sum_over_batch_size"`.
        name: str. Defaults to `"focal"`.
        dtype: Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=keras_unetpp.FocalLoss(gamma=2.0))
    ```

    Reference:
    - [Lin et al., 2017](https://arxiv.org/abs/1708.02002)
    """

    _ARGS = ("from_logits", "alpha", "gamma")

    def __init__(
        self,
        from_logits=False,
        alpha=0.25,
        gamma=2.0,
        reduction="sum_over_batch_size",
        name="focal",
        dtype=None,
    ):
        check_bool(from_logits, "from_logits")
        check_number(alpha, "alpha", low=0.0, high=1.0)
        check_number(gamma, "gamma", low=0.0)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return focal(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            alpha=self.alpha,
            gamma=self.gamma,
        )


@keras.saving.register_keras_serializable(package="keras_unetpp")
class LovaszLoss(_ConfigLoss):
    """Lovasz loss: a convex surrogate of `1 - IoU`, optimized directly.

    The Lovasz extension of the Jaccard loss of each image (`lovasz()`):
    it equals `1 - IoU` on 0/1 predictions and is its tightest convex
    extension in between, so training descends the score the evaluation
    reports rather than a pixel-wise proxy. Boundary pixels, where a
    segmentation of small objects loses most of its IoU, get the largest
    weights. `ce_weight` adds the cross-entropy (a common pairing, which
    steadies the first epochs).

    Args:
        from_logits: bool. Defaults to `False`.
        per_image: bool, one IoU per image or one over the batch. Defaults
            to `True`.
        ce_weight: float >= 0, weight of the mean cross-entropy added.
            Defaults to `0.0`.
        reduction: Defaults to `"sum_over_batch_size"`.
        name: str. Defaults to `"lovasz"`.
        dtype: Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=keras_unetpp.LovaszLoss(ce_weight=0.5))
    ```

    Reference:
    - [Berman et al., 2018](https://arxiv.org/abs/1705.08790)
    """

    _ARGS = ("from_logits", "per_image", "ce_weight")

    def __init__(
        self,
        from_logits=False,
        per_image=True,
        ce_weight=0.0,
        reduction="sum_over_batch_size",
        name="lovasz",
        dtype=None,
    ):
        check_bool(from_logits, "from_logits")
        check_bool(per_image, "per_image")
        _check_fraction_weights(ce_weight=ce_weight)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.per_image = per_image
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        return lovasz(
            y_true,
            y_pred,
            from_logits=self.from_logits,
            per_image=self.per_image,
            ce_weight=self.ce_weight,
        )


_PARAMETERS = {
    "bce-dice": ("smooth", "boundary_weight", "boundary_width"),
    "tversky": ("alpha", "beta", "smooth"),
    "focal-tversky": ("alpha", "beta", "gamma", "smooth"),
    "focal": ("alpha", "gamma"),
    "lovasz": ("ce_weight",),
}


# Parameters that are counts, kept as ints in `run.json`.
_INT_PARAMETERS = ("boundary_width",)


def loss_spec(name="bce-dice", **parameters):
    """A checked, JSON-ready description of a head loss: `{"name", ...}`.

    Args:
        name: one of `"bce-dice"`, `"tversky"`, `"focal-tversky"`,
            `"focal"`, `"lovasz"`. Defaults to `"bce-dice"`.
        **parameters: the loss's parameters (`alpha`, `beta`, `gamma`,
            `smooth`, `ce_weight`, `boundary_weight`, `boundary_width`, as
            the loss takes them); `None` values are left out.

    Returns:
        dict, e.g. `{"name": "tversky", "alpha": 0.7}`.
    """
    if name not in LOSS_NAMES:
        raise InputError(f"`loss` must be one of {LOSS_NAMES}. Received: loss={name!r}")
    parameters = {k: v for k, v in parameters.items() if v is not None}
    unknown = sorted(set(parameters) - set(_PARAMETERS[name]))
    if unknown:
        raise InputError(
            f"The {name} loss takes {list(_PARAMETERS[name]) or 'no parameters'}; "
            f"Received: {', '.join(f'{k}={parameters[k]!r}' for k in unknown)}"
        )
    spec = {"name": name}
    for key, value in parameters.items():
        if key in _INT_PARAMETERS:
            spec[key] = check_int(value, key)
        else:
            spec[key] = check_number(value, key, low=0.0)
    # Build once, so that a bad value fails before any run folder is made.
    head_loss(spec, num_classes=1, from_logits=False)
    return spec


def head_loss(spec, num_classes=1, from_logits=False):
    """The loss of one head from a name or a `loss_spec` dict.

    `"bce-dice"` is the paper's loss (`BCEDiceLoss`, or
    `CategoricalCEDiceLoss` for several classes); the others are the
    losses of this module, which take both kinds of head.

    Args:
        spec: a loss name or a dict from `loss_spec()`.
        num_classes: int, classes of the head. Defaults to `1`.
        from_logits: bool, whether the head outputs logits. Defaults to
            `False`.

    Returns:
        `keras.losses.Loss`.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or spec.get("name") not in LOSS_NAMES:
        raise InputError(
            f"A head loss is one of {LOSS_NAMES} or a dict with such a 'name'. "
            f"Received: {spec!r}"
        )
    parameters = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if name == "bce-dice":
        cls = BCEDiceLoss if num_classes == 1 else CategoricalCEDiceLoss
    else:
        cls = {
            "tversky": TverskyLoss,
            "focal-tversky": FocalTverskyLoss,
            "focal": FocalLoss,
            "lovasz": LovaszLoss,
        }[name]
    return cls(from_logits=from_logits, **parameters)


def _head_spec(spec, where, json_only=False):
    if isinstance(spec, keras.losses.Loss) and not json_only:
        return spec
    if isinstance(spec, str):
        return loss_spec(spec)
    if isinstance(spec, dict) and "name" in spec:
        return loss_spec(**spec)
    raise InputError(
        f"{where} must be a loss name {LOSS_NAMES}, a dict with a 'name' (and "
        "the loss's parameters)"
        + ("" if json_only else ", or a keras.losses.Loss")
        + f". Received: {spec!r}"
    )


def normalize_loss(loss, head_names=None, json_only=False):
    """The checked, JSON-ready form of `train(..., loss=...)`.

    Args:
        loss: `None` (the paper's BCE-Dice on every head), a loss name, a
            `loss_spec` dict, or a dict keyed by head name (`"output_l1"`,
            ...) with one of those per head.
        head_names: the model's heads, to check a per-head dict against, or
            `None` to skip that check. Defaults to `None`.
        json_only: bool, refuse `keras.losses.Loss` objects (for what a
            `run.json` records). Defaults to `False`.

    Returns:
        `None`, a spec dict, or a dict of spec dicts by head name.
    """
    if loss is None:
        return None
    if isinstance(loss, dict) and "name" not in loss:
        if head_names is not None and sorted(loss) != sorted(head_names):
            raise InputError(
                f"A per-head `loss` needs one entry per head {list(head_names)}. "
                f"Received: loss keys {sorted(loss)}"
            )
        return {
            head: _head_spec(spec, f"loss[{head!r}]", json_only)
            for head, spec in loss.items()
        }
    return _head_spec(loss, "`loss`", json_only)


def head_losses(model, loss):
    """The `compile()` losses of every head of a keras_unetpp model.

    Args:
        model: a model from `keras_unetpp.build` or `build_unet`.
        loss: as `normalize_loss` takes it; a `keras.losses.Loss` is copied
            (from its config) for each head.

    Returns:
        `None` for the default, else a dict of losses by head name (a single
        loss for a single-output model).
    """
    from keras_unetpp.description import describe

    info = describe(model)
    names = list(info.outputs)
    loss = normalize_loss(loss, names)
    if loss is None:
        return None
    if not (isinstance(loss, dict) and "name" not in loss):
        loss = {name: loss for name in names}

    def make(spec):
        if isinstance(spec, keras.losses.Loss):
            return spec.__class__.from_config(spec.get_config())
        return head_loss(spec, info.num_classes, info.from_logits)

    losses = {name: make(loss[name]) for name in names}
    return losses[names[0]] if len(names) == 1 else losses
