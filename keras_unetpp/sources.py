"""Named data sources for the command line: folders, DSB 2018, TFDS, and splits.

A data source is a small JSON-serialisable dict, so that a run directory can
record where its data came from and how it was split, and `evaluate` can
read the same split later without being told again. `data_source()` makes
one from the command-line options and checks it; `source_pairs()` lists the
files of one split, `source_dataset()` turns one split into a `tf.data`
pipeline with `keras_unetpp.data`, and `source_samples()` reads one split at
each image's own size (for evaluation at native resolution).

Kinds:

- `"folder"`: `images/` and `masks/` folders matched by file stem.
- `"dsb2018"`: the 2018 Data Science Bowl per-sample layout
  (`<id>/images/<id>.png`, `<id>/masks/*.png`).
- `"tfds"`: a TFDS data set, with one TFDS split string per split.

The split of a folder or DSB source (`source["split"]`) is one of:

- `{"method": "manifest", "manifest", "column", "map"}`: a manifest CSV's
  column gives each stem its split (`train`, `val` or `test`; `map`
  translates other values, and may send a value to `ignore`).
- `{"method": "random", "val_fraction", "seed"}`: a seeded `split_pairs`,
  only when the user gave no split at all.
- `{"method": "all_train"}`: every image is training data (the validation
  images come from `source["val_source"]`, or there are none).
- `{"method": "unsplit"}`: a folder to evaluate as a whole (split `"all"`).

Splits are never invented when the user gave one: a manifest without the
split column, or with values that are neither split names nor mapped, is an
`InputError` that names what it found and how to choose.
"""

import csv
import math
import numbers
import os
import pathlib

from keras_unetpp import data
from keras_unetpp.errors import InputError

SPLITS = ("train", "val", "test")
# What `evaluate` can score: a split, or every image of a source.
EVALUATION_SPLITS = (*SPLITS, "all")
# What a manifest value can be mapped to.
MAP_TARGETS = (*SPLITS, "ignore")
MANIFEST = "manifest.csv"
SPLIT_COLUMN = "suggested_split"
STEM_COLUMN = "stem"
DEFAULT_VAL_FRACTION = 0.2
SPLITS_CSV = "splits.csv"


def _existing_dir(path, arg):
    path = pathlib.Path(path).expanduser()
    if not path.is_dir():
        raise InputError(
            f"`{arg}` must be an existing folder. Received: {arg}={str(path)!r}"
        )
    return str(path.resolve())


def parse_split_map(items):
    """Parses `["training=train", "test=val"]` into `{"training": "train", ...}`.

    Args:
        items: list of `VALUE=SPLIT` strings (SPLIT one of `train`, `val`,
            `test`, `ignore`), or a dict, or `None`.

    Returns:
        dict or `None`.
    """
    if items is None or isinstance(items, dict):
        return items
    mapping = {}
    for item in items:
        value, sep, split = str(item).partition("=")
        if not sep or not value:
            raise InputError(
                "A split map entry is VALUE=SPLIT, e.g. training=train. "
                f"Received: {item!r}"
            )
        if split not in MAP_TARGETS:
            raise InputError(
                f"A split map sends a manifest value to one of {MAP_TARGETS}. "
                f"Received: {item!r}"
            )
        if value in mapping and mapping[value] != split:
            raise InputError(f"The split map maps {value!r} twice. Received: {items!r}")
        mapping[value] = split
    if not mapping:
        raise InputError(f"The split map is empty. Received: {items!r}")
    return mapping


def _manifest_header(path):
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _how_to_choose(path):
    folder = os.path.dirname(path)
    return (
        "Name the split column with --split-column NAME (split_column=) and, "
        "if its values are not train/val/test, map them with --split-map "
        "VALUE=SPLIT ... (split_map=), e.g. --split-map training=train "
        "test=test; SPLIT is train, val, test or ignore. To split at random "
        "instead, give the folders without the manifest: --images "
        f"{folder}/images --masks {folder}/masks."
    )


def manifest_assignment(definition):
    """Each stem's split under a manifest split definition, in file order.

    Args:
        definition: `{"manifest", "column", "map"}` (a source's `split`).

    Returns:
        dict stem -> split (`train`, `val`, `test` or `ignore`).

    Raises:
        InputError: the manifest has no such column, or holds values that
            are neither split names nor mapped; the message names them and
            says how to choose.
    """
    path = definition["manifest"]
    column = definition["column"]
    mapping = definition.get("map")
    if not os.path.isfile(path):
        raise InputError(f"The manifest file does not exist. Received: {path!r}")
    header = _manifest_header(path)
    missing = [c for c in (STEM_COLUMN, column) if c not in header]
    if missing:
        raise InputError(
            f"The manifest {path!r} has no column {missing[0]!r}, so it does "
            f"not say which split each image belongs to; its columns are "
            f"{header}. {_how_to_choose(path)}"
        )
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    values = list(dict.fromkeys(row[column] for row in rows))
    if mapping is None:
        unknown = [v for v in values if v not in SPLITS]
        if unknown:
            raise InputError(
                f"The manifest {path!r} has values {unknown} in its split "
                f"column {column!r}, which are not {list(SPLITS)}; map them, "
                "e.g. --split-map "
                + " ".join(f"{v}=..." for v in unknown)
                + f" (SPLIT is one of {list(MAP_TARGETS)})."
            )
        mapping = {v: v for v in values}
    else:
        unmapped = [v for v in values if v not in mapping]
        if unmapped:
            raise InputError(
                f"The manifest {path!r} has values {unmapped} in its split "
                f"column {column!r} that the split map does not map (it maps "
                f"{sorted(mapping)}); map every value, to "
                f"{list(MAP_TARGETS)}."
            )
        unused = [v for v in mapping if v not in values]
        if unused:
            raise InputError(
                f"The split map maps {unused}, which the column {column!r} of "
                f"{path!r} does not hold (it holds {values})."
            )
    assignment = {}
    for row in rows:
        stem = row[STEM_COLUMN]
        split = mapping[row[column]]
        if assignment.get(stem, split) != split:
            raise InputError(f"The manifest {path!r} puts {stem!r} in two splits.")
        assignment[stem] = split
    return assignment


def _counts(assignment):
    counts = {}
    for split in assignment.values():
        counts[split] = counts.get(split, 0) + 1
    return counts


def count_text(counts):
    return ", ".join(f"{split}: {n}" for split, n in sorted(counts.items()))


def _folder_val_source(val_data_dir, val_images_dir, val_masks_dir, mask_suffix):
    if val_data_dir is not None and val_images_dir is not None:
        raise InputError(
            "Give the validation images as one folder (val_data_dir, "
            "--val-data) or as two (val_images_dir/val_masks_dir, "
            "--val-images/--val-masks), not both."
        )
    if val_data_dir is not None:
        root = _existing_dir(val_data_dir, "val_data_dir")
        val_images_dir = os.path.join(root, "images")
        val_masks_dir = os.path.join(root, "masks")
    if (val_images_dir is None) != (val_masks_dir is None):
        raise InputError(
            "A validation images folder needs a validation masks folder and "
            f"vice versa. Received: val_images_dir={val_images_dir!r}, "
            f"val_masks_dir={val_masks_dir!r}"
        )
    if val_images_dir is None:
        return None
    return {
        "kind": "folder",
        "images": _existing_dir(val_images_dir, "val_images_dir"),
        "masks": _existing_dir(val_masks_dir, "val_masks_dir"),
        "split": {"method": "unsplit"},
        **({"mask_suffix": mask_suffix} if mask_suffix else {}),
    }


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
    val_fraction=None,
    seed=0,
    split_column=None,
    split_map=None,
    val_data_dir=None,
    val_images_dir=None,
    val_masks_dir=None,
    no_val=False,
    required_splits=None,
    mask_threshold=None,
    invert_mask=False,
    mask_map=None,
    mask_suffix=None,
):
    """Describes where the images and masks are and how they are split.

    Exactly one of `data_dir`, `images_dir` (with `masks_dir`),
    `dsb2018_dir` and `tfds_name` must be given. The split is, in order:

    1. a manifest (`manifest`, or `data_dir/manifest.csv` when it exists):
       its `split_column` gives each stem's split. A manifest without that
       column, or with values other than `train`/`val`/`test` that
       `split_map` does not map, is an `InputError`: the data never get a
       split that the user did not choose.
    2. no manifest and a validation folder (`val_data_dir` or
       `val_images_dir`/`val_masks_dir`) or `no_val`: every image of the
       source is training data.
    3. otherwise, a seeded random split of `val_fraction` (default 0.2).

    Args:
        data_dir: a folder with `images/` and `masks/` (and optionally a
            `manifest.csv`, which then defines the split), like the bundled
            nuclei data and `keras-unetpp synthetic`. Defaults to `None`.
        images_dir: folder of images. Defaults to `None`.
        masks_dir: folder of masks with the same file stems. Defaults to
            `None`.
        manifest: a manifest CSV (a `stem` column and a split column) for
            `images_dir`/`masks_dir`, or instead of `data_dir/manifest.csv`.
            Defaults to `None`.
        dsb2018_dir: a Data Science Bowl 2018 `stage1_train` folder.
            Defaults to `None`.
        tfds_name: a TFDS data set name. Defaults to `None`.
        tfds_train_split: TFDS split of the training data. Defaults to
            `"train"`.
        tfds_val_split: TFDS split of the validation data. Defaults to
            `"validation"`.
        tfds_image_key: image feature name. Defaults to `"image"`.
        tfds_mask_key: mask feature name. Defaults to `"segmentation_mask"`.
        tfds_mask_map: the older name of `mask_map`, for TFDS sources.
            Defaults to `None`.
        tfds_data_dir: TFDS data directory, or `None`. Defaults to `None`.
        val_fraction: float, validation share of a random split; only when
            nothing else defines the split. Defaults to `None` (0.2).
        seed: int, seed of a random split. Defaults to `0`.
        split_column: str, the manifest column that holds the split.
            Defaults to `None` (`"suggested_split"`).
        split_map: dict (or `["VALUE=SPLIT", ...]`) from manifest values to
            `train`, `val`, `test` or `ignore`. Defaults to `None` (values
            must be split names).
        val_data_dir: a folder with `images/` and `masks/` to validate on.
            Defaults to `None`.
        val_images_dir: folder of validation images. Defaults to `None`.
        val_masks_dir: folder of validation masks. Defaults to `None`.
        no_val: bool, train without validation. Defaults to `False`.
        required_splits: splits that must hold images; `None` for
            training (`train`, and `val` unless there is a validation folder
            or `no_val`). `()` accepts a folder whose manifest has no split
            (to evaluate every image, split `"all"`). Defaults to `None`.
        mask_threshold: number or `None`: binary masks whose foreground is
            the values above it (soft or JPEG masks, e.g. `127`). Defaults
            to `None` (a binary mask holds 0 and one other value).
        invert_mask: bool, binary masks whose background is the nonzero (or
            above-threshold) value. Defaults to `False`.
        mask_map: dict from raw mask values to classes (or to 0/1 for a
            binary mask), or `None`. Defaults to `None`.
        mask_suffix: str, text after the image's stem in the names of the
            masks of a folder source (and of its validation folder), e.g.
            `"_mask"` for `abc.png` / `abc_mask.png`. Defaults to `None`
            (the same stem).

    The three mask rules are kept in the source, so that training,
    `evaluate` and `predict --split` of a run read its masks alike
    (`mask_rules`); they go to every split, a validation folder included.

    Returns:
        dict, the source: `kind` (`"folder"`, `"dsb2018"` or `"tfds"`), the
        paths, `split` (the definition above), `val_source` (a folder
        source or `None`) and `validation` (bool).

    Example:

    ```python
    source = data_source(data_dir="../shared/data/dsb2018_nuclei")
    val_ds, count = source_dataset(source, "val", image_size=(96, 96))
    retina = data_source(data_dir="retina", split_column="original_split",
                         split_map={"training": "train", "test": "test"},
                         no_val=True)
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
    split_map = parse_split_map(split_map)
    rules = _mask_rule_entries(mask_threshold, invert_mask, mask_map, tfds_mask_map)
    if mask_suffix is not None and not isinstance(mask_suffix, str):
        raise InputError(
            f"`mask_suffix` must be a str. Received: mask_suffix={mask_suffix!r}"
        )
    mask_suffix = mask_suffix or None
    if mask_suffix and (dsb2018_dir is not None or tfds_name is not None):
        raise InputError(
            "`mask_suffix` (--mask-suffix) names the masks of an images/masks "
            "folder; a DSB 2018 or TFDS source has its own layout. Received: "
            f"mask_suffix={mask_suffix!r}"
        )
    val_source = _folder_val_source(
        val_data_dir, val_images_dir, val_masks_dir, mask_suffix
    )
    no_val = bool(no_val)
    if no_val and val_source is not None:
        raise InputError(
            "Train without validation (no_val, --no-val) or with a validation "
            "folder (--val-data), not both."
        )
    training = required_splits is None
    if training:
        required_splits = ("train",) + (
            () if no_val or val_source is not None else ("val",)
        )
    for split in required_splits:
        if split not in EVALUATION_SPLITS:
            raise InputError(
                f"`split` must be one of {EVALUATION_SPLITS}. Received: split={split!r}"
            )
    # Every source below ends with these entries.
    validation = {"val_source": val_source, "validation": not no_val, **rules}
    if tfds_name is not None:
        if split_column is not None or split_map is not None or manifest is not None:
            raise InputError(
                "A TFDS source is split by TFDS split names (--tfds-train-split, "
                "--tfds-val-split), not by a manifest."
            )
        if val_fraction is not None:
            raise InputError(
                "`val_fraction` (--val-fraction) is for a random split of a "
                "folder; a TFDS source has named splits. Received: "
                f"val_fraction={val_fraction!r}"
            )
        return {
            "kind": "tfds",
            "name": str(tfds_name),
            "splits": {
                "train": tfds_train_split,
                "val": (None if no_val or val_source is not None else tfds_val_split),
            },
            "image_key": tfds_image_key,
            "mask_key": tfds_mask_key,
            "mask_map": rules.get("mask_map"),
            "data_dir": tfds_data_dir,
            **validation,
        }
    if dsb2018_dir is not None:
        if manifest is not None:
            raise InputError(
                "A DSB 2018 source has no manifest; it is split at random."
            )
        source = {"kind": "dsb2018", "root": _existing_dir(dsb2018_dir, "dsb2018_dir")}
    else:
        if data_dir is not None:
            root = _existing_dir(data_dir, "data_dir")
            images_dir = os.path.join(root, "images")
            masks_dir = os.path.join(root, "masks")
            candidate = os.path.join(root, MANIFEST)
            if manifest is None and os.path.isfile(candidate):
                manifest = candidate
        source = {
            "kind": "folder",
            "images": _existing_dir(images_dir, "images_dir"),
            "masks": _existing_dir(masks_dir, "masks_dir"),
            **({"mask_suffix": mask_suffix} if mask_suffix else {}),
        }
    if manifest is not None:
        if not os.path.isfile(manifest):
            raise InputError(
                f"The manifest file does not exist. Received: manifest={manifest!r}"
            )
        manifest = str(pathlib.Path(manifest).resolve())
        column = split_column or SPLIT_COLUMN
        if (
            not training
            and set(required_splits) <= {"all"}
            and column not in _manifest_header(manifest)
        ):
            # Scoring every image of a folder needs no split.
            source["split"] = {"method": "unsplit"}
            return {**source, **validation}
        definition = {
            "method": "manifest",
            "manifest": manifest,
            "column": column,
            "map": split_map,
        }
        if val_fraction is not None:
            raise InputError(
                f"The manifest {manifest!r} defines the split (column "
                f"{column!r}); `val_fraction` (--val-fraction) is for a random "
                f"split when there is no manifest. Received: val_fraction="
                f"{val_fraction!r}"
            )
        counts = _counts(manifest_assignment(definition))
        if val_source is not None and counts.get("val"):
            raise InputError(
                f"The manifest {manifest!r} already puts {counts['val']} images "
                "in val, and a validation folder was given too; map the "
                "manifest's val value to train or ignore (--split-map "
                "val=train) or leave out the validation folder."
            )
        for split in required_splits:
            if split != "all" and not counts.get(split):
                hint = (
                    "; map one of its values to val (--split-map), give a "
                    "validation folder (--val-data DIR or --val-images/"
                    "--val-masks), or train without validation (--no-val)"
                    if training and split == "val"
                    else ""
                )
                raise InputError(
                    f"The split of {manifest!r} (column {column!r}) has no "
                    f"{split} images; it has {count_text(counts)}{hint}."
                )
        source["split"] = definition
        return {**source, **validation}
    if split_column is not None or split_map is not None:
        raise InputError(
            "`split_column`/`split_map` (--split-column/--split-map) choose the "
            "split column of a manifest, and there is none: put a manifest.csv "
            "in the data folder or pass --manifest CSV."
        )
    if not training:
        # Evaluating another folder without a manifest: only all of it.
        for split in required_splits:
            if split != "all":
                raise InputError(
                    f"There is no manifest, so the folder has no {split!r} "
                    "split; score all of it (split 'all') or give --manifest."
                )
        source["split"] = {"method": "unsplit"}
    elif no_val or val_source is not None:
        if val_fraction is not None:
            raise InputError(
                "`val_fraction` (--val-fraction) makes a random validation "
                "split; it does not go with a validation folder or --no-val. "
                f"Received: val_fraction={val_fraction!r}"
            )
        source["split"] = {"method": "all_train"}
    else:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0.0 < fraction < 1.0
        ):
            raise InputError(
                "`val_fraction` must be a float between 0 and 1 (exclusive). "
                f"Received: val_fraction={val_fraction!r}"
            )
        source["split"] = {
            "method": "random",
            "val_fraction": float(fraction),
            "seed": int(seed),
        }
    return {**source, **validation}


def _mask_rule_entries(mask_threshold, invert_mask, mask_map, tfds_mask_map):
    """The source entries of the mask rules that differ from the defaults.

    Only rules that are set are recorded, so that the sources of runs made
    before the rules existed compare equal on resume.
    """
    if tfds_mask_map is not None:
        if mask_map is not None:
            raise InputError(
                "Give `mask_map` or its older name `tfds_mask_map`, not both. "
                f"Received: mask_map={mask_map!r}, tfds_mask_map={tfds_mask_map!r}"
            )
        mask_map = tfds_mask_map
    if mask_threshold is not None and (
        isinstance(mask_threshold, bool)
        or not isinstance(mask_threshold, numbers.Real)
        or not math.isfinite(mask_threshold)
    ):
        raise InputError(
            "`mask_threshold` (--mask-threshold) must be a number: foreground "
            f"is the mask values above it. Received: mask_threshold={mask_threshold!r}"
        )
    if mask_threshold is not None and mask_map is not None:
        raise InputError(
            "Give `mask_threshold` (--mask-threshold) or `mask_map` "
            "(--mask-map), not both. Received: "
            f"mask_threshold={mask_threshold!r}, mask_map={mask_map!r}"
        )
    if not isinstance(invert_mask, bool):
        raise InputError(
            "`invert_mask` must be True or False. "
            f"Received: invert_mask={invert_mask!r}"
        )
    entries = {}
    if mask_threshold is not None:
        entries["mask_threshold"] = float(mask_threshold)
    if invert_mask:
        entries["invert_mask"] = True
    if mask_map is not None:
        entries["mask_map"] = mask_map
    return entries


def mask_rules(source):
    """How a source's masks become labels, as `make_dataset` arguments.

    Args:
        source: dict from `data_source()` (or a run's recorded source).

    Returns:
        dict: `mask_threshold` (`None` or a float), `invert_mask` (bool),
        `mask_map` (`None` or a dict of ints).

    Example:

    ```python
    source = data_source(data_dir="cells", mask_threshold=127)
    dataset = keras_unetpp.data.make_dataset(
        source_pairs(source, "train"), image_size=(96, 96), **mask_rules(source)
    )
    ```
    """
    return {
        "mask_threshold": source.get("mask_threshold"),
        "invert_mask": bool(source.get("invert_mask", False)),
        "mask_map": _int_keys(source.get("mask_map")),
    }


def split_definition(source):
    """The split definition of a folder or DSB source (old run.json too)."""
    if "split" in source:
        return source["split"]
    # Runs recorded before splits were explicit.
    if source.get("manifest"):
        return {
            "method": "manifest",
            "manifest": source["manifest"],
            "column": SPLIT_COLUMN,
            "map": None,
        }
    return {
        "method": "random",
        "val_fraction": source.get("val_fraction", 0.2),
        "seed": source.get("seed", 0),
    }


def _check_split(split):
    if split not in EVALUATION_SPLITS:
        raise InputError(
            f"`split` must be one of {EVALUATION_SPLITS}. Received: split={split!r}"
        )


def _all_pairs(source):
    kind = source.get("kind")
    if kind == "folder":
        return _folder_pairs(source)
    if kind == "dsb2018":
        return data.dsb2018_pairs(source["root"])
    raise InputError(
        f"Only folder and DSB 2018 sources have file pairs. Received: kind={kind!r}"
    )


def _no_split(source, split, has):
    raise InputError(
        f"{describe_source(source)} has no {split} split ({describe_split(source)}"
        f"; it has {', '.join(has)}). Received: split={split!r}"
    )


def _folder_pairs(source, stems=None):
    """`data.folder_pairs` of a folder source, with its mask suffix."""
    return data.folder_pairs(
        source["images"],
        source["masks"],
        stems=stems,
        mask_suffix=source.get("mask_suffix") or "",
    )


def source_pairs(source, split):
    """The `SamplePair`s of one split of a folder or DSB 2018 source.

    Args:
        source: dict from `data_source()`.
        split: `"train"`, `"val"`, `"test"` or `"all"` (every image).

    Returns:
        list of `keras_unetpp.data.SamplePair`.
    """
    _check_split(split)
    if split == "val" and source.get("val_source"):
        return source_pairs(source["val_source"], "all")
    pairs = _all_pairs(source)
    if split == "all":
        return pairs
    definition = split_definition(source)
    method = definition["method"]
    if method == "manifest":
        assignment = manifest_assignment(definition)
        stems = [stem for stem, s in assignment.items() if s == split]
        if not stems:
            _no_split(source, split, sorted(set(assignment.values()) - {"ignore"}))
        return _folder_pairs(source, stems)
    if method == "random":
        if split == "test":
            _no_split(source, split, ["train", "val"])
        train, val = data.split_pairs(
            pairs, definition["val_fraction"], definition["seed"]
        )
        return train if split == "train" else val
    if method == "all_train":
        if split != "train":
            _no_split(source, split, ["train"])
        return pairs
    _no_split(source, split, ["all"])


def has_split(source, split):
    """Whether `source_pairs(source, split)` (or TFDS) has that split."""
    if split == "all" or (split == "val" and source.get("val_source")):
        return True
    if source.get("kind") == "tfds":
        return source["splits"].get(split) is not None
    definition = split_definition(source)
    method = definition["method"]
    if method == "manifest":
        return split in manifest_assignment(definition).values()
    if method == "random":
        return split in ("train", "val")
    return method == "all_train" and split == "train"


def split_table(source):
    """`(stem, split, image)` for every image of a folder or DSB source.

    Images the manifest does not list are `"unlisted"`, images it maps to
    `ignore` are `"ignored"`; the images of a validation folder are `"val"`.
    `None` for TFDS sources (no files).
    """
    if source.get("kind") == "tfds":
        rows = []
    else:
        pairs = _all_pairs(source)
        definition = split_definition(source)
        method = definition["method"]
        if method == "manifest":
            assignment = manifest_assignment(definition)
            # Every listed stem must have its files.
            _folder_pairs(source, list(assignment))
            labels = {None: "unlisted", "ignore": "ignored"}
            rows = []
            for p in pairs:
                split = assignment.get(p.stem)
                rows.append((p.stem, labels.get(split, split), p.image))
        elif method == "random":
            train, val = data.split_pairs(
                pairs, definition["val_fraction"], definition["seed"]
            )
            val_stems = {p.stem for p in val}
            rows = [
                (p.stem, "val" if p.stem in val_stems else "train", p.image)
                for p in pairs
            ]
        elif method == "all_train":
            rows = [(p.stem, "train", p.image) for p in pairs]
        else:
            rows = [(p.stem, "all", p.image) for p in pairs]
    if source.get("val_source"):
        rows += [(p.stem, "val", p.image) for p in _all_pairs(source["val_source"])]
    elif source.get("kind") == "tfds":
        return None
    return rows


def write_splits(source, path):
    """Writes `split_table(source)` as a CSV (`stem,split,image`).

    Returns:
        `(path, counts)` with counts a dict split -> images, or `(None,
        None)` for a TFDS source without files.
    """
    rows = split_table(source)
    if rows is None:
        return None, None
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["stem", "split", "image"])
        writer.writerows(rows)
    counts = {}
    for _, split, _ in rows:
        counts[split] = counts.get(split, 0) + 1
    return path, counts


def describe_source(source):
    """Where a source's images are, in words: `"the folder /data/cells"`."""
    kind = source.get("kind")
    if kind == "tfds":
        return f"the TFDS data set {source['name']!r}"
    if kind == "dsb2018":
        return f"the DSB 2018 folder {source['root']}"
    images = source["images"]
    parent = os.path.dirname(images)
    if os.path.basename(images) == "images" and source["masks"] == os.path.join(
        parent, "masks"
    ):
        return f"the folder {parent}"
    return f"the folders {images} and {source['masks']}"


def describe_split(source):
    """How a source is split, in words, e.g. `"random 80/20 split (seed 0)"`."""
    if source.get("kind") == "tfds":
        splits = source["splits"]
        text = f"TFDS splits train={splits['train']!r}"
        if splits.get("val"):
            text += f", val={splits['val']!r}"
    else:
        definition = split_definition(source)
        method = definition["method"]
        if method == "manifest":
            text = f"split by {definition['manifest']}, column {definition['column']!r}"
            if definition.get("map"):
                text += (
                    " ("
                    + ", ".join(f"{k}->{v}" for k, v in definition["map"].items())
                    + ")"
                )
        elif method == "random":
            val = round(100 * definition["val_fraction"])
            text = f"random {100 - val}/{val} split (seed {definition['seed']})"
        elif method == "all_train":
            text = "no split: every image is training data"
        else:
            text = "not split"
    if source.get("val_source"):
        text += f"; validation: {describe_source(source['val_source'])}"
    elif source.get("validation") is False:
        text += "; no validation (--no-val)"
    return text


def source_dataset(source, split, **processing):
    """One split of a data source as a `tf.data` pipeline.

    Args:
        source: dict from `data_source()`.
        split: `"train"`, `"val"`, `"test"` or `"all"`.
        **processing: arguments of `keras_unetpp.data.make_dataset`
            (`image_size`, `channels`, `batch_size`, `training`,
            `augmentation`, `output_names`, ...).

    Returns:
        `(dataset, count)`: the `tf.data.Dataset` of batches and the number
        of samples in the split (`None` if TFDS does not say).
    """
    _check_split(split)
    processing = {**mask_rules(source), **processing}
    if source.get("kind") == "tfds" and not (
        split == "val" and source.get("val_source")
    ):
        dataset = data.tfds_dataset(
            source["name"],
            _tfds_split(source, split),
            image_key=source["image_key"],
            mask_key=source["mask_key"],
            data_dir=source["data_dir"],
            **processing,
        )
        return dataset, None
    pairs = source_pairs(source, split)
    return data.make_dataset(pairs, **processing), len(pairs)


def _tfds_split(source, split):
    name = source["splits"].get(split)
    if name is None:
        raise InputError(
            f"{describe_source(source)} has no {split} split here "
            f"({describe_split(source)}). Received: split={split!r}"
        )
    return name


def source_samples(source, split, channels=1, num_classes=1, pixel_scaling="dtype"):
    """One split read image by image at each image's own size, as training reads it.

    Files are decoded by the training pipeline's own code
    (`keras_unetpp.data.decode`): images scaled to [0, 1] with `channels`
    channels, masks turned into labels by the same rules (0/255 masks become
    0/1, a DSB sample's nucleus masks are merged). Nothing is resized.

    Args:
        source: dict from `data_source()`.
        split: `"train"`, `"val"`, `"test"` or `"all"`.
        channels: int, 1 or 3. Defaults to `1`.
        num_classes: int. Defaults to `1`.

    Returns:
        `(samples, count)`: an iterable of `(image, mask)` NumPy arrays
        (float32 `(h, w, channels)`, integer `(h, w, 1)`) and the number
        of samples (`None` for TFDS).
    """
    from keras_unetpp.data import decode
    from keras_unetpp.data.pipeline import processing_settings

    _check_split(split)
    tfds_source = source.get("kind") == "tfds" and not (
        split == "val" and source.get("val_source")
    )
    options = processing_settings(
        image_size=(1, 1),
        depth=0,
        channels=channels,
        num_classes=num_classes,
        pixel_scaling=pixel_scaling,
        **mask_rules(source),
    ).decode
    if tfds_source:
        import tensorflow_datasets as tfds

        name = f"{source['name']}/{_tfds_split(source, split)}"
        examples = tfds.as_numpy(
            tfds.load(
                source["name"],
                split=_tfds_split(source, split),
                data_dir=source["data_dir"],
                shuffle_files=False,
            )
        )
        samples = (
            decode.prepare_pair(
                example[source["image_key"]],
                [example[source["mask_key"]]],
                options,
                f"{name} example {k}",
                [f"{name} example {k}"],
            )
            for k, example in enumerate(examples)
        )
        return samples, None
    pairs = source_pairs(source, split)
    return (decode.load_pair(pair, options) for pair in pairs), len(pairs)


def _int_keys(mask_map):
    # JSON turns int keys into strings; mask values are ints.
    if mask_map is None:
        return None
    return {int(k): int(v) for k, v in mask_map.items()}
