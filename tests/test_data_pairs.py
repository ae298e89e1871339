"""Finding pairs: folders, the DSB 2018 layout, manifests, the split helper."""

import csv

import cv2
import numpy as np
import pytest

from keras_unetpp import data


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _folders(tmp_path, image_names, mask_names):
    square = np.zeros((16, 16), np.uint8)
    for name in image_names:
        _write(tmp_path / "images" / name, square)
    for name in mask_names:
        _write(tmp_path / "masks" / name, square)
    return tmp_path / "images", tmp_path / "masks"


def test_folder_pairs_matches_by_stem_across_formats(tmp_path):
    images, masks = _folders(
        tmp_path, ["b.png", "a.jpg", "c.TIF"], ["a.png", "c.tiff", "b.png"]
    )
    (images / ".DS_Store").write_bytes(b"\0")
    (images / "Thumbs.db").write_bytes(b"\0")  # Windows' thumbnail cache
    (masks / "desktop.ini").write_text("[.ShellClassInfo]")
    (images / "sub").mkdir()
    pairs = data.folder_pairs(images, masks)
    assert [p.stem for p in pairs] == ["a", "b", "c"]
    assert pairs[0] == data.SamplePair(
        "a", str(images / "a.jpg"), (str(masks / "a.png"),)
    )
    assert pairs[2].image.endswith("c.TIF") and pairs[2].masks[0].endswith("c.tiff")


def test_folder_pairs_keeps_the_order_of_stems(tmp_path):
    images, masks = _folders(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    assert [p.stem for p in data.folder_pairs(images, masks, stems=["b", "a"])] == [
        "b",
        "a",
    ]
    with pytest.raises(ValueError, match="have no image.*'zz'"):
        data.folder_pairs(images, masks, stems=["a", "zz"])


def test_folder_pairs_mask_suffix(tmp_path):
    images, masks = _folders(tmp_path, ["a.png"], ["a_mask.png"])
    pairs = data.folder_pairs(images, masks, mask_suffix="_mask")
    assert pairs[0].masks == (str(masks / "a_mask.png"),)
    with pytest.raises(ValueError, match="have no image: 'a_mask.png'"):
        data.folder_pairs(images, masks)


@pytest.mark.parametrize(
    "image_names, mask_names, message",
    [
        (["a.png", "b.png"], ["a.png"], r"1 image\(s\) in .* have no mask: 'b.png'"),
        (["a.png"], ["a.png", "x.png"], r"1 mask\(s\) in .* have no image: 'x.png'"),
        (["a.png", "a.jpg"], ["a.png"], "same stem 'a': 'a.jpg' and 'a.png'"),
    ],
)
def test_folder_pairs_unmatched_files_are_named(
    tmp_path, image_names, mask_names, message
):
    images, masks = _folders(tmp_path, image_names, mask_names)
    with pytest.raises(ValueError, match=message):
        data.folder_pairs(images, masks)


def test_folder_pairs_rejects_empty_missing_and_foreign_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        data.folder_pairs(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(ValueError, match="does not exist.*images_dir="):
        data.folder_pairs(tmp_path / "nope", tmp_path / "masks")
    _write(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not images.*'notes.txt'"):
        data.folder_pairs(tmp_path / "images", tmp_path / "masks")


def test_folder_pairs_points_to_dsb_layout(tmp_path):
    (tmp_path / "images" / "abc" / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="dsb2018_pairs"):
        data.folder_pairs(tmp_path / "images", tmp_path / "masks")


def _dsb_sample(root, sample_id, n_masks):
    image = np.zeros((8, 8, 3), np.uint8)
    _write(root / sample_id / "images" / f"{sample_id}.png", image)
    for k in range(n_masks):
        _write(root / sample_id / "masks" / f"m{k}.png", np.zeros((8, 8), np.uint8))


def test_dsb2018_pairs_lists_samples_and_their_nucleus_masks(tmp_path):
    _dsb_sample(tmp_path, "id2", 3)
    _dsb_sample(tmp_path, "id1", 2)
    (tmp_path / "stage1_train_labels.csv").write_text("ImageId\n")
    pairs = data.dsb2018_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["id1", "id2"]
    assert pairs[1].image == str(tmp_path / "id2" / "images" / "id2.png")
    assert pairs[1].masks == tuple(
        str(tmp_path / "id2" / "masks" / f"m{k}.png") for k in range(3)
    )


def test_dsb2018_pairs_errors_name_the_sample(tmp_path):
    _dsb_sample(tmp_path, "good", 1)
    _dsb_sample(tmp_path, "nomask", 0)
    with pytest.raises(ValueError, match="nomask.*has no masks"):
        data.dsb2018_pairs(tmp_path)
    (tmp_path / "nomask" / "images" / "nomask.png").unlink()
    with pytest.raises(ValueError, match="nomask.*has no image images/nomask.png"):
        data.dsb2018_pairs(tmp_path)


def test_dsb2018_pairs_rejects_the_flat_layout(shared_data):
    with pytest.raises(ValueError, match="use `keras_unetpp.data.folder_pairs"):
        data.dsb2018_pairs(shared_data / "dsb2018_nuclei")


def test_manifest_stems_real_splits(shared_data):
    dsb = shared_data / "dsb2018_nuclei" / "manifest.csv"
    train, val = data.manifest_stems(dsb, "train"), data.manifest_stems(dsb, "val")
    assert (len(train), len(val)) == (359, 86)  # The README's counts.
    assert not set(train) & set(val)
    isbi = shared_data / "isbi2012_em_membrane" / "manifest.csv"
    assert data.manifest_stems(isbi, "val") == ["25", "26", "27", "28", "29"]
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'val'\]"):
        data.manifest_stems(dsb, "test")
    with pytest.raises(ValueError, match="no column 'fold'"):
        data.manifest_stems(dsb, "train", column="fold")


def test_folder_pairs_with_real_manifest(shared_data):
    root = shared_data / "isbi2012_em_membrane"
    stems = data.manifest_stems(root / "manifest.csv", "train")
    pairs = data.folder_pairs(root / "images", root / "masks", stems=stems)
    assert [p.stem for p in pairs] == [f"{k:02d}" for k in range(25)]


def _pairs(n):
    return [data.SamplePair(f"s{k:03d}", f"i{k}.png", (f"m{k}.png",)) for k in range(n)]


def test_split_pairs_is_reproducible_and_order_free():
    pairs = _pairs(50)
    train, val = data.split_pairs(pairs, val_fraction=0.2, seed=3)
    assert (len(train), len(val)) == (40, 10)
    assert sorted(train + val) == sorted(pairs)
    assert train == sorted(train) and val == sorted(val)
    assert data.split_pairs(pairs[::-1], 0.2, seed=3) == (train, val)
    assert data.split_pairs(pairs, 0.2, seed=4)[1] != val
    # The same permutation computed independently with NumPy.
    order = np.random.default_rng(3).permutation(50)[:10]
    assert [p.stem for p in val] == sorted(f"s{k:03d}" for k in order)


def test_split_pairs_keeps_both_sets_non_empty():
    train, val = data.split_pairs(_pairs(2), val_fraction=0.01)
    assert (len(train), len(val)) == (1, 1)
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        data.split_pairs(_pairs(5), val_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        data.split_pairs(_pairs(1))
    with pytest.raises(ValueError, match="duplicate stems: 's000'"):
        data.split_pairs(_pairs(3) + _pairs(1))


def test_manifest_stems_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.manifest_stems(tmp_path / "manifest.csv", "train")
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["stem", "suggested_split"], ["a", "train"]])
    assert data.manifest_stems(path, "train") == ["a"]
