"""Peak memory and time of a large prediction: tiled vs. the whole image.

Predicts one 4000x4000 1-channel image with a depth-4 UNet++, either whole
(`keras_unetpp.predict_padded`, one network pass over the full image) or
tile by tile (`keras_unetpp.predict_tiled`, 256x256 tiles at overlap 0.25
and 0.5, 4 tiles a batch). Every measurement runs in a fresh Python process
of its own, so that the peak resident set size (`ru_maxrss` of the child)
belongs to that prediction alone; the modes take turns (round-robin) over
the repeats so that a change in the machine's load hits all of them, and
the table gives medians. The model has 8 filters at level 0 (8, 16, ...,
128), not the paper's 32 (16x the FLOPs): at 32 the runs take far too long
on a small CPU. The activations, hence the memory growth of both modes,
scale about linearly with the width.

Each child builds the model (fixed seed) and an image (fixed seed), warms
the prediction function up on two small images (so that no tracing is
timed), records its RSS, then times the prediction. Peak RSS includes the
Python interpreter, TensorFlow and the model; "growth" is the peak minus
the RSS before the timed call.

    python benchmarks/tiling_benchmark.py                  # 4000x4000, 3 repeats
    python benchmarks/tiling_benchmark.py --quick          # smoke test, small
    python benchmarks/tiling_benchmark.py --json out.json
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
UNTILED = "untiled"


def _mode_name(overlap, served=False):
    name = UNTILED if overlap is None else f"tiled overlap {overlap:g}"
    return f"served {name}" if served else name


# --- The child: one prediction in a fresh process --------------------------


def _rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes():
    import resource

    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(config):
    """Runs one prediction as `config` says; returns its measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import keras_unetpp
    from keras_unetpp.tiling import tile_positions

    size, tile, overlap = config["size"], config["tile"], config["overlap"]
    rng = np.random.default_rng(config["seed"])
    image = rng.random((1, size, size, 1), dtype=np.float32)
    keras.utils.set_random_seed(config["seed"])
    model = keras_unetpp.build(depth=config["depth"], filters=config["filters"])
    serve = None
    if config.get("saved_model"):
        # The SavedModel as TF Serving would run it; the Keras model only
        # for the FLOP count.
        import tensorflow as tf

        signature = tf.saved_model.load(config["saved_model"]).signatures
        serve = signature["serving_default"]

    def predict(images):
        if serve is not None:
            return serve(image=tf.constant(images))["probabilities"].numpy()
        if overlap is None:
            return keras_unetpp.predict_padded(model, images, batch_size=1)
        return keras_unetpp.predict_tiled(
            model, images, tile, overlap=overlap, batch_size=config["batch"]
        )

    # Traces the prediction function for two shapes, after which TensorFlow
    # (reduce_retracing) keeps one trace for any shape: no tracing is timed.
    predict(image[:, :tile, :tile])
    predict(image[:, : 2 * tile, : 2 * tile])
    rss_before = _rss_bytes()
    start = time.perf_counter()
    prediction = predict(image)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    if config.get("save"):
        np.save(config["save"], prediction)
    tiles = 0
    if overlap is not None:
        tiles = len(tile_positions(size, tile, overlap)) ** 2
    return {
        "mode": _mode_name(overlap, serve is not None),
        "seconds": seconds,
        "tiles": tiles,
        "peak_rss_bytes": peak,
        "rss_before_bytes": rss_before,
        "flops": keras_unetpp.count_flops(model, tile, tile) * tiles
        if tiles
        else keras_unetpp.count_flops(model, size, size),
    }


# --- The parent: the plan, the children, the table -------------------------


def _run_in_child(config, timeout):
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
            ),
        ),
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"child {config} failed with status {completed.returncode}:\n"
            + completed.stderr[-3000:]
        )
    lines = [x for x in completed.stdout.splitlines() if x.startswith("@@ ")]
    return json.loads(lines[-1][3:])


def benchmark(
    size=4000,
    depth=4,
    filters=8,
    tile=256,
    overlaps=(0.25, 0.5),
    batch=4,
    repeats=3,
    seed=0,
    timeout=1800,
    log=print,
    served=False,
):
    """Runs every mode `repeats` times, each in a fresh process.

    Args:
        size: int, height and width of the image. Defaults to `4000`.
        depth: int, the UNet++ depth. Defaults to `4`.
        filters: int, width of level 0 (doubled per level). Defaults to `8`.
        tile: int, tile height and width. Defaults to `256`.
        overlaps: the tiled modes' overlaps. Defaults to `(0.25, 0.5)`.
        batch: int, tiles per model call. Defaults to `4`.
        repeats: int, runs of each mode (round-robin). Defaults to `3`.
        seed: int, seed of the weights and the image. Defaults to `0`.
        timeout: seconds allowed to one child. Defaults to `1800`.
        log: callable for progress lines. Defaults to `print`.
        served: bool, run the SavedModels of `export_pruned` (the level
            `depth`, untiled and with `tiling={"tile_size": tile, "overlap":
            o, "batch_size": batch}`) instead of `predict_padded` and
            `predict_tiled`: what a server holds for one large request.
            Defaults to `False`.

    Returns:
        A dict: `"rows"` (one per mode, medians), `"ratios"` (tiled over
        untiled, per tiled mode), `"runs"` (every measurement) and
        `"agreement"` (max and mean abs difference of each tiled
        prediction from the untiled one, first repeat).
    """
    modes = [None, *overlaps]
    runs = {_mode_name(o, served): [] for o in modes}
    with tempfile.TemporaryDirectory() as folder:
        exported = {}
        if served:
            exported = _export(folder, depth, filters, tile, modes, batch, seed)
        saved = {}
        for repeat in range(repeats):
            for overlap in modes:
                name = _mode_name(overlap, served)
                config = dict(
                    size=size, depth=depth, filters=filters, tile=tile,
                    overlap=overlap, batch=batch, seed=seed,
                    saved_model=exported.get(overlap),
                )  # fmt: skip
                if repeat == 0:
                    saved[name] = config["save"] = os.path.join(
                        folder, f"{len(saved)}.npy"
                    )
                result = _run_in_child(config, timeout)
                runs[name].append(result)
                log(
                    f"  repeat {repeat + 1}/{repeats} {name}: "
                    f"{result['seconds']:.1f} s, peak RSS "
                    f"{result['peak_rss_bytes'] / 2**20:.0f} MB"
                )
        agreement = _agreement(saved)
    rows = [_row(name, results) for name, results in runs.items()]
    untiled = rows[0]
    ratios = [
        {
            "mode": row["mode"],
            "time_ratio": row["seconds"] / untiled["seconds"],
            "peak_rss_ratio": row["peak_rss_mb"] / untiled["peak_rss_mb"],
            "growth_ratio": row["rss_growth_mb"] / untiled["rss_growth_mb"],
            "flops_ratio": row["gflops"] / untiled["gflops"],
        }
        for row in rows[1:]
    ]
    return {"rows": rows, "ratios": ratios, "runs": runs, "agreement": agreement}


def _export(folder, depth, filters, tile, modes, batch, seed):
    """The SavedModel of level `depth` per mode (None: untiled), as exported."""
    import keras

    import keras_unetpp
    from keras_unetpp.export import export_pruned

    keras.utils.set_random_seed(seed)
    model = keras_unetpp.build(depth=depth, filters=filters)
    paths = {}
    for k, overlap in enumerate(modes):
        tiling = None
        if overlap is not None:
            tiling = {"tile_size": tile, "overlap": overlap, "batch_size": batch}
        written = export_pruned(
            model, os.path.join(folder, f"export{k}"), levels=[depth], tiling=tiling
        )
        paths[overlap] = str(written[depth])
    return paths


def _agreement(saved):
    import numpy as np

    untiled = np.load(saved.pop(next(iter(saved))))  # The untiled mode, first.
    out = {}
    for name, path in saved.items():
        difference = np.abs(np.load(path) - untiled)
        out[name] = {
            "max_abs_diff": float(difference.max()),
            "mean_abs_diff": float(difference.mean()),
        }
    return out


def _row(name, results):
    seconds = statistics.median(r["seconds"] for r in results)
    tiles = results[0]["tiles"]
    return {
        "mode": name,
        "repeats": len(results),
        "tiles": tiles,
        "seconds": seconds,
        "tiles_per_s": tiles / seconds if tiles else None,
        "gflops": results[0]["flops"] / 1e9,
        "gflops_per_s": results[0]["flops"] / 1e9 / seconds,
        "peak_rss_mb": statistics.median(r["peak_rss_bytes"] for r in results) / 2**20,
        "rss_growth_mb": statistics.median(
            r["peak_rss_bytes"] - r["rss_before_bytes"] for r in results
        )
        / 2**20,
    }


def _table(headers, lines):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def markdown_tables(result):
    """The medians and the tiled / untiled ratios as two Markdown tables."""
    rows = _table(
        ["mode", "tiles", "time (s)", "tiles/s", "GFLOP", "GFLOP/s",
         "peak RSS (MB)", "growth (MB)", "max |diff| vs untiled"],
        [
            [
                row["mode"], str(row["tiles"] or "-"), f"{row['seconds']:.1f}",
                "-" if row["tiles_per_s"] is None else f"{row['tiles_per_s']:.2f}",
                f"{row['gflops']:.0f}", f"{row['gflops_per_s']:.1f}",
                f"{row['peak_rss_mb']:.0f}", f"{row['rss_growth_mb']:.0f}",
                _diff(result["agreement"].get(row["mode"])),
            ]
            for row in result["rows"]
        ],
    )  # fmt: skip
    ratios = _table(
        ["tiled / untiled", "time", "peak RSS", "growth", "FLOPs"],
        [
            [
                ratio["mode"], f"{ratio['time_ratio']:.2f}x",
                f"{ratio['peak_rss_ratio']:.2f}x", f"{ratio['growth_ratio']:.2f}x",
                f"{ratio['flops_ratio']:.2f}x",
            ]
            for ratio in result["ratios"]
        ],
    )  # fmt: skip
    return rows + "\n\n" + ratios


def _diff(agreement):
    if agreement is None:
        return "-"
    return f"{agreement['max_abs_diff']:.1e} (mean {agreement['mean_abs_diff']:.1e})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke test: a 320x320 image, 64x64 tiles, filters 4, 1 repeat",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--served",
        action="store_true",
        help="serve the exported SavedModels (untiled, and tiled inside the "
        "graph with export_pruned(tiling=...)) instead of the Python calls",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_child(json.loads(args.child))
        sys.stdout.write("@@ " + json.dumps(result) + "\n")
        return
    if args.quick:
        args.size, args.tile, args.filters, args.repeats = 320, 64, 4, 1
    print(
        f"UNet++ depth {args.depth}, filters {args.filters} (level 0), one "
        f"{args.size}x{args.size}x1 image, tiles {args.tile}x{args.tile}, "
        f"batch {args.batch}, median of {args.repeats} fresh processes per "
        f"mode; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    result = benchmark(
        size=args.size, depth=args.depth, filters=args.filters, tile=args.tile,
        overlaps=tuple(args.overlaps), batch=args.batch, repeats=args.repeats,
        log=lambda line: print(line, flush=True), served=args.served,
    )  # fmt: skip
    print(markdown_tables(result))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
