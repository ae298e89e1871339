"""Pretrained encoders for UNet++: `keras.applications` trunks as X(i,0).

With `build(..., backbone="resnet50")` the encoder nodes X(i,0), i >= 1, are
the backbone's feature maps at stride `2**i`, tapped by layer name from
`BACKBONES` (a table kept here and checked by the tests). The nested decoder
X(i,j), j >= 1, and the heads are UNet++'s own. Where a backbone has no
feature at a stride (none has one at stride 1 but VGG; ConvNeXt has none at
stride 2), that X(i,0) is UNet++'s own convolution unit H on the image
(i = 0) or on the pooled X(i-1,0), so the output is at the input resolution.

The backbone is built on the model's own input tensor, so its layers sit in
the model's graph itself (not as a nested model): `prune(model, L)` keeps
only the encoder layers X(0,L) needs. The backbone's pixel preprocessing is a
core Keras layer inside the graph, named `encoder_<backbone>`, that maps the
package's [0, 1] pixels to what the trunk was trained on; training,
`predict`, the SavedModels and TF Serving all see the same thing.
"""

import dataclasses
import os

import keras
import numpy as np

from keras_unetpp.errors import InputError

# Pixel preprocessing of each family, from [0, 1] pixels:
# - "caffe": 255 * x minus the ImageNet mean (VGG, ResNet v1; the trunk was
#   trained on BGR, so 3-channel pretrained first kernels are flipped to RGB);
# - "torch": (x - mean) / std with the ImageNet statistics (DenseNet);
# - "tf": 2 * x - 1 (ResNet v2, MobileNetV2);
# - "raw255": 255 * x, the trunk's own layers do the rest (EfficientNet).
#   ConvNeXt's and EfficientNetV2's own preprocessing fits 3 channels only,
#   so they are built without it and get the same mapping here ("torch" for
#   ConvNeXt and EfficientNetV2-B*, "tf" for EfficientNetV2-S/M/L).
_CAFFE_MEAN = np.array([123.68, 116.779, 103.939]) / 255.0  # RGB
_TORCH_MEAN = np.array([0.485, 0.456, 0.406])
_TORCH_STD = np.array([0.229, 0.224, 0.225])


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A `keras.applications` trunk and where UNet++ taps it.

    Attributes:
        constructor: str, the `keras.applications` function name.
        taps: dict stride -> layer name (strides 1, 2, 4, 8, 16, 32).
        preprocessing: `"caffe"`, `"torch"`, `"tf"` or `"raw255"`.
    """

    constructor: str
    taps: dict
    preprocessing: str

    @property
    def max_depth(self):
        """The deepest UNet++ level this trunk can feed (its largest stride)."""
        return int(np.log2(max(self.taps)))


def _resnet(blocks, v2=False):
    if v2:
        # Pre-activation: a stage's last block ends at its stride-2 unit.
        names = {
            4: f"conv2_block{blocks[0]}_out",
            8: f"conv3_block{blocks[1]}_out",
            16: f"conv4_block{blocks[2]}_out",
            32: "post_relu",
        }
        return {2: "conv1_conv", **names}
    return {
        2: "conv1_relu",
        4: f"conv2_block{blocks[0]}_out",
        8: f"conv3_block{blocks[1]}_out",
        16: f"conv4_block{blocks[2]}_out",
        32: f"conv5_block{blocks[3]}_out",
    }


def _densenet():
    return {
        2: "conv1_relu",
        4: "pool2_conv",
        8: "pool3_conv",
        16: "pool4_conv",
        32: "relu",
    }


def _efficientnet():
    return {
        2: "block2a_expand_activation",
        4: "block3a_expand_activation",
        8: "block4a_expand_activation",
        16: "block6a_expand_activation",
        32: "top_activation",
    }


def _efficientnet_v2(stage1, stage2):
    return {
        2: stage1,
        4: stage2,
        8: "block4a_expand_activation",
        16: "block6a_expand_activation",
        32: "top_activation",
    }


def _convnext(prefix, stage_blocks):
    return {
        4 * 2**stage: f"{prefix}_stage_{stage}_block_{blocks - 1}_identity"
        for stage, blocks in enumerate(stage_blocks)
    }


BACKBONES = {
    "vgg16": Backbone(
        "VGG16",
        {
            1: "block1_conv2",
            2: "block2_conv2",
            4: "block3_conv3",
            8: "block4_conv3",
            16: "block5_conv3",
            32: "block5_pool",
        },
        "caffe",
    ),
    "vgg19": Backbone(
        "VGG19",
        {
            1: "block1_conv2",
            2: "block2_conv2",
            4: "block3_conv4",
            8: "block4_conv4",
            16: "block5_conv4",
            32: "block5_pool",
        },
        "caffe",
    ),
    "resnet50": Backbone("ResNet50", _resnet((3, 4, 6, 3)), "caffe"),
    "resnet101": Backbone("ResNet101", _resnet((3, 4, 23, 3)), "caffe"),
    "resnet152": Backbone("ResNet152", _resnet((3, 8, 36, 3)), "caffe"),
    "resnet50v2": Backbone("ResNet50V2", _resnet((2, 3, 5), v2=True), "tf"),
    "resnet101v2": Backbone("ResNet101V2", _resnet((2, 3, 22), v2=True), "tf"),
    "resnet152v2": Backbone("ResNet152V2", _resnet((2, 7, 35), v2=True), "tf"),
    "densenet121": Backbone("DenseNet121", _densenet(), "torch"),
    "densenet169": Backbone("DenseNet169", _densenet(), "torch"),
    "densenet201": Backbone("DenseNet201", _densenet(), "torch"),
    **{
        f"efficientnetb{k}": Backbone(f"EfficientNetB{k}", _efficientnet(), "raw255")
        for k in range(8)
    },
    "efficientnetv2b0": Backbone(
        "EfficientNetV2B0",
        _efficientnet_v2("block1a_project_activation", "block2b_add"),
        "torch",
    ),
    **{
        f"efficientnetv2b{k}": Backbone(
            f"EfficientNetV2B{k}",
            _efficientnet_v2("block1b_add", "block2c_add"),
            "torch",
        )
        for k in (1, 2, 3)
    },
    "efficientnetv2s": Backbone(
        "EfficientNetV2S", _efficientnet_v2("block1b_add", "block2d_add"), "tf"
    ),
    "efficientnetv2m": Backbone(
        "EfficientNetV2M", _efficientnet_v2("block1c_add", "block2e_add"), "tf"
    ),
    "efficientnetv2l": Backbone(
        "EfficientNetV2L", _efficientnet_v2("block1d_add", "block2g_add"), "tf"
    ),
    "convnext_tiny": Backbone(
        "ConvNeXtTiny", _convnext("convnext_tiny", (3, 3, 9, 3)), "torch"
    ),
    "convnext_small": Backbone(
        "ConvNeXtSmall", _convnext("convnext_small", (3, 3, 27, 3)), "torch"
    ),
    "convnext_base": Backbone(
        "ConvNeXtBase", _convnext("convnext_base", (3, 3, 27, 3)), "torch"
    ),
    "convnext_large": Backbone(
        "ConvNeXtLarge", _convnext("convnext_large", (3, 3, 27, 3)), "torch"
    ),
    "mobilenetv2": Backbone(
        "MobileNetV2",
        {
            2: "block_1_expand_relu",
            4: "block_3_expand_relu",
            8: "block_6_expand_relu",
            16: "block_13_expand_relu",
            32: "out_relu",
        },
        "tf",
    ),
}


def get_backbone(name):
    """The `Backbone` entry of `name`, or an `InputError` listing the choices."""
    if name not in BACKBONES:
        raise InputError(
            f"`backbone` must be None or one of {sorted(BACKBONES)}. "
            f"Received: backbone={name!r}"
        )
    return BACKBONES[name]


def check_encoder_weights(encoder_weights):
    """Returns `encoder_weights` (None, "imagenet" or an existing file path)."""
    if encoder_weights in (None, "imagenet"):
        return encoder_weights
    path = (
        os.fspath(encoder_weights)
        if isinstance(encoder_weights, os.PathLike)
        else (encoder_weights)
    )
    if not isinstance(path, str) or not os.path.isfile(path):
        raise InputError(
            "`encoder_weights` must be None, 'imagenet' or the path of a "
            "weights file saved from the same keras.applications model "
            "(include_top=False), e.g. with `model.save_weights('trunk.weights.h5')`. "
            f"Received: encoder_weights={encoder_weights!r}"
        )
    return path


def preprocessing_layer(name, channels):
    """The core Keras layer that maps [0, 1] pixels to the trunk's input.

    Named `encoder_<name>`, which is how `describe()` recognises the
    backbone. With other than 3 channels, the per-channel statistics are
    their mean over RGB.
    """
    mode = get_backbone(name).preprocessing
    layer_name = f"encoder_{name}"
    if mode in ("tf", "raw255"):
        scale, offset = (2.0, -1.0) if mode == "tf" else (255.0, 0.0)
        return keras.layers.Rescaling(scale, offset=offset, name=layer_name)
    if mode == "caffe":
        mean, std = _CAFFE_MEAN, np.full(3, 1.0 / 255.0)
    else:
        mean, std = _TORCH_MEAN, _TORCH_STD
    if channels != 3:
        mean, std = np.full(channels, mean.mean()), np.full(channels, std.mean())
    return keras.layers.Normalization(
        mean=mean.tolist(), variance=(std**2).tolist(), name=layer_name
    )


def build_trunk(name, inputs, encoder_weights=None, trainable=True):
    """Builds the trunk on `inputs` (already preprocessed) and its feature taps.

    Args:
        name: str, a key of `BACKBONES`.
        inputs: the Keras tensor the trunk reads (the preprocessing
            layer's output), `(batch, height, width, channels)`.
        encoder_weights: `None` (random), `"imagenet"` (Keras' download
            and cache) or a weights file path. Defaults to `None`.
        trainable: bool, whether the trunk's layers train. A frozen trunk's
            batch normalizations run in inference mode. Defaults to `True`.

    Returns:
        dict stride -> Keras tensor of the tapped feature map.
    """
    entry = get_backbone(name)
    constructor = getattr(keras.applications, entry.constructor)
    kwargs = dict(include_top=False, weights=None, input_tensor=inputs)
    if entry.constructor.startswith(("ConvNeXt", "EfficientNetV2")):
        # Their own ImageNet preprocessing fits 3 channels only; the same
        # mapping is `preprocessing_layer`'s.
        kwargs["include_preprocessing"] = False
    trunk = constructor(**kwargs)
    if encoder_weights is not None:
        _load_pretrained(trunk, entry, name, encoder_weights, kwargs)
    for layer in trunk.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            layer.trainable = bool(trainable)
    return {
        stride: trunk.get_layer(layer).output for stride, layer in entry.taps.items()
    }


def _load_pretrained(trunk, entry, name, encoder_weights, kwargs):
    """Loads 3-channel weights into `trunk`, adapting the input channels."""
    constructor = getattr(keras.applications, entry.constructor)
    twin_kwargs = {k: v for k, v in kwargs.items() if k != "input_tensor"}
    twin_kwargs["input_shape"] = (None, None, 3)
    if encoder_weights == "imagenet":
        try:
            twin = constructor(**{**twin_kwargs, "weights": "imagenet"})
        except Exception as error:  # no internet, a proxy, a full disk, ...
            raise InputError(
                f"Could not get the ImageNet weights of {entry.constructor} "
                f"through Keras' download and cache ({type(error).__name__}: "
                f"{error}). On a machine without internet, save them where "
                "there is one (`keras.applications."
                f"{entry.constructor}(include_top=False).save_weights("
                f"'{name}.weights.h5')`) and pass that file as encoder_weights. "
                f"Received: encoder_weights='imagenet'"
            ) from None
    else:
        twin = constructor(**twin_kwargs)
        try:
            twin.load_weights(encoder_weights)
        except Exception as error:
            raise InputError(
                f"{encoder_weights}: not a weights file of keras.applications."
                f"{entry.constructor}(include_top=False) ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:300]}). Received: "
                f"encoder_weights={encoder_weights!r}"
            ) from None
    ours = [layer for layer in trunk.layers if layer.weights]
    theirs = [layer for layer in twin.layers if layer.weights]
    if len(ours) != len(theirs):
        raise InputError(
            f"{encoder_weights}: its {len(theirs)} weighted layers do not match "
            f"the {len(ours)} of {entry.constructor}. Received: "
            f"encoder_weights={encoder_weights!r}"
        )
    first_conv = True
    for mine, source in zip(ours, theirs):
        values = []
        for target, value in zip(mine.weights, source.get_weights()):
            value = _adapt(
                value,
                tuple(target.shape),
                first_conv and len(value.shape) == 4,
                entry.preprocessing == "caffe",
            )
            values.append(value)
        if isinstance(mine, keras.layers.Conv2D) and first_conv:
            first_conv = False
        mine.set_weights(values)
    if entry.constructor.startswith("EfficientNetB"):
        _fold_efficientnet_rescaling(trunk, twin)


def _fold_efficientnet_rescaling(trunk, twin):
    """Folds the extra input rescaling of EfficientNet's ImageNet build.

    Built with `weights="imagenet"`, Keras' EfficientNet divides the
    normalized input once more by sqrt(std) (a `Rescaling` after its
    `Normalization`, matching the original training); built without
    weights, as the trunk here, it lacks that layer. The same division goes
    into the trunk's `Normalization` variance instead.
    """
    twin_layers = list(twin.layers)
    extra = None
    for layer, after in zip(twin_layers, twin_layers[1:]):
        if isinstance(layer, keras.layers.Normalization) and isinstance(
            after, keras.layers.Rescaling
        ):
            extra = np.asarray(after.scale, dtype="float64")
            break
    if extra is None:
        return
    norm = next(
        layer for layer in trunk.layers if isinstance(layer, keras.layers.Normalization)
    )
    mean, variance, count = norm.get_weights()
    if variance.shape != extra.shape:
        extra = np.full(variance.shape, extra.mean())
    # (x - m) / sqrt(v) * s == (x - m) / sqrt(v / s**2)
    norm.set_weights([mean, (variance / extra**2).astype(variance.dtype), count])


def _adapt(value, shape, is_first_kernel, bgr):
    """Fits a 3-channel weight to `shape` (segmentation_models' rule).

    The first convolution's kernel: flipped from BGR to RGB for caffe-style
    trunks; for 1 input channel summed over RGB (a gray image then responds
    as the same gray in RGB); for C > 3 channel k takes the RGB kernel k mod 3,
    scaled by 3 / C so the response keeps its scale. A 3-vector (a
    normalization's statistics) is averaged or repeated the same way.
    """
    if value.shape == shape and not (is_first_kernel and bgr):
        return value
    if is_first_kernel:
        if bgr:
            value = value[:, :, ::-1, :]
        channels = shape[2]
        if channels == 3:
            return value
        if channels == 1:
            return value.sum(axis=2, keepdims=True)
        repeats = [value[:, :, k % 3, :] for k in range(channels)]
        return np.stack(repeats, axis=2) * (3.0 / channels)
    if value.ndim == 1 and value.shape[0] == 3 and len(shape) == 1:
        if shape[0] == 1:
            return value.mean(keepdims=True)
        return np.resize(value, shape)
    if value.shape != shape:
        raise InputError(
            f"A pretrained weight of shape {value.shape} does not fit {shape}."
        )
    return value
