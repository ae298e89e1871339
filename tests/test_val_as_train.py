"""scripts/val_as_train.py: the val split linked in as the train split."""

import csv

import numpy as np
import pytest
from module_files import load_module
from PIL import Image

from keras_unetpp import sources
from keras_unetpp.data import decode


def _script():
    return load_module("scripts/val_as_train.py")


def _folder(root, splits):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for k, split in enumerate(splits):
        stem = f"s{k}"
        Image.fromarray(np.full((6, 8, 3), 10 * k, np.uint8)).save(
            root / "images" / f"{stem}.png"
        )
        mask = np.zeros((6, 8), np.uint8)
        mask[: k + 1, : k + 2] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        rows.append({"stem": stem, "image_type": f"t{k}", "suggested_split": split})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["stem", "image_type", "suggested_split"])
        writer.writeheader()
        writer.writerows(rows)


def _read(pairs):
    return {
        p.stem: (
            decode.read_image(p.image)[..., 0].max(),
            int(
                (decode.mask_plane(decode.read_image(p.masks[0]), p.masks[0]) > 0).sum()
            ),
        )
        for p in pairs
    }


def test_val_images_become_both_splits(tmp_path):
    _folder(tmp_path / "data", ["val", "train", "val"])
    module = _script()
    out = tmp_path / "linked"
    assert module.main(["--data", str(tmp_path / "data"), "--output", str(out)]) == 0
    source = sources.data_source(data_dir=str(out))
    train = _read(sources.source_pairs(source, "train"))
    val = _read(sources.source_pairs(source, "val"))
    # s0 and s2 (pixel value 10k, a (k+1) x (k+2) mask), never s1.
    assert train == {"s0": (0, 2), "s2": (20, 12)}
    assert val == {"val_copy_s0": (0, 2), "val_copy_s2": (20, 12)}
    assert all(p.is_symlink() for p in (out / "images").iterdir())
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stem"], r["image_type"], r["suggested_split"]) for r in rows] == [
        ("s0", "t0", "train"),
        ("val_copy_s0", "t0", "val"),
        ("s2", "t2", "train"),
        ("val_copy_s2", "t2", "val"),
    ]


def test_refuses_existing_output_missing_files_and_no_val(tmp_path):
    module = _script()
    _folder(tmp_path / "data", ["val", "train"])
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit, match="taken exists"):
        module.val_as_train(tmp_path / "data", tmp_path / "taken")
    (tmp_path / "data" / "masks" / "s0.png").unlink()
    with pytest.raises(SystemExit, match=r"one file named s0\.\* in .*masks, found 0"):
        module.val_as_train(tmp_path / "data", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    _folder(tmp_path / "trainonly", ["train"])
    with pytest.raises(SystemExit, match="no row with suggested_split=val"):
        module.val_as_train(tmp_path / "trainonly", tmp_path / "new2")
