"""What a data set's pooled IoU is worth at its outlines, before any model.

Usage: python scripts/outline_sensitivity.py --data DIR [--split val]
       [--width 1 2]

Reads the true masks of one split of an image/mask folder (its manifest's
split, as `keras-unetpp train --data` does) and prints, per width, the
pooled foreground IoU of the masks against themselves eroded, dilated and
shifted sideways by that many pixels (`field_metrics.outline_sensitivity`),
and the share of the foreground on the outlines. On DSB 2018 nuclei,
objects of a few hundred pixels, drawing every outline one pixel too
small already scores about what trained models reach: a measure of how
much of the remaining error is a pixel's disagreement with the annotator.
"""

import argparse
import sys

from keras_unetpp import field_metrics, sources
from keras_unetpp.data import decode


def split_masks(data_dir, split):
    """The binary true masks of one split of a folder source, in order."""
    source = sources.data_source(data_dir=data_dir)
    pairs = sources.source_pairs(source, split)
    return [
        decode.mask_plane(decode.read_image(pair.masks[0]), pair.masks[0]) > 0
        for pair in pairs
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="DIR")
    parser.add_argument("--split", default="val", choices=("train", "val", "all"))
    parser.add_argument("--width", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    masks = split_masks(args.data, args.split)
    print(f"{args.data}, split {args.split}: {len(masks)} masks")
    print("| width | eroded | dilated | shifted | edge fraction |")
    print("|---:|---:|---:|---:|---:|")
    for width in args.width:
        band = field_metrics.outline_sensitivity(masks, width)
        print(
            f"| {width} | {band['eroded']:.4f} | {band['dilated']:.4f} "
            f"| {band['shifted']:.4f} | {band['edge_fraction']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
