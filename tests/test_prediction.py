"""Tests of keras_unetpp.prediction: masks of any size, overlays, errors."""

import cv2
import numpy as np
import pytest

import keras_unetpp as ku
from keras_unetpp import prediction


@pytest.fixture(scope="module")
def model():
    return ku.prune(ku.build(2, (None, None, 1), filters=(2, 4, 8),
                             deep_supervision=True), 2)


def test_to_mask_thresholds_one_class_and_argmaxes_several():
    probabilities = np.array([[[0.2], [0.5], [0.9]]], np.float32)
    np.testing.assert_array_equal(prediction.to_mask(probabilities, 0.5),
                                  [[0, 255, 255]])
    np.testing.assert_array_equal(prediction.to_mask(probabilities, 0.6),
                                  [[0, 0, 255]])
    classes = np.array([[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]], np.float32)
    np.testing.assert_array_equal(prediction.to_mask(classes), [[1, 0]])


def test_native_size_prediction_pads_and_crops_back(model):
    image = np.random.default_rng(0).random((21, 30, 1), np.float32)
    probabilities = prediction.predict_probabilities(model, image)
    assert probabilities.shape == (21, 30, 1)
    padded, _ = ku.pad_to_multiple(image[None], 4)
    direct = model.predict(padded, verbose=0)[0, :21, :30]
    np.testing.assert_allclose(probabilities, direct, atol=1e-6)


def test_resized_prediction_comes_back_at_the_image_size(model):
    image = np.random.default_rng(1).random((50, 70, 1), np.float32)
    probabilities = prediction.predict_probabilities(model, image, (32, 32))
    assert probabilities.shape == (50, 70, 1)
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0


def test_overlay_tints_the_foreground_only():
    image = np.full((4, 4, 1), 0.5, np.float32)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    rgb = prediction.overlay(image, mask)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # background unchanged
    assert rgb[1, 1, 0] > rgb[1, 1, 2]  # foreground reddened (or outlined)


def test_predict_folder_writes_one_mask_per_image(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), np.zeros((9, 13), np.uint8))
    cv2.imwrite(str(inputs / "b.jpg"), np.zeros((20, 8, 3), np.uint8))
    (inputs / "notes.txt").write_text("not an image")
    written = prediction.predict_folder(model, inputs, tmp_path / "out")
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert cv2.imread(str(written[1]), cv2.IMREAD_UNCHANGED).shape == (20, 8)
    assert not (tmp_path / "out" / "overlays").exists()


def test_predict_folder_errors(model, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        prediction.predict_folder(model, tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="holds no"):
        prediction.predict_folder(model, tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="Received: threshold=1.5"):
        prediction.predict_folder(model, tmp_path, tmp_path / "out", threshold=1.5)
    full = ku.build(1, (None, None, 1), filters=(2, 4), deep_supervision=True)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="single-output model"):
        prediction.predict_folder(full, tmp_path, tmp_path / "out")
