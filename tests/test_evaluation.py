"""Tests of keras_unetpp.evaluation: the per-level table, files and plot."""

import csv
import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp as ku
from keras_unetpp import evaluation, prediction, runs, sources
from keras_unetpp.description import logits_name
from keras_unetpp.synthetic import synthetic_sample

SIZE = 32


@pytest.fixture(scope="module")
def val_data():
    rng = np.random.default_rng(0)
    images, masks = zip(*(synthetic_sample(rng, (SIZE, SIZE)) for _ in range(6)))
    x = (np.stack(images)[..., None] / 255.0).astype("float32")
    y = (np.stack(masks)[..., None] > 0).astype("float32")
    return x, y


def _iou(model, x, y, **kwargs):
    metric = ku.IoUScore(**kwargs)
    metric.update_state(y, model.predict(x, verbose=0))
    return float(metric.result())


def _dice(model, x, y):
    metric = ku.DiceScore()
    metric.update_state(y, model.predict(x, verbose=0))
    return float(metric.result())


def test_evaluate_levels_matches_each_pruned_model(val_data):
    x, y = val_data
    keras.utils.set_random_seed(1)
    model = ku.build(2, (None, None, 1), filters=(4, 8, 16), deep_supervision=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # 4 + 2
    rows = evaluation.evaluate_levels(model, dataset, (SIZE, SIZE), latency_runs=2)
    assert [row["level"] for row in rows] == ["L1", "L2", "accurate"]
    subs = {
        "L1": ku.prune(model, 1),
        "L2": ku.prune(model, 2),
        "accurate": ku.inference_model(model, "accurate"),
    }
    for row in rows:
        sub = subs[row["level"]]
        assert row["model"] == "unetpp"
        assert row["images"] == 6
        assert row["iou"] == pytest.approx(_iou(sub, x, y), abs=1e-5)
        assert row["dice"] == pytest.approx(_dice(sub, x, y), abs=1e-5)
        assert row["iou_per_image"] == pytest.approx(
            _iou(sub, x, y, average="per_image"), abs=1e-5
        )
        assert row["params"] == sub.count_params()
        assert row["flops"] == ku.count_flops(sub, SIZE, SIZE)
        assert row["ms_per_image"] > 0
        assert row["scored_at"] == f"{SIZE}x{SIZE}"
    # Pruning removes work: L1 is smaller and cheaper than L2.
    assert rows[0]["params"] < rows[1]["params"]
    assert rows[0]["flops"] < rows[1]["flops"]


def test_evaluate_levels_gives_one_row_for_a_single_head_model(val_data):
    x, y = val_data
    model = ku.build_unet(2, (None, None, 1), filters=(4, 8, 16))
    masks = {"output_l2": y}  # a dict of targets, as deep supervision feeds
    dataset = tf.data.Dataset.from_tensor_slices((x, masks)).batch(3)
    rows = evaluation.evaluate_levels(model, dataset, (SIZE, SIZE), latency_runs=1)
    assert len(rows) == 1
    assert (rows[0]["model"], rows[0]["level"]) == ("unet", "L2")
    assert rows[0]["iou"] == pytest.approx(_iou(model, x, y), abs=1e-5)


def test_evaluate_levels_rejects_an_empty_dataset(val_data):
    x, y = val_data
    model = ku.build_unet(2, (None, None, 1), filters=(4, 8, 16))
    empty = tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(2)
    with pytest.raises(ValueError, match="empty"):
        evaluation.evaluate_levels(model, empty, (SIZE, SIZE))


def _rows():
    return [
        {
            "model": "unetpp",
            "level": f"L{k}",
            "iou": 0.5 + 0.1 * k,
            "dice": 0.6 + 0.1 * k,
            "iou_per_image": 0.55 + 0.1 * k,
            "params": 1000 * 4**k,
            "flops": 10**9 * k,
            "ms_per_image": 2.0 * k,
            "images": 86,
            "scored_at": "native",
        }
        for k in (1, 2, 3)
    ] + [
        {
            "model": "unetpp",
            "level": "accurate",
            "iou": 0.85,
            "dice": 0.9,
            "iou_per_image": 0.86,
            "params": 64001,
            "flops": 3 * 10**9,
            "ms_per_image": 6.5,
            "images": 86,
            "scored_at": "native",
        },
        {
            "model": "unet",
            "level": "L3",
            "iou": 0.78,
            "dice": 0.86,
            "iou_per_image": 0.8,
            "params": 50000,
            "flops": 2 * 10**9,
            "ms_per_image": 4.0,
            "images": 86,
            "scored_at": "native",
        },
    ]


def test_write_table_writes_csv_and_json_that_read_back(tmp_path):
    rows = _rows()
    csv_path, json_path = evaluation.write_table(rows, tmp_path / "out")
    assert evaluation.read_table(json_path) == rows
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == evaluation.COLUMNS
        table = list(reader)
    assert [r["level"] for r in table] == ["L1", "L2", "L3", "accurate", "L3"]
    assert float(table[3]["iou"]) == 0.85
    assert json.loads(json_path.read_text())[4]["model"] == "unet"


def test_format_table_has_a_header_and_one_aligned_line_per_row():
    lines = evaluation.format_table(_rows()).splitlines()
    assert lines[0].split() == [
        "model",
        "level",
        "IoU",
        "Dice",
        "IoU/img",
        "params",
        "GFLOPs",
        "ms/image",
    ]
    assert len(lines) == 6
    assert len({len(line) for line in lines}) == 1
    # 16,000 parameters and 2 GFLOPs for L2, as given.
    assert lines[2].split() == [
        "unetpp",
        "L2",
        "0.7000",
        "0.8000",
        "0.7500",
        "16,000",
        "2.000",
        "4.00",
    ]


def test_plot_tradeoff_writes_a_png(tmp_path):
    path = evaluation.plot_tradeoff(_rows(), tmp_path / "plot" / "levels.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    with pytest.raises(ValueError, match="Nothing to plot"):
        evaluation.plot_tradeoff([], tmp_path / "empty.png")


def test_measure_latency_is_positive_and_checks_its_arguments():
    model = ku.prune(ku.build(1, (None, None, 1), filters=(2, 4)), 1)
    assert evaluation.measure_latency(model, (16, 16, 1), batch_size=2, runs=2) > 0
    with pytest.raises(ValueError, match="Received: runs=0"):
        evaluation.measure_latency(model, (16, 16, 1), runs=0)
    with pytest.raises(ValueError, match="Received: batch_size=-1"):
        evaluation.measure_latency(model, (16, 16, 1), batch_size=-1)


# Native-resolution evaluation: whole images of any size against the masks
# as stored, checked against an independent NumPy computation.

ODD_SIZES = ((37, 53), (64, 90), (41, 35))
TRAIN_SIZE = (32, 32)


def _odd_folder(root, sizes=ODD_SIZES, seed=0):
    """images/ (gray 8-bit) and masks/ (0/255) PNGs of odd sizes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, (h, w) in enumerate(sizes):
        image, mask = synthetic_sample(rng, (h, w))
        cv2.imwrite(str(root / "images" / f"s{k}.png"), image)
        cv2.imwrite(
            str(root / "masks" / f"s{k}.png"),
            np.where(mask > 0, 255, 0).astype(np.uint8),
        )
    return root


def _tiny_model(seed=3, **kwargs):
    keras.utils.set_random_seed(seed)
    model = ku.build(
        2, (None, None, 1), filters=(4, 8, 16), deep_supervision=True, **kwargs
    )
    # Fixed, non-trivial weights: centre each head's logits on a sample image
    # (about half of the pixels foreground) and sharpen them; the two heads
    # then disagree.
    image = synthetic_sample(np.random.default_rng(9), (48, 48))[0]
    image = (image[None, ..., None] / 255.0).astype("float32")
    for level in (1, 2):
        layer = model.get_layer(logits_name(level))
        logits = keras.Model(model.input, layer.output)(image).numpy()
        kernel, bias = layer.get_weights()
        bias = bias - np.median(logits)
        layer.set_weights([kernel * 4.0, bias * 4.0])
    return model


def _numpy_scores(model, folder, image_size):
    """IoU, Dice, mean IoU per image of a single-output model, by hand.

    The probabilities are what `keras-unetpp predict` and the model's
    SavedModel return (`predict_probabilities`): in crop mode
    (`image_size=None`) the image padded to the model's own stride, `2**L`
    for `prune(model, L)`.
    """
    inter = union = area = 0
    per_image = []
    for path in sorted((folder / "images").iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
        truth = cv2.imread(str(folder / "masks" / path.name), cv2.IMREAD_UNCHANGED) > 0
        probs = prediction.predict_probabilities(model, image[..., None], image_size)
        assert probs.shape[:2] == truth.shape  # native size
        pred = probs[..., 0] >= 0.5  # the package's rule
        i, u = np.sum(pred & truth), np.sum(pred | truth)
        inter, union, area = inter + i, union + u, area + pred.sum() + truth.sum()
        per_image.append(i / u if u else 1.0)
    return inter / union, 2 * inter / area, float(np.mean(per_image))


@pytest.mark.parametrize("policy", ["resize", "crop"])
def test_native_evaluation_equals_numpy_on_odd_sizes(tmp_path, policy):
    folder = _odd_folder(tmp_path / "data")
    model = _tiny_model()
    image_size = TRAIN_SIZE if policy == "resize" else None
    source = sources.data_source(data_dir=folder, required_splits=())
    samples, count = sources.source_samples(source, "all", channels=1)
    assert count == len(ODD_SIZES)
    rows = evaluation.evaluate_levels_native(
        model, samples, image_size, latency_image_size=TRAIN_SIZE, latency_runs=1
    )
    assert [row["level"] for row in rows] == ["L1", "L2", "accurate"]
    subs = {
        "L1": ku.prune(model, 1),
        "L2": ku.prune(model, 2),
        "accurate": ku.inference_model(model, "accurate"),
    }
    for row in rows:
        iou, dice, iou_per_image = _numpy_scores(subs[row["level"]], folder, image_size)
        assert 0.01 < iou < 0.99  # a non-trivial prediction
        assert row["iou"] == pytest.approx(iou, abs=1e-3)
        assert row["dice"] == pytest.approx(dice, abs=1e-3)
        assert row["iou_per_image"] == pytest.approx(iou_per_image, abs=1e-3)
        assert row["images"] == len(ODD_SIZES)
        assert row["scored_at"] == "native"
        assert row["flops"] == ku.count_flops(subs[row["level"]], *TRAIN_SIZE)


def _fake_run(run, model, resize_mode, source):
    """A run folder as `train` leaves it, without training."""
    run.mkdir(parents=True)
    model.save(run / "best.keras")
    config = {
        "data": {
            "source": source,
            "image_size": list(TRAIN_SIZE),
            "channels": 1,
            "num_classes": 1,
            "resize_mode": resize_mode,
            "batch_size": 2,
            "augment": False,
            "seed": 0,
        },
        "model": {},
        "training": {},
    }
    (run / "run.json").write_text(json.dumps(config))
    return run


def test_crop_mode_run_scores_whole_images_not_the_centre_crop(tmp_path):
    folder = _odd_folder(tmp_path / "data", sizes=((64, 90), (48, 70)))
    source = sources.data_source(data_dir=folder, required_splits=())
    run = _fake_run(tmp_path / "run", _tiny_model(), "crop", source)
    result = runs.evaluate_run(run, split="all", source=source, latency_runs=1)
    model = runs.load_run_model(run)
    expected = _numpy_scores(ku.prune(model, 2), folder, None)
    row = result["rows"][1]
    assert row["level"] == "L2"
    assert row["iou"] == pytest.approx(expected[0], abs=1e-3)
    assert "native resolution" in result["resolution"]
    # The old score: the centre 32x32 crop only; a different number.
    old = runs.evaluate_run(
        run,
        split="all",
        source=source,
        latency_runs=1,
        at_training_size=True,
        output_dir=tmp_path / "old",
    )
    assert old["rows"][1]["scored_at"] == "32x32"
    assert abs(old["rows"][1]["iou"] - row["iou"]) > 1e-3
    scored = json.loads((run / "evaluation" / "scored.json").read_text())
    assert scored["images"] == 2 and scored["split"] == "all"


@pytest.mark.parametrize("policy", ["resize", "crop"])
def test_native_evaluation_of_a_logits_model_equals_predict(tmp_path, policy):
    """Logits heads: each level scored as predict and its SavedModel score it.

    Before, the heads' logits were concatenated and given one softmax over
    all heads' channels, then a second sigmoid in the metrics.
    """
    folder = _odd_folder(tmp_path / "data")
    model = _tiny_model(output_activation=None)
    assert ku.describe(model).from_logits
    image_size = TRAIN_SIZE if policy == "resize" else None
    source = sources.data_source(data_dir=folder, required_splits=())
    samples, _ = sources.source_samples(source, "all", channels=1)
    rows = evaluation.evaluate_levels_native(
        model, samples, image_size, latency_image_size=TRAIN_SIZE, latency_runs=1
    )
    subs = {
        "L1": ku.prune(model, 1),
        "L2": ku.prune(model, 2),
        # The accurate SavedModel: the mean of the logits, then the sigmoid.
        "accurate": ku.inference_model(model, "accurate"),
    }
    for row in rows:
        iou, dice, _ = _numpy_scores(subs[row["level"]], folder, image_size)
        assert row["iou"] == pytest.approx(iou, abs=1e-6), row["level"]
        assert row["dice"] == pytest.approx(dice, abs=1e-6), row["level"]
        assert 0.01 < row["iou"] < 0.99, row  # a non-trivial prediction
