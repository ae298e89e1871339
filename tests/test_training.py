"""Tests of keras_unetpp.training: per-head compile, checkpoints, resume, BN trap."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp as ku
from keras_unetpp import blocks, evaluation, training
from keras_unetpp.errors import InputError
from keras_unetpp.synthetic import synthetic_sample

SIZE = 32


def _arrays(count, seed):
    rng = np.random.default_rng(seed)
    images, masks = zip(*(synthetic_sample(rng, (SIZE, SIZE)) for _ in range(count)))
    x = (np.stack(images)[..., None] / 255.0).astype("float32")
    y = (np.stack(masks)[..., None] > 0).astype("float32")
    return x, y


def _dataset(x, y, batch_size=4, names=None, shuffle=True):
    target = y if names is None else {name: y for name in names}
    ds = tf.data.Dataset.from_tensor_slices((x, target))
    if shuffle:
        ds = ds.shuffle(len(x), seed=0)
    return ds.batch(batch_size)


def _tiny(deep_supervision=True):
    return ku.build(
        depth=2,
        input_shape=(None, None, 1),
        filters=(4, 8, 16),
        deep_supervision=deep_supervision,
    )


def test_compile_model_puts_a_loss_and_metrics_on_every_head():
    model = training.compile_model(_tiny(), loss_weights=[0.25, 1.0])
    assert set(model.loss) == {"output_l1", "output_l2"}
    assert all(isinstance(loss, ku.BCEDiceLoss) for loss in model.loss.values())
    x, y = _arrays(4, seed=1)
    logs = model.evaluate(
        x, {"output_l1": y, "output_l2": y}, verbose=0, return_dict=True
    )
    for key in ("output_l1_iou", "output_l1_dice", "output_l2_iou", "output_l2_dice"):
        assert 0.0 <= logs[key] <= 1.0
    # The total is the weighted sum of the head losses: 0.25 * l1 + 1.0 * l2.
    expected = 0.25 * logs["output_l1_loss"] + logs["output_l2_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0], "one weight per head"),
        ([0.0, 0.0], "not all zero"),
        ({"output_l9": 1.0, "output_l1": 1.0}, "one weight per head"),
    ],
)
def test_compile_model_rejects_bad_loss_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        training.compile_model(_tiny(), loss_weights=weights)


def test_monitor_name_is_the_deepest_head_of_a_deep_supervision_model():
    assert training.monitor_name(_tiny(), "iou") == "val_output_l2_iou"
    assert training.monitor_name(_tiny(False), "dice") == "val_dice"
    with pytest.raises(ValueError, match="Received: monitor='f1'"):
        training.monitor_name(_tiny(), "f1")


class _Interrupt(keras.callbacks.Callback):
    """Raises after a given number of training batches, like a kill."""

    def __init__(self, after_batches):
        super().__init__()
        self.after = after_batches
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt("simulated interruption")


@pytest.mark.slow
def test_train_resumes_mid_epoch_without_losing_or_repeating_steps(tmp_path):
    x, y = _arrays(16, seed=2)
    train_ds = _dataset(x, y)  # 4 batches per epoch
    val_ds = _dataset(x[:8], y[:8], shuffle=False)
    keras.utils.set_random_seed(0)
    model = _tiny(False)
    # 4 batches per epoch, state saved every 2 batches within an epoch; the
    # interruption comes in the 11th batch (epoch 2, batch 3), after the
    # save at epoch 2, batch 2: one step is lost and done again.
    with pytest.raises(KeyboardInterrupt):
        training.train(
            model,
            train_ds,
            val_ds,
            tmp_path,
            epochs=4,
            save_every=2,
            callbacks=[_Interrupt(11)],
            tensorboard=False,
            verbose=0,
        )
    state = training.read_state(tmp_path)
    assert (state["epoch"], state["batch"]) == (2, 2)
    assert len(training.read_history(tmp_path)) == 2
    keras.utils.set_random_seed(0)
    fresh = _tiny(False)
    result = training.train(
        fresh,
        train_ds,
        val_ds,
        tmp_path,
        epochs=4,
        save_every=2,
        tensorboard=False,
        verbose=0,
    )
    assert result["resumed_from"] == (2, 2)
    # Every optimizer step happened exactly once: 4 epochs x 4 batches.
    assert int(fresh.optimizer.iterations) == 16
    history = result["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    best = max(row["val_iou"] for row in history)
    assert result["best"] == pytest.approx(best)
    saved = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    for a, b in zip(saved.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The best checkpoint holds the epoch with the best validation IoU.
    best_model = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    metric = ku.IoUScore()
    for images, masks in val_ds:
        metric.update_state(masks, best_model(images, training=False))
    assert float(metric.result()) == pytest.approx(best, abs=1e-5)
    # Another batch size (so another epoch length) is refused.
    with pytest.raises(ValueError, match="same data and batch size"):
        training.train(
            _tiny(False),
            _dataset(x, y, batch_size=8),
            val_ds,
            tmp_path,
            epochs=5,
            tensorboard=False,
            verbose=0,
        )


def test_train_rejects_bad_arguments(tmp_path):
    x, y = _arrays(4, seed=5)
    ds = _dataset(x, y, names=["output_l1", "output_l2"])
    with pytest.raises(ValueError, match="Received: epochs=0"):
        training.train(_tiny(), ds, None, tmp_path, epochs=0)
    with pytest.raises(ValueError, match="Received: save_every=0"):
        training.train(_tiny(), ds, None, tmp_path, save_every=0)
    with pytest.raises(ValueError, match="Received: lr_schedule='step'"):
        training.train(_tiny(), ds, None, tmp_path, lr_schedule="step")
    with pytest.raises(ValueError, match="no known finite length"):
        training.train(_tiny(), ds.repeat(), None, tmp_path)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_budget_stops_before_the_epoch_that_would_overrun(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(training.time, "monotonic", clock)
    budget = training.TimeBudget(100.0)
    budget.set_model(_tiny())
    budget.model.stop_training = False
    budget.on_train_begin()
    for epoch, now in enumerate([30.0, 60.0]):  # 30 s per epoch
        clock.now = now
        budget.on_epoch_end(epoch)
        assert not budget.model.stop_training
    clock.now = 90.0  # a fourth epoch would end at 120 s > 100 s
    budget.on_epoch_end(2)
    assert budget.model.stop_training and budget.exhausted
    with pytest.raises(ValueError, match="Received: seconds=0"):
        training.TimeBudget(0)


def _short_training(tmp_path):
    """24 Adam steps at a high rate: the moving statistics must keep up."""
    keras.utils.set_random_seed(0)
    x, y = _arrays(32, seed=0)
    model = ku.build(depth=2, input_shape=(SIZE, SIZE, 1), filters=(4, 8, 16))
    training.train(
        model,
        _dataset(x, y, batch_size=8),
        None,
        tmp_path,
        epochs=1,
        steps_per_epoch=24,
        learning_rate=3e-3,
        tensorboard=False,
        verbose=0,
    )
    return evaluation.batch_norm_gap(model, _dataset(x, y, batch_size=8, shuffle=False))


@pytest.mark.slow
def test_inference_mode_scores_like_training_mode_after_short_training(tmp_path):
    # The batch-norm trap: with Keras' default momentum (0.99) a UNet++
    # trained for a few dozen steps scores well with batch statistics and
    # collapses in inference mode. keras_unetpp's defaults must not.
    training_iou, inference_iou = _short_training(tmp_path)
    assert training_iou > 0.5
    assert inference_iou > training_iou - 0.05


@pytest.mark.slow
def test_batch_norm_gap_detects_lagging_moving_statistics(tmp_path, monkeypatch):
    # Control for the test above: the same training with Keras' default
    # momentum does fall into the trap, and batch_norm_gap shows it.
    monkeypatch.setattr(blocks, "BATCH_NORM_MOMENTUM", 0.99)
    training_iou, inference_iou = _short_training(tmp_path)
    assert training_iou > 0.5
    assert inference_iou < training_iou - 0.2


def test_batch_norm_gap_leaves_moving_statistics_unchanged():
    model = _tiny(False)
    x, y = _arrays(4, seed=6)
    before = [w.numpy().copy() for w in model.non_trainable_weights]
    evaluation.batch_norm_gap(model, _dataset(x, y))
    for a, b in zip(before, model.non_trainable_weights):
        np.testing.assert_array_equal(a, b.numpy())


class _StepClock(keras.callbacks.Callback):
    """A fake clock that every training batch advances: `seconds(i)` for batch i."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.clock = clock
        self.seconds = seconds
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.clock.now += self.seconds(self.batches)
        self.batches += 1


class _RecordRates(keras.callbacks.Callback):
    """Records `(optimizer step, learning rate)` of every training step."""

    def __init__(self):
        super().__init__()
        self.rates = {}

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        self.rates[step] = float(self.model.optimizer.learning_rate)


def _lr_run(tmp_path, epochs, callbacks=(), **kwargs):
    """A tiny cosine run: 8 images, 2 batches per epoch, peak rate 1e-2."""
    x, y = _arrays(8, seed=7)
    keras.utils.set_random_seed(0)
    return training.train(
        _tiny(False),
        _dataset(x, y, shuffle=False),
        _dataset(x[:4], y[:4]),
        tmp_path,
        epochs=epochs,
        learning_rate=1e-2,
        lr_schedule="cosine",
        callbacks=list(callbacks),
        tensorboard=False,
        verbose=0,
        **kwargs,
    )


def test_a_time_budget_run_anneals_to_the_final_rate(tmp_path, monkeypatch):
    # 10 epochs asked, 2 batches each; the first batch takes 4 s (tracing),
    # the others 1 s: 2 s per epoch, and the 11 s budget fits 4 epochs. The
    # decay, sized for 10 epochs at first, must end with the 4th.
    clock = _Clock()
    monkeypatch.setattr(training.time, "monotonic", clock)
    record = _RecordRates()
    step_clock = _StepClock(clock, lambda i: 4.0 if i == 0 else 1.0)
    result = _lr_run(tmp_path, 10, [step_clock, record], time_budget=11.0)
    assert result["stopped_by_time_budget"]
    assert len(result["history"]) == 4
    final = 0.05 * 1e-2
    assert result["learning_rate"] == pytest.approx(final, rel=1e-4)
    assert result["history"][-1]["learning_rate"] == pytest.approx(final, rel=1e-4)
    rates = [record.rates[step] for step in sorted(record.rates)]
    assert len(rates) == 8
    assert all(b <= a * (1 + 1e-6) for a, b in zip(rates, rates[1:]))
    # The decay is spread over the 4 epochs, not squeezed into the first.
    assert result["history"][1]["learning_rate"] > 0.4 * 1e-2
    # The plan is recorded: the state says where the decay ends.
    plan = training.read_state(tmp_path)["lr_plan"]
    assert plan["segments"][-1]["end"] == 8
    saved = keras.saving.load_model(tmp_path / "last.keras")
    assert float(saved.optimizer.learning_rate) == pytest.approx(final, rel=1e-4)


@pytest.mark.slow
def test_resumed_cosine_runs_continue_their_schedule(tmp_path):
    # Uninterrupted: 3 epochs x 2 batches.
    whole = _RecordRates()
    _lr_run(tmp_path / "whole", 3, [whole])
    # The same run interrupted in its 4th batch (state saved every batch),
    # then resumed: every step gets the rate of the uninterrupted run.
    first, second = _RecordRates(), _RecordRates()
    with pytest.raises(KeyboardInterrupt):
        _lr_run(tmp_path / "split", 3, [first, _Interrupt(4)], save_every=1)
    assert training.read_state(tmp_path / "split")["epoch"] == 1
    _lr_run(tmp_path / "split", 3, [second], save_every=1)
    assert sorted(whole.rates) == list(range(6))
    assert min(second.rates) == 3  # resumed after the last saved batch
    resumed = {**first.rates, **second.rates}
    for step in range(6):
        assert resumed[step] == pytest.approx(whole.rates[step], rel=1e-6)
    ended = training.read_history(tmp_path / "split")[-1]["learning_rate"]
    assert ended == pytest.approx(0.05 * 1e-2, rel=1e-4)
    # A finished run continued with more epochs never jumps back up: it
    # decays from where it ended (was: ~50% of the peak rate again).
    more = _RecordRates()
    result = _lr_run(tmp_path / "split", 5, [more], save_every=1)
    rates = [more.rates[step] for step in sorted(more.rates)]
    assert sorted(more.rates) == [6, 7, 8, 9]
    assert rates[0] <= ended * (1 + 1e-6)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(rates, rates[1:]))
    assert result["learning_rate"] == pytest.approx(0.05 * ended, rel=1e-4)


def test_non_finite_numbers_are_refused_before_training(tmp_path):
    x, y = _arrays(4, seed=5)
    ds = _dataset(x, y)
    kwargs = dict(epochs=1, tensorboard=False, verbose=0)
    for value in (float("inf"), float("nan"), -float("inf")):
        for schedule in ("constant", "cosine"):
            with pytest.raises(InputError, match="finite positive number"):
                training.train(
                    _tiny(False),
                    ds,
                    None,
                    tmp_path,
                    learning_rate=value,
                    lr_schedule=schedule,
                    **kwargs,
                )
        with pytest.raises(InputError, match="finite positive number"):
            training.train(
                _tiny(False), ds, None, tmp_path, time_budget=value, **kwargs
            )
        with pytest.raises(InputError, match="finite positive number"):
            training.compile_model(_tiny(False), learning_rate=value)
        with pytest.raises(InputError, match="finite positive number"):
            training.TimeBudget(value)
        with pytest.raises(InputError, match="finite, non-negative"):
            training.train(
                _tiny(),
                _dataset(x, y, names=["output_l1", "output_l2"]),
                None,
                tmp_path,
                loss_weights=[value, 1.0],
                **kwargs,
            )
    assert not (tmp_path / "state").exists()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _arrays(8, seed=8)
    ds = _dataset(x, y, shuffle=False)  # 2 batches per epoch
    keras.utils.set_random_seed(0)
    training.train(
        _tiny(False),
        ds,
        ds,
        tmp_path,
        epochs=1,
        save_every=1,
        tensorboard=False,
        verbose=0,
    )
    saved = {
        name: (tmp_path / name).read_bytes() for name in ("best.keras", "last.keras")
    }
    # The data go bad in the second batch: the loss becomes NaN there.
    bad = x.copy()
    bad[4:] = np.nan
    model = _tiny(False)
    with pytest.raises(training.TrainingDiverged, match="loss is nan in epoch 2"):
        training.train(
            model,
            _dataset(bad, y, shuffle=False),
            ds,
            tmp_path,
            epochs=3,
            save_every=1,
            tensorboard=False,
            verbose=0,
        )
    # Nothing was saved from the diverged model.
    assert not all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    for name, data in saved.items():
        assert (tmp_path / name).read_bytes() == data
    state = training.read_state(tmp_path)
    assert (state["epoch"], state["batch"]) == (1, 1)  # after the good batch
    kept = _tiny(False)
    kept.load_weights(tmp_path / "state" / state["weights"])
    assert all(np.all(np.isfinite(w.numpy())) for w in kept.weights)
    assert [row["epoch"] for row in training.read_history(tmp_path)] == [0]
    # The saving callbacks refuse non-finite weights themselves, too.
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, "float32"))
    for callback in (
        training.TrainingState(tmp_path / "nan_state", 2),
        training.BestCheckpoint(tmp_path / "nan.keras", "val_iou"),
    ):
        callback.set_model(model)
        with pytest.raises(training.TrainingDiverged, match="NaN or infinite"):
            callback.on_epoch_end(0, {"val_iou": 0.5})
    assert not (tmp_path / "nan_state").exists()
    assert not (tmp_path / "nan.keras").exists()
