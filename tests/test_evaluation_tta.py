"""Evaluation with test-time augmentation and tiles, against NumPy by hand."""

import csv

import cv2
import numpy as np
import pytest
from cli_helpers import error_line
from test_evaluation import TRAIN_SIZE, _fake_run, _odd_folder, _tiny_model

import keras_unetpp as ku
from keras_unetpp import cli, evaluation, sources

SIZES = ((37, 53), (40, 29))


def _read(folder):
    pairs = []
    for path in sorted((folder / "images").iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
        truth = cv2.imread(str(folder / "masks" / path.name), cv2.IMREAD_UNCHANGED) > 0
        pairs.append((image[..., None], truth))
    return pairs


def _scores(predictions, truths):
    """Global IoU and Dice of thresholded probabilities (the package's rule)."""
    inter = union = area = 0
    for probs, truth in zip(predictions, truths):
        pred = probs[..., 0] >= 0.5
        inter += np.sum(pred & truth)
        union += np.sum(pred | truth)
        area += pred.sum() + truth.sum()
    return inter / union, 2 * inter / area


def _flip_tta_by_hand(model, image, level):
    """Pad to the level's stride, predict the 4 flips, flip back, average, crop.

    Written with `np.flip` and direct model calls, not the package's TTA. L1
    is its pruned model on the image padded to 2 (as `predict --level 1`
    pads it); L2 and the accurate mode the full model's heads, padded to 4.
    """
    h, w = image.shape[:2]
    stride = 2 if level == "L1" else 4
    padded, _ = ku.pad_to_multiple(image[None], stride)
    total = 0.0
    for axes in ((), (1,), (2,), (1, 2)):
        moved = np.ascontiguousarray(np.flip(padded, axes) if axes else padded)
        if level == "L1":
            out = ku.prune(model, 1).predict(moved, verbose=0)
        else:
            heads = model.predict(moved, verbose=0)
            if level == "accurate":
                out = np.mean([heads["output_l1"], heads["output_l2"]], axis=0)
            else:
                out = heads["output_l2"]
        total = total + (np.flip(out, axes) if axes else out)
    return (total / 4)[0, :h, :w]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = _odd_folder(tmp_path_factory.mktemp("tta") / "data", sizes=SIZES)
    source = sources.data_source(data_dir=folder, required_splits=())
    return folder, source


def test_whole_image_tta_equals_numpy_and_keeps_the_plain_scores(data):
    folder, source = data
    model = _tiny_model()
    samples, _ = sources.source_samples(source, "all", channels=1)
    plain = evaluation.evaluate_levels_native(
        model, samples, None, latency_image_size=TRAIN_SIZE, latency_runs=1
    )
    samples, _ = sources.source_samples(source, "all", channels=1)
    rows = evaluation.evaluate_levels_native(
        model,
        samples,
        None,
        latency_image_size=TRAIN_SIZE,
        latency_runs=1,
        tta="flips",
    )
    pairs = _read(folder)
    truths = [truth for _, truth in pairs]
    for row, before in zip(rows, plain):
        assert row["level"] == before["level"]
        assert row["iou"] == before["iou"] and row["dice"] == before["dice"]
        assert row["tta"] == "flips" and row["inference"] == "whole image"
        predictions = [
            _flip_tta_by_hand(model, image, row["level"]) for image, _ in pairs
        ]
        iou, dice = _scores(predictions, truths)
        assert 0.01 < iou < 0.99
        assert row["iou_tta"] == pytest.approx(iou, abs=1e-3)
        assert row["dice_tta"] == pytest.approx(dice, abs=1e-3)
    # The tiny model is not flip-equivariant: TTA changes the score.
    assert any(abs(r["iou_tta"] - r["iou"]) > 1e-4 for r in rows)


def test_tiled_evaluation_scores_what_predict_tiled_predicts(data):
    folder, source = data
    model = _tiny_model()
    tiling = {"tile_size": 16, "overlap": 0.5}
    samples, _ = sources.source_samples(source, "all", channels=1)
    rows = evaluation.evaluate_levels_native(
        model,
        samples,
        None,
        latency_image_size=TRAIN_SIZE,
        latency_runs=1,
        tiling=tiling,
        tta="flips+rot90",
    )
    pairs = _read(folder)
    truths = [truth for _, truth in pairs]
    outputs = {"L1": "output_l1", "L2": "output_l2", "accurate": "accurate"}
    for row in rows:
        assert row["inference"] == "tiled 16x16, overlap 0.5"
        for tta, keys in ((None, ("iou", "dice")), ("flips+rot90", ("iou_tta",))):
            predictions = [
                ku.predict_tiled(
                    model, image[None], output=outputs[row["level"]], tta=tta, **tiling
                )[0]
                for image, _ in pairs
            ]
            iou, dice = _scores(predictions, truths)
            assert row[keys[0]] == pytest.approx(iou, abs=1e-3)
            if len(keys) > 1:
                assert row[keys[1]] == pytest.approx(dice, abs=1e-3)


def test_tiles_need_native_scale(data):
    _, source = data
    samples, _ = sources.source_samples(source, "all", channels=1)
    with pytest.raises(ku.InputError, match="needs no tiles"):
        evaluation.evaluate_levels_native(
            _tiny_model(), samples, TRAIN_SIZE, tiling={"tile_size": 16}
        )


def test_evaluate_command_prints_and_writes_the_tta_columns(data, tmp_path, capsys):
    folder, source = data
    run = _fake_run(tmp_path / "run", _tiny_model(), "crop", source)
    argv = ["evaluate", str(run), "--split", "all", "--latency-runs", "1"]
    assert cli.main(argv + ["--tta", "flips"]) == 0
    out = capsys.readouterr().out
    assert "with and without test-time augmentation (flips)" in out
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert "IoU+TTA" in header and "Dice+TTA" in header
    with open(run / "evaluation" / "levels.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["tta"] for row in table] == ["flips"] * 3
    assert all(0.0 < float(row["iou_tta"]) < 1.0 for row in table)
    # Without --tta the columns stay empty and the header is the old one.
    assert cli.main(argv + ["--tile-size", "16", "--output", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "IoU+TTA" not in out and "predicted tiled 16x16, overlap 0.5" in out
    with open(tmp_path / "t" / "levels.csv") as f:
        assert all(row["iou_tta"] == "" for row in csv.DictReader(f))


def test_evaluate_command_refuses_tiles_for_resize_runs(data, tmp_path, capsys):
    _, source = data
    run = _fake_run(tmp_path / "run", _tiny_model(), "resize", source)
    argv = ["evaluate", str(run), "--split", "all"]
    line = error_line(capsys, argv + ["--tile-size", "16"])
    assert "needs no tiles" in line
    line = error_line(capsys, argv + ["--tta", "flips", "--at-training-size"])
    assert "--at-training-size" in line
    assert not (run / "evaluation").exists()
