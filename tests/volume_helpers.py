"""Small synthetic volumes on disk for the volume tests (NIfTI and .npy)."""

import pathlib

import numpy as np


def ball_volume(shape, centre, radius, classes=2, seed=0):
    """An image and label map: a ball (classes 1.. in shells), noise outside.

    The label is 1 inside `radius / 2` of `centre`, and, for `classes` > 2,
    2 between `radius / 2` and `radius`; the image is 100 + 50 * label plus
    Gaussian noise (sd 5).
    """
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    distance = np.linalg.norm(grid - np.asarray(centre, float), axis=-1)
    label = np.zeros(shape, np.uint8)
    if classes > 2:
        label[distance <= radius] = 2
    label[distance <= (radius / 2 if classes > 2 else radius)] = 1
    rng = np.random.default_rng(seed)
    image = (100 + 50 * label + rng.normal(0, 5, shape)).astype(np.float32)
    return image, label


def write_nifti(path, array, affine=None, spacing=None):
    """Writes `array` (given in (z, y, x) order) as NIfTI (x, y, z)."""
    import nibabel

    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    data = np.transpose(array, (2, 1, 0, *range(3, array.ndim)))
    image = nibabel.Nifti1Image(data, affine)
    if spacing is not None:
        image.header.set_zooms(tuple(spacing[::-1]))
    nibabel.save(image, str(path))
    return path


def write_dataset(root, count=4, shape=(20, 24, 28), classes=3, extension=".nii.gz"):
    """`root/images` + `root/labels` of `count` ball volumes; returns root."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(count):
        centre = [n // 2 + (k % 3) - 1 for n in shape]
        image, label = ball_volume(shape, centre, 6, classes, seed=k)
        stem = f"case_{k:03d}"
        if extension == ".npy":
            np.save(root / "images" / f"{stem}.npy", image)
            np.save(root / "labels" / f"{stem}.npy", label)
        else:
            write_nifti(root / "images" / f"{stem}{extension}", image)
            write_nifti(root / "labels" / f"{stem}{extension}", label)
    return root
