"""Compiling and fitting a UNet++ with per-level losses, checkpoints and resume.

`train()` is `model.fit` with the bookkeeping a long segmentation run needs:

- one loss per deep-supervision head, weighted per level, and IoU/Dice
  metrics on every head;
- the best model by validation IoU (or Dice) of the deepest head (by the
  lowest training loss when there is no validation data), saved as
  `best.keras`; the final one as `last.keras`;
- TensorBoard logs in `logs/` and the epoch history in `history.csv`;
- a resumable training state in `state/` (weights, optimizer slots and step
  counter, epoch, batch, best score so far, the learning-rate plan of a
  cosine schedule), written every `save_every`
  batches and at every epoch end. Calling `train()` again with the same
  output directory continues from the last saved batch: the interrupted
  epoch runs only its remaining steps, the history is appended, and the best
  score carries over, so an interruption costs at most `save_every` steps.

Every file is written aside and renamed into place (`keras_unetpp.atomic`),
and a NaN or infinite loss stops the run with `TrainingDiverged` before
anything is saved from the diverged model.

Keras' own `BackupAndRestore` restarts an interrupted epoch from its first
batch; the state here counts batches so that the total number of optimizer
steps does not depend on interruptions.
"""

import csv
import importlib.util
import io
import json
import math
import numbers
import pathlib
import time
import warnings

import keras
import numpy as np

from keras_unetpp import atomic
from keras_unetpp.data.pipeline import data_errors
from keras_unetpp.description import describe, output_name
from keras_unetpp.errors import InputError
from keras_unetpp.fine_tuning import (
    EncoderFineTuning,
    check_fine_tuning,
    set_encoder_trainable,
)
from keras_unetpp.imbalance_losses import head_losses
from keras_unetpp.losses import BCEDiceLoss, CategoricalCEDiceLoss
from keras_unetpp.metrics import DiceScore, IoUScore
from keras_unetpp.schedule import CosinePlan, LearningRatePlan, check_positive
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
    else:
        learning_rate = check_positive(learning_rate, "learning_rate")
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


def check_loss_weight_values(loss_weights):
    """Raises unless `loss_weights` is `None` or finite non-negative numbers.

    The count per head is checked by `compile_model`, which knows the model.
    """
    if loss_weights is None:
        return None
    values = (
        list(loss_weights.values())
        if isinstance(loss_weights, dict)
        else (list(loss_weights))
    )
    if not all(
        isinstance(w, numbers.Real)
        and not isinstance(w, bool)
        and math.isfinite(w)
        and w >= 0
        for w in values
    ) or not any(values):
        raise InputError(
            "`loss_weights` must be finite, non-negative and not all zero. "
            f"Received: loss_weights={loss_weights!r}"
        )
    return loss_weights


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite during training.

    Training stops at once, before anything is saved from the diverged
    model: `best.keras`, `last.keras`, `history.csv` and `state/` keep the
    last good epoch (or batch). The command line prints the message in one
    line and exits with status 3.
    """


def check_finite_weights(model, when="saving"):
    """Raises `TrainingDiverged` if any weight of `model` is NaN or infinite."""
    for variable in model.weights:
        values = np.asarray(keras.ops.convert_to_numpy(variable.value))
        if not np.all(np.isfinite(values)):
            raise TrainingDiverged(
                f"Training diverged: weight {variable.path!r} holds NaN or "
                f"infinite values ({when}); nothing was saved from this model. "
                "Try a lower learning rate, or check the data."
            )


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training with `TrainingDiverged` when a loss becomes NaN or inf.

    It checks the running training loss after every batch and every loss of
    the epoch logs (validation included) at every epoch end. Put it first
    among the callbacks, so that it raises before any other callback saves
    the diverged model.

    Args:
        output_dir: the run folder, named in the message. Defaults to `None`.
        steps_per_epoch: int, batches per epoch, for the message. Defaults
            to `None`.
        initial_batch: int, batches already done in the first epoch of the
            `fit()` call. Defaults to `0`.
    """

    def __init__(self, output_dir=None, steps_per_epoch=None, initial_batch=0):
        super().__init__()
        self.output_dir = None if output_dir is None else pathlib.Path(output_dir)
        self.steps_per_epoch = steps_per_epoch
        self._offset = int(initial_batch)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            where = f"epoch {self._epoch + 1}, batch {self._offset + batch + 1}"
            raise TrainingDiverged(
                self._message(f"the training loss is {loss} in {where}")
            )

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        bad = {
            key: value
            for key, value in (logs or {}).items()
            if (key == "loss" or key.endswith("_loss"))
            and not math.isfinite(float(value))
        }
        if bad:
            listed = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            raise TrainingDiverged(self._message(f"{listed} after epoch {epoch + 1}"))

    def _message(self, what):
        kept = ""
        if self.output_dir is not None:
            state = read_state(self.output_dir)
            if state is not None:
                kept = (
                    f"; {self.output_dir} keeps its last good state (epoch "
                    f"{state['epoch']}, batch {state['batch']}) and models"
                )
        return (
            f"Training diverged: {what}{kept}. Nothing was saved from the "
            "diverged model. Try a lower learning rate (in a new run folder), "
            "or check the data."
        )


def read_state(output_dir):
    """The saved training state of a run directory, or `None` if there is none.

    Returns:
        dict with `epoch` (epochs completed), `batch` (batches done in the
        epoch after those), `best` (best monitored score so far or `None`),
        `steps_per_epoch`, `weights` (file name inside `state/`) and, for a
        cosine schedule, `lr_plan` (see `keras_unetpp.schedule.CosinePlan`).
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
    kill at any moment leaves a consistent state behind. Weights that are
    not finite are never saved (`TrainingDiverged`).

    Args:
        state_dir: folder of the state files.
        steps_per_epoch: int, batches in a full epoch.
        save_every: int, save every this many batches (and at every epoch
            end); `None` saves at epoch ends only. Defaults to `None`.
        checkpoint: the `BestCheckpoint` (or `ModelCheckpoint`) whose best
            score is recorded, or `None`. Defaults to `None`.
        initial_batch: int, batches already done in the first epoch of this
            `fit()` call (when resuming mid-epoch). Defaults to `0`.
        lr_plan: the `CosinePlan` of the run, recorded with every save, or
            `None`. Defaults to `None`.
    """

    def __init__(
        self,
        state_dir,
        steps_per_epoch,
        save_every=None,
        checkpoint=None,
        initial_batch=0,
        lr_plan=None,
    ):
        super().__init__()
        self.state_dir = pathlib.Path(state_dir)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_every = save_every
        self.checkpoint = checkpoint
        self.lr_plan = lr_plan
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
        if (
            self.save_every
            and done % self.save_every == 0
            and (done < self.steps_per_epoch)
        ):
            self._save(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        self._save(epoch + 1, 0)

    def _save(self, epoch, batch):
        check_finite_weights(self.model, f"saving the state at epoch {epoch}")
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
        if self.lr_plan is not None:
            state["lr_plan"] = self.lr_plan.get_config()
        atomic.write_json(self.state_dir / _STATE_FILE, state)


def _best(checkpoint):
    """The best score a checkpoint callback has seen, or `None` before any."""
    best = checkpoint.best
    if best is None or not math.isfinite(float(best)):
        return None
    return float(best)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever a monitored score reaches a new best.

    `ModelCheckpoint(save_best_only=True)`, but the file is
    written aside and renamed into place (`keras_unetpp.atomic`), so a kill
    during the save leaves the previous best model, never a truncated one;
    NaN scores never count as better, and weights that are not finite are
    never saved (`TrainingDiverged`).

    Args:
        filepath: the `.keras` file.
        monitor: the log key, e.g. `"val_output_l4_iou"`.
        mode: `"max"` (a score) or `"min"` (a loss). Defaults to `"max"`.
        initial_value_threshold: float or `None`, the best score so far (a
            resumed run's); only a better one is saved. Defaults to `None`.
    """

    def __init__(self, filepath, monitor, mode="max", initial_value_threshold=None):
        super().__init__()
        if mode not in ("max", "min"):
            raise InputError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
        self.filepath = pathlib.Path(filepath)
        self.monitor = monitor
        self.mode = mode
        self.best = initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(
                f"BestCheckpoint: {self.monitor!r} is not in the logs "
                f"(available: {sorted(logs or {})}); {self.filepath.name} not saved.",
                stacklevel=2,
            )
            return
        value = float(value)
        if not math.isfinite(value):
            return
        if self.best is not None and (
            value <= self.best if self.mode == "max" else value >= self.best
        ):
            return
        check_finite_weights(self.model, f"saving {self.filepath.name}")
        atomic.save_model(self.model, self.filepath)
        self.best = value


def _format_value(value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    try:
        return repr(float(np.asarray(value)))
    except (TypeError, ValueError):
        return str(value)


def _read_rows(path):
    """The header and rows of a CSV file (`[], []` if missing or empty)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        return [], []
    return rows[0], rows[1:]


def _write_rows(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue(), newline="")


class HistoryCSV(keras.callbacks.Callback):
    """Appends every epoch's logs to a CSV file, replacing it atomically.

    The layout of Keras' `CSVLogger`: an `epoch` column, then the log keys
    in sorted order, `NA` where an epoch did not log a key. Each epoch end
    rewrites the whole file aside and renames it into place, so a kill never
    leaves half a row; a key that appears later (another run of the same
    folder) gets a column of its own instead of shifting the others.

    Args:
        path: the CSV file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)

    def on_epoch_end(self, epoch, logs=None):
        header, rows = _read_rows(self.path)
        records = [dict(zip(header, row)) for row in rows]
        record = {"epoch": str(int(epoch))}
        record.update({k: _format_value(v) for k, v in (logs or {}).items()})
        records.append(record)
        keys = sorted({key for r in records for key in r} - {"epoch"})
        header = ["epoch", *keys]
        _write_rows(
            self.path, header, [[r.get(k, "NA") for k in header] for r in records]
        )


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the end of the epoch that would overrun a time budget.

    After every epoch it estimates the time of the next one (from the last
    epoch: its batches, scaled to a full epoch, plus validation and saving)
    and sets `model.stop_training` when the next epoch would not fit in
    what is left. The epoch in progress always completes (and is
    checkpointed), so a budget never cuts an epoch short.

    With a learning-rate plan (`schedule`, the `LearningRatePlan` callback
    of a cosine schedule) it also makes the decay end with the last epoch
    that fits: after every epoch it re-sizes the rest of the decay to the
    number of epochs that fit, and after every batch it checks whether the
    epoch under way is the last that fits, and if so makes the decay end
    with it. The rate stays continuous (see `CosinePlan.resize`).

    Args:
        seconds: float, the wall-clock budget of training, validation
            included.
        schedule: a `keras_unetpp.schedule.LearningRatePlan`, or `None`.
            Defaults to `None`.
        steps_per_epoch: int, batches in a full epoch; `None` takes the
            `fit()` call's. Defaults to `None`.
    """

    def __init__(self, seconds, schedule=None, steps_per_epoch=None):
        super().__init__()
        self.seconds = check_positive(seconds, "seconds")
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.start = None
        self.epochs = 0
        self.exhausted = False
        self.epoch_seconds = None  # estimated time of a full epoch
        self._overhead = 0.0  # validation and saving after the last batch
        self._epoch = 0
        self._begin_epoch(None)

    def _begin_epoch(self, now):
        self._mark = now
        self._batches = 0
        self._first_batch_end = None
        self._last_batch_end = None

    def _fit_steps(self):
        params = getattr(self, "params", None) or {}
        return params.get("steps") or self.steps_per_epoch

    def on_train_begin(self, logs=None):
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self._begin_epoch(now)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._begin_epoch(time.monotonic())

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        self._batches += 1
        if self._batches == 1:
            self._first_batch_end = now  # the first may include tracing
        self._last_batch_end = now
        fit_steps = self._fit_steps()
        if self.schedule is None or self._batches < 3 or not fit_steps:
            return
        rate = (now - self._first_batch_end) / (self._batches - 1)
        epoch_end = now + (fit_steps - self._batches) * rate + self._overhead
        full = self.steps_per_epoch or fit_steps
        next_epoch = self.epoch_seconds or full * rate + self._overhead
        if epoch_end + next_epoch > self.start + self.seconds:
            self.schedule.end_at_epoch(self._epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.epochs += 1
        mark = self.start if self._mark is None else self._mark
        full = self.steps_per_epoch or self._fit_steps() or self._batches
        if self._batches and self._last_batch_end is not None and full:
            self._overhead = max(0.0, now - self._last_batch_end)
            if self._batches >= 2:
                # Without the first batch, which may include tracing.
                rate = (self._last_batch_end - self._first_batch_end) / (
                    self._batches - 1
                )
            else:
                rate = self._last_batch_end - mark
            self.epoch_seconds = full * rate + self._overhead
        else:
            self.epoch_seconds = now - mark
        left = self.start + self.seconds - now
        if self.epoch_seconds > 0:
            fits = int(left // self.epoch_seconds)
        else:
            fits = 1 if left > 0 else 0
        if fits < 1:
            self.exhausted = True
            self.model.stop_training = True
        elif self.schedule is not None:
            self.schedule.end_at_epoch(epoch + 1 + fits)
        self._begin_epoch(now)


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
    header, rows = _read_rows(path)
    if not header:
        return
    kept = [r for r in rows if int(r[0]) < epochs_done]
    if len(kept) != len(rows):
        _write_rows(path, header, kept)


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
    freeze_encoder_epochs=0,
    unfreeze_lr_factor=0.1,
    loss=None,
    jit_compile=False,
):
    """Trains a keras_unetpp model, resumably, with checkpoints and logs.

    The model is compiled with `compile_model()` (one BCE-Dice loss and
    IoU/Dice metrics per head). `train_data` is repeated, and every epoch
    runs `steps_per_epoch` batches, then evaluates `val_data`. If
    `output_dir` holds a saved state from an earlier call (interrupted or
    finished), training continues from it up to `epochs` epochs.

    Files written into `output_dir`: `best.keras` (best validation score of
    the deepest head), `last.keras` (the model after the last epoch, with
    its optimizer), `history.csv`, `logs/` (TensorBoard) and `state/`. Each
    file is replaced atomically (`keras_unetpp.atomic`): a kill leaves the
    previous version or the new one, never a truncated file.

    A NaN or infinite loss (or weights) stops training with
    `TrainingDiverged` before anything is saved from the diverged model, so
    the files keep the last good epoch.

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
        lr_schedule: `"constant"` or `"cosine"`: cosine decay from
            `learning_rate` to 5% of it over `epochs * steps_per_epoch`
            steps, a `keras_unetpp.schedule.CosinePlan` recorded in the
            state. A resumed run continues its recorded plan (the rate
            never jumps up): more `epochs` stretch the rest of a decay
            under way, or, for a run whose decay has ended, start a new
            one from where it ended to 5% of that. With `time_budget` the
            decay is re-sized as the run goes so that it ends with the last
            epoch that fits. Defaults to `"constant"`.
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
        freeze_encoder_epochs: int, for a model on a pretrained backbone:
            train this many epochs with the backbone frozen (its batch
            normalizations in inference mode), then unfreeze it (but its
            batch normalizations) and go on at `unfreeze_lr_factor` times
            the learning rate with a new optimizer state (see
            `keras_unetpp.fine_tuning`). `history.csv` logs
            `encoder_frozen` and `learning_rate`; a resumed run continues
            on either side of the unfreeze. `0`: no schedule. Defaults to
            `0`.
        unfreeze_lr_factor: float in (0, 1], the learning-rate multiplier
            after the unfreeze (a cosine plan is followed at this share of
            its value). Defaults to `0.1`.
        loss: the loss of the heads: `None` (the paper's BCE-Dice), a name
            from `imbalance_losses.LOSS_NAMES` (`"tversky"`,
            `"focal-tversky"`, `"focal"`, `"lovasz"`, `"bce-dice"`), a dict such as
            `{"name": "tversky", "alpha": 0.8}`, a `keras.losses.Loss`, or
            a dict by head name of those (one loss per head; see
            `imbalance_losses.head_losses`). Defaults to `None`.
        jit_compile: bool, compile the training step with XLA
            (`compile(jit_compile=True)`); the saved models are the same.
            On CPUs it gains little: 1.03x per training step against
            oneDNN's AVX2 kernels, none against its AVX-512 ones
            (docs/performance.md). Defaults to `False`.

    Returns:
        dict: `history` (list of per-epoch log dicts, all epochs of the run
        including earlier calls), `best` (best monitored score), `monitor`
        (its log key), `resumed_from` (`(epoch, batch)` or `None`),
        `stopped_by_time_budget` (bool), `learning_rate` (the optimizer's
        rate at the end: where the schedule stands) and the paths
        `best_model` and `last_model`.

    Raises:
        InputError: a bad argument (e.g. a learning rate that is not a
            finite positive number), or a run folder of another run.
        TrainingDiverged: the loss or the weights became NaN or infinite.

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
    if not (
        lr_schedule == "constant"
        and isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    ):
        learning_rate = check_positive(learning_rate, "learning_rate")
    check_loss_weight_values(loss_weights)
    if time_budget is not None:
        time_budget = check_positive(time_budget, "time_budget")
    steps = _steps(train_data, steps_per_epoch)
    freeze_encoder_epochs, unfreeze_lr_factor = check_fine_tuning(
        freeze_encoder_epochs, unfreeze_lr_factor
    )
    tuning = None
    if freeze_encoder_epochs:
        set_encoder_trainable(model, False)  # an InputError without a backbone
        tuning = EncoderFineTuning(freeze_encoder_epochs, unfreeze_lr_factor, steps)
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise InputError(
            "TensorBoard logs need the `tensorboard` package: `pip install "
            "tensorboard`, or pass tensorboard=False. Received: tensorboard=True"
        )
    if lr_schedule not in LR_SCHEDULES:
        raise InputError(
            f"`lr_schedule` must be one of {LR_SCHEDULES}. "
            f"Received: lr_schedule={lr_schedule!r}"
        )
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Temporaries of writes that a kill interrupted (see keras_unetpp.atomic).
    atomic.remove_temporaries(output_dir)
    atomic.remove_temporaries(output_dir / STATE_DIR)

    state = read_state(output_dir)
    if state is not None and state["steps_per_epoch"] != steps:
        raise InputError(
            f"{output_dir} holds a run with {state['steps_per_epoch']} steps "
            "per epoch; resume it with the same data and batch size, or "
            f"use a new output directory. Received: steps_per_epoch={steps}"
        )
    if state is not None:
        start_epoch, start_batch, best = state["epoch"], state["batch"], state["best"]
    else:
        start_epoch, start_batch, best = 0, 0, None
    total_steps = int(epochs) * steps
    plan = None
    if lr_schedule == "cosine":
        # The plan recorded by an earlier call is continued, never restarted:
        # re-sized to this call's `epochs` at the step where the run stands.
        recorded = None if state is None else state.get("lr_plan")
        if recorded:
            plan = CosinePlan.from_config(recorded)
        else:
            plan = CosinePlan.new(learning_rate, total_steps)
        plan.extend(start_epoch * steps + start_batch, total_steps)
        if tuning is not None:
            plan = tuning.scale_plan(plan)
        learning_rate = plan(start_epoch * steps + start_batch)
    compile_model(
        model,
        learning_rate,
        loss_weights,
        optimizer,
        jit_compile=bool(jit_compile),
        loss=head_losses(model, loss),
    )
    if plan is not None:
        try:
            model.optimizer.learning_rate = learning_rate
        except TypeError:
            raise InputError(
                "lr_schedule='cosine' sets the optimizer's learning rate every "
                "step; give an optimizer with a float learning rate, or use "
                "lr_schedule='constant'. Received: an optimizer with a "
                "LearningRateSchedule"
            ) from None
    if tuning is not None:
        tuning.prepare(model, start_epoch, start_batch)
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

    history_path = output_dir / HISTORY
    if state is not None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(output_dir / STATE_DIR / state["weights"])
        _trim_history(history_path, start_epoch)
        resumed_from = (start_epoch, start_batch)
        if verbose:
            print(
                f"Resuming {output_dir} at epoch {start_epoch + 1}, batch "
                f"{start_batch} (optimizer step {int(model.optimizer.iterations)})."
            )
    else:
        resumed_from = None
        if history_path.exists():
            history_path.unlink()

    checkpoint = BestCheckpoint(
        output_dir / BEST_MODEL, monitor=key, mode=mode, initial_value_threshold=best
    )
    history = HistoryCSV(history_path)
    lr_callback = None
    if plan is not None:
        lr_callback = LearningRatePlan(plan, steps, start_batch, total_steps)
    budget = None
    if time_budget is not None:
        budget = TimeBudget(time_budget, schedule=lr_callback, steps_per_epoch=steps)
    repeated = train_data.repeat()

    def fit(initial_epoch, last_epoch, fit_steps, initial_batch):
        state_cb = TrainingState(
            output_dir / STATE_DIR,
            steps,
            save_every,
            checkpoint,
            initial_batch,
            lr_plan=plan,
        )
        guard = DivergenceGuard(output_dir, steps, initial_batch)
        # A file that breaks after the up-front check (or a bad TFDS
        # example) ends as the DataError naming it, with the failed
        # pipeline released: no hang or abort at exit.
        with data_errors():
            model.fit(
                repeated,
                validation_data=val_data,
                shuffle=False,
                initial_epoch=initial_epoch,
                epochs=last_epoch,
                steps_per_epoch=fit_steps,
                callbacks=[
                    # The guard first: it raises before anything saves NaNs.
                    guard,
                    *([lr_callback] if lr_callback is not None else []),
                    *([tuning] if tuning is not None else []),
                    checkpoint,
                    history,
                    *(
                        [keras.callbacks.TensorBoard(output_dir / LOG_DIR)]
                        if tensorboard
                        else []
                    ),
                    # The budget re-sizes the plan before the state records it.
                    *([budget] if budget is not None else []),
                    state_cb,
                    *(callbacks or []),
                ],
                verbose=verbose,
            )

    def out_of_time():
        return budget is not None and budget.exhausted

    if start_epoch < epochs and start_batch:
        fit(start_epoch, start_epoch + 1, steps - start_batch, start_batch)
        start_epoch += 1
    if tuning is not None:
        # Two phases: the frozen epochs, then the rest at the reduced rate.
        frozen_end = min(tuning.epochs, epochs)
        if start_epoch < frozen_end and not out_of_time():
            fit(start_epoch, frozen_end, steps, 0)
            start_epoch = frozen_end
        if tuning.frozen and start_epoch == tuning.epochs < epochs:
            if not out_of_time():
                tuning.unfreeze(model)
    if start_epoch < epochs and not out_of_time():
        fit(start_epoch, epochs, steps, 0)
    check_finite_weights(model, f"saving {LAST_MODEL}")
    atomic.save_model(model, output_dir / LAST_MODEL)
    if not (output_dir / BEST_MODEL).exists():
        atomic.save_model(model, output_dir / BEST_MODEL)
    return {
        "history": read_history(output_dir),
        "best": _best(checkpoint),
        "monitor": key,
        "resumed_from": resumed_from,
        "stopped_by_time_budget": budget is not None and budget.exhausted,
        "best_model": output_dir / BEST_MODEL,
        "last_model": output_dir / LAST_MODEL,
        "learning_rate": float(
            keras.ops.convert_to_numpy(model.optimizer.learning_rate)
        ),
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
