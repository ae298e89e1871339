"""The learning-rate plan of a run: a cosine decay that follows the run.

`train(lr_schedule="cosine")` decays the learning rate from its peak to
`alpha * peak` (5%) along a cosine. A fixed schedule sized for all `epochs`
fails in two ways: a run that a time budget stops early never anneals, and
a finished run continued with a larger `epochs` jumps back up the curve.
`CosinePlan` is a schedule that can be re-sized while the run goes, and is
recorded in the training state so that a resumed run continues it:

- The plan is a list of segments. A segment starts at optimizer step
  `start` at cosine phase `phase` (0 = the top of the curve, 1 = its
  bottom) and reaches phase 1 at step `end`:
  `lr = low + (high - low) * (1 + cos(pi * phase(step))) / 2`, the phase
  going linearly from `phase` at `start` to 1 at `end`; after `end` the
  rate stays at `low`. A new run is one segment
  `(0, epochs * steps_per_epoch, phase 0, peak, alpha * peak)`: Keras'
  `CosineDecay(peak, epochs * steps_per_epoch, alpha)`.
- `resize(step, end)` moves the end of the decay (a time budget that fits
  fewer epochs, or more `epochs` on resume) by starting a new segment at
  `step` with the phase the curve has there. The rate is continuous (no
  jump) and the rest of the curve is the same cosine, compressed or
  stretched.
- `extend(step, end)` continues a plan at `step` up to `end`: a plan still
  decaying is re-sized; a plan that has reached its bottom starts a new
  decay from the rate it ended at down to `alpha` times that rate. The
  rate never goes up.

`LearningRatePlan` is the callback that sets the optimizer's rate before
every batch from the plan, by the run's position (epoch and batch), so that
an interrupted and resumed run follows the same rates as an uninterrupted
one.
"""

import math
import numbers

import keras

from keras_unetpp.errors import InputError

DEFAULT_ALPHA = 0.05


def check_positive(value, arg):
    """Returns `float(value)`, or raises unless it is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise InputError(
            f"`{arg}` must be a finite positive number. Received: {arg}={value!r}"
        )
    return float(value)


class CosinePlan:
    """A piecewise cosine learning-rate plan that can be re-sized.

    Args:
        segments: list of dicts with `start`, `end` (steps), `phase` (in
            [0, 1)), `high` and `low` (rates), in order of `start`.
        alpha: float, the share of its starting rate a new decay ends at
            (see `extend`). Defaults to `0.05`.

    Example:

    ```python
    plan = CosinePlan.new(1e-3, total_steps=1000)
    plan(0), plan(1000)           # 1e-3, 5e-5
    plan.resize(200, 600)         # the same curve, ending at step 600
    ```
    """

    def __init__(self, segments, alpha=DEFAULT_ALPHA):
        if not segments:
            raise InputError("A CosinePlan needs at least one segment.")
        self.segments = [dict(s) for s in segments]
        self.alpha = float(alpha)

    @classmethod
    def new(cls, peak, total_steps, alpha=DEFAULT_ALPHA):
        """The plan of a new run: `CosineDecay(peak, total_steps, alpha)`."""
        peak = check_positive(peak, "learning_rate")
        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"`alpha` must be in [0, 1]. Received: alpha={alpha!r}")
        segment = {
            "start": 0,
            "end": int(total_steps),
            "phase": 0.0,
            "high": peak,
            "low": alpha * peak,
        }
        return cls([segment], alpha)

    @classmethod
    def from_config(cls, config):
        return cls(config["segments"], config.get("alpha", DEFAULT_ALPHA))

    def get_config(self):
        """The JSON-serializable plan (recorded in the training state)."""
        return {"alpha": self.alpha, "segments": [dict(s) for s in self.segments]}

    def _segment(self, step):
        current = self.segments[0]
        for segment in self.segments[1:]:
            if segment["start"] > step:
                break
            current = segment
        return current

    def phase(self, step):
        """The cosine phase at `step`: 0 at the top, 1 at the bottom."""
        segment = self._segment(step)
        if step >= segment["end"]:
            return 1.0
        span = segment["end"] - segment["start"]
        done = (step - segment["start"]) / span
        return segment["phase"] + (1.0 - segment["phase"]) * done

    def __call__(self, step):
        """The learning rate of optimizer step `step` (0-based)."""
        segment = self._segment(step)
        phase = self.phase(step)
        cosine = 0.5 * (1.0 + math.cos(math.pi * phase))
        return segment["low"] + (segment["high"] - segment["low"]) * cosine

    @property
    def end(self):
        """The step at which the current decay reaches its bottom."""
        return self.segments[-1]["end"]

    @property
    def final_rate(self):
        """The rate the plan ends at (`alpha * peak` for one decay)."""
        return self.segments[-1]["low"]

    def _start_segment(self, segment):
        self.segments = [s for s in self.segments if s["start"] < segment["start"]]
        self.segments.append(segment)

    def resize(self, step, end):
        """Moves the end of the decay to `end`, continuously at `step`.

        Does nothing if `end <= step`, if the plan already ends at `end`,
        or if the decay has reached its bottom at `step`.
        """
        step, end = int(step), int(end)
        phase = self.phase(step)
        if end <= step or end == self.end or phase >= 1.0:
            return
        last = self._segment(step)
        self._start_segment(
            {
                "start": step,
                "end": end,
                "phase": phase,
                "high": last["high"],
                "low": last["low"],
            }
        )

    def extend(self, step, end):
        """Continues the plan from `step` so that it decays until `end`.

        A decay still under way is re-sized to end at `end`; one that has
        reached its bottom before `end` starts a new decay from its current
        rate to `alpha` times it. The rate at `step` never changes.
        """
        step, end = int(step), int(end)
        if end <= step:
            return
        if self.phase(step) < 1.0:
            self.resize(step, end)
            return
        rate = self(step)
        self._start_segment(
            {
                "start": step,
                "end": end,
                "phase": 0.0,
                "high": rate,
                "low": self.alpha * rate,
            }
        )


class LearningRatePlan(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every batch from a plan.

    The step is the run's position, `epoch * steps_per_epoch + batch`, not
    the optimizer's counter, so a resumed run gets the rates an
    uninterrupted one gets. At every epoch end the rate at the end of the
    epoch is logged as `learning_rate` (a column of `history.csv`); when
    training ends the optimizer holds the rate of the next step, so a
    saved model records where the plan stands.

    Args:
        plan: a `CosinePlan`.
        steps_per_epoch: int, batches in a full epoch.
        initial_batch: int, batches already done in the first epoch of the
            `fit()` call (when resuming mid-epoch). Defaults to `0`.
        total_steps: int, the step at which the run ends (`epochs *
            steps_per_epoch`): `end_at_epoch` never moves the decay past
            it. Defaults to `None` (no limit).
    """

    def __init__(self, plan, steps_per_epoch, initial_batch=0, total_steps=None):
        super().__init__()
        self.plan = plan
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = total_steps
        self._offset = int(initial_batch)
        self._epoch = 0
        self.step = int(initial_batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.step = epoch * self.steps_per_epoch + self._offset

    def on_train_batch_begin(self, batch, logs=None):
        self.step = self._epoch * self.steps_per_epoch + self._offset + batch
        self.model.optimizer.learning_rate = self.plan(self.step)

    def on_train_batch_end(self, batch, logs=None):
        self.step = self._epoch * self.steps_per_epoch + self._offset + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        self.step = (epoch + 1) * self.steps_per_epoch
        if logs is not None:
            logs["learning_rate"] = self.plan(self.step)

    def on_train_end(self, logs=None):
        self.model.optimizer.learning_rate = self.plan(self.step)

    def end_at_epoch(self, epochs):
        """Re-sizes the decay to end after `epochs` epochs (from now on)."""
        end = int(epochs) * self.steps_per_epoch
        if self.total_steps is not None:
            end = min(end, int(self.total_steps))
        self.plan.resize(self.step, end)
