"""Merges the evaluation tables of several runs into one table and one plot.

Usage: python scripts/compare_runs.py RUN_DIR [RUN_DIR ...] --output DIR

Reads RUN_DIR/evaluation/levels.json (written by `keras-unetpp evaluate`) of
each run and writes DIR/comparison.csv, DIR/comparison.json,
DIR/comparison.png (IoU against ms per image, one line per model) and
DIR/comparison.md (a Markdown table for the README), and prints the table.
"""

import argparse
import pathlib
import sys

from keras_unetpp import evaluation
from keras_unetpp.runs import EVALUATION_DIR, read_run_config


def markdown(rows, configs):
    lines = [
        "| model | level | IoU | Dice | IoU per image | params | GFLOPs | ms/image |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['level']} | {row['iou']:.4f} | "
            f"{row['dice']:.4f} | {row['iou_per_image']:.4f} | {row['params']:,} | "
            f"{row['flops'] / 1e9:.3f} | {row['ms_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--output", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    rows, configs = [], []
    for run in args.runs:
        table = pathlib.Path(run) / EVALUATION_DIR / "levels.json"
        if not table.is_file():
            parser.exit(
                2,
                f"compare_runs: error: no {table}; run "
                f"`keras-unetpp evaluate {run}` first\n",
            )
        rows += evaluation.read_table(table)
        configs.append(read_run_config(run))
    out = pathlib.Path(args.output)
    evaluation.write_table(rows, out, stem="comparison")
    evaluation.plot_tradeoff(
        rows, out / "comparison.png", title="UNet++ (deep supervision) vs U-Net"
    )
    (out / "comparison.md").write_text(markdown(rows, configs))
    print(evaluation.format_table(rows))
    print(f"Wrote {out}/comparison.csv, .json, .png and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
