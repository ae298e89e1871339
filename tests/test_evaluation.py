"""Tests of keras_unetpp.evaluation: the per-level table, files and plot."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp as ku
from keras_unetpp import evaluation
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
        {"model": "unetpp", "level": f"L{k}", "iou": 0.5 + 0.1 * k,
         "dice": 0.6 + 0.1 * k, "iou_per_image": 0.55 + 0.1 * k,
         "params": 1000 * 4**k, "flops": 10**9 * k, "ms_per_image": 2.0 * k,
         "images": 86}
        for k in (1, 2, 3)
    ] + [
        {"model": "unetpp", "level": "accurate", "iou": 0.85, "dice": 0.9,
         "iou_per_image": 0.86, "params": 64001, "flops": 3 * 10**9,
         "ms_per_image": 6.5, "images": 86},
        {"model": "unet", "level": "L3", "iou": 0.78, "dice": 0.86,
         "iou_per_image": 0.8, "params": 50000, "flops": 2 * 10**9,
         "ms_per_image": 4.0, "images": 86},
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
    assert lines[0].split() == ["model", "level", "IoU", "Dice", "IoU/img", "params",
                                "GFLOPs", "ms/image"]
    assert len(lines) == 6
    assert len({len(line) for line in lines}) == 1
    # 16,000 parameters and 2 GFLOPs for L2, as given.
    assert lines[2].split() == ["unetpp", "L2", "0.7000", "0.8000", "0.7500",
                                "16,000", "2.000", "4.00"]


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
