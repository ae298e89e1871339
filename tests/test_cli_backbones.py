"""`keras-unetpp train --backbone ...`: the flags, run.json, the later steps."""

import json

import cli_helpers
import keras
import numpy as np
import pytest

from keras_unetpp import training

TINY = cli_helpers.TINY
_run = cli_helpers.run
_error = cli_helpers.error_line


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    _run(["synthetic", str(root), "--num-images", "16", "--image-size", "32", "32"])
    return root


def _trunk_file(folder):
    """A MobileNetV2 weights file whose batch norms hold distinctive values."""
    trunk = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    rng = np.random.default_rng(0)
    norms = {}
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = [rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()]
            layer.set_weights(values)
            norms[layer.name] = values
    path = folder / "trunk.weights.h5"
    trunk.save_weights(path)
    return path, norms


@pytest.mark.slow
def test_train_on_a_backbone_records_it_and_evaluate_export_predict_work(
    synthetic_dir, tmp_path, capsys
):
    weights, norms = _trunk_file(tmp_path)
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
            "--backbone",
            "mobilenetv2",
            "--encoder-weights",
            str(weights),
            "--freeze-encoder-epochs",
            "1",
            "--unfreeze-lr-factor",
            "0.5",
            *TINY,
        ]
    )
    config = json.loads((run / "run.json").read_text())
    assert config["model"]["backbone"] == "mobilenetv2"
    # The file's name only: run.json holds no absolute path.
    assert config["model"]["encoder_weights"] == "trunk.weights.h5"
    assert str(tmp_path) not in (run / "run.json").read_text()
    assert config["training"]["freeze_encoder_epochs"] == 1
    assert config["training"]["unfreeze_lr_factor"] == 0.5
    history = training.read_history(run)
    assert [row["encoder_frozen"] for row in history] == [1.0, 0.0]
    np.testing.assert_allclose(
        [row["learning_rate"] for row in history], [1e-3, 5e-4], rtol=1e-6
    )
    # The trunk came from the file: its batch norms (frozen throughout)
    # still hold the file's values in the saved model.
    # (A depth-2 model keeps the trunk up to its stride-4 tap.)
    last = keras.saving.load_model(run / "last.keras", compile=False)
    kept = [layer for layer in last.layers if layer.name in norms]
    assert len(kept) >= 5
    for layer in kept:
        for got, want in zip(layer.get_weights(), norms[layer.name], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6)

    capsys.readouterr()
    _run(["evaluate", str(run), "--latency-runs", "1"])
    table = json.loads((run / "evaluation" / "levels.json").read_text())
    assert [r["level"] for r in table] == ["L1", "L2", "accurate"]
    _run(["export", str(run), "--levels", "1", "2"])
    for level in (1, 2):
        assert (run / "export" / f"unetpp_l{level}" / "1" / "saved_model.pb").is_file()
    _run(["predict", str(run), str(synthetic_dir / "images"), "--output",
          str(tmp_path / "pred")])  # fmt: skip
    assert len(list((tmp_path / "pred" / "masks").iterdir())) == 16

    # Resuming with another backbone setting is refused.
    line = _error(
        capsys,
        ["train", "--data", str(synthetic_dir), "--output", str(run), "--epochs",
         "3", "--backbone", "mobilenetv2", *TINY],
    )  # fmt: skip
    assert "holds a run made with other settings" in line
    assert "model.encoder_weights: 'trunk.weights.h5' -> None" in line


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backbone", "resnet18"], "`backbone` must be None or one of"),
        (["--backbone", "vgg16", "--encoder-weights", "missing.weights.h5"],
         "the path of a weights file saved from the same keras.applications"),
        (["--backbone", "vgg16", "--architecture", "unet", "--no-deep-supervision"],
         "Backbones are for UNet++"),
        (["--encoder-weights", "imagenet"], "give `backbone` too"),
        (["--freeze-encoder-epochs", "2"], "give `backbone` too"),
        (["--backbone", "vgg16", "--unfreeze-lr-factor", "0.5"],
         "--unfreeze-lr-factor goes with --freeze-encoder-epochs"),
        (["--backbone", "vgg16", "--freeze-encoder-epochs", "1",
          "--unfreeze-lr-factor", "2"], "`unfreeze_lr_factor` must be a number"),
        (["--backbone", "vgg16", "--freeze-encoder-epochs", "-1"],
         "--freeze-encoder-epochs must be 0 or more"),
    ],
)  # fmt: skip
def test_bad_backbone_flags_exit_2_with_one_line(
    synthetic_dir, tmp_path, capsys, flags, message
):
    run = tmp_path / "run"
    line = _error(
        capsys,
        ["train", "--data", str(synthetic_dir), "--output", str(run), *TINY, *flags],
    )
    assert message in line
    assert not (run / "run.json").exists()


def test_a_backbone_too_shallow_for_the_depth_is_refused(
    synthetic_dir, tmp_path, capsys
):
    line = _error(
        capsys,
        ["train", "--data", str(synthetic_dir), "--output", str(tmp_path / "run"),
         "--backbone", "vgg16", *TINY, "--depth", "6", "--image-size", "64", "64"],
    )  # fmt: skip
    assert "`depth` can be at most 5. Received: depth=6" in line
