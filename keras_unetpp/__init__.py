"""keras_unetpp: UNet++ (nested U-Net) segmentation for Keras 3.

The public API is declared here and only here. The model, the losses and the
metrics use `keras` and `keras.ops` only and are imported eagerly; they run on
every Keras backend. The TensorFlow-specific parts (`tf.data` pipelines,
SavedModel export, `tf.distribute`, the training and evaluation jobs) are
imported on first use, so that
`import keras_unetpp` under the JAX or PyTorch backend does not load them.
"""

import importlib

# First of all: in the `keras-unetpp` command (console script or `python -m
# keras_unetpp`), TensorFlow imported with its harmless start-up lines
# filtered from stderr, before Keras imports it (see quiet_start.py).
from keras_unetpp import _startup  # noqa: F401
from keras_unetpp.description import (
    ModelDescription,
    describe,
    encoder_layers,
    head_levels,
    model_depth,
    node_name,
    output_name,
)
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.flops import count_flops
from keras_unetpp.imbalance_losses import (
    FocalLoss,
    FocalTverskyLoss,
    LovaszLoss,
    TverskyLoss,
    focal,
    lovasz,
    tversky,
)
from keras_unetpp.losses import (
    BCEDiceLoss,
    CategoricalCEDiceLoss,
    bce_dice,
    categorical_ce_dice,
    soft_dice,
)
from keras_unetpp.metrics import DiceScore, IoUScore
from keras_unetpp.model import build, build_unet
from keras_unetpp.padding import pad_to_multiple, predict_padded
from keras_unetpp.pruning import inference_model, prune
from keras_unetpp.tiling import predict_tiled
from keras_unetpp.version import __version__

# Public names that live in TensorFlow-specific modules: name -> module.
_LAZY = {
    "data": "keras_unetpp.data",
    "export": "keras_unetpp.export",
    "distribute": "keras_unetpp.distribute",
    "volumes": "keras_unetpp.volumes",
    "get_strategy": "keras_unetpp.distribute",
    "validate_tf_config": "keras_unetpp.distribute",
    "check_global_batch": "keras_unetpp.distribute",
    "batch_for_strategy": "keras_unetpp.distribute",
    "build_in_scope": "keras_unetpp.distribute",
    "prepare_for_strategy": "keras_unetpp.distribute",
    "is_chief": "keras_unetpp.distribute",
    "save_on_chief": "keras_unetpp.distribute",
    "Augmentation": "keras_unetpp.data",
    "SamplePair": "keras_unetpp.data",
    "check_pairs": "keras_unetpp.data",
    "dsb2018_pairs": "keras_unetpp.data",
    "folder_pairs": "keras_unetpp.data",
    "make_dataset": "keras_unetpp.data",
    "manifest_stems": "keras_unetpp.data",
    "prepare_tfds_folder": "keras_unetpp.data",
    "split_pairs": "keras_unetpp.data",
    "tfds_dataset": "keras_unetpp.data",
    "export_pruned": "keras_unetpp.export",
    "set_precision": "keras_unetpp.precision",
    "precision_scope": "keras_unetpp.precision",
    "resolve_precision": "keras_unetpp.precision",
    "train": "keras_unetpp.training",
    "TrainingDiverged": "keras_unetpp.training",
    "SizePolicy": "keras_unetpp.size_policy",
    "compile_model": "keras_unetpp.training",
    "batch_norm_gap": "keras_unetpp.evaluation",
    "evaluate_levels": "keras_unetpp.evaluation",
    "plot_tradeoff": "keras_unetpp.evaluation",
    "predict_folder": "keras_unetpp.prediction",
    "write_synthetic_dataset": "keras_unetpp.synthetic",
    "load_metadata": "keras_unetpp.export",
    "fuse_batch_norm": "keras_unetpp.fused_batch_norm",
    "recompute_nodes": "keras_unetpp.recompute",
    "set_encoder_trainable": "keras_unetpp.fine_tuning",
    # NumPy/SciPy scores on predicted masks: loaded on first use.
    "field_metrics": "keras_unetpp.field_metrics",
    "FieldScores": "keras_unetpp.field_metrics",
    "ThresholdSweep": "keras_unetpp.thresholds",
}

__all__ = [
    "Augmentation",
    "BCEDiceLoss",
    "CategoricalCEDiceLoss",
    "DataError",
    "DiceScore",
    "FieldScores",
    "FocalLoss",
    "FocalTverskyLoss",
    "InputError",
    "IoUScore",
    "LovaszLoss",
    "ModelDescription",
    "SamplePair",
    "SizePolicy",
    "ThresholdSweep",
    "TrainingDiverged",
    "TverskyLoss",
    "__version__",
    "batch_for_strategy",
    "batch_norm_gap",
    "bce_dice",
    "build",
    "build_in_scope",
    "build_unet",
    "categorical_ce_dice",
    "check_global_batch",
    "check_pairs",
    "compile_model",
    "count_flops",
    "data",
    "describe",
    "distribute",
    "dsb2018_pairs",
    "encoder_layers",
    "evaluate_levels",
    "export",
    "export_pruned",
    "field_metrics",
    "focal",
    "folder_pairs",
    "fuse_batch_norm",
    "get_strategy",
    "head_levels",
    "inference_model",
    "is_chief",
    "load_metadata",
    "lovasz",
    "make_dataset",
    "manifest_stems",
    "model_depth",
    "node_name",
    "output_name",
    "pad_to_multiple",
    "plot_tradeoff",
    "precision_scope",
    "predict_folder",
    "predict_padded",
    "predict_tiled",
    "prepare_for_strategy",
    "prepare_tfds_folder",
    "prune",
    "recompute_nodes",
    "resolve_precision",
    "save_on_chief",
    "set_encoder_trainable",
    "set_precision",
    "soft_dice",
    "split_pairs",
    "tfds_dataset",
    "train",
    "tversky",
    "validate_tf_config",
    "volumes",
    "write_synthetic_dataset",
]


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'keras_unetpp' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
