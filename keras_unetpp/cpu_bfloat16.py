"""What TensorFlow's oneDNN path can compute in bfloat16 on this CPU.

TensorFlow runs its CPU convolutions through oneDNN when oneDNN is on (the
default on x86 CPUs with AVX512_VNNI, AVX512_BF16, AVX-VNNI or AMX, and
everywhere on x86-64 under the `keras-unetpp` command, see
`keras_unetpp.onednn`; `TF_ENABLE_ONEDNN_OPTS=0|1` decides otherwise).
oneDNN dispatches to the best instruction set the CPU has, unless the
environment variable `ONEDNN_MAX_CPU_ISA` (or its older name
`DNNL_MAX_CPU_ISA`) caps it, e.g. `ONEDNN_MAX_CPU_ISA=AVX2` to reproduce a
CPU without AVX-512. Under such a cap the CPU flags say "bfloat16" while
oneDNN may not compute it:

- below `AVX512_CORE`, oneDNN has no bfloat16 convolution at all and every
  bfloat16 convolution fails ("could not create a primitive descriptor for
  the convolution forward propagation primitive");
- at `AVX512_CORE` or `AVX512_CORE_VNNI` it emulates bfloat16, measured 4.6x
  slower than float32 (depth-4 UNet++ inference, Xeon with AMX, 2 cores);
- with oneDNN off, TensorFlow's Eigen kernels compute bfloat16 at half the
  float32 speed (same measurement).

Only the TensorFlow backend is concerned: this module imports TensorFlow
only when that backend is in use.
"""

import functools
import os
import re

import keras

# oneDNN's instruction-set names (the values of ONEDNN_MAX_CPU_ISA), ranked
# from the oldest to the newest; aliases share a rank.
_ISA_RANKS = {
    "SSE41": 0,
    "AVX": 1,
    "AVX2": 2,
    "AVX2_VNNI": 3,
    "AVX2_VNNI_2": 4,
    "AVX512_CORE": 5,
    "AVX512_CORE_VNNI": 6,
    "AVX512_CORE_BF16": 7,
    "AVX10_1_512": 8,
    "AVX512_CORE_FP16": 8,
    "AVX10_1_512_AMX": 9,
    "AVX512_CORE_AMX": 9,
    "AVX10_1_512_AMX_FP16": 10,
    "AVX512_CORE_AMX_FP16": 10,
    "ALL": 11,
}
# The lowest cap at which oneDNN has a bfloat16 convolution (emulated), and
# the lowest at which it uses native bfloat16 instructions.
_BF16_COMPUTES = "AVX512_CORE"
_BF16_NATIVE = "AVX512_CORE_BF16"
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def isa_cap(environ=None):
    """The instruction set that `ONEDNN_MAX_CPU_ISA` caps oneDNN at.

    Args:
        environ: mapping of environment variables. Defaults to `None`
            (`os.environ`).

    Returns:
        `(variable, value)`, e.g. `("ONEDNN_MAX_CPU_ISA", "AVX2")`, or
        `None` when no cap is set or the value is not a oneDNN name (oneDNN
        ignores those) or is `ALL`.
    """
    environ = os.environ if environ is None else environ
    for variable in ISA_VARIABLES:
        value = environ.get(variable, "").strip().upper()
        if value in _ISA_RANKS and value != "ALL":
            return variable, value
    return None


def _cap_at_least(cap, isa):
    return cap is None or _ISA_RANKS[cap[1]] >= _ISA_RANKS[isa]


def tensorflow_uses_onednn():
    """Whether TensorFlow computes its CPU kernels through oneDNN.

    Returns:
        bool; `False` under any other Keras backend.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        # Without TensorFlow's private query, an approximation of its rule
        # (whose default depends on the CPU): on unless the user turned it
        # off with TF_ENABLE_ONEDNN_OPTS.
        setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
        return setting not in ("0", "false")


def bfloat16_is_native(environ=None):
    """Whether TensorFlow's CPU convolutions run native bfloat16 instructions.

    On the TensorFlow backend that needs oneDNN on and no `ONEDNN_MAX_CPU_ISA`
    cap below `AVX512_CORE_BF16`; the CPU's own flags are checked by
    `keras_unetpp.precision.cpu_has_bfloat16`. Under the other backends this
    module has nothing to add and returns `True`.

    Args:
        environ: mapping of environment variables. Defaults to `None`
            (`os.environ`).

    Returns:
        bool.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    return tensorflow_uses_onednn() and _cap_at_least(isa_cap(environ), _BF16_NATIVE)


@functools.cache
def _bfloat16_convolution_error():
    """The error of one tiny bfloat16 convolution, or `None` when it runs."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    with tf.device("/CPU:0"):
        image = tf.zeros((1, 4, 4, 1), tf.bfloat16)
        kernel = tf.zeros((3, 3, 1, 1), tf.bfloat16)
        try:
            tf.nn.conv2d(image, kernel, strides=1, padding="SAME")
        except tf.errors.OpError as error:
            return _short_message(str(error))
    return None


def _short_message(text):
    """oneDNN's own sentence out of a TensorFlow kernel error."""
    found = re.search(r"message: (.*?)(?:\. Run workload|$)", text, re.DOTALL)
    return (found.group(1) if found else text).strip().splitlines()[0]


def bfloat16_unavailable_reason():
    """Why this process cannot compute bfloat16 convolutions on the CPU.

    Runs one tiny bfloat16 convolution (once per process) on the
    TensorFlow backend; the other backends always can.

    Returns:
        str, a sentence naming the cause and the remedies, or `None` when
        bfloat16 convolutions run.
    """
    error = _bfloat16_convolution_error()
    if error is None:
        return None
    cap = isa_cap()
    if cap is not None and not _cap_at_least(cap, _BF16_COMPUTES):
        cause = (
            f"{cap[0]}={cap[1]} caps TensorFlow's oneDNN below "
            f"{_BF16_COMPUTES}, where it has no bfloat16 convolution"
        )
        unset = f"Unset {cap[0]}, use"
    else:
        cause = "TensorFlow's CPU kernels cannot compute a bfloat16 convolution"
        unset = "Use"
    return (
        f"{cause} (TensorFlow: {error}). {unset} float32 (`--precision "
        "float32`), or set TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's Eigen kernels "
        "compute bfloat16, slower than float32)."
    )
