"""Running an exported file with its own runtime: TFLite, ONNX, SavedModel.

`load_runner(path)` returns a function `images -> {"probabilities",
"mask"}` (NumPy in, NumPy out) for a `.tflite` file (LiteRT's interpreter,
`ai_edge_litert`, or TensorFlow's `tf.lite.Interpreter` where LiteRT is not
installed), a `.onnx` file (onnxruntime, CPU) or a SavedModel version folder
(`serving_default`). The tests and `benchmarks/runtime_benchmark.py` compare
every exported file with the Keras model through it.
"""

import pathlib

import numpy as np

from keras_unetpp.errors import InputError
from keras_unetpp.export import signatures


def load_runner(path, threads=None):
    """A NumPy function running one exported model with its own runtime.

    Args:
        path: a `.tflite` or `.onnx` file, or a SavedModel folder.
        threads: int, the runtime's CPU threads. Defaults to `None`, the
            runtime's own choice.

    Returns:
        `run(images)`: `images` an array `(batch, height, width, channels)`
        of the input dtype; returns a dict of NumPy arrays
        `{"probabilities": ..., "mask": ...}`. A TFLite model, whose input
        has batch 1, is run once per image.

    Example:

    ```python
    run = load_runner("exported/unetpp_l2/1/model_int8.tflite")
    masks = run(images)["mask"]
    ```
    """
    path = pathlib.Path(path)
    if path.suffix == ".tflite":
        return _tflite_runner(path, threads)
    if path.suffix == ".onnx":
        return _onnx_runner(path, threads)
    if (path / "saved_model.pb").is_file():
        return _saved_model_runner(path)
    raise InputError(
        "Expected a .tflite file, an .onnx file or a SavedModel folder. "
        f"Received: path={str(path)!r}"
    )


def _tflite_interpreter(path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow's own copy.
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path), num_threads=threads)


def _tflite_runner(path, threads):
    interpreter = _tflite_interpreter(path, threads)
    runner = interpreter.get_signature_runner("serving_default")

    def run(images):
        outputs = [
            runner(**{signatures.INPUT_NAME: np.asarray(image)[None]})
            for image in images
        ]
        return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}

    return run


def _onnx_runner(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]

    def run(images):
        values = session.run(names, {signatures.INPUT_NAME: np.asarray(images)})
        return dict(zip(names, values))

    return run


def _saved_model_runner(path):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def run(images):
        outputs = serve(**{signatures.INPUT_NAME: tf.constant(images)})
        return {key: value.numpy() for key, value in outputs.items()}

    return run
