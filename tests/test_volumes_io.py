"""Volume files: axis order, NIfTI round trip, pairing, each bad file, processing."""

import gzip

import numpy as np
import pytest
from volume_helpers import ball_volume, write_dataset, write_nifti

from keras_unetpp import volumes
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.volumes import processing

nibabel = pytest.importorskip("nibabel")

# A rotated, anisotropic affine: a label map written from it must keep it.
AFFINE = np.array(
    [[0.0, 0.0, -1.5, 10.0], [0.0, 2.0, 0.0, -5.0], [0.8, 0.0, 0.0, 3.0], [0, 0, 0, 1]]
)


def test_nifti_is_read_as_z_y_x_with_its_spacing(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (z, y, x)
    path = tmp_path / "v.nii.gz"
    nibabel.save(
        nibabel.Nifti1Image(
            np.transpose(array, (2, 1, 0)), np.diag([0.5, 0.7, 2.0, 1])
        ),
        str(path),
    )
    volume = volumes.read_image(path)
    assert volume.array.shape == (4, 5, 6, 1)
    np.testing.assert_array_equal(volume.array[..., 0], array)
    # NIfTI zooms are (x, y, z) = (0.5, 0.7, 2.0): spacing is (z, y, x).
    np.testing.assert_allclose(volume.spacing, (2.0, 0.7, 0.5))


@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
def test_label_map_round_trip_keeps_affine_and_orientation(tmp_path, extension):
    image, label = ball_volume((9, 11, 13), (4, 5, 7), 3, classes=3)
    source = write_nifti(tmp_path / f"img{extension}", image, affine=AFFINE)
    reference = volumes.read_image(source)
    out = volumes.write_label_map(tmp_path / f"lab{extension}", label, reference)
    written = nibabel.load(str(out))
    np.testing.assert_allclose(written.affine, AFFINE)
    assert written.shape == nibabel.load(str(source)).shape == (13, 11, 9)
    assert written.get_data_dtype() == np.uint8
    # Voxel (z, y, x) of the label is voxel (x, y, z) of the file.
    np.testing.assert_array_equal(np.asarray(written.dataobj)[7, 5, 4], label[4, 5, 7])
    np.testing.assert_array_equal(volumes.read_label(out, 3).array, label)
    with pytest.raises(FileExistsError):
        volumes.write_label_map(out, label, reference)


def test_npy_label_map_round_trip(tmp_path):
    label = np.random.default_rng(0).integers(0, 3, (5, 6, 7)).astype(np.uint8)
    out = volumes.write_label_map(tmp_path / "lab.npy", label)
    np.testing.assert_array_equal(np.load(out), label)


def test_pairs_by_stem_in_msd_and_plain_layouts(tmp_path):
    root = write_dataset(tmp_path / "plain", count=3)
    images, labels = volumes.find_volume_folders(root)
    pairs = volumes.volume_pairs(images, labels)
    assert [p.stem for p in pairs] == ["case_000", "case_001", "case_002"]
    assert all(p.label.endswith(p.stem + ".nii.gz") for p in pairs)
    msd = tmp_path / "msd"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    image, label = ball_volume((8, 8, 8), (4, 4, 4), 2)
    write_nifti(msd / "imagesTr" / "a.nii.gz", image)
    np.save(msd / "labelsTr" / "a.npy", label)  # another format, same stem
    (msd / "imagesTr" / "._a.nii.gz").write_bytes(b"macOS resource fork")
    images, labels = volumes.find_volume_folders(msd)
    assert images.name == "imagesTr" and labels.name == "labelsTr"
    (pair,) = volumes.volume_pairs(images, labels)
    assert pair.stem == "a" and pair.label.endswith("a.npy")


def _bad_case(tmp_path, case):
    """A one-pair data set whose `case` is broken; returns (pairs, bad path)."""
    root = write_dataset(tmp_path / case, count=1, shape=(8, 10, 12))
    image = root / "images" / "case_000.nii.gz"
    label = root / "labels" / "case_000.nii.gz"
    good_image, good_label = ball_volume((8, 10, 12), (4, 5, 6), 3, classes=3)
    bad = image
    if case == "garbage":
        image.write_bytes(b"not a nifti file at all")
    elif case == "truncated":
        image.write_bytes(image.read_bytes()[:200])
    elif case == "nan":
        good_image[2, 3, 4] = np.nan
        write_nifti(image, good_image)
    elif case == "shape":
        write_nifti(label, good_label[:, :, :-1])
        bad = label
    elif case == "label_value":
        good_label[1, 1, 1] = 3  # num_classes=3 allows 0..2
        write_nifti(label, good_label)
        bad = label
    elif case == "label_fraction":
        write_nifti(label, good_label.astype(np.float32) * 0.5)
        bad = label
    elif case == "single_slice":
        write_nifti(image, good_image[:1])
    elif case == "npy_2d":
        image.unlink()
        image = root / "images" / "case_000.npy"
        np.save(image, good_image[0])
        bad = image
    return volumes.volume_pairs(root / "images", root / "labels"), bad


BAD_CASES = {
    "garbage": "cannot be read as a NIfTI",
    "truncated": "cannot be read as a NIfTI",
    "nan": "NaN or infinite voxel",
    "shape": "label map of shape",
    "label_value": "do not fit num_classes=3",
    "label_fraction": "do not fit num_classes=3",
    "single_slice": "2D image in a folder of 3D volumes",
    "npy_2d": "2D array",
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_volume_stops_the_pipeline_naming_the_file(tmp_path, case):
    pairs, bad = _bad_case(tmp_path, case)
    with pytest.raises(DataError, match=BAD_CASES[case]) as info:
        volumes.make_volume_dataset(pairs, patch_size=8, num_classes=3, depth=2)
    assert info.value.path == str(bad)
    assert str(bad) in str(info.value)
    assert volumes.check_volumes(pairs, {"num_classes": 3})[0][0] == "case_000"


def test_pairing_errors_name_the_file(tmp_path):
    root = write_dataset(tmp_path / "d", count=2, shape=(8, 8, 8))
    (root / "labels" / "case_001.nii.gz").unlink()
    with pytest.raises(DataError, match="no label map") as info:
        volumes.volume_pairs(root / "images", root / "labels")
    assert info.value.path.endswith("case_001.nii.gz")
    png = root / "images" / "slice.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="2D image file in a folder of 3D") as info:
        volumes.volume_pairs(root / "images", root / "labels")
    assert info.value.path == str(png)


def test_npy_without_header_cannot_be_resampled(tmp_path):
    root = write_dataset(tmp_path / "d", count=1, shape=(8, 8, 8), extension=".npy")
    pairs = volumes.volume_pairs(root / "images", root / "labels")
    with pytest.raises(DataError, match="no voxel spacing") as info:
        volumes.load_volumes(pairs, {"num_classes": 3, "spacing": (2, 2, 2)})
    assert info.value.path == pairs[0].image


def test_zscore_and_ct_window_by_hand():
    image = np.array([0.0, 0.0, 2.0, 4.0, 6.0, 0.0, 0.0, 0.0], np.float32)
    image = image.reshape(2, 2, 2, 1)
    z = processing.normalize_intensity(image, "zscore")
    values = image.ravel().astype(np.float64)
    np.testing.assert_allclose(z.ravel(), (values - values.mean()) / values.std(), 1e-6)
    # Over the nonzero voxels 2, 4, 6: mean 4, std sqrt(8/3); zeros stay 0.
    nz = processing.normalize_intensity(image, "zscore-nonzero").ravel()
    np.testing.assert_allclose(nz[2:5], np.array([-2, 0, 2]) / np.sqrt(8 / 3), 1e-6)
    assert (nz[[0, 1, 5, 6, 7]] == 0).all()
    hu = np.array([-2000.0, -1000.0, 0.0, 400.0, 3000.0]).reshape(1, 1, 5, 1)
    ct = processing.normalize_intensity(hu, "ct", (-1000, 400)).ravel()
    np.testing.assert_allclose(ct, [0.0, 0.0, 1000 / 1400, 1.0, 1.0], 1e-6)
    with pytest.raises(InputError, match="ct_window"):
        processing.normalize_intensity(hu, "ct", (400, -1000))


def test_linear_resampling_matches_scipy_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    volume = np.random.default_rng(1).random((6, 9, 5)).astype(np.float32)
    shape = (12, 6, 7)
    ours = processing.resample(volume, shape, order=1)
    zoom = [m / n for m, n in zip(shape, volume.shape)]
    theirs = ndimage.zoom(volume, zoom, order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_nearest_resampling_of_labels_and_target_spacing(tmp_path):
    label = np.array([0, 1, 2, 1], np.uint8).reshape(4, 1, 1)
    # 4 -> 8 voxels: each voxel doubled (sample points 0.5 * i - 0.25).
    doubled = processing.resample(label, (8, 1, 1), order=0)
    np.testing.assert_array_equal(doubled.ravel(), [0, 0, 1, 1, 2, 2, 1, 1])
    image, lab = ball_volume((8, 10, 12), (4, 5, 6), 3, classes=3)
    write_nifti(tmp_path / "i.nii.gz", image, spacing=(2.0, 1.0, 0.5))
    write_nifti(tmp_path / "l.nii.gz", lab, spacing=(2.0, 1.0, 0.5))
    pair = volumes.VolumePair(
        "x", str(tmp_path / "i.nii.gz"), str(tmp_path / "l.nii.gz")
    )
    (loaded,) = volumes.load_volumes([pair], {"num_classes": 3, "spacing": (1, 1, 1)})
    # 8 x 2 mm, 10 x 1 mm, 12 x 0.5 mm -> 16, 10, 6 voxels of 1 mm.
    assert loaded[0].shape == (16, 10, 6, 1) and loaded[1].shape == (16, 10, 6)
    assert set(np.unique(loaded[1])) <= {0, 1, 2}


def test_gzip_payload_is_a_valid_nifti(tmp_path):
    out = volumes.write_label_map(tmp_path / "l.nii.gz", np.zeros((3, 4, 5), np.uint8))
    assert gzip.decompress(out.read_bytes())[344:348] == b"n+1\x00"


def test_volume_source_splits_by_manifest_or_at_random(tmp_path):
    from keras_unetpp.volumes import runs as volume_runs

    root = write_dataset(tmp_path / "d", count=5, shape=(8, 8, 8))
    source = volume_runs.volume_source(
        images_dir=root / "images", labels_dir=root / "labels", val_fraction=0.4
    )
    train = volume_runs.source_pairs(source, "train")
    val = volume_runs.source_pairs(source, "val")
    assert len(train) == 3 and len(val) == 2  # round(0.4 * 5)
    assert {p.stem for p in train} | {p.stem for p in val} == {
        f"case_{k:03d}" for k in range(5)
    }
    assert volume_runs.source_pairs(source, "val") == val  # seeded: the same
    (root / "manifest.csv").write_text(
        "stem,suggested_split\n"
        + "".join(f"case_{k:03d},{'val' if k == 4 else 'train'}\n" for k in range(5))
    )
    source = volume_runs.volume_source(data_dir=root)
    assert [p.stem for p in volume_runs.source_pairs(source, "val")] == ["case_004"]
    assert len(volume_runs.source_pairs(source, "train")) == 4
    assert volume_runs.is_volume_data(data_dir=root)
    assert volume_runs.is_volume_data(images_dir=root / "images")
    assert not volume_runs.is_volume_data(data_dir=tmp_path)
