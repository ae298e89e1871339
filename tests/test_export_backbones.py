"""Per-level SavedModel export of UNet++ on one backbone of each family.

As `keras-unetpp export` does it: the model is saved as `.keras`, reloaded
in safe mode, and `export_pruned` writes every level from the reloaded
model. Each level's `serving_default` signature must give what
`prune(model, L)` of the original model gives on the same input (padded
with `keras_unetpp.pad_to_multiple` and cropped back, as in
tests/test_export.py), at a size that needs padding.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from fake_run import randomize_normalization

import keras_unetpp as ku
from keras_unetpp.export import export_pruned, load_metadata

DEPTH = 3
LEVELS = (1, 3)
# MobileNetV2 is the lightest trunk: it runs by default, the others are slow.
FAMILIES = [
    pytest.param("mobilenetv2"),
    *(
        pytest.param(name, marks=pytest.mark.slow)
        for name in (
            "vgg16",
            "resnet50",
            "resnet50v2",
            "densenet121",
            "efficientnetb0",
            "efficientnetv2b0",
            "convnext_tiny",
        )
    ),
]


def _reference(model, level, images):
    padded, (height, width) = ku.pad_to_multiple(images, 2**level)
    outputs = ku.prune(model, level)(padded, training=False)
    return np.asarray(outputs)[:, :height, :width]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_level_serves_what_prune_gives(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = ku.build(
        DEPTH,
        (None, None, 1),
        filters=4,
        deep_supervision=True,
        backbone=name,
        name="unetpp",
    )
    # Batch norms with statistics of their own, as after training: a
    # serving graph that ran them in training mode would differ.
    randomize_normalization(model)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(
        tmp_path / "model.keras", safe_mode=True, compile=False
    )
    assert ku.describe(reloaded).encoder == name
    paths = export_pruned(reloaded, tmp_path / "export", levels=LEVELS)
    assert sorted(paths) == list(LEVELS)
    images = np.random.default_rng(1).random((2, 30, 45, 1)).astype("float32")
    for level, path in paths.items():
        assert (path / "saved_model.pb").is_file()
        assert load_metadata(path)["level"] == level
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        outputs = signature(image=tf.constant(images))
        expected = _reference(model, level, images)
        assert expected.shape == (2, 30, 45, 1)
        # A real comparison: the probabilities are not all saturated.
        assert np.mean((expected > 0.01) & (expected < 0.99)) > 0.1, name
        np.testing.assert_allclose(
            outputs["probabilities"], expected, atol=2e-5, err_msg=f"{name} L{level}"
        )
        np.testing.assert_array_equal(outputs["mask"], expected >= 0.5)
