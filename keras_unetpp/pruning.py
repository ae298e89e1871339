"""Pruned sub-models and the paper's two inference modes.

Because X(0,L) depends only on nodes X(i,j) with i + j <= L, the head
`output_l<L>` of a deep-supervision UNet++ is a complete, smaller network on
its own. The functions here cut those sub-networks out of a model without
copying weights: every sub-model shares the very same variables as the model
it came from.
"""

import keras

from keras_unetpp.description import (
    ACCURATE_OUTPUT,
    describe,
    output_name,
)
from keras_unetpp.errors import InputError

INFERENCE_MODES = ("accurate", "fast")


def prune(model, level):
    """Cuts the sub-network that ends at X(0, level) out of a UNet++ model.

    The pruned model holds only the nodes X(i,j) with i + j <= level and the
    head `output_l<level>`; it shares the very same weight variables as
    `model` (nothing is copied), so its output equals that head of the full
    model exactly. Pruning to `level == depth` works on any model; smaller
    levels need a model built with `deep_supervision=True`, which trains a
    head for every level.

    Args:
        model: a `keras.Model` from `keras_unetpp.build`.
        level: int, 1 <= level <= the model's depth.

    Returns:
        A single-output `keras.Model` named `f"{model.name}_l{level}"`.

    Example:

    ```python
    model = keras_unetpp.build(depth=4, deep_supervision=True)
    fast = keras_unetpp.prune(model, 2)  # about 5.6% of the parameters
    ```
    """
    info = describe(model)
    depth = info.depth
    if (
        isinstance(level, bool)
        or not isinstance(level, int)
        or not (1 <= level <= depth)
    ):
        raise InputError(
            f"`level` must be an integer between 1 and the model's depth "
            f"({depth}). Received: level={level!r}"
        )
    levels = list(info.heads)
    if level not in levels:
        raise InputError(
            f"The model has no head for level {level} (it has heads for "
            f"levels {levels}). Build it with deep_supervision=True to prune "
            f"it to smaller depths. Received: level={level}"
        )
    head = model.get_layer(output_name(level))
    return keras.Model(model.input, head.output, name=f"{model.name}_l{level}")


def inference_model(model, mode="accurate", level=None):
    """A single-output model for one of the paper's two inference modes.

    "accurate" averages the outputs of all deep-supervision heads
    (probabilities, or logits if the model outputs logits) in an
    `Average` layer named `output_accurate`; "fast" returns the pruned
    model of one level (`prune(model, level)`). Both share the model's
    weights.

    Args:
        model: a `keras.Model` from `keras_unetpp.build`.
        mode: `"accurate"` or `"fast"`. Defaults to `"accurate"`.
        level: int, the level for `"fast"` mode (defaults to the model's
            depth); must be `None` for `"accurate"`. Defaults to `None`.

    Returns:
        A single-output `keras.Model`.

    Example:

    ```python
    accurate = keras_unetpp.inference_model(model, "accurate")
    fast_l2 = keras_unetpp.inference_model(model, "fast", level=2)
    ```
    """
    if mode not in INFERENCE_MODES:
        raise InputError(
            f"`mode` must be one of {INFERENCE_MODES}. Received: mode={mode!r}"
        )
    if mode == "fast":
        return prune(model, describe(model).depth if level is None else level)
    if level is not None:
        raise InputError(
            "The accurate mode averages every head; `level` is for the fast "
            f"mode. Received: mode='accurate', level={level!r}"
        )
    levels = describe(model).heads
    heads = [model.get_layer(output_name(lvl)).output for lvl in levels]
    if len(heads) == 1:
        output = heads[0]
    else:
        output = keras.layers.Average(dtype="float32", name=ACCURATE_OUTPUT)(heads)
    return keras.Model(model.input, output, name=f"{model.name}_accurate")
