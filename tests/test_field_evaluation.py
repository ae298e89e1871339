"""The field's scores in `evaluate`: columns of the per-level table."""

import csv
import json

import cli_helpers
import cv2
import keras
import numpy as np
import pytest

import keras_unetpp as ku
from keras_unetpp import (
    evaluation,
    field_metrics,
    prediction,
    runs,
    sources,
    thresholds,
)
from keras_unetpp.description import logits_name

TRAIN_SIZE = (32, 32)
# (height, width) and the nuclei of each sample: (top, left, size) squares;
# the first two of sample 0 touch (one connected component, two nuclei).
SAMPLES = {
    "a0": ((40, 56), [(4, 4, 8), (4, 12, 8), (24, 30, 10)]),
    "b1": ((48, 36), [(6, 6, 12), (30, 20, 6)]),
}


def _dsb_folder(root):
    """The DSB layout: <id>/images/<id>.png and one mask PNG per nucleus."""
    rng = np.random.default_rng(0)
    for stem, ((h, w), nuclei) in SAMPLES.items():
        (root / stem / "images").mkdir(parents=True)
        (root / stem / "masks").mkdir()
        image = rng.normal(60, 15, (h, w))
        for k, (top, left, size) in enumerate(nuclei):
            mask = np.zeros((h, w), np.uint8)
            mask[top : top + size, left : left + size] = 255
            image[mask > 0] += 120
            cv2.imwrite(str(root / stem / "masks" / f"n{k}.png"), mask)
        cv2.imwrite(
            str(root / stem / "images" / f"{stem}.png"),
            np.clip(image, 0, 255).astype(np.uint8),
        )
    return root


def _model():
    keras.utils.set_random_seed(3)
    model = ku.build(2, (None, None, 1), filters=(4, 8, 16), deep_supervision=True)
    # Centre each head's logits on a random image and sharpen them: about
    # half of the pixels foreground, a non-trivial prediction.
    probe = np.random.default_rng(1).random((1, 32, 32, 1)).astype("float32")
    for level in (1, 2):
        layer = model.get_layer(logits_name(level))
        logits = keras.Model(model.input, layer.output)(probe).numpy()
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 4.0, (bias - np.median(logits)) * 4.0])
    return model


def _level_probabilities(model, folder):
    """`(level, stem, probabilities, nucleus masks)` of every sample and level.

    Each level by its own pruned model (the accurate mode by the heads'
    mean), the image zero-padded to the full model's stride and cropped back.
    """
    subs = {
        "L1": ku.prune(model, 1),
        "L2": ku.prune(model, 2),
        "accurate": ku.inference_model(model, "accurate"),
    }
    for level, sub in subs.items():
        for stem in sorted(SAMPLES):
            image = cv2.imread(
                str(folder / stem / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED
            )
            image = image.astype(np.float32)[..., None] / 255.0
            h, w = image.shape[:2]
            padded, _ = ku.pad_to_multiple(image[None], 4)
            prob = prediction.predict_probabilities(sub, padded[0], None)[:h, :w, 0]
            masks = [
                cv2.imread(str(p), cv2.IMREAD_UNCHANGED) > 0
                for p in sorted((folder / stem / "masks").iterdir())
            ]
            yield level, stem, prob, masks


def _expected(model, folder):
    """Each level's field scores, from its own predictions, by hand."""
    samples = {}
    for level, _, prob, masks in _level_probabilities(model, folder):
        samples.setdefault(level, []).append((prob, masks))
    expected = {}
    for level, level_samples in samples.items():
        truths, probs, aps, aps_ws = [], [], [], []
        for prob, masks in level_samples:
            truth_labels, _ = field_metrics.labels_from_masks(masks)
            truths.append(truth_labels > 0)
            probs.append(prob)
            for method, out in (("components", aps), ("watershed", aps_ws)):
                pred, _ = field_metrics.label_instances(prob >= 0.5, method)
                out.append(field_metrics.dsb_average_precision(truth_labels, pred))
        predictions = [p >= 0.5 for p in probs]
        expected[level] = {
            "iou": field_metrics.global_iou_dice(truths, predictions)[0],
            "dice_per_image": field_metrics.per_image_iou_dice(truths, predictions)[1],
            "mean_iou_keras": field_metrics.keras_mean_iou(truths, probs),
            "dsb_ap": float(np.mean(aps)),
            "dsb_ap_watershed": float(np.mean(aps_ws)),
        }
    return expected


def _fake_run(run, model, source):
    run.mkdir(parents=True)
    model.save(run / "best.keras")
    config = {
        "data": {
            "source": source,
            "image_size": list(TRAIN_SIZE),
            "channels": 1,
            "num_classes": 1,
            "resize_mode": "crop",
            "batch_size": 2,
            "augment": False,
            "seed": 0,
        },
        "model": {},
        "training": {},
    }
    (run / "run.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def dsb_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    folder = _dsb_folder(root / "dsb")
    source = sources.data_source(dsb2018_dir=folder, required_splits=())
    run = _fake_run(root / "run", _model(), source)
    return folder, source, run


def test_evaluate_run_adds_the_field_columns_with_per_nucleus_truth(dsb_run):
    folder, source, run = dsb_run
    result = runs.evaluate_run(run, split="all", source=source, latency_runs=1)
    expected = _expected(runs.load_run_model(run), folder)
    for row in result["rows"]:
        want = expected[row["level"]]
        assert 0.01 < row["iou"] < 0.99, row  # a non-trivial prediction
        for key, value in want.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (row["level"], key)
    table = json.loads((run / "evaluation" / "levels.json").read_text())
    assert set(evaluation.FIELD_COLUMNS) <= set(table[0])
    with open(run / "evaluation" / "levels.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == list(evaluation.COLUMNS)
    assert "DSB-AP(ws)" in result["table"].splitlines()[0]


def test_per_nucleus_truth_differs_from_merged_components(dsb_run):
    # The truth's touching squares are two nuclei as stored, one component
    # when merged; a perfect semantic prediction scores below 1 on the DSB
    # metric against the per-nucleus truth and 1 against the merged one.
    folder, source, _ = dsb_run
    pairs = sources.source_pairs(source, "all")
    per_nucleus = list(field_metrics.pair_instances(pairs))
    assert [labels.max() for labels in per_nucleus] == [3, 2]
    merged = [field_metrics.label_instances(labels > 0)[0] for labels in per_nucleus]
    assert [labels.max() for labels in merged] == [2, 2]
    truth = per_nucleus[0] > 0
    predicted, _ = field_metrics.label_instances(truth)
    assert field_metrics.dsb_average_precision(merged[0], predicted) == 1.0
    # Two of three nuclei found (the merged pair matches neither: IoU 0.5).
    assert field_metrics.dsb_average_precision(
        per_nucleus[0], predicted
    ) == pytest.approx(1 / 4)


def test_cli_evaluate_without_dsb_columns(dsb_run, tmp_path, capsys):
    _, _, run = dsb_run
    out_dir = tmp_path / "out"
    cli_helpers.run(
        ["evaluate", str(run), "--split", "all", "--dsb-instances", "none",
         "--latency-runs", "1", "--output", str(out_dir)]
    )  # fmt: skip
    header = capsys.readouterr().out
    assert "mIoU(K)" in header and "DSB-AP" not in header
    table = json.loads((out_dir / "levels.json").read_text())
    assert "dsb_ap" not in table[0] and "mean_iou_keras" in table[0]


def _read_rows(path, columns):
    """The rows of a CSV the evaluation wrote, after checking its header."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(columns)
        return list(reader)


def _own_predictions(model, folder):
    """Each level's thresholded prediction and truth of every sample, by hand."""
    return {
        (f"{stem}.png", level): (np.any(masks, axis=0), prob >= 0.5)
        for level, stem, prob, masks in _level_probabilities(model, folder)
    }


def test_per_image_scores_are_each_images_own_and_add_up_to_the_table(
    dsb_run, tmp_path
):
    folder, source, run = dsb_run
    result = runs.evaluate_run(
        run, split="all", source=source, latency_runs=1, per_image=True,
        tta="flips", instance_methods=(), output_dir=tmp_path / "eval",
    )  # fmt: skip
    assert result["per_image"] == tmp_path / "eval" / "per_image.csv"
    records = _read_rows(result["per_image"], evaluation.PER_IMAGE_COLUMNS)
    assert len(records) == len(SAMPLES) * 3
    expected = _own_predictions(runs.load_run_model(run), folder)
    assert {(r["image"], r["level"]) for r in records} == set(expected)
    for r in records:
        truth, pred = expected[(r["image"], r["level"])]
        tp = np.count_nonzero(truth & pred)
        assert int(r["true_pixels"]) == truth.sum()
        assert int(r["predicted_pixels"]) == pred.sum()
        union = truth.sum() + pred.sum() - tp
        assert float(r["iou"]) == pytest.approx(tp / union, abs=1e-9)
        assert float(r["precision"]) == pytest.approx(tp / pred.sum(), abs=1e-9)
        assert float(r["recall"]) == pytest.approx(tp / truth.sum(), abs=1e-9)
        split = field_metrics.error_split(truth, pred)
        assert {k: int(r[k]) for k in split} == split
        assert sum(split.values()) == union - tp
        assert 0.0 <= float(r["iou_tta"]) <= 1.0
    # The per-image counts pool into the table's global IoU.
    for row in result["rows"]:
        mine = [r for r in records if r["level"] == row["level"]]
        tps = [
            float(r["dice"]) * (int(r["true_pixels"]) + int(r["predicted_pixels"])) / 2
            for r in mine
        ]
        unions = [
            int(r["true_pixels"]) + int(r["predicted_pixels"]) - t
            for r, t in zip(mine, tps)
        ]
        assert sum(tps) / sum(unions) == pytest.approx(row["iou"], abs=1e-6)


def test_image_scores_on_hand_made_masks():
    empty = np.zeros((4, 4), bool)
    assert evaluation.image_scores(empty, empty) == {
        "iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0,
        "true_pixels": 0, "predicted_pixels": 0,
    }  # fmt: skip
    one = empty.copy()
    one[1, 1] = True
    alarm = evaluation.image_scores(empty, one)
    assert (alarm["iou"], alarm["precision"], alarm["recall"]) == (0.0, 0.0, None)
    missed = evaluation.image_scores(one, empty)
    assert (missed["iou"], missed["precision"], missed["recall"]) == (0.0, None, 0.0)
    truth = empty.copy()
    truth[:, :2] = True  # 8 pixels
    pred = empty.copy()
    pred[:, 1:3] = True  # 8 pixels, 4 of them right
    scores = evaluation.image_scores(truth, pred)
    assert scores["iou"] == pytest.approx(4 / 12)
    assert scores["dice"] == pytest.approx(8 / 16)
    assert scores["precision"] == scores["recall"] == 0.5


def test_cli_evaluate_per_image_names_the_worst_images(dsb_run, tmp_path, capsys):
    _, _, run = dsb_run
    out_dir = tmp_path / "out"
    cli_helpers.run(
        ["evaluate", str(run), "--split", "all", "--dsb-instances", "none",
         "--latency-runs", "1", "--output", str(out_dir), "--per-image"]
    )  # fmt: skip
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("Per-image scores:")][0]
    assert "lowest IoU at L2: " in line and "a0.png" in line and "b1.png" in line
    assert "wrong pixels (" in line and "% objects drawn too large" in line
    assert (out_dir / "per_image.csv").is_file()
    with pytest.raises(ku.InputError, match="Per-image scores are taken on whole"):
        runs.evaluate_run(run, split="all", at_training_size=True, per_image=True)


def test_tables_without_the_field_columns_read_back_unchanged(tmp_path):
    rows = [
        {
            "model": "unet", "level": "L2", "iou": 0.8, "dice": 0.88,
            "iou_per_image": 0.79, "params": 10, "flops": 100,
            "ms_per_image": 1.0, "images": 4, "scored_at": "native",
        }
    ]  # fmt: skip
    _, json_path = evaluation.write_table(rows, tmp_path)
    assert evaluation.read_table(json_path) == rows
    assert evaluation.format_table(rows).splitlines()[0].split()[-1] == "ms/image"


def test_threshold_sweep_scores_each_level_at_each_threshold(dsb_run, tmp_path):
    folder, source, run = dsb_run
    swept = [0.3, 0.5, 0.65]
    result = runs.evaluate_run(
        run, split="all", source=source, latency_runs=1, thresholds=swept,
        instance_methods=(), output_dir=tmp_path / "eval",
    )  # fmt: skip
    assert result["thresholds"] == tmp_path / "eval" / "thresholds.csv"
    rows = _read_rows(result["thresholds"], thresholds.SWEEP_COLUMNS)
    assert len(rows) == 3 * len(swept)
    own = {}
    for level, _, prob, masks in _level_probabilities(runs.load_run_model(run), folder):
        own.setdefault(level, []).append((np.any(masks, axis=0), prob))
    for row in rows:
        hits = union = 0
        for truth, prob in own[row["level"]]:
            pred = prob >= np.float32(float(row["threshold"]))
            hits += np.count_nonzero(truth & pred)
            union += np.count_nonzero(truth | pred)
        assert float(row["iou"]) == pytest.approx(hits / union, abs=1e-6)
    # At the evaluation's own threshold the sweep is the table.
    for table_row in result["rows"]:
        at = [r for r in rows if r["level"] == table_row["level"]]
        at = [r for r in at if float(r["threshold"]) == pytest.approx(0.5)][0]
        assert float(at["iou"]) == pytest.approx(table_row["iou"], abs=1e-6)
        best = result["best_thresholds"][table_row["level"]]
        assert best["iou"] == max(
            float(r["iou"]) for r in rows if r["level"] == table_row["level"]
        )
    with pytest.raises(ku.InputError, match="A threshold sweep scores whole images"):
        runs.evaluate_run(run, split="all", at_training_size=True, thresholds=[0.5])


def test_cli_evaluate_threshold_sweep_prints_the_best(dsb_run, tmp_path, capsys):
    _, _, run = dsb_run
    out_dir = tmp_path / "out"
    cli_helpers.run(
        ["evaluate", str(run), "--split", "all", "--dsb-instances", "none",
         "--latency-runs", "1", "--output", str(out_dir),
         "--thresholds", "0.4", "0.6"]
    )  # fmt: skip
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("Threshold sweep:")][0]
    assert "thresholds.csv" in line and "L1 0." in line and "accurate 0." in line
    assert "(at 0.5: 0." in line and "flatters" in line
    with pytest.raises(SystemExit) as exit_info:
        cli_helpers.run(["evaluate", str(run), "--thresholds", "1.5"])
    assert exit_info.value.code == 2
    assert "--thresholds" in capsys.readouterr().err


def test_cli_refuses_per_image_and_sweeps_on_volume_runs(tmp_path, capsys):
    from keras_unetpp.volumes import runs as volume_runs

    run = tmp_path / "volume_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": {"kind": volume_runs.KIND}}))
    for flags, message in (
        (["--per-image"], "--per-image is for 2D runs"),
        (["--thresholds", "0.4", "0.6"], "--thresholds is for 2D runs"),
    ):
        line = cli_helpers.error_line(capsys, ["evaluate", str(run), *flags])
        assert message in line
