"""Tests of the `keras-unetpp` command: the whole job, errors, synthetic data."""

import csv
import json
import os
import subprocess
import sys

import cli_helpers
import cv2
import keras
import numpy as np
import pytest

from keras_unetpp import cli, training

TINY = cli_helpers.TINY
_run = cli_helpers.run
_error = cli_helpers.error_line


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    _run(["synthetic", str(root), "--num-images", "16", "--image-size", "32", "32"])
    return root


def test_synthetic_writes_a_labelled_reproducible_data_set(tmp_path, capsys):
    _run(
        [
            "synthetic",
            str(tmp_path / "a"),
            "--num-images",
            "8",
            "--image-size",
            "32",
            "48",
            "--val-fraction",
            "0.25",
            "--seed",
            "3",
        ]
    )
    assert "SYNTHETIC" in capsys.readouterr().out
    root = tmp_path / "a"
    assert "SYNTHETIC DATA" in (root / "README.txt").read_text()
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["suggested_split"] for r in rows].count("val") == 2
    for row in rows:
        image = cv2.imread(
            str(root / "images" / f"{row['stem']}.png"), cv2.IMREAD_UNCHANGED
        )
        mask = cv2.imread(
            str(root / "masks" / f"{row['stem']}.png"), cv2.IMREAD_UNCHANGED
        )
        assert image.shape == mask.shape == (32, 48)
        assert set(np.unique(mask)) <= {0, 255}
        assert float(row["foreground_fraction"]) == pytest.approx(
            np.mean(mask > 0), abs=1e-4
        )
        # Foreground is brighter than background on average: learnable.
        assert image[mask > 0].mean() > image[mask == 0].mean() + 20
    _run(
        [
            "synthetic",
            str(tmp_path / "b"),
            "--num-images",
            "8",
            "--image-size",
            "32",
            "48",
            "--val-fraction",
            "0.25",
            "--seed",
            "3",
        ]
    )
    for name in ("images", "masks"):
        for path in sorted((root / name).iterdir()):
            assert path.read_bytes() == (tmp_path / "b" / name / path.name).read_bytes()


@pytest.mark.slow
def test_train_evaluate_export_predict_end_to_end(synthetic_dir, tmp_path, capsys):
    run = tmp_path / "run"
    _run(
        [
            "train",
            "--data",
            str(synthetic_dir),
            "--output",
            str(run),
            "--epochs",
            "2",
            "--loss-weights",
            "0.5",
            "1",
            *TINY,
        ]
    )
    out = capsys.readouterr().out
    assert "best val_output_l2_iou" in out
    config = json.loads((run / "run.json").read_text())
    assert config["data"]["train_images"] == 12
    assert config["data"]["val_images"] == 4
    assert config["model"]["deep_supervision"] is True
    assert config["training"]["loss_weights"] == [0.5, 1.0]
    assert [r["epoch"] for r in training.read_history(run)] == [0, 1]
    assert (run / "best.keras").is_file() and (run / "last.keras").is_file()
    assert any(p.name.startswith("events.out") for p in (run / "logs").rglob("*"))

    _run(["evaluate", str(run), "--latency-runs", "2"])
    out = capsys.readouterr().out
    assert "accurate" in out and "levels.png" in out
    table = json.loads((run / "evaluation" / "levels.json").read_text())
    assert [r["level"] for r in table] == ["L1", "L2", "accurate"]
    assert all(r["images"] == 4 for r in table)
    assert (run / "evaluation" / "levels.png").read_bytes()[:4] == b"\x89PNG"

    _run(["export", str(run), "--levels", "1", "2", "--model-name", "cells"])
    assert (run / "export" / "cells_l1" / "1" / "saved_model.pb").is_file()
    assert (run / "export" / "cells_l2" / "1" / "saved_model.pb").is_file()
    assert "cells_l2" in (run / "export" / "models.config").read_text()

    # Images of other sizes and kinds: RGB 8-bit and gray 16-bit.
    images = tmp_path / "new"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "rgb.png"), rng.integers(0, 255, (45, 61, 3), np.uint8))
    cv2.imwrite(str(images / "gray16.png"), rng.integers(0, 65535, (70, 33), np.uint16))
    _run(
        [
            "predict",
            str(run),
            str(images),
            "--output",
            str(tmp_path / "pred"),
            "--overlays",
            "--level",
            "1",
        ]
    )
    for name, shape in (("rgb", (45, 61)), ("gray16", (70, 33))):
        mask = cv2.imread(
            str(tmp_path / "pred" / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED
        )
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        over = cv2.imread(str(tmp_path / "pred" / "overlays" / f"{name}.png"))
        assert over.shape == (*shape, 3)

    # The same command on a finished run with other settings is refused.
    line = _error(
        capsys,
        [
            "train",
            "--data",
            str(synthetic_dir),
            "--output",
            str(run),
            "--epochs",
            "2",
            *TINY[:-2],
            "--depth",
            "1",
            "--verbose",
            "0",
        ],
    )
    assert "holds a run made with other settings" in line
    assert "model.depth: 2 -> 1" in line


def _wait_for(predicate, timeout, process):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_train_resumes_after_a_kill_mid_epoch(synthetic_dir, tmp_path):
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(synthetic_dir),
        "--output",
        str(run),
        "--architecture",
        "unet",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "100",
        "--save-every",
        "2",
        "--no-tensorboard",
        *TINY,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_unetpp", *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        saved = _wait_for(lambda: training.read_state(run) is not None, 240, process)
    finally:
        process.kill()
        process.wait()
        log.close()
    assert saved, (tmp_path / "first.log").read_text()[-2000:]
    state = training.read_state(run)
    assert state["epoch"] == 0 and 0 < state["batch"] < 100  # killed mid-epoch
    assert not (run / "last.keras").exists()

    _run(argv)  # the same command again
    history = training.read_history(run)
    assert [row["epoch"] for row in history] == [0, 1]
    assert all("val_iou" in row for row in history)
    model = keras.saving.load_model(run / "last.keras")
    # Nothing lost, nothing done twice: exactly 2 x 100 optimizer steps.
    assert int(model.optimizer.iterations) == 200
    assert training.read_state(run)["epoch"] == 2


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("synthetic", "train", "evaluate", "predict", "export"):
        assert command in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--data", "x"], "required: --output"),
        (
            ["train", "--output", "o", "--data", "/nonexistent/data"],
            "Received: data_dir='/nonexistent/data'",
        ),
        (["train", "--output", "o"], "exactly one data source"),
        (["train", "--output", "o", "--images", "."], "needs a masks folder"),
        (
            ["train", "--output", "o", "--data", ".", "--image-size", "30", "30"],
            "a multiple of 2**depth = 16",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--epochs", "0"],
            "expected a positive integer: '0'",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--mask-map", "{1: 1}"],
            "not valid JSON",
        ),
        (
            [
                "train",
                "--output",
                "o",
                "--data",
                ".",
                "--architecture",
                "unet",
                "--deep-supervision",
            ],
            "deep supervision is a UNet++",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--channels", "2"],
            "invalid choice: 2",
        ),
        (["evaluate", "/nonexistent/run"], "is not a training run"),
        (["export", "."], "is not a training run"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (
            ["train", "--output", "o", "--data", ".", "--learning-rate", "inf"],
            "expected a finite positive number: 'inf'",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--learning-rate", "nan"],
            "expected a finite positive number: 'nan'",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--time-budget", "inf"],
            "expected a finite positive number: 'inf'",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--loss-weights", "nan", "1"],
            "expected a finite non-negative number: 'nan'",
        ),
        (
            ["train", "--output", "o", "--data", ".", "--loss-weights", "1", "inf"],
            "expected a finite non-negative number: 'inf'",
        ),
        (["synthetic", "o", "--val-fraction", "nan"], "expected a number in (0, 1)"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv, expected, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    line = _error(capsys, argv)
    assert line.startswith("keras-unetpp")
    assert expected in line


def test_predict_reports_missing_model_and_empty_folders(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": {}, "model": {}, "training": {}}))
    line = _error(capsys, ["predict", str(run), str(tmp_path)])
    assert "No saved model" in line
    line = _error(capsys, ["evaluate", str(run), "--model", "nope.keras"])
    assert "Received: model='nope.keras'" in line


@pytest.mark.slow
def test_train_under_mirrored_strategy(synthetic_dir, tmp_path):
    run = tmp_path / "mirrored"
    _run(
        [
            "train",
            "--data",
            str(synthetic_dir),
            "--output",
            str(run),
            "--epochs",
            "1",
            "--strategy",
            "mirrored",
            *TINY,
        ]
    )
    assert json.loads((run / "run.json").read_text())["training"]["strategy"] == (
        "mirrored"
    )
    model = keras.saving.load_model(run / "last.keras", compile=False)
    assert model.get_layer("x_0_1_bn1").synchronized is False  # one replica here
    assert not (run / ".workers").exists()  # the only process is the chief


def test_train_with_recomputed_nodes(synthetic_dir, tmp_path):
    run = tmp_path / "recompute"
    argv = ["train", "--data", str(synthetic_dir), "--output", str(run), *TINY]
    _run([*argv, "--epochs", "1"])
    assert not json.loads((run / "run.json").read_text())["training"]["recompute"]
    # A run may go on with --recompute (e.g. after running out of memory).
    _run([*argv, "--epochs", "2", "--recompute"])
    assert json.loads((run / "run.json").read_text())["training"]["recompute"]
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # header, epoch 1, epoch 2
    # The saved model is a plain UNet++ that loads without keras_unetpp.
    model = keras.saving.load_model(run / "last.keras", compile=False, safe_mode=True)
    assert "call" not in vars(model)


def test_train_with_xla(synthetic_dir, tmp_path, monkeypatch):
    compiled = []
    original = training.compile_model

    def spy(model, *args, **kwargs):
        original(model, *args, **kwargs)
        compiled.append(model.jit_compile)  # Keras' own record of the choice

    monkeypatch.setattr(training, "compile_model", spy)
    run = tmp_path / "xla"
    argv = ["train", "--data", str(synthetic_dir), "--output", str(run), *TINY]
    _run([*argv, "--epochs", "1", "--xla"])
    assert json.loads((run / "run.json").read_text())["training"]["xla"]
    # The same run may go on without XLA (and back): it trains the same model.
    _run([*argv, "--epochs", "2"])
    assert not json.loads((run / "run.json").read_text())["training"]["xla"]
    assert compiled == [True, False]
    history = list(csv.DictReader((run / "history.csv").open()))
    assert len(history) == 2
    assert all(np.isfinite(float(row["loss"])) for row in history)
    model = keras.saving.load_model(run / "last.keras", compile=False, safe_mode=True)
    assert model.count_params() > 0


@pytest.mark.parametrize(
    "error, code",
    [
        # A user's mistake found deep in the library: one line, status 2.
        (lambda: __import__("keras_unetpp").errors.InputError("bad value"), 2),
        # Anything else is a bug: its traceback shows (status 1), even a
        # ValueError raised inside TensorFlow or Keras.
        (lambda: ValueError("shape mismatch inside Keras"), None),
        (lambda: RuntimeError("unexpected"), None),
    ],
    ids=["input-error", "internal-value-error", "runtime-error"],
)
def test_only_input_errors_become_one_line(error, code, capsys, monkeypatch):
    from keras_unetpp import synthetic

    def fail(*args, **kwargs):
        raise error()

    monkeypatch.setattr(synthetic, "write_synthetic_dataset", fail)
    if code is None:
        with pytest.raises(type(error())):
            cli.main(["synthetic", "unused"])
    else:
        assert _error(capsys, ["synthetic", "unused"]).endswith("error: bad value")


def test_synthetic_refuses_a_folder_with_other_data(tmp_path, capsys):
    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    (real / "manifest.csv").write_text("stem,suggested_split\nnucleus_1,train\n")
    line = _error(capsys, ["synthetic", str(real), "--num-images", "4"])
    assert f"{str(real)!r} is not empty (it holds images, manifest.csv)" in line
    line = _error(capsys, ["synthetic", str(real), "--num-images", "4", "--overwrite"])
    assert "is not a synthetic data set" in line and "manifest.csv" in line
    assert (real / "manifest.csv").read_text().startswith("stem,suggested_split\n")
    assert sorted(p.name for p in real.iterdir()) == ["images", "manifest.csv"]
    assert not list((real / "images").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]  # no leftovers
    # A synthetic data set is refused too, unless --overwrite replaces it.
    fake = tmp_path / "fake"
    _run(["synthetic", str(fake), "--num-images", "6", "--image-size", "16", "16"])
    line = _error(capsys, ["synthetic", str(fake), "--num-images", "4"])
    assert "--overwrite" in line
    _run(
        [
            "synthetic",
            str(fake),
            "--num-images",
            "4",
            "--image-size",
            "16",
            "16",
            "--overwrite",
        ]
    )
    assert len(list((fake / "images").iterdir())) == 4
    assert len((fake / "manifest.csv").read_text().splitlines()) == 1 + 4
    # ... but not once something else has been put into it.
    (fake / "images" / "real_cell.png").write_bytes(b"")
    line = _error(capsys, ["synthetic", str(fake), "--overwrite"])
    assert "is not a synthetic data set" in line
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    _run(
        [
            "synthetic",
            str(tmp_path / "empty"),
            "--num-images",
            "2",
            "--image-size",
            "16",
            "16",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "fake", "real"]


def test_a_diverged_run_exits_3_with_one_line(
    synthetic_dir, tmp_path, capsys, monkeypatch
):
    from keras_unetpp import runs

    def diverge(*args, **kwargs):
        raise training.TrainingDiverged(
            "Training diverged: the training loss is nan in epoch 2, batch 1.\nTry ..."
        )

    monkeypatch.setattr(runs, "train_run", diverge)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "train",
                "--data",
                str(synthetic_dir),
                "--output",
                str(tmp_path / "run"),
                *TINY,
            ]
        )
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        "keras-unetpp train: error: Training diverged: the training loss is nan "
        "in epoch 2, batch 1. Try ..."
    ]
    # Other runtime errors are bugs: they keep their traceback.
    monkeypatch.setattr(runs, "train_run", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(
            [
                "train",
                "--data",
                str(synthetic_dir),
                "--output",
                str(tmp_path / "run"),
                *TINY,
            ]
        )


def test_train_run_refuses_non_finite_numbers_before_writing_run_json(
    synthetic_dir, tmp_path
):
    from keras_unetpp import runs, sources
    from keras_unetpp.errors import InputError

    source = sources.data_source(data_dir=str(synthetic_dir))
    for kwargs in (
        {"learning_rate": float("inf")},
        {"learning_rate": float("nan")},
        {"time_budget": float("inf")},
        {"loss_weights": [float("nan"), 1.0]},
    ):
        with pytest.raises(InputError, match="finite"):
            runs.train_run(
                tmp_path / "run",
                source,
                image_size=(32, 32),
                depth=2,
                filters=4,
                epochs=1,
                tensorboard=False,
                verbose=0,
                **kwargs,
            )
        assert not (tmp_path / "run" / "run.json").exists()


def test_zoom_settings_are_recorded_checked_and_bound_to_a_resumed_run(
    synthetic_dir, tmp_path, capsys
):
    train = ["train", "--data", str(synthetic_dir), "--resize-mode", "crop", *TINY]
    _run([*train, "--output", str(tmp_path / "still"), "--scale-range", "none"])
    config = json.loads((tmp_path / "still" / "run.json").read_text())
    assert config["data"]["augment"] is True
    assert config["data"]["scale_range"] is None
    _run([*train, "--output", str(tmp_path / "zoom"), "--scale-range", "0.9", "1.1"])
    config = json.loads((tmp_path / "zoom" / "run.json").read_text())
    assert config["data"]["scale_range"] == [0.9, 1.1]
    assert config["data"]["mask_interpolation"] == "nearest"
    _run(
        [*train, "--output", str(tmp_path / "soft"), "--mask-interpolation", "bilinear"]
    )
    config = json.loads((tmp_path / "soft" / "run.json").read_text())
    assert config["data"]["mask_interpolation"] == "bilinear"
    line = _error(capsys, [*train, "--output", str(tmp_path / "soft")])
    assert "data.mask_interpolation: 'bilinear' -> 'nearest'" in line
    # A run of other settings is refused, naming the setting.
    line = _error(capsys, [*train, "--output", str(tmp_path / "zoom")])
    assert "data.scale_range: [0.9, 1.1] -> [0.8, 1.25]" in line
    # A run from before the setting was recorded used the default zoom: the
    # same command (no --scale-range) resumes it.
    _run([*train, "--output", str(tmp_path / "old")])
    path = tmp_path / "old" / "run.json"
    config = json.loads(path.read_text())
    assert config["data"].pop("scale_range") == [0.8, 1.25]
    assert config["data"].pop("mask_interpolation") == "nearest"
    path.write_text(json.dumps(config))
    _run([*train, "--output", str(tmp_path / "old"), "--epochs", "11"])
    resumed = json.loads(path.read_text())["data"]
    assert resumed["scale_range"] == [0.8, 1.25]
    assert resumed["mask_interpolation"] == "nearest"
    for values, expected in (
        (["1.2", "0.9"], "LOW <= HIGH"),
        (["0.9"], "LOW HIGH (two numbers) or 'none'"),
        (["0", "1"], "a finite positive number"),
        (["nan", "1"], "a finite positive number"),
    ):
        out = str(tmp_path / "bad")
        line = _error(capsys, [*train, "--output", out, "--scale-range", *values])
        assert "--scale-range" in line and expected in line, line
        assert not (tmp_path / "bad" / "run.json").exists()
