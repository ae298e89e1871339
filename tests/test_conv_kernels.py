"""benchmarks/conv_kernels.py: the convolutions of a training step, timed alone.

The timings themselves are not asserted (speed is for benchmarks); what is
asserted is that the script times the right computations: every convolution
of the model, with the shapes it has in the model, and passes whose results
equal the gradients TensorFlow takes of the real Keras layers.
"""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_unetpp as ku

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import conv_kernels  # noqa: E402


def _model(depth=2, width=4, size=32):
    keras.utils.set_random_seed(0)
    filters = tuple(width * 2**i for i in range(depth + 1))
    return ku.build(depth, (size, size, 1), filters=filters, deep_supervision=True)


def test_specs_cover_every_convolution_of_the_nested_graph():
    depth = 2
    specs = conv_kernels.conv_specs(_model(depth), batch=3)
    nodes = [(i, j) for i in range(depth + 1) for j in range(depth + 1 - i)]
    # Two 3x3 convolutions per node; one transposed convolution per node
    # with j >= 1 (the U feeding it).
    convs = [s for s in specs if s["kind"] == "conv"]
    ups = [s for s in specs if s["kind"] == "up"]
    assert len(convs) == 2 * len(nodes)
    assert len(ups) == sum(1 for _, j in nodes if j >= 1)
    assert {s["level"] for s in convs} == {0, 1, 2}
    # Only the first convolution reads the image.
    assert [s["name"] for s in specs if not s["needs_input_grad"]] == ["x_0_0_conv1"]
    first = next(s for s in specs if s["name"] == "x_0_0_conv1")
    assert first["input_shape"] == (3, 32, 32, 1)
    # X(0,2) concatenates X(0,0), X(0,1) and U(X(1,1)): 3 x 4 channels.
    node_02 = next(s for s in specs if s["name"] == "x_0_2_conv1")
    assert node_02["input_shape"] == (3, 32, 32, 12)
    assert node_02["kernel_shape"] == (3, 3, 12, 4)
    up = next(s for s in specs if s["name"] == "x_1_1_up")
    assert up["input_shape"] == (3, 8, 8, 16)
    assert conv_kernels.output_shape(up) == (3, 16, 16, 8)
    # FLOPs of a 3x3 convolution: 2 x N x H x W x Cin x Cout x 9.
    assert conv_kernels.flops(node_02) == 2 * 3 * 32 * 32 * 12 * 4 * 9
    assert conv_kernels.flops(up) == 2 * 3 * 8 * 8 * 16 * 8 * 4


@pytest.mark.parametrize("name", ["x_0_2_conv1", "x_1_1_up"])
def test_passes_equal_the_layer_and_its_gradients(name):
    """The timed ops compute what a training step computes: the layer's
    output and, for an upstream gradient dy, the gradients TensorFlow's tape
    gives for the input and the kernel."""
    model = _model()
    layer = model.get_layer(name)
    spec = next(s for s in conv_kernels.conv_specs(model, 2) if s["name"] == name)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal(spec["input_shape"], dtype=np.float32))
    dy = tf.constant(
        rng.standard_normal(conv_kernels.output_shape(spec), dtype=np.float32)
    )
    if layer.use_bias:
        # The bias is a separate op (BiasAdd), not timed: nonzero here so
        # that leaving it out is what the comparison below accounts for.
        layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        target = tf.reduce_sum(y * dy)
    grad_x, grad_kernel = tape.gradient(target, [x, layer.kernel])
    kernel = tf.convert_to_tensor(layer.kernel)
    passes = conv_kernels.pass_functions(spec, x, kernel, dy)
    assert set(passes) == set(conv_kernels.PASSES)
    conv_only = y - layer.bias if layer.use_bias else y
    np.testing.assert_allclose(passes["fwd"](), conv_only, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(passes["bwd data"](), grad_x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        passes["bwd filter"](), grad_kernel, rtol=1e-4, atol=1e-3
    )


def test_quick_run_prints_and_writes_the_figures(tmp_path):
    out = tmp_path / "conv.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conv_kernels.py"), "--quick"]
        + ["--layouts", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("CPU: ")
    assert "| all convolutions |" in completed.stdout
    assert "Training step (median):" in completed.stdout
    result = json.loads(out.read_text())
    for level in (0, 1, 2):
        for name in conv_kernels.PASSES:
            assert result["seconds"][f"{name}|{level}"] > 0
            assert result["flops"][f"{name}|{level}"] > 0
    # The per-level FLOPs add up to the model's: 3 passes of every
    # convolution, less the input gradient the first one does not need.
    specs = conv_kernels.conv_specs(_model(), batch=2)
    expected = sum(
        conv_kernels.flops(s) * (3 if s["needs_input_grad"] else 2) for s in specs
    )
    assert sum(result["flops"].values()) == expected
    assert result["conv_seconds"] == pytest.approx(sum(result["seconds"].values()))
    assert result["step_s"] > 0 and result["matmul_peak_gflops"] > 0
    assert [row["name"] for row in result["layouts"]][:2] == [
        "x_0_0_conv1",
        "x_0_0_conv2",
    ]
