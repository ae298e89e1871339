"""Peak memory of TensorFlow work, on CPUs with and without oneDNN, and GPUs.

The one place where the benchmarks and the tests read TensorFlow's allocator
statistics (`tf.config.experimental.get_memory_info`). TensorFlow keeps them
for a GPU always, for the CPU only when its CPU allocator does:

- with oneDNN (TensorFlow's default on x86 CPUs with AVX-512), oneDNN's CPU
  allocator keeps them;
- without oneDNN (CPUs without AVX-512, or `TF_ENABLE_ONEDNN_OPTS=0`),
  TensorFlow's plain CPU allocator does not, and `get_memory_info("CPU:0")`
  raises `ValueError: Allocator stats not available for device 'CPU:0'`.

`enable_allocator_stats()` then switches the process' CPU allocator to
TensorFlow's BFC (best-fit with coalescing) allocator, which keeps them, by
setting `TF_CPU_ALLOCATOR_USE_BFC=1`; TensorFlow reads that variable when it
creates its CPU device, so call it before the process' first TensorFlow op.

Only the standard library is imported here (TensorFlow on first use), so that
this module loads in any of the benchmarks' interpreters. Import it with the
`benchmarks/` folder on `sys.path` (scripts there have it already).
"""

import os

BFC_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"


def onednn_enabled():
    """Whether TensorFlow runs its CPU kernels with oneDNN in this process.

    Returns:
        `True` or `False`; `None` where this TensorFlow does not tell.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())


def _devices_created():
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return False
    return bool(getattr(context.context(), "_initialized", False))


def enable_allocator_stats():
    """Makes the CPU allocator of this process keep allocator statistics.

    Where oneDNN is on, its allocator keeps them and nothing changes. Where
    it is off (or this TensorFlow does not tell), sets
    `TF_CPU_ALLOCATOR_USE_BFC=1`, so that TensorFlow allocates CPU tensors
    with its BFC allocator, which keeps them. A value of
    `TF_CPU_ALLOCATOR_USE_BFC` that the user set is left as it is.

    Call it before the process' first TensorFlow op (importing TensorFlow
    and Keras is fine): TensorFlow picks its CPU allocator when it creates
    its devices.

    Returns:
        The CPU allocator whose statistics are read: `"onednn"` or
        `"bfc"`; `"default"` where the user turned the BFC allocator off
        without oneDNN (then `memory_info("CPU:0")` raises).

    Raises:
        RuntimeError: if TensorFlow's devices exist already and the CPU
            allocator keeps no statistics.
    """
    onednn = onednn_enabled()
    if BFC_VARIABLE in os.environ:
        if os.environ[BFC_VARIABLE].strip().lower() in ("1", "true"):
            return "bfc"
        return "onednn" if onednn else "default"
    if onednn:
        return "onednn"
    if _devices_created():
        raise RuntimeError(
            "TensorFlow's CPU allocator keeps no statistics without oneDNN, "
            "and its devices exist already: call "
            "`enable_allocator_stats()` before the first TensorFlow op (or "
            f"set {BFC_VARIABLE}=1 in the environment)."
        )
    os.environ[BFC_VARIABLE] = "1"
    return "bfc"


def memory_info(device="CPU:0"):
    """Allocator bytes of a device now and at their peak since the last reset.

    Args:
        device: TensorFlow device name, e.g. `"CPU:0"` or `"GPU:0"`.

    Returns:
        Dict with `"current"` and `"peak"`, in bytes.

    Raises:
        RuntimeError: if the device's allocator keeps no statistics (a CPU
            without oneDNN, where `enable_allocator_stats()` was not called
            before the first TensorFlow op).
    """
    import tensorflow as tf

    try:
        info = tf.config.experimental.get_memory_info(device)
    except ValueError as error:
        raise RuntimeError(
            f"No allocator statistics for {device}: without oneDNN, call "
            "`enable_allocator_stats()` (benchmarks/memory.py) before the "
            f"first TensorFlow op, or set {BFC_VARIABLE}=1. ({error})"
        ) from error
    return {"current": int(info["current"]), "peak": int(info["peak"])}


def reset_peak(device="CPU:0"):
    """Restarts the device's peak at the bytes allocated now.

    Args:
        device: TensorFlow device name.
    """
    import tensorflow as tf

    memory_info(device)  # The clear error, where there are no statistics.
    tf.config.experimental.reset_memory_stats(device)


def step_peak(step, device="CPU:0"):
    """Allocator bytes before a call and at their peak during it.

    Args:
        step: callable with no arguments, e.g. one training step.
        device: TensorFlow device name.

    Returns:
        Dict with `"before"` (bytes allocated before the call), `"peak"`
        (peak bytes during it) and `"step"` (`peak - before`: what the call
        needed above what was allocated already).
    """
    before = memory_info(device)["current"]
    reset_peak(device)
    step()
    peak = memory_info(device)["peak"]
    return {"before": before, "peak": peak, "step": peak - before}
