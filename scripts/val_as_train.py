"""A folder whose training split is another folder's validation split.

Usage: python scripts/val_as_train.py --data DIR --output DIR

A diagnostic, not a protocol: training on the images a model is scored on
measures how closely the network can fit those annotations at all in a
given budget, the ceiling of any honest run on the same split. The output
folder holds symbolic links (nothing is copied): every val image and mask
of `--data`'s manifest, once under its own name in the train split and
once as `val_copy_<stem>` in the val split, and a `manifest.csv` with every
other column kept. `keras-unetpp train --data OUTPUT` then trains on the
val images and scores the same images as its validation data.
"""

import argparse
import csv
import pathlib
import sys

SPLIT_COLUMN = "suggested_split"
COPY_PREFIX = "val_copy_"


def _one_file(folder, stem):
    found = sorted(p for p in folder.glob(f"{stem}.*") if p.is_file())
    if len(found) != 1:
        raise SystemExit(
            f"error: expected one file named {stem}.* in {folder}, found "
            f"{len(found)}: {[p.name for p in found]}"
        )
    return found[0].resolve()


def val_as_train(data_dir, output_dir):
    """Writes the linked folder; returns the number of val images linked.

    Args:
        data_dir: a folder with `images/`, `masks/` and a `manifest.csv`
            with `stem` and `suggested_split` columns.
        output_dir: a folder to create; it must not exist yet.

    Returns:
        int, the number of val images, each now in both splits.
    """
    data_dir, output_dir = pathlib.Path(data_dir), pathlib.Path(output_dir)
    manifest = data_dir / "manifest.csv"
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    missing = {"stem", SPLIT_COLUMN} - set(fields)
    if missing:
        raise SystemExit(f"error: {manifest} lacks the columns {sorted(missing)}")
    val = [row for row in rows if row[SPLIT_COLUMN] == "val"]
    if not val:
        raise SystemExit(f"error: {manifest} has no row with {SPLIT_COLUMN}=val")
    sources = [
        (
            row,
            _one_file(data_dir / "images", row["stem"]),
            _one_file(data_dir / "masks", row["stem"]),
        )
        for row in val
    ]
    if output_dir.exists():
        raise SystemExit(f"error: {output_dir} exists; give a new folder")
    for sub in ("images", "masks"):
        (output_dir / sub).mkdir(parents=True)
    out_rows = []
    for row, image, mask in sources:
        for stem, split in ((row["stem"], "train"), (COPY_PREFIX + row["stem"], "val")):
            (output_dir / "images" / f"{stem}{image.suffix}").symlink_to(image)
            (output_dir / "masks" / f"{stem}{mask.suffix}").symlink_to(mask)
            out_rows.append({**row, "stem": stem, SPLIT_COLUMN: split})
    with (output_dir / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out_rows)
    return len(val)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="DIR")
    parser.add_argument("--output", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    count = val_as_train(args.data, args.output)
    print(f"{args.output}: {count} val images of {args.data}, in both splits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
