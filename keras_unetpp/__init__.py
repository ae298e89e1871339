"""keras_unetpp: UNet++ (nested U-Net) segmentation for Keras 3.

The public API is declared here and only here.
"""

from keras_unetpp.flops import count_flops
from keras_unetpp.losses import (
    BCEDiceLoss,
    CategoricalCEDiceLoss,
    bce_dice,
    categorical_ce_dice,
    soft_dice,
)
from keras_unetpp.metrics import DiceScore, IoUScore
from keras_unetpp.model import build, build_unet, node_name, output_name
from keras_unetpp.padding import pad_to_multiple, predict_padded
from keras_unetpp.pruning import head_levels, inference_model, model_depth, prune
from keras_unetpp.version import __version__

__all__ = [
    "BCEDiceLoss",
    "CategoricalCEDiceLoss",
    "DiceScore",
    "IoUScore",
    "__version__",
    "bce_dice",
    "build",
    "build_unet",
    "categorical_ce_dice",
    "count_flops",
    "head_levels",
    "inference_model",
    "model_depth",
    "node_name",
    "output_name",
    "pad_to_multiple",
    "predict_padded",
    "prune",
    "soft_dice",
]
