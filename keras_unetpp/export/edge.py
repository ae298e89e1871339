"""TFLite and ONNX files of one exported level, next to its SavedModel.

`export_pruned(..., formats=("savedmodel", "tflite", "onnx"))` calls
`write_edge_files` for every level inside the same transaction as the
SavedModels, so the edge files land in the level's version folder
(`<model_name>_l<L>/<version>/`) at the same atomic rename, and a failed
export leaves none of them behind. TF Serving ignores them.

Files of one version folder:

- `model_float32.tflite`: float32 weights and compute.
- `model_dynamic_range.tflite`: weights stored as int8, dequantized or used
  by hybrid kernels at run time; activations float32.
- `model_int8.tflite`: full-integer quantization (weights and activations
  int8, calibrated on representative images); the input and outputs keep
  the SavedModel's dtypes, the converter adds the (de)quantization at the
  graph's ends.
- `model.onnx`: float32, ONNX opset `ONNX_OPSET`, converted by tf2onnx.

Each has one input `image` of the export's `input_dtype` and the outputs
`probabilities` (float32) and `mask`, as the SavedModel's `serving_default`;
the pixel scaling and the threshold are in the graph. What differs:

- The TFLite files take a fixed `(1, height, width, channels)` input
  (`spatial_size: "fixed"`): full-integer calibration and most edge
  delegates need static shapes. ONNX takes any batch, and any height and
  width for a native-scale (crop-mode) model (`spatial_size: "dynamic"`,
  padded to the stride and cropped back in the graph).
- A model trained on resized images takes the training size only
  (`spatial_size: "fixed"` in every format): the antialiased resize of the
  SavedModel (`ScaleAndTranslate`) has no TFLite or ONNX kernel, so the
  client resizes (`SizePolicy.to_model_input` is the code to copy) and
  resizes the probabilities back.
- No rank or channel check in the graph (the runtimes check the shape).
"""

import pathlib
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_unetpp.errors import InputError
from keras_unetpp.export import signatures
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.validation import is_int

SAVEDMODEL = "savedmodel"
TFLITE = "tflite"
ONNX = "onnx"
FORMATS = (SAVEDMODEL, TFLITE, ONNX)

# TFLite variant -> file name.
TFLITE_FILES = {
    "float32": "model_float32.tflite",
    "dynamic_range": "model_dynamic_range.tflite",
    "int8": "model_int8.tflite",
}
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
DEFAULT_CALIBRATION_IMAGES = 32


def check_formats(formats):
    """The formats to export, as a tuple in `FORMATS` order.

    Args:
        formats: a str (`"tflite"`, or several joined by commas,
            `"savedmodel,tflite,onnx"`) or an iterable of them.

    Returns:
        tuple of str.
    """
    received = formats
    if isinstance(formats, str):
        formats = formats.split(",")
    try:
        names = [str(name).strip().lower() for name in formats]
    except TypeError:
        names = None
    if not names or any(name not in FORMATS for name in names):
        raise InputError(
            f"`formats` must name one or more of {FORMATS} (a list, or a "
            "comma-separated string such as 'savedmodel,tflite'). "
            f"Received: formats={received!r}"
        )
    return tuple(name for name in FORMATS if name in names)


def check_input_size(input_size):
    """`(height, width)` of positive ints, or `None`."""
    if input_size is None:
        return None
    try:
        size = tuple(input_size)
    except TypeError:
        size = ()
    if len(size) != 2 or not all(is_int(n) and n > 0 for n in size):
        raise InputError(
            "`input_size` must be (height, width), two positive ints. "
            f"Received: input_size={input_size!r}"
        )
    return tuple(int(n) for n in size)


def edge_input_size(size_policy, input_size):
    """The fixed `(height, width)` of the TFLite input.

    A resize-mode model takes its training size (any other `input_size` is
    refused); a native-scale model takes `input_size`, which it needs.
    """
    input_size = check_input_size(input_size)
    if size_policy.mode == "resize":
        if input_size is not None and input_size != tuple(size_policy.image_size):
            raise InputError(
                "This model was trained on images resized to "
                f"{tuple(size_policy.image_size)}; its TFLite and ONNX files take "
                "that size (the client resizes). Pass input_size=None. "
                f"Received: input_size={input_size}"
            )
        return tuple(size_policy.image_size)
    if input_size is None:
        raise InputError(
            "A native-scale model needs the fixed input size of its TFLite "
            "files: pass input_size=(height, width) (e.g. the training crop "
            "size). Received: input_size=None"
        )
    return input_size


def calibration_set(images, input_size, input_dtype, size_policy, count=None):
    """Representative images for int8 calibration, at the TFLite input size.

    Args:
        images: iterable of `(height, width, channels)` arrays in the
            `input_dtype` range (uint8 0..255, uint16 0..65535, float32
            [0, 1]), e.g. training images as `keras_unetpp.data` reads them.
        input_size: `(height, width)` of the TFLite input.
        input_dtype: the export's `input_dtype`.
        size_policy: the model's `SizePolicy`: resize mode resizes each
            image to `input_size` as training did (bilinear, antialiased);
            native mode takes the centre `input_size` window (edge-padded
            when the image is smaller), the scale training saw.
        count: int, use at most this many images. Defaults to `None`, all.

    Returns:
        `(n, height, width, channels)` array of `input_dtype`.
    """
    batch = []
    for image in images:
        if count is not None and len(batch) >= count:
            break
        image = np.asarray(image)
        if image.ndim != 3:
            raise InputError(
                "Calibration images must be (height, width, channels) arrays. "
                f"Received: shape={image.shape}"
            )
        batch.append(_fit(image, input_size, input_dtype, size_policy))
    if not batch:
        raise InputError(
            "int8 TFLite needs at least one calibration image. "
            "Received: calibration_images with no images"
        )
    return np.stack(batch)


def _fit(image, size, input_dtype, size_policy):
    height, width = size
    if size_policy.mode == "resize":
        divisor = signatures.INPUT_DTYPES[input_dtype] or 1.0
        x = tf.image.resize(
            np.asarray(image, np.float32) / divisor, size, "bilinear", antialias=True
        )
        x = np.clip(x.numpy(), 0.0, 1.0) * divisor
        if input_dtype != "float32":
            x = np.round(x)
        return x.astype(input_dtype)
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width].astype(input_dtype)


def edge_function(
    network, stride, input_dtype, pixel_scaling, threshold, output_activation
):
    """`image -> {"probabilities", "mask"}` without the SavedModel's checks.

    The pixel scaling, the padding to a multiple of `stride` (a no-op at a
    resize-mode model's training size) and the mask rule are those of
    `signatures.make_serving_fn`; the rank check (a TF `Assert`, which
    neither TFLite nor ONNX has) and the antialiased resize are left out.
    """
    policy = SizePolicy.native()
    num_classes = network.outputs[0].shape[-1]
    dtype = tf.as_dtype(signatures.mask_dtype(num_classes))

    def predict(image):
        x = signatures.normalize(image, input_dtype, pixel_scaling)
        outputs = policy.probabilities(network, x, stride, output_activation)
        if num_classes == 1:
            mask = tf.cast(outputs >= threshold, dtype)
        else:
            mask = tf.cast(tf.argmax(outputs, axis=-1)[..., None], dtype)
        return {signatures.PROBABILITIES: outputs, signatures.MASK: mask}

    return predict


def write_edge_files(
    network,
    folder,
    formats,
    stride,
    input_dtype,
    pixel_scaling,
    threshold,
    output_activation,
    size_policy,
    input_size,
    calibration=None,
):
    """Writes the TFLite and/or ONNX files of one level into `folder`.

    Args:
        network: the level's serving clone (single output, fused batch
            norm, float32).
        folder: the level's (staged) version folder.
        formats: tuple from `check_formats`; `"savedmodel"` is ignored here.
        stride: int, `2**level` (or the accurate mode's).
        input_dtype, pixel_scaling, threshold, output_activation: as for
            `make_serving_fn`.
        size_policy: the model's `SizePolicy`.
        input_size: `(height, width)` from `edge_input_size`.
        calibration: `(n, height, width, channels)` array of `input_dtype`
            for the int8 model (`calibration_set`); needed with `"tflite"`.

    Returns:
        dict: the `"edge"` section of the metadata (one entry per file).
    """
    folder = pathlib.Path(folder)
    predict = edge_function(
        network, stride, input_dtype, pixel_scaling, threshold, output_activation
    )
    channels = network.inputs[0].shape[-1]
    num_classes = network.outputs[0].shape[-1]
    files = {}
    if TFLITE in formats:
        shape = (1, *input_size, channels)
        converted = _tflite_models(predict, shape, input_dtype, calibration)
        for variant, name in TFLITE_FILES.items():
            (folder / name).write_bytes(converted[variant])
            files[name] = _file_entry(
                TFLITE,
                variant,
                list(shape),
                "fixed",
                input_dtype,
                num_classes,
                len(converted[variant]),
            )
    if ONNX in formats:
        dynamic = size_policy.mode == "native"
        spatial = [None, None] if dynamic else list(input_size)
        shape = [None, *spatial, channels]
        _write_onnx(predict, shape, input_dtype, folder / ONNX_FILE)
        files[ONNX_FILE] = _file_entry(
            ONNX,
            "float32",
            shape,
            "dynamic" if dynamic else "fixed",
            input_dtype,
            num_classes,
            (folder / ONNX_FILE).stat().st_size,
        )
    section = {"files": files}
    if TFLITE in formats:
        section["calibration_images"] = int(len(calibration))
    if ONNX in formats:
        section["onnx_opset"] = ONNX_OPSET
    return section


_QUANTIZATION = {
    "float32": "none: float32 weights and compute",
    "dynamic_range": (
        "dynamic range: weights stored as int8 (per channel), activations float32"
    ),
    "int8": (
        "full integer: int8 weights and activations, calibrated on the "
        "representative images; input and outputs keep the SavedModel's "
        "dtypes (quantize/dequantize inside), so probabilities come in steps "
        "of the output scale (about 1/256)"
    ),
}


def _file_entry(fmt, variant, shape, spatial, input_dtype, num_classes, size):
    entry = {
        "format": fmt,
        "quantization": _QUANTIZATION[variant],
        "variant": variant,
        "spatial_size": spatial,
        "input": {
            "name": signatures.INPUT_NAME,
            "dtype": input_dtype,
            "shape": shape,
        },
        "outputs": {
            signatures.PROBABILITIES: {"dtype": "float32"},
            signatures.MASK: {"dtype": signatures.mask_dtype(num_classes)},
        },
        "bytes": int(size),
    }
    if fmt == ONNX:
        entry["opset"] = ONNX_OPSET
    return entry


def _tflite_models(predict, shape, input_dtype, calibration):
    """`{variant: flatbuffer bytes}` for the three TFLite variants."""
    spec = tf.TensorSpec(shape, tf.as_dtype(input_dtype), name=signatures.INPUT_NAME)
    models = {}
    with tempfile.TemporaryDirectory(prefix="keras_unetpp_tflite_") as tmp:
        # A fixed-shape SavedModel first: the converter keeps its signature
        # and output names, and freezes the variables.
        archive = keras.export.ExportArchive()
        archive.add_endpoint("serving_default", predict, input_signature=[spec])
        archive.write_out(tmp, verbose=False)
        for variant in TFLITE_FILES:
            converter = tf.lite.TFLiteConverter.from_saved_model(
                tmp, signature_keys=["serving_default"]
            )
            if variant != "float32":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if variant == "int8":
                converter.representative_dataset = _representative(calibration)
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.TFLITE_BUILTINS_INT8
                ]
            models[variant] = converter.convert()
    return models


def _representative(calibration):
    def generate():
        for image in calibration:
            yield {signatures.INPUT_NAME: image[None]}

    return generate


def _write_onnx(predict, shape, input_dtype, path):
    import tf2onnx  # Optional dependency: the `edge` extra.

    spec = tf.TensorSpec(shape, tf.as_dtype(input_dtype), name=signatures.INPUT_NAME)
    function = tf.function(predict, input_signature=[spec], autograph=False)
    tf2onnx.convert.from_function(
        function, input_signature=[spec], opset=ONNX_OPSET, output_path=str(path)
    )
