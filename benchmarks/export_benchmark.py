"""Latency and throughput of each exported level of a UNet++, in one run.

Builds a deep-supervision UNet++ (the paper's widths by default), exports
every level with `keras_unetpp.export.export_pruned`, reloads each SavedModel
with `tf.saved_model.load` and times `signatures["serving_default"]` at
batch 1 and batch 8 on 256x256 images. The levels are timed round-robin
(one call of each level per round, after warm-up), so that a change in the
machine's load during the run hits every level alike, and each latency is
the median over the rounds. Level L4, the full network, is the baseline of
the speed-up column; the FLOPs column says what speed-up to expect.

    python benchmarks/export_benchmark.py             # paper widths, 256x256
    python benchmarks/export_benchmark.py --rounds 9 --json results.json

Each level's outputs are also compared with `prune(model, L)` called
directly in Keras on the same batch (max abs difference of the
probabilities).
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import keras_unetpp as ku
from keras_unetpp.export import export_pruned


def _time_call(signature, images):
    start = time.perf_counter()
    outputs = signature(image=images)
    outputs["probabilities"].numpy()  # Waits for the result.
    return time.perf_counter() - start


def benchmark(
    depth=4, filters=None, size=256, batches=(1, 8), rounds=5, warmup=2, seed=0
):
    """Exports every level and times each SavedModel; returns one row a level.

    Args:
        depth: int, depth of the UNet++. Defaults to `4`.
        filters: widths per level, as in `keras_unetpp.build`. Defaults to
            `None`, the paper's 32, 64, ...
        size: int, height and width of the images. Defaults to `256`.
        batches: batch sizes to time. Defaults to `(1, 8)`.
        rounds: int, timed calls of each level and batch size (the latency
            is their median). Defaults to `5`.
        warmup: int, untimed calls first. Defaults to `2`.
        seed: int, seed of the weights and images. Defaults to `0`.

    Returns:
        A list of dicts, one per level: parameters, FLOPs, median latency
        and throughput per batch size, and the max abs difference from Keras.
    """
    model = _model(depth, filters, seed)
    rng = np.random.default_rng(seed)
    images = {
        batch: tf.constant(rng.random((batch, size, size, 1), dtype=np.float32))
        for batch in batches
    }
    with tempfile.TemporaryDirectory() as export_dir:
        paths = export_pruned(model, export_dir, model_name="bench")
        loaded = {
            level: tf.saved_model.load(str(path)) for level, path in paths.items()
        }
        signatures = {
            level: saved.signatures["serving_default"]
            for level, saved in loaded.items()
        }
        times = {(level, batch): [] for level in signatures for batch in batches}
        for index in range(warmup + rounds):
            for batch in batches:
                for level, signature in signatures.items():
                    elapsed = _time_call(signature, images[batch])
                    if index >= warmup:
                        times[level, batch].append(elapsed)
        rows = []
        for level, signature in signatures.items():
            pruned = ku.prune(model, level)
            largest = images[max(batches)]
            served = signature(image=largest)["probabilities"].numpy()
            direct = np.asarray(pruned(largest, training=False))
            row = {
                "level": level,
                "parameters": pruned.count_params(),
                "flops": ku.count_flops(pruned, size, size),
                "max_abs_diff": float(np.abs(served - direct).max()),
            }
            for batch in batches:
                latency = statistics.median(times[level, batch])
                row[f"latency_ms_b{batch}"] = 1000 * latency
                row[f"images_per_s_b{batch}"] = batch / latency
            rows.append(row)
    baseline = rows[-1]
    for row in rows:
        row["flops_ratio"] = row["flops"] / baseline["flops"]
        for batch in batches:
            row[f"speedup_b{batch}"] = (
                baseline[f"latency_ms_b{batch}"] / row[f"latency_ms_b{batch}"]
            )
    return rows


def _model(depth, filters, seed):
    keras.utils.set_random_seed(seed)
    return ku.build(depth=depth, filters=filters, deep_supervision=True)


def markdown_table(rows, batches=(1, 8)):
    """The rows as a Markdown table (one line per level)."""
    header = ["level", "params", "GFLOPs", "L4 FLOPs / FLOPs"]
    for batch in batches:
        header += [f"latency b{batch} (ms)", f"img/s b{batch}", f"speed-up b{batch}"]
    header.append("max abs diff vs Keras")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            f"L{row['level']}",
            f"{row['parameters']:,}",
            f"{row['flops'] / 1e9:.2f}",
            f"{1 / row['flops_ratio']:.2f}x",
        ]
        for batch in batches:
            cells += [
                f"{row[f'latency_ms_b{batch}']:.1f}",
                f"{row[f'images_per_s_b{batch}']:.2f}",
                f"{row[f'speedup_b{batch}']:.2f}x",
            ]
        cells.append(f"{row['max_abs_diff']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument(
        "--filters",
        type=int,
        nargs="+",
        default=None,
        help="widths per level (default: 32 64 128 ...)",
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    batches = tuple(args.batches)
    rows = benchmark(
        depth=args.depth,
        filters=args.filters,
        size=args.size,
        batches=batches,
        rounds=args.rounds,
        warmup=args.warmup,
    )
    cpu = platform.processor() or platform.machine()
    print(
        f"UNet++ depth {args.depth}, {args.size}x{args.size}, exported "
        f"SavedModels, median of {args.rounds} round-robin rounds; "
        f"TensorFlow {tf.__version__}, {cpu}, {os.cpu_count()} CPUs"
    )
    print(markdown_table(rows, batches))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
