"""Choosing and setting the mixed-precision policy of keras_unetpp models.

Keras' global dtype policy decides in which dtype layers compute and keep
their variables. UNet++ trains well under the two mixed policies: convolutions
compute in 16 bits while the variables, the batch-normalization statistics,
the outputs (the float32 heads of `keras_unetpp.build`) and the losses stay in
float32.

- `"mixed_bfloat16"` has float32's exponent range, so it needs no loss
  scaling. It is the fast choice on TPUs and on CPUs with native bfloat16
  arithmetic (AVX512_BF16 or AMX on x86, BF16 on Arm).
- `"mixed_float16"` is the fast choice on NVIDIA GPUs (compute capability 7.0
  and newer). Its small range makes small gradients underflow, so it needs
  loss scaling: `keras.Model.compile()` wraps the optimizer in a
  `keras.optimizers.LossScaleOptimizer` by itself (its default
  `auto_scale_loss=True`). A custom training loop must do the same.
"""

import contextlib
import os
import warnings

import keras

from keras_unetpp import cpu_bfloat16
from keras_unetpp.description import ACCURATE_OUTPUT, parse_head
from keras_unetpp.errors import InputError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

# /proc/cpuinfo flags of native bfloat16 arithmetic (x86 and Arm).
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# The layers whose compute dtype decides where a model can run.
CONVOLUTIONS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3D,
    keras.layers.Conv3DTranspose,
)


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU computes in bfloat16 natively (not by emulation).

    Reads the CPU flags from `cpuinfo` (Linux). Elsewhere, or when the file
    cannot be read, returns `False`: without native support bfloat16 is
    emulated and slower than float32.

    Args:
        cpuinfo: str, path of the Linux CPU description.
            Defaults to `"/proc/cpuinfo"`.

    Returns:
        bool.
    """
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    return any(flag in flags for flag in _CPU_BF16_FLAGS)
    except OSError:
        return False
    return False


def accelerator():
    """The kind of accelerator the Keras backend computes on.

    Returns:
        `"gpu"`, `"tpu"` or `"cpu"`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("TPU"):
            return "tpu"
        if tf.config.list_physical_devices("GPU"):
            return "gpu"
        return "cpu"
    if backend == "jax":
        import jax

        platform = jax.default_backend()
        return platform if platform in ("gpu", "tpu") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def resolve_precision(precision="auto"):
    """The dtype policy name that `set_precision(precision)` would set.

    `"auto"` picks `"mixed_float16"` on a GPU, `"mixed_bfloat16"` on a TPU
    or on a CPU with native bfloat16 arithmetic that the backend uses (under
    TensorFlow: oneDNN on and no `ONEDNN_MAX_CPU_ISA` cap below
    `AVX512_CORE_BF16`, see `keras_unetpp.cpu_bfloat16`), and `"float32"`
    otherwise.
    The environment variable `KERAS_UNETPP_PRECISION` (one of the explicit
    names) overrides the automatic choice.

    Args:
        precision: one of `"auto"`, `"float32"`, `"mixed_bfloat16"`,
            `"mixed_float16"`. Defaults to `"auto"`.

    Returns:
        str, an explicit policy name.
    """
    if precision not in PRECISIONS:
        raise InputError(
            f"`precision` must be one of {PRECISIONS}. "
            f"Received: precision={precision!r}"
        )
    if precision != "auto":
        return precision
    override = os.environ.get("KERAS_UNETPP_PRECISION")
    if override:
        if override not in PRECISIONS[1:]:
            raise InputError(
                f"The environment variable KERAS_UNETPP_PRECISION must be one "
                f"of {PRECISIONS[1:]}. Received: "
                f"KERAS_UNETPP_PRECISION={override!r}"
            )
        return override
    kind = accelerator()
    if kind == "gpu":
        return "mixed_float16"
    if kind == "tpu":
        return "mixed_bfloat16"
    if cpu_has_bfloat16() and cpu_bfloat16.bfloat16_is_native():
        return "mixed_bfloat16"
    return "float32"


def bfloat16_unavailable_reason():
    """Why bfloat16 convolutions cannot run here, or `None` when they can.

    Only a CPU under TensorFlow can lack them (a oneDNN cap below
    `AVX512_CORE`, see `keras_unetpp.cpu_bfloat16`); GPUs, TPUs and the
    other backends always have them.

    Returns:
        str or `None`.
    """
    if accelerator() != "cpu":
        return None
    return cpu_bfloat16.bfloat16_unavailable_reason()


def check_precision_runs(name):
    """Raises a clear error when policy `name` cannot compute here.

    Args:
        name: a Keras dtype policy name, e.g. `"mixed_bfloat16"`.

    Raises:
        InputError: `name` computes in bfloat16 and this CPU's TensorFlow
            cannot; the message names the cause and the remedies.
    """
    if "bfloat16" not in name:
        return
    reason = bfloat16_unavailable_reason()
    if reason is not None:
        raise InputError(
            f"The precision {name!r} cannot run on this machine: {reason} "
            f"Received: precision={name!r}"
        )


def conv_compute_dtypes(model):
    """The dtypes the convolutions of `model` compute in.

    Args:
        model: a `keras.Model`.

    Returns:
        sorted list of str, e.g. `["bfloat16"]`.
    """
    return sorted(
        {
            layer.dtype_policy.compute_dtype
            for layer in model.layers
            if isinstance(layer, CONVOLUTIONS)
        }
    )


def cast_model(model, policy, inputs=None):
    """A clone of `model`, same weights, its layers computing under `policy`.

    The float32 heads (and the accurate mode's mean) keep their own policy,
    so the outputs stay float32. The model given is left untouched.

    Args:
        model: a functional `keras.Model` built by keras_unetpp.
        policy: a Keras dtype policy name (`"float32"`, `"mixed_bfloat16"`,
            `"mixed_float16"`), or `None` to keep every layer's policy.
        inputs: `None` to keep the model's input, or a `keras.Input` of
            another shape (e.g. any height and width). Defaults to `None`.

    Returns:
        `keras.Model`.

    Example:

    ```python
    model = keras_unetpp.build(depth=2, input_shape=(64, 64, 1))
    in_float32 = cast_model(model, "float32")
    ```
    """

    def clone_layer(layer):
        config = layer.get_config()
        head = parse_head(layer.name) is not None or layer.name == ACCURATE_OUTPUT
        if policy is not None and not head:
            config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=clone_layer
    )
    clone.set_weights(model.get_weights())
    return clone


def runnable_model(model):
    """`model`, or its float32 clone where its bfloat16 cannot compute.

    A model trained under `"mixed_bfloat16"` keeps that policy when it is
    loaded. On a CPU whose TensorFlow cannot compute bfloat16 convolutions
    (see `bfloat16_unavailable_reason`) it is cast to float32, with a
    warning: same weights, float32 arithmetic, so its outputs differ from
    the bfloat16 ones by bfloat16's rounding only.

    Args:
        model: a `keras.Model`.

    Returns:
        `keras.Model`.
    """
    if "bfloat16" not in conv_compute_dtypes(model):
        return model
    reason = bfloat16_unavailable_reason()
    if reason is None:
        return model
    warnings.warn(
        f"Model {model.name!r} computes in bfloat16, which cannot run here: "
        f"{reason} Computing it in float32 instead.",
        RuntimeWarning,
        stacklevel=2,
    )
    return cast_model(model, "float32")


def set_precision(precision="auto"):
    """Sets Keras' global dtype policy for the models built after it.

    Call it before `keras_unetpp.build()`: a model keeps the policy that was
    in force when it was built. The heads of keras_unetpp models compute in
    float32 under every policy, and `keras_unetpp.BCEDiceLoss` casts to
    float32, so the outputs and the loss are float32; `compile()` adds loss
    scaling by itself under `"mixed_float16"`.

    Args:
        precision: one of `"auto"` (see `resolve_precision`), `"float32"`,
            `"mixed_bfloat16"`, `"mixed_float16"`. Defaults to `"auto"`.

    Returns:
        str, the name of the policy now in force.

    Raises:
        InputError: the policy computes in bfloat16 and this CPU's
            TensorFlow cannot (see `check_precision_runs`).

    Example:

    ```python
    keras_unetpp.set_precision("mixed_bfloat16")
    model = keras_unetpp.build(depth=4, input_shape=(96, 96, 1))
    model.compile(optimizer="adam", loss=keras_unetpp.BCEDiceLoss())
    ```
    """
    name = resolve_precision(precision)
    check_precision_runs(name)
    keras.config.set_dtype_policy(name)
    return name


@contextlib.contextmanager
def precision_scope(precision="auto"):
    """A context in which the global dtype policy is `precision`.

    The previous policy is restored on exit, also after an exception.

    Args:
        precision: as in `set_precision`. Defaults to `"auto"`.

    Yields:
        str, the name of the policy in force inside the context.

    Example:

    ```python
    with keras_unetpp.precision_scope("mixed_bfloat16"):
        model = keras_unetpp.build(depth=2, input_shape=(64, 64, 1))
    ```
    """
    previous = keras.config.dtype_policy()
    try:
        yield set_precision(precision)
    finally:
        keras.config.set_dtype_policy(previous)
