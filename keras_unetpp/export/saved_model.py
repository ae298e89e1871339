"""Exporting the pruned sub-models of a UNet++ as TF Serving SavedModels.

One SavedModel per level L goes to `export_dir/<model_name>_l<L>/<version>/`,
the layout TF Serving polls, with the level's metadata JSON inside the
version folder and a `models.config` listing every model folder. With
`accurate=True` the paper's accurate mode (the mean of heads 1..D) is a
model of its own, `export_dir/<model_name>_accurate/<version>/`, written in
the same transaction.

Safety. A server watching the folder must never load a half-written model,
and a failed export must not leave one behind. Every level is first written
to a hidden temporary sibling of its version folder (`.tmp-<version>-<id>`,
not numeric, so TF Serving ignores it); only when every level is complete
are they renamed into place, one atomic `os.rename` each, and the
`models.config` is replaced atomically last. If anything fails or is
interrupted on the way (an exception, Ctrl-C), the renamed levels are rolled
back, the temporary folders are deleted and any version that `overwrite=True`
replaced is put back, so the folder is as it was before.
"""

import dataclasses
import os
import pathlib
import shutil
import uuid

import keras

from keras_unetpp.description import describe
from keras_unetpp.errors import InputError
from keras_unetpp.export import (
    edge,
    serving_config,
    signatures,
    tiled_serving,
    volume_intensity,
)
from keras_unetpp.export import metadata as metadata_lib
from keras_unetpp.fused_batch_norm import fuse_batch_norm
from keras_unetpp.precision import cast_model, conv_compute_dtypes
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.tiling import TTAS
from keras_unetpp.validation import check_choice, check_threshold, is_int
from keras_unetpp.volumes.processing import check_ct_window

COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")
ACCURATE = "accurate"
# Tiles per network call of a tiled 3D serving function, unless `tiling`
# says otherwise: a 64**3 tile holds as many voxels as a 512**2 image.
VOLUME_TILE_BATCH = 2
# The keys of `export_pruned(tiling=...)`: `predict_tiled`'s arguments.
TILING_ARGUMENTS = (
    "tile_size",
    "overlap",
    "blending",
    "tta",
    "batch_size",
    "sigma_scale",
)


def export_pruned(
    model,
    export_dir,
    levels=None,
    version=None,
    model_name=None,
    input_dtype="float32",
    threshold=0.5,
    compute_dtype=None,
    overwrite=False,
    training_info=None,
    base_path=None,
    pixel_scaling="dtype",
    jit_compile=False,
    size_policy=None,
    accurate=False,
    tiling=None,
    formats=(edge.SAVEDMODEL,),
    input_size=None,
    calibration_images=None,
    intensity=None,
    ct_window=None,
    tta=None,
):
    """Exports each pruned level of a UNet++ as a SavedModel for TF Serving.

    For every level L in `levels` the sub-network `prune(model, L)` is
    written to `export_dir/<model_name>_l<L>/<version>/`, together with a
    metadata file `keras_unetpp_metadata.json` (level, parameters, FLOPs,
    input spec, preprocessing, threshold, training information), and
    `export_dir/models.config` is rewritten to list every model folder of
    `export_dir`. Start TF Serving with
    `--model_config_file=<export_dir>/models.config` to serve all levels at
    once and pick, per request, the depth that fits the latency budget.

    Each SavedModel has one signature, `serving_default`:

    - input `image`: `(batch, height, width, channels)` of `input_dtype`, any
      batch size, height and width (checked in the graph: another rank or
      channel count fails with a message naming both). The graph maps the
      pixels to [0, 1] as `keras_unetpp.data` does in training
      (`pixel_scaling="dtype"`: `uint8` divided by 255, `uint16` by 65535,
      float32 used as it is; `"minmax"`: each image's range mapped to
      [0, 1]) and applies `size_policy`: a native policy pads the images to
      a multiple of `2**L` and crops the predictions back; a resize policy
      resizes them to the training size and the probabilities back, as
      `keras-unetpp predict` does. A client never needs to know the
      network's stride, scale or training size.
    - output `probabilities`: float32 `(batch, height, width, classes)`.
    - output `mask`: `(batch, height, width, 1)`; `probabilities >=
      threshold` as uint8 for one-class models, the arg-max class otherwise.

    A 3D model (built with `input_shape=(None, None, None, C)`) is exported
    the same way, with a depth axis after the batch everywhere:
    `(batch, depth, height, width, channels)` in, probabilities and labels
    of the same size out, each axis padded to `2**L` in the graph (or
    tiled, `tiling={"tile_size": (d, h, w)}`). Its voxels are normalized
    in the graph as the volume pipeline normalized them in training
    (`intensity`); they must be on the training voxel grid (resampling
    to a spacing needs the file's header and stays with the client, see
    `keras_unetpp.volumes`). Volumes take the native size policy and the
    SavedModel format only.

    Batch normalization is served by TensorFlow's fused kernel, in a clone
    of each pruned model: `model` itself is left untouched.

    The export is atomic: a server watching `export_dir` sees either no new
    version or the complete set, and a failed or interrupted export leaves
    `export_dir` as it found it (see the module docstring).

    Args:
        model: a `keras.Model` from `keras_unetpp.build` (trained with
            `deep_supervision=True` to export levels below its depth).
        export_dir: str or `pathlib.Path`, the folder to export into; it is
            created if needed.
        levels: iterable of ints, the levels to export. Defaults to `None`,
            every head the model has.
        version: int >= 0, the version folder's number. Defaults to `None`,
            one more than the highest version of any level already in
            `export_dir` (1 for the first export), so TF Serving, which
            serves the highest version, picks the new set up.
        model_name: str, the served model name prefix; level L is served as
            `f"{model_name}_l{L}"`. Defaults to `None`, the model's name.
        input_dtype: `"float32"`, `"uint8"` or `"uint16"`, the dtype of the
            `image` input. Defaults to `"float32"`.
        threshold: float in (0, 1), the probability at or above which the
            mask of a one-class model is 1 (unused for several classes).
            Defaults to `0.5`.
        compute_dtype: `None` (keep the model's dtype policy), `"float32"`,
            `"bfloat16"` (TPUs, recent CPUs and GPUs) or `"float16"` (GPUs):
            the dtype of the convolutions. Weights stay float32 and the
            outputs are float32 either way. Defaults to `None`.
        overwrite: bool, whether an existing version folder of the same
            number may be replaced. Defaults to `False` (a `FileExistsError`).
        training_info: JSON-serialisable dict stored in the metadata under
            `"training"` (data set, epochs, loss, scores...). Defaults to
            `None`.
        base_path: the folder under which the server sees `export_dir`,
            written into `models.config` (e.g. `"/models"` when the folder is
            mounted there in the `tensorflow/serving` container, or a storage
            URL such as `"gs://bucket/models"` where the folder is copied).
            Defaults to `None`, the absolute path of `export_dir`.
        pixel_scaling: `"dtype"` or `"minmax"`, the pixel scaling the model
            was trained with (`keras_unetpp.data`'s option of the same
            name). Defaults to `"dtype"`.
        jit_compile: bool, whether the serving function is marked for XLA
            compilation (`tf.function(jit_compile=True)`), so that a server
            built with XLA fuses the graph on GPU. XLA compiles once per
            input shape, so this suits clients that send a few fixed sizes.
            With a resize policy only the network is compiled (the
            antialiased resize has no XLA kernel). Defaults to `False`.
        size_policy: `keras_unetpp.size_policy.SizePolicy`, how the model
            was trained and so how an image of any size must meet it:
            `SizePolicy.resize((h, w))` for a model trained on images
            resized to `(h, w)`, `SizePolicy.native()` for one trained at
            native scale (crops). Recorded in each version's metadata.
            Defaults to `None`, native. `keras_unetpp.runs.export_run`
            passes the run's own.
        accurate: bool, also export the accurate mode (the mean of every
            head, `inference_model(model, "accurate")`) as the model
            `f"{model_name}_accurate"`. Needs a deep-supervision model.
            Defaults to `False`.
        tiling: `None` (each request predicted whole, the default export),
            or a dict of `keras_unetpp.predict_tiled` arguments
            (`tile_size` required; `overlap`, `blending`, `tta`,
            `batch_size`, `sigma_scale` as there): the serving function
            then predicts each request tile by tile inside the graph, the
            computation of `predict_tiled(prune(model, L), ...)` in
            TensorFlow ops, so a server takes images of any size with the
            memory of one tile batch and returns what `predict_tiled`
            returns. `tile_size` must be a multiple of every exported
            level's stride (`2**depth` with `accurate`). Native size policy
            only (a resize-mode run needs no tiles), no `jit_compile`.
            Recorded in the metadata under `"tiling"`. Defaults to `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: whole-image test-time
            augmentation inside the graph (`SizePolicy.probabilities`): the
            network runs on each flipped (and quarter-turned) copy of the
            model input and the probabilities, turned back, are averaged,
            as `keras-unetpp predict --tta` and `evaluate --tta` compute
            them. SavedModel format only; with `tiling`, TTA is its
            `"tta"` entry instead. Recorded in the metadata under `"tta"`.
            Defaults to `None`.
        formats: iterable of `"savedmodel"`, `"tflite"` and `"onnx"` (or
            one comma-separated str), what to write into each version
            folder: the SavedModel, the three TFLite files
            (`model_float32.tflite`, `model_dynamic_range.tflite`,
            `model_int8.tflite`) and `model.onnx` (see
            `keras_unetpp.export.edge` for their inputs and outputs). The
            metadata's `"edge"` section describes every file. A version
            folder without a SavedModel is not listed in `models.config`.
            Defaults to `("savedmodel",)`.
        input_size: `(height, width)`, the fixed input size of the TFLite
            files of a native-scale model; `None` for a resize-mode model,
            whose files take its training size. Defaults to `None`.
        calibration_images: iterable of `(height, width, channels)` arrays
            in the `input_dtype` range, the representative set of the int8
            TFLite files (resized or centre-cropped to the input size, see
            `edge.calibration_set`); needed with `"tflite"`. Defaults to
            `None`.
        intensity: for a 3D model, its training's volume normalization,
            applied per volume in the graph to the voxels as stored:
            `"zscore"`, `"zscore-nonzero"`, `"ct"` or `"none"` (see
            `keras_unetpp.volumes.normalize_intensity`); `None` scales
            them as `pixel_scaling` says. 2D models: `None` only.
            Defaults to `None`.
        ct_window: `(low, high)` in Hounsfield units for `intensity="ct"`;
            `None` is the volume pipeline's default. Defaults to `None`.

    Returns:
        dict mapping each level to the `pathlib.Path` of its version folder,
        and `"accurate"` to the accurate mode's with `accurate=True`.

    Example:

    ```python
    model = keras_unetpp.build(depth=4, deep_supervision=True)
    model.fit(...)
    paths = export_pruned(model, "exported", model_name="nuclei",
                          input_dtype="uint8")
    # exported/models.config, exported/nuclei_l1/1/ ... exported/nuclei_l4/1/

    # A server for whole slides: tiles of 256, flip TTA, inside the graph.
    export_pruned(model, "exported", model_name="slides",
                  tiling={"tile_size": 256, "overlap": 0.25, "tta": "flips"})

    # A model trained on images resized to 96x96, with its accurate mode:
    export_pruned(model, "exported", model_name="nuclei",
                  size_policy=SizePolicy.resize((96, 96)), accurate=True)
    # ... and exported/nuclei_accurate/2/

    # A 3D model of MRI volumes, z-scored per volume in training:
    volume_model = keras_unetpp.build(3, (None, None, None, 1), num_classes=3,
                                      deep_supervision=True)
    export_pruned(volume_model, "exported", model_name="hippocampus",
                  intensity="zscore", tiling={"tile_size": (32, 32, 32)})
    ```
    """
    info = describe(model)  # A clear error for models not built by keras_unetpp.
    levels = _check_levels(info, levels)
    size_policy = _check_size_policy(size_policy, levels, info)
    formats = edge.check_formats(formats)
    volume = _check_volume_options(info, size_policy, formats, intensity, ct_window)
    _check_tta(tta, tiling, formats, volume)
    edge_options = None
    if set(formats) - {edge.SAVEDMODEL}:
        edge_size = edge.edge_input_size(size_policy, input_size)
        calibration = None
        if edge.TFLITE in formats:
            if calibration_images is None:
                raise InputError(
                    "The int8 TFLite files need a representative set: pass "
                    "calibration_images (training images). "
                    "Received: calibration_images=None"
                )
            calibration = edge.calibration_set(
                calibration_images, edge_size, input_dtype, size_policy
            )
        edge_options = {"input_size": edge_size, "calibration": calibration}
    if not isinstance(accurate, bool):
        raise InputError(
            f"`accurate` must be True or False. Received: accurate={accurate!r}"
        )
    if accurate and len(info.heads) < 2:
        raise InputError(
            "The accurate mode averages the deep-supervision heads; this model "
            f"has one head (levels {list(info.heads)}). Build it with "
            "deep_supervision=True, or export without accurate. "
            "Received: accurate=True"
        )
    model_name = serving_config.check_model_name(
        model.name if model_name is None else model_name
    )
    signatures.check_input_dtype(input_dtype)
    signatures.check_pixel_scaling(pixel_scaling)
    threshold = _check_threshold(threshold)
    compute_dtype = _check_compute_dtype(compute_dtype)
    training_info = metadata_lib.check_training_info(training_info)
    if not isinstance(jit_compile, bool):
        raise InputError(
            "`jit_compile` must be True or False. "
            f"Received: jit_compile={jit_compile!r}"
        )
    serving_config.check_base_path(base_path)
    tiled = _check_tiling(tiling, size_policy, jit_compile, info, levels, accurate)
    if volume is not None and tiled is not None and "batch_size" not in tiling:
        tiled = dataclasses.replace(tiled, batch_size=VOLUME_TILE_BATCH)
    export_dir = pathlib.Path(export_dir)
    if export_dir.exists() and not export_dir.is_dir():
        raise InputError(
            "`export_dir` must be a folder (or not exist yet). "
            f"Received: export_dir={str(export_dir)!r}"
        )
    keys = list(levels) + ([ACCURATE] if accurate else [])
    model_dirs = {key: export_dir / served_name(model_name, key) for key in keys}
    version = _choose_version(model_dirs.values(), version, overwrite)
    transaction = _Transaction()
    try:
        transaction.make_dir(export_dir)
        staged = {}
        for key in keys:
            transaction.make_dir(model_dirs[key])
            staged[key] = transaction.temporary(model_dirs[key], version)
            _write_level(
                model,
                key,
                staged[key],
                model_name=model_name,
                version=version,
                input_dtype=input_dtype,
                threshold=threshold,
                compute_dtype=compute_dtype,
                training_info=training_info,
                pixel_scaling=pixel_scaling,
                jit_compile=jit_compile,
                size_policy=size_policy,
                tiled=tiled,
                formats=formats,
                edge_options=edge_options,
                volume=volume,
                tta=tta,
            )
        paths = {}
        for key in keys:
            paths[key] = model_dirs[key] / str(version)
            transaction.move_into_place(staged[key], paths[key], overwrite)
        serving_config.write_serving_config(export_dir, base_path)
    except BaseException:
        transaction.roll_back()
        raise
    transaction.finish()
    return paths


def served_name(model_name, key):
    """The served model name of a level (`"<name>_l<L>"`) or the accurate mode."""
    return f"{model_name}_{ACCURATE}" if key == ACCURATE else f"{model_name}_l{key}"


def _sub_model(model, key):
    """The single-output model of a level, or the accurate mode, and its stride."""
    if key == ACCURATE:
        return inference_model(model, "accurate"), describe(model).stride
    return prune(model, key), 2**key


def _write_level(
    model,
    level,
    folder,
    model_name,
    version,
    input_dtype,
    threshold,
    compute_dtype,
    training_info,
    pixel_scaling,
    jit_compile,
    size_policy,
    tiled=None,
    formats=(edge.SAVEDMODEL,),
    edge_options=None,
    volume=None,
    tta=None,
):
    """Writes the SavedModel and metadata of one level (or accurate) into `folder`."""
    sub_model, stride = _sub_model(model, level)
    pruned = _serving_model(sub_model, compute_dtype)
    output_activation = describe(model).head_activation
    volume = volume or {}
    serve = signatures.make_serving_fn(
        pruned,
        stride=stride,
        input_dtype=input_dtype,
        threshold=threshold,
        output_activation=output_activation,
        pixel_scaling=pixel_scaling,
        size_policy=size_policy,
        jit_compile=jit_compile,
        tiled=tiled,
        intensity=volume.get("intensity"),
        ct_window=volume.get("ct_window"),
        tta=tta,
    )
    spec = signatures.input_signature(pruned.inputs[0].shape[-1], input_dtype)
    if edge.SAVEDMODEL in formats:
        archive = keras.export.ExportArchive()
        archive.add_endpoint("serving_default", serve, input_signature=spec)
        archive.write_out(str(folder), verbose=False)
    else:
        folder.mkdir()
    metadata = metadata_lib.build_metadata(
        pruned,
        level,
        model_name=model_name,
        version=version,
        source_model=model,
        input_dtype=input_dtype,
        threshold=threshold,
        compute_dtype=_conv_compute_dtype(pruned),
        output_activation=output_activation,
        training_info=training_info,
        pixel_scaling=pixel_scaling,
        jit_compile=jit_compile,
        size_policy=size_policy,
        tiled=tiled,
        volume=volume or None,
        tta=tta,
    )
    metadata["formats"] = list(formats)
    if edge_options is not None:
        metadata["edge"] = edge.write_edge_files(
            _serving_model(sub_model, "float32"),
            folder,
            formats,
            stride=stride,
            input_dtype=input_dtype,
            pixel_scaling=pixel_scaling,
            threshold=threshold,
            output_activation=output_activation,
            size_policy=size_policy,
            input_size=edge_options["input_size"],
            calibration=edge_options["calibration"],
        )
    metadata_lib.write_metadata(folder, metadata)


def _conv_compute_dtype(model):
    """The dtype the convolutions compute in, e.g. `"bfloat16"`."""
    return "+".join(conv_compute_dtypes(model))


def _serving_model(pruned, compute_dtype):
    """A clone of the pruned model for serving: any size, `compute_dtype`.

    The clone (same weight values, new layers, so that the caller's model is
    left untouched) takes any height and width (any depth, height and width
    for a 3D model), its layers compute in `compute_dtype` (`None`: as they
    do in `pruned`), and its batch normalization runs TensorFlow's fused
    kernel. The float32 output activations of the heads (and the accurate
    mode's mean) are kept in float32.
    """
    image = pruned.inputs[0]
    if compute_dtype in (None, "float32"):
        policy = compute_dtype
    else:
        policy = f"mixed_{compute_dtype}"
    spatial = (None,) * (len(image.shape) - 2)
    inputs = keras.Input((*spatial, image.shape[-1]), name=image.name)
    clone = cast_model(pruned, policy, inputs=inputs)
    fuse_batch_norm(clone)
    return clone


def _check_levels(info, levels):
    available = list(info.heads)
    if levels is None:
        return available
    received = levels
    try:
        levels = tuple(levels)
    except TypeError:
        raise InputError(
            "`levels` must be an iterable of ints (e.g. (1, 2, 3, 4)) or None "
            f"for every head. Received: levels={received!r}"
        ) from None
    if (
        not levels
        or len(set(levels)) != len(levels)
        or not all(is_int(level) for level in levels)
    ):
        raise InputError(
            "`levels` must be a non-empty sequence of distinct ints. "
            f"Received: levels={received!r}"
        )
    if any(level not in available for level in levels):
        raise InputError(
            f"The model has heads for levels {available} only; build it with "
            "deep_supervision=True to export smaller depths. "
            f"Received: levels={received!r}"
        )
    return sorted(int(level) for level in levels)


def _check_size_policy(size_policy, levels, info):
    if size_policy is None:
        return SizePolicy.native()
    if not isinstance(size_policy, SizePolicy):
        raise InputError(
            "`size_policy` must be a keras_unetpp.size_policy.SizePolicy (e.g. "
            "SizePolicy.resize((96, 96)) or SizePolicy.native()) or None. "
            f"Received: size_policy={size_policy!r}"
        )
    for stride in [2**level for level in levels] + [info.stride]:
        size_policy.check_stride(stride)
    return size_policy


def _check_volume_options(info, size_policy, formats, intensity, ct_window):
    """The volume settings of a 3D export (`None` for 2D), checked."""
    if info.rank != 3:
        if intensity is not None or ct_window is not None:
            raise InputError(
                "`intensity` and `ct_window` are the normalization of volumes; "
                f"this model takes {info.rank}D images (use pixel_scaling). "
                f"Received: intensity={intensity!r}, ct_window={ct_window!r}"
            )
        return None
    if size_policy.mode != "native":
        raise InputError(
            "A 3D model is served at the volumes' own voxel grid (native size "
            "policy): a resize policy is for 2D images. Received: "
            f"size_policy={size_policy.short_description()}"
        )
    if set(formats) != {edge.SAVEDMODEL}:
        raise InputError(
            "Volumes are exported as SavedModels only (the TFLite and ONNX "
            "files are for 2D images). Received: formats="
            f"{list(formats)}"
        )
    if intensity is None and ct_window is not None:
        raise InputError(
            "`ct_window` goes with intensity='ct'. Received: intensity=None, "
            f"ct_window={ct_window!r}"
        )
    window = None
    if intensity is not None:
        check_choice(intensity, "intensity", volume_intensity.INTENSITIES)
        if intensity == "ct":
            window = check_ct_window(
                volume_intensity.DEFAULT_CT_WINDOW if ct_window is None else ct_window
            )
        elif ct_window is not None:
            raise InputError(
                "`ct_window` goes with intensity='ct'. Received: "
                f"intensity={intensity!r}, ct_window={ct_window!r}"
            )
    return {"intensity": intensity, "ct_window": window}


def _check_tiling(tiling, size_policy, jit_compile, info, levels, accurate):
    """The `TiledServing` of `tiling` (a dict or `None`), checked."""
    if tiling is None:
        return None
    if not isinstance(tiling, dict) or "tile_size" not in tiling:
        raise InputError(
            "`tiling` must be None or a dict of predict_tiled arguments with "
            f"'tile_size' (e.g. {{'tile_size': 256}}). Received: tiling={tiling!r}"
        )
    unknown = sorted(set(tiling) - set(TILING_ARGUMENTS))
    if unknown:
        raise InputError(
            f"`tiling` takes the keys {TILING_ARGUMENTS}. Received: {unknown}"
        )
    if size_policy is not None and size_policy.mode != "native":
        raise InputError(
            "Tiled serving runs at the images' own scale; this export resizes "
            f"every image ({size_policy.short_description()}), which needs no "
            "tiles. Received: tiling with a resize size policy"
        )
    if jit_compile:
        raise InputError(
            "Tiled serving is not compiled with XLA (its tile loop has a "
            "size known only per request). Received: jit_compile=True with tiling"
        )
    tiled = tiled_serving.TiledServing.create(**tiling, rank=info.rank)
    strides = [2**level for level in levels]
    if accurate:
        strides.append(info.stride)
    tiled.check_stride(max(strides))
    return tiled


def _check_tta(tta, tiling, formats, volume):
    """Refuses `tta` (or `tiling`) that the export could not serve as asked.

    The TFLite and ONNX files of a version hold one pass of the network on
    the whole image: next to a tiled or augmented SavedModel they would
    return other masks from the same version folder.
    """
    check_choice(tta, "tta", TTAS)
    if tiling is not None and volume is None and tuple(formats) != (edge.SAVEDMODEL,):
        raise InputError(
            "Tiled serving is in the SavedModel only; the TFLite and ONNX "
            "files hold one pass of the network on the whole image. Export "
            "them in a version without tiling. Received: tiling with "
            f"formats={list(formats)}"
        )
    if tta is None:
        return
    if tiling is not None:
        raise InputError(
            "A tiled export takes its test-time augmentation in `tiling` "
            f"(tiling={{..., 'tta': {tta!r}}}). Received: tta with tiling"
        )
    if volume is not None:
        raise InputError(
            "Volumes are served by sliding window: give `tiling` with its "
            f"'tta'. Received: tta={tta!r} without tiling"
        )
    if tuple(formats) != (edge.SAVEDMODEL,):
        raise InputError(
            "Test-time augmentation is served by the SavedModel only; the "
            "TFLite and ONNX files hold one pass of the network. Received: "
            f"tta={tta!r}, formats={list(formats)}"
        )


def _check_threshold(threshold):
    return check_threshold(threshold)


def _check_compute_dtype(compute_dtype):
    if compute_dtype not in COMPUTE_DTYPES:
        raise InputError(
            f"`compute_dtype` must be one of {COMPUTE_DTYPES}. "
            f"Received: compute_dtype={compute_dtype!r}"
        )
    return compute_dtype


def _choose_version(model_dirs, version, overwrite):
    existing = {
        number: model_dir
        for model_dir in model_dirs
        for number in serving_config.versions(model_dir)
        + _edge_only_versions(model_dir)
    }
    if version is None:
        return max(existing, default=0) + 1
    if not is_int(version) or version < 0:
        raise InputError(
            "`version` must be a non-negative int (TF Serving version folders "
            f"are numbers) or None for the next one. Received: version={version!r}"
        )
    version = int(version)
    if not overwrite:
        for model_dir in model_dirs:
            if (model_dir / str(version)).exists():
                raise FileExistsError(
                    f"Version {version} of {model_dir.name} already exists at "
                    f"{model_dir / str(version)}; pass overwrite=True to replace "
                    f"it, or version=None for the next one. Received: "
                    f"version={version}"
                )
    return version


def _edge_only_versions(model_dir):
    """Version numbers of folders holding edge files but no SavedModel."""
    if not model_dir.is_dir():
        return []
    return [
        int(child.name)
        for child in model_dir.iterdir()
        if child.name.isdigit()
        and (child / metadata_lib.METADATA_FILE).is_file()
        and not (child / "saved_model.pb").is_file()
    ]


class _Transaction:
    """Staged folders, renames and created folders of one export, undoable."""

    def __init__(self):
        self._created = []
        self._staged = []
        self._moved = []

    def make_dir(self, path):
        """Creates `path` (and its parents) if needed, remembering what it made."""
        missing = []
        probe = pathlib.Path(path)
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)

    def temporary(self, model_dir, version):
        """A fresh hidden, non-numeric sibling of the version folder."""
        path = model_dir / f".tmp-{version}-{uuid.uuid4().hex}"
        self._staged.append(path)
        return path

    def move_into_place(self, staged, final, overwrite):
        """Renames a complete staged folder to its version folder."""
        backup = None
        if final.exists():
            if not overwrite:
                raise FileExistsError(
                    f"{final} appeared while exporting (another export?); "
                    f"nothing was replaced. Received: version={final.name}"
                )
            backup = final.parent / f".old-{final.name}-{uuid.uuid4().hex}"
            os.rename(final, backup)
        try:
            os.rename(staged, final)
        except BaseException:
            if backup is not None:
                os.rename(backup, final)
            raise
        self._moved.append((final, backup))

    def roll_back(self):
        """Undoes everything: moved versions, backups, staged and new folders."""
        for final, backup in reversed(self._moved):
            shutil.rmtree(final, ignore_errors=True)
            if backup is not None:
                os.rename(backup, final)
        self._moved = []
        for path in self._staged:
            shutil.rmtree(path, ignore_errors=True)
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                pass  # Not empty: something else was written there meanwhile.

    def finish(self):
        """Deletes the versions that `overwrite=True` replaced."""
        for _, backup in self._moved:
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)
