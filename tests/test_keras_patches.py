"""The runtime patches' one convention, and the private Keras names they use."""

import keras
import numpy as np
import pytest

from keras_unetpp import keras_patches


def test_every_private_keras_name_exists_in_this_keras():
    # Fails loudly, naming what is missing, after a Keras upgrade removes one.
    assert keras_patches.check_private_names() == keras.__version__


def test_a_removed_private_name_is_named(monkeypatch):
    owner = next(cls for cls in type.mro(keras.Model) if "_flatten_layers" in vars(cls))
    monkeypatch.delattr(owner, "_flatten_layers")
    with pytest.raises(RuntimeError, match=r"_flatten_layers \(fuse_batch_norm"):
        keras_patches.check_private_names()


def test_patch_binds_to_one_object_marks_it_and_resets_steps():
    inputs = keras.Input((3,))
    first, second = keras.layers.Dense(2), keras.layers.Dense(2)
    model = keras.Model(inputs, second(first(inputs)))
    x = np.ones((1, 3), "float32")
    model.predict(x, verbose=0)
    assert model.predict_function is not None

    def doubled(layer, inputs, **kwargs):
        return 2.0 * type(layer).call(layer, inputs, **kwargs)

    assert keras_patches.patch(first, "call", doubled, "doubled", model=model)
    assert model.predict_function is None  # the next predict traces again
    assert keras_patches.patched(first, "doubled") is True
    assert keras_patches.patched(second, "doubled") is None
    # Patching again is a no-op (not doubled twice).
    assert not keras_patches.patch(first, "call", doubled, "doubled", model=model)
    np.testing.assert_allclose(
        first(x), 2.0 * (x @ first.kernel.numpy() + first.bias.numpy()), rtol=1e-6
    )
    # Another instance of the class is untouched.
    other = keras.layers.Dense(2)
    np.testing.assert_allclose(
        other(x), x @ other.kernel.numpy() + other.bias.numpy(), rtol=1e-6
    )
