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

import keras

from keras_unetpp.errors import InputError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

# /proc/cpuinfo flags of native bfloat16 arithmetic (x86 and Arm).
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


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
    or on a CPU with native bfloat16 arithmetic, and `"float32"` otherwise.
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
    if kind == "tpu" or cpu_has_bfloat16():
        return "mixed_bfloat16"
    return "float32"


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

    Example:

    ```python
    keras_unetpp.set_precision("mixed_bfloat16")
    model = keras_unetpp.build(depth=4, input_shape=(96, 96, 1))
    model.compile(optimizer="adam", loss=keras_unetpp.BCEDiceLoss())
    ```
    """
    name = resolve_precision(precision)
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
