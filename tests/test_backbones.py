"""UNet++ on keras.applications encoders: taps, pruning, weights, reloads."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_unetpp
from keras_unetpp import backbones
from keras_unetpp.description import tap_name
from keras_unetpp.errors import InputError

# One of each family in the default run; every other backbone in a slow test.
FAMILIES = [
    "vgg16",
    "resnet50",
    "resnet50v2",
    "densenet121",
    "efficientnetb0",
    "efficientnetv2b0",
    "convnext_tiny",
    "mobilenetv2",
]
OTHERS = sorted(set(backbones.BACKBONES) - set(FAMILIES))
SIZE = 64


def _build(name, channels=1, depth=None, **kwargs):
    depth = depth or backbones.BACKBONES[name].max_depth
    return keras_unetpp.build(
        depth,
        (None, None, channels),
        filters=4,
        backbone=name,
        deep_supervision=True,
        **kwargs,
    )


def _check_taps_and_pruning(name):
    entry = backbones.BACKBONES[name]
    model = _build(name)
    info = keras_unetpp.describe(model)
    assert info.encoder == name and info.depth == entry.max_depth == 5
    x = np.random.default_rng(0).random((1, SIZE, SIZE, 1), "float32")
    outputs = model(x, training=False)
    # Each tapped feature map has the stride of its level.
    for stride, layer in entry.taps.items():
        level = int(np.log2(stride))
        tapped = model.get_layer(tap_name(level))
        assert tapped.input._keras_history.operation.name == layer
        probe = keras.Model(model.input, tapped.output)
        assert probe(x).shape[1:3] == (SIZE // stride, SIZE // stride), layer
    # The output is at the input resolution, and pruned heads are exact.
    assert outputs["output_l5"].shape == (1, SIZE, SIZE, 1)
    encoder_params = sum(
        layer.count_params()
        for layer in model.layers
        if not layer.name.startswith(("x_", "output_"))
    )
    for level in (1, 2):
        pruned = keras_unetpp.prune(model, level)
        np.testing.assert_array_equal(
            pruned(x, training=False), outputs[f"output_l{level}"]
        )
        # Only the encoder layers X(0, level) needs are in the pruned model.
        assert pruned.count_params() < encoder_params
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_taps_its_strides_and_prunes(name):
    _check_taps_and_pruning(name)


@pytest.mark.slow
def test_every_other_backbone_builds_and_prunes():
    for name in OTHERS:
        _check_taps_and_pruning(name)
        keras.backend.clear_session()


def _trunk_weights(tmp_path, name):
    entry = backbones.BACKBONES[name]
    trunk = getattr(keras.applications, entry.constructor)(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    path = tmp_path / f"{name}.weights.h5"
    trunk.save_weights(path)
    return trunk, path


def test_a_weights_file_loads_and_adapts_the_first_kernel(tmp_path):
    trunk, path = _trunk_weights(tmp_path, "resnet50")
    source = trunk.get_layer("conv1_conv").kernel.numpy()
    gray = _build("resnet50", depth=4, encoder_weights=str(path))
    kernel = gray.get_layer("conv1_conv").kernel.numpy()
    # One channel: the RGB kernels summed (the channel order does not matter).
    np.testing.assert_allclose(kernel[:, :, 0], source.sum(axis=2), atol=1e-7)
    np.testing.assert_array_equal(
        gray.get_layer("conv4_block6_3_conv").kernel.numpy(),
        trunk.get_layer("conv4_block6_3_conv").kernel.numpy(),
    )
    rgb = _build("resnet50", channels=3, depth=4, encoder_weights=path)
    # Three channels: ResNet was trained on BGR, the package feeds RGB.
    np.testing.assert_array_equal(
        rgb.get_layer("conv1_conv").kernel.numpy(), source[:, :, ::-1]
    )
    five = _build("resnet50", channels=5, depth=4, encoder_weights=path)
    cycled = five.get_layer("conv1_conv").kernel.numpy()
    flipped = source[:, :, ::-1]
    np.testing.assert_allclose(cycled[:, :, 3], flipped[:, :, 0] * 3 / 5, atol=1e-7)
    for k in range(5):  # channel k takes RGB kernel k mod 3, scaled by 3/5
        np.testing.assert_allclose(
            cycled[:, :, k], flipped[:, :, k % 3] * 3 / 5, atol=1e-7
        )


def test_wrong_or_missing_weights_are_named(tmp_path, monkeypatch):
    _, path = _trunk_weights(tmp_path, "mobilenetv2")
    with pytest.raises(InputError, match=rf"{path.name}: not a weights file of"):
        _build("vgg16", depth=2, encoder_weights=path)
    with pytest.raises(InputError, match="the path of a weights file"):
        _build("vgg16", depth=2, encoder_weights=tmp_path / "missing.h5")

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(
        "keras.src.applications.mobilenet_v2.file_utils.get_file", offline
    )
    with pytest.raises(InputError, match="pass that file as encoder_weights"):
        _build("mobilenetv2", depth=2, encoder_weights="imagenet")


def test_frozen_encoder_and_argument_checks():
    frozen = _build("mobilenetv2", depth=3, encoder_trainable=False)
    trunk = [
        layer
        for layer in frozen.layers
        if layer.weights and not layer.name.startswith(("x_", "output_"))
    ]
    assert trunk and not any(layer.trainable for layer in trunk)
    assert frozen.get_layer("x_0_1_conv1").trainable
    with pytest.raises(InputError, match=r"`depth` can be at most 5"):
        _build("vgg16", depth=6)
    with pytest.raises(InputError, match="3D volumes use the built-in encoder"):
        keras_unetpp.build(2, (None, None, None, 1), backbone="resnet50")
    with pytest.raises(InputError, match="one of"):
        keras_unetpp.build(2, backbone="resnet18")
    with pytest.raises(InputError, match="give `backbone` too"):
        keras_unetpp.build(2, encoder_weights="imagenet")


def test_preprocessing_is_inside_the_graph():
    model = _build("vgg16", channels=3, depth=2)
    layer = model.get_layer("encoder_vgg16")
    x = np.full((1, 8, 8, 3), 0.5, "float32")
    # Caffe-style: 255 * x minus the ImageNet mean (in RGB order).
    expected = 127.5 - np.array([123.68, 116.779, 103.939])
    np.testing.assert_allclose(layer(x)[0, 0, 0], expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_reloads_in_safe_mode_without_the_package(name, tmp_path):
    model = _build(name, depth=3)
    x = np.random.default_rng(1).random((1, SIZE, SIZE, 1), "float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0)["output_l3"])
    model.save(tmp_path / "model.keras")
    code = (
        "import keras, numpy as np, sys; "
        "m = keras.saving.load_model('model.keras', safe_mode=True, compile=False); "
        "assert 'keras_unetpp' not in sys.modules; "
        "y = m.predict(np.load('x.npy'), verbose=0)['output_l3']; "
        "print(float(np.abs(y - np.load('y.npy')).max()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5
