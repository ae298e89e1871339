"""Named data sources for the command line: folders, DSB 2018, TFDS.

A data source is a small JSON-serialisable dict, so that a run directory can
record where its data came from and `evaluate` can read the same validation
split later without being told again. `data_source()` makes one from the
command-line options and checks it; `source_dataset()` turns one split of it
into a `tf.data` pipeline with `keras_unetpp.data`.

Kinds:

- `"folder"`: `images/` and `masks/` folders matched by file stem. The split
  comes from a manifest CSV's `suggested_split` column (train/val) when there
  is one, otherwise from a seeded `split_pairs`.
- `"dsb2018"`: the 2018 Data Science Bowl per-sample layout
  (`<id>/images/<id>.png`, `<id>/masks/*.png`), split by `split_pairs`.
- `"tfds"`: a TFDS data set, with one TFDS split string per split.
"""

import os
import pathlib

from keras_unetpp import data
from keras_unetpp.errors import InputError

SPLITS = ("train", "val")
MANIFEST = "manifest.csv"


def _existing_dir(path, arg):
    path = pathlib.Path(path).expanduser()
    if not path.is_dir():
        raise InputError(
            f"`{arg}` must be an existing folder. Received: {arg}={str(path)!r}"
        )
    return str(path.resolve())


def _has_split_column(manifest):
    with open(manifest, newline="", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    return "suggested_split" in header


def data_source(
    data_dir=None,
    images_dir=None,
    masks_dir=None,
    manifest=None,
    dsb2018_dir=None,
    tfds_name=None,
    tfds_train_split="train",
    tfds_val_split="validation",
    tfds_image_key="image",
    tfds_mask_key="segmentation_mask",
    tfds_mask_map=None,
    tfds_data_dir=None,
    val_fraction=0.2,
    seed=0,
):
    """Describes where the images and masks are, as a JSON-serialisable dict.

    Exactly one of `data_dir`, `images_dir` (with `masks_dir`),
    `dsb2018_dir` and `tfds_name` must be given.

    Args:
        data_dir: a folder with `images/` and `masks/` (and optionally a
            `manifest.csv` with a `suggested_split` column, which then
            defines the train/val split), like the bundled nuclei data and
            `keras-unetpp synthetic`. Defaults to `None`.
        images_dir: folder of images. Defaults to `None`.
        masks_dir: folder of masks with the same file stems. Defaults to
            `None`.
        manifest: a manifest CSV (`stem`, `suggested_split`) for
            `images_dir`/`masks_dir`. Defaults to `None`.
        dsb2018_dir: a Data Science Bowl 2018 `stage1_train` folder.
            Defaults to `None`.
        tfds_name: a TFDS data set name. Defaults to `None`.
        tfds_train_split: TFDS split of the training data. Defaults to
            `"train"`.
        tfds_val_split: TFDS split of the validation data. Defaults to
            `"validation"`.
        tfds_image_key: image feature name. Defaults to `"image"`.
        tfds_mask_key: mask feature name. Defaults to `"segmentation_mask"`.
        tfds_mask_map: dict from raw mask values to classes, or `None`.
            Defaults to `None`.
        tfds_data_dir: TFDS data directory, or `None`. Defaults to `None`.
        val_fraction: float, validation share when no manifest defines the
            split. Defaults to `0.2`.
        seed: int, seed of that split. Defaults to `0`.

    Returns:
        dict, the source (its `"kind"` is `"folder"`, `"dsb2018"` or
        `"tfds"`).

    Example:

    ```python
    source = data_source(data_dir="../shared/data/dsb2018_nuclei")
    val_ds = source_dataset(source, "val", image_size=(96, 96))
    ```
    """
    given = [
        arg
        for arg, value in (
            ("data_dir", data_dir),
            ("images_dir", images_dir),
            ("dsb2018_dir", dsb2018_dir),
            ("tfds_name", tfds_name),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise InputError(
            "Give exactly one data source: a data folder (images/ + masks/), "
            "an images folder with a masks folder, a DSB 2018 folder or a "
            f"TFDS name. Received: {', '.join(given) or 'none'}"
        )
    if (images_dir is None) != (masks_dir is None):
        raise InputError(
            "An images folder needs a masks folder and vice versa. "
            f"Received: images_dir={images_dir!r}, masks_dir={masks_dir!r}"
        )
    split = {"val_fraction": float(val_fraction), "seed": int(seed)}
    if tfds_name is not None:
        return {
            "kind": "tfds",
            "name": str(tfds_name),
            "splits": {"train": tfds_train_split, "val": tfds_val_split},
            "image_key": tfds_image_key,
            "mask_key": tfds_mask_key,
            "mask_map": tfds_mask_map,
            "data_dir": tfds_data_dir,
        }
    if dsb2018_dir is not None:
        return {"kind": "dsb2018", "root": _existing_dir(dsb2018_dir, "dsb2018_dir"),
                **split}
    if data_dir is not None:
        root = _existing_dir(data_dir, "data_dir")
        images_dir = os.path.join(root, "images")
        masks_dir = os.path.join(root, "masks")
        candidate = os.path.join(root, MANIFEST)
        if manifest is None and os.path.isfile(candidate) and _has_split_column(
            candidate
        ):
            manifest = candidate
    images_dir = _existing_dir(images_dir, "images_dir")
    masks_dir = _existing_dir(masks_dir, "masks_dir")
    if manifest is not None:
        if not os.path.isfile(manifest):
            raise InputError(
                f"The manifest file does not exist. Received: manifest={manifest!r}"
            )
        manifest = str(pathlib.Path(manifest).resolve())
    return {
        "kind": "folder",
        "images": images_dir,
        "masks": masks_dir,
        "manifest": manifest,
        **split,
    }


def _check_split(split):
    if split not in SPLITS:
        raise InputError(f"`split` must be one of {SPLITS}. Received: split={split!r}")


def source_pairs(source, split):
    """The `SamplePair`s of one split of a folder or DSB 2018 source.

    Args:
        source: dict from `data_source()`.
        split: `"train"` or `"val"`.

    Returns:
        list of `keras_unetpp.data.SamplePair`.
    """
    _check_split(split)
    kind = source.get("kind")
    if kind == "folder":
        if source["manifest"]:
            stems = data.manifest_stems(source["manifest"], split)
            return data.folder_pairs(source["images"], source["masks"], stems=stems)
        pairs = data.folder_pairs(source["images"], source["masks"])
    elif kind == "dsb2018":
        pairs = data.dsb2018_pairs(source["root"])
    else:
        raise InputError(
            "Only folder and DSB 2018 sources have file pairs. "
            f"Received: kind={kind!r}"
        )
    train, val = data.split_pairs(pairs, source["val_fraction"], source["seed"])
    return train if split == "train" else val


def source_dataset(source, split, **processing):
    """One split of a data source as a `tf.data` pipeline.

    Args:
        source: dict from `data_source()`.
        split: `"train"` or `"val"`.
        **processing: arguments of `keras_unetpp.data.make_dataset`
            (`image_size`, `channels`, `batch_size`, `training`,
            `augmentation`, `output_names`, ...).

    Returns:
        `(dataset, count)`: the `tf.data.Dataset` of batches and the number
        of samples in the split (`None` if TFDS does not say).
    """
    _check_split(split)
    if source.get("kind") == "tfds":
        dataset = data.tfds_dataset(
            source["name"],
            source["splits"][split],
            image_key=source["image_key"],
            mask_key=source["mask_key"],
            mask_map=_int_keys(source["mask_map"]),
            data_dir=source["data_dir"],
            **processing,
        )
        return dataset, None
    pairs = source_pairs(source, split)
    return data.make_dataset(pairs, **processing), len(pairs)


def _int_keys(mask_map):
    # JSON turns int keys into strings; mask values are ints.
    if mask_map is None:
        return None
    return {int(k): int(v) for k, v in mask_map.items()}
