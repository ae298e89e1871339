"""The public API: every declared name resolves, TF-only parts load lazily."""

import subprocess
import sys

import keras_unetpp


def test_every_public_name_resolves():
    for name in keras_unetpp.__all__:
        assert getattr(keras_unetpp, name) is not None, name
    assert sorted(keras_unetpp.__all__) == keras_unetpp.__all__


def test_unknown_attribute_raises_attribute_error():
    try:
        keras_unetpp.no_such_thing  # noqa: B018
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_does_not_load_tf_specific_modules():
    code = (
        "import sys, keras_unetpp; "
        "print(sorted(m for m in sys.modules if m.startswith('keras_unetpp.')"
        " and m.split('.')[1] in ('data', 'export', 'distribute')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
