"""Tiled serving: `export_pruned(tiling=...)` serves what `predict_tiled` predicts."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from fake_run import make_run, tiny_model

import keras_unetpp as ku
from keras_unetpp import sources
from keras_unetpp.errors import InputError
from keras_unetpp.export import export_pruned, load_metadata
from keras_unetpp.export.tiled_serving import TiledServing, tiled_probabilities
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.synthetic import write_synthetic_dataset

TILING = {"tile_size": 16, "overlap": 0.5, "batch_size": 3}
# Odd sizes: smaller than a tile (edge padding), not multiples of anything,
# taller than wide and wider than tall.
SIZES = [(1, 1), (3, 7), (37, 53), (70, 21)]


def _images(batch, height, width, channels=1, seed=0):
    rng = np.random.default_rng(seed + height * 1000 + width)
    return rng.random((batch, height, width, channels), dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=2, seed=3)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiled")
    paths = export_pruned(
        model, folder, accurate=True, tiling={**TILING, "tta": "flips+rot90"}
    )
    return folder, paths


def _head(key):
    return "accurate" if key == "accurate" else f"output_l{key}"


def test_served_tiles_equal_predict_tiled_at_odd_sizes(model, exported):
    """Every level and the accurate mode, with TTA, to 1e-5 (float32 noise)."""
    _, paths = exported
    assert set(paths) == {1, 2, "accurate"}
    for key, path in paths.items():
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        for height, width in SIZES:
            images = _images(2, height, width)
            served = serve(image=tf.constant(images))
            expected = ku.predict_tiled(
                model, images, output=_head(key), tta="flips+rot90", **TILING
            )
            probabilities = served["probabilities"].numpy()
            assert probabilities.shape == (2, height, width, 1)
            np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)
            mask = served["mask"].numpy()
            assert mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, (probabilities >= 0.5).astype("uint8"))


def test_metadata_records_the_tiling(exported):
    _, paths = exported
    tiling = load_metadata(paths[2])["tiling"]
    assert tiling["tile_size"] == [16, 16]
    assert tiling["overlap"] == 0.5
    assert tiling["tta"] == "flips+rot90"
    assert tiling["batch_size"] == 3
    assert tiling["blending"] == "gaussian"


def test_default_export_is_untiled(model, tmp_path):
    """Without `tiling` the served model predicts the whole image at once."""
    paths = export_pruned(model, tmp_path, levels=[2])
    assert load_metadata(paths[2])["tiling"] is None
    serve = tf.saved_model.load(str(paths[2])).signatures["serving_default"]
    images = _images(1, 40, 56)
    served = serve(image=tf.constant(images))["probabilities"].numpy()
    whole = ku.prune(model, 2).predict(images, verbose=0)
    np.testing.assert_allclose(served, whole, atol=1e-5)
    tiled = ku.predict_tiled(model, images, output="output_l2", **TILING)
    # Tiles see less context than the whole image: they differ somewhere.
    assert np.abs(served - tiled).max() > 1e-3


def test_multi_class_logits_and_rectangular_tiles(tmp_path):
    """Logits heads get their softmax per tile, before blending, as in
    predict_tiled; the mask is the arg-max class."""
    keras_model = ku.build(
        depth=2,
        input_shape=(None, None, 2),
        filters=(4, 8, 16),
        num_classes=3,
        deep_supervision=True,
        output_activation=None,
    )
    tiling = {"tile_size": (8, 12), "overlap": 0.25, "blending": "constant"}
    paths = export_pruned(keras_model, tmp_path, levels=[2], tiling=tiling)
    serve = tf.saved_model.load(str(paths[2])).signatures["serving_default"]
    images = _images(1, 29, 31, channels=2)
    served = serve(image=tf.constant(images))
    expected = ku.predict_tiled(keras_model, images, output="output_l2", **tiling)
    probabilities = served["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        served["mask"].numpy()[..., 0], probabilities.argmax(-1)
    )


def test_graph_function_equals_predict_tiled_eagerly(model):
    """The TensorFlow tiling itself, without export: grids of several tiles."""
    net = ku.prune(model, 1)
    for tta in (None, "flips"):
        settings = TiledServing.create(8, overlap=0.5, tta=tta, batch_size=4)
        images = _images(3, 21, 34)
        got = tiled_probabilities(net, tf.constant(images), settings, 2, "sigmoid")
        expected = ku.predict_tiled(
            model, images, output="output_l1", **settings.predict_tiled_arguments()
        )
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tiling": {"overlap": 0.5}}, "tile_size"),
        ({"tiling": {"tile_size": 16, "stride": 4}}, "takes the keys"),
        ({"tiling": {"tile_size": 6}}, "multiple of the stride 4"),
        ({"tiling": {"tile_size": 16, "overlap": 1.0}}, "overlap"),
        ({"tiling": {"tile_size": 16, "tta": "rot"}}, "tta"),
        ({"tiling": {"tile_size": 16}, "jit_compile": True}, "XLA"),
        (
            {"tiling": {"tile_size": 16}, "size_policy": SizePolicy.resize((32, 32))},
            "needs no tiles",
        ),
    ],
)
def test_bad_tiling_writes_nothing(model, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        export_pruned(model, tmp_path / "export", **kwargs)
    assert not (tmp_path / "export").exists()


def test_accurate_needs_tiles_of_the_full_stride(model, tmp_path):
    """Level 1 alone takes tiles of 2; the accurate mode needs 2**depth = 4."""
    export_pruned(model, tmp_path / "l1", levels=[1], tiling={"tile_size": 6})
    with pytest.raises(InputError, match="multiple of the stride 4"):
        export_pruned(
            model, tmp_path / "acc", levels=[1], accurate=True, tiling={"tile_size": 6}
        )
    assert not (tmp_path / "acc").exists()


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = write_synthetic_dataset(root / "cells", num_images=4, image_size=(32, 40))
    source = sources.data_source(data_dir=data)
    return make_run(
        root / "run", tiny_model(depth=2, seed=5), source, "crop", image_size=(32, 32)
    )


def test_export_command_tiles_and_a_fresh_process_agrees(crop_run, capsys, tmp_path):
    """`keras-unetpp export --tile-size`: a process importing only TensorFlow
    gets predict_tiled's probabilities from the served level."""
    from keras_unetpp import cli

    export_dir = tmp_path / "export"
    argv = ["export", str(crop_run), "--export-dir", str(export_dir), "--levels", "2"]
    argv += ["--tile-size", "16", "--overlap", "0.25", "--tta", "flips"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Served tiled 16x16, overlap 0.25, TTA flips, inside the graph." in out
    level = export_dir / "unetpp_l2" / "1"
    images = _images(1, 45, 70)
    np.save(tmp_path / "in.npy", images)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "x = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], f(image=tf.constant(x))['probabilities'].numpy())\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", code, str(level), str(tmp_path / "in.npy")]
        + [str(tmp_path / "out.npy")],
        check=True,
        env=env,
        timeout=300,
    )
    served = np.load(tmp_path / "out.npy")
    from keras_unetpp import runs

    model = runs.load_run_model(crop_run, "best")
    expected = ku.predict_tiled(
        model, images, 16, overlap=0.25, tta="flips", output="output_l2"
    )
    np.testing.assert_allclose(served, expected, atol=1e-5)
    metadata = json.loads(pathlib.Path(level, "keras_unetpp_metadata.json").read_text())
    assert metadata["tiling"]["tile_size"] == [16, 16]


def test_export_command_refuses_tiles_for_a_resize_run(
    crop_run, tmp_path, capsys, monkeypatch
):
    from cli_helpers import error_line

    config = json.loads((crop_run / "run.json").read_text())
    config["data"]["resize_mode"] = "resize"
    resized = tmp_path / "resized"
    resized.mkdir()
    for name in ("best.keras", "history.csv"):
        (resized / name).write_bytes((crop_run / name).read_bytes())
    (resized / "run.json").write_text(json.dumps(config))
    line = error_line(capsys, ["export", str(resized), "--tile-size", "16"])
    assert "needs no tiles" in line
    assert not (resized / "export").exists()
    # Whole-image TTA is served by the SavedModel, not by the edge files.
    line = error_line(
        capsys,
        ["export", str(crop_run), "--tta", "flips", "--format", "savedmodel,onnx"],
    )
    assert "served by the SavedModel only" in line
    line = error_line(
        capsys,
        ["export", str(crop_run), "--tile-size", "16", "--format", "savedmodel,onnx"],
    )
    assert "Tiled serving is in the SavedModel only" in line
    assert not (crop_run / "export").exists()
