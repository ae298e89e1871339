"""Argument checks shared by the modules: clear `InputError`s, Keras style.

`InputError` is a `ValueError`; the command line reports it in one line.
"""

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
