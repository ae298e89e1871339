"""GPU check: mixed_float16 training and export against float32.

On a GPU, with the same initial weights and the same batches:

1. forward pass of a float32 and a mixed_float16 UNet++ (deep supervision):
   largest difference of the probabilities and agreement of the masks;
2. a few training steps in each (mixed_float16 with the loss scaling that
   `compile()` adds): losses side by side, final outputs compared;
3. training and inference speed of float32, mixed_float16 and both with XLA
   (medians of `--steps` steps after warm-up);
4. peak memory of one training step: float32, mixed_float16, and
   mixed_float16 with `keras_unetpp.recompute_nodes` (TensorFlow's
   allocator statistics of the device, read by `benchmarks/memory.py`);
5. export of the mixed_float16 model as a `.keras` file and as a SavedModel
   (`model.export`), reloaded and compared with the model.

Prints one JSON line per check and a summary; exits 1 if a numerical check
fails. Without a GPU it says so and exits 0, or 3 with `--require-gpu`;
`--allow-cpu` runs the same checks on the CPU (slowly: CPUs have no fast
float16), to test the script itself.

Usage:

    bash benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _emit(out, record):
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out / "gpu_check.jsonl", "a") as f:
            f.write(line + "\n")


def _batch(size, batch, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    # Smooth blobs, so that a trained model has something to segment.
    yy, xx = np.mgrid[:size, :size] / size
    images, masks = [], []
    for _ in range(batch):
        cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.25)]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype("float32")
        image = mask * 0.6 + rng.normal(0.2, 0.1, (size, size))
        images.append(image[..., None])
        masks.append(mask[..., None])
    return np.stack(images).astype("float32"), np.stack(masks)


def _build(precision, args, weights=None):
    import keras

    import keras_unetpp
    from keras_unetpp.precision import precision_scope

    with precision_scope(precision):
        model = keras_unetpp.build(
            args.depth, (args.size, args.size, 1), deep_supervision=True
        )
    if weights is not None:
        model.set_weights(weights)
    return model, keras


def _compile(model, keras, xla=False):
    import keras_unetpp

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={name: keras_unetpp.BCEDiceLoss() for name in model.output},
        jit_compile=xla,
    )


def _compare(a, b):
    import numpy as np

    a, b = np.asarray(a, "float32"), np.asarray(b, "float32")
    agree = np.mean((a > 0.5) == (b > 0.5))
    return float(np.max(np.abs(a - b))), float(agree)


def check_numerics(args, out):
    """Forward and short training of float32 vs mixed_float16; True if close."""
    import numpy as np

    x, y = _batch(args.size, args.batch, seed=0)
    ref, keras = _build("float32", args)
    weights = ref.get_weights()
    half, _ = _build("mixed_float16", args, weights)
    head = f"output_l{args.depth}"
    diff, agree = _compare(ref(x)[head], half(x)[head])
    ok = diff < args.tolerance and agree > 0.99
    _emit(
        out,
        {"check": "forward", "max_abs_diff": diff, "mask_agreement": agree, "ok": ok},
    )
    _compile(ref, keras)
    _compile(half, keras)
    scaled = type(half.optimizer).__name__
    losses = []
    for step in range(args.train_steps):
        xs, ys = _batch(args.size, args.batch, seed=100 + step)
        t = {name: ys for name in ref.output}
        losses.append(
            tuple(
                float(m.train_on_batch(xs, t, return_dict=True)["loss"])
                for m in (ref, half)
            )
        )
    finite = all(np.isfinite(v) for pair in losses for v in pair)
    final_ref, final_half = losses[-1]
    rel = abs(final_half - final_ref) / max(abs(final_ref), 1e-6)
    train_ok = finite and rel < args.loss_tolerance
    diff, agree = _compare(
        ref.predict(x, verbose=0)[head], half.predict(x, verbose=0)[head]
    )
    _emit(
        out,
        {
            "check": "training",
            "steps": args.train_steps,
            "optimizer": scaled,
            "losses": losses,
            "final_loss_rel_diff": rel,
            "max_abs_diff_after": diff,
            "mask_agreement_after": agree,
            "ok": train_ok,
        },
    )
    return ok and train_ok, half, x


def check_speed(args, out):
    """Training and inference images/s: float32, mixed_float16, +XLA."""
    import numpy as np

    x, y = _batch(args.size, args.batch, seed=1)
    results = {}
    for precision in ("float32", "mixed_float16"):
        for xla in (False, True):
            model, keras = _build(precision, args)
            _compile(model, keras, xla)
            targets = {name: y for name in model.output}
            for _ in range(3):
                model.train_on_batch(x, targets)
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                model.train_on_batch(x, targets)
                times.append(time.perf_counter() - start)
            train = args.batch / float(np.median(times))
            for _ in range(3):
                model.predict_on_batch(x)
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                model.predict_on_batch(x)
                times.append(time.perf_counter() - start)
            infer = args.batch / float(np.median(times))
            key = f"{precision}{'+xla' if xla else ''}"
            results[key] = (train, infer)
            _emit(
                out,
                {
                    "check": "speed",
                    "config": key,
                    "train_images_per_s": train,
                    "infer_images_per_s": infer,
                    "size": args.size,
                    "batch": args.batch,
                    "steps": args.steps,
                },
            )
    base = results["float32"]
    for key, (train, infer) in results.items():
        _emit(
            out,
            {
                "check": "speed_ratio",
                "config": key,
                "train_vs_float32": train / base[0],
                "infer_vs_float32": infer / base[1],
            },
        )


def check_memory(args, out, device):
    """Allocator peak of one training step per configuration, in MB."""
    import memory

    import keras_unetpp

    x, y = _batch(args.size, args.batch, seed=2)
    base = None
    for precision, recompute in (
        ("float32", False),
        ("mixed_float16", False),
        ("mixed_float16", True),
    ):
        model, keras = _build(precision, args)
        if recompute:
            keras_unetpp.recompute_nodes(model)
        _compile(model, keras)
        targets = {name: y for name in model.output}
        model.train_on_batch(x, targets)  # traced and warmed up
        measured = memory.step_peak(
            lambda m=model, t=targets: m.train_on_batch(x, t), device
        )
        before, peak = measured["before"], measured["peak"]
        key = f"{precision}{'+recompute' if recompute else ''}"
        record = {
            "check": "memory",
            "config": key,
            "device": device,
            "step_peak_mb": (peak - before) / 2**20,
            "total_peak_mb": peak / 2**20,
            "size": args.size,
            "batch": args.batch,
        }
        if base is None:
            base = peak - before
        record["step_peak_vs_float32"] = (peak - before) / base
        _emit(out, record)
        del model


def check_export(model, x, args, out):
    """The mixed_float16 model saved, reloaded and exported; True if equal."""
    import keras
    import numpy as np
    import tensorflow as tf

    head = f"output_l{args.depth}"
    expected = np.asarray(model.predict(x, verbose=0)[head])
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.keras"
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
        got = np.asarray(reloaded.predict(x, verbose=0)[head])
        keras_diff = float(np.max(np.abs(got - expected)))
        saved = pathlib.Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(saved))
        served = loaded.serve(tf.constant(x))
        served = served[head] if isinstance(served, dict) else served
        served_dtype = str(served.dtype.name)
        saved_diff = float(np.max(np.abs(np.asarray(served) - expected)))
    ok = keras_diff < 1e-3 and saved_diff < 1e-3 and served_dtype == "float32"
    _emit(
        out,
        {
            "check": "export",
            "reloaded_max_abs_diff": keras_diff,
            "saved_model_max_abs_diff": saved_diff,
            "saved_model_output_dtype": served_dtype,
            "ok": ok,
        },
    )
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per speed configuration"
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=20,
        help="training steps of the numerical comparison",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest allowed probability difference, forward",
    )
    parser.add_argument(
        "--loss-tolerance",
        type=float,
        default=0.05,
        help="largest relative difference of the final loss",
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run on the CPU when there is no GPU (tests only)",
    )
    parser.add_argument(
        "--require-gpu", action="store_true", help="exit 3 (not 0) when there is no GPU"
    )
    parser.add_argument("--out", type=pathlib.Path, help="folder for gpu_check.jsonl")
    args = parser.parse_args(argv)

    import memory
    import tensorflow as tf

    # Before the first TensorFlow op: CPU allocator statistics without oneDNN.
    memory.enable_allocator_stats()
    gpus = tf.config.list_physical_devices("GPU")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        details = tf.config.experimental.get_device_details(gpus[0])
        _emit(
            args.out,
            {
                "check": "device",
                "gpus": len(gpus),
                **{k: str(v) for k, v in details.items()},
            },
        )
    elif not args.allow_cpu:
        print(
            "No GPU found by TensorFlow: the GPU check was not run. "
            "(Use --allow-cpu to run it on the CPU.)",
            flush=True,
        )
        return 3 if args.require_gpu else 0
    else:
        print(
            "No GPU found by TensorFlow: running on the CPU (--allow-cpu).", flush=True
        )
    ok, model, x = check_numerics(args, args.out)
    if not args.skip_speed:
        check_speed(args, args.out)
    check_memory(args, args.out, "GPU:0" if gpus else "CPU:0")
    ok = check_export(model, x, args, args.out) and ok
    print(
        f"GPU check {'passed' if ok else 'FAILED'} on {'GPU' if gpus else 'CPU'}.",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
