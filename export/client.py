"""A small client for keras_unetpp models served by TensorFlow Serving.

Two transports, one interface: `RestClient` speaks JSON over plain HTTP
(standard library only) and `GrpcClient` speaks gRPC through
`tensorflow-serving-api`. Both first ask the server for the model's
`serving_default` signature and build every request from it: the input's
name and dtype (and its channel count, where the signature states one) come
from the signature, not from this file, and the outputs are decoded with
the dtypes the signature declares. keras_unetpp exports an `image` input of
unknown rank, checked inside the served graph: a request with the wrong
rank or channel count comes back as an error that names both, e.g.
"image must be (batch, height, width, 1): received rank 4 / 3 channels".

    client = RestClient("localhost:8501", "unetpp_l2")
    outputs = client.predict(images)   # uint8 or float (batch, h, w, c)
    outputs["probabilities"], outputs["mask"]

From the command line (an image file or a .npy array in, a mask out):

    python export/client.py --model unetpp_l2 --rest localhost:8501 \
        cells.png --output cells_mask.png
"""

import argparse
import dataclasses
import json
import pathlib
import urllib.error
import urllib.request

import numpy as np

SIGNATURE = "serving_default"

# TensorFlow's DataType enum names, as the signature reports them, and the
# NumPy dtypes requests and responses use.
_DTYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Dtype and shape (-1 for unknown sizes) of one signature tensor."""

    dtype: np.dtype
    shape: tuple


@dataclasses.dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a served signature, keyed by their names."""

    inputs: dict
    outputs: dict

    @property
    def input_name(self):
        """The name of the single image input (`"image"` for keras_unetpp)."""
        if len(self.inputs) != 1:
            raise ValueError(
                "This client sends one image tensor, but the signature has "
                f"inputs {sorted(self.inputs)}. Received: inputs={sorted(self.inputs)}"
            )
        return next(iter(self.inputs))

    def encode(self, images):
        """Checks and casts images to the input's dtype and rank.

        Args:
            images: array `(batch, height, width, channels)`, or one image
                `(height, width, channels)` or `(height, width)`.

        Returns:
            The batch as an array of the input's dtype.
        """
        spec = self.inputs[self.input_name]
        images = np.asarray(images)
        # A keras_unetpp signature has unknown rank (the served graph checks
        # the channels); another model's may state them.
        channels = spec.shape[-1] if spec.shape else -1
        if images.ndim == 2 and channels in (1, -1):
            images = images[..., None]
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or (channels != -1 and images.shape[-1] != channels):
            wanted = "channels" if channels == -1 else channels
            raise ValueError(
                f"Expected images (batch, height, width, {wanted}) or one "
                f"image (height, width, {wanted}). "
                f"Received: shape={images.shape}"
            )
        if np.issubdtype(spec.dtype, np.integer):
            if not np.issubdtype(images.dtype, np.integer):
                raise ValueError(
                    f"The model takes {np.dtype(spec.dtype).name} pixels; send "
                    "the raw integer image, not a float one (the server "
                    f"scales it). Received: dtype={images.dtype}"
                )
            info = np.iinfo(spec.dtype)
            if images.min() < info.min or images.max() > info.max:
                raise ValueError(
                    f"Pixel values must fit {np.dtype(spec.dtype).name}. "
                    f"Received: range=({images.min()}, {images.max()})"
                )
        return images.astype(spec.dtype, copy=False)


def signature_from_json(signature_def):
    """A `Signature` from a SignatureDef in protobuf JSON form (REST metadata)."""

    def tensors(infos):
        specs = {}
        for name, info in infos.items():
            dims = info.get("tensor_shape", {}).get("dim", [])
            specs[name] = TensorSpec(
                dtype=_numpy_dtype(info["dtype"]),
                shape=tuple(int(dim.get("size", -1)) for dim in dims),
            )
        return specs

    return Signature(
        inputs=tensors(signature_def["inputs"]),
        outputs=tensors(signature_def["outputs"]),
    )


def _numpy_dtype(name):
    if name not in _DTYPES:
        raise ValueError(
            f"Unsupported tensor dtype in the signature. Received: dtype={name!r}"
        )
    return _DTYPES[name]


class RestClient:
    """Client for TF Serving's REST API (JSON over HTTP, standard library).

    Args:
        address: `"host:port"` of the REST API (`--rest_api_port`).
            Defaults to `"localhost:8501"`.
        model_name: the served model, e.g. `"unetpp_l2"`. Defaults to
            `"unetpp_l4"`.
        version: int, a version to pin, or `None` for the one the server
            serves. Defaults to `None`.
        timeout: float, seconds per request. Defaults to `60.0`.

    Example:

    ```python
    client = RestClient("localhost:8501", "unetpp_l2")
    mask = client.predict(image)["mask"][0, ..., 0]
    ```
    """

    def __init__(
        self,
        address="localhost:8501",
        model_name="unetpp_l4",
        version=None,
        timeout=60.0,
    ):
        self.url = f"http://{address}/v1/models/{model_name}"
        if version is not None:
            self.url += f"/versions/{int(version)}"
        self.timeout = timeout
        self._signature = None

    def _request(self, url, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass  # Not TF Serving's {"error": ...} body: show it as is.
            raise RuntimeError(
                f"TF Serving answered HTTP {error.code} for {url}: {detail}"
            ) from None

    def signature(self):
        """The served `serving_default` signature (fetched once, then cached)."""
        if self._signature is None:
            metadata = self._request(f"{self.url}/metadata")
            signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
            self._signature = signature_from_json(signature_defs[SIGNATURE])
        return self._signature

    def build_request(self, images):
        """The JSON body of a predict request (columnar `inputs` format)."""
        signature = self.signature()
        batch = signature.encode(images)
        return {
            "signature_name": SIGNATURE,
            "inputs": {signature.input_name: batch.tolist()},
        }

    def predict(self, images):
        """Predicts a batch; returns `{"probabilities": ..., "mask": ...}`.

        Args:
            images: array `(batch, height, width, channels)` (or one image)
                of the dtype the signature takes.

        Returns:
            dict of NumPy arrays with the signature's output names and dtypes.
        """
        signature = self.signature()
        response = self._request(f"{self.url}:predict", self.build_request(images))
        outputs = response["outputs"]
        if not isinstance(outputs, dict):  # A one-output signature.
            outputs = {next(iter(signature.outputs)): outputs}
        return {
            name: np.asarray(outputs[name], dtype=spec.dtype)
            for name, spec in signature.outputs.items()
        }


class GrpcClient:
    """Client for TF Serving's gRPC API, through `tensorflow-serving-api`.

    Args:
        address: `"host:port"` of the gRPC API (`--port`). Defaults to
            `"localhost:8500"`.
        model_name: the served model, e.g. `"unetpp_l2"`. Defaults to
            `"unetpp_l4"`.
        version: int, a version to pin, or `None`. Defaults to `None`.
        timeout: float, seconds per request. Defaults to `60.0`.
        max_message_mb: int, the largest request or response in MiB
            (gRPC's default of 4 MiB is one 1000x1000 float image).
            Defaults to `256`.

    Example:

    ```python
    client = GrpcClient("localhost:8500", "unetpp_l2")
    probabilities = client.predict(images)["probabilities"]
    ```
    """

    def __init__(
        self,
        address="localhost:8500",
        model_name="unetpp_l4",
        version=None,
        timeout=60.0,
        max_message_mb=256,
    ):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        limit = max_message_mb * 1024 * 1024
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self._signature = None

    def close(self):
        """Closes the gRPC channel."""
        self._channel.close()

    def _model_spec(self, spec):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)

    def signature(self):
        """The served `serving_default` signature (fetched once, then cached)."""
        if self._signature is None:
            from google.protobuf import json_format
            from tensorflow_serving.apis import get_model_metadata_pb2

            request = get_model_metadata_pb2.GetModelMetadataRequest()
            self._model_spec(request.model_spec)
            request.metadata_field.append("signature_def")
            response = self._stub.GetModelMetadata(request, timeout=self.timeout)
            signature_defs = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_defs)
            self._signature = signature_from_json(
                json_format.MessageToDict(
                    signature_defs.signature_def[SIGNATURE],
                    preserving_proto_field_name=True,
                )
            )
        return self._signature

    def build_request(self, images):
        """The `PredictRequest` for a batch of images."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        signature = self.signature()
        batch = signature.encode(images)
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.model_spec.signature_name = SIGNATURE
        request.inputs[signature.input_name].CopyFrom(tf.make_tensor_proto(batch))
        return request

    def predict(self, images):
        """Predicts a batch; returns `{"probabilities": ..., "mask": ...}`."""
        import tensorflow as tf

        signature = self.signature()
        response = self._stub.Predict(self.build_request(images), timeout=self.timeout)
        return {
            name: tf.make_ndarray(response.outputs[name]).astype(spec.dtype)
            for name, spec in signature.outputs.items()
        }


def _read_image(path):
    path = pathlib.Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"Cannot read this image. Received: path={str(path)!r}")
    return image


def main(argv=None):
    """Sends one image to a served model and writes the mask it returns."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="image file (PNG, TIFF...) or .npy array")
    parser.add_argument("--model", default="unetpp_l4", help="served model name")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument(
        "--rest", metavar="HOST:PORT", help="REST API address (default localhost:8501)"
    )
    transport.add_argument("--grpc", metavar="HOST:PORT", help="gRPC API address")
    parser.add_argument(
        "--output", default="mask.png", help="mask file to write (.png or .npy)"
    )
    args = parser.parse_args(argv)
    if args.grpc:
        client = GrpcClient(args.grpc, args.model)
    else:
        client = RestClient(args.rest or "localhost:8501", args.model)
    image = _read_image(args.image)
    mask = client.predict(image)["mask"][0, ..., 0]
    if args.output.endswith(".npy"):
        np.save(args.output, mask)
    else:
        import cv2

        binary = client.signature().outputs["probabilities"].shape[-1] == 1
        cv2.imwrite(args.output, (mask * (255 if binary else 1)).astype(np.uint8))
    print(
        f"{args.output}: {mask.shape[0]}x{mask.shape[1]}, "
        f"{int((mask > 0).sum())} foreground pixels"
    )


if __name__ == "__main__":
    main()
