"""A quiet start of the `keras-unetpp` command, without hiding real errors.

TensorFlow's C++ runtime writes a few lines to the process' stderr (file
descriptor 2) while it is imported and while it looks for GPUs, many of them
before its logging is set up, so that `TF_CPP_MIN_LOG_LEVEL` cannot silence
them: the "oneDNN custom operations are on" and CPU-feature notices, "Could
not find cuda drivers", the absl "All log messages before
absl::InitializeLog()" warning, and `failed call to cuInit` on a machine
without a CUDA driver or GPU.

When this process is the `keras-unetpp` command (the console script or
`python -m keras_unetpp`), `keras_unetpp/__init__.py` calls
`quiet_cli_start()` before Keras (hence TensorFlow) is imported. Unless the
user set `TF_CPP_MIN_LOG_LEVEL` (then TensorFlow's logging is theirs to
choose) or asked for the full start-up output with
`KERAS_UNETPP_VERBOSE_STARTUP=1`, it sets `TF_CPP_MIN_LOG_LEVEL=2` (errors
only) and imports TensorFlow with file descriptor 2 redirected to a
temporary file; then it writes back to stderr every line that is not one of
the `HARMLESS` start-up lines, so that real errors still show.

Only the standard library is imported here.
"""

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile

VERBOSE_VARIABLE = "KERAS_UNETPP_VERBOSE_STARTUP"

# TensorFlow's start-up lines that say nothing is wrong (matched anywhere in
# a line, after the log prefix such as `I0000 00:00:... port.cc:153] `).
HARMLESS = tuple(
    re.compile(pattern)
    for pattern in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called "
        r"are written to STDERR$",
        r"\] oneDNN custom operations are on\. ",
        r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use "
        r"available CPU instructions in performance-critical operations\.$",
        r"^To enable the following instructions: .*, in other operations, "
        r"rebuild TensorFlow with the appropriate compiler flags\.$",
        r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU "
        r"will not be used\.$",
    )
)
# `failed call to cuInit` is harmless only where there is no GPU to use: no
# CUDA driver (TensorFlow says so in the same start-up), or no device.
_CUINIT = re.compile(r"\] failed call to cuInit: ")
_NO_DRIVER = re.compile(r"Could not find cuda drivers on your machine")
_NO_DEVICE = re.compile(r"CUDA_ERROR_NO_DEVICE|no CUDA-capable device is detected")


def filter_startup_lines(data):
    """Drops TensorFlow's harmless start-up lines from captured stderr bytes.

    Args:
        data: bytes written to stderr.

    Returns:
        The same bytes without the lines that match `HARMLESS` (and without
        `failed call to cuInit` where TensorFlow found no CUDA driver or no
        device); every other line is kept, unchanged and in order.
    """
    lines = data.splitlines(keepends=True)
    texts = [line.decode("utf-8", errors="replace").rstrip("\r\n") for line in lines]
    no_gpu = any(_NO_DRIVER.search(text) for text in texts)
    kept = []
    for line, text in zip(lines, texts):
        if any(pattern.search(text) for pattern in HARMLESS):
            continue
        if _CUINIT.search(text) and (no_gpu or _NO_DEVICE.search(text)):
            continue
        kept.append(line)
    return b"".join(kept)


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data) :]


@contextlib.contextmanager
def filtered_stderr():
    """Holds what the block writes to file descriptor 2, then writes it back.

    Everything written to stderr inside the block (by Python or by C++
    libraries) goes to a temporary file; when the block ends, even by an
    exception, the lines of `filter_startup_lines` are written to stderr.
    Where there is no stderr or no temporary folder, nothing is filtered.

    Example:

    ```python
    with filtered_stderr():
        import tensorflow
    ```
    """
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No stderr to filter.
        saved = None
    if saved is None:
        yield
        return
    try:
        capture = tempfile.TemporaryFile()
    except OSError:  # No temporary folder: nothing is filtered.
        os.close(saved)
        capture = None
    if capture is None:
        yield
        return
    with capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            _write_all(2, filter_startup_lines(capture.read()))


def guarded_import(name):
    """Imports a module with its harmless start-up lines filtered from stderr.

    For TensorFlow, also looks for GPUs inside the guard: that is when it
    initializes CUDA (and says `failed call to cuInit` without a GPU).

    Args:
        name: module name, e.g. `"tensorflow"`.

    Returns:
        The module.
    """
    with filtered_stderr():
        module = importlib.import_module(name)
        if name == "tensorflow":
            module.config.list_physical_devices("GPU")
    return module


def _wanted(environ):
    if environ.get(VERBOSE_VARIABLE, "").strip() not in ("", "0"):
        return False
    if "TF_CPP_MIN_LOG_LEVEL" in environ:
        return False
    backend = environ.get("KERAS_BACKEND", "tensorflow").strip().lower()
    return backend in ("", "tensorflow")


def quiet_start(environ=None):
    """Imports TensorFlow quietly, unless the user asked otherwise.

    Does nothing where `KERAS_UNETPP_VERBOSE_STARTUP` is set (to anything
    but `0`), where `TF_CPP_MIN_LOG_LEVEL` is set already, where Keras is
    told to use another backend (`KERAS_BACKEND`), where TensorFlow is
    imported already or is not installed. Otherwise sets
    `TF_CPP_MIN_LOG_LEVEL=2` (TensorFlow's errors still show) and imports
    TensorFlow with `guarded_import`.

    Args:
        environ: the environment to read and update; `os.environ` by
            default.

    Returns:
        `True` if TensorFlow was imported here, else `False`.
    """
    environ = os.environ if environ is None else environ
    if not _wanted(environ) or "tensorflow" in sys.modules:
        return False
    if importlib.util.find_spec("tensorflow") is None:
        return False
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    guarded_import("tensorflow")
    return True


def launched_as_cli(argv=None, orig_argv=None):
    """Whether this process is the `keras-unetpp` command.

    That is the console script (`sys.argv[0]` named `keras-unetpp`), or
    `python -m keras_unetpp` while the package is imported (then
    `sys.argv[0]` is `"-m"`).

    Args:
        argv: `sys.argv` by default.
        orig_argv: the interpreter's own arguments, `sys.orig_argv` by
            default.

    Returns:
        `True` or `False`.
    """
    argv = sys.argv if argv is None else argv
    if orig_argv is None:
        orig_argv = getattr(sys, "orig_argv", [])
    first = argv[0] if argv else ""
    name = os.path.basename(first).removesuffix(".exe")
    if name in ("keras-unetpp", "keras-unetpp-script.py"):
        return True
    if first == "-m" and "-m" in orig_argv:
        index = orig_argv.index("-m")
        return orig_argv[index + 1 : index + 2] == ["keras_unetpp"]
    return False


def quiet_cli_start():
    """`quiet_start()` where this process is the `keras-unetpp` command.

    Returns:
        `True` if TensorFlow was imported here, else `False`.
    """
    return launched_as_cli() and quiet_start()
