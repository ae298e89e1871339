"""The command line's data splits and evaluation sources (issue 12).

`train` never invents a split the user gave (a manifest's own column, a
validation folder, no validation at all), writes `splits.csv`, and without
validation keeps the epoch of lowest training loss; `evaluate` scores any
labelled folder or split at native resolution and says what it scored.
"""

import csv
import json

import cli_helpers
import keras
import pytest

import keras_unetpp as ku
from keras_unetpp import training
from keras_unetpp.synthetic import write_synthetic_dataset

TINY = [*cli_helpers.TINY, "--no-tensorboard"]
_run = cli_helpers.run
_error = cli_helpers.error_line


def _retina_like(root, num_images=10, test=3):
    """Synthetic images with a retina-style manifest: original_split."""
    write_synthetic_dataset(root, num_images=num_images, image_size=(32, 32))
    stems = [f"synthetic_{k:04d}" for k in range(num_images)]
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stem", "original_split"])
        for k, stem in enumerate(stems):
            writer.writerow([stem, "test" if k >= num_images - test else "training"])
    return root, stems


def _splits(run):
    with open(run / "splits.csv", newline="") as f:
        return [(row["stem"], row["split"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def retina(tmp_path_factory):
    return _retina_like(tmp_path_factory.mktemp("retina") / "data")


def test_train_refuses_a_manifest_without_the_split_column(retina, tmp_path, capsys):
    root, _ = retina
    line = _error(
        capsys, ["train", "--data", str(root), "--output", str(tmp_path / "run"), *TINY]
    )
    assert "no column 'suggested_split'" in line
    assert "['stem', 'original_split']" in line
    assert "--split-column" in line and "--split-map" in line
    assert not (tmp_path / "run").exists()  # nothing was trained
    # Naming the column is not enough: "training" is not a split name.
    line = _error(
        capsys,
        [
            "train",
            "--data",
            str(root),
            "--output",
            str(tmp_path / "run"),
            "--split-column",
            "original_split",
            *TINY,
        ],
    )
    assert "values ['training']" in line
    # A train/test manifest needs a decision about validation.
    line = _error(
        capsys,
        [
            "train",
            "--data",
            str(root),
            "--output",
            str(tmp_path / "run"),
            "--split-column",
            "original_split",
            "--split-map",
            "training=train",
            "test=test",
            *TINY,
        ],
    )
    assert "no val images" in line and "--no-val" in line


@pytest.mark.slow
def test_no_val_with_a_split_map_trains_on_train_only_and_keeps_the_lowest_loss(
    retina, tmp_path, capsys
):
    root, stems = retina
    run = tmp_path / "run"
    _run(
        [
            "train",
            "--data",
            str(root),
            "--output",
            str(run),
            "--split-column",
            "original_split",
            "--split-map",
            "training=train",
            "test=test",
            "--no-val",
            "--epochs",
            "2",
            *TINY,
        ]
    )
    out = capsys.readouterr().out
    assert "best training loss (lowest; no validation)" in out
    config = json.loads((run / "run.json").read_text())
    assert config["data"]["train_images"] == 7 and config["data"]["val_images"] == 0
    assert config["data"]["source"]["split"] == {
        "method": "manifest",
        "manifest": str(root / "manifest.csv"),
        "column": "original_split",
        "map": {"training": "train", "test": "test"},
    }
    assert "no validation" in config["data"]["split"]
    # splits.csv: the 3 official test images never went into training.
    assert _splits(run) == [
        (s, "test" if k >= 7 else "train") for k, s in enumerate(stems)
    ]
    history = training.read_history(run)
    assert len(history) == 2 and all("val_loss" not in row for row in history)
    best_epoch = min(history, key=lambda row: row["loss"])
    state = training.read_state(run)
    assert state["best"] == pytest.approx(best_epoch["loss"], rel=1e-6)
    assert (run / "best.keras").is_file()
    # evaluate: no val split to default to, so it says so; --split test works.
    line = _error(capsys, ["evaluate", str(run)])
    assert "has no validation split" in line and "--split" in line
    _run(["evaluate", str(run), "--split", "test", "--latency-runs", "1"])
    out = capsys.readouterr().out
    assert "the test split of the folder" in out and ": 3 images" in out
    table = json.loads((run / "evaluation" / "levels.json").read_text())
    assert all(row["images"] == 3 and row["scored_at"] == "native" for row in table)


@pytest.mark.slow
def test_train_with_a_validation_folder(tmp_path, capsys):
    train_dir = write_synthetic_dataset(
        tmp_path / "train", num_images=8, image_size=(32, 32)
    )
    (train_dir / "manifest.csv").unlink()
    val_dir = write_synthetic_dataset(
        tmp_path / "val", num_images=3, image_size=(40, 36), seed=5
    )
    run = tmp_path / "run"
    _run(
        [
            "train",
            "--data",
            str(train_dir),
            "--output",
            str(run),
            "--val-data",
            str(val_dir),
            "--epochs",
            "1",
            *TINY,
        ]
    )
    assert "best val_output_l2_iou" in capsys.readouterr().out
    config = json.loads((run / "run.json").read_text())
    assert (config["data"]["train_images"], config["data"]["val_images"]) == (8, 3)
    assert config["data"]["source"]["val_source"]["images"] == str(val_dir / "images")
    rows = _splits(run)
    assert [split for _, split in rows] == ["train"] * 8 + ["val"] * 3
    _run(["evaluate", str(run), "--latency-runs", "1"])
    out = capsys.readouterr().out
    assert f"the val split: the folder {val_dir}: 3 images" in out


def _fake_run(run, source_dir):
    """A run folder as `train` leaves it (run.json, best.keras), untrained."""
    run.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    ku.build(2, (None, None, 1), filters=(4, 8, 16), deep_supervision=True).save(
        run / "best.keras"
    )
    source = {
        "kind": "folder",
        "images": str(source_dir / "images"),
        "masks": str(source_dir / "masks"),
        "split": {"method": "random", "val_fraction": 0.25, "seed": 0},
        "val_source": None,
        "validation": True,
    }
    config = {
        "data": {
            "source": source,
            "image_size": [32, 32],
            "channels": 1,
            "num_classes": 1,
            "resize_mode": "resize",
            "batch_size": 2,
            "augment": False,
            "seed": 0,
        },
        "model": {},
        "training": {},
    }
    (run / "run.json").write_text(json.dumps(config))
    return run


def test_evaluate_scores_another_labelled_folder(retina, tmp_path, capsys):
    root, _ = retina
    own = write_synthetic_dataset(tmp_path / "own", num_images=4, image_size=(32, 32))
    run = _fake_run(tmp_path / "run", own)
    _run(
        [
            "evaluate",
            str(run),
            "--data",
            str(root),
            "--latency-runs",
            "1",
            "--output",
            str(tmp_path / "other"),
        ]
    )
    out = capsys.readouterr().out
    assert f"every image of the folder {root}: 10 images, at native resolution" in out
    table = json.loads((tmp_path / "other" / "levels.json").read_text())
    assert [row["level"] for row in table] == ["L1", "L2", "accurate"]
    assert all(row["images"] == 10 for row in table)
    scored = json.loads((tmp_path / "other" / "scored.json").read_text())
    assert scored["split"] == "all" and scored["images"] == 10
    # One split of it, through its own manifest column.
    _run(
        [
            "evaluate",
            str(run),
            "--data",
            str(root),
            "--split",
            "test",
            "--split-column",
            "original_split",
            "--split-map",
            "training=train",
            "test=test",
            "--latency-runs",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "the test split of the folder" in out and ": 3 images" in out
    # Folders given as --images/--masks; the run's own val split by default.
    _run(
        [
            "evaluate",
            str(run),
            "--images",
            str(own / "images"),
            "--masks",
            str(own / "masks"),
            "--latency-runs",
            "1",
            "--at-training-size",
        ]
    )
    assert "4 images, at the training size 32x32" in capsys.readouterr().out
    _run(["evaluate", str(run), "--latency-runs", "1"])
    assert "the val split of the folder" in capsys.readouterr().out
    line = _error(capsys, ["evaluate", str(run), "--split-column", "x"])
    assert "go with --data" in line


def _refused_then_trained(capsys, data, run, *fix):
    """`train` on `data` refused without the flags `fix`, then run with them.

    Returns the refusal's line and the source recorded in the run.
    """
    argv = ["train", "--data", data, "--output", str(run), "--epochs", "1"]
    argv += ["--val-fraction", "0.5", *cli_helpers.TINY]
    line = cli_helpers.error_line(capsys, argv)
    assert not run.exists()
    cli_helpers.run(argv + list(fix))
    return line, json.loads((run / "run.json").read_text())["data"]["source"]


def test_jpeg_masks_train_with_mask_threshold_and_evaluate_reads_them_alike(
    tmp_path, capsys
):
    from test_sources import _jpeg_masks

    _jpeg_masks(tmp_path / "jpeg", count=8, size=(32, 32))
    jpeg, run = str(tmp_path / "jpeg"), tmp_path / "run"
    # Without the rule the JPEG noise is refused, with the flag to use.
    line, source = _refused_then_trained(capsys, jpeg, run, "--mask-threshold", "127")
    assert "00.jpg' has values" in line and "--mask-threshold" in line
    assert source["mask_threshold"] == 127.0

    def scores(*extra):
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        common = ["--latency-runs", "1", "--dsb-instances", "none"]
        cli_helpers.run(["evaluate", str(run), *common, "--output", str(out), *extra])
        return [row["iou"] for row in json.loads((out / "levels.json").read_text())]

    own = scores("--split", "val")  # the run's masks, by its recorded rule
    assert len(own) == 3
    # Another folder, by default read as the run's were: the same as the rule
    # given again, and not as another rule reads it.
    inherited = scores("--data", jpeg)
    assert inherited == scores("--data", jpeg, "--mask-threshold", "127")
    assert inherited != scores(
        "--data", jpeg, "--mask-threshold", "127", "--invert-mask"
    )
    line = cli_helpers.error_line(
        capsys, ["evaluate", str(run), "--mask-threshold", "3"]
    )
    assert "go with --data" in line


def test_masks_with_a_suffix_from_the_command_line(tmp_path, capsys):
    from test_sources import _suffixed_copy

    data = write_synthetic_dataset(
        tmp_path / "plain", num_images=6, image_size=(32, 32)
    )
    root = str(_suffixed_copy(data, tmp_path / "suffixed"))
    run = tmp_path / "run"
    line, source = _refused_then_trained(capsys, root, run, "--mask-suffix", "_mask")
    assert "have no image" in line and "(--mask-suffix _mask)" in line
    assert source["mask_suffix"] == "_mask"
    out = tmp_path / "evaluation"
    common = ["--latency-runs", "1", "--dsb-instances", "none", "--output", str(out)]
    cli_helpers.run(["evaluate", str(run), *common])
    assert json.loads((out / "scored.json").read_text())["images"] == 3
    line = cli_helpers.error_line(capsys, ["evaluate", str(run), "--mask-suffix", "_m"])
    assert "--mask-suffix goes with --data" in line
