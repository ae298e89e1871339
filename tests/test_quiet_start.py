"""The quiet start of the `keras-unetpp` command: harmless lines only are hidden."""

import os
import subprocess
import sys

import pytest

from keras_unetpp import quiet_start

# Lines TensorFlow 2.21 writes at start-up on a CPU-only machine.
HARMLESS_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written "
    "to STDERR",
    "I0000 00:00:1796165929.824954    4743 port.cc:153] oneDNN custom operations "
    "are on. You may see slightly different numerical results due to "
    "floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796165929.825404    4743 cudart_stub.cc:31] Could not find cuda "
    "drivers on your machine, GPU will not be used.",
    "I0000 00:00:1796165929.902528    4743 cpu_feature_guard.cc:227] This "
    "TensorFlow binary is optimized to use available CPU instructions in "
    "performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 "
    "AVX_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
    "E0000 00:00:1796165947.558839    4866 cuda_platform.cc:52] failed call to "
    "cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]
# What the start-up must still show.
REAL_LINES = [
    "E0000 00:00:1796165947.558839    4866 some_kernel.cc:52] something failed",
    "Traceback (most recent call last):",
    "ImportError: libfoo.so: cannot open shared object file",
]
# Fragments of the harmless lines, to look for in a command's stderr.
FRAGMENTS = [
    "absl::InitializeLog",
    "oneDNN custom operations",
    "cpu_feature_guard",
    "Could not find cuda drivers",
    "cuInit",
    "rebuild TensorFlow",
]


def _bytes(lines):
    return "".join(line + "\n" for line in lines).encode()


def test_filter_drops_the_harmless_lines_only():
    mixed = [HARMLESS_LINES[0], REAL_LINES[0], *HARMLESS_LINES[1:], *REAL_LINES[1:]]
    assert quiet_start.filter_startup_lines(_bytes(mixed)) == _bytes(REAL_LINES)


def test_cuinit_failure_is_kept_where_there_may_be_a_gpu():
    # A driver was found (no "Could not find cuda drivers") and the error is
    # not "no device": a broken GPU set-up, not a CPU-only machine.
    line = (
        "E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: "
        "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: system has unsupported display driver"
    )
    assert quiet_start.filter_startup_lines(_bytes([line])) == _bytes([line])
    no_device = (
        "E external/local_xla/xla/stream_executor/cuda/cuda_driver.cc:274] failed "
        "call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected"
    )
    assert quiet_start.filter_startup_lines(_bytes([no_device])) == b""


def test_guarded_import_reemits_real_errors(tmp_path, monkeypatch, capfd):
    """What a module writes to file descriptor 2 on import, but the harmless."""
    module = tmp_path / "noisy_startup_module.py"
    module.write_text(
        "import os, sys\n"
        f"os.write(2, {_bytes(HARMLESS_LINES[:3] + REAL_LINES[:1])!r})\n"
        "sys.stderr.write('a Python warning\\n')\n"
        f"os.write(2, {_bytes(HARMLESS_LINES[3:])!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    capfd.readouterr()
    assert quiet_start.guarded_import("noisy_startup_module").__name__ == (
        "noisy_startup_module"
    )
    err = capfd.readouterr().err
    # (Under capfd, sys.stderr does not write to file descriptor 2.)
    assert REAL_LINES[0] + "\n" in err and "a Python warning\n" in err
    for fragment in FRAGMENTS:
        assert fragment not in err


def test_filtered_stderr_writes_back_on_an_exception(capfd):
    with pytest.raises(RuntimeError), quiet_start.filtered_stderr():
        os.write(2, _bytes(HARMLESS_LINES[:1] + REAL_LINES[1:]))
        raise RuntimeError("import failed")
    assert capfd.readouterr().err == _bytes(REAL_LINES[1:]).decode()


@pytest.mark.parametrize(
    "environ",
    [
        {"KERAS_UNETPP_VERBOSE_STARTUP": "1"},
        {"TF_CPP_MIN_LOG_LEVEL": "0"},
        {"TF_CPP_MIN_LOG_LEVEL": "2"},
        {"KERAS_BACKEND": "jax"},
    ],
)
def test_the_user_can_ask_for_everything(environ):
    before = dict(environ)
    assert quiet_start.quiet_start(environ) is False
    assert environ == before


def test_wanted_by_default():
    assert quiet_start._wanted({})
    assert quiet_start._wanted({"KERAS_UNETPP_VERBOSE_STARTUP": "0"})
    assert quiet_start._wanted({"KERAS_BACKEND": "tensorflow"})


@pytest.mark.parametrize(
    "argv, orig_argv, expected",
    [
        (["-m", "synthetic"], ["python", "-m", "keras_unetpp", "synthetic"], True),
        (["/venv/bin/keras-unetpp", "train"], ["python", "/venv/bin/x"], True),
        (["keras-unetpp.exe"], ["python"], True),
        (["-m"], ["python", "-m", "keras_unetpp.export"], False),
        (["/venv/bin/pytest"], ["python", "/venv/bin/pytest"], False),
        (["-c"], ["python", "-c", "import keras_unetpp"], False),
        ([], [], False),
    ],
)
def test_launched_as_cli(argv, orig_argv, expected):
    assert quiet_start.launched_as_cli(argv, orig_argv) is expected


@pytest.mark.parametrize("entry", ["python -m", "console script"])
def test_the_command_starts_quietly(entry, tmp_path):
    if entry == "python -m":
        command = [sys.executable, "-m", "keras_unetpp"]
    else:
        # As the console script's wrapper does; then one TensorFlow op, after
        # which a CPU-only machine has said `failed call to cuInit` unless
        # the quiet start looked for GPUs inside its guard.
        command = [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'keras-unetpp'; "
            "from keras_unetpp.cli import main; import tensorflow as tf; "
            "tf.constant(1.0) + 1; sys.exit(main())",
        ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_UNETPP_VERBOSE_STARTUP")
    }
    completed = subprocess.run(
        [*command, "synthetic", str(tmp_path / "data"), "--num-images", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Wrote 4 SYNTHETIC" in completed.stdout
    for fragment in FRAGMENTS:
        assert fragment not in completed.stderr, completed.stderr[-2000:]
