"""Fine-tuning a pretrained encoder: frozen first, then at a lower rate.

How transfer learning is usually done (Keras' transfer-learning guide,
segmentation_models): train the new decoder on a frozen pretrained encoder
for a few epochs, so that its random initial gradients do not wreck the
pretrained features, then unfreeze the encoder and train the whole model at
a lower learning rate. `train(..., freeze_encoder_epochs=N,
unfreeze_lr_factor=f)` does that with an `EncoderFineTuning` schedule:

- Epochs 1..N: the backbone's trunk layers (`description.encoder_layers`)
  are not trainable, so their weights do not change, and their batch
  normalizations run in inference mode (moving statistics, not updated).
  The decoder and the heads train.
- At the start of epoch N + 1 the trunk becomes trainable, except its batch
  normalizations, which stay frozen in inference mode (the guide's advice:
  the pretrained statistics are kept, small segmentation batches do not
  overwrite them). The optimizer starts afresh, as the guide's recompile
  with a new optimizer does (slots and step counter reset), and the
  learning rate is multiplied by `f` from then on: a constant rate becomes
  `f * rate`, a cosine plan (`keras_unetpp.schedule.CosinePlan`) is followed
  at `f` times its value.

The optimizer is built once on every variable that will ever train (the
trunk's included), so its saved state has the same layout before and after
the unfreeze, and `train()` resumes a run on either side of it: the phase
follows from the saved position (epoch, batch) alone.
"""

import math

import keras

from keras_unetpp import keras_patches
from keras_unetpp.description import encoder_layers
from keras_unetpp.errors import InputError
from keras_unetpp.validation import check_int


def check_fine_tuning(freeze_encoder_epochs, unfreeze_lr_factor):
    """Returns the two settings checked: an int >= 0 and a float in (0, 1]."""
    if freeze_encoder_epochs is None:
        freeze_encoder_epochs = 0
    if freeze_encoder_epochs != 0:
        freeze_encoder_epochs = check_int(
            freeze_encoder_epochs, "freeze_encoder_epochs"
        )
    if (
        isinstance(unfreeze_lr_factor, bool)
        or not isinstance(unfreeze_lr_factor, (int, float))
        or not math.isfinite(unfreeze_lr_factor)
        or not 0 < unfreeze_lr_factor <= 1
    ):
        raise InputError(
            "`unfreeze_lr_factor` must be a number in (0, 1], the share of "
            "the learning rate kept after the encoder is unfrozen. Received: "
            f"unfreeze_lr_factor={unfreeze_lr_factor!r}"
        )
    return int(freeze_encoder_epochs), float(unfreeze_lr_factor)


def set_encoder_trainable(model, trainable, batch_norm=None):
    """Freezes or unfreezes the backbone's trunk layers of `model`.

    Args:
        model: a keras_unetpp model on a backbone.
        trainable: bool, the flag of the trunk's layers.
        batch_norm: bool, the flag of the trunk's batch normalizations
            (frozen ones run in inference mode); `None` follows
            `trainable`. Defaults to `None`.

    Returns:
        list of the trunk's layers.

    Raises:
        InputError: the model has no backbone (the built-in encoder).
    """
    layers = encoder_layers(model)
    if not layers:
        raise InputError(
            "Freezing the encoder needs a model on a pretrained backbone "
            "(keras_unetpp.build(..., backbone=...)); this one has the built-in "
            f"encoder. Received: model={model.name!r}"
        )
    batch_norm = trainable if batch_norm is None else batch_norm
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = bool(batch_norm)
        else:
            layer.trainable = bool(trainable)
    return layers


class ScaledPlan:
    """A learning-rate plan times `factor` from step `start` on.

    It wraps a `keras_unetpp.schedule.CosinePlan` for the
    `LearningRatePlan` callback: re-sizing (`resize`, `extend`) and the
    recorded configuration are the wrapped plan's, so a resumed run
    rebuilds the plan from the state and wraps it again.

    Args:
        plan: the `CosinePlan`.
        start: int, the first optimizer step of the reduced rate.
        factor: float, the multiplier from `start` on.
    """

    def __init__(self, plan, start, factor):
        self.plan = plan
        self.start = int(start)
        self.factor = float(factor)

    def __call__(self, step):
        rate = self.plan(step)
        return rate * self.factor if step >= self.start else rate

    def resize(self, step, end):
        self.plan.resize(step, end)

    def extend(self, step, end):
        self.plan.extend(step, end)

    def phase(self, step):
        return self.plan.phase(step)

    @property
    def end(self):
        return self.plan.end

    @property
    def final_rate(self):
        return self.plan.final_rate * self.factor

    def get_config(self):
        return self.plan.get_config()


class EncoderFineTuning(keras.callbacks.Callback):
    """The frozen-then-unfrozen encoder schedule of one `train()` run.

    `train()` drives it: `prepare()` once the model is compiled (and before
    a saved state is loaded), `unfreeze()` between the `fit()` calls at the
    start of epoch `epochs + 1`. As a callback it logs `encoder_frozen` (1
    or 0) and `learning_rate` (the optimizer's, unless a plan logged it) at
    every epoch end, so `history.csv` shows the schedule.

    Args:
        epochs: int >= 1, the epochs trained with the encoder frozen.
        factor: float in (0, 1], the learning-rate multiplier after them.
            Defaults to `0.1`.
        steps_per_epoch: int, batches per epoch. Defaults to `1`.
    """

    def __init__(self, epochs, factor=0.1, steps_per_epoch=1):
        super().__init__()
        self.epochs, self.factor = check_fine_tuning(epochs, factor)
        if not self.epochs:
            raise InputError(
                "EncoderFineTuning needs at least one frozen epoch. "
                f"Received: epochs={epochs!r}"
            )
        self.steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch")
        self.frozen = None

    @property
    def unfreeze_step(self):
        """The optimizer step (run position) where the encoder trains."""
        return self.epochs * self.steps_per_epoch

    def scale_plan(self, plan):
        """The cosine plan, times `factor` after the unfreeze (`ScaledPlan`)."""
        return ScaledPlan(plan, self.unfreeze_step, self.factor)

    def prepare(self, model, epoch=0, batch=0):
        """Sets the phase of a run at (`epoch`, `batch`) and builds the optimizer.

        The optimizer (already given by `compile()`) is built on the
        variables that train after the unfreeze, so that its state keeps one
        layout. The encoder is frozen at positions up to the first batch of
        epoch `epochs + 1`, where `unfreeze()` is still to come.
        """
        optimizer = model.optimizer
        if isinstance(
            optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            raise InputError(
                "The fine-tuning schedule lowers the learning rate when the "
                "encoder is unfrozen; give an optimizer with a float learning "
                "rate (or lr_schedule='cosine'). Received: an optimizer with a "
                "LearningRateSchedule"
            )
        set_encoder_trainable(model, True, batch_norm=False)
        variables = list(model.trainable_variables)
        if not optimizer.built:
            optimizer.build(variables)
        else:
            known = {id(v) for v in optimizer._trainable_variables}
            if not all(id(v) in known for v in variables):
                raise InputError(
                    "The optimizer was built before the fine-tuning schedule "
                    "and does not know the encoder's variables; pass an "
                    "optimizer that has not been used yet. Received: a built "
                    f"{type(optimizer).__name__}"
                )
        position = int(epoch) * self.steps_per_epoch + int(batch)
        self.frozen = position <= self.unfreeze_step
        if self.frozen:
            set_encoder_trainable(model, False)
        keras_patches.reset_step_functions(model)
        return self.frozen

    def unfreeze(self, model):
        """Unfreezes the encoder (not its batch norms), resets the optimizer.

        The optimizer's variables (step counter, slots) get the values of a
        new optimizer of the same configuration, and its learning rate is
        multiplied by `factor` (a `LearningRatePlan` sets it again from the
        scaled plan at the next batch).
        """
        set_encoder_trainable(model, True, batch_norm=False)
        optimizer = model.optimizer
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        fresh = type(optimizer).from_config(optimizer.get_config())
        fresh.build(optimizer._trainable_variables)
        for mine, new in zip(optimizer.variables, fresh.variables, strict=True):
            mine.assign(new.value)
        optimizer.learning_rate = rate * self.factor
        keras_patches.reset_step_functions(model)
        self.frozen = False

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["encoder_frozen"] = float(bool(self.frozen))
        if "learning_rate" not in logs:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
