"""Choosing the heads' loss: `train(..., loss=...)` and `keras-unetpp train --loss`."""

import json

import cli_helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp as ku
from keras_unetpp import cli, imbalance_losses, training
from keras_unetpp.errors import InputError
from keras_unetpp.synthetic import synthetic_sample

SIZE = 32


def _arrays(count, seed):
    rng = np.random.default_rng(seed)
    images, masks = zip(*(synthetic_sample(rng, (SIZE, SIZE)) for _ in range(count)))
    x = (np.stack(images)[..., None] / 255.0).astype("float32")
    y = (np.stack(masks)[..., None] > 0).astype("float32")
    return x, y


def _np_tversky(y, p, alpha, beta, smooth=1.0):
    y, p = y.reshape(len(y), -1).astype(np.float64), p.reshape(len(p), -1)
    tp = (y * p).sum(1)
    index = (tp + smooth) / (
        tp + alpha * (y * (1 - p)).sum(1) + beta * ((1 - y) * p).sum(1) + smooth
    )
    return 1 - index


def _np_focal(y, p, alpha=0.25, gamma=2.0):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    term = -(
        alpha * y * (1 - p) ** gamma * np.log(p)
        + (1 - alpha) * (1 - y) * p**gamma * np.log(1 - p)
    )
    return term.reshape(len(y), -1).mean(1)


def test_train_puts_the_chosen_loss_on_each_head(tmp_path):
    x, y = _arrays(8, seed=0)
    names = ["output_l1", "output_l2"]
    ds = tf.data.Dataset.from_tensor_slices((x, {n: y for n in names})).batch(4)
    keras.utils.set_random_seed(0)
    model = ku.build(
        depth=2, input_shape=(None, None, 1), filters=(4, 8, 16), deep_supervision=True
    )
    loss = {
        "output_l1": "focal",
        "output_l2": {"name": "tversky", "alpha": 0.8, "beta": 0.2},
    }
    training.train(
        model, ds, None, tmp_path, epochs=1, tensorboard=False, verbose=0,
        loss=loss,
    )  # fmt: skip
    assert isinstance(model.loss["output_l1"], ku.FocalLoss)
    assert isinstance(model.loss["output_l2"], ku.TverskyLoss)
    assert (model.loss["output_l2"].alpha, model.loss["output_l2"].beta) == (0.8, 0.2)
    # The compiled total is the NumPy losses of the heads' predictions, summed.
    got = model.evaluate(x, {n: y for n in names}, batch_size=8, verbose=0)[0]
    outputs = model.predict(x, verbose=0)
    expected = (
        _np_focal(y, outputs["output_l1"]).mean()
        + _np_tversky(y, outputs["output_l2"], 0.8, 0.2).mean()
    )
    assert got == pytest.approx(expected, rel=1e-4)


def test_head_losses_follow_the_model_heads():
    single = ku.build(depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16))
    loss = imbalance_losses.head_losses(single, "focal-tversky")
    assert isinstance(loss, ku.FocalTverskyLoss) and loss.from_logits is False
    logits = ku.build(
        depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16), num_classes=3,
        output_activation=None,
    )  # fmt: skip
    loss = imbalance_losses.head_losses(logits, {"name": "focal", "gamma": 1.0})
    assert isinstance(loss, ku.FocalLoss) and loss.from_logits and loss.gamma == 1.0
    assert isinstance(
        imbalance_losses.head_losses(logits, "bce-dice"), ku.CategoricalCEDiceLoss
    )
    deep = ku.build(
        depth=2, input_shape=(32, 32, 1), filters=(4, 8, 16), deep_supervision=True
    )
    shared = ku.TverskyLoss(alpha=0.9)
    losses = imbalance_losses.head_losses(deep, shared)
    assert losses["output_l1"] is not losses["output_l2"]
    assert losses["output_l1"].get_config() == shared.get_config()
    with pytest.raises(
        InputError, match=r"one entry per head \['output_l1', 'output_l2'\]"
    ):
        imbalance_losses.head_losses(deep, {"output_l1": "focal"})


def test_cli_loss_names_are_the_library_ones():
    assert cli.LOSS_NAMES == imbalance_losses.LOSS_NAMES


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    cli_helpers.run(
        ["synthetic", str(root), "--num-images", "8", "--image-size", "32", "32"]
    )
    return root


@pytest.mark.slow
def test_cli_train_records_the_loss_and_evaluate_reloads(
    synthetic_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = [
        "train", "--data", str(synthetic_dir), "--output", str(run), "--epochs", "1",
        "--loss", "focal-tversky", "--loss-alpha", "0.8", "--loss-gamma", "0.5",
        *cli_helpers.TINY,
    ]  # fmt: skip
    cli_helpers.run(argv)
    config = json.loads((run / "run.json").read_text())
    assert config["training"]["loss"] == {
        "name": "focal-tversky",
        "alpha": 0.8,
        "gamma": 0.5,
    }
    # best.keras reloads (its compiled loss too) and evaluates.
    loaded = keras.saving.load_model(run / "best.keras", safe_mode=True)
    assert isinstance(loaded.loss["output_l2"], ku.FocalTverskyLoss)
    assert loaded.loss["output_l2"].gamma == 0.5
    cli_helpers.run(["evaluate", str(run), "--latency-runs", "1"])
    assert "accurate" in capsys.readouterr().out
    # Resuming with another loss is refused: the run is bound to its loss.
    changed = [a if a != "focal-tversky" else "tversky" for a in argv]
    changed[changed.index("--loss-gamma") : changed.index("--loss-gamma") + 2] = []
    line = cli_helpers.error_line(capsys, changed)
    assert "training.loss" in line and "focal-tversky" in line


def test_cli_rejects_a_parameter_the_loss_does_not_take(
    synthetic_dir, tmp_path, capsys
):
    line = cli_helpers.error_line(
        capsys,
        ["train", "--data", str(synthetic_dir), "--output", str(tmp_path / "r"),
         "--loss", "focal", "--loss-beta", "0.3", *cli_helpers.TINY],
    )  # fmt: skip
    assert "The focal loss takes ['alpha', 'gamma']" in line
    assert "beta=0.3" in line
    assert not (tmp_path / "r" / "run.json").exists()


def _train_one_epoch(synthetic_dir, run, flags):
    """`train` one epoch with `flags`: the recorded loss and the reloaded heads."""
    cli_helpers.run(
        ["train", "--data", str(synthetic_dir), "--output", str(run), "--epochs",
         "1", *flags, *cli_helpers.TINY]
    )  # fmt: skip
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1].lower()
    config = json.loads((run / "run.json").read_text())
    loaded = keras.saving.load_model(run / "best.keras", safe_mode=True)
    heads = loaded.loss.values() if isinstance(loaded.loss, dict) else [loaded.loss]
    return config["training"]["loss"], list(heads)


def test_cli_train_with_the_lovasz_loss_and_its_cross_entropy(synthetic_dir, tmp_path):
    loss, heads = _train_one_epoch(
        synthetic_dir, tmp_path / "run", ["--loss", "lovasz", "--loss-ce-weight", "0.5"]
    )
    assert loss == {"name": "lovasz", "ce_weight": 0.5}
    assert all(isinstance(h, ku.LovaszLoss) and h.ce_weight == 0.5 for h in heads)


def test_cli_train_with_boundary_weighted_bce_dice(synthetic_dir, tmp_path):
    flags = ["--loss-boundary-weight", "2", "--loss-boundary-width", "2"]
    loss, heads = _train_one_epoch(synthetic_dir, tmp_path / "run", flags)
    assert loss == {"name": "bce-dice", "boundary_weight": 2.0, "boundary_width": 2}
    assert all(
        isinstance(h, ku.BCEDiceLoss)
        and (h.boundary_weight, h.boundary_width) == (2.0, 2)
        for h in heads
    )
