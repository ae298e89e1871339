"""One row per run: its settings, how long it trained and what it scored.

Usage: python scripts/lever_table.py RUN_DIR [RUN_DIR ...] [--output FILE.md]

Reads each run's `run.json`, `history.csv` and `evaluation/levels.json`
(written by `keras-unetpp evaluate`) and prints a Markdown table: the run's
folder name (the lever), its training mode, size, widths and loss, the
epochs trained, the pooled foreground IoU of every level (L1..Ln and the
accurate mode), the best level's IoU with test-time augmentation and its
DSB 2018 average precision where the table holds them. Used by
scripts/dsb_levers.sh.
"""

import argparse
import json
import pathlib
import sys

from keras_unetpp import evaluation, training
from keras_unetpp.data.augment import DEFAULT_SCALE_RANGE
from keras_unetpp.runs import EVALUATION_DIR, read_run_config


def _settings(config, threshold=0.5):
    data, model = config["data"], config["model"]
    loss = config["training"].get("loss") or "bce-dice"
    if isinstance(loss, dict):
        # The loss's name and the parameters the run set, e.g. "focal (gamma 1)".
        parameters = ", ".join(f"{k} {v:g}" for k, v in loss.items() if k != "name")
        loss = loss.get("name", "?") + (f" ({parameters})" if parameters else "")
    filters = model["filters"]
    width = filters[0] if isinstance(filters, (list, tuple)) else filters
    size = "x".join(str(s) for s in data["image_size"])
    precision = config["training"].get("precision") or "float32"
    scaling = data.get("pixel_scaling", "dtype")
    # Runs from before data.scale_range was recorded zoomed by the default.
    zoom = data.get("scale_range", list(DEFAULT_SCALE_RANGE))
    augment = "augment " + ("on" if data["augment"] else "off")
    if data["augment"] and zoom is None:
        augment += " (no zoom)"
    elif data["augment"] and zoom != list(DEFAULT_SCALE_RANGE):
        augment += f" (zoom {zoom[0]:g}-{zoom[1]:g})"
    if data["augment"] and data.get("mask_interpolation") == "bilinear":
        augment += ", bilinear masks"
    return (
        f"{model['architecture']}, {data['resize_mode']} {size}, f{width}, "
        f"{loss}, {augment}"
        + ("" if precision == "float32" else f", {precision}")
        + ("" if scaling == "dtype" else f", pixels {scaling}")
        + ("" if threshold == 0.5 else f", threshold {threshold:g}")
    )


def lever_row(run):
    """The table entries of one evaluated run, as a dict."""
    table = pathlib.Path(run) / EVALUATION_DIR / "levels.json"
    if not table.is_file():
        raise SystemExit(
            f"lever_table: error: no {table}; run `keras-unetpp evaluate {run}` first"
        )
    rows = evaluation.read_table(table)
    scored = table.parent / "scored.json"
    threshold = 0.5
    if scored.is_file():
        # Older evaluations did not record it: they scored at 0.5.
        threshold = json.loads(scored.read_text()).get("threshold", 0.5)
    by_level = {str(row["level"]): row for row in rows}
    best = max(rows, key=lambda row: row["iou"])
    return {
        "lever": pathlib.Path(run).name,
        "settings": _settings(read_run_config(run), threshold),
        "epochs": len(training.read_history(run)),
        "levels": {level: row["iou"] for level, row in by_level.items()},
        "best": str(best["level"]),
        "best_iou": best["iou"],
        "best_iou_tta": best.get("iou_tta"),
        "best_dsb_ap": best.get("dsb_ap"),
    }


def _number(value):
    return "" if value is None else f"{value:.4f}"


def markdown(entries):
    """The Markdown table of `lever_row` entries."""
    levels = list(entries[0]["levels"]) if entries else []
    head = ["lever", "settings", "epochs", *levels, "best", "best +TTA", "DSB-AP"]
    lines = [
        "| " + " | ".join(head) + " |",
        "| --- | --- | ---: |" + " ---: |" * (len(levels) + 3),
    ]
    for entry in entries:
        cells = [entry["lever"], entry["settings"], str(entry["epochs"])]
        cells += [_number(entry["levels"].get(level)) for level in levels]
        cells += [
            f"{entry['best']} {entry['best_iou']:.4f}",
            _number(entry["best_iou_tta"]),
            _number(entry["best_dsb_ap"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--output", metavar="FILE.md")
    args = parser.parse_args(argv)
    text = markdown([lever_row(run) for run in args.runs])
    print(text, end="")
    if args.output:
        pathlib.Path(args.output).write_text(text)
        print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
