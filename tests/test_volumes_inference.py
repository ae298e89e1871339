"""Whole-volume inference, label-map files, the per-level table, the CLI on volumes."""

import json

import keras
import numpy as np
import pytest
from cli_helpers import error_line, run
from volume_helpers import ball_volume, write_dataset, write_nifti

import keras_unetpp
from keras_unetpp import volumes
from keras_unetpp.volumes import inference

nibabel = pytest.importorskip("nibabel")

AFFINE = np.array(
    [[0.0, 0.0, -1.5, 10.0], [0.0, 2.0, 0.0, -5.0], [0.8, 0.0, 0.0, 3.0], [0, 0, 0, 1]]
)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras_unetpp.build(
        2,
        (None, None, None, 1),
        num_classes=3,
        filters=(4, 8, 16),
        deep_supervision=True,
    )


def test_odd_volume_in_one_tile_matches_numpy_padding(model):
    volume = np.random.default_rng(0).normal(size=(13, 11, 9, 1)).astype(np.float32)
    probabilities = volumes.predict_volume(model, volume, output="output_l2")
    # One tile = the volume reflect-padded at the end to a multiple of 4.
    padded = np.pad(volume, [(0, 3), (0, 1), (0, 3), (0, 0)], mode="reflect")
    head = keras_unetpp.prune(model, 2)
    expected = np.asarray(head(padded[None], training=False))[0, :13, :11, :9]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert probabilities.shape == (13, 11, 9, 3)


def test_odd_volume_by_sliding_window_is_predict_tiled(model):
    volume = np.random.default_rng(1).normal(size=(19, 21, 15, 1)).astype(np.float32)
    ours = volumes.predict_volume(model, volume, tile_size=8, overlap=0.5)
    tiled = keras_unetpp.predict_tiled(model, volume[None], 8, overlap=0.5)[0]
    np.testing.assert_allclose(ours, tiled, atol=1e-6)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)  # softmax classes


def test_predicted_files_keep_the_input_grid_and_affine(tmp_path, model):
    image, _ = ball_volume((13, 11, 9), (6, 5, 4), 3, classes=3)
    source = write_nifti(tmp_path / "in.nii.gz", image, affine=AFFINE)
    (out,) = volumes.predict_volume_files(
        model, [source], tmp_path / "out", {"num_classes": 3}, tile_size=8
    )
    assert out.name == "in.nii.gz"
    written = nibabel.load(str(out))
    np.testing.assert_allclose(written.affine, AFFINE)
    assert written.shape == (9, 11, 13)
    normalized = (image - image.mean()) / image.std()
    probabilities = volumes.predict_volume(model, normalized[..., None], tile_size=8)
    np.testing.assert_array_equal(
        np.asarray(written.dataobj), probabilities.argmax(-1).transpose(2, 1, 0)
    )


def test_overlap_scores_by_hand():
    truth = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    prediction = np.array([0, 1, 1, 0, 2, 0, 2, 0])
    dice, iou = inference.overlap_scores(prediction, truth, 3)
    # Class 1: |P|=2, |T|=3, overlap 2 -> Dice 4/5, IoU 2/3.
    # Class 2: |P|=2, |T|=2, overlap 1 -> Dice 1/2, IoU 1/3.
    assert dice == pytest.approx({1: 0.8, 2: 0.5})
    assert iou == pytest.approx({1: 2 / 3, 2: 1 / 3})
    empty = np.zeros(4, int)
    assert inference.overlap_scores(empty, empty, 1) == ({1: 1.0}, {1: 1.0})


def test_level_table_scores_each_head_on_the_file_grid(tmp_path, model):
    root = write_dataset(tmp_path / "d", count=2, shape=(10, 12, 9))
    pairs = volumes.volume_pairs(root / "images", root / "labels")
    rows = volumes.evaluate_volume_levels(model, pairs, {"num_classes": 3}, 8)
    assert [r["level"] for r in rows] == ["L1", "L2", "accurate"]
    for row, output in zip(rows, ["output_l1", "output_l2", "accurate"]):
        dice = []
        for pair in pairs:
            image = volumes.load_image(pair.image, {"num_classes": 3})[0]
            labels = volumes.predict_volume(model, image, 8, output=output).argmax(-1)
            truth = volumes.read_label(pair.label, 3).array
            dice.append(inference.overlap_scores(labels, truth, 3)[0])
        for c in (1, 2):
            assert row[f"dice_{c}"] == pytest.approx(np.mean([d[c] for d in dice]))
        assert row["dice"] == pytest.approx((row["dice_1"] + row["dice_2"]) / 2)
    head = keras_unetpp.prune(model, 1)
    assert rows[0]["params"] == head.count_params()
    # Tiles of 8 over 10 x 12 x 9 (padded to 12 x 12 x 12): 2 x 2 x 2 tiles.
    per_tile = keras_unetpp.count_flops(head, 8, 8, depth=8)
    assert rows[0]["flops"] == 8 * per_tile
    text = volumes.format_volume_table(rows)
    assert "Dice 2" in text and "accurate" in text


def test_cli_stops_on_a_bad_volume_naming_it(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", count=3, shape=(8, 8, 8))
    bad = root / "labels" / "case_001.nii.gz"
    write_nifti(bad, np.full((8, 8, 8), 7, np.uint8))
    line = error_line(
        capsys,
        [
            "train",
            "--data",
            str(root),
            "--output",
            str(tmp_path / "run"),
            "--num-classes",
            "3",
            "--depth",
            "2",
            "--patch-size",
            "8",
        ],
    )
    assert str(bad) in line and "num_classes=3" in line
    flat = tmp_path / "flat"  # a 2D layout: volume flags are refused
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    line = error_line(
        capsys,
        [
            "train",
            "--data",
            str(flat),
            "--output",
            str(tmp_path / "r2"),
            "--patch-size",
            "8",
            "--intensity",
            "ct",
        ],
    )
    assert "--patch-size, --intensity: for volumes" in line


@pytest.mark.slow
def test_cli_trains_evaluates_and_predicts_volumes(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", count=5, shape=(12, 16, 16))
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(root),
        "--output",
        str(out),
        "--depth",
        "2",
        "--filters",
        "4",
        "--num-classes",
        "3",
        "--patch-size",
        "8",
        "16",
        "16",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--verbose",
        "0",
        "--no-tensorboard",
    ]
    run(argv)
    config = json.loads((out / "run.json").read_text())
    assert config["data"]["kind"] == "volumes"
    assert config["data"]["patch_size"] == [8, 16, 16]
    assert (out / "best.keras").is_file() and (out / "history.csv").is_file()
    splits = (out / "splits.csv").read_text().splitlines()
    assert len(splits) == 6 and sum(",val," in s for s in splits) == 1
    assert not config["training"]["xla"]
    # Resumed with the training step compiled by XLA (a change a resume may make).
    run(argv[:-3] + ["--epochs", "3", "--xla", "--verbose", "0", "--no-tensorboard"])
    assert len((out / "history.csv").read_text().splitlines()) == 4
    assert json.loads((out / "run.json").read_text())["training"]["xla"]
    capsys.readouterr()
    run(["evaluate", str(out)])
    printed = capsys.readouterr().out
    assert "L1" in printed and "accurate" in printed and "Dice 2" in printed
    rows = json.loads((out / "evaluation" / "volume_levels.json").read_text())
    assert [r["level"] for r in rows] == ["L1", "L2", "accurate"]
    image, _ = ball_volume((19, 23, 29), (9, 11, 14), 6, classes=3)
    (tmp_path / "new").mkdir()
    write_nifti(tmp_path / "new" / "odd.nii.gz", image, affine=AFFINE)
    run(["predict", str(out), str(tmp_path / "new"), "--level", "1"])
    written = nibabel.load(str(out / "predictions" / "labels" / "odd.nii.gz"))
    np.testing.assert_allclose(written.affine, AFFINE)
    assert written.shape == (29, 23, 19)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}


def test_real_hippocampus_volumes(tmp_path, shared_data, model):
    root = shared_data / "msd_hippocampus"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    stems = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    pairs = volumes.volume_pairs(root / "images", root / "labels", stems=stems)
    ds = volumes.make_volume_dataset(
        pairs,
        (16, 32, 32),
        batch_size=3,
        training=True,
        num_classes=3,
        foreground_share=1.0,
        depth=2,
    )
    images, labels = next(iter(ds))
    assert images.shape == (3, 16, 32, 32, 1)
    labels = labels.numpy()
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert (labels.reshape(3, -1) > 0).any(axis=1).all()
    (out,) = volumes.predict_volume_files(
        model, pairs[:1], tmp_path, {"num_classes": 3}, tile_size=(16, 32, 32)
    )
    source = nibabel.load(pairs[0].image)
    written = nibabel.load(str(out))
    assert written.shape == source.shape == (35, 51, 35)  # manifest: 35 x 51 x 35
    np.testing.assert_allclose(written.affine, source.affine)
