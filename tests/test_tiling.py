"""predict_tiled: sliding-window prediction checked against hand-made tilings.

The reference tilings here are written out by hand in NumPy (tile starts as
literals, the weights from their formula, the normalized weighted sum), and
the models are tiny convolutions with fixed weights, so every expected value
is known without trusting the code under test.
"""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_unetpp
from keras_unetpp.description import logits_name
from keras_unetpp.tiling import padded_size, tile_positions, tile_weights

REPO = pathlib.Path(__file__).resolve().parents[1]

ASYMMETRIC = np.array([[0.1, -0.4, 0.3], [0.7, 0.2, -0.5], [-0.2, 0.6, 0.4]])
SYMMETRIC = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 8


def _conv_model(kernel, bias=0.0, activation=None):
    """A one-layer functional model, `padding="same"`, stride 1, any size.

    `kernel` has shape `(*window, in_channels, out_channels)`; its rank
    (2D or 3D) follows from it.
    """
    rank = kernel.ndim - 2
    conv = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    inputs = keras.Input((None,) * rank + (kernel.shape[-2],))
    layer = conv(
        kernel.shape[-1], kernel.shape[:rank], padding="same", activation=activation
    )
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([kernel, np.full(kernel.shape[-1], bias)])
    return model


def _call(model, images):
    """The model's output(s) on `images` as NumPy (a dict for several)."""
    outputs = model(images, training=False)
    if isinstance(outputs, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
    return keras.ops.convert_to_numpy(outputs)


@pytest.fixture(scope="module")
def asymmetric():
    """3x3 conv, 1 channel to 2 sigmoid channels; no flip or rot90 symmetry."""
    kernel = np.stack([ASYMMETRIC, ASYMMETRIC.T[::-1] * 0.5], axis=-1)[:, :, None]
    return _conv_model(kernel, bias=0.1, activation="sigmoid")


@pytest.fixture(scope="module")
def symmetric():
    """3x3 conv whose kernel is invariant under flips and transposition."""
    return _conv_model(SYMMETRIC[:, :, None, None], bias=-0.2, activation="sigmoid")


@pytest.fixture(scope="module")
def pointwise():
    """1x1 conv, 2 channels in, 3 sigmoid channels out."""
    kernel = np.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]])[None, None]
    return _conv_model(kernel, bias=0.2, activation="sigmoid")


@pytest.fixture(scope="module")
def supervised():
    keras.utils.set_random_seed(0)
    return keras_unetpp.build(depth=2, filters=4, deep_supervision=True)


def _images(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _gaussian(tile, sigma_scale=0.125):
    weights = np.ones(())
    for t in tile:
        x = np.arange(t)
        g = np.exp(-((x - (t - 1) / 2) ** 2) / (2 * (sigma_scale * t) ** 2))
        weights = np.multiply.outer(weights, g)
    return weights


def _reference(model, image, tile, starts, weights, pad_mode=None):
    """Tiles one image `(*spatial, channels)` by hand and stitches it."""
    spatial = image.shape[:-1]
    if pad_mode is not None:
        widths = [(0, max(0, t - n)) for t, n in zip(tile, spatial)] + [(0, 0)]
        image = np.pad(image, widths, mode=pad_mode)
    total, weight_sum = 0.0, np.zeros(image.shape[:-1])
    for corner in itertools.product(*starts):
        window = tuple(slice(c, c + t) for c, t in zip(corner, tile))
        prediction = _call(model, image[window][None])[0].astype(np.float64)
        canvas = np.zeros(image.shape[:-1] + prediction.shape[-1:])
        canvas[window] = prediction * weights[..., None]
        total = total + canvas
        weight_sum[window] += weights
    stitched = total / weight_sum[..., None]
    return stitched[tuple(slice(0, n) for n in spatial)]


# --- The tile grid and the weights -------------------------------------------


@pytest.mark.parametrize(
    "size, tile, overlap, stride, expected",
    [
        (10, 4, 0.5, 1, [0, 2, 4, 6]),  # step 2, exactly
        (8, 8, 0.5, 1, [0]),
        (3, 8, 0.5, 1, [0]),  # smaller than a tile: one (padded) tile
        (16, 8, 0.0, 1, [0, 8]),
        # 9 pixels to cover in steps of at most 8: 3 tiles, 4.5 apart,
        # rounded to 5 and mirrored: 9 - 5 = 4, 9 - 0 = 9.
        (17, 8, 0.0, 1, [0, 5, 9]),
        (13, 8, 0.5, 1, [0, 3, 5]),  # 5 / 2 = 2.5, rounded up
        (21, 8, 0.5, 1, [0, 3, 7, 10, 13]),  # 13 / 4 = 3.25, 6.5 -> 3, 7, mirrored
        (10, 4, 0.4, 1, [0, 2, 4, 6]),  # steps of at most 4 * 0.6 = 2.4 -> 2
        # Stride 4: padded to 40, steps of one stride.
        (37, 8, 0.5, 4, [0, 4, 8, 12, 16, 20, 24, 28, 32]),
        # Stride 2: padded to 14; in units of 2, 3 to cover in steps of 2.
        (13, 8, 0.5, 2, [0, 4, 6]),
        (3, 256, 0.5, 16, [0]),
    ],
)
def test_tile_starts_by_hand(size, tile, overlap, stride, expected):
    assert tile_positions(size, tile, overlap, stride) == expected


def test_padded_size():
    assert padded_size(4001, 256, 16) == 4016
    assert padded_size(4000, 256, 16) == 4000
    assert padded_size(3, 256, 16) == 256
    assert padded_size(13, 8, 1) == 13
    starts = tile_positions(4001, 256, 0.5, 16)
    assert len(starts) == 31 and starts[-1] == 4016 - 256
    assert set(np.diff(starts)) == {112, 128}


@pytest.mark.parametrize("tile", [8, 16, 256])
@pytest.mark.parametrize("stride", [1, 8])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_tile_grid_covers_overlaps_and_is_mirror_symmetric(tile, stride, overlap):
    for size in [tile, tile + 1, tile + 7, 3 * tile + 5, 565, 584, 4001]:
        padded = padded_size(size, tile, stride)
        assert padded % stride == 0 and padded >= max(size, tile)
        assert padded - size < stride or size < tile
        starts = tile_positions(size, tile, overlap, stride)
        assert starts[0] == 0 and starts[-1] == padded - tile
        assert all(start % stride == 0 for start in starts)
        gaps = np.diff(starts)
        assert (gaps > 0).all()
        # Neighbours share at least overlap * tile pixels, or as many as
        # steps of one stride leave (none, for a tile one stride long).
        shared = min(overlap * tile, tile - stride)
        assert (tile - gaps >= shared - 1e-9).all(), (size, starts)
        # As few tiles as that allows: the largest step that keeps it is
        # tile * (1 - overlap) rounded down to the stride (at least 1
        # stride), and one tile fewer would need longer steps.
        step = stride * max(1, int(tile / stride * (1 - overlap) + 1e-9))
        count = len(starts)
        assert (count - 2) * step < padded - tile <= (count - 1) * step
        mirrored = sorted(padded - tile - s for s in starts)
        if ((padded - tile) // stride) % 2 == 0 or count % 2 == 0:
            assert mirrored == starts
        else:  # The middle tile of an odd count is half a stride off.
            assert sum(a != b for a, b in zip(mirrored, starts)) == 1


def test_weights_formula():
    np.testing.assert_array_equal(tile_weights((4, 6), "constant"), np.ones((4, 6)))
    weights = tile_weights((16, 12), "gaussian", 0.125)
    expected = _gaussian((16, 12))
    np.testing.assert_allclose(weights, expected / expected.max(), rtol=1e-6)
    # Symmetric about the tile centre, peak 1 at the centre.
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])
    assert weights.max() == 1.0 and weights[7:9, 5:7].min() == 1.0
    # A tiny sigma underflows to 0 without the floor; all stay positive.
    assert tile_weights((64,), "gaussian", 0.001).min() == pytest.approx(1e-8)


# --- Against the NumPy reference ---------------------------------------------


@pytest.mark.parametrize("blending", ["constant", "gaussian"])
@pytest.mark.parametrize(
    "size, starts, pad_mode",
    [
        ((20, 28), ([0, 4, 8, 12], [0, 4, 8, 12, 16, 20]), None),
        ((13, 21), ([0, 3, 5], [0, 3, 7, 10, 13]), None),
        # Padded to the tile: reflect where the image is large enough for
        # it (3 rows of padding, 5 rows), edge where it is not (5 of 3).
        ((5, 21), ([0], [0, 3, 7, 10, 13]), "reflect"),
        ((3, 21), ([0], [0, 3, 7, 10, 13]), "edge"),
    ],
)
def test_matches_numpy_reference(asymmetric, blending, size, starts, pad_mode):
    images = _images((2, *size, 1))
    weights = _gaussian((8, 8)) if blending == "gaussian" else np.ones((8, 8))
    # batch_size 5 does not divide the tile count: a short last batch, and
    # batches that hold tiles of both images.
    result = keras_unetpp.predict_tiled(
        asymmetric, images, 8, overlap=0.5, blending=blending, batch_size=5, stride=1
    )
    assert result.shape == (2, *size, 2) and result.dtype == np.float32
    for image, got in zip(images, result):
        expected = _reference(asymmetric, image, (8, 8), starts, weights, pad_mode)
        np.testing.assert_allclose(got, expected, atol=2e-6)


def test_sigma_scale_changes_the_blend(asymmetric):
    images = _images((1, 20, 28, 1))
    result = keras_unetpp.predict_tiled(
        asymmetric, images, 8, sigma_scale=0.3, stride=1
    )
    starts = ([0, 4, 8, 12], [0, 4, 8, 12, 16, 20])
    expected = _reference(asymmetric, images[0], (8, 8), starts, _gaussian((8, 8), 0.3))
    np.testing.assert_allclose(result[0], expected, atol=2e-6)
    default = keras_unetpp.predict_tiled(asymmetric, images, 8, stride=1)
    assert np.abs(default - result).max() > 1e-4


def test_non_square_tiles(asymmetric):
    images = _images((1, 20, 28, 1))
    result = keras_unetpp.predict_tiled(
        asymmetric, images, (8, 16), overlap=0.5, stride=1
    )
    starts = ([0, 4, 8, 12], [0, 6, 12])  # 12 / 8 -> 2 steps of 6
    expected = _reference(asymmetric, images[0], (8, 16), starts, _gaussian((8, 16)))
    np.testing.assert_allclose(result[0], expected, atol=2e-6)


def test_batch_size_only_groups_the_tiles(asymmetric):
    images = _images((3, 20, 28, 1))
    one = keras_unetpp.predict_tiled(asymmetric, images, 8, batch_size=1, stride=1)
    for batch_size in (7, 64):
        np.testing.assert_allclose(
            keras_unetpp.predict_tiled(
                asymmetric, images, 8, batch_size=batch_size, stride=1
            ),
            one,
            atol=1e-6,
        )


# --- Sizes, seams and constants ----------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (565, 584)])
def test_pointwise_model_tiled_equals_untiled(pointwise, size):
    images = _images((1, *size, 2))
    result = keras_unetpp.predict_tiled(
        pointwise, images, 64, overlap=0.5, batch_size=32, stride=1
    )
    assert result.shape == (1, *size, 3)
    np.testing.assert_allclose(result, _call(pointwise, images), atol=1e-6)


def test_empty_batch(pointwise):
    result = keras_unetpp.predict_tiled(
        pointwise, np.zeros((0, 5, 9, 2), np.float32), 8, stride=1
    )
    assert result.shape == (0, 5, 9, 3) and result.dtype == np.float32


def test_tiles_on_the_stride_grid_equal_the_padded_prediction():
    """A model with a stride-4 pooling is shift-variant: its output at a
    pixel is the max of the aligned 4x4 block around it. Tiles that start at
    multiples of the stride see the blocks of the whole image, so tiling
    changes nothing, also for sizes that are not multiples of 4 (padded like
    `pad_to_multiple`); tiles on a stride-1 grid cut the blocks."""
    inputs = keras.Input((None, None, 1))
    x = keras.layers.MaxPooling2D(4)(inputs)
    outputs = keras.layers.UpSampling2D(4)(x)
    blocks = keras.Model(inputs, outputs)
    images = _images((2, 37, 50, 1))
    padded, (height, width) = keras_unetpp.pad_to_multiple(images, 4)
    expected = _call(blocks, padded)[:, :height, :width]
    aligned = keras_unetpp.predict_tiled(blocks, images, 16, stride=4)
    np.testing.assert_allclose(aligned, expected, atol=1e-6)
    # Stride 1 puts tiles at 0, 7, 14, 21 on the 37 rows: blocks are cut.
    misaligned = keras_unetpp.predict_tiled(blocks, images, 16, stride=1)
    assert np.abs(misaligned - expected).max() > 0.1


def test_no_seams_with_a_smooth_model_on_a_ramp():
    """A 5x5 box blur of a linear ramp (values 0..1) is the ramp, except
    within 2 pixels of a zero-padded border: of the image (the same tiled
    or not) and of each tile (the seams, where a tile's prediction drops by
    up to 40%). With overlap 0.5, a tile's border is the centre of its
    neighbour, where the Gaussian weight is exp(-7.5) ~ 5.5e-4 of the
    centre's: the seams shrink to ~5e-4, an eighth of an 8-bit grey level.
    The plain average, the control, keeps them (~0.3).
    """
    blur = _conv_model(np.full((5, 5, 1, 1), 1 / 25))
    rows, cols = np.mgrid[0:96, 0:80]
    ramp = ((rows + 2 * cols) / 256.0).astype(np.float32)[None, ..., None]
    untiled = _call(blur, ramp)
    # Tiles start at 0, 16, 32, 48 (, 64) on both axes.
    gaussian = keras_unetpp.predict_tiled(blur, ramp, 32, overlap=0.5, stride=1)
    constant = keras_unetpp.predict_tiled(
        blur, ramp, 32, overlap=0.5, blending="constant", stride=1
    )
    assert np.abs(gaussian - untiled).max() < 1e-3
    assert np.abs(constant - untiled).max() > 0.1
    # No step: away from the image border, the second differences of the
    # untiled prediction are 0 (a ramp); the tiled ones stay below 1e-3.
    inner = (slice(None), slice(3, -3), slice(3, -3))
    for axis in (1, 2):
        assert np.abs(np.diff(untiled, 2, axis=axis)[inner]).max() < 1e-6
        assert np.abs(np.diff(gaussian, 2, axis=axis)[inner]).max() < 1e-3
        assert np.abs(np.diff(constant, 2, axis=axis)[inner]).max() > 0.1


@pytest.mark.parametrize("blending", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_constant_model_returns_the_constant(blending, overlap):
    constant = _conv_model(np.zeros((3, 3, 1, 2)), bias=0.3)
    images = _images((2, 37, 50, 1))
    result = keras_unetpp.predict_tiled(
        constant, images, 16, overlap=overlap, blending=blending, stride=1
    )
    np.testing.assert_allclose(result, 0.3, rtol=1e-6)


def test_constant_logits_head_becomes_its_sigmoid():
    """A logits model whose head is a constant 0.7 returns sigmoid(0.7)."""
    keras.utils.set_random_seed(1)
    model = keras_unetpp.build(depth=2, filters=4, output_activation=None)
    head = model.get_layer(logits_name(2))
    kernel, _ = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.array([0.7])])
    result = keras_unetpp.predict_tiled(model, _images((1, 30, 21, 1)), 16)
    np.testing.assert_allclose(result, 1 / (1 + np.exp(-0.7)), rtol=1e-6)


# --- Test-time augmentation --------------------------------------------------


def _flips(rank):
    """Every subset of the spatial axes 1..rank, as (forward, inverse)."""
    for mask in itertools.product((False, True), repeat=rank):
        axes = tuple(a + 1 for a in range(rank) if mask[a])
        yield (lambda x, a=axes: np.flip(x, a)), (lambda y, a=axes: np.flip(y, a))


def _dihedral(rank):
    """The rotations by k * 90 degrees of the last two spatial axes, each
    with and without a transposition of them, and for 3D volumes with and
    without a flip of the first axis: the 8 (2D) or 16 (3D) symmetries."""
    h, w = rank - 1, rank
    first = [(), (1,)] if rank == 3 else [()]
    for k, transpose, flip in itertools.product(range(4), (False, True), first):

        def forward(x, k=k, transpose=transpose, flip=flip):
            x = np.flip(np.rot90(x, k, axes=(h, w)), flip)
            return np.swapaxes(x, h, w) if transpose else x

        def inverse(y, k=k, transpose=transpose, flip=flip):
            y = np.swapaxes(y, h, w) if transpose else y
            return np.rot90(np.flip(y, flip), -k, axes=(h, w))

        yield forward, inverse


def _tta_by_hand(predict, images, transforms):
    outputs = [inverse(predict(forward(images))) for forward, inverse in transforms]
    assert len(outputs) in (4, 8, 16)
    return np.mean(outputs, axis=0)


@pytest.mark.parametrize("tta", ["flips", "flips+rot90"])
def test_tta_is_invisible_for_an_equivariant_model(symmetric, tta):
    images = _images((1, 37, 50, 1))
    for tile in (16, (16, 24)):
        plain = keras_unetpp.predict_tiled(symmetric, images, tile, stride=1)
        augmented = keras_unetpp.predict_tiled(
            symmetric, images, tile, tta=tta, stride=1
        )
        np.testing.assert_allclose(augmented, plain, atol=1e-6)


@pytest.mark.parametrize(
    "tta, transforms", [("flips", _flips), ("flips+rot90", _dihedral)]
)
def test_tta_on_one_tile_is_the_mean_of_the_transformed_predictions(
    asymmetric, tta, transforms
):
    images = _images((2, 16, 16, 1))
    result = keras_unetpp.predict_tiled(asymmetric, images, 16, tta=tta, stride=1)
    expected = _tta_by_hand(
        lambda x: _call(asymmetric, np.ascontiguousarray(x)), images, transforms(2)
    )
    np.testing.assert_allclose(result, expected, atol=1e-6)
    plain = keras_unetpp.predict_tiled(asymmetric, images, 16, stride=1)
    assert np.abs(result - plain).max() > 1e-2  # The model is not equivariant.


@pytest.mark.parametrize(
    "tta, size, transforms",
    [("flips", (20, 28), _flips), ("flips+rot90", (20, 20), _dihedral)],
)
def test_tta_over_many_tiles_equals_tiling_the_transformed_images(
    asymmetric, tta, size, transforms
):
    """The grid and the weights are symmetric, so TTA per tile is TTA of
    the whole tiled prediction."""
    images = _images((1, *size, 1))
    result = keras_unetpp.predict_tiled(asymmetric, images, 8, tta=tta, stride=1)
    expected = _tta_by_hand(
        lambda x: keras_unetpp.predict_tiled(asymmetric, x, 8, stride=1),
        images,
        transforms(2),
    )
    np.testing.assert_allclose(result, expected, atol=1e-6)


# --- keras_unetpp models: heads, classes, logits, pruning --------------------


def test_deep_supervision_heads_and_accurate_mode(supervised):
    images = _images((2, 24, 40, 1))
    heads = _call(supervised, images)
    for level in (1, 2):
        name = f"output_l{level}"
        got = keras_unetpp.predict_tiled(supervised, images, (24, 40), output=name)
        np.testing.assert_allclose(got, heads[name], atol=1e-5)
    accurate = _call(keras_unetpp.inference_model(supervised, "accurate"), images)
    for output in (None, "accurate"):
        got = keras_unetpp.predict_tiled(supervised, images, (24, 40), output=output)
        np.testing.assert_allclose(got, accurate, atol=1e-5)
    np.testing.assert_allclose(accurate, (heads["output_l1"] + heads["output_l2"]) / 2)


def test_deep_supervision_over_many_tiles(supervised):
    images = _images((1, 45, 37, 1))
    accurate = keras_unetpp.inference_model(supervised, "accurate")
    pruned = keras_unetpp.prune(supervised, 1)
    np.testing.assert_array_equal(
        keras_unetpp.predict_tiled(supervised, images, 16),
        keras_unetpp.predict_tiled(accurate, images, 16),
    )
    np.testing.assert_array_equal(
        keras_unetpp.predict_tiled(supervised, images, 16, output="output_l1"),
        keras_unetpp.predict_tiled(pruned, images, 16),
    )
    # The accurate model's own heads can still be picked.
    np.testing.assert_array_equal(
        keras_unetpp.predict_tiled(accurate, images, 16, output="output_l1"),
        keras_unetpp.predict_tiled(pruned, images, 16),
    )


def test_pruned_head_needs_only_its_own_stride(supervised):
    images = _images((1, 13, 11, 1))
    pruned = keras_unetpp.prune(supervised, 1)  # depth 1: stride 2
    result = keras_unetpp.predict_tiled(pruned, images, 6, overlap=0.5)
    assert result.shape == (1, 13, 11, 1)
    np.testing.assert_array_equal(
        result, keras_unetpp.predict_tiled(supervised, images, 6, output="output_l1")
    )
    with pytest.raises(
        keras_unetpp.InputError, match="multiple of the model's stride 4"
    ):
        keras_unetpp.predict_tiled(supervised, images, 6)


def test_logits_heads_become_probabilities():
    keras.utils.set_random_seed(2)
    model = keras_unetpp.build(
        depth=2, filters=4, deep_supervision=True, output_activation=None
    )
    images = _images((1, 16, 24, 1))
    # The accurate mode averages the logits (as inference_model does), then
    # applies the sigmoid.
    logits = _call(keras_unetpp.inference_model(model, "accurate"), images)
    got = keras_unetpp.predict_tiled(model, images, (16, 24))
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), atol=1e-6)
    logits = _call(model, images)["output_l1"]
    got = keras_unetpp.predict_tiled(model, images, (16, 24), output="output_l1")
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), atol=1e-6)


@pytest.mark.parametrize("activation", ["auto", None])
def test_multi_class(activation):
    keras.utils.set_random_seed(3)
    model = keras_unetpp.build(
        depth=2, filters=4, num_classes=3, output_activation=activation
    )
    images = _images((1, 16, 24, 1))
    one_tile = keras_unetpp.predict_tiled(model, images, (16, 24))
    expected = _call(model, images)
    if activation is None:  # Logits: their softmax.
        expected = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    np.testing.assert_allclose(one_tile, expected, atol=1e-6)
    many = keras_unetpp.predict_tiled(model, _images((2, 45, 37, 1)), 16, tta="flips")
    assert many.shape == (2, 45, 37, 3)
    # Blended softmaxes are still distributions over the classes.
    np.testing.assert_allclose(many.sum(-1), 1.0, atol=1e-5)
    assert many.min() >= 0.0


# --- 3D volumes --------------------------------------------------------------


@pytest.fixture(scope="module")
def conv3d():
    kernel = np.arange(27, dtype=np.float64).reshape(3, 3, 3, 1, 1) / 27 - 0.45
    return _conv_model(kernel, bias=0.05, activation="sigmoid")


def test_3d_matches_numpy_reference(conv3d):
    volumes = _images((1, 11, 13, 9, 1))
    result = keras_unetpp.predict_tiled(conv3d, volumes, 8, batch_size=3, stride=1)
    # 3, 5 and 1 pixels to cover in steps of at most 4: 2, 3 and 2 tiles
    # (5 / 2 = 2.5 rounds up to 3).
    starts = ([0, 3], [0, 3, 5], [0, 1])
    expected = _reference(conv3d, volumes[0], (8, 8, 8), starts, _gaussian((8,) * 3))
    assert result.shape == (1, 11, 13, 9, 1)
    np.testing.assert_allclose(result[0], expected, atol=2e-6)


def test_3d_pads_small_volumes_and_returns_constants():
    constant = _conv_model(np.zeros((3, 3, 3, 1, 1)), bias=0.6)
    result = keras_unetpp.predict_tiled(
        constant, _images((2, 1, 5, 17, 1)), 8, stride=1
    )
    assert result.shape == (2, 1, 5, 17, 1)
    np.testing.assert_allclose(result, 0.6, rtol=1e-6)


@pytest.mark.parametrize(
    "tta, transforms", [("flips", _flips), ("flips+rot90", _dihedral)]
)
def test_3d_tta_is_the_mean_of_the_transformed_predictions(conv3d, tta, transforms):
    volumes = _images((1, 8, 8, 8, 1))
    result = keras_unetpp.predict_tiled(conv3d, volumes, 8, tta=tta, stride=1)
    expected = _tta_by_hand(
        lambda x: _call(conv3d, np.ascontiguousarray(x)), volumes, transforms(3)
    )
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_3d_model_with_pooling_needs_tiles_of_its_stride():
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(2, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling3D(2)(x)
    x = keras.layers.UpSampling3D(2)(x)
    model = keras.Model(inputs, keras.layers.Conv3D(1, 1, activation="sigmoid")(x))
    volumes = _images((1, 7, 9, 5, 1))
    assert keras_unetpp.predict_tiled(model, volumes, 4, stride=2).shape == (
        1, 7, 9, 5, 1,
    )  # fmt: skip
    with pytest.raises(
        keras_unetpp.InputError, match="multiple of the model's stride 2"
    ):
        keras_unetpp.predict_tiled(model, volumes, (4, 4, 5), stride=2)


# --- Bad arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tile_size": 6}, "multiple of the model's stride 4"),
        ({"tile_size": 0}, "tile_size"),
        ({"tile_size": (16,)}, "tile_size"),
        ({"tile_size": "16"}, "tile_size"),
        ({"overlap": -0.1}, "overlap"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": float("nan")}, "overlap"),
        ({"blending": "linear"}, "blending"),
        ({"tta": "rot90"}, "tta"),
        ({"tta": True}, "tta"),
        ({"output": "output_l3"}, "output"),
        ({"output": "fast"}, "output"),
        ({"batch_size": 0}, "batch_size"),
        ({"sigma_scale": 0.0}, "sigma_scale"),
        ({"stride": 2}, "stride"),
        ({"stride": 6}, "stride"),
    ],
)
def test_bad_arguments_raise_input_error(supervised, kwargs, match):
    arguments = {"tile_size": 16, **kwargs}
    with pytest.raises(keras_unetpp.InputError, match=match):
        keras_unetpp.predict_tiled(supervised, _images((1, 20, 20, 1)), **arguments)


def test_bad_images_and_models_raise_input_error(supervised, pointwise):
    error = keras_unetpp.InputError
    with pytest.raises(error, match="batch"):
        keras_unetpp.predict_tiled(supervised, _images((20, 20, 1)), 16)
    with pytest.raises(error, match="1-channel"):
        keras_unetpp.predict_tiled(supervised, _images((1, 20, 20, 3)), 16)
    with pytest.raises(error, match="stride"):
        keras_unetpp.predict_tiled(pointwise, _images((1, 20, 20, 2)), 16)
    with pytest.raises(error, match="output"):
        keras_unetpp.predict_tiled(
            pointwise, _images((1, 20, 20, 2)), 16, output="accurate", stride=1
        )
    with pytest.raises(error, match="keras.Model"):
        keras_unetpp.predict_tiled(lambda x: x, _images((1, 20, 20, 1)), 16)
    fixed = keras_unetpp.build(depth=2, filters=4, input_shape=(32, 32, 1))
    with pytest.raises(error, match="must match"):
        keras_unetpp.predict_tiled(fixed, _images((1, 40, 40, 1)), 16)
    assert keras_unetpp.predict_tiled(fixed, _images((1, 40, 40, 1)), 32).shape == (
        1, 40, 40, 1,
    )  # fmt: skip


# --- Large images, other backends, the benchmark ----------------------------


@pytest.mark.slow
def test_4001x2999_pointwise_equals_untiled():
    kernel = np.array([[1.3]])[None, None]
    model = _conv_model(kernel, bias=-0.4, activation="sigmoid")
    images = _images((1, 4001, 2999, 1))
    result = keras_unetpp.predict_tiled(
        model, images, 256, overlap=0.5, batch_size=16, stride=1
    )
    assert result.shape == (1, 4001, 2999, 1)
    np.testing.assert_allclose(result, 1 / (1 + np.exp(0.4 - 1.3 * images)), atol=1e-6)


BACKEND_SCRIPT = """
import json, sys
import keras, numpy as np
import keras_unetpp
inputs = keras.Input((None, None, None, 1))
layer = keras.layers.Conv3D(1, 1, activation="sigmoid")
model = keras.Model(inputs, layer(inputs))
layer.set_weights([np.full((1, 1, 1, 1, 1), 2.0), np.array([-1.0])])
volumes = np.random.default_rng(0).random((1, 5, 19, 13, 1), dtype=np.float32)
tiled = keras_unetpp.predict_tiled(model, volumes, 8, tta="flips+rot90", stride=1)
expected = 1 / (1 + np.exp(1.0 - 2.0 * volumes))
print(json.dumps({
    "backend": keras.backend.backend(),
    "max_diff": float(np.abs(tiled - expected).max()),
    "tensorflow_loaded": "tensorflow" in sys.modules,
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends(backend):
    env = dict(
        os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)
    )
    completed = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    assert report["max_diff"] < 1e-6
    assert not report["tensorflow_loaded"]


@pytest.mark.slow
def test_benchmark_quick_mode(tmp_path):
    json_path = tmp_path / "tiling.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "tiling_benchmark.py"), "--quick",
         "--json", str(json_path)],
        capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| mode" in completed.stdout and "tiled / untiled" in completed.stdout
    rows = json.loads(json_path.read_text())["rows"]
    modes = sorted(row["mode"] for row in rows)
    assert modes == ["tiled overlap 0.25", "tiled overlap 0.5", "untiled"]
    for row in rows:
        assert row["peak_rss_mb"] > 0 and row["seconds"] > 0
        if row["mode"] != "untiled":
            assert row["tiles_per_s"] == pytest.approx(row["tiles"] / row["seconds"])
