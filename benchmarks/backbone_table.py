"""A table of UNet++ on every backbone: parameters, FLOPs, taps, pruned sizes.

Builds a deep-supervision UNet++ of depth 4 (the decoder at the paper's
widths 32, 64, 128, 256, 512; 3 input channels, random weights) on every
backbone of `keras_unetpp.backbones.BACKBONES`, and on the built-in encoder
for comparison, and prints one markdown row per model:

- the parameters of the whole model and of the backbone's trunk
  (`keras_unetpp.description.encoder_layers`; a depth-4 model keeps only the
  trunk layers up to the stride-16 tap);
- the FLOPs of one 256x256 image through the full model
  (`keras_unetpp.count_flops`; 2 per multiply-add);
- the parameters of the pruned sub-models L1..L4 (`keras_unetpp.prune`);
- the trunk layers tapped as X(0,0)..X(4,0) (`-`: UNet++'s own unit H).

Nothing is trained. Building the 30 trunks takes a few minutes on a CPU.

    python benchmarks/backbone_table.py                     # prints the table
    python benchmarks/backbone_table.py --output table.md   # also writes it
    python benchmarks/backbone_table.py --backbones vgg16 resnet50
"""

import argparse
import gc
import time

import keras

import keras_unetpp as ku
from keras_unetpp import backbones
from keras_unetpp.description import describe, encoder_layers

DEPTH = 4
SIZE = 256


def _params(layers):
    return sum(layer.count_params() for layer in layers)


def table_row(name, depth=DEPTH, size=SIZE):
    """Builds UNet++ on backbone `name` (`None`: built-in) and measures it.

    Returns:
        dict with `backbone`, `params`, `encoder_params`, `gflops`,
        `levels` (parameters of L1..L`depth`), `taps` (layer name per
        level or `None`) and `seconds` (the time to build and measure).
    """
    start = time.perf_counter()
    keras.backend.clear_session()
    model = ku.build(
        depth,
        (None, None, 3),
        deep_supervision=True,
        backbone=name,
    )
    taps = {}
    if name is not None:
        entry = backbones.get_backbone(name)
        taps = {
            level: entry.taps.get(2**level)
            for level in range(depth + 1)
            if 2**level in entry.taps
        }
    row = {
        "backbone": name or "built-in",
        "encoder": describe(model).encoder,
        "params": model.count_params(),
        "encoder_params": _params(encoder_layers(model)),
        "gflops": ku.count_flops(model, size, size) / 1e9,
        "levels": [
            ku.prune(model, level).count_params() for level in range(1, depth + 1)
        ],
        "taps": [taps.get(level) for level in range(depth + 1)],
    }
    row["seconds"] = time.perf_counter() - start
    del model
    gc.collect()
    return row


def markdown(rows, depth=DEPTH, size=SIZE):
    """The rows as a markdown table (millions of parameters, GFLOPs)."""
    levels = " | ".join(f"L{level} params" for level in range(1, depth + 1))
    taps = " | ".join(f"X({level},0)" for level in range(depth + 1))
    lines = [
        f"| backbone | params | trunk params | GFLOPs {size}x{size} | {levels} | "
        f"{taps} |",
        "|" + "---|" * (4 + 2 * depth + 1),
    ]
    for row in rows:
        cells = [
            f"`{row['backbone']}`",
            f"{row['params'] / 1e6:.2f}M",
            f"{row['encoder_params'] / 1e6:.2f}M" if row["encoder_params"] else "-",
            f"{row['gflops']:.1f}",
            *(f"{count / 1e6:.3f}M" for count in row["levels"]),
            *(f"`{tap}`" if tap else "-" for tap in row["taps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=None,
        help="backbone names (default: the built-in encoder and every backbone)",
    )
    parser.add_argument("--output", help="also write the markdown table here")
    args = parser.parse_args(argv)
    names = args.backbones or [None, *backbones.BACKBONES]
    rows = []
    for name in names:
        row = table_row(name)
        rows.append(row)
        print(
            f"{row['backbone']}: {row['params']:,} parameters, "
            f"{row['gflops']:.1f} GFLOPs ({row['seconds']:.0f} s)",
            flush=True,
        )
    text = markdown(rows)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
