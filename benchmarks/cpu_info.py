"""What CPU a benchmark ran on: model, vector extensions, oneDNN state.

Speed figures of TensorFlow on CPU depend on the vector extensions the CPU
has (AVX2 + FMA on most laptops and many cloud VMs; AVX-512, its BF16 and
VNNI parts, and AMX on recent Xeons) and on whether TensorFlow runs its
kernels with oneDNN (on by default on CPUs with AVX-512, off otherwise; the
`keras-unetpp` command turns it on where TensorFlow leaves it off) and with
which of oneDNN's kernels (`ONEDNN_MAX_CPU_ISA=AVX2` makes oneDNN use its
AVX2 kernels on an AVX-512 machine, which reproduces most of an AVX2 CPU).
`describe_cpu()` collects all of it, so that every printed figure says how
it was obtained.
"""

import os
import platform

# /proc/cpuinfo flag -> the name the tables use.
EXTENSIONS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX BF16",
    "amx_int8": "AMX INT8",
}


def _cpuinfo(path="/proc/cpuinfo"):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def cpu_kind(flags, max_isa=None):
    """ "AVX-512 + AMX", "AVX-512", "AVX2" or "other": the class of kernels used.

    Args:
        flags: set of /proc/cpuinfo flags.
        max_isa: the `ONEDNN_MAX_CPU_ISA` in force (e.g. `"AVX2"`), which
            caps what oneDNN uses. Defaults to `None`.
    """
    cap = (max_isa or "").upper()
    if cap.startswith("AVX2") or cap in ("SSE41", "AVX"):
        return f"AVX2 (oneDNN capped by ONEDNN_MAX_CPU_ISA={max_isa})"
    if "avx512f" in flags:
        return "AVX-512 + AMX" if "amx_tile" in flags else "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return "other"


def cap_xla_like_onednn(environ):
    """XLA's code generation capped to the ISA `ONEDNN_MAX_CPU_ISA` caps oneDNN to.

    `ONEDNN_MAX_CPU_ISA=AVX2` reproduces an AVX2 CPU for oneDNN's kernels
    only: XLA (`jit_compile=True`) does not use oneDNN, and its LLVM code
    generator targets every extension of the host (AVX-512 here) unless told
    otherwise. So that an XLA figure under the cap is an AVX2 figure too,
    this adds XLA's own cap, `--xla_cpu_max_isa=AVX2`, to `XLA_FLAGS` where
    oneDNN is capped to AVX2 and `XLA_FLAGS` does not set it already.

    Args:
        environ: a dict of environment variables, changed in place.

    Returns:
        The same dict.

    Example:

    ```python
    cap_xla_like_onednn({"ONEDNN_MAX_CPU_ISA": "AVX2"})["XLA_FLAGS"]
    # "--xla_cpu_max_isa=AVX2"
    ```
    """
    cap = environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    flags = environ.get("XLA_FLAGS", "")
    if cap.startswith("AVX2") and "xla_cpu_max_isa" not in flags:
        environ["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa=AVX2".strip()
    return environ


def onednn_state():
    """`(enabled, how)`: whether TensorFlow's oneDNN kernels are on, and why.

    Call after TensorFlow has been imported in this process.
    """
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    try:
        from tensorflow.python.util import _pywrap_util_port

        enabled = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        enabled = None
    how = (
        f"TF_ENABLE_ONEDNN_OPTS={setting}"
        if setting is not None
        else "TensorFlow's default for this CPU"
    )
    return enabled, how


def describe_cpu(cpuinfo="/proc/cpuinfo"):
    """A dict: `model`, `cores`, `extensions`, `kind`, `onednn`, `onednn_how`,
    `onednn_max_cpu_isa`.

    Example:

    ```python
    from cpu_info import describe_cpu
    describe_cpu()["kind"]   # e.g. "AVX-512 + AMX"
    ```
    """
    model, flags = _cpuinfo(cpuinfo)
    max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    enabled, how = onednn_state()
    return {
        "model": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "extensions": [name for flag, name in EXTENSIONS.items() if flag in flags],
        "kind": cpu_kind(flags, max_isa),
        "onednn": enabled,
        "onednn_how": how,
        "onednn_max_cpu_isa": max_isa,
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def summary(description):
    """One line, e.g. for the head of a benchmark's output."""
    onednn = {True: "on", False: "off", None: "unknown"}[description["onednn"]]
    isa = description["onednn_max_cpu_isa"]
    return (
        f"CPU: {description['model']}, {description['cores']} cores; "
        f"{', '.join(description['extensions']) or 'no AVX2'}; kind "
        f"{description['kind']}; oneDNN {onednn} ({description['onednn_how']}"
        + (f", ONEDNN_MAX_CPU_ISA={isa}" if isa else "")
        + ")"
        + (
            f"; XLA_FLAGS={description['xla_flags']}"
            if description.get("xla_flags")
            else ""
        )
    )
