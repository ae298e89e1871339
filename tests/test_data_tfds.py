"""TFDS: a local folder prepared once, loaded offline by name; any TFDS set."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_unetpp import data
from keras_unetpp.errors import DataError


def _val_pairs(shared_data, count=4):
    root = shared_data / "dsb2018_nuclei"
    stems = data.manifest_stems(root / "manifest.csv", "val")[:count]
    return data.folder_pairs(root / "images", root / "masks", stems=stems)


@pytest.fixture
def prepared(shared_data, tmp_path):
    """4 real DSB val pairs (2 of them 320 wide, 1 colour) as a TFDS data set."""
    pairs = _val_pairs(shared_data)
    data_dir = tmp_path / "tfds"
    data.prepare_tfds_folder(
        "mini", {"train": pairs[:3], "val": pairs[3:]}, data_dir, channels=1
    )
    return pairs, data_dir


def test_prepared_folder_loads_by_name_with_tfds(prepared):
    pairs, data_dir = prepared
    ds = tfds.load("segmentation_folder/mini", split="train", data_dir=data_dir)
    by_name = {os.path.basename(p.image): p for p in pairs}
    seen = []
    for example in ds:
        pair = by_name[example["file_name"].numpy().decode()]
        seen.append(pair.stem)
        gray = cv2.cvtColor(cv2.imread(pair.image), cv2.COLOR_BGR2GRAY)
        image = example["image"].numpy()
        assert image.shape == (*gray.shape, 1) and image.dtype == np.uint8
        assert np.abs(image[..., 0].astype(int) - gray).max() <= 1  # Rounding.
        mask = cv2.imread(pair.masks[0], cv2.IMREAD_GRAYSCALE)
        stored = example["segmentation_mask"].numpy()[..., 0]
        np.testing.assert_array_equal(stored, mask)
    assert sorted(seen) == sorted(p.stem for p in pairs[:3])


@pytest.mark.slow
def test_prepared_folder_loads_offline_without_this_package(prepared):
    _, data_dir = prepared
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        "ds = tfds.load('segmentation_folder/mini', split='val',\n"
        "               data_dir=sys.argv[1])\n"
        "assert 'keras_unetpp' not in sys.modules\n"
        "print(len(list(ds)))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "NO_GCE_CHECK": "true"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "1"


def _sorted_batches(ds):
    images, masks = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    images, masks = np.concatenate(images), np.concatenate(masks)
    order = np.argsort(masks.sum(axis=(1, 2, 3)))
    return images[order], masks[order]


def test_tfds_dataset_equals_the_folder_pipeline(prepared):
    pairs, data_dir = prepared
    from_tfds = data.tfds_dataset(
        "segmentation_folder/mini",
        "train",
        data_dir=data_dir,
        batch_size=2,
        output_names=["output_l1"],
    ).map(lambda x, y: (x, y["output_l1"]))
    images, masks = _sorted_batches(from_tfds)
    expected_images, expected_masks = _sorted_batches(
        data.make_dataset(pairs[:3], batch_size=2)
    )
    np.testing.assert_array_equal(masks, expected_masks)
    # Gray is rounded to 8 bits when stored; resizing keeps that within 1/255.
    assert np.abs(images - expected_images).max() <= 1.0 / 255 + 1e-6


def _dsb_layout_from_components(pair, root):
    """A DSB-style sample: the real image, one mask file per connected nucleus."""
    sample = root / pair.stem
    (sample / "images").mkdir(parents=True)
    (sample / "masks").mkdir()
    cv2.imwrite(str(sample / "images" / f"{pair.stem}.png"), cv2.imread(pair.image))
    merged = cv2.imread(pair.masks[0], cv2.IMREAD_GRAYSCALE)
    count, labels = cv2.connectedComponents((merged > 0).astype(np.uint8))
    for k in range(1, count):
        cv2.imwrite(str(sample / "masks" / f"n{k:03d}.png"), (labels == k) * 255)
    return merged, count - 1


def test_dsb_layout_union_in_pipeline_and_tfds(shared_data, tmp_path):
    pair = _val_pairs(shared_data, 2)[1]
    merged, nuclei = _dsb_layout_from_components(pair, tmp_path / "stage1_train")
    pairs = data.dsb2018_pairs(tmp_path / "stage1_train")
    assert len(pairs) == 1 and len(pairs[0].masks) == nuclei > 5
    size = merged.shape
    _, masks = _sorted_batches(data.make_dataset(pairs, image_size=size))
    np.testing.assert_array_equal(masks[0, ..., 0], merged > 0)
    data.prepare_tfds_folder("dsb", {"train": pairs}, tmp_path / "tfds", channels=3)
    example = next(
        iter(
            tfds.load(
                "segmentation_folder/dsb", split="train", data_dir=tmp_path / "tfds"
            )
        )
    )
    np.testing.assert_array_equal(example["segmentation_mask"].numpy()[..., 0], merged)
    rgb = cv2.cvtColor(cv2.imread(pair.image), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(example["image"].numpy(), rgb)


@pytest.fixture
def trimaps(tmp_path):
    """Pet-style trimaps: 1 = object, 2 = background, 3 = outline."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    maps = rng.integers(1, 4, (3, 32, 32), dtype=np.uint8)
    for k, trimap in enumerate(maps):
        cv2.imwrite(str(tmp_path / "images" / f"{k}.png"), trimap * 80)
        cv2.imwrite(str(tmp_path / "masks" / f"{k}.png"), trimap)
    pairs = data.folder_pairs(tmp_path / "images", tmp_path / "masks")
    data.prepare_tfds_folder("tri", {"train": pairs}, tmp_path / "tfds", channels=3)
    return maps, tmp_path / "tfds"


def test_mask_map_turns_a_trimap_into_targets(trimaps):
    maps, data_dir = trimaps
    kwargs = dict(data_dir=data_dir, image_size=(32, 32), channels=3, batch_size=3)
    images, binary = _sorted_batches(
        data.tfds_dataset(
            "segmentation_folder/tri", "train", mask_map={1: 1, 2: 0, 3: 1}, **kwargs
        )
    )
    assert images.shape == (3, 32, 32, 3)
    truth = maps != 2
    order = np.argsort(truth.sum(axis=(1, 2)))
    np.testing.assert_array_equal(binary[..., 0], truth[order])
    _, classes = _sorted_batches(
        data.tfds_dataset(
            "segmentation_folder/tri",
            "train",
            mask_map={1: 0, 2: 1, 3: 2},
            num_classes=3,
            **kwargs,
        )
    )
    assert classes.dtype == np.int32
    assert sorted(classes.sum(axis=(1, 2, 3))) == sorted((maps - 1).sum(axis=(1, 2)))


def test_tfds_errors_name_the_feature_and_the_example(trimaps):
    _, data_dir = trimaps
    with pytest.raises(ValueError, match=r"no feature 'label'.*'segmentation_mask'"):
        data.tfds_dataset(
            "segmentation_folder/tri", "train", mask_key="label", data_dir=data_dir
        )
    ds = data.tfds_dataset(
        "segmentation_folder/tri",
        "train",
        data_dir=data_dir,
        image_size=(32, 32),
        mask_map={1: 1, 2: 0},
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"segmentation_folder/tri/train example .* has values 3 that are not",
    ) as caught:
        list(ds)
    # The Python conversion did not raise; TF stopped the pipeline with the
    # error it returned, which reads back as the DataError naming the example.
    assert "Traceback" not in caught.value.message
    error = data.as_data_error(caught.value)
    assert isinstance(error, DataError)
    assert error.path.startswith("segmentation_folder/tri/train example ")
    with pytest.raises(DataError, match="has values 3 that are not in mask_map"):
        with data.data_errors():
            list(ds)


def test_unprepared_folder_data_set_says_how_to_prepare_it(tmp_path):
    with pytest.raises(ValueError, match=r"not prepared .*prepare_tfds_folder\('nope'"):
        data.tfds_dataset("segmentation_folder/nope", "train", data_dir=tmp_path)


def test_prepare_tfds_folder_rejects_bad_input(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((8, 8), np.uint16))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((8, 8), np.uint8))
    pairs = data.folder_pairs(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(ValueError, match="Received: name='Bad-Name'"):
        data.prepare_tfds_folder("Bad-Name", {"train": pairs}, tmp_path / "tfds")
    with pytest.raises(ValueError, match="Received: split name 'Train'"):
        data.prepare_tfds_folder("ok", {"Train": pairs}, tmp_path / "tfds")
    with pytest.raises(ValueError, match="a.png' is 16-bit.*bit_depth=16"):
        data.prepare_tfds_folder("ok", {"train": pairs}, tmp_path / "tfds")
    builder = data.prepare_tfds_folder(
        "ok16", {"train": pairs}, tmp_path / "tfds", bit_depth=16
    )
    assert builder.info.features["image"].dtype == tf.uint16
