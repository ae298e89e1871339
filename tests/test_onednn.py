"""The command's oneDNN choice: on where TensorFlow leaves it off, never forced."""

import os
import subprocess
import sys

import pytest

from keras_unetpp import onednn

REPORT = "oneDNN custom operations are on"


def test_enable_onednn_only_where_the_user_did_not_choose():
    env = {}
    assert onednn.enable_onednn(env, machine="x86_64", modules={})
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    user = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert not onednn.enable_onednn(user, machine="x86_64", modules={})
    assert user == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    other = {}
    assert not onednn.enable_onednn(other, machine="aarch64", modules={})
    assert other == {}
    # TensorFlow is imported in this test process: too late to change it.
    assert "tensorflow" in sys.modules
    assert not onednn.enable_onednn({}, machine="x86_64")


def _cli(env_changes):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    # TensorFlow's own start-up report shows: the quiet start is off.
    env.update({"KERAS_UNETPP_VERBOSE_STARTUP": "1", **env_changes})
    code = (
        "import sys; sys.argv = ['keras-unetpp', '--help'];"
        "import keras_unetpp, os;"
        "print('SETTING', os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(
    onednn.platform.machine().lower() not in ("x86_64", "amd64"),
    reason="oneDNN is turned on by the command on x86-64 only",
)
def test_the_command_turns_onednn_on_and_tensorflow_reports_it():
    # A process that looks like the console script (argv[0] 'keras-unetpp').
    result = _cli({})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SETTING 1" in result.stdout
    assert REPORT in result.stderr  # TensorFlow's own word
    # The user's choice stands, and TensorFlow runs without oneDNN.
    result = _cli({"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SETTING 0" in result.stdout
    assert REPORT not in result.stderr
