"""TensorFlow Datasets: any segmentation data set by name, and local folders.

`tfds_dataset` reads any TFDS data set that has an image feature and a mask
feature and runs it through the same checks and processing as
`make_dataset`. `prepare_tfds_folder` writes a local folder data set (lists
of `SamplePair`) as a TFDS data set once; afterwards
`tfds.load("segmentation_folder/<name>", data_dir=...)` (or `tfds_dataset`)
loads it by name, offline, without the original files.
"""

import dataclasses
import functools
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_unetpp.data import decode
from keras_unetpp.data.pairs import SamplePair
from keras_unetpp.data.pipeline import checked_map, finish, processing_settings
from keras_unetpp.errors import DataError, InputError

BUILDER_NAME = "segmentation_folder"

_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(eq=False)
class SegmentationFolderConfig(tfds.core.BuilderConfig):
    """The config of one local data set: its splits and pixel formats.

    Attributes:
        splits: dict from split name to a tuple of `SamplePair`.
        channels: int, 1 or 3, the channels images are stored with.
        bit_depth: int, 8 or 16, the bit depth images are stored with.
        mask_bit_depth: int, 8 or 16, the bit depth masks are stored with.
    """

    splits: dict = dataclasses.field(default_factory=dict)
    channels: int = 1
    bit_depth: int = 8
    mask_bit_depth: int = 8


class SegmentationFolder(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for image/mask folder data sets (see `prepare_tfds_folder`).

    Each data set is one config, named by the user; its examples are
    `{"image", "segmentation_mask", "file_name"}`. The image is stored with
    the config's channels and bit depth (alpha dropped, gray <-> RGB
    converted, 8-bit images scaled by 257 to 16 bits, never the other way);
    the mask is the raw mask, or the union (elementwise maximum) of a DSB
    sample's nucleus masks, as a one-channel PNG.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _info(self):
        config = self.builder_config
        image_dtype = np.uint8 if config.bit_depth == 8 else np.uint16
        mask_dtype = np.uint8 if config.mask_bit_depth == 8 else np.uint16
        return self.dataset_info_from_configs(
            description=config.description or "Image/mask folder data set.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, config.channels), dtype=image_dtype
                    ),
                    "segmentation_mask": tfds.features.Image(
                        shape=(None, None, 1), dtype=mask_dtype
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The files are local.
        return {
            split: self._generate_examples(pairs)
            for split, pairs in self.builder_config.splits.items()
        }

    def _generate_examples(self, pairs):
        config = self.builder_config
        for pair in pairs:
            image = _stored_image(
                decode.read_image(pair.image),
                config.channels,
                config.bit_depth,
                pair.image,
            )
            mask = None
            for path in pair.masks:
                raw = decode.read_image(path, palette_indices=True)
                plane = decode.mask_plane(raw, path)
                if plane.shape != image.shape[:2]:
                    raise DataError(
                        f"The mask {path!r} is {plane.shape[1]}x{plane.shape[0]} "
                        f"(width x height) but its image {pair.image!r} is "
                        f"{image.shape[1]}x{image.shape[0]}; expected the same "
                        "size.",
                        path,
                    )
                plane = _stored_mask(plane, config.mask_bit_depth, path)
                mask = plane if mask is None else np.maximum(mask, plane)
            yield (
                pair.stem,
                {
                    "image": image,
                    "segmentation_mask": mask[..., None],
                    "file_name": pair.image.replace("\\", "/").rsplit("/", 1)[-1],
                },
            )


def _stored_image(array, channels, bit_depth, path):
    array = decode.drop_alpha(array, path)
    if array.dtype == np.uint16 and bit_depth == 8:
        raise DataError(
            f"The image {path!r} is 16-bit; prepare the data set with "
            "bit_depth=16 to keep its values. Received: bit_depth=8",
            path,
        )
    if array.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"The image {path!r} has pixel type {array.dtype}; a TFDS folder "
            "data set stores 8- or 16-bit images.",
            path,
        )
    if array.dtype == np.uint8 and bit_depth == 16:
        array = array.astype(np.uint16) * np.uint16(257)
    if array.shape[-1] != channels:
        if channels == 3:
            array = np.repeat(array, 3, axis=-1)
        else:
            luma = array.astype(np.float32) @ decode.LUMA_WEIGHTS[:, None]
            array = np.round(luma).astype(array.dtype)
    return np.ascontiguousarray(array)


def _stored_mask(plane, mask_bit_depth, path):
    if not np.issubdtype(plane.dtype, np.integer):
        raise DataError(
            f"The mask {path!r} has pixel type {plane.dtype}; masks must be "
            "8- or 16-bit integers.",
            path,
        )
    top = 255 if mask_bit_depth == 8 else 65535
    if plane.size and int(plane.max()) > top:
        raise DataError(
            f"The mask {path!r} has values up to {int(plane.max())}, more than "
            f"{mask_bit_depth}-bit masks hold; use mask_bit_depth=16. "
            f"Received: mask_bit_depth={mask_bit_depth}",
            path,
        )
    return plane.astype(np.uint8 if mask_bit_depth == 8 else np.uint16)


def prepare_tfds_folder(
    name,
    splits,
    data_dir,
    channels=1,
    bit_depth=8,
    mask_bit_depth=8,
    description=None,
    overwrite=False,
):
    """Writes a local image/mask data set as a TFDS data set, once.

    Afterwards the data set loads by name, offline and without the original
    files: `tfds.load("segmentation_folder/<name>", data_dir=data_dir)` or
    `tfds_dataset("segmentation_folder/<name>", split, data_dir=data_dir)`.
    Any bad file stops the preparation with an error naming it. If the data
    set is already prepared in `data_dir` it is reused unless `overwrite`.

    Args:
        name: str, the data set's name (the TFDS config name): lowercase
            letters, digits and `_`, starting with a letter.
        splits: dict from split name (e.g. `"train"`, `"val"`) to a list of
            `SamplePair`.
        data_dir: path of the TFDS data directory to write to.
        channels: int, 1 or 3, the image channels to store. Defaults to `1`.
        bit_depth: int, 8 or 16, the image bit depth to store. Defaults to
            `8`.
        mask_bit_depth: int, 8 or 16, the mask bit depth to store. Defaults
            to `8`.
        description: str, a description for the data set's info, or `None`.
            Defaults to `None`.
        overwrite: bool, rebuild the data set even if it is prepared.
            Defaults to `False`.

    Returns:
        The prepared `tfds.core.DatasetBuilder`.

    Example:

    ```python
    root = "dsb2018_nuclei"
    splits = {
        split: data.folder_pairs(
            f"{root}/images", f"{root}/masks",
            stems=data.manifest_stems(f"{root}/manifest.csv", split),
        )
        for split in ("train", "val")
    }
    data.prepare_tfds_folder("dsb2018", splits, data_dir="~/tfds", channels=3)
    # Later, offline:
    ds = tfds.load("segmentation_folder/dsb2018", split="val", data_dir="~/tfds")
    ```
    """
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise InputError(
            "`name` must be lowercase letters, digits and '_', starting with "
            f"a letter. Received: name={name!r}"
        )
    if not isinstance(splits, dict) or not splits:
        raise InputError(
            "`splits` must be a non-empty dict from split name to a list of "
            f"SamplePair. Received: splits={splits!r:.200}"
        )
    checked = {}
    for split, pairs in splits.items():
        if not isinstance(split, str) or not _NAME_PATTERN.fullmatch(split):
            raise InputError(
                "Split names must be lowercase letters, digits and '_', starting "
                f"with a letter. Received: split name {split!r}"
            )
        pairs = [SamplePair(*p) for p in pairs]
        if not pairs:
            raise InputError(f"The split {split!r} has no pairs.")
        decode.check_files_exist(pairs)
        checked[split] = tuple(pairs)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise InputError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    for arg, value in (("bit_depth", bit_depth), ("mask_bit_depth", mask_bit_depth)):
        if value not in (8, 16) or isinstance(value, bool):
            raise InputError(f"`{arg}` must be 8 or 16. Received: {arg}={value!r}")
    config = SegmentationFolderConfig(
        name=name,
        version=SegmentationFolder.VERSION,
        description=description,
        splits=checked,
        channels=channels,
        bit_depth=bit_depth,
        mask_bit_depth=mask_bit_depth,
    )
    builder = SegmentationFolder(config=config, data_dir=str(data_dir))
    mode = (
        tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        if not overwrite
        else tfds.download.GenerateMode.FORCE_REDOWNLOAD
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, download_mode=mode
        )
    )
    return builder


def _prepare_example(options, dataset, image, mask, example_id):
    name = f"{dataset} example {example_id.decode()}"
    return decode.prepare_pair(image, [mask], options, name, [name])


def tfds_dataset(
    name,
    split,
    image_key="image",
    mask_key="segmentation_mask",
    mask_map=None,
    data_dir=None,
    download=True,
    **processing,
):
    """Builds a training pipeline from any TFDS image-segmentation data set.

    The data set is loaded with `tfds.load` (downloaded and prepared on first
    use when `download=True`), its `image_key` and `mask_key` features are
    checked and converted by the same rules as files in `make_dataset`, then
    resized or cropped, cached,
    shuffled, augmented, batched and prefetched in the same way.

    oxford_iiit_pet is an example: its `segmentation_mask` is a trimap,
    1 = pet, 2 = background, 3 = pet outline. For pet-vs-background use
    `mask_map={1: 1, 2: 0, 3: 1}` (num_classes=1); for three classes use
    `mask_map={1: 0, 2: 1, 3: 2}, num_classes=3`.

    Args:
        name: str, the TFDS name, e.g. `"oxford_iiit_pet"` or
            `"segmentation_folder/dsb2018"` (see `prepare_tfds_folder`).
        split: str, the TFDS split, e.g. `"train"` or `"train[:80%]"`.
        image_key: str, the image feature. Defaults to `"image"`.
        mask_key: str, the mask feature. Defaults to `"segmentation_mask"`.
        mask_map: dict from raw mask values to classes (or 0/1), or `None`.
            Defaults to `None`.
        data_dir: the TFDS data directory, or `None` for TFDS's default.
            Defaults to `None`.
        download: bool, download and prepare the data set if needed.
            Defaults to `True`.
        **processing: the processing arguments of `make_dataset`
            (`image_size`, `channels`, `num_classes`, `batch_size`,
            `training`, `augmentation`, `output_names`, `resize_mode`,
            `cache`, `shuffle_buffer`, `seed`, `drop_remainder`,
            `deterministic`, `mask_threshold`, `invert_mask`,
            `pixel_scaling`, `depth`).

    Returns:
        A `tf.data.Dataset` of `(image, target)` as from `make_dataset`.
        TFDS examples are checked while the pipeline runs: a bad one stops
        it with a `tf.errors.InvalidArgumentError` naming the example's
        TFDS id, which `data.data_errors()` (or `data.as_data_error`)
        turns into a `DataError` with that id as `.path`.

    Example:

    ```python
    train_ds = data.tfds_dataset(
        "oxford_iiit_pet", "train", channels=3, image_size=(128, 128),
        mask_map={1: 1, 2: 0, 3: 1}, training=True,
        augmentation=data.Augmentation(),
    )
    ```
    """
    settings = processing_settings(mask_map=mask_map, **processing)
    options = settings.decode
    try:
        ds, info = tfds.load(
            name,
            split=split,
            data_dir=None if data_dir is None else str(data_dir),
            download=download,
            shuffle_files=settings.training,
            with_info=True,
            read_config=tfds.ReadConfig(add_tfds_id=True, shuffle_seed=settings.seed),
        )
    except ValueError as e:
        if not str(name).startswith(BUILDER_NAME + "/"):
            raise
        raise InputError(
            f"The folder data set {name!r} is not prepared in {str(data_dir)!r}; "
            "write it once with keras_unetpp.data.prepare_tfds_folder("
            f"{str(name).split('/', 1)[1]!r}, splits, data_dir). "
            f"Received: name={name!r}, data_dir={data_dir!r}"
        ) from e
    features = list(info.features.keys())
    for arg, key in (("image_key", image_key), ("mask_key", mask_key)):
        if key not in features:
            raise InputError(
                f"The TFDS data set {name!r} has no feature {key!r}; its "
                f"features are {features}. Received: {arg}={key!r}"
            )
    prepare = checked_map(
        functools.partial(_prepare_example, options, f"{name}/{split}"),
        options.channels,
        decode.mask_dtype(options.num_classes),
        "prepare_example",
    )

    def decode_map(example):
        # The Python conversion never raises; a bad example stops the
        # pipeline with an error that `data.as_data_error` reads.
        return prepare(example[image_key], example[mask_key], example["tfds_id"])

    ds = ds.map(decode_map, num_parallel_calls=tf.data.AUTOTUNE)
    # A bad example can still stop it while it is read: not cached (see
    # `finish`), so that a second pass fails again instead of dropping it.
    return finish(ds, settings, may_fail=True)
