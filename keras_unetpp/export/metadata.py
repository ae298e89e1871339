"""The small JSON file written into every exported version folder.

It tells a person (or a deployment script) what the SavedModel next to it is
without loading it: which level of which model, its size and cost, what the
`image` input expects, what the outputs mean and how the model was trained.
TF Serving ignores it.
"""

import datetime
import json
import pathlib

import keras
import tensorflow as tf

from keras_unetpp.description import describe
from keras_unetpp.errors import InputError
from keras_unetpp.export import signatures
from keras_unetpp.flops import count_flops
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.version import __version__

METADATA_FILE = "keras_unetpp_metadata.json"
METADATA_FORMAT = "keras_unetpp.export/1"

# FLOPs are reported for one image of this size (a multiple of 2**6, the
# deepest supported network's stride); they grow linearly with the pixels.
FLOPS_SIZE = 256
# ... and for one volume of this size along each axis (3D models).
FLOPS_VOLUME_SIZE = 64


def build_metadata(
    model,
    level,
    model_name,
    version,
    source_model,
    input_dtype,
    threshold,
    compute_dtype,
    output_activation,
    training_info,
    pixel_scaling="dtype",
    jit_compile=False,
    size_policy=None,
    tiled=None,
    volume=None,
    tta=None,
):
    """The metadata dict of one exported level (or of the accurate mode).

    Args:
        model: the pruned single-output `keras.Model` that is exported, or
            the accurate mode (`inference_model(source_model)`).
        level: int, its level L (the stride is `2**L`), or `"accurate"`
            for the mean of every head (stride `2**depth`).
        model_name: str, the served model's base name (without `_l<L>`).
        version: int, the version folder's number.
        source_model: the full `keras.Model` it was pruned from.
        input_dtype: str, dtype of the `image` input.
        threshold: float, the mask threshold of one-class models.
        compute_dtype: str, dtype of the convolutions (`"float32"`,
            `"bfloat16"` or `"float16"`).
        output_activation: `"sigmoid"`, `"softmax"` or `None` (logits, to
            which the serving function applies the activation).
        training_info: JSON-serialisable dict describing the training run, or
            `None`.
        pixel_scaling: `"dtype"` or `"minmax"`, how the serving function
            maps pixels to the model's input. Defaults to `"dtype"`.
        jit_compile: bool, whether the serving function is marked for XLA.
            Defaults to `False`.
        size_policy: the `SizePolicy` of the serving function, or `None`
            for native. Defaults to `None`.
        tiled: the `TiledServing` of a tiled serving function, or `None`.
            Defaults to `None`.
        tta: the whole-image test-time augmentation of an untiled serving
            function (`None`, `"flips"`, `"flips+rot90"`); a tiled one's is
            `tiled.tta`. Recorded under `"tta"` either way. Defaults to
            `None`.
        volume: for a 3D model, `{"intensity": ..., "ct_window": ...}`, the
            in-graph volume normalization (see `export_pruned`); `None` for
            2D. Defaults to `None`.

    Returns:
        A JSON-serialisable dict.
    """
    policy = SizePolicy.native() if size_policy is None else size_policy
    accurate = level == "accurate"
    info = describe(model)
    stride = info.stride
    channels = info.channels
    num_classes = info.num_classes
    rank = info.rank
    if rank == 3:
        side = FLOPS_VOLUME_SIZE
        flops = count_flops(model, side, side, depth=side)
        flops_info = {"per_volume": flops, "depth": side, "height": side}
        flops_info.update(width=side, per_voxel=flops / side**3)
    else:
        flops = count_flops(model, FLOPS_SIZE, FLOPS_SIZE)
        flops_info = {"per_image": flops, "height": FLOPS_SIZE}
        flops_info.update(width=FLOPS_SIZE, per_pixel=flops / FLOPS_SIZE**2)
    layout = signatures.input_layout(rank)
    spatial = [None] * rank
    divisor = signatures.INPUT_DTYPES[input_dtype]
    intensity = (volume or {}).get("intensity")
    if intensity is not None:
        scaling = (
            f"cast to float32 as stored and normalized per volume in the graph "
            f"(intensity={intensity!r}"
            + (f", ct_window={list(volume['ct_window'])}" if intensity == "ct" else "")
            + "), as the volume pipeline did in training"
        )
    elif pixel_scaling == "minmax":
        scaling = "each image's own range mapped to [0, 1] (constant image: 0)"
    elif divisor is None:
        scaling = "used as is: float pixels in [0, 1], as in training"
    else:
        scaling = f"cast to float32 and divided by {divisor:g}"
    binary = num_classes == 1
    heads = list(describe(source_model).heads)
    if accurate:
        averaged = "logits" if output_activation is None else "probabilities"
        mode = {
            "name": "accurate",
            "heads": heads,
            "meaning": (
                f"the mean of the {averaged} of heads "
                f"L{heads[0]}..L{heads[-1]} (the paper's accurate mode, "
                "keras_unetpp.inference_model(model, 'accurate'))"
            ),
        }
    else:
        mode = {
            "name": "fast",
            "heads": [level],
            "meaning": f"the network pruned to level {level} (prune(model, {level}))",
        }
    if output_activation is None:
        activation = " (applied in the graph to the logits head)"
        if accurate:
            activation = " (applied in the graph to the mean of the logits)"
    else:
        activation = ""
    return {
        "format": METADATA_FORMAT,
        "model_name": (
            f"{model_name}_accurate" if accurate else f"{model_name}_l{level}"
        ),
        "base_model_name": model_name,
        "level": None if accurate else level,
        "mode": mode,
        "source_depth": describe(source_model).depth,
        "source_model": _source_info(source_model),
        "version": version,
        "parameters": int(model.count_params()),
        "flops": flops_info,
        "signature": "serving_default",
        "input": {
            "name": signatures.INPUT_NAME,
            "dtype": input_dtype,
            "shape": [None, *spatial, channels],
            "layout": (
                "NHWC (batch, height, width, channels); any height and width"
                if rank == 2
                else "NDHWC (batch, depth, height, width, channels); any depth, "
                "height and width, on the training voxel grid"
            ),
            "check": (
                "inside the graph: another rank or channel count fails with "
                f"'image must be ({layout}, {channels}): received "
                "rank R / C channels'"
            ),
        },
        "size_policy": policy.to_dict(),
        "tiling": None if tiled is None else tiled.to_dict(),
        "tta": tta if tiled is None else tiled.tta,
        "preprocessing": {
            "scaling": scaling,
            "pixel_scaling": pixel_scaling,
            "intensity": volume,
            "size": f"inside the graph: {policy.description(stride)}",
            "padding": (
                f"inside the graph: reflect-padded at the end of each axis to "
                f"a multiple of {stride} (edge padding when the image is "
                "smaller than the padding), predictions cropped back"
                if policy.mode == "native"
                else f"none: the training size is a multiple of {stride}"
            ),
            "stride": stride,
        },
        "outputs": {
            signatures.PROBABILITIES: {
                "dtype": "float32",
                "shape": [None, *spatial, num_classes],
                "meaning": (
                    "sigmoid probability of the foreground"
                    if binary
                    else "softmax probability of each class"
                )
                + activation
                + (
                    ", at the input's height and width"
                    if rank == 2
                    else ", at the input's depth, height and width"
                ),
            },
            signatures.MASK: {
                "dtype": signatures.mask_dtype(num_classes),
                "shape": [None, *spatial, 1],
                "meaning": (
                    f"1 where probabilities >= {threshold}, else 0"
                    if binary
                    else "index of the most probable class"
                ),
            },
        },
        "num_classes": num_classes,
        "threshold": threshold if binary else None,
        "head_activation": output_activation,
        "compute_dtype": compute_dtype,
        "jit_compile": jit_compile,
        "training": training_info,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "versions": {
            "keras_unetpp": __version__,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
    }


def _source_info(model):
    """Name, heads and optimizer steps of the model the levels come from."""
    info = {"name": model.name, "heads": list(describe(model).heads)}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        info["optimizer"] = optimizer.__class__.__name__
        info["optimizer_steps"] = int(optimizer.iterations.numpy())
    return info


def check_training_info(training_info):
    """Raises a `ValueError` unless `training_info` is `None` or a JSON dict."""
    if training_info is None:
        return None
    if not isinstance(training_info, dict):
        raise InputError(
            "`training_info` must be a dict (e.g. data set, epochs, loss) or "
            f"None. Received: training_info={training_info!r}"
        )
    try:
        json.dumps(training_info)
    except (TypeError, ValueError) as error:
        raise InputError(
            "`training_info` must be JSON-serialisable (str, numbers, lists, "
            f"dicts): {error}. Received: training_info={training_info!r}"
        ) from None
    return training_info


def write_metadata(folder, metadata):
    """Writes `metadata` as `keras_unetpp_metadata.json` into `folder`."""
    path = pathlib.Path(folder) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path


def load_metadata(version_dir):
    """Reads the metadata of an exported version folder.

    Args:
        version_dir: path of a version folder written by
            `keras_unetpp.export.export_pruned`, e.g. `"exported/unetpp_l2/1"`.

    Returns:
        The metadata dict (level, parameters, FLOPs, input spec,
        preprocessing, outputs, threshold, training information).

    Example:

    ```python
    info = load_metadata("exported/unetpp_l2/1")
    info["parameters"], info["flops"]["per_image"], info["input"]["dtype"]
    ```
    """
    path = pathlib.Path(version_dir) / METADATA_FILE
    if not path.is_file():
        raise InputError(
            f"No {METADATA_FILE} in this folder; it is not a version folder "
            f"written by keras_unetpp. Received: version_dir={str(version_dir)!r}"
        )
    return json.loads(path.read_text())
