"""Runtime patches of Keras objects: one convention, and the private names used.

Three features change how a built model computes without changing what it
is (its layers, configs, weights and saved files stay core Keras):

- `fuse_batch_norm`: each `BatchNormalization.call` runs TensorFlow's fused
  kernel;
- `recompute_nodes`: the model's `call` recomputes each node in the
  backward pass;
- `distribute.prepare_for_strategy` under `MultiWorkerMirroredStrategy`:
  the model's `train_step`/`test_step` and `_maybe_symbolic_build` get
  around two multi-worker gaps of Keras 3's TensorFlow trainer.

They all follow one convention, `patch()`: the replacement is bound to the
one object it patches (an instance attribute, never a class), the object is
marked with `_keras_unetpp_<feature>` so patching again is a no-op and
`patched()` can tell, and the model's traced step functions are dropped so
the next `fit`/`evaluate`/`predict` traces the patched graph.

The private Keras names these patches rely on are listed in
`PRIVATE_KERAS_NAMES`; `check_private_names()` (run by the test suite) fails
loudly, naming them, when a Keras upgrade removes one.
"""

import types

import keras

from keras_unetpp.errors import InputError

# Where the private names live, what relies on them.
PRIVATE_KERAS_NAMES = {
    "keras.Model._flatten_layers": "fuse_batch_norm: every nested layer",
    "keras.Model._maybe_symbolic_build": "multi-worker fit: input shapes",
    "keras.Model._symbolic_build": "multi-worker fit: input shapes",
    "keras.Model.train_function": "reset_step_functions: traced fit step",
    "keras.Model.test_function": "reset_step_functions: traced evaluate step",
    "keras.Model.predict_function": "reset_step_functions: traced predict step",
}

_STEP_FUNCTIONS = ("train_function", "test_function", "predict_function")
_PREFIX = "_keras_unetpp_"


def check_private_names():
    """Raises unless every name in `PRIVATE_KERAS_NAMES` exists in this Keras.

    The step-function attributes exist on built models only; they are
    checked on a tiny functional model.

    Returns:
        The Keras version checked, a str.

    Raises:
        RuntimeError: naming each missing name and what relied on it.
    """
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    missing = []
    for dotted, use in PRIVATE_KERAS_NAMES.items():
        attribute = dotted.rsplit(".", 1)[-1]
        if not hasattr(model, attribute):
            missing.append(f"{dotted} ({use})")
    if missing:
        raise RuntimeError(
            f"Keras {keras.__version__} lacks private names keras_unetpp "
            f"patches rely on: {'; '.join(missing)}. Pin an earlier Keras or "
            "update keras_unetpp/keras_patches.py."
        )
    return keras.__version__


def patch(obj, attribute, function, feature, value=True, model=None):
    """Binds `function` as `obj.<attribute>` for this object only, and marks it.

    Args:
        obj: the Keras layer or model to patch.
        attribute: str, the method to replace, e.g. `"call"`.
        function: the replacement, `function(obj, *args, **kwargs)`; it is
            bound to `obj` (`types.MethodType`).
        feature: str, the feature's mark, e.g. `"fused"`: `obj` gets the
            attribute `_keras_unetpp_fused`.
        value: what the mark holds (a truthy value, e.g. a plan). Defaults
            to `True`.
        model: the model whose traced step functions must be dropped
            (`obj` itself if it is a model). Defaults to `None`.

    Returns:
        bool, `True` if it patched, `False` if `obj` was patched already.

    Example:

    ```python
    patch(layer, "call", _fused_call, "fused", model=model)
    ```
    """
    if patched(obj, feature):
        return False
    if not value:
        raise InputError(f"A patch mark must be truthy. Received: value={value!r}")
    setattr(obj, attribute, types.MethodType(function, obj))
    setattr(obj, _PREFIX + feature, value)
    target = model if model is not None else obj
    if isinstance(target, keras.Model):
        reset_step_functions(target)
    return True


def patched(obj, feature):
    """The mark of `feature` on `obj` (what `patch` stored), or `None`."""
    return getattr(obj, _PREFIX + feature, None)


def reset_step_functions(model):
    """Drops a model's traced `fit`/`evaluate`/`predict` steps.

    The next call traces them again, through whatever its layers' `call`
    now is.
    """
    for attribute in _STEP_FUNCTIONS:
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
