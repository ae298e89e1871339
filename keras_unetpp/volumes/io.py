"""Reading, pairing and writing 3D volumes: NIfTI (`.nii`, `.nii.gz`) and `.npy`.

Axis order. NIfTI stores voxels as `(x, y, z[, channel])`; keras_unetpp's 3D
models take `(depth, height, width, channels)`. A NIfTI volume is read
transposed to `(z, y, x, channels)`, so that the last two axes are the
in-plane (axial) axes, those of the in-plane quarter turns of the
augmentation and of the test-time augmentation of `predict_tiled`. Label
maps are written back in NIfTI's own order, with the affine and header of
the image they were predicted from, so that a viewer (3D Slicer,
ITK-SNAP) overlays them on it. `.npy` volumes are taken as they are:
`(depth, height, width)` or `(depth, height, width, channels)`.

Every check of a file raises a `keras_unetpp.errors.DataError` that names
it: unreadable, a 2D file where a volume is expected, NaN or infinite
voxels, an image and label map of different shapes, label values that are
not class indices of `num_classes`.
"""

import collections
import gzip
import io
import os
import pathlib

import numpy as np

from keras_unetpp import atomic
from keras_unetpp.errors import DataError, InputError

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".npy")
# 2D image files: found in a volume folder they are an error, not skipped.
_IMAGE_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Folder names of a volume data set: the Medical Segmentation Decathlon's
# (imagesTr/labelsTr), the generic images/labels, and the 2D CLI's masks/.
IMAGE_FOLDERS = ("imagesTr", "images")
LABEL_FOLDERS = ("labelsTr", "labels", "masks")

VolumePair = collections.namedtuple("VolumePair", ["stem", "image", "label"])
VolumePair.__doc__ = """One 3D sample: an image volume file and its label map file.

Fields:
    stem: str, the sample's name (the file name without its extension).
    image: str, path of the image volume.
    label: str, path of the label map, or `None` (an image to predict).
"""

Volume = collections.namedtuple("Volume", ["array", "spacing", "affine", "header"])
Volume.__doc__ = """A volume read from a file.

Fields:
    array: NumPy array `(depth, height, width, channels)` for an image,
        `(depth, height, width)` for a label map.
    spacing: tuple of 3 floats, the voxel size along (depth, height,
        width) in the file's units (mm for NIfTI), or `None` (`.npy`).
    affine: the 4x4 NIfTI affine, or `None` (`.npy`).
    header: the `nibabel` header, or `None` (`.npy`).
"""


def split_extension(name):
    """`(stem, extension)` of a volume file name, or `(name, None)`.

    Example:

    ```python
    split_extension("hippocampus_001.nii.gz")  # ("hippocampus_001", ".nii.gz")
    ```
    """
    lower = name.lower()
    for extension in VOLUME_EXTENSIONS:
        if lower.endswith(extension):
            return name[: -len(extension)], extension
    return name, None


def is_volume_file(path):
    """Whether `path` has a volume extension (`.nii`, `.nii.gz`, `.npy`)."""
    return split_extension(os.path.basename(str(path)))[1] is not None


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise InputError(
            "Reading NIfTI volumes needs the `nibabel` package: `pip install "
            "nibabel`. Received: a .nii/.nii.gz file"
        ) from None
    return nibabel


def _read_nifti(path):
    nibabel = _nibabel()
    try:
        image = nibabel.load(path)
        array = np.asanyarray(image.dataobj)
    except Exception as e:  # noqa: BLE001 - nibabel, gzip, zlib, OSError, ...
        raise DataError(
            f"{path}: cannot be read as a NIfTI volume ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})",
            path=path,
        ) from None
    zooms = tuple(float(z) for z in image.header.get_zooms())
    # (x, y, z[, c]) -> (z, y, x[, c]).
    order = (2, 1, 0, *range(3, array.ndim)) if array.ndim >= 3 else None
    if order is not None:
        array = np.transpose(array, order)
        spacing = tuple(zooms[:3][::-1])
    else:
        spacing = None
    return Volume(array, spacing, image.affine, image.header)


def _read_npy(path):
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - ValueError, OSError, EOFError, ...
        raise DataError(
            f"{path}: cannot be read as a NumPy .npy volume ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})",
            path=path,
        ) from None
    return Volume(array, None, None, None)


def read_raw(path):
    """Reads a volume file as stored, with no checks of its contents.

    Args:
        path: a `.nii`, `.nii.gz` or `.npy` file.

    Returns:
        A `Volume` (array in `(depth, height, width[, channels])` order).

    Raises:
        DataError: the file cannot be read, or is not a volume file.
    """
    path = str(path)
    extension = split_extension(os.path.basename(path))[1]
    if extension is None:
        raise DataError(
            f"{path}: not a volume file; expected one of {VOLUME_EXTENSIONS}",
            path=path,
        )
    if not os.path.isfile(path):
        raise DataError(f"{path}: the file does not exist", path=path)
    if extension == ".npy":
        return _read_npy(path)
    return _read_nifti(path)


def _spatial_check(path, shape, what):
    if len(shape) < 3:
        raise DataError(
            f"{path}: a {len(shape)}D array of shape {shape} in a folder of 3D "
            f"volumes; expected a {what} (depth, height, width)",
            path=path,
        )
    if 1 in shape[:3]:
        raise DataError(
            f"{path}: a single slice (shape {shape}): a 2D image in a folder of "
            f"3D volumes; expected a {what} with every spatial axis > 1",
            path=path,
        )


def read_image(path, channels=1):
    """Reads and checks an image volume.

    Args:
        path: a `.nii`, `.nii.gz` or `.npy` file.
        channels: int, the channels the model takes. Defaults to `1`.

    Returns:
        A `Volume` whose array is float32 `(depth, height, width, channels)`.

    Raises:
        DataError: unreadable, 2D, wrong channel count, or NaN/infinite
            voxels.
    """
    volume = read_raw(path)
    array = volume.array
    _spatial_check(path, array.shape, "volume")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(
            f"{path}: a {array.ndim}D array of shape {array.shape}; expected "
            "(depth, height, width) or (depth, height, width, channels)",
            path=path,
        )
    if array.shape[-1] != channels:
        raise DataError(
            f"{path}: {array.shape[-1]} channel(s) (shape {array.shape}); the "
            f"model takes {channels}",
            path=path,
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataError(f"{path}: voxels of type {array.dtype}", path=path)
    array = np.asarray(array, np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0][:3])
        raise DataError(
            f"{path}: {int(bad.sum())} NaN or infinite voxel(s), the first at "
            f"(depth, height, width) {where}",
            path=path,
        )
    return volume._replace(array=array)


def read_label(path, num_classes=1, shape=None):
    """Reads and checks a label map.

    Args:
        path: a `.nii`, `.nii.gz` or `.npy` file.
        num_classes: int, 1 (binary: values 0 and 1) or the number of
            classes (values 0..num_classes-1). Defaults to `1`.
        shape: the spatial shape `(depth, height, width)` of its image, or
            `None`. Defaults to `None`.

    Returns:
        A `Volume` whose array is uint8 (uint16 for more than 256 classes)
        `(depth, height, width)`.

    Raises:
        DataError: unreadable, 2D, a shape other than the image's, or values
            that are not class indices.
    """
    volume = read_raw(path)
    array = volume.array
    _spatial_check(path, array.shape, "label map")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(
            f"{path}: a label map of shape {array.shape}; expected (depth, "
            "height, width) class indices",
            path=path,
        )
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise DataError(
            f"{path}: label map of shape {tuple(array.shape)} but its image has "
            f"shape {tuple(shape)} (depth, height, width); they must match",
            path=path,
        )
    top = 1 if num_classes == 1 else num_classes - 1
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: label values of type {array.dtype}", path=path)
    values = np.unique(array)
    bad = values[~np.isfinite(values) | (values < 0) | (values > top)]
    if not np.issubdtype(array.dtype, np.integer):
        fraction = np.isfinite(values) & (values != np.round(values))
        bad = np.union1d(bad, values[fraction])
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise DataError(
            f"{path}: label value(s) {shown} do not fit num_classes={num_classes} "
            f"(expected integers 0..{top})",
            path=path,
        )
    dtype = np.uint8 if top < 256 else np.uint16
    return volume._replace(array=array.astype(dtype))


def find_volume_folders(root):
    """The image and label folders of a volume data set folder.

    Looks for `imagesTr/` + `labelsTr/` (the Medical Segmentation
    Decathlon's layout), then `images/` + `labels/` (or `masks/`).

    Args:
        root: the data set folder.

    Returns:
        `(images_dir, labels_dir)` as `pathlib.Path`s, or `None` if `root`
        holds no such pair of folders with a volume file in the images
        folder.
    """
    root = pathlib.Path(root)
    for images in IMAGE_FOLDERS:
        for labels in LABEL_FOLDERS:
            if (root / images).is_dir() and (root / labels).is_dir():
                if any(
                    is_volume_file(p) and not p.name.startswith(".")
                    for p in (root / images).iterdir()
                ):
                    return root / images, root / labels
    return None


def _listing(folder, what):
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise InputError(f"The {what} folder does not exist. Received: {str(folder)!r}")
    files = {}
    for path in sorted(folder.iterdir()):
        # Hidden files: macOS resource forks (._x.nii.gz) ship inside MSD tars.
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, extension = split_extension(path.name)
        if extension is None:
            if path.suffix.lower() in _IMAGE_2D_EXTENSIONS:
                raise DataError(
                    f"{path}: a 2D image file in a folder of 3D volumes; "
                    f"expected {', '.join(VOLUME_EXTENSIONS)} files",
                    path=path,
                )
            continue
        if stem in files:
            raise DataError(
                f"{path}: two volume files with the stem {stem!r} in {folder} "
                f"({os.path.basename(files[stem])} too)",
                path=path,
            )
        files[stem] = str(path)
    return files


def volume_pairs(images_dir, labels_dir=None, stems=None):
    """Pairs image volumes with their label maps by file stem.

    A stem is the file name without `.nii.gz`, `.nii` or `.npy`; the image
    and its label map may have different extensions. Hidden files are left
    out; any other 2D image file in either folder is an error.

    Args:
        images_dir: the folder of image volumes.
        labels_dir: the folder of label maps with the same stems, or `None`
            for images alone (to predict). Defaults to `None`.
        stems: list of stems to keep (e.g. one split of a manifest, see
            `keras_unetpp.data.manifest_stems`), or `None` for all.
            Defaults to `None`.

    Returns:
        A list of `VolumePair`, sorted by stem.

    Raises:
        DataError: an image without a label map (or the reverse), a 2D
            image file, two files of one stem.
        InputError: a folder does not exist, or holds no volumes.

    Example:

    ```python
    root = "../shared/data/msd_hippocampus"
    pairs = volumes.volume_pairs(f"{root}/images", f"{root}/labels")
    ```
    """
    images = _listing(images_dir, "images")
    if not images:
        raise InputError(
            f"No volume files ({', '.join(VOLUME_EXTENSIONS)}) in the images "
            f"folder. Received: images_dir={str(images_dir)!r}"
        )
    labels = None if labels_dir is None else _listing(labels_dir, "labels")
    if stems is not None:
        wanted = list(stems)
        missing = [s for s in wanted if s not in images]
        if missing:
            raise DataError(
                f"{len(missing)} stem(s) of the split have no image volume in "
                f"{images_dir}: {', '.join(map(repr, missing[:10]))}",
                path=os.path.join(str(images_dir), missing[0]),
            )
        images = {s: images[s] for s in wanted}
    if labels is not None:
        for stem, path in images.items():
            if stem not in labels:
                raise DataError(
                    f"{path}: no label map with the stem {stem!r} in {labels_dir}",
                    path=path,
                )
        if stems is None:
            for stem, path in labels.items():
                if stem not in images:
                    raise DataError(
                        f"{path}: a label map without an image volume of the "
                        f"stem {stem!r} in {images_dir}",
                        path=path,
                    )
    return [
        VolumePair(stem, images[stem], None if labels is None else labels[stem])
        for stem in sorted(images)
    ]


def write_label_map(path, labels, reference=None, overwrite=False):
    """Writes a label map, atomically, in the format its extension says.

    A NIfTI file (`.nii`, `.nii.gz`) gets the affine and header of
    `reference` (the image it was predicted from; its data type becomes
    uint8, or uint16 for more than 256 classes, without intensity
    scaling), so that viewers overlay it on that image; the array is
    written back in NIfTI's `(x, y, z)` order. A `.npy` file holds the
    array as given.

    Args:
        path: the file to write (`.nii`, `.nii.gz` or `.npy`).
        labels: integer array `(depth, height, width)`.
        reference: a `Volume` (from `read_image`) or a volume file path
            whose affine and header to copy, or `None` (an identity affine,
            1 mm voxels). Defaults to `None`.
        overwrite: bool, replace an existing file. Defaults to `False`.

    Returns:
        The path written, a `pathlib.Path`.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
    """
    path = pathlib.Path(path)
    extension = split_extension(path.name)[1]
    if extension is None:
        raise InputError(
            f"A label map is written as {', '.join(VOLUME_EXTENSIONS)}. "
            f"Received: path={str(path)!r}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; not overwritten")
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(
            f"`labels` must be (depth, height, width). Received: shape={labels.shape}"
        )
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16
    labels = labels.astype(dtype)
    if extension == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, labels)
        atomic.write_bytes(path, buffer.getvalue())
        return path
    nibabel = _nibabel()
    if reference is not None and not isinstance(reference, Volume):
        reference = read_raw(reference)
    affine = None if reference is None else reference.affine
    header = None if reference is None or reference.header is None else reference.header
    if header is not None:
        header = header.copy()
    if affine is None:
        affine = np.eye(4)
    image = nibabel.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine, header)
    image.set_data_dtype(dtype)
    image.header.set_slope_inter(1.0, 0.0)
    payload = image.to_bytes()
    if extension == ".nii.gz":
        payload = gzip.compress(payload, mtime=0)
    atomic.write_bytes(path, payload)
    return path
