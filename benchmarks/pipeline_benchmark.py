"""Images per second: the tf.data training pipeline vs. UNet++ training.

Measures, in one run on one machine:

- pipeline, cold: a fresh `make_dataset(training=True, augmentation=...)`
  reading and decoding the PNG files (first epoch, which also fills the
  cache);
- pipeline, cached: the following epochs of the same dataset (decoded images
  from memory, random crop/scale, flips, turns, brightness/contrast, batch);
- training: `train_on_batch` steps of `keras_unetpp.build(depth=4)` compiled
  with `BCEDiceLoss`, on batches from the pipeline.

Each figure is the median over repeats; the ratios divide the pipeline rates
by the training rate. The pipeline should deliver at least 10x the training
rate and at least 500 images/s from cache.

Usage:

    python benchmarks/pipeline_benchmark.py \
        --data ../shared/data/dsb2018_nuclei --out results/pipeline_benchmark
"""

import argparse
import json
import os
import pathlib
import statistics
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _epoch_rate(ds):
    """Images per second of one full pass over `ds`."""
    images = 0
    start = time.perf_counter()
    for image, _ in ds:
        images += int(image.shape[0])
    return images / (time.perf_counter() - start)


def measure_pipeline(pairs, image_size, batch_size, repeats, cached_epochs):
    """Median cold and cached images/s of the augmented training pipeline."""
    from keras_unetpp import data

    cold, cached = [], []
    for repeat in range(repeats):
        ds = data.make_dataset(
            pairs,
            image_size=image_size,
            batch_size=batch_size,
            training=True,
            augmentation=data.Augmentation(),
            seed=repeat,
        )
        cold.append(_epoch_rate(ds))
        cached.extend(_epoch_rate(ds) for _ in range(cached_epochs))
    return statistics.median(cold), statistics.median(cached), cold, cached


def measure_training(pairs, image_size, batch_size, steps, warmup, depth=4):
    """Median images/s of UNet++ `train_on_batch` on this machine."""
    import keras

    import keras_unetpp
    from keras_unetpp import data

    model = keras_unetpp.build(depth=depth, input_shape=(*image_size, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras_unetpp.BCEDiceLoss()
    )
    ds = data.make_dataset(
        pairs,
        image_size=image_size,
        batch_size=batch_size,
        drop_remainder=True,
        depth=depth,
    )
    batch = next(iter(ds))
    for _ in range(warmup):
        model.train_on_batch(*batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(*batch)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times), times


def plot(results, path):
    """Bar chart of the three rates (log scale) with the two target lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [
        "pipeline, cold",
        "pipeline, cached",
        f"UNet++ d{results['depth']} training",
    ]
    rates = [
        results["cold_images_per_s"],
        results["cached_images_per_s"],
        results["training_images_per_s"],
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, rates, color=["#4c72b0", "#55a868", "#c44e52"])
    ax.bar_label(bars, labels=[f"{r:,.1f}" for r in rates])
    ax.axhline(10 * rates[2], color="gray", linestyle="--", label="10x training")
    ax.axhline(500, color="black", linestyle=":", label="500 images/s")
    ax.set_yscale("log")
    ax.set_ylim(top=3 * max(max(rates), 500))
    ax.set_ylabel("images / second")
    ax.set_title(
        f"{results['image_size'][0]}x{results['image_size'][1]}, batch "
        f"{results['batch_size']}, {results['cpu_count']} CPU cores"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    data_root,
    out,
    image_size=(256, 256),
    batch_size=8,
    limit=None,
    repeats=3,
    cached_epochs=3,
    train_steps=5,
    warmup=2,
    depth=4,
):
    """Runs the benchmark, prints the table and writes JSON and a figure."""
    from keras_unetpp import data

    data_root = pathlib.Path(data_root)
    pairs = data.folder_pairs(
        data_root / "images",
        data_root / "masks",
        stems=data.manifest_stems(data_root / "manifest.csv", "train"),
    )
    if limit:
        pairs = pairs[:limit]
    cold, cached, cold_all, cached_all = measure_pipeline(
        pairs, image_size, batch_size, repeats, cached_epochs
    )
    training, step_times = measure_training(
        pairs, image_size, batch_size, train_steps, warmup, depth
    )
    results = {
        "data": str(data_root),
        "images": len(pairs),
        "image_size": list(image_size),
        "batch_size": batch_size,
        "depth": depth,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "cold_images_per_s": cold,
        "cached_images_per_s": cached,
        "training_images_per_s": training,
        "cold_over_training": cold / training,
        "cached_over_training": cached / training,
        "cold_runs": cold_all,
        "cached_runs": cached_all,
        "train_step_seconds": step_times,
    }
    rows = [
        ("pipeline, cold (PNG decode)", cold, cold / training),
        ("pipeline, cached", cached, cached / training),
        (f"UNet++ depth {depth} training", training, 1.0),
    ]
    print(
        f"{len(pairs)} images, {image_size[0]}x{image_size[1]}, batch "
        f"{batch_size}, augmentation on, {os.cpu_count()} CPU cores, "
        f"load average {results['load_average_1min_at_end']:.1f}"
    )
    print(f"{'':30s} {'images/s':>10s} {'x training':>11s}")
    for name, rate, ratio in rows:
        print(f"{name:30s} {rate:10.1f} {ratio:11.1f}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "pipeline_benchmark.png")
    print(f"wrote {out / 'results.json'} and {out / 'pipeline_benchmark.png'}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "data" / "dsb2018_nuclei"),
        help="folder with images/, masks/ and manifest.csv",
    )
    parser.add_argument("--out", default=str(REPO / "results" / "pipeline_benchmark"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cached-epochs", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--depth", type=int, default=4, help="UNet++ depth of the training-rate model"
    )
    args = parser.parse_args(argv)
    run(
        args.data,
        args.out,
        (args.image_size, args.image_size),
        args.batch_size,
        args.limit,
        args.repeats,
        args.cached_epochs,
        args.train_steps,
        args.warmup,
        args.depth,
    )


if __name__ == "__main__":
    main()
