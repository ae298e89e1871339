"""The backend matrix: the core under JAX and PyTorch, weights back to TF.

Keras fixes its backend per process, so tests/backend_checks.py runs under
KERAS_BACKEND=jax and KERAS_BACKEND=torch in two processes of its own (at
the same time). Each run trains a tiny UNet++ and saves it; the tests here
then rebuild the model under TensorFlow, load the weights (and the `.keras`
file), check that the predictions are the ones the other backend made, and
export the result as a SavedModel, which stays a TensorFlow-only step.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_unetpp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="launches the other backends and reloads their weights in TF",
    ),
]

TESTS = pathlib.Path(__file__).resolve().parent
BACKENDS = ("jax", "torch")
TIMEOUT_S = 300
# XLA's CPU compiler at its fastest setting: the checks compile many small
# one-off programs, and this cuts the JAX run from ~30 s to ~6 s of CPU.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def backend_runs(tmp_path_factory):
    """Runs backend_checks.py under each backend; returns {backend: run}."""
    runs = {}
    for backend in BACKENDS:
        folder = tmp_path_factory.mktemp(f"artifacts_{backend}")
        env = dict(
            os.environ,
            KERAS_BACKEND=backend,
            KERAS_UNETPP_ARTIFACTS=str(folder),
            TF_CPP_MIN_LOG_LEVEL="2",
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=FAST_XLA,
        )
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            str(TESTS / "backend_checks.py"),
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            cwd=TESTS.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runs[backend] = {"process": process, "folder": folder}
    deadline = time.monotonic() + TIMEOUT_S
    for backend, run in runs.items():
        try:
            remaining = max(1.0, deadline - time.monotonic())
            run["log"] = run["process"].communicate(timeout=remaining)[0]
        except subprocess.TimeoutExpired:
            for other in runs.values():
                other["process"].kill()
                other["process"].communicate()
            pytest.fail(f"backend_checks.py under {backend} ran over {TIMEOUT_S} s")
        run["returncode"] = run["process"].returncode
    return runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_core_checks_pass(backend_runs, backend):
    run = backend_runs[backend]
    assert run["returncode"] == 0, run["log"][-8000:]
    summary = run["log"].strip().splitlines()[-1]
    assert "8 passed" in summary and "skipped" not in summary, summary


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_from_backend_rebuild_and_export_in_tensorflow(
    backend_runs, backend, tmp_path
):
    import tensorflow as tf

    run = backend_runs[backend]
    assert run["returncode"] == 0, run["log"][-8000:]
    folder = run["folder"]
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("backend") == backend
    images = np.load(folder / "images.npy")
    with np.load(folder / "predictions.npz") as saved:
        expected = {name: saved[name] for name in saved.files}

    # The documented path: rebuild with the same arguments, load the weights.
    rebuilt = keras_unetpp.build(**config)
    rebuilt.load_weights(folder / "model.weights.h5")
    got = rebuilt.predict(images, verbose=0)
    assert sorted(got) == sorted(expected) == ["output_l1", "output_l2"]
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5)
    # The trained model's BCE-Dice loss is far from that of fresh weights.
    fresh = keras_unetpp.build(**config).predict(images, verbose=0)["output_l2"]
    assert np.abs(fresh - expected["output_l2"]).max() > 0.05

    # The whole .keras file (graph, weights, optimizer) loads as well.
    loaded = keras.saving.load_model(folder / "model.keras")
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0)["output_l2"], expected["output_l2"], atol=1e-5
    )

    # SavedModel export happens here, under TensorFlow.
    export_dir = tmp_path / "saved_model"
    keras_unetpp.prune(rebuilt, 2).export(str(export_dir), verbose=False)
    reloaded = tf.saved_model.load(str(export_dir))
    served = reloaded.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, expected["output_l2"], atol=1e-5)
