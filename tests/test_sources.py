"""Tests of keras_unetpp.sources: the data sources of the command line."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from keras_unetpp import data, sources
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    return write_synthetic_dataset(
        root, num_images=10, image_size=(32, 32), val_fraction=0.3
    )


def test_a_data_folder_with_a_manifest_uses_its_split(folder):
    source = sources.data_source(data_dir=folder)
    assert source["kind"] == "folder"
    assert source["split"] == {
        "method": "manifest",
        "manifest": str(folder / "manifest.csv"),
        "column": "suggested_split",
        "map": None,
    }
    json.dumps(source)  # recorded in run.json
    train = sources.source_pairs(source, "train")
    val = sources.source_pairs(source, "val")
    assert [p.stem for p in val] == [
        "synthetic_0007",
        "synthetic_0008",
        "synthetic_0009",
    ]
    assert len(train) == 7 and not {p.stem for p in train} & {p.stem for p in val}
    dataset, count = sources.source_dataset(
        source, "val", image_size=(32, 32), batch_size=2, depth=2
    )
    assert count == 3
    images, masks = next(iter(dataset))
    assert images.shape == (2, 32, 32, 1) and masks.shape == (2, 32, 32, 1)


def test_folders_without_a_manifest_are_split_by_seed(folder, tmp_path):
    images = shutil.copytree(folder / "images", tmp_path / "im")
    masks = shutil.copytree(folder / "masks", tmp_path / "ma")
    source = sources.data_source(
        images_dir=images, masks_dir=masks, val_fraction=0.2, seed=1
    )
    assert source["split"] == {"method": "random", "val_fraction": 0.2, "seed": 1}
    val = sources.source_pairs(source, "val")
    expected = data.split_pairs(data.folder_pairs(images, masks), 0.2, 1)[1]
    assert val == expected and len(val) == 2


def test_dsb2018_layout(tmp_path, folder):
    for stem in ("a1", "b2", "c3", "d4", "e5"):
        (tmp_path / stem / "images").mkdir(parents=True)
        (tmp_path / stem / "masks").mkdir()
        shutil.copy(
            folder / "images" / "synthetic_0000.png",
            tmp_path / stem / "images" / f"{stem}.png",
        )
        shutil.copy(
            folder / "masks" / "synthetic_0000.png",
            tmp_path / stem / "masks" / "n1.png",
        )
    source = sources.data_source(dsb2018_dir=tmp_path, val_fraction=0.2)
    assert source["kind"] == "dsb2018"
    train = sources.source_pairs(source, "train")
    val = sources.source_pairs(source, "val")
    assert len(train) == 4 and len(val) == 1


def test_tfds_source_reads_the_named_splits(folder, tmp_path):
    splits = {
        split: data.folder_pairs(
            folder / "images",
            folder / "masks",
            stems=data.manifest_stems(folder / "manifest.csv", split),
        )
        for split in ("train", "val")
    }
    data.prepare_tfds_folder("cells", splits, data_dir=tmp_path)
    source = sources.data_source(
        tfds_name="segmentation_folder/cells",
        tfds_val_split="val",
        tfds_data_dir=str(tmp_path),
    )
    assert source["splits"] == {"train": "train", "val": "val"}
    dataset, count = sources.source_dataset(
        source, "val", image_size=(32, 32), batch_size=8, depth=2
    )
    assert count is None
    images, masks = next(iter(dataset))
    assert images.shape == (3, 32, 32, 1) and masks.shape == (3, 32, 32, 1)
    # Image by image at native size, masks decoded as training decodes them.
    samples, count = sources.source_samples(source, "val")
    samples = list(samples)
    assert count is None and len(samples) == 3
    expected = [data.decode.load_pair(p, samples_options()) for p in splits["val"]]

    def key(sample):  # TFDS stores examples in its own order
        return float(sample[0].mean())

    for (image, mask), (want_image, want_mask) in zip(
        sorted(samples, key=key), sorted(expected, key=key)
    ):
        np.testing.assert_allclose(image, want_image, atol=1e-6)
        np.testing.assert_array_equal(mask, want_mask)
    no_val = sources.data_source(
        tfds_name="segmentation_folder/cells",
        tfds_data_dir=str(tmp_path),
        no_val=True,
    )
    assert no_val["splits"]["val"] is None
    with pytest.raises(InputError, match="no val split"):
        sources.source_dataset(no_val, "val", image_size=(32, 32), depth=2)


def samples_options():
    from keras_unetpp.data.decode import DecodeOptions

    return DecodeOptions(1, 1, "dtype", None, False, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one data source"),
        ({"data_dir": ".", "tfds_name": "x"}, "data_dir, tfds_name"),
        ({"images_dir": "."}, "needs a masks folder"),
        ({"data_dir": "/nonexistent"}, "Received: data_dir='/nonexistent'"),
    ],
)
def test_data_source_rejects_bad_combinations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sources.data_source(**kwargs)


def test_split_must_be_a_known_split(folder):
    source = sources.data_source(data_dir=folder)
    with pytest.raises(ValueError, match="Received: split='holdout'"):
        sources.source_pairs(source, "holdout")
    with pytest.raises(ValueError, match="no test split.*Received: split='test'"):
        sources.source_pairs(source, "test")


# Splits are never invented when the user gave one.


def _retina_like(root, column="original_split", values=None, with_manifest=True):
    """A folder like the retina set: a manifest with its own split column."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.zeros((8, 8), np.uint8)
    values = values or ["training"] * 4 + ["test"] * 2
    for k in range(len(values)):
        cv2.imwrite(str(root / "images" / f"{k:02d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{k:02d}.png"), image)
    if with_manifest:
        with open(root / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["stem", column, "width"])
            writer.writerows([f"{k:02d}", v, 8] for k, v in enumerate(values))
    return root


def test_a_manifest_without_the_split_column_is_an_error_naming_its_columns(
    tmp_path,
):
    root = _retina_like(tmp_path / "retina")
    with pytest.raises(InputError) as info:
        sources.data_source(data_dir=root)
    message = str(info.value)
    assert "no column 'suggested_split'" in message
    assert "['stem', 'original_split', 'width']" in message
    assert "--split-column" in message and "--split-map" in message
    # Not silently split at random either, whatever else is given.
    with pytest.raises(InputError, match="no column 'suggested_split'"):
        sources.data_source(data_dir=root, no_val=True)


def test_split_column_and_map_on_a_retina_like_manifest(tmp_path):
    root = _retina_like(tmp_path / "retina")
    # "test" is a split name; "training" is not, and is named.
    unknown = r"values \['training'\].*--split-map training="
    with pytest.raises(InputError, match=unknown):
        sources.data_source(data_dir=root, split_column="original_split")
    with pytest.raises(InputError, match=r"values \['test'\].*does not map"):
        sources.data_source(
            data_dir=root,
            split_column="original_split",
            split_map=["training=train"],
            no_val=True,
        )
    # train/test only: training needs a validation decision.
    with pytest.raises(InputError, match="no val images.*--val-data.*--no-val"):
        sources.data_source(
            data_dir=root,
            split_column="original_split",
            split_map=["training=train", "test=test"],
        )
    source = sources.data_source(
        data_dir=root,
        split_column="original_split",
        split_map=["training=train", "test=test"],
        no_val=True,
    )
    json.dumps(source)  # recorded in run.json
    assert source["split"]["map"] == {"training": "train", "test": "test"}
    assert [p.stem for p in sources.source_pairs(source, "train")] == [
        "00",
        "01",
        "02",
        "03",
    ]
    assert [p.stem for p in sources.source_pairs(source, "test")] == ["04", "05"]
    with pytest.raises(InputError, match="has no val split"):
        sources.source_pairs(source, "val")
    assert "original_split" in sources.describe_split(source)
    assert "no validation" in sources.describe_split(source)
    # Mapping the official test images to val: they are never trained on.
    source = sources.data_source(
        data_dir=root,
        split_column="original_split",
        split_map=["training=train", "test=val"],
    )
    assert [p.stem for p in sources.source_pairs(source, "val")] == ["04", "05"]
    # A random split is refused when the manifest gives the split.
    with pytest.raises(InputError, match="defines the split"):
        sources.data_source(
            data_dir=root,
            split_column="original_split",
            split_map=["training=train", "test=val"],
            val_fraction=0.2,
        )


def test_a_random_split_only_when_no_split_is_given(tmp_path):
    root = _retina_like(tmp_path / "plain", with_manifest=False)
    source = sources.data_source(data_dir=root, seed=3)
    assert source["split"] == {"method": "random", "val_fraction": 0.2, "seed": 3}
    assert sources.describe_split(source) == "random 80/20 split (seed 3)"
    with pytest.raises(InputError, match="manifest, and there is none"):
        sources.data_source(data_dir=root, split_column="fold")
    no_val = sources.data_source(data_dir=root, no_val=True)
    assert no_val["split"] == {"method": "all_train"} and not no_val["validation"]
    assert len(sources.source_pairs(no_val, "train")) == 6


def test_a_separate_validation_folder(tmp_path):
    root = _retina_like(tmp_path / "train", with_manifest=False)
    val = _retina_like(tmp_path / "val", values=["x"] * 3, with_manifest=False)
    source = sources.data_source(data_dir=root, val_data_dir=val)
    assert source["split"] == {"method": "all_train"}
    assert len(sources.source_pairs(source, "train")) == 6
    assert [p.image for p in sources.source_pairs(source, "val")] == [
        str(val / "images" / f"{k:02d}.png") for k in range(3)
    ]
    assert "validation: the folder" in sources.describe_split(source)
    with pytest.raises(InputError, match="not both"):
        sources.data_source(data_dir=root, val_data_dir=val, no_val=True)
    # A manifest that already has val images and a validation folder clash.
    with pytest.raises(InputError, match="already puts 1 images in val"):
        sources.data_source(
            data_dir=_retina_like(
                tmp_path / "m", "suggested_split", ["train", "train", "val"]
            ),
            val_data_dir=val,
        )


def test_splits_table_says_where_every_image_went(tmp_path):
    root = _retina_like(
        tmp_path / "retina", values=["training", "training", "test", "skip"]
    )
    cv2.imwrite(str(root / "images" / "99.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(root / "masks" / "99.png"), np.zeros((8, 8), np.uint8))
    val = _retina_like(tmp_path / "val", values=["x"], with_manifest=False)
    source = sources.data_source(
        data_dir=root,
        split_column="original_split",
        split_map=["training=train", "test=test", "skip=ignore"],
        val_data_dir=val,
    )
    path, counts = sources.write_splits(source, tmp_path / "run" / "splits.csv")
    with open(path, newline="") as f:
        rows = [(r["stem"], r["split"]) for r in csv.DictReader(f)]
    assert rows == [
        ("00", "train"),
        ("01", "train"),
        ("02", "test"),
        ("03", "ignored"),
        ("99", "unlisted"),
        ("00", "val"),
    ]
    assert counts == {"train": 2, "test": 1, "ignored": 1, "unlisted": 1, "val": 1}


def test_an_old_run_source_still_reads_its_split(folder):
    legacy = {
        "kind": "folder",
        "images": str(folder / "images"),
        "masks": str(folder / "masks"),
        "manifest": str(folder / "manifest.csv"),
        "val_fraction": 0.2,
        "seed": 0,
    }
    assert len(sources.source_pairs(legacy, "val")) == 3
    legacy["manifest"] = None
    assert len(sources.source_pairs(legacy, "val")) == 2


def test_evaluating_a_whole_folder_needs_no_split(tmp_path):
    root = _retina_like(tmp_path / "retina")
    source = sources.data_source(data_dir=root, required_splits=())
    assert len(sources.source_pairs(source, "all")) == 6
    samples, count = sources.source_samples(source, "all")
    image, mask = next(iter(samples))
    assert count == 6 and image.shape == (8, 8, 1) and mask.shape == (8, 8, 1)
    with pytest.raises(InputError, match="no column 'suggested_split'"):
        sources.data_source(data_dir=root, required_splits=("test",))


def _jpeg_masks(root, count=6, size=(24, 28)):
    """images/ and masks/ whose masks are JPEGs: 0/255 plus compression noise."""
    rng = np.random.default_rng(4)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truths = {}
    for k in range(count):
        truth = np.zeros(size, np.uint8)
        y, x = rng.integers(2, 10, 2)
        truth[y : y + 10, x : x + 12] = 255
        image = rng.integers(0, 255, size, np.uint8)
        cv2.imwrite(str(root / "images" / f"{k:02d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{k:02d}.jpg"), truth)
        truths[f"{k:02d}"] = truth
    return truths


def test_mask_rules_are_recorded_and_read_by_every_split(tmp_path):
    truths = _jpeg_masks(tmp_path / "jpeg")
    decoded = {
        stem: cv2.imread(str(tmp_path / "jpeg" / "masks" / f"{stem}.jpg"), 0)
        for stem in truths
    }
    # JPEG noise: more than two values, so the default rule refuses them.
    assert all(len(np.unique(mask)) > 2 for mask in decoded.values())
    plain = sources.data_source(data_dir=tmp_path / "jpeg", val_fraction=0.5)
    assert not set(plain) & {"mask_threshold", "invert_mask", "mask_map"}
    with pytest.raises(DataError, match=r"mask_threshold \(--mask-threshold"):
        sources.source_dataset(plain, "train", image_size=(24, 28), depth=2)

    source = sources.data_source(
        data_dir=tmp_path / "jpeg", val_fraction=0.5, mask_threshold=127
    )
    assert source["mask_threshold"] == 127.0
    # The source goes through run.json: JSON and back.
    source = json.loads(json.dumps(source))
    assert sources.mask_rules(source) == {
        "mask_threshold": 127.0,
        "invert_mask": False,
        "mask_map": None,
    }
    for split in ("train", "val"):
        pairs = sources.source_pairs(source, split)
        samples, count = sources.source_samples(source, split)
        for pair, (_, mask) in zip(pairs, samples):
            stem = pair.stem
            np.testing.assert_array_equal(mask[..., 0], decoded[stem] > 127)
        dataset, _ = sources.source_dataset(
            source, split, image_size=(24, 28), batch_size=8, depth=2
        )
        _, masks = next(iter(dataset))
        want = np.stack([decoded[p.stem] > 127 for p in pairs])
        np.testing.assert_array_equal(masks.numpy()[..., 0], want)

    inverted = sources.data_source(
        data_dir=tmp_path / "jpeg",
        val_fraction=0.5,
        mask_threshold=127,
        invert_mask=True,
    )
    samples, _ = sources.source_samples(inverted, "val")
    pairs = sources.source_pairs(inverted, "val")
    for pair, (_, mask) in zip(pairs, samples):
        np.testing.assert_array_equal(mask[..., 0], decoded[pair.stem] <= 127)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mask_threshold": "127"}, "must be a number"),
        ({"mask_threshold": float("nan")}, "must be a number"),
        ({"mask_threshold": 127, "mask_map": {"255": 1}}, "not both"),
        ({"mask_map": {"1": 1}, "tfds_mask_map": {"1": 1}}, "older name"),
        ({"invert_mask": "yes"}, "True or False"),
    ],
)
def test_bad_mask_rules_are_refused(folder, kwargs, match):
    with pytest.raises(InputError, match=match):
        sources.data_source(data_dir=folder, **kwargs)


def _suffixed_copy(folder, root, suffix="_mask"):
    """A copy of `folder` whose masks are named `<stem><suffix>.png`."""
    shutil.copytree(folder / "images", root / "images")
    (root / "masks").mkdir()
    for path in (folder / "masks").iterdir():
        shutil.copy(path, root / "masks" / f"{path.stem}{suffix}{path.suffix}")
    return root


def test_masks_named_with_a_suffix(folder, tmp_path):
    root = _suffixed_copy(folder, tmp_path / "suffixed")
    # Without the suffix no mask has an image: the error says which flag fits.
    with pytest.raises(InputError, match=r"'<stem>_mask': pass mask_suffix='_mask' "):
        sources.source_pairs(sources.data_source(data_dir=root, no_val=True), "all")
    source = sources.data_source(data_dir=root, val_fraction=0.3, mask_suffix="_mask")
    source = json.loads(json.dumps(source))  # as run.json keeps it
    assert source["mask_suffix"] == "_mask"
    pairs = sources.source_pairs(source, "all")
    assert len(pairs) == 10
    for pair in pairs:
        assert pair.masks[0].endswith(f"{pair.stem}_mask.png")
        original = cv2.imread(str(folder / "masks" / f"{pair.stem}.png"), 0)
        np.testing.assert_array_equal(cv2.imread(pair.masks[0], 0), original)
    train, val = (sources.source_pairs(source, s) for s in ("train", "val"))
    assert len(train) + len(val) == 10 and val
    samples, count = sources.source_samples(source, "val")
    assert count == len(val) and len(list(samples)) == len(val)
    # A validation folder is named the same way.
    with_val = sources.data_source(
        images_dir=root / "images",
        masks_dir=root / "masks",
        val_data_dir=root,
        mask_suffix="_mask",
    )
    assert len(sources.source_pairs(with_val, "val")) == 10
    with pytest.raises(InputError, match="own layout"):
        sources.data_source(dsb2018_dir=tmp_path, mask_suffix="_mask")
