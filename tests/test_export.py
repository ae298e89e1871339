"""Tests of keras_unetpp.export: layout, signatures, numerics and safety.

Every exported level is compared with `prune(model, L)` called directly on
the same input (padded with `keras_unetpp.pad_to_multiple`, the library's own
NumPy padding, and cropped back): in this process, in a fresh process that
imports only TensorFlow, through XLA, and through `saved_model_cli`.
"""

import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from fake_run import make_run, randomize_normalization, tiny_model
from tensorflow.core.protobuf import saved_model_pb2

import keras_unetpp as ku
from keras_unetpp import prediction, runs, sources
from keras_unetpp.data.decode import prepare_image
from keras_unetpp.export import (
    SizePolicy,
    export_pruned,
    load_metadata,
    pad_to_stride,
    serving_config,
)
from keras_unetpp.export import saved_model as saved_model_lib
from keras_unetpp.synthetic import write_synthetic_dataset

FILTERS = (4, 8, 16, 32)
TRAINING_INFO = {"dataset": "synthetic", "epochs": 0, "loss": "BCEDiceLoss"}

# Input sizes for the comparisons, chosen for the padding rule of each level:
# 565x584 is the odd size (565 odd, 584 = 8 * 73), 33x47 pads both
# axes at every level, 64x64 needs no padding, 3x6 reflects at level 1 and 2
# and falls back to edge padding at level 3 (it pads 5 rows onto 3).
SIZES = ((1, 565, 584), (2, 33, 47), (2, 64, 64), (1, 3, 6))


_randomize_normalization = randomize_normalization


def _images(batch, height, width, channels=1, seed=0):
    rng = np.random.default_rng(seed + height * 1000 + width)
    return rng.random((batch, height, width, channels)).astype("float32")


def _reference(model, level, images):
    """`prune(model, level)` on `images` padded to 2**level, cropped back."""
    padded, (height, width) = ku.pad_to_multiple(images, 2**level)
    outputs = ku.prune(model, level)(padded, training=False)
    return np.asarray(outputs)[:, :height, :width]


def _train_normalized(batch, pixel_scaling):
    """A batch as keras_unetpp.data feeds it to the model in training."""
    return np.stack(
        [
            prepare_image(image, image.shape[-1], pixel_scaling, "test image")
            for image in batch
        ]
    )


def _tree(folder):
    """Every path under `folder` with the bytes of its files, for snapshots."""
    folder = pathlib.Path(folder)
    if not folder.exists():
        return None
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return _randomize_normalization(
        ku.build(depth=3, filters=FILTERS, deep_supervision=True, name="unetpp")
    )


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("exported")
    paths = export_pruned(model, export_dir, training_info=TRAINING_INFO)
    return export_dir, paths


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(2)
    return _randomize_normalization(
        ku.build(depth=2, filters=(4, 8, 16), deep_supervision=True), seed=2
    )


def test_layout_and_models_config(exported):
    export_dir, paths = exported
    assert paths == {
        level: export_dir / f"unetpp_l{level}" / "1" for level in (1, 2, 3)
    }
    for path in paths.values():
        assert (path / "saved_model.pb").is_file()
        assert (path / "variables").is_dir()
        assert (path / "keras_unetpp_metadata.json").is_file()
        # Nothing but the version folder: the temporary sibling was renamed.
        assert [child.name for child in path.parent.iterdir()] == ["1"]
    assert sorted(child.name for child in export_dir.iterdir()) == [
        "models.config",
        "unetpp_l1",
        "unetpp_l2",
        "unetpp_l3",
    ]
    text = (export_dir / "models.config").read_text()
    entries = "".join(
        f'  config {{\n    name: "unetpp_l{level}"\n'
        f'    base_path: "{export_dir.resolve()}/unetpp_l{level}"\n'
        '    model_platform: "tensorflow"\n  }\n'
        for level in (1, 2, 3)
    )
    assert text.endswith("model_config_list {\n" + entries + "}\n")
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError:
        return  # The exact text above already pins the format.
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in config.model_config_list.config] == [
        "unetpp_l1",
        "unetpp_l2",
        "unetpp_l3",
    ]


def test_models_config_base_path_for_docker(exported):
    export_dir, _ = exported
    text = serving_config.serving_config_text(export_dir, base_path="/models/")
    assert 'base_path: "/models/unetpp_l2"' in text
    assert str(export_dir) not in text.split("model_config_list")[1]
    text = serving_config.serving_config_text(export_dir, base_path="gs://b/m")
    assert 'base_path: "gs://b/m/unetpp_l3"' in text


def test_metadata(model, exported):
    _, paths = exported
    flops = []
    for level, path in paths.items():
        info = load_metadata(path)
        pruned = ku.prune(model, level)
        assert info["level"] == level and info["source_depth"] == 3
        assert info["source_model"] == {"name": "unetpp", "heads": [1, 2, 3]}
        assert info["model_name"] == f"unetpp_l{level}" and info["version"] == 1
        assert info["parameters"] == pruned.count_params()
        assert info["flops"]["per_image"] == ku.count_flops(pruned, 256, 256)
        assert info["input"] == {
            "name": "image",
            "dtype": "float32",
            "shape": [None, None, None, 1],
            "layout": "NHWC (batch, height, width, channels); any height and width",
            "check": "inside the graph: another rank or channel count fails with "
            "'image must be (batch, height, width, 1): received rank R / C channels'",
        }
        assert info["mode"]["name"] == "fast" and info["mode"]["heads"] == [level]
        # export_pruned's default size policy: each image at its own scale.
        assert info["size_policy"]["mode"] == "native"
        assert info["size_policy"]["image_size"] is None
        assert "own scale" in info["preprocessing"]["size"]
        assert info["preprocessing"]["stride"] == 2**level
        assert info["preprocessing"]["pixel_scaling"] == "dtype"
        assert info["outputs"]["mask"]["dtype"] == "uint8"
        assert info["threshold"] == 0.5 and info["compute_dtype"] == "float32"
        assert info["training"] == TRAINING_INFO
        flops.append(info["flops"]["per_image"])
    assert flops == sorted(flops) and len(set(flops)) == 3
    with pytest.raises(ValueError, match="not a version folder"):
        load_metadata(paths[1].parent)


def test_signature_in_process(model, exported):
    _, paths = exported
    images = _images(2, 33, 47)
    for level, path in paths.items():
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        # Unknown rank, so that the graph's own check names a bad shape.
        assert signature.structured_input_signature == (
            (),
            {"image": tf.TensorSpec(None, tf.float32, name="image")},
        )
        assert sorted(signature.structured_outputs) == ["mask", "probabilities"]
        outputs = signature(image=tf.constant(images))
        expected = _reference(model, level, images)
        np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
        assert outputs["mask"].dtype == tf.uint8
        np.testing.assert_array_equal(outputs["mask"], expected >= 0.5)


_FRESH_PROCESS = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import tensorflow as tf

    jobs = json.loads(sys.argv[1])
    for job in jobs:
        loaded = tf.saved_model.load(job["model"])
        signature = loaded.signatures["serving_default"]
        for index, path in enumerate(job["inputs"]):
            outputs = signature(image=tf.constant(np.load(path)))
            np.save(f"{job['out']}_{index}_probabilities.npy",
                    outputs["probabilities"].numpy())
            np.save(f"{job['out']}_{index}_mask.npy", outputs["mask"].numpy())
        if job["xla_input"]:
            xla = tf.function(lambda image: signature(image=image),
                              jit_compile=True)
            image = tf.constant(np.load(job["xla_input"]))
            hlo = xla.experimental_get_compiler_ir(image)(stage="hlo")
            assert "convolution" in hlo, hlo[:500]
            np.save(f"{job['out']}_xla.npy", xla(image)["probabilities"].numpy())
    assert "keras_unetpp" not in sys.modules
    print("fresh process ok")
    """
)


@pytest.fixture(scope="module")
def variants(model, tmp_path_factory):
    """Exports with other options: uint8 input, bfloat16, multi-class logits."""
    root = tmp_path_factory.mktemp("variants")
    uint8 = export_pruned(model, root / "uint8", levels=[2], input_dtype="uint8")
    minmax = export_pruned(
        model,
        root / "minmax",
        levels=[1],
        input_dtype="uint16",
        pixel_scaling="minmax",
        jit_compile=True,
    )
    bf16 = export_pruned(model, root / "bf16", levels=[3], compute_dtype="bfloat16")
    # A static-size, three-class model with a logits head: the export must
    # free its spatial size and apply the softmax the head leaves out.
    keras.utils.set_random_seed(3)
    static = _randomize_normalization(
        ku.build(
            depth=2,
            input_shape=(32, 32, 2),
            num_classes=3,
            filters=(4, 8, 16),
            output_activation=None,
            name="classes",
        ),
        seed=3,
    )
    multi = export_pruned(static, root / "multi")
    dynamic = ku.build(
        depth=2,
        input_shape=(None, None, 2),
        num_classes=3,
        filters=(4, 8, 16),
        output_activation=None,
    )
    dynamic.set_weights(static.get_weights())
    return {
        "uint8": uint8[2],
        "minmax": minmax[1],
        "bf16": bf16[3],
        "multi": multi[2],
        "dynamic": dynamic,
    }


@pytest.mark.slow
def test_reload_in_fresh_process_matches_keras(model, exported, variants, tmp_path):
    """A process importing only TensorFlow gets prune(model, L)'s outputs."""
    _, paths = exported
    inputs = {}
    for batch, height, width in SIZES:
        inputs[height, width] = tmp_path / f"in_{height}x{width}.npy"
        np.save(inputs[height, width], _images(batch, height, width))
    pixels = np.round(_images(1, 565, 584, seed=5) * 255).astype("uint8")
    np.save(tmp_path / "pixels.npy", pixels)
    two_channels = _images(2, 37, 29, channels=2)
    np.save(tmp_path / "two.npy", two_channels)
    # 16-bit images, the second one constant (min-max maps it to 0).
    raw = np.random.default_rng(6).integers(1000, 40000, (2, 51, 60, 1))
    raw[1] = 777
    raw = raw.astype(np.uint16)
    np.save(tmp_path / "raw.npy", raw)
    xla_input = str(inputs[33, 47])
    jobs = [
        {
            "model": str(paths[level]),
            "inputs": [str(p) for p in inputs.values()],
            "out": str(tmp_path / f"l{level}"),
            "xla_input": xla_input,
        }
        for level in paths
    ] + [
        {
            "model": str(variants["bf16"]),
            "inputs": [],
            "out": str(tmp_path / "bf16"),
            "xla_input": xla_input,
        },
        {
            "model": str(variants["uint8"]),
            "inputs": [str(tmp_path / "pixels.npy")],
            "out": str(tmp_path / "uint8"),
            "xla_input": None,
        },
        {
            "model": str(variants["multi"]),
            "inputs": [str(tmp_path / "two.npy")],
            "out": str(tmp_path / "multi"),
            "xla_input": str(tmp_path / "two.npy"),
        },
        {
            "model": str(variants["minmax"]),
            "inputs": [str(tmp_path / "raw.npy")],
            "out": str(tmp_path / "minmax"),
            "xla_input": str(tmp_path / "raw.npy"),
        },
    ]
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, json.dumps(jobs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fresh process ok" in result.stdout

    def load(name):
        return np.load(tmp_path / f"{name}.npy")

    for level in paths:
        for index, (batch, height, width) in enumerate(SIZES):
            expected = _reference(model, level, _images(batch, height, width))
            probabilities = load(f"l{level}_{index}_probabilities")
            assert probabilities.shape == (batch, height, width, 1)
            assert np.abs(probabilities - expected).max() <= 1e-5
            np.testing.assert_array_equal(
                load(f"l{level}_{index}_mask"), expected >= 0.5
            )
        expected = _reference(model, level, _images(2, 33, 47))
        assert np.abs(load(f"l{level}_xla") - expected).max() <= 1e-5
    # bfloat16 keeps about 3 significant digits through the network.
    assert np.abs(load("bf16_xla") - expected).max() <= 0.02
    # Integer pixels are normalized as the training pipeline does it.
    expected = _reference(model, 2, _train_normalized(pixels, "dtype"))
    assert np.abs(load("uint8_0_probabilities") - expected).max() <= 1e-5
    assert load_metadata(variants["minmax"])["preprocessing"]["pixel_scaling"] == (
        "minmax"
    )
    expected = _reference(model, 1, _train_normalized(raw, "minmax"))
    for name in ("minmax_0_probabilities", "minmax_xla"):
        assert np.abs(load(name) - expected).max() <= 1e-5
    padded, _ = ku.pad_to_multiple(two_channels, 4)
    logits = np.asarray(variants["dynamic"](padded, training=False))[:, :37, :29]
    expected = np.asarray(keras.ops.softmax(logits, axis=-1))
    for name in ("multi_0_probabilities", "multi_xla"):
        assert np.abs(load(name) - expected).max() <= 1e-5
    mask = load("multi_0_mask")
    assert mask.shape == (2, 37, 29, 1) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[..., 0], expected.argmax(-1))


@pytest.mark.slow
def test_saved_model_cli_show_and_run(model, exported, tmp_path):
    _, paths = exported
    cli = shutil.which("saved_model_cli") or str(
        pathlib.Path(sys.executable).parent / "saved_model_cli"
    )
    images = _images(1, 41, 35)
    np.save(tmp_path / "image.npy", images)
    commands = {
        "show": [cli, "show", "--all", "--dir", str(paths[3])],
        "run": [
            cli,
            "run",
            "--dir",
            str(paths[3]),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"image={tmp_path / 'image.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
    }
    # Both at once: most of each command's time is importing TensorFlow.
    processes = {
        name: subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        for name, command in commands.items()
    }
    results = {name: p.communicate(timeout=300) for name, p in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, results[name][1][-3000:]
    show = results["show"][0]
    assert "signature_def['serving_default']" in show
    for line in (
        "inputs['image'] tensor_info:",
        "outputs['probabilities'] tensor_info:",
        "outputs['mask'] tensor_info:",
        "dtype: DT_UINT8",
        "shape: unknown_rank",
        "shape: (-1, -1, -1, 1)",
    ):
        assert line in show, show[-3000:]
    expected = _reference(model, 3, images)
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    assert np.abs(probabilities - expected).max() <= 1e-5
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / "mask.npy"), expected >= 0.5
    )


@pytest.mark.parametrize(
    "compute_dtype, tolerance", [("bfloat16", 0.02), ("float16", 0.003)]
)
def test_low_precision_compute_against_float32(
    model, variants, compute_dtype, tolerance, tmp_path
):
    """Low-precision convolutions, float32 outputs, close to float32."""
    if compute_dtype == "bfloat16":
        path = variants["bf16"]
    else:
        path = export_pruned(model, tmp_path, levels=[3], compute_dtype=compute_dtype)[
            3
        ]
    assert load_metadata(path)["compute_dtype"] == compute_dtype
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = _images(2, 47, 53)
    outputs = signature(image=tf.constant(images))
    expected = _reference(model, 3, images)
    assert outputs["probabilities"].dtype == tf.float32
    difference = np.abs(outputs["probabilities"].numpy() - expected)
    # The low-precision graph must really differ (it is not float32 in
    # disguise) and stay within the dtype's precision.
    assert 0.0 < difference.max() <= tolerance
    # The masks agree wherever float32 is not within the tolerance of the
    # threshold.
    sure = np.abs(expected - 0.5) > tolerance
    np.testing.assert_array_equal(
        outputs["mask"].numpy()[sure], (expected >= 0.5)[sure]
    )


def test_mixed_precision_model_exports_as_trained_or_in_float32(tmp_path):
    """A model trained under mixed_bfloat16 keeps its policy unless told."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(7)
        mixed = ku.build(depth=2, filters=(4, 8, 16), deep_supervision=True)
    finally:
        keras.config.set_dtype_policy(previous)
    _randomize_normalization(mixed, seed=7)
    float32 = ku.build(depth=2, filters=(4, 8, 16), deep_supervision=True)
    float32.set_weights(mixed.get_weights())
    images = _images(2, 30, 22)
    expected = _reference(float32, 2, images)
    differences = {}
    for compute_dtype in (None, "float32"):
        path = export_pruned(
            mixed,
            tmp_path / str(compute_dtype),
            levels=[2],
            compute_dtype=compute_dtype,
        )[2]
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        outputs = signature(image=tf.constant(images))["probabilities"].numpy()
        differences[load_metadata(path)["compute_dtype"]] = np.abs(
            outputs - expected
        ).max()
    assert differences["float32"] <= 1e-5
    assert 0.0 < differences["bfloat16"] <= 0.02


def _xla_marked(version_dir):
    """Whether a SavedModel holds a function marked `jit_compile=True`."""
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((pathlib.Path(version_dir) / "saved_model.pb").read_bytes())
    return any(
        function.attr["_XlaMustCompile"].b
        for function in saved.meta_graphs[0].graph_def.library.function
        if "_XlaMustCompile" in function.attr
    )


def test_jit_compile_option_marks_the_serving_function(exported, variants):
    """jit_compile=True saves the XLA mark (its outputs: the fresh-process test)."""
    assert _xla_marked(variants["minmax"])
    assert load_metadata(variants["minmax"])["jit_compile"] is True
    _, paths = exported
    assert not _xla_marked(paths[1])
    assert load_metadata(paths[1])["jit_compile"] is False


def test_pad_to_stride_matches_pad_to_multiple():
    for batch, height, width in SIZES + ((1, 1, 1), (1, 7, 2)):
        images = _images(batch, height, width, channels=2)
        for stride in (2, 8, 16):
            padded, h, w = pad_to_stride(tf.constant(images), stride)
            expected, (eh, ew) = ku.pad_to_multiple(images, stride)
            np.testing.assert_array_equal(padded.numpy(), expected)
            assert (int(h), int(w)) == (eh, ew)


def test_next_version_overwrite_and_refusal(tmp_path):
    small_model = ku.build(depth=2, filters=(4, 8, 16), deep_supervision=True)
    small_model.compile(optimizer="adam", loss=ku.BCEDiceLoss())
    small_model.optimizer.build(small_model.trainable_variables)
    small_model.optimizer.iterations.assign(120)
    first = export_pruned(small_model, tmp_path, levels=[1], model_name="cells")
    assert first == {1: tmp_path / "cells_l1" / "1"}
    assert load_metadata(first[1])["source_model"] == {
        "name": "unetpp",
        "heads": [1, 2],
        "optimizer": "Adam",
        "optimizer_steps": 120,
    }
    # The next version is one more than the highest of any exported level.
    second = export_pruned(small_model, tmp_path, model_name="cells")
    assert second == {1: tmp_path / "cells_l1" / "2", 2: tmp_path / "cells_l2" / "2"}
    assert serving_config.versions(tmp_path / "cells_l1") == [1, 2]
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match=r"overwrite=True.*Received: version=2"):
        export_pruned(small_model, tmp_path, levels=[2], version=2, model_name="cells")
    assert _tree(tmp_path) == before
    replaced = export_pruned(
        small_model,
        tmp_path,
        levels=[2],
        version=2,
        model_name="cells",
        overwrite=True,
        training_info={"run": "replacement"},
    )
    assert load_metadata(replaced[2])["training"] == {"run": "replacement"}
    assert sorted(p.name for p in (tmp_path / "cells_l2").iterdir()) == ["2"]
    config = (tmp_path / "models.config").read_text()
    assert config.count("config {") == 2 and '"cells_l2"' in config


class _Injected(Exception):
    pass


@pytest.mark.parametrize("error", [_Injected, KeyboardInterrupt])
def test_failed_export_leaves_nothing_behind(small_model, tmp_path, monkeypatch, error):
    """An exception or Ctrl-C after one level was written undoes everything."""
    existing = tmp_path / "existing"
    export_pruned(small_model, existing, levels=[1])
    before = _tree(existing)
    write_metadata = saved_model_lib.metadata_lib.write_metadata
    written = []

    def fail_on_second_level(folder, metadata):
        if len(written) == 1:
            raise error("injected failure")
        written.append(folder)
        return write_metadata(folder, metadata)

    monkeypatch.setattr(
        saved_model_lib.metadata_lib, "write_metadata", fail_on_second_level
    )
    with pytest.raises(error, match="injected failure"):
        export_pruned(small_model, existing)
    assert written and not written[0].exists()
    assert _tree(existing) == before
    # Into a folder that does not exist yet: the folders it made go too.
    fresh = tmp_path / "new" / "export"
    with pytest.raises(error, match="injected failure"):
        export_pruned(small_model, fresh, levels=[2])
    assert not (tmp_path / "new").exists()


def test_failure_while_moving_into_place_rolls_back(small_model, tmp_path, monkeypatch):
    """Levels already renamed into place are removed, replaced ones restored."""
    export_pruned(small_model, tmp_path, version=4, training_info={"run": "old"})
    before = _tree(tmp_path)
    rename = os.rename
    moved = []

    def fail_second_level(source, destination):
        if pathlib.Path(source).name.startswith(".tmp-"):
            if moved:
                raise OSError("injected: disk full")
            moved.append(destination)
        return rename(source, destination)

    monkeypatch.setattr(saved_model_lib.os, "rename", fail_second_level)
    with pytest.raises(OSError, match="injected"):
        export_pruned(
            small_model,
            tmp_path,
            version=4,
            overwrite=True,
            training_info={"run": "new"},
        )
    assert moved == [tmp_path / "unetpp_l1" / "4"]
    assert _tree(tmp_path) == before
    assert load_metadata(tmp_path / "unetpp_l1" / "4")["training"] == {"run": "old"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": [4]}, r"heads for levels \[1, 2\] only.*Received: levels=\[4\]"),
        ({"levels": []}, r"non-empty sequence.*Received: levels=\[\]"),
        ({"levels": [1, 1]}, r"distinct ints.*Received: levels=\[1, 1\]"),
        ({"levels": 2}, r"iterable of ints.*Received: levels=2"),
        ({"version": -1}, r"non-negative int.*Received: version=-1"),
        ({"version": "3"}, r"Received: version='3'"),
        ({"model_name": "../up"}, r"Received: model_name='../up'"),
        ({"model_name": ".hidden"}, r"Received: model_name='.hidden'"),
        ({"input_dtype": "int8"}, r"Received: input_dtype='int8'"),
        ({"pixel_scaling": "zscore"}, r"Received: pixel_scaling='zscore'"),
        ({"threshold": 1.0}, r"a finite number in \(0, 1\).*Received: threshold=1.0"),
        ({"threshold": True}, r"Received: threshold=True"),
        ({"compute_dtype": "float64"}, r"Received: compute_dtype='float64'"),
        ({"training_info": "adam"}, r"must be a dict.*Received: training_info='adam'"),
        ({"training_info": {"x": object}}, r"JSON-serialisable"),
        ({"base_path": "models"}, r"absolute path.*Received: base_path='models'"),
        ({"jit_compile": "yes"}, r"Received: jit_compile='yes'"),
    ],
)
def test_invalid_arguments_write_nothing(small_model, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_pruned(small_model, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_invalid_models_and_folders(tmp_path):
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 1)])
    with pytest.raises(ValueError, match="no UNet\\+\\+ encoder layers"):
        export_pruned(plain, tmp_path / "out")
    no_supervision = ku.build(depth=2, filters=(4, 8, 16))
    with pytest.raises(ValueError, match="deep_supervision=True"):
        export_pruned(no_supervision, tmp_path / "out", levels=[1])
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="must be a folder"):
        export_pruned(no_supervision, tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# The size policy, the accurate mode, the input check and run exports.

RESIZE = SizePolicy.resize((32, 48))


def _predicted(keras_model, images, policy):
    """What `keras-unetpp predict` computes for each image of a batch."""
    return np.stack(
        [
            prediction.predict_probabilities(keras_model, image, policy)
            for image in images
        ]
    )


def _serve(path, images):
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    outputs = signature(image=tf.constant(images))
    return {key: value.numpy() for key, value in outputs.items()}


@pytest.fixture(scope="module")
def resized(model, tmp_path_factory):
    """Levels 1 and 3 and the accurate mode of a model trained at 32x48."""
    export_dir = tmp_path_factory.mktemp("resized")
    return export_pruned(
        model, export_dir, levels=[1, 3], size_policy=RESIZE, accurate=True
    )


def test_resize_policy_serves_what_predict_predicts(model, resized):
    """Issue 12: a resize-mode model is served at its training size, as predict."""
    images = _images(2, 45, 61)
    sub_models = {
        1: ku.prune(model, 1),
        3: ku.prune(model, 3),
        "accurate": ku.inference_model(model, "accurate"),
    }
    assert sorted(resized, key=str) == [1, 3, "accurate"]
    for key, path in resized.items():
        outputs = _serve(path, images)
        expected = _predicted(sub_models[key], images, RESIZE)
        assert outputs["probabilities"].shape == (2, 45, 61, 1)
        assert np.abs(outputs["probabilities"] - expected).max() <= 1e-5
        np.testing.assert_array_equal(outputs["mask"], expected >= 0.5)
        # At native scale the network would answer something else.
        native = _predicted(sub_models[key], images, SizePolicy.native())
        assert np.abs(native - expected).max() > 0.01
        info = load_metadata(path)
        assert info["size_policy"]["mode"] == "resize"
        assert info["size_policy"]["image_size"] == [32, 48]
        assert info["size_policy"]["aspect_ratio"] == "squashed"
        assert info["preprocessing"]["size"].startswith(
            "inside the graph: resized to 32x48 for the network, as in training"
        )
        assert (
            "probabilities resized back to the input size"
            in (info["size_policy"]["description"])
        )


def test_resize_policy_with_xla_compiles_the_network(model, tmp_path):
    path = export_pruned(
        model, tmp_path, levels=[2], size_policy=RESIZE, jit_compile=True
    )[2]
    assert _xla_marked(path)
    images = _images(1, 50, 39)
    expected = _predicted(ku.prune(model, 2), images, RESIZE)
    assert np.abs(_serve(path, images)["probabilities"] - expected).max() <= 1e-5


def test_accurate_mode_is_a_served_model(model, resized):
    export_dir = resized[1].parent.parent
    assert resized["accurate"] == export_dir / "unetpp_accurate" / "1"
    assert sorted(child.name for child in export_dir.iterdir()) == [
        "models.config",
        "unetpp_accurate",
        "unetpp_l1",
        "unetpp_l3",
    ]
    assert 'name: "unetpp_accurate"' in (export_dir / "models.config").read_text()
    info = load_metadata(resized["accurate"])
    assert info["model_name"] == "unetpp_accurate" and info["level"] is None
    assert info["mode"]["name"] == "accurate" and info["mode"]["heads"] == [1, 2, 3]
    assert "mean of the probabilities of heads L1..L3" in info["mode"]["meaning"]
    assert info["preprocessing"]["stride"] == 8
    assert info["parameters"] == model.count_params()


def test_accurate_needs_several_heads_and_fails_atomically(
    small_model, tmp_path, monkeypatch
):
    with pytest.raises(ValueError, match="averages the deep-supervision heads"):
        export_pruned(
            ku.build(depth=2, filters=(4, 8, 16)), tmp_path / "one", accurate=True
        )
    assert not (tmp_path / "one").exists()
    write_metadata = saved_model_lib.metadata_lib.write_metadata

    def fail_on_accurate(folder, metadata):
        if metadata["mode"]["name"] == "accurate":
            raise _Injected("injected failure")
        return write_metadata(folder, metadata)

    monkeypatch.setattr(
        saved_model_lib.metadata_lib, "write_metadata", fail_on_accurate
    )
    with pytest.raises(_Injected):
        export_pruned(small_model, tmp_path / "out", accurate=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "shape, received",
    [
        ((33, 47, 1), "rank 3 / 1 channels"),
        ((1, 2, 33, 47, 1), "rank 5 / 1 channels"),
        ((1, 33, 47, 3), "rank 4 / 3 channels"),
        ((), "rank 0 / -1 channels"),
    ],
)
def test_serving_graph_names_a_bad_shape(exported, resized, shape, received):
    _, paths = exported
    for path in (paths[2], resized["accurate"]):
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        expected = r"image must be \(batch, height, width, 1\): received " + re.escape(
            received
        )
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
            signature(image=tf.zeros(shape, tf.float32))


def test_size_policy_checks():
    with pytest.raises(ValueError, match=r"not a multiple of the network's stride 8"):
        export_pruned(
            ku.build(depth=3, filters=FILTERS),
            "unused",
            size_policy=SizePolicy.resize((36, 48)),
        )
    with pytest.raises(ValueError, match="must be a keras_unetpp.size_policy"):
        export_pruned(ku.build(depth=1, filters=(4, 8)), "unused", size_policy=(32, 32))
    with pytest.raises(ValueError, match="positive ints"):
        SizePolicy.resize((32,))
    with pytest.raises(ValueError, match="takes no image_size"):
        SizePolicy("native", (32, 32))
    config = {"data": {"resize_mode": "resize", "image_size": [96, 64]}}
    assert SizePolicy.from_run_config(config) == SizePolicy.resize((96, 64))
    config["data"]["resize_mode"] = "crop"
    assert SizePolicy.from_run_config(config) == SizePolicy.native()
    policy = SizePolicy.resize([96, 64])
    assert SizePolicy.from_dict(policy.to_dict()) == policy
    assert not os.path.exists("unused")


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory):
    root = write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "cells", num_images=4, image_size=(32, 40)
    )
    return sources.data_source(data_dir=root)


@pytest.mark.parametrize("resize_mode", ["resize", "crop"])
def test_export_run_records_the_policy_and_no_absolute_paths(
    synthetic_source, tmp_path, resize_mode
):
    model = tiny_model(depth=2, seed=3)
    run = make_run(
        tmp_path / "run", model, synthetic_source, resize_mode, image_size=(32, 48)
    )
    paths = runs.export_run(run, levels=[1])
    # The accurate mode comes by default with a deep-supervision model.
    assert sorted(paths, key=str) == [1, "accurate"]
    info = load_metadata(paths[1])
    expected = "resize" if resize_mode == "resize" else "native"
    assert info["size_policy"]["mode"] == expected
    assert info["training"]["resize_mode"] == resize_mode
    assert info["training"]["data"]["images"] == "cells/images"
    # Nested entries too: the split's manifest.
    assert info["training"]["data"]["split"]["manifest"] == "cells/manifest.csv"
    assert info["training"]["val_output_l2_iou"] == 0.5
    root = str(pathlib.Path(synthetic_source["images"]).parents[1])
    for path in paths.values():
        text = (path / "keras_unetpp_metadata.json").read_text()
        assert root not in text and str(tmp_path) not in text
    recorded = runs.export_run(run, levels=[1], accurate=False, record_paths=True)
    assert sorted(recorded) == [1]
    info = load_metadata(recorded[1])
    assert info["training"]["data"] == synthetic_source
    assert info["version"] == 2


_SERVE_FILES = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import tensorflow as tf

    jobs = json.loads(sys.argv[1])
    for job in jobs:
        signature = tf.saved_model.load(job["model"]).signatures["serving_default"]
        for name, path in job["images"].items():
            pixels = tf.io.decode_png(tf.io.read_file(path), channels=3)
            outputs = signature(image=pixels[None])
            np.save(f"{job['out']}_{name}_probabilities.npy",
                    outputs["probabilities"].numpy()[0, ..., 0])
            np.save(f"{job['out']}_{name}_mask.npy", outputs["mask"].numpy()[0, ..., 0])
    assert "keras_unetpp" not in sys.modules
    print("served ok")
    """
)

# Odd sizes (height, width) made from real DSB 2018 images: a crop, the
# native 256x320 of the colour images, and an upscale to the 520x696 of the
# issue.
REAL_SIZES = {
    "crop_97x131": (97, 131),
    "native_256x320": (256, 320),
    "up_520x696": (520, 696),
}


def _real_images(shared_data, folder):
    """Writes three DSB images of odd sizes as RGB PNGs into `folder`."""
    import cv2

    root = shared_data / "dsb2018_nuclei"
    with open(root / "manifest.csv") as f:
        rows = [line.strip().split(",") for line in f][1:]
    colour = sorted(
        r[0]
        for r in rows
        if r[1:3] == ["320", "256"] and r[4] != "grayscale_fluorescence"
    )
    stems = {
        "crop_97x131": colour[2],
        "native_256x320": colour[0],
        "up_520x696": colour[1],
    }
    folder.mkdir()
    for name, (height, width) in REAL_SIZES.items():
        image = cv2.imread(
            str(root / "images" / f"{stems[name]}.png"), cv2.IMREAD_COLOR
        )
        if name.startswith("crop"):
            image = image[50 : 50 + height, 60 : 60 + width]
        elif name.startswith("up"):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
        assert image.shape == (height, width, 3)
        assert cv2.imwrite(str(folder / f"{name}.png"), image)
    return {name: str(folder / f"{name}.png") for name in REAL_SIZES}


def _centred(model, image):
    """Shifts each head's bias so that its median logit on `image` is 0.

    An untrained network's masks are often all background or all
    foreground; centred, each head marks about half of the pixels, so that
    the masks compared below are not trivially equal.
    """
    from keras_unetpp.description import logits_name

    for level in ku.describe(model).heads:
        layer = model.get_layer(logits_name(level))
        logits = keras.Model(model.input, layer.output)(image[None].astype("float32"))
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, bias - np.median(np.asarray(logits))])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("resize_mode", ["resize", "crop"])
def test_served_masks_equal_predict_on_real_images(
    shared_data, synthetic_source, tmp_path, resize_mode
):
    """Issue 12: a run's SavedModels, reloaded with TensorFlow only, give the
    masks of `keras-unetpp predict` on real images of odd sizes, in both modes.

    Probabilities agree to 1e-5 and at least 99.99% of the mask pixels are
    equal (they are all equal in practice: the difference is float rounding
    between the Keras call and the served graph).
    """
    images = _real_images(shared_data, tmp_path / "images")
    model = _centred(
        tiny_model(channels=3, depth=3, seed=12),
        prediction.read_image(images["native_256x320"]) / 255.0,
    )
    run = make_run(
        tmp_path / "run", model, synthetic_source, resize_mode, image_size=(64, 96)
    )
    paths = runs.export_run(run, input_dtype="uint8")
    assert sorted(paths, key=str) == [1, 2, 3, "accurate"]
    jobs = [
        {"model": str(path), "images": images, "out": str(tmp_path / str(key))}
        for key, path in paths.items()
    ]
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_FILES, json.dumps(jobs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = {}
    for key in paths:
        out = tmp_path / f"predicted_{key}"
        predicted = runs.predict_run(
            run,
            tmp_path / "images",
            out,
            probabilities="npy",
            level=None if key == "accurate" else key,
        )
        assert predicted["model"].startswith("accurate" if key == "accurate" else "L")
        assert len(predicted["masks"]) == len(REAL_SIZES)
        for name, size in REAL_SIZES.items():
            import cv2

            mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            probabilities = np.load(out / "probabilities" / f"{name}.npy")
            served = np.load(tmp_path / f"{key}_{name}_probabilities.npy")
            served_mask = np.load(tmp_path / f"{key}_{name}_mask.npy")
            assert mask.shape == probabilities.shape == served.shape == size
            difference = float(np.abs(served - probabilities).max())
            equal = float(np.mean((served_mask > 0) == (mask > 0)))
            report[f"{key}/{name}"] = (difference, equal)
            assert difference <= 1e-5, (key, name, difference)
            assert equal >= 0.9999, (key, name, equal)
            report[f"{key}/{name}"] += (float(np.mean(mask > 0)),)
    print(
        f"\n{resize_mode}: max abs probability difference, mask pixels equal, "
        "foreground share"
    )
    for name, (difference, equal, foreground) in report.items():
        print(f"  {name}: {difference:.2e}, {100 * equal:.4f}%, {foreground:.3f}")
    # Not a trivial agreement: the masks hold both classes.
    foreground = [row[2] for row in report.values()]
    assert 0.05 < np.mean(foreground) < 0.95, report


def _served_equals_predicted(served, image, out, name, key):
    """Checks a SavedModel's answer on `image` against `predict`'s files.

    `out` is a `predict_run` folder written with `probabilities="npy"`;
    probabilities must agree to 1e-6 and masks exactly. Returns the mask.
    """
    import cv2

    outputs = served(image=tf.constant(image[None]))
    probabilities = np.load(out / "probabilities" / f"{name}.npy")
    np.testing.assert_allclose(
        outputs["probabilities"].numpy()[0, ..., 0],
        probabilities,
        rtol=0,
        atol=1e-6,
        err_msg=f"{key}/{name}",
    )
    mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED) > 0
    np.testing.assert_array_equal(
        outputs["mask"].numpy()[0, ..., 0] > 0, mask, err_msg=f"{key}/{name}"
    )
    return mask


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_predict_computes_the_served_graph_in_every_precision(
    synthetic_source, tmp_path, precision
):
    """`keras-unetpp predict` runs the graph a SavedModel runs, to float rounding.

    Called eagerly, a bfloat16 network computes each layer on its own,
    while the traced graph of a SavedModel has oneDNN fuse the batch
    normalization and activation into the convolution, skipping roundings
    to bfloat16: eager probabilities were up to 2e-3 away from the served
    ones on a DSB model, and flipped a mask pixel or two per image. Both
    now trace `SizePolicy.graph`. Odd sizes, a crop-mode run, every level
    and the accurate mode.
    """
    if precision == "mixed_bfloat16":
        reason = ku.precision.bfloat16_unavailable_reason()
        if reason:
            pytest.skip(reason)
    import cv2

    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir()
    images = {}
    for name, size in {
        "a_37x53": (37, 53),
        "b_64x64": (64, 64),
        "c_90x41": (90, 41),
    }.items():
        noise = rng.uniform(0, 255, (*size, 3)).astype(np.float32)
        images[name] = (
            cv2.GaussianBlur(noise, (0, 0), 2.0).clip(0, 255).astype(np.uint8)
        )
        cv2.imwrite(str(folder / f"{name}.png"), images[name][..., ::-1])
    with ku.precision_scope(precision):
        model = tiny_model(channels=3, depth=3, seed=7)
    model = _centred(model, images["b_64x64"] / 255.0)
    run = make_run(tmp_path / "run", model, synthetic_source, "crop", (32, 32))
    paths = runs.export_run(run, input_dtype="uint8")
    masks = []
    for key, path in paths.items():
        out = tmp_path / f"predicted_{key}"
        runs.predict_run(
            run,
            folder,
            out,
            probabilities="npy",
            level=None if key == "accurate" else key,
        )
        served = tf.saved_model.load(str(path)).signatures["serving_default"]
        for name, image in images.items():
            # float32 rounding (1e-7) only; the eager bfloat16 path was 1e-3 off.
            masks.append(_served_equals_predicted(served, image, out, name, key))
    # Not trivially equal: the masks hold both classes.
    assert 0.05 < np.mean([m.mean() for m in masks]) < 0.95


def test_export_command_exports_the_accurate_mode_by_default(
    synthetic_source, tmp_path, capsys
):
    from keras_unetpp import cli

    run = make_run(
        tmp_path / "run",
        tiny_model(depth=2, seed=4),
        synthetic_source,
        "resize",
        image_size=(32, 48),
    )
    assert cli.main(["export", str(run), "--levels", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"L2: {run / 'export' / 'unetpp_l2' / '1'}",
        f"accurate: {run / 'export' / 'unetpp_accurate' / '1'}",
        "Each request is resized to 32x48 for the network, as in training "
        "(bilinear, antialiased; the aspect ratio is not kept); probabilities "
        "resized back to the input size (bilinear) before the threshold.",
        f"TF Serving config: {run / 'export' / 'models.config'}",
    ]
    assert (
        cli.main(
            ["export", str(run), "--levels", "1", "--no-accurate", "--record-paths"]
        )
        == 0
    )
    assert "accurate" not in capsys.readouterr().out
    assert serving_config.versions(run / "export" / "unetpp_accurate") == [1]
    assert serving_config.versions(run / "export" / "unetpp_l1") == [1]
    info = load_metadata(run / "export" / "unetpp_l1" / "1")
    assert info["training"]["data"]["images"] == synthetic_source["images"]


def test_export_run_scales_pixels_as_the_run_did(synthetic_source, tmp_path):
    model = tiny_model(depth=2, seed=4)
    run = make_run(tmp_path / "run", model, synthetic_source, "crop", (32, 32))
    config = json.loads((run / "run.json").read_text())
    config["data"]["pixel_scaling"] = "minmax"
    (run / "run.json").write_text(json.dumps(config))
    paths = runs.export_run(run, levels=[2], accurate=False)
    assert load_metadata(paths[2])["preprocessing"]["pixel_scaling"] == "minmax"
    # The SavedModel maps each image's range to [0, 1], as training did:
    # a dim image and its stretched copy give the same probabilities.
    served = tf.saved_model.load(str(paths[2])).signatures["serving_default"]
    rng = np.random.default_rng(0)
    bright = rng.random((1, 32, 40, 1)).astype("float32")
    dim = 0.25 + 0.5 * bright
    np.testing.assert_allclose(
        served(image=tf.constant(dim))["probabilities"].numpy(),
        served(image=tf.constant(bright))["probabilities"].numpy(),
        atol=1e-5,
    )


def test_export_leaves_the_callers_model_untouched(tmp_path):
    model = tiny_model(depth=2, seed=2)
    path = tmp_path / "plain.keras"
    model.save(path)
    # A model loaded from a file runs Keras' own batch norm (not fused).
    loaded = keras.saving.load_model(path, compile=False)
    layer = loaded.get_layer("x_0_0_bn1")
    before = (layer.call, [w.copy() for w in loaded.get_weights()])
    ku.export_pruned(loaded, tmp_path / "exported", levels=[1])
    assert layer.call == before[0]
    assert not ku.fused_batch_norm.is_fused(layer)
    for got, want in zip(loaded.get_weights(), before[1]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("resize_mode", ["crop", "resize"])
def test_tta_is_served_as_predict_and_evaluate_compute_it(
    synthetic_source, tmp_path, resize_mode
):
    """`export --tta`, `predict --tta` and `evaluate --tta`: one computation.

    Before, `evaluate --tta` scored whole images with a test-time
    augmentation that neither `predict` nor any export could produce
    (`--tta` needed `--tile-size`). Odd, non-square sizes, so that the
    quarter turns change the padded shape; every level and the accurate
    mode; the scores of `evaluate` are recomputed from `predict`'s masks.
    """
    import cv2

    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    images, truths = {}, {}
    for name, size in {"a_37x53": (37, 53), "b_90x41": (90, 41)}.items():
        noise = rng.uniform(0, 255, (*size, 3)).astype(np.float32)
        images[name] = cv2.GaussianBlur(noise, (0, 0), 2.0).clip(0, 255)
        images[name] = images[name].astype(np.uint8)
        truths[name] = images[name].mean(axis=-1) > images[name].mean()
        cv2.imwrite(str(data / "images" / f"{name}.png"), images[name][..., ::-1])
        cv2.imwrite(str(data / "masks" / f"{name}.png"), truths[name] * 255)
    model = _centred(
        tiny_model(channels=3, depth=3, seed=11), images["a_37x53"][:32, :48] / 255.0
    )
    run = make_run(tmp_path / "run", model, synthetic_source, resize_mode, (32, 48))
    tta = "flips+rot90"
    paths = runs.export_run(
        run, export_dir=tmp_path / "export", input_dtype="uint8", tta=tta
    )
    source = sources.data_source(data_dir=data, required_splits=())
    result = runs.evaluate_run(
        run,
        split="all",
        source=source,
        tta=tta,
        per_image=True,
        latency_runs=1,
        instance_methods=(),
        output_dir=tmp_path / "evaluation",
    )
    with open(result["per_image"], newline="") as f:
        scored = {
            (r["image"], r["level"]): float(r["iou_tta"]) for r in csv.DictReader(f)
        }
    loaded = runs.load_run_model(run)
    subs = {level: ku.prune(loaded, level) for level in (1, 2, 3)}
    subs["accurate"] = ku.inference_model(loaded, "accurate")
    changed = 0.0
    for key, path in paths.items():
        metadata = json.loads((path / "keras_unetpp_metadata.json").read_text())
        assert metadata["tta"] == tta
        out = tmp_path / f"predicted_{key}"
        runs.predict_run(
            run,
            data / "images",
            out,
            probabilities="npy",
            level=None if key == "accurate" else key,
            tta=tta,
        )
        served = tf.saved_model.load(str(path)).signatures["serving_default"]
        for name, image in images.items():
            mask = _served_equals_predicted(served, image, out, name, key)
            probabilities = np.load(out / "probabilities" / f"{name}.npy")
            iou = np.sum(mask & truths[name]) / np.sum(mask | truths[name])
            level = "accurate" if key == "accurate" else f"L{key}"
            assert scored[(f"{name}.png", level)] == pytest.approx(iou, abs=1e-9)
            plain = prediction.predict_probabilities(
                subs[key], image / 255.0, None if resize_mode == "crop" else (32, 48)
            )
            changed = max(changed, float(np.abs(plain[..., 0] - probabilities).max()))
    assert changed > 1e-3  # TTA is not the plain prediction
