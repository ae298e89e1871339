"""Serving the exported SavedModels with KServe's Python ModelServer.

An alternative to TensorFlow Serving where its binary is not at hand (a
plain Python environment, or a KServe `InferenceService` on Kubernetes with
a custom predictor image): every model folder of an export folder
(`<name>_l<L>/`, `<name>_accurate/`, the ones `models.config` lists) is
served under its folder name, at its highest complete version, through the
REST calls TF Serving answers:

- `POST /v1/models/<name>:predict` with `{"instances": [...]}` (one image
  per instance) -> `{"predictions": [{"probabilities": ..., "mask": ...},
  ...]}`, TF Serving's row format (KServe's V1 protocol), or with
  `{"inputs": {"image": [...]}}` -> `{"outputs": {"probabilities": ...,
  "mask": ...}}`, the columnar format `export/client.py` sends;
- `GET /v1/models/<name>/metadata` -> the `serving_default` SignatureDef in
  TF Serving's JSON form, from which `export/client.py` builds its
  requests;
- `GET /v1/models/<name>` -> `{"name": ..., "ready": true}` (KServe's own).

Errors of the served graph (a wrong rank or channel count) come back as
HTTP 400 with `{"error": "image must be (batch, height, width, 1): ..."}`.

    pip install "keras-unetpp[kserve]"   # see export/README.md for the pins
    python export/kserve_predictor.py exported --host 127.0.0.1 --port 8080

The predictor imports TensorFlow and KServe only, not keras_unetpp.
"""

import argparse
import json
import pathlib
import re
import sys

_VERSION = re.compile(r"^[0-9]+$")
SIGNATURE = "serving_default"


def served_versions(export_dir):
    """`{model name: highest complete version folder}` of an export folder.

    Args:
        export_dir: a folder written by `keras_unetpp.export.export_pruned`.

    Returns:
        dict mapping each model folder's name to the `pathlib.Path` of its
        highest numeric version folder holding a `saved_model.pb`
        (temporary folders of an export in progress are not numeric).
    """
    served = {}
    for model_dir in sorted(pathlib.Path(export_dir).iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        versions = [
            int(child.name)
            for child in model_dir.iterdir()
            if _VERSION.match(child.name) and (child / "saved_model.pb").is_file()
        ]
        if versions:
            served[model_dir.name] = model_dir / str(max(versions))
    return served


def _signature_def_json(version_dir):
    """The `serving_default` SignatureDef as TF Serving's metadata JSON has it."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((pathlib.Path(version_dir) / "saved_model.pb").read_bytes())
    signature_defs = saved.meta_graphs[0].signature_def
    return {
        name: json_format.MessageToDict(
            signature_defs[name], preserving_proto_field_name=True
        )
        for name in signature_defs
        if name == SIGNATURE
    }


def make_model(name, version_dir):
    """A `kserve.Model` serving the SavedModel of one version folder."""
    import kserve
    import numpy as np
    import tensorflow as tf
    from kserve.errors import InvalidInput

    class SavedModelPredictor(kserve.Model):
        """Runs `serving_default` of one SavedModel (TF Serving's REST formats)."""

        def __init__(self):
            super().__init__(name)
            self.version_dir = pathlib.Path(version_dir)
            self.version = int(self.version_dir.name)
            self.signature_defs = _signature_def_json(self.version_dir)
            self.load()

        def load(self):
            self._loaded = tf.saved_model.load(str(self.version_dir))
            self._serve = self._loaded.signatures[SIGNATURE]
            (self._input,) = self._serve.structured_input_signature[1]
            self._dtype = self._serve.structured_input_signature[1][self._input].dtype
            self.ready = True
            return self.ready

        def _run(self, images):
            try:
                batch = tf.constant(np.asarray(images), dtype=self._dtype)
                outputs = self._serve(**{self._input: batch})
            except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
                raise InvalidInput(_first_message(error)) from None
            return {key: value.numpy() for key, value in outputs.items()}

        def predict(self, payload, headers=None):
            if isinstance(payload, (bytes, str)):  # Sent without a JSON type.
                try:
                    payload = json.loads(payload)
                except ValueError:
                    raise InvalidInput("The request body is not JSON.") from None
            if not isinstance(payload, dict):
                raise InvalidInput(
                    'Expected a JSON object with "instances" or "inputs".'
                )
            if "instances" in payload:
                outputs = self._run(payload["instances"])
                names = sorted(outputs)
                return {
                    "predictions": [
                        {key: outputs[key][i].tolist() for key in names}
                        for i in range(len(outputs[names[0]]))
                    ]
                }
            if "inputs" in payload:
                inputs = payload["inputs"]
                if isinstance(inputs, dict):
                    if set(inputs) != {self._input}:
                        raise InvalidInput(
                            f'"inputs" must hold the one input {self._input!r}. '
                            f"Received: {sorted(inputs)}"
                        )
                    inputs = inputs[self._input]
                outputs = self._run(inputs)
                return {
                    "outputs": {key: value.tolist() for key, value in outputs.items()}
                }
            raise InvalidInput(
                'Expected "instances" (row format) or "inputs" (columnar). '
                f"Received: keys {sorted(payload)}"
            )

    return SavedModelPredictor()


def _first_message(error):
    """The line of a TensorFlow error that says what was wrong.

    A failed `Assert` of the served graph comes back as "Graph execution
    error: ... assertion failed: [image must be (batch, height, width, 1):
    received rank 3 ...]"; that sentence is what the client needs.
    """
    text = getattr(error, "message", None) or str(error)
    found = re.search(r"\[?(image must be [^\]\n]*)", text)
    if found:
        return found.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:500] or error.__class__.__name__


def _add_metadata_route(app, models):
    """`GET /v1/models/<name>/metadata`, TF Serving's answer, on KServe's app."""
    from fastapi.responses import JSONResponse

    async def metadata(model_name: str):
        model = models.get(model_name)
        if model is None:
            return JSONResponse(
                status_code=404,
                content={"error": f"Servable not found for model: {model_name}"},
            )
        return {
            "model_spec": {
                "name": model_name,
                "signature_name": "",
                "version": str(model.version),
            },
            "metadata": {"signature_def": {"signature_def": model.signature_defs}},
        }

    app.add_api_route("/v1/models/{model_name}/metadata", metadata, methods=["GET"])


def serve(export_dir, host="127.0.0.1", port=8080):
    """Serves every model folder of `export_dir` until SIGINT or SIGTERM.

    Args:
        export_dir: the export folder (the one holding `models.config`).
        host: the interface to listen on. Defaults to `"127.0.0.1"`
            (loopback; `"0.0.0.0"` in a container).
        port: the HTTP port. Defaults to `8080` (KServe's).
    """
    import kserve
    from kserve import model_server
    from kserve.protocol.rest import server as rest_server

    served = served_versions(export_dir)
    if not served:
        raise SystemExit(
            f"No SavedModel version folder under {export_dir}; export first "
            "(keras-unetpp export RUN --export-dir DIR)."
        )
    models = {name: make_model(name, path) for name, path in served.items()}
    _add_metadata_route(model_server.app, models)

    class RESTServer(rest_server.RESTServer):
        """KServe's REST server, on `host` (KServe itself binds 0.0.0.0)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    model_server.RESTServer = RESTServer
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1)
    for name, path in served.items():
        print(f"serving {name} from {path}", flush=True)
    server.start(list(models.values()))


def main(argv=None):
    """`python export/kserve_predictor.py EXPORT_DIR [--host H] [--port P]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="the export folder (holds models.config)")
    parser.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="(default: 8080)")
    args = parser.parse_args(argv)
    serve(args.export_dir, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
