"""Tests of export/client.py: requests built from the exported signature.

The REST and gRPC clients are tested against small in-process servers that
answer TF Serving's documented REST and gRPC protocols from the exported
SavedModels themselves (the signature metadata is read from saved_model.pb,
predictions come from `signatures["serving_default"]`), and, when the
`tensorflow_model_server` binary is on PATH, against the real server.
"""

import contextlib
import http.server
import json
import pathlib
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from module_files import load_module
from tensorflow.core.protobuf import saved_model_pb2

import keras_unetpp as ku
from keras_unetpp.export import export_pruned

CLIENT = pathlib.Path(__file__).resolve().parents[1] / "export" / "client.py"


@pytest.fixture(scope="module")
def client_lib():
    return load_module(CLIENT, "unetpp_serving_client")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Levels 1 and 2 of a small model exported with uint8 input."""
    keras.utils.set_random_seed(4)
    model = ku.build(depth=2, filters=(4, 8, 16), deep_supervision=True)
    export_dir = tmp_path_factory.mktemp("served")
    paths = export_pruned(model, export_dir, model_name="cells", input_dtype="uint8")
    models = {}
    for level, path in paths.items():
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
        loaded = tf.saved_model.load(str(path))
        models[f"cells_l{level}"] = {
            "loaded": loaded,  # Keeps the variables alive.
            "signature": loaded.signatures["serving_default"],
            "signature_defs": saved.meta_graphs[0].signature_def,
        }
    return {"model": model, "export_dir": export_dir, "models": models}


def _pixels(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, height, width, 1), dtype=np.uint8)


def _reference(model, level, pixels):
    images = pixels.astype("float32") / 255
    padded, (height, width) = ku.pad_to_multiple(images, 2**level)
    return np.asarray(ku.prune(model, level)(padded, training=False))[
        :, :height, :width
    ]


def _direct(served, name, pixels):
    outputs = served["models"][name]["signature"](image=tf.constant(pixels))
    return {key: value.numpy() for key, value in outputs.items()}


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API: /v1/models/<name>[/versions/<v>](/metadata|:predict)."""

    models = {}
    route = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata|:predict)$")

    def log_message(self, *args):
        pass  # Keep the test output clean.

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _model(self):
        match = self.route.match(self.path)
        if not match or match.group(1) not in self.models:
            self._answer(404, {"error": f"Servable not found for request: {self.path}"})
            return None, None
        return self.models[match.group(1)], match.group(3)

    def do_GET(self):
        model, verb = self._model()
        if model is None:
            return
        signature_defs = {
            key: json_format.MessageToDict(value, preserving_proto_field_name=True)
            for key, value in model["signature_defs"].items()
        }
        self._answer(
            200,
            {
                "model_spec": {"name": self.path.split("/")[3], "signature_name": ""},
                "metadata": {"signature_def": {"signature_def": signature_defs}},
            },
        )

    def do_POST(self):
        model, verb = self._model()
        if model is None:
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        signature = model["signature"]
        specs = signature.structured_input_signature[1]
        inputs = {
            name: tf.constant(np.asarray(value, dtype=specs[name].dtype.as_numpy_dtype))
            for name, value in body["inputs"].items()
        }
        try:
            outputs = signature(**inputs)
        except tf.errors.InvalidArgumentError as error:
            # TF Serving answers a failed run with HTTP 400 and its message.
            self._answer(400, {"error": error.message})
            return
        outputs = {key: value.numpy().tolist() for key, value in outputs.items()}
        self._answer(200, {"outputs": outputs})


@contextlib.contextmanager
def _rest_server(models):
    handler = type("Handler", (_RestHandler,), {"models": models})
    server = http.server.ThreadingHTTPServer(("localhost", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_rest_client_builds_requests_from_the_signature(served, client_lib):
    with _rest_server(served["models"]) as address:
        client = client_lib.RestClient(address, "cells_l2")
        signature = client.signature()
        assert signature.input_name == "image"
        assert signature.inputs["image"].dtype == np.uint8
        # Unknown rank: the served graph checks rank and channels itself.
        assert signature.inputs["image"].shape == ()
        assert signature.outputs["probabilities"].shape == (-1, -1, -1, 1)
        assert {k: v.dtype for k, v in signature.outputs.items()} == {
            "probabilities": np.float32,
            "mask": np.uint8,
        }
        pixels = _pixels(2, 45, 38)
        body = client.build_request(pixels)
        assert body == {
            "signature_name": "serving_default",
            "inputs": {"image": pixels.tolist()},
        }
        outputs = client.predict(pixels)
        direct = _direct(served, "cells_l2", pixels)
        assert sorted(outputs) == ["mask", "probabilities"]
        for key in outputs:
            assert outputs[key].dtype == direct[key].dtype
            np.testing.assert_array_equal(outputs[key], direct[key])
        expected = _reference(served["model"], 2, pixels)
        assert np.abs(outputs["probabilities"] - expected).max() <= 1e-5
        # One image without batch and channel axes is sent as a batch of one.
        single = client.predict(pixels[0, ..., 0])
        np.testing.assert_array_equal(single["mask"], direct["mask"][:1])


def test_rest_client_errors(served, client_lib):
    with _rest_server(served["models"]) as address:
        with pytest.raises(RuntimeError, match="HTTP 404.*Servable not found"):
            client_lib.RestClient(address, "cells_l9").signature()
        client = client_lib.RestClient(address, "cells_l1")
        with pytest.raises(ValueError, match="takes uint8 pixels.*dtype=float32"):
            client.predict(np.zeros((1, 8, 8, 1), np.float32))
        # The channel count is checked by the served graph, which names it.
        with pytest.raises(
            RuntimeError,
            match=(
                r"(?s)HTTP 400.*image must be \(batch, height, width, 1\): received "
                r"rank 4 / 3 channels"
            ),
        ):
            client.predict(np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(ValueError, match=r"Received: shape=\(1, 1, 8, 8, 1\)"):
            client.predict(np.zeros((1, 1, 8, 8, 1), np.uint8))
        with pytest.raises(ValueError, match=r"must fit uint8.*range=\(0, 300\)"):
            client.predict(np.array([[0, 300]], np.int32))


def test_client_command_line(served, client_lib, tmp_path):
    pixels = _pixels(1, 29, 31, seed=1)
    np.save(tmp_path / "image.npy", pixels[0])
    with _rest_server(served["models"]) as address:
        client_lib.main(
            [
                "--model",
                "cells_l1",
                "--rest",
                address,
                str(tmp_path / "image.npy"),
                "--output",
                str(tmp_path / "mask.npy"),
            ]
        )
    mask = np.load(tmp_path / "mask.npy")
    expected = _direct(served, "cells_l1", pixels)["mask"][0, ..., 0]
    np.testing.assert_array_equal(mask, expected)


@contextlib.contextmanager
def _grpc_server(models):
    grpc = pytest.importorskip("grpc")
    pytest.importorskip(
        "tensorflow_serving.apis",
        reason="tensorflow-serving-api is not installed (pip install "
        "'keras-unetpp[serving]'); the gRPC client needs it",
    )
    from concurrent import futures

    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def GetModelMetadata(self, request, context):
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.CopyFrom(request.model_spec)
            signature_defs = get_model_metadata_pb2.SignatureDefMap()
            for key, value in models[request.model_spec.name]["signature_defs"].items():
                signature_defs.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(signature_defs)
            return response

        def Predict(self, request, context):
            signature = models[request.model_spec.name]["signature"]
            outputs = signature(
                **{
                    name: tf.constant(tf.make_ndarray(proto))
                    for name, proto in request.inputs.items()
                }
            )
            response = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        Servicer(), server
    )
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(None)


def test_grpc_client_builds_requests_from_the_signature(served, client_lib):
    with _grpc_server(served["models"]) as address:
        client = client_lib.GrpcClient(address, "cells_l2")
        try:
            pixels = _pixels(2, 37, 52, seed=2)
            request = client.build_request(pixels)
            assert request.model_spec.signature_name == "serving_default"
            assert list(request.inputs) == ["image"]
            assert request.inputs["image"].dtype == tf.uint8.as_datatype_enum
            sent = tf.make_ndarray(request.inputs["image"])
            np.testing.assert_array_equal(sent, pixels)
            outputs = client.predict(pixels)
        finally:
            client.close()
    direct = _direct(served, "cells_l2", pixels)
    for key in ("probabilities", "mask"):
        assert outputs[key].dtype == direct[key].dtype
        np.testing.assert_array_equal(outputs[key], direct[key])


def test_live_tensorflow_model_server(served, client_lib, tmp_path):
    """The real server: every level over REST and gRPC, against Keras."""
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip(
            "tensorflow_model_server is not on PATH (it is not pip-installable; "
            "install TF Serving or run this test inside the tensorflow/serving "
            "image); the clients were tested against in-process servers above"
        )
    grpc_port, rest_port = _free_port(), _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [
            binary,
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file={served['export_dir'] / 'models.config'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        names = sorted(served["models"])
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                states = [
                    json.loads(
                        urllib.request.urlopen(
                            f"http://localhost:{rest_port}/v1/models/{name}", timeout=5
                        ).read()
                    )["model_version_status"][0]["state"]
                    for name in names
                ]
            except (OSError, ValueError, KeyError):
                states = []
            if states == ["AVAILABLE"] * len(names):
                break
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        pixels = _pixels(1, 565, 584, seed=3)
        for name in names:
            level = int(name.rsplit("_l", 1)[1])
            expected = _reference(served["model"], level, pixels)
            rest = client_lib.RestClient(f"localhost:{rest_port}", name).predict(pixels)
            assert np.abs(rest["probabilities"] - expected).max() <= 1e-5
            grpc_client = client_lib.GrpcClient(f"localhost:{grpc_port}", name)
            try:
                remote = grpc_client.predict(pixels)
            finally:
                grpc_client.close()
            assert np.abs(remote["probabilities"] - expected).max() <= 1e-5
            np.testing.assert_array_equal(remote["mask"], rest["mask"])
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _readme_blocks(language):
    readme = (CLIENT.parent / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", readme, flags=re.S)


def test_readme_rest_example_matches_the_signature(served):
    """The curl body of export/README.md is a valid request for a uint8 export."""
    (curl,) = [block for block in _readme_blocks("bash") if ":predict" in block]
    body = json.loads(re.search(r"-d '(.*)'", curl, flags=re.S).group(1))
    with _rest_server(served["models"]) as address:
        request = urllib.request.Request(
            f"http://{address}/v1/models/cells_l2:predict",
            data=json.dumps(body).encode(),
        )
        outputs = json.loads(urllib.request.urlopen(request).read())["outputs"]
    pixels = np.asarray(body["inputs"]["image"], np.uint8)
    assert pixels.shape == (1, 2, 3, 1)
    direct = _direct(served, "cells_l2", pixels)
    np.testing.assert_array_equal(np.asarray(outputs["mask"]), direct["mask"])


def test_readme_grpc_example_runs(served):
    """The gRPC snippet of export/README.md, pointed at the in-process server."""
    (snippet,) = [b for b in _readme_blocks("python") if "PredictRequest" in b]
    with _grpc_server(served["models"]) as address:
        namespace = {}
        exec(
            snippet.replace("localhost:8500", address).replace(
                '"unetpp_l2"', '"cells_l2"'
            ),
            namespace,
        )
    assert namespace["mask"].shape == (1, 565, 584, 1)
    assert namespace["mask"].dtype == np.uint8
