"""The fine-tuning schedule: a frozen encoder first, then a lower rate."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp as ku
from keras_unetpp import training
from keras_unetpp.description import encoder_layers
from keras_unetpp.errors import InputError
from keras_unetpp.fine_tuning import EncoderFineTuning, set_encoder_trainable
from keras_unetpp.synthetic import synthetic_sample

SIZE = 32
NAMES = ("output_l1", "output_l2")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    # MobileNetV2 has batch normalizations in its trunk.
    return ku.build(
        2,
        (None, None, 1),
        filters=(4, 8, 16),
        deep_supervision=True,
        backbone="mobilenetv2",
    )


def _dataset(count=8, batch_size=4):
    rng = np.random.default_rng(0)
    images, masks = zip(*(synthetic_sample(rng, (SIZE, SIZE)) for _ in range(count)))
    x = (np.stack(images)[..., None] / 255.0).astype("float32")
    y = (np.stack(masks)[..., None] > 0).astype("float32")
    # No shuffling: a resumed run sees the batches an uninterrupted one sees.
    return tf.data.Dataset.from_tensor_slices((x, {n: y for n in NAMES})).batch(
        batch_size
    )


def _values(layers):
    return [np.array(w) for layer in layers for w in layer.get_weights()]


def _decoder(model):
    trunk = {id(layer) for layer in encoder_layers(model)}
    return [layer for layer in model.layers if id(layer) not in trunk]


class _Snapshots(keras.callbacks.Callback):
    """Encoder and decoder weights at every epoch end; the rate of each batch."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder, self.rates = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        rate = self.model.optimizer.learning_rate
        self.rates.append(float(keras.ops.convert_to_numpy(rate)))

    def on_epoch_end(self, epoch, logs=None):
        self.encoder.append(_values(encoder_layers(self.model)))
        self.decoder.append(_values(_decoder(self.model)))


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _train(model, path, epochs, **kwargs):
    return training.train(
        model,
        _dataset(),
        None,
        path,
        epochs=epochs,
        tensorboard=False,
        verbose=0,
        **kwargs,
    )


def test_the_encoder_is_frozen_then_trains_at_the_reduced_rate(tmp_path):
    model = _model()
    trunk = encoder_layers(model)
    norms = [x for x in trunk if isinstance(x, keras.layers.BatchNormalization)]
    assert norms and len(norms) < len(trunk)
    encoder0, decoder0 = _values(trunk), _values(_decoder(model))
    norms0 = _values(norms)
    snaps = _Snapshots()
    result = _train(
        model,
        tmp_path,
        3,
        learning_rate=1e-3,
        freeze_encoder_epochs=2,
        unfreeze_lr_factor=0.1,
        callbacks=[snaps],
    )
    # Frozen epochs 1 and 2: every trunk weight is bit for bit the same
    # (moving statistics included: the batch norms run in inference mode),
    # while the decoder trains in every epoch.
    assert _same(snaps.encoder[0], encoder0) and _same(snaps.encoder[1], encoder0)
    decoders = [decoder0, *snaps.decoder]
    for before, after in zip(decoders, decoders[1:]):
        assert not _same(before, after)
    # Epoch 3: the trunk's convolutions train, its batch norms stay frozen.
    assert not _same(snaps.encoder[2], encoder0)
    assert _same(_values(norms), norms0)
    conv = next(x for x in trunk if isinstance(x, keras.layers.Conv2D))
    assert conv.trainable and not norms[0].trainable
    # The rate: 1e-3 for the 2 x 2 frozen steps, then 0.1 * 1e-3.
    np.testing.assert_allclose(snaps.rates, [1e-3] * 4 + [1e-4] * 2, rtol=1e-6)
    assert result["learning_rate"] == pytest.approx(1e-4, rel=1e-6)
    # A new optimizer state at the unfreeze: 2 steps since then.
    assert int(model.optimizer.iterations) == 2
    history = result["history"]
    assert [row["encoder_frozen"] for row in history] == [1.0, 1.0, 0.0]
    np.testing.assert_allclose(
        [row["learning_rate"] for row in history], [1e-3, 1e-3, 1e-4], rtol=1e-6
    )


def test_a_cosine_plan_is_followed_at_the_reduced_share(tmp_path):
    snaps = _Snapshots()
    _train(
        _model(),
        tmp_path,
        3,
        learning_rate=1e-3,
        lr_schedule="cosine",
        freeze_encoder_epochs=1,
        unfreeze_lr_factor=0.5,
        callbacks=[snaps],
    )
    # CosineDecay(1e-3, 6 steps, alpha=0.05), halved from step 2 (epoch 2) on.
    total, peak, low = 6, 1e-3, 5e-5
    expected = [
        (low + (peak - low) * 0.5 * (1 + math.cos(math.pi * step / total)))
        * (0.5 if step >= 2 else 1.0)
        for step in range(total)
    ]
    np.testing.assert_allclose(snaps.rates, expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("first_call_epochs, epochs", [(1, 2), (2, 3)])
def test_a_resumed_run_continues_on_either_side_of_the_unfreeze(
    tmp_path, first_call_epochs, epochs
):
    settings = dict(learning_rate=1e-3, freeze_encoder_epochs=1)
    whole = _model()
    start = tmp_path / "start.weights.h5"
    whole.save_weights(start)
    _train(whole, tmp_path / "whole", epochs, **settings)
    # The same run in two calls: stopped at the end of the frozen epoch
    # (before the unfreeze) or one epoch after it.
    split = _model(seed=1)
    split.load_weights(start)
    _train(split, tmp_path / "split", first_call_epochs, **settings)
    resumed = _model(seed=2)
    result = _train(resumed, tmp_path / "split", epochs, **settings)
    assert result["resumed_from"] == (first_call_epochs, 0)
    assert result["learning_rate"] == pytest.approx(1e-4, rel=1e-6)
    # 2 steps per epoch; the optimizer state is new since the unfreeze.
    steps_since_unfreeze = 2 * (epochs - 1)
    assert int(resumed.optimizer.iterations) == steps_since_unfreeze
    assert int(whole.optimizer.iterations) == steps_since_unfreeze
    frozen = [row["encoder_frozen"] for row in result["history"]]
    assert frozen == [1.0] + [0.0] * (epochs - 1)
    for a, b in zip(whole.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5, err_msg=a.path)


def test_fine_tuning_arguments_are_checked(tmp_path):
    builtin = ku.build(2, (None, None, 1), filters=(4, 8, 16), deep_supervision=True)
    model = _model()
    with pytest.raises(InputError, match="needs a model on a pretrained backbone"):
        _train(builtin, tmp_path, 1, freeze_encoder_epochs=1)
    with pytest.raises(InputError, match="needs a model on a pretrained backbone"):
        set_encoder_trainable(builtin, False)
    for factor in (0, 1.5, float("nan"), True):
        with pytest.raises(InputError, match="unfreeze_lr_factor"):
            _train(model, tmp_path, 1, freeze_encoder_epochs=1,
                   unfreeze_lr_factor=factor)  # fmt: skip
    with pytest.raises(InputError, match="freeze_encoder_epochs"):
        _train(model, tmp_path, 1, freeze_encoder_epochs=-1)
    with pytest.raises(InputError, match="at least one frozen epoch"):
        EncoderFineTuning(0)
