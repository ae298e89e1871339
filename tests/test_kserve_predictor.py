"""Live test of export/kserve_predictor.py: a real KServe ModelServer.

The predictor runs in a subprocess on 127.0.0.1 and a free port, serving
every level (and the accurate mode) of a small exported model; each gets
bounded requests in KServe's V1 row format and through `export/client.py`
(TF Serving's metadata and columnar predict calls), compared with the Keras
model. Every wait has a deadline; the server is stopped in any case.
"""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from fake_run import tiny_model
from module_files import load_module

import keras_unetpp as ku
from keras_unetpp.export import export_pruned

pytest.importorskip("kserve")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREDICTOR = ROOT / "export" / "kserve_predictor.py"
CLIENT = ROOT / "export" / "client.py"
START_TIMEOUT = 180.0
REQUEST_TIMEOUT = 60.0


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
        return json.loads(response.read())


def _post(url, body):
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def _predictor(export_dir, names, log):
    port = _free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(PREDICTOR), str(export_dir), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = set(names)
        while waiting:
            assert process.poll() is None, pathlib.Path(log).read_text()[-3000:]
            assert time.monotonic() < deadline, "KServe did not start in time"
            name = next(iter(waiting))
            try:
                if _get(f"http://127.0.0.1:{port}/v1/models/{name}")["ready"]:
                    waiting.discard(name)
                    continue
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _reference(model, key, images):
    """Keras on `images` / 255 padded to the stride, cropped back."""
    if key == "accurate":
        network, stride = ku.inference_model(model, "accurate"), 4
    else:
        network, stride = ku.prune(model, key), 2**key
    padded, (height, width) = ku.pad_to_multiple(images / 255.0, stride)
    return np.asarray(network(padded, training=False))[:, :height, :width]


@pytest.mark.slow
def test_kserve_serves_every_level_like_keras(tmp_path):
    client_lib = load_module(CLIENT, "unetpp_serving_client")
    model = tiny_model(depth=2, seed=9)
    export_dir = tmp_path / "exported"
    paths = export_pruned(
        model, export_dir, model_name="cells", input_dtype="uint8", accurate=True
    )
    names = {
        key: f"cells_{'accurate' if key == 'accurate' else f'l{key}'}" for key in paths
    }
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (2, 21, 30, 1)).astype(np.uint8)
    with _predictor(export_dir, names.values(), tmp_path / "kserve.log") as port:
        for key, name in names.items():
            expected = _reference(model, key, images)
            url = f"http://127.0.0.1:{port}/v1/models/{name}"
            rows = _post(f"{url}:predict", {"instances": images.tolist()})
            assert len(rows["predictions"]) == 2
            probabilities = np.array(
                [row["probabilities"] for row in rows["predictions"]], np.float32
            )
            mask = np.array([row["mask"] for row in rows["predictions"]])
            assert probabilities.shape == (2, 21, 30, 1)
            assert np.abs(probabilities - expected).max() <= 1e-5, name
            np.testing.assert_array_equal(mask, expected >= 0.5)
            client = client_lib.RestClient(
                f"127.0.0.1:{port}", name, timeout=REQUEST_TIMEOUT
            )
            assert client.signature().input_name == "image"
            outputs = client.predict(images)
            assert outputs["mask"].dtype == np.uint8
            assert np.abs(outputs["probabilities"] - expected).max() <= 1e-5
            np.testing.assert_array_equal(outputs["mask"], expected >= 0.5)
        # The graph's own check, as TF Serving reports it: HTTP 400.
        with pytest.raises(RuntimeError, match=r"HTTP 400.*image must be \(batch"):
            client.predict(np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(urllib.error.HTTPError) as error:
            _post(f"http://127.0.0.1:{port}/v1/models/cells_l1:predict", {"x": 1})
        assert error.value.code == 400
        with pytest.raises(urllib.error.HTTPError) as error:
            _get(f"http://127.0.0.1:{port}/v1/models/nothing/metadata")
        assert error.value.code == 404
