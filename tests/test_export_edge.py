"""Tests of the TFLite and ONNX files of keras_unetpp.export (issue 18).

Every file is run by its own runtime in a fresh process that imports
neither TensorFlow nor keras_unetpp (LiteRT's `ai_edge_litert` interpreter,
onnxruntime), on real DSB 2018 images, and compared here with
`prune(model, L)` called directly: float32 files to 1e-5, the quantized
ones reported (max abs difference, mask IoU) and held to loose bounds.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from fake_run import make_run, tiny_model

import keras_unetpp as ku
from keras_unetpp import cli, runs, sources
from keras_unetpp.description import logits_name
from keras_unetpp.errors import InputError
from keras_unetpp.export import edge, export_pruned, load_metadata, serving_config
from keras_unetpp.export.edge_runtime import load_runner
from keras_unetpp.prediction import read_image
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.synthetic import write_synthetic_dataset

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

TRAINING_SIZE = (32, 48)
FILES = (*edge.TFLITE_FILES.values(), edge.ONNX_FILE)


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _centred(model, image):
    """Shifts each head's bias so that its median logit on `image` is 0.

    An untrained network's masks are often all background or all
    foreground; centred, each head marks about half of the pixels, so the
    mask comparisons below are not trivially equal.
    """
    for level in ku.describe(model).heads:
        layer = model.get_layer(logits_name(level))
        logits = keras.Model(model.input, layer.output)(image[None])
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, bias - np.median(np.asarray(logits))])
    return model


def _dsb_images(shared_data, count, size):
    """`count` DSB val images as uint8 RGB, resized to `size` (h, w)."""
    import cv2

    root = shared_data / "dsb2018_nuclei"
    rows = [line.split(",") for line in (root / "manifest.csv").read_text().split()]
    stems = sorted(r[0] for r in rows[1:] if r[-1] == "val")[:count]
    images = []
    for stem in stems:
        image = read_image(str(root / "images" / f"{stem}.png"))[..., :3]
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
        images.append(image.astype(np.uint8))
    return np.stack(images)


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory):
    root = write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "cells", num_images=6, image_size=(40, 56)
    )
    return sources.data_source(data_dir=root)


# Runs each exported file with its own runtime only: no TensorFlow, no
# keras_unetpp in this process.
_RUN_FILES = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    jobs = json.loads(sys.argv[1])
    images = np.load(jobs["images"])
    for job in jobs["files"]:
        if job["path"].endswith(".tflite"):
            runner = Interpreter(model_path=job["path"]).get_signature_runner(
                "serving_default"
            )
            outputs = [runner(image=image[None]) for image in images]
            probabilities = np.concatenate([o["probabilities"] for o in outputs])
            mask = np.concatenate([o["mask"] for o in outputs])
        else:
            session = onnxruntime.InferenceSession(
                job["path"], providers=["CPUExecutionProvider"]
            )
            probabilities, mask = session.run(
                ["probabilities", "mask"], {"image": images}
            )
        np.save(job["out"] + "_probabilities.npy", probabilities)
        np.save(job["out"] + "_mask.npy", mask)
    assert "tensorflow" not in sys.modules and "keras_unetpp" not in sys.modules
    print("runtimes ok")
    """
)


@pytest.mark.slow
def test_every_file_matches_keras_in_a_fresh_process(
    shared_data, synthetic_source, tmp_path
):
    """Issue 18: TFLite float32/dynamic/int8 and ONNX of a run, per level,
    run by LiteRT and onnxruntime on real images, against prune(model, L)."""
    images = _dsb_images(shared_data, 6, TRAINING_SIZE)
    model = _centred(tiny_model(channels=3, depth=3, seed=18), images[0] / 255.0)
    run = make_run(tmp_path / "run", model, synthetic_source, "resize", TRAINING_SIZE)
    paths = runs.export_run(
        run,
        levels=[1, 3],
        accurate=False,
        input_dtype="uint8",
        formats="savedmodel,tflite,onnx",
        calibration_images=4,
    )
    np.save(tmp_path / "images.npy", images)
    jobs = {
        "images": str(tmp_path / "images.npy"),
        "files": [
            {"path": str(paths[level] / name), "out": str(tmp_path / f"{level}_{name}")}
            for level in paths
            for name in FILES
        ],
    }
    result = subprocess.run(
        [sys.executable, "-c", _RUN_FILES, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runtimes ok" in result.stdout
    report = {}
    for level in paths:
        # The SavedModel's input at the training size: uint8 / 255.
        expected = np.asarray(ku.prune(model, level)(images / 255.0, training=False))
        expected_mask = expected >= 0.5
        for name in FILES:
            out = tmp_path / f"{level}_{name}"
            probabilities = np.load(f"{out}_probabilities.npy")
            mask = np.load(f"{out}_mask.npy")
            assert probabilities.shape == mask.shape == images.shape[:3] + (1,)
            assert probabilities.dtype == np.float32 and mask.dtype == np.uint8
            difference = float(np.abs(probabilities - expected).max())
            iou = _iou(mask > 0, expected_mask)
            report[f"L{level} {name}"] = (difference, iou)
            if name in ("model_float32.tflite", edge.ONNX_FILE):
                assert difference <= 1e-5, (level, name, difference)
                assert np.mean((mask > 0) == expected_mask) >= 0.9999
            elif name == "model_dynamic_range.tflite":
                assert difference <= 0.05 and iou >= 0.95, (level, name, report)
            else:  # int8: activations quantized to 8 bits at every layer.
                assert difference <= 0.25 and iou >= 0.8, (level, name, report)
    print("\nmax abs probability difference, mask IoU against prune(model, L)")
    for key, (difference, iou) in report.items():
        print(f"  {key}: {difference:.2e}, {iou:.4f}")
    foreground = float(np.mean(expected_mask))
    assert 0.05 < foreground < 0.95, foreground


@pytest.mark.slow
def test_metadata_layout_and_serving_config(synthetic_source, tmp_path):
    model = tiny_model(depth=2, seed=5)
    run = make_run(tmp_path / "run", model, synthetic_source, "resize", TRAINING_SIZE)
    export_dir = tmp_path / "exported"
    paths = runs.export_run(
        run,
        export_dir=export_dir,
        levels=[1],
        accurate=False,
        formats=["onnx", "tflite", "savedmodel"],
        calibration_images=3,
    )
    info = load_metadata(paths[1])
    assert info["level"] == 1 and info["formats"] == ["savedmodel", "tflite", "onnx"]
    assert info["parameters"] == ku.prune(model, 1).count_params()
    assert info["threshold"] == 0.5 and info["size_policy"]["mode"] == "resize"
    section = info["edge"]
    assert section["calibration_images"] == 3 and section["onnx_opset"] == 17
    assert sorted(section["files"]) == sorted(FILES)
    for name, entry in section["files"].items():
        assert entry["bytes"] == (paths[1] / name).stat().st_size > 0
        assert entry["spatial_size"] == "fixed"
        assert entry["input"]["dtype"] == "float32"
        assert entry["outputs"] == {
            "probabilities": {"dtype": "float32"},
            "mask": {"dtype": "uint8"},
        }
    assert section["files"]["model_int8.tflite"]["input"]["shape"] == [1, 32, 48, 1]
    assert section["files"]["model.onnx"]["input"]["shape"] == [None, 32, 48, 1]
    assert (paths[1] / "saved_model.pb").is_file()
    assert "unetpp_l1" in serving_config.serving_config_text(export_dir)
    # ONNX only: no SavedModel, so not served, but it takes the next version.
    only = runs.export_run(
        run, export_dir=export_dir, levels=[1], accurate=False, formats="onnx"
    )
    assert only[1] == export_dir / "unetpp_l1" / "2"
    assert sorted(p.name for p in only[1].iterdir()) == [
        "keras_unetpp_metadata.json",
        "model.onnx",
    ]
    assert load_metadata(only[1])["formats"] == ["onnx"]
    assert serving_config.versions(export_dir / "unetpp_l1") == [1]
    again = runs.export_run(run, export_dir=export_dir, levels=[1], accurate=False)
    assert again[1].name == "3" and "edge" not in load_metadata(again[1])
    assert serving_config.versions(export_dir / "unetpp_l1") == [1, 3]


def test_native_onnx_takes_any_size_and_tflite_the_crop_size(tmp_path):
    """A crop-mode model: ONNX pads to the stride and crops back in the graph."""
    model = tiny_model(depth=2, seed=7)
    rng = np.random.default_rng(7)
    calibration = [rng.random((50, 30, 1)).astype("float32") for _ in range(3)]
    paths = export_pruned(
        model,
        tmp_path / "exported",
        levels=[2],
        formats=("tflite", "onnx"),
        input_size=(24, 40),
        calibration_images=calibration,
    )
    files = load_metadata(paths[2])["edge"]["files"]
    assert files["model.onnx"]["spatial_size"] == "dynamic"
    assert files["model.onnx"]["input"]["shape"] == [None, None, None, 1]
    assert files["model_float32.tflite"]["input"]["shape"] == [1, 24, 40, 1]
    images = rng.random((2, 37, 53, 1)).astype("float32")
    padded, _ = ku.pad_to_multiple(images, 4)
    expected = np.asarray(ku.prune(model, 2)(padded, training=False))[:, :37, :53]
    served = load_runner(paths[2] / "model.onnx")(images)
    assert served["probabilities"].shape == (2, 37, 53, 1)
    assert np.abs(served["probabilities"] - expected).max() <= 1e-5
    images = rng.random((2, 24, 40, 1)).astype("float32")
    expected = np.asarray(ku.prune(model, 2)(images, training=False))
    served = load_runner(paths[2] / "model_float32.tflite")(images)
    assert np.abs(served["probabilities"] - expected).max() <= 1e-5
    np.testing.assert_array_equal(served["mask"], expected >= 0.5)


def test_calibration_set_resizes_or_crops_as_training_did():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 1)).astype(np.uint8)
    resized = edge.calibration_set(
        [image], (20, 30), "uint8", SizePolicy.resize((20, 30))
    )
    assert resized.shape == (1, 20, 30, 1) and resized.dtype == np.uint8
    # Antialiased bilinear halving (TensorFlow's, as in training) is a
    # triangle filter 4 input pixels wide: weights (1, 3, 3, 1) / 8 per axis
    # away from the borders (which renormalize).
    weights = np.array([1, 3, 3, 1]) / 8
    pixels = image[..., 0].astype(float)
    expected = np.array(
        [
            [
                weights @ pixels[2 * i - 1 : 2 * i + 3, 2 * j - 1 : 2 * j + 3] @ weights
                for j in range(1, 29)
            ]
            for i in range(1, 19)
        ]
    )
    assert np.abs(resized[0, 1:19, 1:29, 0] - expected).max() <= 0.5 + 1e-3
    cropped = edge.calibration_set(
        [image, image, image], (20, 30), "uint8", SizePolicy.native(), count=2
    )
    assert cropped.shape == (2, 20, 30, 1)
    np.testing.assert_array_equal(cropped[0], image[10:30, 15:45])
    small = edge.calibration_set(
        [image[:10, :10]], (12, 12), "uint8", SizePolicy.native()
    )
    np.testing.assert_array_equal(small[0, 10:, :10], np.repeat(image[9:10, :10], 2, 0))


def test_failed_edge_export_leaves_nothing_behind(tmp_path, monkeypatch):
    model = tiny_model(depth=2, seed=1)
    export_dir = tmp_path / "exported"
    export_pruned(model, export_dir, levels=[1], formats="savedmodel")
    before = sorted(str(p) for p in export_dir.rglob("*"))
    calls = []
    write_onnx = edge._write_onnx

    def fail_on_second_level(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated converter failure")
        return write_onnx(*args)

    monkeypatch.setattr(edge, "_write_onnx", fail_on_second_level)
    with pytest.raises(RuntimeError, match="simulated"):
        export_pruned(
            model,
            export_dir,
            formats="savedmodel,onnx",
            size_policy=SizePolicy.resize((16, 16)),
        )
    assert sorted(str(p) for p in export_dir.rglob("*")) == before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"formats": "savedmodel,jpeg"},
            r"formats.*Received: formats='savedmodel,jpeg'",
        ),
        ({"formats": []}, r"Received: formats=\[\]"),
        (
            {"formats": "tflite", "input_size": (16, 16)},
            r"Received: calibration_images=None",
        ),
        ({"formats": "onnx"}, r"native-scale model needs.*Received: input_size=None"),
        (
            {"formats": "onnx", "input_size": (16, 0)},
            r"Received: input_size=\(16, 0\)",
        ),
        (
            {
                "formats": "onnx",
                "size_policy": SizePolicy.resize((16, 16)),
                "input_size": (32, 32),
            },
            r"resized to \(16, 16\).*Received: input_size=\(32, 32\)",
        ),
        (
            {
                "formats": "tflite",
                "input_size": (16, 16),
                "calibration_images": [],
            },
            r"at least one calibration image",
        ),
    ],
)
def test_invalid_edge_arguments_write_nothing(tmp_path, kwargs, match):
    model = tiny_model(depth=2, seed=2)
    with pytest.raises(InputError, match=match):
        export_pruned(model, tmp_path / "exported", **kwargs)
    assert not (tmp_path / "exported").exists()


def test_export_command_formats(synthetic_source, tmp_path, capsys):
    run = make_run(
        tmp_path / "run",
        tiny_model(depth=2, seed=4),
        synthetic_source,
        "resize",
        TRAINING_SIZE,
    )
    argv = ["export", str(run), "--levels", "2", "--no-accurate"]
    assert cli.main([*argv, "--format", "savedmodel,onnx"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"L2: {run / 'export' / 'unetpp_l2' / '1'}"
    assert lines[-1] == "Next to each: model.onnx (see the metadata's 'edge')."
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--format", "tflite,gif"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "Received: formats='tflite,gif'" in err
    assert pathlib.Path(run / "export" / "unetpp_l2").is_dir()
    assert [p.name for p in (run / "export" / "unetpp_l2").iterdir()] == ["1"]
