"""Size, latency and agreement of every exported format, per level, in one run.

Exports a trained run (`keras-unetpp train ... --deep-supervision`) in all
formats (`keras_unetpp.runs.export_run(..., formats="savedmodel,tflite,onnx")`,
uint8 input, int8 calibrated on the run's training images), reloads every
file with its own runtime (`keras_unetpp.export.edge_runtime.load_runner`:
TensorFlow for the SavedModel, LiteRT for TFLite, onnxruntime for ONNX) and
runs it on the run's validation images, resized to the training size as the
run's size policy does (the TFLite and ONNX files of a resize-mode run take
that size) and stored as uint8. Each runtime is compared with the Keras model
pruned to the level (`prune(model, L)` on the same uint8 pixels / 255): the
max abs difference of the probabilities and the IoU of the masks, pooled over
the images (intersection and union summed, then divided). Latency is batch
1, the median of `--runs` calls after warm-up; the file size of a SavedModel
is its folder's.

    python benchmarks/runtime_benchmark.py RUN_DIR               # table only
    python benchmarks/runtime_benchmark.py RUN_DIR --json out.json --runs 50
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import numpy as np

RUNTIMES = (
    ("SavedModel", ""),
    ("TFLite float32", "model_float32.tflite"),
    ("TFLite dynamic", "model_dynamic_range.tflite"),
    ("TFLite int8", "model_int8.tflite"),
    ("ONNX", "model.onnx"),
)


def _size(path):
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(
        p.stat().st_size
        for name in ("saved_model.pb", "variables")
        for p in [path / name, *(path / name).rglob("*")]
        if p.is_file()
    )


def validation_images(run_dir, count=None):
    """The run's val images at its training size, uint8 `(n, h, w, c)`."""
    from keras_unetpp import runs
    from keras_unetpp.data.decode import prepare_image, read_image
    from keras_unetpp.size_policy import SizePolicy
    from keras_unetpp.sources import source_pairs

    config = runs.read_run_config(run_dir)
    settings = config["data"]
    policy = SizePolicy.from_run_config(config)
    pairs = source_pairs(settings["source"], "val")[:count]
    images = []
    for pair in pairs:
        path = str(pair.image)
        image = prepare_image(
            read_image(path),
            settings["channels"],
            settings.get("pixel_scaling", "dtype"),
            path,
        )
        resized, _ = policy.to_model_input(image[None], 1)
        images.append(np.round(np.asarray(resized)[0] * 255).astype(np.uint8))
    return np.stack(images)


def _latency(run, image, runs, warmup=3):
    for _ in range(warmup):
        run(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def benchmark(
    run_dir,
    export_dir,
    levels=None,
    images=None,
    runs=20,
    calibration=32,
    exported=None,
    threads=None,
):
    """One row per level and runtime; see the module docstring.

    With `exported` (an export folder of this run in every format, e.g. the
    `--export-dir` of an earlier call) the files there are measured instead
    of exporting again.
    """
    from keras_unetpp import runs as runs_lib
    from keras_unetpp.export import load_metadata, versions
    from keras_unetpp.export.edge_runtime import load_runner
    from keras_unetpp.pruning import prune

    started = time.perf_counter()
    if exported is None:
        paths = runs_lib.export_run(
            run_dir,
            export_dir=export_dir,
            levels=levels,
            accurate=False,
            input_dtype="uint8",
            formats="savedmodel,tflite,onnx",
            calibration_images=calibration,
        )
    else:
        paths = {}
        for folder in sorted(pathlib.Path(exported).glob("*_l[0-9]*")):
            version = folder / str(max(versions(folder)))
            level = load_metadata(version)["level"]
            if levels is None or level in levels:
                paths[level] = version
        calibration = load_metadata(version)["edge"]["calibration_images"]
    export_seconds = time.perf_counter() - started
    model = runs_lib.load_run_model(run_dir)
    pixels = validation_images(run_dir, images)
    rows = []
    for level, folder in paths.items():
        network = prune(model, level)
        expected = np.concatenate(
            [
                np.asarray(network(pixels[i : i + 8] / 255.0, training=False))
                for i in range(0, len(pixels), 8)
            ]
        )
        for runtime, name in RUNTIMES:
            path = folder / name if name else folder
            run = load_runner(path, threads=threads)
            outputs = [run(pixels[i : i + 1]) for i in range(len(pixels))]
            probabilities = np.concatenate([o["probabilities"] for o in outputs])
            mask = np.concatenate([o["mask"] for o in outputs]) > 0
            rows.append(
                {
                    "level": level,
                    "runtime": runtime,
                    "bytes": _size(path),
                    "latency_ms": 1000 * _latency(run, pixels[:1], runs),
                    "max_abs_diff": float(np.abs(probabilities - expected).max()),
                    "iou_vs_keras": _iou(mask, expected >= 0.5),
                    "foreground": float(mask.mean()),
                }
            )
            print(_row(rows[-1]), flush=True)
    return {
        "rows": rows,
        "images": int(len(pixels)),
        "size": list(pixels.shape[1:3]),
        "runs": runs,
        "calibration_images": calibration,
        "export_seconds": export_seconds,
        "threads": threads,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores",
    }


HEADER = (
    "| Level | Runtime | File size | Latency, batch 1 (median) | "
    "Max abs diff vs Keras | Mask IoU vs Keras |\n"
    "|---|---|---:|---:|---:|---:|"
)


def _row(row):
    return (
        f"| L{row['level']} | {row['runtime']} | {row['bytes'] / 1024:,.0f} KiB | "
        f"{row['latency_ms']:.2f} ms | {row['max_abs_diff']:.2e} | "
        f"{row['iou_vs_keras']:.4f} |"
    )


def markdown(result):
    """The rows as a markdown table."""
    return "\n".join([HEADER, *(_row(row) for row in result["rows"])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder made by keras-unetpp train")
    parser.add_argument("--levels", type=int, nargs="+", help="(default: all)")
    parser.add_argument("--images", type=int, help="val images (default: all)")
    parser.add_argument("--runs", type=int, default=20, help="(default: 20)")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--export-dir", help="(default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--exported", help="measure this earlier export of RUN instead of exporting"
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads of every runtime (default: theirs)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = benchmark(
            args.run,
            args.export_dir or pathlib.Path(tmp) / "export",
            levels=args.levels,
            images=args.images,
            runs=args.runs,
            calibration=args.calibration_images,
            exported=args.exported,
            threads=args.threads,
        )
    print()
    print(
        f"{result['images']} val images at {result['size'][0]}x{result['size'][1]}, "
        f"uint8 input; int8 calibrated on {result['calibration_images']} training "
        f"images; {result['machine']}, threads: {args.threads or 'default'}; "
        + (
            f"measured the export in {args.exported}"
            if args.exported
            else f"export took {result['export_seconds']:.0f} s"
        )
    )
    print(markdown(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
