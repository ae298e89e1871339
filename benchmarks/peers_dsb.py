"""keras_unetpp against peer UNet++ packages on the DSB 2018 nuclei, one protocol.

Every model is trained and scored the same way, on one machine, each in a
process of its own (one after the other; a crash costs its row only):

- data: the shared DSB 2018 subset, split by the package's own split
  definition (`keras_unetpp.sources`: the manifest's `suggested_split`),
  decoded by the package's decoder (RGB in [0, 1], 0/1 masks);
- training, `--protocol resize` (the older 96x96 protocol): the training
  images resized to `--size` (masks nearest neighbour); `--protocol crop`
  (the recipe's, `scripts/dsb_recipe.sh`): random `--size` crops at the
  images' native scale. Batches of `--batch` are drawn by one seeded
  generator with random flips and quarter turns (the same batches for every
  model), Adam at `--lr` (`--schedule cosine`: decayed to 0 over the
  wall-clock budget, by the share of it spent), the paper's loss 0.5 BCE +
  (1 - soft Dice) on every output head, for `--minutes` of wall-clock time
  each after one untimed first step (graph tracing, reported apart);
- scoring: `resize`: each validation image resized to `--size`, its
  probabilities resized back to the image's own size (bilinear); `crop`:
  each image whole, zero-padded to a multiple of 32 and the probabilities
  cropped back. Thresholded at 0.5, then
  `keras_unetpp.field_metrics.FieldScores` against the mask as stored:
  the pooled foreground IoU and Dice (the authors' `compute_iou`), their
  per-image means, the authors' Keras `mean_iou` and the DSB 2018 average
  precision (connected components, and the distance watershed).

Models (widths from `--filters`: f, 2f, ..., 16f):

- `keras_unetpp`: `keras_unetpp.build`, depth 4, deep supervision; a row for
  each head L1..L4 and the accurate mode (mean of the heads);
- `keras_unetpp_unet`: `keras_unetpp.build_unet`, the U-Net baseline;
- `kuc`: keras-unet-collection's `unet_plus_2d`, deep supervision on (its
  final output scored);
- `monai`: MONAI's `BasicUNetPlusPlus`, deep supervision on (its last head,
  X(0,4), scored);
- `smp`: segmentation_models.pytorch's `UnetPlusPlus`, a ResNet-18 encoder
  with `encoder_weights=None` (no pretraining), decoder widths 8f .. f.

The peers are in the `bench` extra (`pip install -e ".[bench]"`). A model
whose package is missing is reported as such, not skipped silently.

Usage:

    python benchmarks/peers_dsb.py --minutes 2          # short smoke run
    python benchmarks/peers_dsb.py --minutes 14 --output runs/peers
    python benchmarks/peers_dsb.py --protocol crop --size 128 --schedule cosine \
        --lr 2e-3 --minutes 8 --output runs/peers_crop    # the recipe's protocol
"""

import argparse
import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Native-size scoring pads every image to this multiple (the deepest stride
# of all models: smp's ResNet-18 encoder halves five times).
STRIDE = 32
MODELS = ("keras_unetpp", "keras_unetpp_unet", "kuc", "monai", "smp")
COLUMNS = (
    "model",
    "level",
    "params",
    "steps",
    "epochs",
    "train_s",
    "first_step_s",
    "iou",
    "dice",
    "iou_per_image",
    "dice_per_image",
    "mean_iou_keras",
    "dsb_ap",
    "dsb_ap_watershed",
)


def _load(data_dir, split):
    from keras_unetpp import sources

    source = sources.data_source(data_dir=data_dir)
    samples, _ = sources.source_samples(source, split, channels=3)
    return [(image, mask[..., 0] > 0) for image, mask in samples]


def _resize_image(image, size):
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def _resize_set(samples, size):
    import cv2

    images = np.stack([_resize_image(image, size) for image, _ in samples])
    masks = np.stack(
        [
            cv2.resize(
                mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST
            )
            for _, mask in samples
        ]
    )
    return images.astype(np.float32), masks[..., None].astype(np.float32)


class Batches:
    """Seeded random batches with flips and quarter turns (image and mask alike).

    `images` and `masks` are arrays of one size, or, with `crop`, lists of
    native-size arrays (each at least `crop` pixels on a side) from which a
    random `crop` x `crop` window is cut.
    """

    def __init__(self, images, masks, batch, seed, crop=None):
        self.images, self.masks, self.batch = images, masks, batch
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def _cut(self, index):
        if self.crop is None:
            return self.images[index].copy(), self.masks[index].copy()
        c = self.crop
        xs, ys = [], []
        for i in index:
            h, w = self.images[i].shape[:2]
            top = int(self.rng.integers(h - c + 1))
            left = int(self.rng.integers(w - c + 1))
            xs.append(self.images[i][top : top + c, left : left + c])
            ys.append(self.masks[i][top : top + c, left : left + c])
        return np.stack(xs), np.stack(ys)

    def __next__(self):
        index = self.rng.choice(len(self.images), self.batch, replace=False)
        x, y = self._cut(index)
        for k in range(self.batch):
            turns = int(self.rng.integers(4))
            flip = bool(self.rng.integers(2))
            for array in (x, y):
                array[k] = np.rot90(array[k], turns)
                if flip:
                    array[k] = array[k][:, ::-1]
        return x, y


class KerasModel:
    """A Keras model trained with keras_unetpp's BCE-Dice on each output."""

    def __init__(self, model, lr, labels, final):
        import keras

        import keras_unetpp

        self.model = model
        self.labels, self.final = labels, final
        outputs = model.output
        if isinstance(outputs, dict):
            self.names = list(outputs)
            loss = {name: keras_unetpp.BCEDiceLoss() for name in self.names}
        elif isinstance(outputs, (list, tuple)):
            self.names = list(range(len(outputs)))
            loss = [keras_unetpp.BCEDiceLoss() for _ in outputs]
        else:
            self.names = None
            loss = keras_unetpp.BCEDiceLoss()
        # No XLA (Keras' "auto" would compile UNet++ with XLA on the CPU for
        # minutes): as keras_unetpp's own `compile_model` trains.
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, jit_compile=False)
        self.params = model.count_params()

    def set_lr(self, value):
        self.model.optimizer.learning_rate.assign(value)

    def _targets(self, y):
        if self.names is None:
            return y
        if isinstance(self.names[0], str):
            return {name: y for name in self.names}
        return [y] * len(self.names)

    def train_step(self, x, y):
        self.model.train_on_batch(x, self._targets(y))

    def predict(self, x):
        """`{row label: probabilities (batch, h, w)}`."""
        out = self.model.predict(x, batch_size=16, verbose=0)
        if isinstance(out, dict) and not self.labels:
            (out,) = out.values()
        if isinstance(out, dict):
            heads = {label: out[name][..., 0] for label, name in self.labels.items()}
            if self.final == "accurate":
                heads["accurate"] = np.mean(list(heads.values()), axis=0)
            return heads
        if isinstance(out, (list, tuple)):
            return {self.final: out[-1][..., 0]}
        return {self.final: out[..., 0]}


class TorchModel:
    """A PyTorch module trained with the same BCE-Dice on each output (NCHW)."""

    def __init__(self, module, lr, label):
        import torch

        self.torch = torch
        self.module = module
        self.label = label
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        self.params = sum(p.numel() for p in module.parameters())

    def set_lr(self, value):
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def _loss(self, logits, y):
        torch = self.torch
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, reduction="none"
        ).mean(dim=(1, 2, 3))
        p = torch.sigmoid(logits)
        dice = (2 * (y * p).sum(dim=(1, 2, 3)) + 1.0) / (
            y.sum(dim=(1, 2, 3)) + p.sum(dim=(1, 2, 3)) + 1.0
        )
        return (0.5 * bce + 1.0 - dice).mean()

    def _nchw(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def train_step(self, x, y):
        self.module.train()
        out = self.module(self._nchw(x))
        outputs = out if isinstance(out, (list, tuple)) else [out]
        target = self._nchw(y)
        loss = sum(self._loss(o, target) for o in outputs)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def predict(self, x):
        torch = self.torch
        self.module.eval()
        probs = []
        with torch.no_grad():
            for start in range(0, len(x), 16):
                out = self.module(self._nchw(x[start : start + 16]))
                out = out[-1] if isinstance(out, (list, tuple)) else out
                probs.append(torch.sigmoid(out)[:, 0].numpy())
        return {self.label: np.concatenate(probs)}


def _allow_torchvision_without_ops():
    """Lets torchvision's Python modules import when its C ops cannot load.

    The torchvision wheel that matches the venv's CPU-only torch is built for
    CUDA torch; its C extension fails to load, and its import then fails
    while registering fake kernels for those ops. smp only uses
    torchvision's ResNet definition (plain Python), so the registration of
    the missing ops is skipped; no torchvision op is called.
    """
    import torch.library

    original = torch.library.register_fake
    if getattr(original, "_peers_dsb", False):
        return

    def register_fake(op, *args, **kwargs):
        if not (isinstance(op, str) and op.startswith("torchvision::") and not args):
            return original(op, *args, **kwargs)

        def decorate(fn):
            try:
                return original(op, **kwargs)(fn)
            except RuntimeError:
                return fn

        return decorate

    register_fake._peers_dsb = True
    torch.library.register_fake = register_fake


def build(name, size, filters, lr, seed):
    """The wrapped model `name`, seeded; `size=None` takes any image size."""
    widths = [filters * 2**k for k in range(5)]
    if name in ("keras_unetpp", "keras_unetpp_unet", "kuc"):
        import keras

        import keras_unetpp

        keras.utils.set_random_seed(seed)
        shape = (size, size, 3)
        if name == "keras_unetpp":
            model = keras_unetpp.build(4, shape, filters=widths, deep_supervision=True)
            labels = {f"L{k}": f"output_l{k}" for k in range(1, 5)}
            return KerasModel(model, lr, labels, "accurate")
        if name == "keras_unetpp_unet":
            model = keras_unetpp.build_unet(4, shape, filters=widths)
            return KerasModel(model, lr, {}, "L4")
        from keras_unet_collection import models

        model = models.unet_plus_2d(
            shape, widths, n_labels=1, stack_num_down=2, stack_num_up=2,
            activation="ReLU", output_activation="Sigmoid", batch_norm=True,
            pool="max", unpool=False, deep_supervision=True, name="xnet",
        )  # fmt: skip
        return KerasModel(model, lr, {}, "final")
    import torch

    torch.manual_seed(seed)
    if name == "monai":
        from monai.networks.nets import BasicUNetPlusPlus

        module = BasicUNetPlusPlus(
            spatial_dims=2, in_channels=3, out_channels=1,
            features=(*widths, filters), deep_supervision=True,
            act="relu", norm="batch", upsample="deconv",
        )  # fmt: skip
        return TorchModel(module, lr, "X(0,4)")
    if name == "smp":
        _allow_torchvision_without_ops()
        import segmentation_models_pytorch as smp

        module = smp.UnetPlusPlus(
            encoder_name="resnet18", encoder_weights=None, in_channels=3,
            classes=1, decoder_channels=tuple(reversed(widths[:4])) + (filters,),
        )  # fmt: skip
        return TorchModel(module, lr, "final")
    raise ValueError(f"Unknown model. Received: {name!r}")


def cosine_lr(lr, spent):
    """The cosine schedule at `spent` (the share of the budget used, 0-1)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(max(spent, 0.0), 1.0)))


def train(model, batches, seconds, lr=None):
    """One untimed first step, then steps until `seconds` have passed.

    The first step (graph tracing for Keras, none for PyTorch) is not
    counted in the budget, so that a loaded machine's tracing time does not
    eat a short budget; it is reported. With `lr`, every later step runs at
    `cosine_lr(lr, share of the budget spent)`: each model's schedule ends
    with its budget, whatever its speed.

    Returns:
        `(steps, seconds, first_step_seconds)`; `steps` counts the first.
    """
    start = time.perf_counter()
    model.train_step(*next(batches))
    first = time.perf_counter() - start
    start = time.perf_counter()
    steps = 1
    while (elapsed := time.perf_counter() - start) < seconds:
        if lr is not None:
            model.set_lr(cosine_lr(lr, elapsed / seconds))
        model.train_step(*next(batches))
        steps += 1
    return steps, time.perf_counter() - start, first


def score(model, val, size, instance_methods):
    """`FieldScores.result()` of each of the model's rows on the val images.

    `size` is the side the images are resized to (and the probabilities
    back), or `None` to predict each image at its own size, zero-padded to
    a multiple of `STRIDE` and cropped back.
    """
    import cv2

    from keras_unetpp.field_metrics import FieldScores

    if size is None:
        from keras_unetpp.padding import pad_to_multiple

        outputs = {}
        for image, mask in val:
            h, w = mask.shape
            padded, _ = pad_to_multiple(image[None].astype(np.float32), STRIDE)
            for label, prob in model.predict(padded).items():
                outputs.setdefault(label, []).append(prob[0, :h, :w])
    else:
        x = np.stack([_resize_image(image, size) for image, _ in val])
        outputs = model.predict(x.astype(np.float32))
    results = {}
    for label, probs in outputs.items():
        scores = FieldScores(instance_methods=instance_methods)
        for (_, mask), prob in zip(val, probs):
            h, w = mask.shape
            if prob.shape != (h, w):
                prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
            scores.update(mask, prob)
        results[label] = scores.result()
    return results


def format_rows(rows):
    header = ("model", "level", "params", "steps", "epochs", "IoU", "Dice",
              "IoU/img", "Dice/img", "mIoU(K)", "DSB-AP", "DSB-AP(ws)")  # fmt: skip
    lines = []
    for row in rows:
        if row.get("error"):
            lines.append((row["model"], "-", "-", "-", "-", f"({row['error']})"))
            continue
        lines.append(
            (row["model"], row["level"], f"{row['params']:,}", str(row["steps"]),
             f"{row['epochs']:.1f}")
            + tuple(
                "-" if row.get(k) is None else f"{row[k]:.4f}"
                for k in ("iou", "dice", "iou_per_image", "dice_per_image",
                          "mean_iou_keras", "dsb_ap", "dsb_ap_watershed")
            )
        )  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *lines] if i < len(line))
              for i in range(len(header))]  # fmt: skip
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                  enumerate(zip(line, widths)))
        for line in [header, *lines]
    )  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared/data/dsb2018_nuclei")
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=2.0,
        help="training wall time per model (default: 2)",
    )
    parser.add_argument(
        "--protocol",
        choices=("resize", "crop"),
        default="resize",
        help="resize: train and score at --size x --size (the older protocol); "
        "crop: train on native-scale --size crops, score whole images at "
        "their own size (the recipe's) (default: resize)",
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate: constant, or cosine-decayed over each model's "
        "wall-clock budget (default: constant)",
    )
    parser.add_argument(
        "--size", type=int, default=96, help="training size or crop (96)"
    )
    parser.add_argument("--filters", type=int, default=16, help="base width (16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--dsb-instances", choices=("both", "components", "none"), default="both"
    )
    parser.add_argument(
        "--output", default="runs/peers_dsb", help="folder for peers.csv / peers.json"
    )
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)  # fmt: skip
    sys.path.insert(0, str(ROOT))
    if not pathlib.Path(args.data).is_dir():
        parser.error(f"no DSB data folder at {args.data!r} (give --data)")
    methods = {"both": ("components", "watershed"), "components": ("components",),
               "none": ()}[args.dsb_instances]  # fmt: skip
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        # One model in this process; its rows go to the parent as JSON.
        rows = train_and_score(args.worker, args, methods)
        atomic_write_json(out / f".rows_{args.worker}.json", rows)
        return 0
    how = "resized to" if args.protocol == "resize" else "native-scale crops of"
    print(
        f"DSB 2018 peers: training on images {how} {args.size}x{args.size}, "
        f"{args.minutes:g} min per model, batch {args.batch}, Adam {args.lr:g} "
        f"({args.schedule}), one process per model; {os.cpu_count()} CPU cores.",
        flush=True,
    )
    rows = []
    for name in args.models:
        # Each model in a process of its own: a model's package cannot harm
        # another's run (MONAI imported after keras_unetpp segfaulted), the
        # threads of TensorFlow and PyTorch do not compete, and a crash
        # costs one row only.
        command = [sys.executable, str(pathlib.Path(__file__).resolve()),
                   *(argv if argv is not None else sys.argv[1:]),
                   "--worker", name]  # fmt: skip
        rows.extend(run_worker(command, out / f".rows_{name}.json", name))
        write_results(out, args, rows)  # what has been measured so far
    print()
    print(format_rows(rows))
    print(f"\nWrote {out / 'peers.csv'} and {out / 'peers.json'}.")
    return 0


def train_and_score(name, args, methods):
    """Trains model `name` for the budget and scores it: its table rows."""
    # The model's package is imported before keras_unetpp loads the data:
    # MONAI's import crashes (segfault, MONAI 1.6 / TensorFlow 2.21) in a
    # process where keras_unetpp is imported already.
    crop = args.protocol == "crop"
    try:
        model = build(
            name, None if crop else args.size, args.filters, args.lr, args.seed
        )
    except ImportError as error:
        print(f"{name}: not installed ({error})", flush=True)
        return [{"model": name, "error": f"not installed: {error}"}]
    train_set = _load(args.data, "train")
    val = _load(args.data, "val")
    if crop:
        images = [image.astype(np.float32) for image, _ in train_set]
        masks = [mask[..., None].astype(np.float32) for _, mask in train_set]
        small = [i for i, x in enumerate(images) if min(x.shape[:2]) < args.size]
        if small:
            raise SystemExit(
                f"--protocol crop needs images of at least {args.size} pixels a "
                f"side; train image {small[0]} is {images[small[0]].shape[1]}x"
                f"{images[small[0]].shape[0]}"
            )
    else:
        images, masks = _resize_set(train_set, args.size)
    print(
        f"{name}: {len(train_set)} train / {len(val)} val images (the manifest's "
        "split)",
        flush=True,
    )
    batches = Batches(images, masks, args.batch, args.seed, args.size if crop else None)
    steps, seconds, first = train(
        model, batches, 60.0 * args.minutes,
        args.lr if args.schedule == "cosine" else None,
    )  # fmt: skip
    start = time.perf_counter()
    results = score(model, val, None if crop else args.size, methods)
    print(
        f"{name}: {model.params:,} parameters, first step {first:.0f} s, then "
        f"{steps - 1} steps in {seconds:.0f} s, scored in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return [
        {
            "model": name,
            "level": label,
            "params": int(model.params),
            "steps": steps,
            "epochs": steps * args.batch / len(images),
            "train_s": seconds,
            "first_step_s": first,
            **result,
        }
        for label, result in results.items()
    ]


def run_worker(command, rows_path, name):
    """Runs one model's worker process; its rows, or one row saying it failed.

    Args:
        command: the worker's command line; it writes its rows as JSON to
            `rows_path` and exits 0.
        rows_path: `pathlib.Path` of that JSON (removed once read).
        name: the model's name, for the row of a failed worker.

    Returns:
        list of row dicts.
    """
    rows_path.unlink(missing_ok=True)
    completed = subprocess.run(command, check=False)
    if completed.returncode == 0 and rows_path.is_file():
        rows = json.loads(rows_path.read_text())
        rows_path.unlink()
        return rows
    code = completed.returncode
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    print(f"{name}: the worker failed ({how}); no row for it", flush=True)
    return [{"model": name, "error": f"worker failed: {how}"}]


def atomic_write_json(path, data):
    """Writes JSON to `path` with `keras_unetpp.atomic`: all of it or nothing.

    Imported here, not at the top: a worker imports its model's package
    before keras_unetpp (see `train_and_score`).
    """
    from keras_unetpp import atomic

    atomic.write_text(path, json.dumps(data, indent=2))


def write_results(out, args, rows):
    """`peers.json` (settings and rows) and `peers.csv` in `out`."""
    from keras_unetpp import atomic

    settings = {k: v for k, v in vars(args).items() if k != "worker"}
    atomic_write_json(out / "peers.json", {"args": settings, "rows": rows})
    with atomic.replacing(out / "peers.csv") as temporary:
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "error"])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in [*COLUMNS, "error"]})


if __name__ == "__main__":
    sys.exit(main())
