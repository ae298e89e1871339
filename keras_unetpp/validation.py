"""Argument checks shared by the modules: clear `InputError`s, Keras style.

`InputError` is a `ValueError`; the command line reports it in one line.
"""

import math
import numbers

from keras_unetpp.errors import InputError


def is_int(value):
    """Whether `value` is an integer (a bool does not count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value, arg, low=1, high=None):
    """Returns `int(value)`, or raises unless it is an int in `[low, high]`.

    Args:
        value: the argument's value.
        arg: str, the argument's name, for the message.
        low: int, the smallest value allowed. Defaults to `1`.
        high: int or `None` (no upper bound). Defaults to `None`.

    Returns:
        `int(value)`.

    Example:

    ```python
    batch_size = check_int(batch_size, "batch_size")  # a positive int
    ```
    """
    if not is_int(value) or value < low or (high is not None and value > high):
        if high is not None:
            expected = f"an int in [{low}, {high}]"
        elif low == 1:
            expected = "a positive int"
        else:
            expected = f"an int >= {low}"
        raise InputError(f"`{arg}` must be {expected}. Received: {arg}={value!r}")
    return int(value)


def check_bool(value, arg):
    """Returns `value`, or raises unless it is a bool."""
    if not isinstance(value, bool):
        raise InputError(f"`{arg}` must be a bool. Received: {arg}={value!r}")
    return value


def check_choice(value, arg, choices):
    """Returns `value`, or raises unless it is one of `choices`.

    Example:

    ```python
    check_choice(mode, "mode", ("resize", "crop"))
    ```
    """
    if value not in choices:
        raise InputError(f"`{arg}` must be one of {choices}. Received: {arg}={value!r}")
    return value


def check_number(value, arg, low=None, high=None, low_open=False, high_open=False):
    """Returns `float(value)`, or raises unless it is a finite number in range.

    NaN and infinities are always refused; a bool is not a number.

    Args:
        value: the argument's value.
        arg: str, the argument's name, for the message.
        low: the smallest value allowed, or `None`. Defaults to `None`.
        high: the largest value allowed, or `None`. Defaults to `None`.
        low_open: bool, whether `low` itself is excluded. Defaults to `False`.
        high_open: bool, whether `high` itself is excluded. Defaults to
            `False`.

    Returns:
        `float(value)`.

    Example:

    ```python
    rate = check_number(dropout, "dropout", 0.0, 1.0, high_open=True)
    ```
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            expected = f"a finite number in {left}{low:g}, {high:g}{right}"
        elif low is not None:
            expected = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            expected = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            expected = "a finite number"
        raise InputError(f"`{arg}` must be {expected}. Received: {arg}={value!r}")
    return float(value)


def check_threshold(threshold, arg="threshold"):
    """Returns the probability threshold as a float, or raises unless in (0, 1).

    The one definition of a valid threshold: prediction, evaluation, export
    and the metrics' callers use it.
    """
    return check_number(threshold, arg, 0.0, 1.0, low_open=True, high_open=True)


def check_stride(sizes, depth, arg, axes=("height", "width")):
    """Raises unless every known size is a multiple of `2**depth` (and >= it).

    The one definition of the stride rule: each of the `depth` poolings
    halves the size, so a static spatial size must divide by `2**depth`.
    `None` sizes (decided at call time) pass.

    Args:
        sizes: the spatial sizes, e.g. `(height, width)`; `None` entries pass.
        depth: int, the model depth.
        arg: str, the argument the sizes come from, for the message.
        axes: names of the axes, for the message. Defaults to
            `("height", "width")`.

    Returns:
        `tuple(sizes)`.
    """
    stride = 2**depth
    for axis, size in zip(axes, sizes):
        if size is not None and (size < stride or size % stride):
            raise InputError(
                f"The {axis} in `{arg}` must be a multiple of 2**depth = "
                f"{stride} for depth={depth} (each level halves it). Pad or "
                "resize the images (keras_unetpp.data does this), or use None "
                f"for a variable size. Received: {arg}={tuple(sizes)!r}"
            )
    return tuple(sizes)


# How pixels become the network's [0, 1] input; the one definition, used by
# the data pipeline, predict and the serving graph: "dtype" divides integers
# by 255 (8-bit) or 65535 (16-bit) and keeps floats in [0, 1] as they are;
# "minmax" maps each image's own range to [0, 1].
PIXEL_SCALINGS = ("dtype", "minmax")


def check_pixel_scaling(pixel_scaling):
    """Returns `pixel_scaling`, or raises unless it is one of `PIXEL_SCALINGS`."""
    return check_choice(pixel_scaling, "pixel_scaling", PIXEL_SCALINGS)


def mask_dtype(num_classes):
    """The dtype name of masks of `num_classes` classes: the one definition.

    `"uint8"` up to 256 classes, `"uint16"` above (a model has at most 65535
    classes); the data pipeline stores label masks in it and the serving
    graph returns its `mask` output in it.
    """
    return "uint8" if num_classes <= 256 else "uint16"
