"""Where a UNet++ training step spends its time on CPU, op by op.

Runs a few training steps of a keras_unetpp model under TensorFlow's
profiler, reads the trace it writes (the XPlane protobuf of the host), and
sums the time of every TensorFlow op, grouped by what it does:

- `conv fwd` / `conv bwd data` / `conv bwd filter`: convolutions and their
  two gradients (the transposed up-sampling convolutions run as
  `Conv2DBackpropInput` in the forward pass; they count as `up-conv fwd`);
- `batch norm fwd` / `bwd`, `relu fwd` / `bwd`, `concat fwd` / `bwd` (the
  slices that split the gradient of a concatenation), `pool fwd` / `bwd`,
- `loss + heads`, `optimizer` (the Adam updates), and `other`,

each also per down-sampling level i of the nodes X(i, j) the op belongs to
(read with `keras_unetpp.description.parse_node`). The times are the
durations of the op events summed over the compute threads, divided by the
number of profiled steps, so with 2 threads their sum can exceed the step's
wall time; the shares are of the summed op time. The script also prints the
step's wall time, the achieved GFLOP/s (3x the forward FLOPs) and its
percentage of a float32 matmul peak measured in the same process, with the
CPU description (`cpu_info.py`).

Usage:

    python benchmarks/op_profile.py                      # depth 4, 128x128, batch 8
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/op_profile.py   # AVX2 kernels
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/op_profile.py   # without oneDNN
    python benchmarks/op_profile.py --precision mixed_bfloat16  # bfloat16 (AMX)
    python benchmarks/op_profile.py --quick              # smoke test
"""

import argparse
import collections
import glob
import json
import statistics
import sys
import tempfile
import time

import cpu_info

CATEGORIES = (
    "conv fwd",
    "up-conv fwd",
    "conv bwd data",
    "conv bwd filter",
    "batch norm fwd",
    "batch norm bwd",
    "relu fwd",
    "relu bwd",
    "concat fwd",
    "concat bwd",
    "pool fwd",
    "pool bwd",
    "loss + heads",
    "optimizer",
    "other",
)


def categorize(op_name, op_type):
    """The category of one op event, from its scope name and its type."""
    backward = "gradient_tape" in op_name or "gradients" in op_name
    base = op_type.replace("_Mkl", "").replace("_Fused", "").replace("Native", "")
    if "adam" in op_name.lower() or base.startswith("ResourceApply"):
        return "optimizer"
    if "Conv2DBackpropFilter" in base or "Conv3DBackpropFilter" in base:
        return "conv bwd filter"
    if "BackpropInput" in base:
        if backward and "conv_transpose" not in op_name.lower():
            return "conv bwd data"
        return "conv bwd data" if backward else "up-conv fwd"
    if base.startswith("Conv2D") or base.startswith("Conv3D"):
        return "conv bwd data" if backward else "conv fwd"
    if "BatchNorm" in base:
        return "batch norm bwd" if "Grad" in base else "batch norm fwd"
    if base.startswith("Relu"):
        return "relu bwd" if "Grad" in base else "relu fwd"
    if base.startswith("MaxPool"):
        return "pool bwd" if "Grad" in base else "pool fwd"
    if base in ("ConcatV2", "Concat"):
        return "concat fwd"
    if backward and base in ("Slice", "ConcatOffset", "Split", "SplitV"):
        return "concat bwd"
    if "output_l" in op_name or "loss" in op_name.lower() or "logits" in op_name:
        return "loss + heads"
    return "other"


def level_of(op_name):
    """The down-sampling level i of the node X(i, j) an op belongs to, or None."""
    from keras_unetpp.description import parse_node

    for part in op_name.split("/"):
        # TensorFlow suffixes the layer's name scope with "_<n>".
        for name in (part, part.rpartition("_")[0]):
            node = parse_node(name)
            if node is not None:
                return node[0]
    return None


def op_events(xplane_path):
    """`(op_name, op_type, seconds)` of every TensorFlow op in a host trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue  # Executor and thread-pool bookkeeping.
                op_name, _, op_type = name.rpartition(":")
                yield op_name, op_type, event.duration_ps * 1e-12


def matmul_peak(size=2048, runs=5):
    """GFLOP/s of a float32 matmul, best of `runs`."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    tf.linalg.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def widths(args):
    """The filters per level: `args.width` at level 0, doubled per level."""
    return tuple(args.width * 2**i for i in range(args.depth + 1))


def training_setup(args):
    """The model a profile times, and a batch for it.

    Args:
        args: with `depth`, `width` (level-0 filters, doubled per level),
            `size`, `batch` and `precision`.

    Returns:
        `(model, x, targets)`: a compiled keras_unetpp UNet++ with deep
        supervision on `size`x`size`x1 inputs, a random batch and its
        thresholded targets for every head.
    """
    import keras
    import numpy as np

    import keras_unetpp as ku

    keras.utils.set_random_seed(0)
    with ku.precision_scope(args.precision):
        model = ku.build(
            depth=args.depth,
            input_shape=(args.size, args.size, 1),
            filters=widths(args),
            deep_supervision=True,
        )
    ku.compile_model(model)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.size, args.size, 1), dtype=np.float32)
    y = (x > 0.5).astype("float32")
    return model, x, {name: y for name in model.output_names}


def median_step(model, x, targets, warmup, timed):
    """Median seconds of `timed` training steps after `warmup` untimed ones."""
    for _ in range(warmup):
        model.train_on_batch(x, targets)
    steps = []
    for _ in range(timed):
        start = time.perf_counter()
        model.train_on_batch(x, targets)
        steps.append(time.perf_counter() - start)
    return statistics.median(steps)


def profile(args):
    import tensorflow as tf

    import keras_unetpp as ku

    model, x, targets = training_setup(args)
    step = median_step(model, x, targets, args.warmup, args.timed)
    peak = matmul_peak()
    logdir = tempfile.mkdtemp(prefix="op_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(args.steps):
        model.train_on_batch(x, targets)
    tf.profiler.experimental.stop()
    paths = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))
    totals = collections.Counter()
    by_level = collections.Counter()
    types = collections.Counter()
    for op_name, op_type, seconds in op_events(paths[-1]):
        category = categorize(op_name, op_type)
        totals[category] += seconds / args.steps
        by_level[category, level_of(op_name)] += seconds / args.steps
        types[op_type] += seconds / args.steps
    flops = ku.count_flops(model, args.size, args.size) * args.batch * 3
    return {
        "cpu": cpu_info.describe_cpu(),
        "depth": args.depth,
        "widths": list(widths(args)),
        "size": args.size,
        "batch": args.batch,
        "precision": args.precision,
        "step_s": step,
        "gflops": flops / step / 1e9,
        "matmul_peak_gflops": peak,
        "pct_of_peak": 100 * flops / step / 1e9 / peak,
        "op_seconds_per_step": dict(totals),
        "by_level": {f"{c}|{lvl}": s for (c, lvl), s in by_level.items()},
        "op_types": dict(types.most_common(15)),
    }


def report(result):
    lines = [cpu_info.summary(result["cpu"])]
    lines.append(
        f"depth {result['depth']}, widths {result['widths']}, "
        f"{result['size']}x{result['size']}x1, batch {result['batch']}, "
        f"{result.get('precision', 'float32')}: "
        f"step {result['step_s'] * 1000:.0f} ms (median), "
        f"{result['gflops']:.0f} GFLOP/s = {result['pct_of_peak']:.0f}% of the "
        f"same-process float32 2048^2 matmul peak "
        f"({result['matmul_peak_gflops']:.0f} GFLOP/s)"
    )
    total = sum(result["op_seconds_per_step"].values())
    levels = sorted(
        {int(k.split("|")[1]) for k in result["by_level"] if k.split("|")[1] != "None"}
    )
    header = ["category", "ms/step", "share"] + [f"i={lvl}" for lvl in levels]
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for category in CATEGORIES:
        seconds = result["op_seconds_per_step"].get(category, 0.0)
        if seconds == 0.0:
            continue
        cells = [category, f"{seconds * 1000:.1f}", f"{100 * seconds / total:.1f}%"]
        for lvl in levels:
            part = result["by_level"].get(f"{category}|{lvl}", 0.0)
            cells.append(f"{part * 1000:.1f}" if part else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| all ops | {total * 1000:.1f} | 100% |" + " |" * len(levels))
    lines.append("")
    lines.append(
        "Top op types (ms/step): "
        + ", ".join(f"{k} {v * 1000:.1f}" for k, v in result["op_types"].items())
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=32, help="level-0 filters")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        help="dtype policy of the model (the peak stays a float32 one)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.size, args.batch = 2, 4, 32, 2
        args.warmup, args.timed, args.steps = 1, 2, 1
    result = profile(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
