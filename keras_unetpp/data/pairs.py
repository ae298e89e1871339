"""Finding image/mask pairs on disk: folders, the DSB 2018 layout, splits."""

import collections
import csv
import os
import pathlib

import numpy as np

from keras_unetpp.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# How many names an error message lists before it says "... and N more".
_LISTED = 10

SamplePair = collections.namedtuple("SamplePair", ["stem", "image", "masks"])
SamplePair.__doc__ = """One training sample: an image file and its mask file(s).

Fields:
    stem: str, the sample's name (the image file name without extension).
    image: str, path of the image file.
    masks: tuple of str, paths of the mask files. Folders give one mask per
        image; the DSB 2018 layout gives one file per nucleus, and the
        pipeline merges them by union (a pixel is foreground if it is
        foreground in any of them).
"""


def _listing(names):
    names = sorted(str(n) for n in names)
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    if len(names) > _LISTED:
        shown += f", ... and {len(names) - _LISTED} more"
    return shown


# Files an operating system writes into picture folders (lower case).
_SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})


def _suffix_hint(image_stems, unmatched_mask_stems, mask_suffix):
    """Advice when every unmatched mask is an image's stem plus one suffix."""
    if not unmatched_mask_stems:
        return ""
    found = set()
    for stem in unmatched_mask_stems:
        prefixes = [s for s in image_stems if stem.startswith(s) and stem != s]
        if not prefixes:
            return ""
        found.add(stem[len(max(prefixes, key=len)) :])
    if len(found) != 1:
        return ""
    suffix = mask_suffix + found.pop()
    return (
        f" The masks look named '<stem>{suffix}': pass mask_suffix="
        f"{suffix!r} (--mask-suffix {suffix})."
    )


def _image_files(directory, role):
    """Maps stem -> path for the image files of a folder, strictly."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise InputError(
            f"The {role} folder does not exist or is not a folder. "
            f"Received: {role}_dir={str(directory)!r}"
        )
    by_stem = {}
    unsupported = []
    has_subfolders = False
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or entry.name.lower() in _SYSTEM_FILES:
            # .DS_Store, ._foo.png, editor files and the thumbnail caches
            # Windows leaves in picture folders are not samples.
            continue
        if entry.is_dir():
            has_subfolders = True
            continue
        if entry.suffix.lower() not in IMAGE_EXTENSIONS:
            unsupported.append(entry.name)
            continue
        if entry.stem in by_stem:
            raise InputError(
                f"Two {role} files in {str(directory)!r} have the same stem "
                f"{entry.stem!r}: {by_stem[entry.stem].name!r} and "
                f"{entry.name!r}. Keep one of them."
            )
        by_stem[entry.stem] = entry
    if unsupported:
        raise InputError(
            f"The {role} folder {str(directory)!r} holds files that are not "
            f"images ({', '.join(IMAGE_EXTENSIONS)}): {_listing(unsupported)}. "
            "Move them out so that no sample is silently left out."
        )
    if not by_stem:
        hint = (
            " It has sub-folders only: for the 2018 Data Science Bowl layout "
            "(<id>/images/<id>.png, <id>/masks/*.png) use "
            "`keras_unetpp.data.dsb2018_pairs(root)`."
            if has_subfolders
            else ""
        )
        raise InputError(
            f"The {role} folder {str(directory)!r} holds no image files "
            f"({', '.join(IMAGE_EXTENSIONS)}).{hint}"
        )
    return by_stem


def folder_pairs(images_dir, masks_dir, stems=None, mask_suffix=""):
    """Pairs the images of one folder with the masks of another by file stem.

    `images/abc.png` is paired with `masks/abc.png` (or `masks/abc.tif`:
    only the stems must match). Every image must have a mask and every mask
    an image; anything else raises a `ValueError` that names the files, so
    that no sample is silently lost. Hidden files (names starting with `.`)
    and sub-folders are ignored; any other file that is not a PNG, JPEG or
    TIFF is an error.

    Args:
        images_dir: path of the folder of images.
        masks_dir: path of the folder of masks.
        stems: optional list of stems to keep (e.g. from
            `manifest_stems`), in the order given. Every stem must exist.
            Defaults to `None` (all pairs, sorted by stem).
        mask_suffix: str, text after the stem in mask file names, e.g.
            `"_mask"` for `abc.png` / `abc_mask.png`. Defaults to `""`.

    Returns:
        A list of `SamplePair(stem, image, masks)` with `masks` a 1-tuple.

    Example:

    ```python
    root = "dsb2018_nuclei"
    train = data.folder_pairs(
        f"{root}/images", f"{root}/masks",
        stems=data.manifest_stems(f"{root}/manifest.csv", "train"),
    )
    ```
    """
    images = _image_files(images_dir, "images")
    masks = _image_files(masks_dir, "masks")
    if mask_suffix:
        unsuffixed = [p.name for s, p in masks.items() if not s.endswith(mask_suffix)]
        if unsuffixed:
            raise InputError(
                f"Mask files without the suffix {mask_suffix!r} in "
                f"{str(masks_dir)!r}: {_listing(unsuffixed)}. "
                f"Received: mask_suffix={mask_suffix!r}"
            )
        masks = {s[: -len(mask_suffix)]: p for s, p in masks.items()}
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        problems = []
        if no_mask:
            problems.append(
                f"{len(no_mask)} image(s) in {str(images_dir)!r} have no mask: "
                + _listing(images[s].name for s in no_mask)
            )
        if no_image:
            problems.append(
                f"{len(no_image)} mask(s) in {str(masks_dir)!r} have no image: "
                + _listing(masks[s].name for s in no_image)
            )
        raise InputError(
            "Images and masks are matched by file stem"
            + (f" (masks named '<stem>{mask_suffix}')" if mask_suffix else "")
            + "; "
            + "; ".join(problems)
            + "."
            + _suffix_hint(set(images), no_image, mask_suffix)
        )
    if stems is None:
        chosen = sorted(images)
    else:
        chosen = [str(s) for s in stems]
        missing = [s for s in chosen if s not in images]
        if missing:
            raise InputError(
                f"{len(missing)} requested stem(s) have no image in "
                f"{str(images_dir)!r}: {_listing(missing)}."
            )
        if not chosen:
            raise InputError(f"`stems` is empty. Received: stems={stems!r}")
    return [SamplePair(s, str(images[s]), (str(masks[s]),)) for s in chosen]


def dsb2018_pairs(root):
    """Lists the samples of the 2018 Data Science Bowl layout.

    This is the layout of the Kaggle download (`stage1_train/`): one folder
    per sample, `<id>/images/<id>.png` and one PNG per nucleus in
    `<id>/masks/`. The pipeline merges a sample's nucleus masks by union into
    one binary mask. A sample folder without its image, without masks, or
    with anything else in `images/` raises a `ValueError` naming it. Plain
    files in `root` (such as `stage1_train_labels.csv`) are not samples and
    are ignored.

    Args:
        root: path of the folder that holds the `<id>` folders.

    Returns:
        A list of `SamplePair(stem=id, image, masks)`, sorted by id.

    Example:

    ```python
    pairs = data.dsb2018_pairs("stage1_train")
    train, val = data.split_pairs(pairs, val_fraction=0.2, seed=0)
    ```
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise InputError(
            f"The DSB 2018 root folder does not exist. Received: root={str(root)!r}"
        )
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if (root / "images").is_dir() and (root / "masks").is_dir():
        raise InputError(
            f"{str(root)!r} has flat images/ and masks/ folders, not one folder "
            "per sample; use `keras_unetpp.data.folder_pairs(root + '/images', "
            f"root + '/masks')`. Received: root={str(root)!r}"
        )
    if not folders:
        raise InputError(
            f"The DSB 2018 root folder {str(root)!r} holds no sample folders "
            "(<id>/images/<id>.png, <id>/masks/*.png)."
        )
    pairs = []
    for folder in folders:
        sample_id = folder.name
        images_dir = folder / "images"
        image = images_dir / f"{sample_id}.png"
        if not image.is_file():
            raise InputError(
                f"The sample folder {str(folder)!r} has no image "
                f"images/{sample_id}.png."
            )
        extra = [
            p.name
            for p in images_dir.iterdir()
            if p.name != image.name and not p.name.startswith(".")
        ]
        if extra:
            raise InputError(
                f"The sample folder {str(images_dir)!r} holds more than the "
                f"image {image.name!r}: {_listing(extra)}."
            )
        masks_dir = folder / "masks"
        masks = []
        if masks_dir.is_dir():
            for p in sorted(masks_dir.iterdir()):
                if p.name.startswith("."):
                    continue
                if p.suffix.lower() != ".png":
                    raise InputError(
                        f"The masks folder {str(masks_dir)!r} holds a file "
                        f"that is not a PNG: {p.name!r}."
                    )
                masks.append(str(p))
        if not masks:
            raise InputError(
                f"The sample folder {str(folder)!r} has no masks (expected one "
                "PNG per nucleus in masks/). The DSB 2018 test sets have no "
                "masks; use the stage1_train folder."
            )
        pairs.append(SamplePair(sample_id, str(image), tuple(masks)))
    return pairs


def manifest_stems(
    manifest_csv,
    split,
    column="suggested_split",
    stem_column="stem",
    split_map=None,
):
    """Reads the stems of one split from a manifest CSV file.

    The manifests of the bundled data sets have a `stem` column and a
    `suggested_split` column with the values `train` and `val`. Other
    manifests name their split column and values differently (e.g. an
    `original_split` column with `training` and `test`): name the column
    with `column` and translate its values with `split_map`.

    Args:
        manifest_csv: path of the CSV file (with a header row).
        split: str, the split to read, e.g. `"train"` or `"val"`.
        column: str, the column that holds the split. Defaults to
            `"suggested_split"`.
        stem_column: str, the column that holds the stems. Defaults to
            `"stem"`.
        split_map: dict from the values in `column` to split names (e.g.
            `{"training": "train", "test": "val"}`), or `None` to use the
            values as they are. With a map, every value in the column must
            be one of its keys (a value that is not is an error naming it,
            so that no row silently lands in no split). Defaults to `None`.

    Returns:
        The list of stems in that split, in file order.

    Example:

    ```python
    val_stems = data.manifest_stems("dsb2018_nuclei/manifest.csv", "val")
    test_stems = data.manifest_stems(
        "retina/manifest.csv", "test", column="original_split",
        split_map={"training": "train", "test": "test"},
    )
    ```
    """
    path = str(manifest_csv)
    if not os.path.isfile(path):
        raise InputError(
            f"The manifest file does not exist. Received: manifest_csv={path!r}"
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for name in (stem_column, column):
            if name not in fields:
                raise InputError(
                    f"The manifest {path!r} has no column {name!r}; its columns "
                    f"are {fields}."
                )
        rows = list(reader)
    values = sorted({row[column] for row in rows})
    if split_map is not None:
        unmapped = [v for v in values if v not in split_map]
        if unmapped:
            raise InputError(
                f"The manifest {path!r} has values {unmapped} in column "
                f"{column!r} that `split_map` does not map; map every value "
                f"(it maps {sorted(split_map)}). Received: split_map={split_map!r}"
            )
        splits = sorted({split_map[v] for v in values})

        def split_of(row):
            return split_map[row[column]]
    else:
        splits = values

        def split_of(row):
            return row[column]

    if split not in splits:
        raise InputError(
            f"The manifest {path!r} has no split {split!r} in column "
            f"{column!r}; it has {splits}. Received: split={split!r}"
        )
    return [row[stem_column] for row in rows if split_of(row) == split]


def split_pairs(pairs, val_fraction=0.2, seed=0):
    """Splits pairs into training and validation sets, reproducibly.

    The pairs are sorted by stem and then permuted with a NumPy generator
    seeded by `seed`, so the split depends only on the set of stems, the
    fraction and the seed (not on the order of `pairs` or on the machine).
    The validation set has `round(len(pairs) * val_fraction)` pairs, at
    least one, and the training set keeps at least one.

    Args:
        pairs: list of `SamplePair` (stems must be unique).
        val_fraction: float in (0, 1), the share of validation pairs.
            Defaults to `0.2`.
        seed: int, the seed of the permutation. Defaults to `0`.

    Returns:
        A tuple `(train_pairs, val_pairs)`, each sorted by stem.

    Example:

    ```python
    train, val = data.split_pairs(data.dsb2018_pairs("stage1_train"), 0.2)
    ```
    """
    pairs = list(pairs)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0.0 < val_fraction < 1.0
    ):
        raise InputError(
            "`val_fraction` must be a float between 0 and 1 (exclusive). "
            f"Received: val_fraction={val_fraction!r}"
        )
    if len(pairs) < 2:
        raise InputError(
            "Need at least 2 pairs to make a training and a validation set. "
            f"Received: {len(pairs)} pair(s)"
        )
    counts = collections.Counter(p.stem for p in pairs)
    duplicates = sorted(s for s, n in counts.items() if n > 1)
    if duplicates:
        raise InputError(f"Pairs have duplicate stems: {_listing(duplicates)}.")
    ordered = sorted(pairs, key=lambda p: p.stem)
    n_val = min(max(int(round(len(ordered) * val_fraction)), 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_index = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_index]
    val = [p for i, p in enumerate(ordered) if i in val_index]
    return train, val
