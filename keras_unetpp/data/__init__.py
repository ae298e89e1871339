"""Input pipelines: image/mask files and TFDS data sets -> `tf.data` for `fit`.

Sources: `folder_pairs` (images/ + masks/ matched by stem), `dsb2018_pairs`
(the 2018 Data Science Bowl download layout), `tfds_dataset` (any TFDS
segmentation data set) and `prepare_tfds_folder` (a local folder data set
as a TFDS data set, to load offline by name). `make_dataset` turns pairs into
batches; `Augmentation` configures the paired random transforms.

Bad data files raise a `keras_unetpp.errors.DataError` naming the file:
`make_dataset` checks every file before it builds the pipeline, and
`check_pairs` lists every problem. A file that breaks while a pipeline runs
(or a bad TFDS example) stops it with a TensorFlow error that
`data_errors()` / `as_data_error()` turn back into that `DataError`.
"""

from keras_unetpp.data.augment import Augmentation
from keras_unetpp.data.pairs import (
    IMAGE_EXTENSIONS,
    SamplePair,
    dsb2018_pairs,
    folder_pairs,
    manifest_stems,
    split_pairs,
)
from keras_unetpp.data.pipeline import (
    as_data_error,
    check_pairs,
    data_errors,
    make_dataset,
)
from keras_unetpp.data.tfds_source import prepare_tfds_folder, tfds_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "SamplePair",
    "as_data_error",
    "check_pairs",
    "data_errors",
    "dsb2018_pairs",
    "folder_pairs",
    "make_dataset",
    "manifest_stems",
    "prepare_tfds_folder",
    "split_pairs",
    "tfds_dataset",
]
