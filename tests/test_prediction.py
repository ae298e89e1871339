"""Tests of keras_unetpp.prediction: masks of any size, overlays, errors."""

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf
from fake_run import make_run, tiny_model

import keras_unetpp as ku
from keras_unetpp import cli, prediction, runs, sources
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def model():
    return ku.prune(
        ku.build(2, (None, None, 1), filters=(2, 4, 8), deep_supervision=True), 2
    )


def test_to_mask_thresholds_one_class_and_argmaxes_several():
    probabilities = np.array([[[0.2], [0.5], [0.9]]], np.float32)
    np.testing.assert_array_equal(
        prediction.to_mask(probabilities, 0.5), [[0, 255, 255]]
    )
    np.testing.assert_array_equal(prediction.to_mask(probabilities, 0.6), [[0, 0, 255]])
    classes = np.array([[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]], np.float32)
    np.testing.assert_array_equal(prediction.to_mask(classes), [[1, 0]])


def test_native_size_prediction_pads_and_crops_back(model):
    image = np.random.default_rng(0).random((21, 30, 1), np.float32)
    probabilities = prediction.predict_probabilities(model, image)
    assert probabilities.shape == (21, 30, 1)
    padded, _ = ku.pad_to_multiple(image[None], 4)
    direct = model.predict(padded, verbose=0)[0, :21, :30]
    np.testing.assert_allclose(probabilities, direct, atol=1e-6)


def test_resized_prediction_comes_back_at_the_image_size(model):
    image = np.random.default_rng(1).random((50, 70, 1), np.float32)
    probabilities = prediction.predict_probabilities(model, image, (32, 32))
    assert probabilities.shape == (50, 70, 1)
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0


def test_overlay_tints_the_foreground_only():
    image = np.full((4, 4, 1), 0.5, np.float32)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    rgb = prediction.overlay(image, mask)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # background unchanged
    assert rgb[1, 1, 0] > rgb[1, 1, 2]  # foreground reddened (or outlined)


def test_predict_folder_writes_one_mask_per_image(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), np.zeros((9, 13), np.uint8))
    cv2.imwrite(str(inputs / "b.jpg"), np.zeros((20, 8, 3), np.uint8))
    (inputs / "notes.txt").write_text("not an image")
    written = prediction.predict_folder(model, inputs, tmp_path / "out")
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert cv2.imread(str(written[1]), cv2.IMREAD_UNCHANGED).shape == (20, 8)
    assert not (tmp_path / "out" / "overlays").exists()


def test_predict_folder_errors(model, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        prediction.predict_folder(model, tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="holds no"):
        prediction.predict_folder(model, tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="Received: threshold=1.5"):
        prediction.predict_folder(model, tmp_path, tmp_path / "out", threshold=1.5)
    full = ku.build(1, (None, None, 1), filters=(2, 4), deep_supervision=True)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="single-output model"):
        prediction.predict_folder(full, tmp_path, tmp_path / "out")


# Size policy, probabilities, splits, checked writes (issue 12 and after).


def test_resize_policy_is_what_predict_always_did(model):
    """The shared size policy keeps predict's resize-and-back.

    To float rounding: predict runs it as a traced graph (`SizePolicy.graph`,
    as the SavedModels do), in which TensorFlow fuses layers that the eager
    reference below computes one by one.
    """
    image = np.random.default_rng(2).random((50, 70, 1), np.float32)
    resized = tf.clip_by_value(
        tf.image.resize(image, (32, 48), method="bilinear", antialias=True), 0.0, 1.0
    )
    back = tf.image.resize(
        model(resized[None], training=False)[0], (50, 70), method="bilinear"
    )
    for size in ((32, 48), SizePolicy.resize((32, 48))):
        np.testing.assert_allclose(
            prediction.predict_probabilities(model, image, size),
            back.numpy(),
            rtol=0,
            atol=1e-6,
        )


def _folder(tmp_path, names, size=(9, 13)):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        cv2.imwrite(
            str(folder / name),
            np.random.default_rng(0).integers(0, 255, size, np.uint8),
        )
    return folder


def test_probabilities_png16_and_npy(model, tmp_path):
    inputs = _folder(tmp_path, ["a.png", "b.png"])
    for file_format in ("png16", "npy"):
        out = tmp_path / file_format
        result = prediction.predict_images(
            model,
            [(p.stem, p) for p in sorted(inputs.iterdir())],
            out,
            probabilities=file_format,
        )
        assert [p.name for p in result["probabilities"]] == [
            f"a.{'png' if file_format == 'png16' else 'npy'}",
            f"b.{'png' if file_format == 'png16' else 'npy'}",
        ]
        image = prediction.prepare_image(
            prediction.read_image(inputs / "a.png"), 1, "dtype", "a"
        )
        expected = prediction.predict_probabilities(model, image)[..., 0]
        if file_format == "npy":
            written = np.load(result["probabilities"][0])
            assert written.dtype == np.float32
            np.testing.assert_array_equal(written, expected)
        else:
            written = cv2.imread(str(result["probabilities"][0]), cv2.IMREAD_UNCHANGED)
            assert written.dtype == np.uint16 and written.shape == (9, 13)
            np.testing.assert_array_equal(written, np.rint(expected * 65535))
        # The masks are the probabilities thresholded.
        mask = cv2.imread(str(result["masks"][0]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask > 0, expected >= 0.5)


def test_probabilities_of_several_classes(tmp_path):
    classes = ku.build(2, (None, None, 1), filters=(2, 4, 8), num_classes=3)
    inputs = _folder(tmp_path, ["a.png"])
    npy = prediction.predict_images(
        classes, [("a", inputs / "a.png")], tmp_path / "npy", probabilities="npy"
    )
    assert np.load(npy["probabilities"][0]).shape == (9, 13, 3)
    png = prediction.predict_images(
        classes, [("a", inputs / "a.png")], tmp_path / "png", probabilities="png16"
    )
    assert [p.name for p in png["probabilities"]] == [
        "a_class0.png",
        "a_class1.png",
        "a_class2.png",
    ]


def test_clashing_output_names_are_refused_up_front(model, tmp_path):
    inputs = _folder(tmp_path, ["a.png", "a.tif", "b.png"])
    with pytest.raises(InputError, match=r"a\.png' and .*a\.tif' -> a\.png"):
        prediction.predict_folder(model, inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_write_is_checked(model, tmp_path):
    inputs = _folder(tmp_path, ["a.png", "b.png"])
    (tmp_path / "out" / "masks" / "b.png").mkdir(parents=True)  # not writable
    with pytest.raises(InputError, match=r"Could not write '.*masks/b\.png'"):
        prediction.predict_folder(model, inputs, tmp_path / "out")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match="Cannot create the output folder"):
        prediction.predict_folder(model, inputs, tmp_path / "file")
    with pytest.raises(InputError, match="Cannot create the output folder"):
        prediction.predict_folder(model, inputs, tmp_path / "file" / "sub")


def test_a_bad_image_costs_the_others_nothing_and_is_named(model, tmp_path):
    inputs = _folder(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    good = (inputs / "b.png").read_bytes()
    (inputs / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    (inputs / "d.png").write_bytes(b"")
    out = tmp_path / "out"
    # A mask of an earlier prediction under a bad image's name: removed.
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "b.png").write_bytes(good)
    with pytest.raises(DataError) as caught:
        prediction.predict_folder(model, inputs, out)
    message = str(caught.value)
    assert message.startswith("2 of 4 images could not be predicted")
    assert "Cannot decode '" in message and "b.png'" in message
    assert "d.png' is empty (0 bytes)" in message
    assert "the other 2 masks are written to" in message
    assert caught.value.path == str(inputs / "b.png")
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "c.png"]
    for name in ("a.png", "c.png"):
        image = prediction.prepare_image(
            prediction.read_image(inputs / name), 1, "dtype", name
        )
        expected = prediction.predict_probabilities(model, image)[..., 0] >= 0.5
        mask = cv2.imread(str(out / "masks" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask > 0, expected)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A resize-mode run (trained at 32x48) on 8 synthetic images, 2 in val."""
    root = tmp_path_factory.mktemp("run")
    data = write_synthetic_dataset(root / "data", num_images=8, image_size=(36, 44))
    return make_run(
        root / "run",
        tiny_model(depth=2, seed=5),
        sources.data_source(data_dir=data),
        "resize",
        (32, 48),
    )


def _cli_line(capsys, argv):
    assert cli.main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_predict_a_split_of_the_run(run, tmp_path, capsys):
    source = runs.read_run_config(run)["data"]["source"]
    val = [pair.stem for pair in sources.source_pairs(source, "val")]
    line = _cli_line(
        capsys,
        [
            "predict",
            str(run),
            "--split",
            "val",
            "--output",
            str(tmp_path / "val"),
            "--probabilities",
            "npy",
        ],
    )
    assert line == (
        f"Wrote {len(val)} masks to {tmp_path / 'val'}/masks/, {len(val)} "
        "probability files to probabilities/ (accurate mode, mean of heads "
        "L1..L2; images resized to 32x48 for the network as in training "
        "(aspect ratio not kept), masks at each image's own size)."
    )
    assert sorted(p.stem for p in (tmp_path / "val" / "masks").iterdir()) == sorted(val)
    for stem in val:
        mask = cv2.imread(
            str(tmp_path / "val" / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED
        )
        assert mask.shape == (36, 44)
    result = runs.predict_run(
        run, split="train", output_dir=tmp_path / "train", level=1
    )
    assert result["model"] == "L1" and len(result["masks"]) == 8 - len(val)
    assert result["size_policy"] == SizePolicy.resize((32, 48))


def test_predict_level_and_accurate_are_one_model(run, tmp_path):
    images = _folder(tmp_path, ["x.png"], size=(40, 30))
    model = runs.load_run_model(run)
    image = prediction.prepare_image(
        prediction.read_image(images / "x.png"), 1, "dtype", "x"
    )
    for kwargs, keras_model in (
        ({"level": 1}, ku.prune(model, 1)),
        ({"accurate": True}, ku.inference_model(model, "accurate")),
        ({}, ku.inference_model(model, "accurate")),
    ):
        out = tmp_path / str(kwargs)
        runs.predict_run(run, images, out, probabilities="npy", **kwargs)
        expected = prediction.predict_probabilities(keras_model, image, (32, 48))
        np.testing.assert_array_equal(
            np.load(out / "probabilities" / "x.npy"), expected[..., 0]
        )


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "give IMAGES_DIR or --split, not neither"),
        (["IMAGES", "--split", "val"], "give IMAGES_DIR or --split, not both"),
        (
            ["--split", "val", "--level", "1", "--accurate"],
            "argument --accurate: not allowed with argument --level",
        ),
        (["--split", "test"], "invalid choice: 'test'"),
        (["--split", "val", "--probabilities", "tiff"], "invalid choice: 'tiff'"),
        (["--split", "val", "--output", "FILE"], "Cannot create the output folder"),
        (["IMAGES", "--level", "3"], "between 1 and the model's depth (2)"),
    ],
)
def test_predict_command_errors(run, tmp_path, capsys, argv, expected):
    images = _folder(tmp_path, ["a.png"])
    (tmp_path / "file").write_text("")
    argv = [
        str(images) if a == "IMAGES" else str(tmp_path / "file") if a == "FILE" else a
        for a in argv
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(run), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err


def test_predict_split_of_a_tfds_run_is_a_one_line_error(run, tmp_path, capsys):
    config = runs.read_run_config(run)
    config["data"]["source"] = {"kind": "tfds", "name": "oxford_iiit_pet"}
    other = tmp_path / "tfds_run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps(config))
    (other / "best.keras").write_bytes((run / "best.keras").read_bytes())
    with pytest.raises(SystemExit):
        cli.main(["predict", str(other), "--split", "val"])
    assert "Only folder and DSB 2018 sources" in capsys.readouterr().err


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop_run")
    data = write_synthetic_dataset(root / "data", num_images=4, image_size=(70, 90))
    return make_run(
        root / "run",
        tiny_model(depth=2, seed=6),
        sources.data_source(data_dir=data),
        "crop",
        (32, 32),
    )


def test_tiled_prediction_of_a_crop_mode_run(crop_run, tmp_path, capsys):
    line = _cli_line(
        capsys,
        [
            "predict",
            str(crop_run),
            "--split",
            "val",
            "--output",
            str(tmp_path / "tiled"),
            "--probabilities",
            "npy",
            "--tile-size",
            "32",
            "--tta",
            "flips",
        ],
    )
    assert "tiled 32, overlap 0.5, TTA flips" in line
    model = ku.inference_model(runs.load_run_model(crop_run), "accurate")
    source = runs.read_run_config(crop_run)["data"]["source"]
    for pair in sources.source_pairs(source, "val"):
        image = cv2.imread(str(pair.image), cv2.IMREAD_GRAYSCALE)
        image = image[None, ..., None].astype("float32") / 255.0
        expected = ku.predict_tiled(model, image, 32, overlap=0.5, tta="flips")[0]
        got = np.load(tmp_path / "tiled" / "probabilities" / f"{pair.stem}.npy")
        np.testing.assert_allclose(got, expected[..., 0], atol=1e-6)
        assert got.shape == (70, 90)


def test_the_memory_estimate_of_whole_image_inference(crop_run):
    info = ku.describe(runs.load_run_model(crop_run))
    # 60 bytes per pixel per level-0 channel: 4000x4000 at width 32 is 30.7e9.
    assert (
        prediction.check_fits_in_memory(info, (40, 40), available=10**9)
        == 40 * 40 * 60 * info.filters[0]
    )
    with pytest.raises(InputError, match=r"4000x4000 image needs about .* --tile-size"):
        prediction.check_fits_in_memory(info, (4000, 4000), available=2 * 2**30)


def test_predict_refuses_a_huge_image_and_tiles_it(crop_run, tmp_path, monkeypatch):
    real = prediction.check_fits_in_memory

    def little_memory(info, size, path=None, available=None):
        return real(info, size, path, available=1000)

    monkeypatch.setattr(prediction, "check_fits_in_memory", little_memory)
    with pytest.raises(InputError, match="Predict it tile by tile"):
        runs.predict_run(crop_run, split="val", output_dir=tmp_path / "whole")
    # ... and tiles bound the memory: the same images predict tile by tile.
    result = runs.predict_run(
        crop_run,
        split="val",
        output_dir=tmp_path / "tiles",
        tiling={"tile_size": 32},
    )
    assert result["masks"]


def test_tiling_a_resize_mode_run_is_refused(run, tmp_path):
    with pytest.raises(InputError, match="needs no tiles"):
        runs.predict_run(
            run, split="val", output_dir=tmp_path / "t", tiling={"tile_size": 32}
        )
