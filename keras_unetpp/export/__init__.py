"""Export of pruned UNet++ models: SavedModels for TF Serving, TFLite, ONNX."""

from keras_unetpp.export.edge_runtime import load_runner
from keras_unetpp.export.metadata import load_metadata
from keras_unetpp.export.saved_model import export_pruned
from keras_unetpp.export.serving_config import serving_config_text, versions
from keras_unetpp.export.signatures import make_serving_fn, pad_to_stride
from keras_unetpp.size_policy import SizePolicy

__all__ = [
    "SizePolicy",
    "export_pruned",
    "load_metadata",
    "load_runner",
    "make_serving_fn",
    "pad_to_stride",
    "serving_config_text",
    "versions",
]
