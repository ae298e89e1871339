"""3D volumes: NIfTI/NumPy files -> checked patches -> whole-volume inference.

`volume_pairs` pairs image volumes with label maps by stem (`imagesTr/` +
`labelsTr/`, or `images/` + `labels/`; `find_volume_folders` finds them);
`make_volume_dataset` builds a `tf.data` pipeline of random 3D patches
(a share forced onto foreground, flips and in-plane quarter turns) or of
whole volumes; `predict_volume` predicts a volume of any shape by sliding
window; `predict_volume_files` writes NIfTI label maps with the input's
affine and header; `evaluate_volume_levels` gives the per-level table.
Every bad file raises a `keras_unetpp.errors.DataError` naming it.
"""

from keras_unetpp.volumes.inference import (
    evaluate_volume_levels,
    format_volume_table,
    overlap_scores,
    predict_volume,
    predict_volume_files,
    write_volume_table,
)
from keras_unetpp.volumes.io import (
    VOLUME_EXTENSIONS,
    Volume,
    VolumePair,
    find_volume_folders,
    read_image,
    read_label,
    volume_pairs,
    write_label_map,
)
from keras_unetpp.volumes.pipeline import (
    check_volumes,
    load_image,
    load_volumes,
    make_volume_dataset,
    preprocessing,
)
from keras_unetpp.volumes.processing import INTENSITIES, normalize_intensity, resample

__all__ = [
    "INTENSITIES",
    "VOLUME_EXTENSIONS",
    "Volume",
    "VolumePair",
    "check_volumes",
    "evaluate_volume_levels",
    "find_volume_folders",
    "format_volume_table",
    "load_image",
    "load_volumes",
    "make_volume_dataset",
    "normalize_intensity",
    "overlap_scores",
    "predict_volume",
    "predict_volume_files",
    "preprocessing",
    "read_image",
    "read_label",
    "resample",
    "volume_pairs",
    "write_label_map",
    "write_volume_table",
]
