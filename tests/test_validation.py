"""The shared argument checks."""

import pytest

from keras_unetpp.validation import check_bool, check_int


def test_check_int_accepts_and_converts():
    assert check_int(3, "n") == 3
    assert check_int(0, "seed", low=0) == 0
    assert check_int(6, "depth", 0, 6) == 6


@pytest.mark.parametrize(
    "value,kwargs,match",
    [
        (0, {}, r"`n` must be a positive int. Received: n=0"),
        (True, {}, r"Received: n=True"),
        (2.0, {}, r"Received: n=2.0"),
        ("3", {}, r"Received: n='3'"),
        (1, {"low": 2}, r"`n` must be an int >= 2. Received: n=1"),
        (7, {"low": 0, "high": 6}, r"`n` must be an int in \[0, 6\]. Received: n=7"),
    ],
)
def test_check_int_rejects(value, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_int(value, "n", **kwargs)


def test_check_bool():
    assert check_bool(False, "flag") is False
    with pytest.raises(ValueError, match="`flag` must be a bool. Received: flag=1"):
        check_bool(1, "flag")
