"""Compiling and fitting a UNet++ with per-level losses, checkpoints and resume.

`train()` is `model.fit` with the bookkeeping a long segmentation run needs:

- one loss per deep-supervision head, weighted per level, and IoU/Dice
  metrics on every head;
- the best model by validation IoU (or Dice) of the deepest head (by the
  lowest training loss when there is no validation data), saved as
  `best.keras`; the final one as `last.keras`;
- TensorBoard logs in `logs/` and the epoch history in `history.csv`;
- a resumable training state in `state/` (weights, optimizer slots and step
  counter, epoch, batch, best score so far), written every `save_every`
  batches and at every epoch end. Calling `train()` again with the same
  output directory continues from the last saved batch: the interrupted
  epoch runs only its remaining steps, the history is appended, and the best
  score carries over, so an interruption costs at most `save_every` steps.

Keras' own `BackupAndRestore` restarts an interrupted epoch from its first
batch; the state here counts batches so that the total number of optimizer
steps does not depend on interruptions.
"""

import csv
import importlib.util
import json
import math
import numbers
import os
import pathlib
import time

import keras

from keras_unetpp.description import describe, output_name
from keras_unetpp.errors import InputError
from keras_unetpp.losses import BCEDiceLoss, CategoricalCEDiceLoss
from keras_unetpp.metrics import DiceScore, IoUScore
from keras_unetpp.validation import check_int

MONITORS = ("iou", "dice")
LR_SCHEDULES = ("constant", "cosine")

BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HISTORY = "history.csv"
LOG_DIR = "logs"
STATE_DIR = "state"
_STATE_FILE = "state.json"


def compile_model(
    model,
    learning_rate=1e-3,
    loss_weights=None,
    optimizer=None,
    jit_compile=False,
    loss=None,
    metrics=None,
):
    """Compiles a keras_unetpp model with the paper's loss on every head.

    Each output head gets the BCE-Dice loss (`CategoricalCEDiceLoss` for more
    than one class) and the `IoUScore` and `DiceScore` metrics, so the
    training logs hold `output_l<L>_iou` for every level L of a
    deep-supervision model (plain `iou` and `dice` for a single-output one).
    Losses and metrics follow the heads: `from_logits=True` when the model
    outputs logits (`output_activation=None`), the class count of the heads.
    This is the one compile path of the package (`train()` and
    `distribute.build_in_scope()` use it).

    Args:
        model: a model from `keras_unetpp.build` or `build_unet`.
        learning_rate: float or a `keras.optimizers.schedules`
            schedule, the Adam learning rate (ignored if `optimizer` is
            given). Defaults to `1e-3`.
        loss_weights: `None` (every head weighs 1, as in the paper), a
            sequence with one weight per head from L1 up, or a dict
            `{"output_l1": w1, ...}`. Defaults to `None`.
        optimizer: a `keras.optimizers.Optimizer`; `None` builds Adam.
            Defaults to `None`.
        jit_compile: bool, passed to `compile()`. Defaults to `False`.
        loss: the `compile()` loss, to replace the default above (e.g. a
            dict by output name); `None` for the default. Defaults to
            `None`.
        metrics: the `compile()` metrics, to replace the default above;
            `None` for the default. Defaults to `None`.

    Returns:
        The model (compiled in place).

    Example:

    ```python
    model = keras_unetpp.build(depth=4, deep_supervision=True)
    keras_unetpp.compile_model(model, loss_weights=[0.5, 0.5, 1.0, 1.0])
    ```
    """
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        pass
    elif isinstance(learning_rate, bool) or not isinstance(
        learning_rate, numbers.Real
    ) or not learning_rate > 0:
        raise InputError(
            "`learning_rate` must be a positive number. "
            f"Received: learning_rate={learning_rate!r}"
        )
    info = describe(model)
    names = list(info.outputs)
    num_classes = info.num_classes
    from_logits = info.from_logits
    if loss_weights is None:
        weights = {name: 1.0 for name in names}
    elif isinstance(loss_weights, dict):
        if sorted(loss_weights) != sorted(names):
            raise InputError(
                f"`loss_weights` must have one weight per head {names}. "
                f"Received: loss_weights={loss_weights!r}"
            )
        weights = {k: float(v) for k, v in loss_weights.items()}
    else:
        loss_weights = list(loss_weights)
        if len(loss_weights) != len(names):
            raise InputError(
                f"`loss_weights` must have one weight per head ({len(names)} "
                f"for heads {names}). Received: loss_weights={loss_weights!r}"
            )
        weights = dict(zip(names, (float(w) for w in loss_weights)))
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or not any(
        weights.values()
    ):
        raise InputError(
            "`loss_weights` must be non-negative and not all zero. "
            f"Received: loss_weights={loss_weights!r}"
        )

    def head_loss():
        if num_classes == 1:
            return BCEDiceLoss(from_logits=from_logits)
        return CategoricalCEDiceLoss(from_logits=from_logits)

    def head_metrics():
        return [
            IoUScore(num_classes=num_classes, from_logits=from_logits),
            DiceScore(num_classes=num_classes, from_logits=from_logits),
        ]

    if optimizer is None:
        if isinstance(learning_rate, numbers.Real):
            learning_rate = float(learning_rate)
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    elif isinstance(optimizer, (str, dict)):
        optimizer = keras.optimizers.get(optimizer)
    if len(names) == 1:
        model.compile(
            optimizer=optimizer,
            loss=head_loss() if loss is None else loss,
            metrics=head_metrics() if metrics is None else metrics,
            jit_compile=jit_compile,
        )
    else:
        model.compile(
            optimizer=optimizer,
            loss={name: head_loss() for name in names} if loss is None else loss,
            loss_weights=weights,
            metrics=(
                {name: head_metrics() for name in names} if metrics is None else metrics
            ),
            jit_compile=jit_compile,
        )
    return model


def monitor_name(model, monitor="iou"):
    """The log key that `train()` uses to pick the best epoch.

    Args:
        model: a keras_unetpp model.
        monitor: `"iou"` or `"dice"`. Defaults to `"iou"`.

    Returns:
        str, e.g. `"val_output_l4_iou"` for a deep-supervision model of depth
        4 (its deepest head) or `"val_iou"` for a single-output model.
    """
    if monitor not in MONITORS:
        raise InputError(
            f"`monitor` must be one of {MONITORS}. Received: monitor={monitor!r}"
        )
    info = describe(model)
    if len(info.outputs) == 1:
        return f"val_{monitor}"
    return f"val_{output_name(info.heads[-1])}_{monitor}"


def read_state(output_dir):
    """The saved training state of a run directory, or `None` if there is none.

    Returns:
        dict with `epoch` (epochs completed), `batch` (batches done in the
        epoch after those), `best` (best monitored score so far or `None`),
        `steps_per_epoch` and `weights` (file name inside `state/`).
    """
    path = pathlib.Path(output_dir) / STATE_DIR / _STATE_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


class TrainingState(keras.callbacks.Callback):
    """Saves weights, optimizer state and position every `save_every` batches.

    Two weight files are used in turn and `state.json` (which names the
    current one) is replaced atomically after the weights are written, so a
    kill at any moment leaves a consistent state behind.

    Args:
        state_dir: folder of the state files.
        steps_per_epoch: int, batches in a full epoch.
        save_every: int, save every this many batches (and at every epoch
            end); `None` saves at epoch ends only. Defaults to `None`.
        checkpoint: the `ModelCheckpoint` whose best score is recorded, or
            `None`. Defaults to `None`.
        initial_batch: int, batches already done in the first epoch of this
            `fit()` call (when resuming mid-epoch). Defaults to `0`.
    """

    def __init__(
        self, state_dir, steps_per_epoch, save_every=None, checkpoint=None,
        initial_batch=0,
    ):
        super().__init__()
        self.state_dir = pathlib.Path(state_dir)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_every = save_every
        self.checkpoint = checkpoint
        self._offset = int(initial_batch)
        self._epoch = 0
        self._saves = 0
        previous = read_state(self.state_dir.parent)
        if previous is not None:
            self._saves = int(previous.get("saves", 0))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + batch + 1
        if self.save_every and done % self.save_every == 0 and (
            done < self.steps_per_epoch
        ):
            self._save(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        self._save(epoch + 1, 0)

    def _save(self, epoch, batch):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._saves += 1
        weights = f"weights_{self._saves % 2}.weights.h5"
        self.model.save_weights(self.state_dir / weights, overwrite=True)
        best = None if self.checkpoint is None else _best(self.checkpoint)
        state = {
            "epoch": int(epoch),
            "batch": int(batch),
            "best": best,
            "steps_per_epoch": self.steps_per_epoch,
            "weights": weights,
            "saves": self._saves,
        }
        tmp = self.state_dir / (_STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_dir / _STATE_FILE)


def _best(checkpoint):
    """The best score a `ModelCheckpoint` has seen, or `None` before any."""
    best = checkpoint.best
    if best is None or not math.isfinite(float(best)):
        return None
    return float(best)


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the end of the epoch that would overrun a time budget.

    After every epoch it compares the time used so far plus the mean epoch
    time with the budget; when the next epoch would not fit, it sets
    `model.stop_training`. The epoch in progress always completes (and is
    checkpointed), so a budget never cuts an epoch short.

    Args:
        seconds: float, the wall-clock budget of training, validation
            included.
    """

    def __init__(self, seconds):
        super().__init__()
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or (
            not seconds > 0
        ):
            raise InputError(
                f"`seconds` must be a positive number. Received: seconds={seconds!r}"
            )
        self.seconds = float(seconds)
        self.start = None
        self.epochs = 0
        self.exhausted = False

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        used = time.monotonic() - self.start
        if used + used / self.epochs > self.seconds:
            self.exhausted = True
            self.model.stop_training = True


def _steps(dataset, steps_per_epoch):
    if steps_per_epoch is not None:
        return check_int(steps_per_epoch, "steps_per_epoch")
    cardinality = int(dataset.cardinality())
    if cardinality < 1:
        raise InputError(
            "The training dataset has no known finite length; pass "
            f"`steps_per_epoch`. Received: cardinality={cardinality}"
        )
    return cardinality


def _trim_history(path, epochs_done):
    """Drops history rows of epochs that the saved state does not contain."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def train(
    model,
    train_data,
    val_data,
    output_dir,
    epochs=10,
    steps_per_epoch=None,
    learning_rate=1e-3,
    lr_schedule="constant",
    loss_weights=None,
    monitor="iou",
    save_every=None,
    optimizer=None,
    callbacks=None,
    tensorboard=True,
    time_budget=None,
    verbose=1,
):
    """Trains a keras_unetpp model, resumably, with checkpoints and logs.

    The model is compiled with `compile_model()` (one BCE-Dice loss and
    IoU/Dice metrics per head). `train_data` is repeated, and every epoch
    runs `steps_per_epoch` batches, then evaluates `val_data`. If
    `output_dir` holds a saved state from an earlier call (interrupted or
    finished), training continues from it up to `epochs` epochs.

    Files written into `output_dir`: `best.keras` (best validation score of
    the deepest head), `last.keras` (the model after the last epoch, with
    its optimizer), `history.csv`, `logs/` (TensorBoard) and `state/`.

    Batch normalization: keras_unetpp models use a moving-statistics
    momentum of 0.9, so after a few dozen steps inference mode (moving
    statistics) scores like training mode (batch statistics); the validation
    scores logged here, and so the best checkpoint, are computed in
    inference mode.

    Args:
        model: an uncompiled or compiled model from `keras_unetpp.build` or
            `build_unet`, with one output per deep-supervision head.
        train_data: `tf.data.Dataset` of `(image, mask)` batches (masks as a
            dict keyed by head name for deep-supervision models).
        val_data: `tf.data.Dataset` of the same structure, or `None`
            (then `best.keras` is the epoch with the lowest training loss,
            and `monitor` is not used).
        output_dir: folder of the run (created if missing).
        epochs: int, total number of epochs. Defaults to `10`.
        steps_per_epoch: int, batches per epoch; `None` uses the length of
            `train_data`. Defaults to `None`.
        learning_rate: float, Adam learning rate. Defaults to `1e-3`.
        lr_schedule: `"constant"` or `"cosine"` (cosine decay from
            `learning_rate` to 5% of it over `epochs * steps_per_epoch`
            steps; it follows the optimizer's step counter, so a resumed
            run continues on the same curve). Defaults to `"constant"`.
        loss_weights: per-head loss weights, as in `compile_model()`.
            Defaults to `None`.
        monitor: `"iou"` or `"dice"`, the score that picks `best.keras`.
            Defaults to `"iou"`.
        save_every: int, also save the resumable state every this many
            batches (`None`: at epoch ends only). Defaults to `None`.
        optimizer: a Keras optimizer, or `None` for Adam. Defaults to `None`.
        callbacks: extra Keras callbacks. Defaults to `None`.
        tensorboard: bool, write TensorBoard logs to `logs/` (needs the
            `tensorboard` package). Defaults to `True`.
        time_budget: float, seconds: stop after the last epoch that fits
            in this wall-clock budget (see `TimeBudget`); calling `train()`
            again continues towards `epochs`. `None`: no limit. Defaults to
            `None`.
        verbose: 0, 1 (progress bars) or 2, as in `fit()`. Defaults to `1`.

    Returns:
        dict: `history` (list of per-epoch log dicts, all epochs of the run
        including earlier calls), `best` (best monitored score), `monitor`
        (its log key), `resumed_from` (`(epoch, batch)` or `None`),
        `stopped_by_time_budget` (bool) and the paths `best_model` and `last_model`.

    Example:

    ```python
    model = keras_unetpp.build(depth=4, input_shape=(96, 96, 1),
                               deep_supervision=True)
    train_ds = keras_unetpp.data.make_dataset(
        pairs, (96, 96), training=True, output_names=model.output_names)
    result = keras_unetpp.train(model, train_ds, val_ds, "runs/nuclei",
                                epochs=30, save_every=50)
    ```
    """
    check_int(epochs, "epochs")
    if save_every is not None:
        check_int(save_every, "save_every")
    steps = _steps(train_data, steps_per_epoch)
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise InputError(
            "TensorBoard logs need the `tensorboard` package: `pip install "
            "tensorboard`, or pass tensorboard=False. Received: tensorboard=True"
        )
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if lr_schedule not in LR_SCHEDULES:
        raise InputError(
            f"`lr_schedule` must be one of {LR_SCHEDULES}. "
            f"Received: lr_schedule={lr_schedule!r}"
        )
    if lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            float(learning_rate), decay_steps=int(epochs) * steps, alpha=0.05
        )
    compile_model(model, learning_rate, loss_weights, optimizer)
    key = monitor_name(model, monitor)
    mode = "max"
    if val_data is None:
        # No held-out data: the best epoch is the one with the lowest
        # training loss (the training IoU of augmented batches would reward
        # nothing but fitting them).
        key, mode = "loss", "min"
        if verbose:
            print(
                "No validation data: best.keras is the epoch with the lowest "
                "training loss."
            )

    state = read_state(output_dir)
    history_path = output_dir / HISTORY
    if state is not None:
        if state["steps_per_epoch"] != steps:
            raise InputError(
                f"{output_dir} holds a run with {state['steps_per_epoch']} steps "
                "per epoch; resume it with the same data and batch size, or "
                f"use a new output directory. Received: steps_per_epoch={steps}"
            )
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(output_dir / STATE_DIR / state["weights"])
        _trim_history(history_path, state["epoch"])
        start_epoch, start_batch = state["epoch"], state["batch"]
        best = state["best"]
        resumed_from = (start_epoch, start_batch)
        if verbose:
            print(
                f"Resuming {output_dir} at epoch {start_epoch + 1}, batch "
                f"{start_batch} (optimizer step {int(model.optimizer.iterations)})."
            )
    else:
        start_epoch, start_batch, best, resumed_from = 0, 0, None, None
        if history_path.exists():
            history_path.unlink()

    checkpoint = keras.callbacks.ModelCheckpoint(
        output_dir / BEST_MODEL,
        monitor=key,
        mode=mode,
        save_best_only=True,
        initial_value_threshold=best,
        verbose=0,
    )
    repeated = train_data.repeat()
    budget = None if time_budget is None else TimeBudget(time_budget)

    def fit(initial_epoch, last_epoch, fit_steps, initial_batch):
        state_cb = TrainingState(
            output_dir / STATE_DIR, steps, save_every, checkpoint, initial_batch
        )
        model.fit(
            repeated,
            validation_data=val_data,
            shuffle=False,
            initial_epoch=initial_epoch,
            epochs=last_epoch,
            steps_per_epoch=fit_steps,
            callbacks=[
                checkpoint,
                keras.callbacks.CSVLogger(history_path, append=True),
                *(
                    [keras.callbacks.TensorBoard(output_dir / LOG_DIR)]
                    if tensorboard
                    else []
                ),
                state_cb,
                *([budget] if budget is not None else []),
                *(callbacks or []),
            ],
            verbose=verbose,
        )

    if start_epoch < epochs and start_batch:
        fit(start_epoch, start_epoch + 1, steps - start_batch, start_batch)
        start_epoch += 1
    if start_epoch < epochs and not (budget is not None and budget.exhausted):
        fit(start_epoch, epochs, steps, 0)
    model.save(output_dir / LAST_MODEL)
    if not (output_dir / BEST_MODEL).exists():
        model.save(output_dir / BEST_MODEL)
    return {
        "history": read_history(output_dir),
        "best": _best(checkpoint),
        "monitor": key,
        "resumed_from": resumed_from,
        "stopped_by_time_budget": budget is not None and budget.exhausted,
        "best_model": output_dir / BEST_MODEL,
        "last_model": output_dir / LAST_MODEL,
    }


def read_history(output_dir):
    """The per-epoch logs of a run, from its `history.csv`.

    Returns:
        list of dicts, one per epoch in order, values as floats (`epoch` as
        an int, 0-based); keys an epoch did not log are left out.
    """
    path = pathlib.Path(output_dir) / HISTORY
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # CSVLogger writes "NA" for keys an epoch did not log (no validation).
    return [
        {
            k: int(v) if k == "epoch" else float(v)
            for k, v in row.items()
            if v not in ("NA", "")
        }
        for row in rows
    ]
