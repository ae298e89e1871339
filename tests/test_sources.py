"""Tests of keras_unetpp.sources: the data sources of the command line."""

import json
import shutil

import pytest

from keras_unetpp import data, sources
from keras_unetpp.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    return write_synthetic_dataset(root, num_images=10, image_size=(32, 32),
                                   val_fraction=0.3)


def test_a_data_folder_with_a_manifest_uses_its_split(folder):
    source = sources.data_source(data_dir=folder)
    assert source["kind"] == "folder"
    assert source["manifest"] == str(folder / "manifest.csv")
    json.dumps(source)  # recorded in run.json
    train = sources.source_pairs(source, "train")
    val = sources.source_pairs(source, "val")
    assert [p.stem for p in val] == ["synthetic_0007", "synthetic_0008",
                                     "synthetic_0009"]
    assert len(train) == 7 and not {p.stem for p in train} & {p.stem for p in val}
    dataset, count = sources.source_dataset(source, "val", image_size=(32, 32),
                                            batch_size=2, depth=2)
    assert count == 3
    images, masks = next(iter(dataset))
    assert images.shape == (2, 32, 32, 1) and masks.shape == (2, 32, 32, 1)


def test_folders_without_a_manifest_are_split_by_seed(folder, tmp_path):
    images = shutil.copytree(folder / "images", tmp_path / "im")
    masks = shutil.copytree(folder / "masks", tmp_path / "ma")
    source = sources.data_source(images_dir=images, masks_dir=masks,
                                 val_fraction=0.2, seed=1)
    assert source["manifest"] is None
    val = sources.source_pairs(source, "val")
    expected = data.split_pairs(data.folder_pairs(images, masks), 0.2, 1)[1]
    assert val == expected and len(val) == 2


def test_dsb2018_layout(tmp_path, folder):
    for stem in ("a1", "b2", "c3", "d4", "e5"):
        (tmp_path / stem / "images").mkdir(parents=True)
        (tmp_path / stem / "masks").mkdir()
        shutil.copy(folder / "images" / "synthetic_0000.png",
                    tmp_path / stem / "images" / f"{stem}.png")
        shutil.copy(folder / "masks" / "synthetic_0000.png",
                    tmp_path / stem / "masks" / "n1.png")
    source = sources.data_source(dsb2018_dir=tmp_path, val_fraction=0.2)
    assert source["kind"] == "dsb2018"
    train = sources.source_pairs(source, "train")
    val = sources.source_pairs(source, "val")
    assert len(train) == 4 and len(val) == 1


def test_tfds_source_reads_the_named_splits(folder, tmp_path):
    splits = {
        split: data.folder_pairs(folder / "images", folder / "masks",
                                 stems=data.manifest_stems(folder / "manifest.csv",
                                                           split))
        for split in ("train", "val")
    }
    data.prepare_tfds_folder("cells", splits, data_dir=tmp_path)
    source = sources.data_source(
        tfds_name="segmentation_folder/cells", tfds_val_split="val",
        tfds_data_dir=str(tmp_path),
    )
    assert source["splits"] == {"train": "train", "val": "val"}
    dataset, count = sources.source_dataset(source, "val", image_size=(32, 32),
                                            batch_size=8, depth=2)
    assert count is None
    images, masks = next(iter(dataset))
    assert images.shape == (3, 32, 32, 1) and masks.shape == (3, 32, 32, 1)


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


def test_split_must_be_train_or_val(folder):
    source = sources.data_source(data_dir=folder)
    with pytest.raises(ValueError, match="Received: split='test'"):
        sources.source_pairs(source, "test")
