"""The convolutions of a UNet++ training step, each timed on its own.

`op_profile.py` sums the op events of a real training step; with two
inter-op threads, ops that overlap share the cores, so a convolution's
share there mixes its own speed with the contention. This script answers the
other half: how fast each convolution of the model runs when it has the
machine to itself, and how much of a step the convolutions would take if
that were all a step did.

For every convolution of a keras_unetpp model (the 3x3 convolutions of the
nodes, the 2x2 stride-2 transposed convolutions that up-sample), it builds
the three passes of a training step as TensorFlow ops, at the layer's own
shapes and dtype: the forward pass, the gradient with respect to the input
(not for the first convolution, whose input is the image: TensorFlow does
not compute it) and the gradient with respect to the kernel. Each is run
alone in a `tf.function`, median of `--runs` calls, less the median time of
calling a `tf.function` that does almost nothing. It prints, per
down-sampling level and pass, the summed milliseconds and the GFLOP/s as a
percentage of a float32 matmul of `--ref-size` timed in the same process
(the peak of `train_benchmark.py`); then the sum over all convolutions
against the median of timed training steps of the same model. With
`--layouts`, the level-0 shapes are also timed in NCHW, the layout oneDNN
is sometimes faster with on other CPUs.

Usage:

    python benchmarks/conv_kernels.py            # depth 4, widths 32-512, 128x128
    python benchmarks/conv_kernels.py --layouts  # and NCHW at level 0
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/conv_kernels.py   # AVX2 kernels
    python benchmarks/conv_kernels.py --precision mixed_bfloat16
    python benchmarks/conv_kernels.py --quick           # smoke test
"""

import argparse
import collections
import json
import statistics
import sys
import time

import cpu_info
import op_profile

PASSES = ("fwd", "bwd data", "bwd filter")


def conv_specs(model, batch):
    """The convolutions of `model` that this script times.

    Args:
        model: a built keras_unetpp model.
        batch: the batch size the shapes are given for.

    Returns:
        A list of dicts, one per layer: `name`, `kind` ("conv" or "up"),
        `level` (of the node, from the layer's name; None if not a node),
        `input_shape` (NHWC, with `batch`), `kernel_shape`, `strides`,
        `padding`, `needs_input_grad` (False for a layer fed by the image).
    """
    import keras

    from keras_unetpp import description

    inputs = {id(t) for t in model.inputs}
    specs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kind = "up"
        elif isinstance(layer, keras.layers.Conv2D) and layer.kernel_size != (1, 1):
            kind = "conv"
        else:
            continue
        node = description.parse_node(layer.name)
        specs.append(
            {
                "name": layer.name,
                "kind": kind,
                "level": node[0] if node else None,
                "input_shape": (batch,) + tuple(layer.input.shape[1:]),
                "kernel_shape": tuple(layer.kernel.shape),
                "strides": tuple(layer.strides),
                "padding": layer.padding.upper(),
                "needs_input_grad": id(layer.input) not in inputs,
            }
        )
    return specs


def output_shape(spec):
    """The NHWC output shape of a spec's forward pass."""
    n, h, w, _ = spec["input_shape"]
    kh, kw = spec["kernel_shape"][:2]
    sh, sw = spec["strides"]
    if spec["kind"] == "up":
        # Transposed kernels are (kh, kw, out, in).
        out = spec["kernel_shape"][2]
        if spec["padding"] == "SAME":
            return (n, h * sh, w * sw, out)
        return (n, (h - 1) * sh + kh, (w - 1) * sw + kw, out)
    out = spec["kernel_shape"][3]
    if spec["padding"] == "SAME":
        return (n, -(-h // sh), -(-w // sw), out)
    return (n, (h - kh) // sh + 1, (w - kw) // sw + 1, out)


def flops(spec):
    """Multiply-adds x 2 of one pass (all three passes have the same count)."""
    n, h, w, c_in = spec["input_shape"]
    kh, kw = spec["kernel_shape"][:2]
    if spec["kind"] == "up":
        return 2 * n * h * w * c_in * spec["kernel_shape"][2] * kh * kw
    _, oh, ow, c_out = output_shape(spec)
    return 2 * n * oh * ow * c_out * c_in * kh * kw


def pass_functions(spec, x, kernel, dy, data_format="NHWC"):
    """`{pass: callable}`: the ops of a training step's passes for one layer.

    `x`, `kernel` and `dy` (the gradient of the layer's output) are tensors
    in `data_format`; the kernel is in the layer's own layout. A transposed
    convolution is the input gradient of a convolution, so its passes are
    the same three ops in another order.
    """
    import tensorflow as tf

    strides = (1, 1) + spec["strides"] if data_format == "NCHW" else None
    strides = strides or (1,) + spec["strides"] + (1,)
    padding = spec["padding"]
    backprop_filter = tf.compat.v1.nn.conv2d_backprop_filter
    backprop_input = tf.compat.v1.nn.conv2d_backprop_input
    x_shape = tuple(x.shape)
    kernel_shape = tuple(kernel.shape)
    if spec["kind"] == "up":
        y_shape = tuple(dy.shape)
        functions = {
            "fwd": lambda: backprop_input(
                y_shape, kernel, x, strides, padding, data_format=data_format
            ),
            "bwd data": lambda: tf.nn.conv2d(
                dy, kernel, strides, padding, data_format=data_format
            ),
            "bwd filter": lambda: backprop_filter(
                dy, kernel_shape, x, strides, padding, data_format=data_format
            ),
        }
    else:
        functions = {
            "fwd": lambda: tf.nn.conv2d(
                x, kernel, strides, padding, data_format=data_format
            ),
            "bwd data": lambda: backprop_input(
                x_shape, kernel, dy, strides, padding, data_format=data_format
            ),
            "bwd filter": lambda: backprop_filter(
                x, kernel_shape, dy, strides, padding, data_format=data_format
            ),
        }
    if not spec["needs_input_grad"]:
        del functions["bwd data"]
    return functions


def _to_layout(shape, data_format):
    n, h, w, c = shape
    return (n, c, h, w) if data_format == "NCHW" else shape


def median_seconds(function, runs):
    """Median wall seconds of `runs` calls of `function` (a `tf.function`),
    after one untimed call; each call waits for its result."""
    function().numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function().numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def call_overhead(runs=20):
    """Median seconds of calling a `tf.function` that does almost nothing."""
    import tensorflow as tf

    small = tf.zeros((4,))
    return median_seconds(tf.function(lambda: small + 1.0), runs)


def time_spec(spec, dtype, runs, data_format="NHWC", overhead=0.0):
    """`{pass: median seconds}` of one layer's passes, each run alone, less
    the `overhead` of a call (`call_overhead()`)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def tensor(shape):
        return tf.constant(rng.standard_normal(shape, dtype=np.float32), dtype=dtype)

    x = tensor(_to_layout(spec["input_shape"], data_format))
    dy = tensor(_to_layout(output_shape(spec), data_format))
    kernel = tensor(spec["kernel_shape"])
    seconds = {}
    for name, function in pass_functions(spec, x, kernel, dy, data_format).items():
        median = median_seconds(tf.function(function), runs)
        seconds[name] = max(median - overhead, 1e-7)
    return seconds


def matmul_peak(size, runs=5):
    """GFLOP/s of a float32 `size`^2 matmul, median of `runs`."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    seconds = median_seconds(tf.function(lambda: tf.linalg.matmul(a, a)), runs)
    return 2 * size**3 / seconds / 1e9


def measure(args):
    import tensorflow as tf

    import keras_unetpp as ku

    model, x, targets = op_profile.training_setup(args)
    step = op_profile.median_step(model, x, targets, warmup=2, timed=args.steps)

    dtype = tf.bfloat16 if args.precision == "mixed_bfloat16" else tf.float32
    peak = matmul_peak(args.ref_size)
    overhead = call_overhead()
    # Layers with the same shapes are timed once.
    groups = collections.defaultdict(list)
    for spec in conv_specs(model, args.batch):
        key = tuple(v for k, v in sorted(spec.items()) if k not in ("name", "level"))
        groups[key].append(spec)
    seconds = collections.Counter()
    work = collections.Counter()
    for specs in groups.values():
        timed = time_spec(specs[0], dtype, args.runs, overhead=overhead)
        for spec in specs:
            for name, value in timed.items():
                seconds[name, spec["level"]] += value
                work[name, spec["level"]] += flops(spec)
    layouts = []
    if args.layouts:
        level0 = [
            group[0]
            for group in groups.values()
            if group[0]["level"] == 0 and group[0]["kind"] == "conv"
        ]
        for spec in level0:
            row = {"name": spec["name"], "input_shape": spec["input_shape"]}
            for data_format in ("NHWC", "NCHW"):
                try:
                    timed = time_spec(spec, dtype, args.runs, data_format, overhead)
                except Exception as error:  # noqa: BLE001 - reported, not hidden
                    row[data_format] = f"failed: {str(error).splitlines()[0][:120]}"
                    continue
                row[data_format] = {
                    name: flops(spec) / value / 1e9 for name, value in timed.items()
                }
            layouts.append(row)
    conv_total = sum(seconds.values())
    step_flops = ku.count_flops(model, args.size, args.size) * args.batch * 3
    return {
        "cpu": cpu_info.describe_cpu(),
        "depth": args.depth,
        "widths": list(op_profile.widths(args)),
        "size": args.size,
        "batch": args.batch,
        "precision": args.precision,
        "ref_size": args.ref_size,
        "matmul_peak_gflops": peak,
        "step_s": step,
        "step_gflops": step_flops / step / 1e9,
        "call_overhead_s": overhead,
        "conv_seconds": conv_total,
        "conv_gflops": sum(work.values()) / conv_total / 1e9,
        "seconds": {f"{p}|{lvl}": s for (p, lvl), s in seconds.items()},
        "flops": {f"{p}|{lvl}": f for (p, lvl), f in work.items()},
        "layouts": layouts,
    }


def report(result):
    peak = result["matmul_peak_gflops"]
    lines = [cpu_info.summary(result["cpu"])]
    lines.append(
        f"depth {result['depth']}, widths {result['widths']}, "
        f"{result['size']}x{result['size']}x1, batch {result['batch']}, "
        f"{result['precision']}; float32 {result['ref_size']}^2 matmul peak "
        f"{peak:.0f} GFLOP/s"
    )
    levels = sorted(
        {k.split("|")[1] for k in result["seconds"]}, key=lambda v: (v == "None", v)
    )
    lines.append("")
    lines.append("| pass | level | ms/step | GFLOP/s | % of peak |")
    lines.append("|---|---|---:|---:|---:|")
    for name in PASSES:
        for level in levels:
            key = f"{name}|{level}"
            if key not in result["seconds"]:
                continue
            seconds = result["seconds"][key]
            rate = result["flops"][key] / seconds / 1e9
            lines.append(
                f"| {name} | {level} | {seconds * 1000:.1f} | {rate:.0f} | "
                f"{100 * rate / peak:.0f}% |"
            )
    conv = result["conv_seconds"]
    step = result["step_s"]
    lines.append(
        f"| all convolutions | | {conv * 1000:.1f} | {result['conv_gflops']:.0f} | "
        f"{100 * result['conv_gflops'] / peak:.0f}% |"
    )
    lines.append("")
    lines.append(
        f"Training step (median): {step * 1000:.0f} ms, "
        f"{result['step_gflops']:.0f} GFLOP/s = "
        f"{100 * result['step_gflops'] / peak:.0f}% of the peak. The convolutions "
        f"alone, back to back: {conv * 1000:.0f} ms = {100 * conv / step:.0f}% of "
        f"the step; the other {max(step - conv, 0) * 1000:.0f} ms are the rest of "
        "the step (batch norm, ReLU, concatenations, loss, optimizer) and "
        "scheduling."
    )
    for row in result["layouts"]:
        cells = []
        for data_format in ("NHWC", "NCHW"):
            value = row[data_format]
            if isinstance(value, str):
                cells.append(f"{data_format} {value}")
            else:
                cells.append(
                    f"{data_format} "
                    + ", ".join(f"{k} {v:.0f}" for k, v in value.items())
                    + " GFLOP/s"
                )
        lines.append(f"layout {row['name']} {row['input_shape']}: " + "; ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=32, help="level-0 filters")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7, help="timed calls per pass")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--ref-size", type=int, default=3072, help="matmul size")
    parser.add_argument("--layouts", action="store_true", help="NHWC vs NCHW")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--precision", choices=("float32", "mixed_bfloat16"), default="float32"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.size, args.batch = 2, 4, 32, 2
        args.runs, args.steps, args.ref_size = 2, 2, 256
    result = measure(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
