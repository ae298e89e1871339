"""The 3D UNet++: volumes `(depth, height, width, channels)` through the graph.

The parameter counts are derived here from the layer formulas, independently
of Keras' bookkeeping, and the same formula reproduces the paper's 2D counts
(asserted in tests/test_model.py), which checks the formula itself.
"""

import keras
import numpy as np
import pytest

import keras_unetpp

PAPER_WIDTHS = (32, 64, 128, 256, 512)


def _unetpp_params(widths, kernel, up_kernel, channels=1, classes=1, heads=(4,)):
    """Parameters of a bias-carrying, normalization-free UNet++ (the paper's).

    A k-voxel convolution from c_in to c_out holds k*c_in*c_out + c_out
    weights. Encoder X(i,0): two convolutions, the first from the level
    above's width (the image's channels at i = 0). Node X(i,j), j >= 1: a
    transposed convolution U from X(i+1,j-1) (u*f_{i+1}*f_i + f_i), then
    two convolutions, the first over the concatenation of j same-level
    nodes and U, i.e. (j+1)*f_i channels. Each head: a 1x1(x1) convolution.
    """
    depth = len(widths) - 1

    def conv(c_in, c_out, k=kernel):
        return k * c_in * c_out + c_out

    total = 0
    for i in range(depth + 1):
        c_in = channels if i == 0 else widths[i - 1]
        total += conv(c_in, widths[i]) + conv(widths[i], widths[i])
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):
            f = widths[i]
            total += conv(widths[i + 1], f, up_kernel)
            total += conv((j + 1) * f, f) + conv(f, f)
    return total + len(heads) * conv(widths[0], classes, 1)


def _pruned_params(widths, level, kernel, up_kernel):
    return _unetpp_params(widths[: level + 1], kernel, up_kernel, heads=(level,))


def test_the_formula_gives_the_papers_2d_counts():
    # 3x3 = 9 weights per channel pair, 2x2 = 4 for the transposed convolution.
    assert _unetpp_params(PAPER_WIDTHS, 9, 4) == 9_041_601
    assert _unetpp_params(PAPER_WIDTHS, 9, 4, heads=(1, 2, 3, 4)) == 9_041_700
    assert [_pruned_params(PAPER_WIDTHS, L, 9, 4) for L in (1, 2, 3)] == [
        100_961,
        511_105,
        2_204_961,
    ]


def test_papers_3d_configuration_parameter_counts():
    # 3x3x3 = 27 weights per channel pair, 2x2x2 = 8 for the transposed ones.
    expected = _unetpp_params(PAPER_WIDTHS, 27, 8)
    assert expected == 26_198_273  # the formula's value, written out
    model = keras_unetpp.build(4, (64, 64, 64, 1), normalization="none")
    assert model.count_params() == expected
    supervised = keras_unetpp.build(
        4, (None, None, None, 1), normalization="none", deep_supervision=True
    )
    assert supervised.count_params() == expected + 3 * (32 + 1)
    for level in (1, 2, 3, 4):
        pruned = keras_unetpp.prune(supervised, level)
        assert pruned.count_params() == _pruned_params(PAPER_WIDTHS, level, 27, 8)
    assert [
        keras_unetpp.prune(supervised, level).count_params() for level in (1, 2, 3)
    ] == [294_049, 1_482_433, 6_389_601]
    # L1 by hand, layer by layer: X(0,0) 27*1*32+32 + 27*32*32+32; X(1,0)
    # 27*32*64+64 + 27*64*64+64; U(X(1,0)) 8*64*32+32; X(0,1) over 64
    # channels 27*64*32+32 + 27*32*32+32; head 32+1.
    assert (
        27 * 32
        + 32
        + 27 * 32 * 32
        + 32
        + 27 * 32 * 64
        + 64
        + 27 * 64 * 64
        + 64
        + 8 * 64 * 32
        + 32
        + (27 * 64 * 32 + 32 + 27 * 32 * 32 + 32 + 33)
        == 294_049
    )


def _tiny(**kwargs):
    return keras_unetpp.build(
        2, (None, None, None, 1), filters=(2, 4, 8), deep_supervision=True, **kwargs
    )


def test_3d_graph_prunes_bit_exactly_and_describes_itself(tmp_path):
    model = _tiny()
    volume = np.random.default_rng(0).random((2, 8, 12, 16, 1), "float32")

    def run(net):  # NumPy outputs on every backend (torch tensors need detach)
        return keras.tree.map_structure(
            keras.ops.convert_to_numpy, net(volume, training=False)
        )

    outputs = run(model)
    assert outputs["output_l2"].shape == (2, 8, 12, 16, 1)
    for level in (1, 2):
        pruned = keras_unetpp.prune(model, level)
        np.testing.assert_array_equal(run(pruned), outputs[f"output_l{level}"])
    accurate = run(keras_unetpp.inference_model(model, "accurate"))
    np.testing.assert_allclose(
        accurate, (outputs["output_l1"] + outputs["output_l2"]) / 2, rtol=1e-6
    )
    info = keras_unetpp.describe(model)
    assert (info.rank, info.depth, info.heads) == (3, 2, (1, 2))
    path = tmp_path / "volume.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert keras_unetpp.describe(reloaded) == info
    np.testing.assert_array_equal(run(reloaded)["output_l2"], outputs["output_l2"])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(normalization="batch"),
        dict(normalization="group", upsampling="resize"),
        dict(normalization="none", num_classes=3),
    ],
    ids=["batch", "group-resize", "classes"],
)
def test_3d_options_and_unet_baseline(kwargs):
    model = _tiny(**kwargs)
    volume = np.zeros((1, 4, 8, 8, 1), "float32")
    out = model(volume)["output_l2"]
    assert out.shape == (1, 4, 8, 8, kwargs.get("num_classes", 1))
    info = keras_unetpp.describe(model)
    assert info.normalization == kwargs["normalization"]
    assert info.upsampling == kwargs.get("upsampling", "transpose")
    unet = keras_unetpp.build_unet(2, (None, None, None, 1), filters=(2, 4, 8))
    assert keras_unetpp.describe(unet).architecture == "unet"
    assert unet(volume).shape == (1, 4, 8, 8, 1)


def test_3d_flops_follow_the_voxel_count():
    model = keras_unetpp.build(2, (None, None, None, 1), filters=(2, 4, 8))
    small = keras_unetpp.count_flops(model, 8, 8, depth=8)
    # Every convolution's work scales with its output voxels: 8x the voxels,
    # 8x the FLOPs.
    assert keras_unetpp.count_flops(model, 16, 16, depth=16) == 8 * small
    # By hand: the first convolution, 27 * 1 * 2 multiply-adds per voxel
    # (no bias under batch norm), 2 FLOPs each, over 8^3 voxels.
    assert small > 2 * 27 * 1 * 2 * 8**3
    with pytest.raises(ValueError, match="give `depth` for a 3D model"):
        keras_unetpp.count_flops(model, 8, 8)


def test_3d_sizes_must_divide_by_the_stride():
    with pytest.raises(ValueError, match=r"depth in `input_shape` must be a multiple"):
        keras_unetpp.build(2, (6, 8, 8, 1))
    with pytest.raises(ValueError, match="for volumes"):
        keras_unetpp.build(2, (8, 8, 8, 8, 1))


def _np_dice(t, p, axes, smooth=1.0):
    return (2 * (t * p).sum(axes) + smooth) / (t.sum(axes) + p.sum(axes) + smooth)


def test_losses_on_volumes_match_numpy():
    rng = np.random.default_rng(1)
    y = (rng.random((2, 4, 6, 8, 1)) > 0.7).astype("float32")
    p = np.clip(rng.random((2, 4, 6, 8, 1)), 0.01, 0.99).astype("float32")
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=(1, 2, 3, 4))
    dice = _np_dice(y, p, (1, 2, 3))[:, 0]
    expected = 0.5 * bce + (1 - dice)
    got = keras_unetpp.bce_dice(y, p)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Multi-class: class indices (batch, d, h, w) against softmax outputs.
    labels = rng.integers(0, 3, (2, 4, 6, 8))
    logits = rng.normal(size=(2, 4, 6, 8, 3)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    one_hot = np.eye(3, dtype="float32")[labels]
    ce = -(one_hot * np.log(probs)).sum(-1).mean(axis=(1, 2, 3))
    mean_dice = _np_dice(one_hot, probs, (1, 2, 3)).mean(-1)
    got = keras_unetpp.categorical_ce_dice(labels, probs)
    np.testing.assert_allclose(got, 0.5 * ce + (1 - mean_dice), rtol=1e-5)


def test_metrics_on_volumes_match_numpy():
    rng = np.random.default_rng(2)
    y = (rng.random((2, 4, 6, 8, 1)) > 0.6).astype("float32")
    p = rng.random((2, 4, 6, 8, 1)).astype("float32")
    pred = p >= 0.5
    inter = np.logical_and(pred, y > 0).sum()
    union = np.logical_or(pred, y > 0).sum()
    iou = keras_unetpp.IoUScore()
    iou.update_state(y, p)
    assert float(iou.result()) == pytest.approx(inter / union, rel=1e-6)
    dice = keras_unetpp.DiceScore()
    dice.update_state(y, p)
    expected = 2 * inter / (pred.sum() + (y > 0).sum())
    assert float(dice.result()) == pytest.approx(expected, rel=1e-6)
    # Multi-class: mean over the classes of each class's IoU after arg-max.
    labels = rng.integers(0, 3, (2, 4, 6, 8, 1))
    scores = rng.random((2, 4, 6, 8, 3)).astype("float32")
    arg = scores.argmax(-1)
    per_class = [
        np.logical_and(arg == c, labels[..., 0] == c).sum()
        / np.logical_or(arg == c, labels[..., 0] == c).sum()
        for c in range(3)
    ]
    metric = keras_unetpp.IoUScore(num_classes=3)
    metric.update_state(labels, scores)
    assert float(metric.result()) == pytest.approx(np.mean(per_class), rel=1e-6)
