"""What a built keras_unetpp model is: the naming contract and `describe()`.

A keras_unetpp model is a plain Keras functional model made of core layers,
so that a `.keras` file reloads in safe mode without this package. Its
structure is carried by its layer names, and this module is the only place
that writes those names (the builders call the `*_name` functions) and the
only place that reads them back (`describe`, `parse_node`, `parse_head`).

The contract, for node X(i,j) (level i, convolution j along the skip) and
the head on X(0,L):

| layer | name |
|---|---|
| convolution k of H | `x_{i}_{j}_conv{k}` |
| its normalization | `x_{i}_{j}_bn{k}` / `x_{i}_{j}_gn{k}` |
| its activation, dropout | `x_{i}_{j}_act{k}`, `x_{i}_{j}_drop{k}` |
| the U feeding X(i,j) | `x_{i}_{j}_up` (`x_{i}_{j}_up_resize` before it) |
| the concatenation | `x_{i}_{j}_concat` |
| the pooling feeding X(i,0) | `x_{i}_0_pool` |
| a backbone's feature map used as X(i,0) | `x_{i}_0_tap` |
| a backbone's pixel preprocessing | `encoder_{backbone}` |
| head L: logits, activation | `output_l{L}_logits`, `output_l{L}` |
| the accurate mode's mean | `output_accurate` |

Everything else a module needs to know about a model (its depth, heads,
classes, head activation, rank, widths) comes from `describe(model)`.
"""

import dataclasses
import re

import keras

from keras_unetpp.errors import InputError

ARCHITECTURES = ("unetpp", "unet")
NORMALIZATIONS = ("batch", "group", "none")
UPSAMPLINGS = ("transpose", "resize")
ACCURATE_OUTPUT = "output_accurate"
BUILTIN_ENCODER = "builtin"

_NODE = re.compile(
    r"^x_(\d+)_(\d+)_(conv|bn|gn|act|drop|up|concat|pool|tap)(\d*)(_resize)?$"
)
_HEAD = re.compile(r"^output_l(\d+)$")
_ENCODER = re.compile(r"^encoder_([a-z0-9_]+)$")
_LOGITS = re.compile(r"^output_l(\d+)_logits$")
_NORM_SUFFIX = {"batch": "bn", "group": "gn"}


def node_name(i, j):
    """The layer-name prefix of node X(i,j), e.g. `node_name(2, 1) == "x_2_1"`."""
    return f"x_{i}_{j}"


def output_name(level):
    """The name of the deep-supervision head on X(0, level): `"output_l<level>"`."""
    return f"output_l{level}"


def conv_name(i, j, k):
    """Convolution `k` (from 1) of the unit H of X(i,j): `"x_{i}_{j}_conv{k}"`."""
    return f"{node_name(i, j)}_conv{k}"


def norm_name(i, j, k, normalization):
    """The normalization after convolution `k` of X(i,j), or `None` for "none"."""
    suffix = _NORM_SUFFIX.get(normalization)
    return None if suffix is None else f"{node_name(i, j)}_{suffix}{k}"


def activation_name(i, j, k):
    """The activation after convolution `k` of X(i,j)."""
    return f"{node_name(i, j)}_act{k}"


def dropout_name(i, j, k):
    """The dropout after activation `k` of X(i,j)."""
    return f"{node_name(i, j)}_drop{k}"


def up_name(i, j):
    """The up-sampling U that feeds X(i,j) (from X(i+1, j-1))."""
    return f"{node_name(i, j)}_up"


def concat_name(i, j):
    """The concatenation that forms the input of X(i,j)."""
    return f"{node_name(i, j)}_concat"


def pool_name(i):
    """The pooling of X(i-1, 0) that feeds X(i, 0)."""
    return f"{node_name(i, 0)}_pool"


def tap_name(i):
    """The identity layer that names a backbone's feature map X(i, 0)."""
    return f"{node_name(i, 0)}_tap"


def encoder_name(backbone):
    """The backbone's preprocessing layer, `"encoder_<backbone>"`."""
    return f"encoder_{backbone}"


def logits_name(level):
    """The 1x1 convolution of head `level`: `"output_l{level}_logits"`."""
    return f"{output_name(level)}_logits"


def parse_node(layer_name):
    """The node `(i, j)` a layer belongs to, or `None` for other layers.

    Example:

    ```python
    parse_node("x_2_1_conv1")  # (2, 1)
    parse_node("output_l3")    # None
    ```
    """
    match = _NODE.match(layer_name)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def parse_head(layer_name):
    """The level L of a head activation layer `output_l<L>`, or `None`."""
    match = _HEAD.match(layer_name)
    return None if match is None else int(match.group(1))


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What a keras_unetpp model is, read once from the model itself.

    Attributes:
        name: str, the model's name.
        architecture: `"unetpp"` (nested skips) or `"unet"` (the baseline).
            A depth-1 graph is both; it is reported as `"unetpp"`.
        rank: int, spatial rank of the input: 2 for images, 3 for volumes.
        depth: int, the deepest encoder level (for a model pruned to L, L).
        heads: tuple of ints, the levels L whose head `output_l<L>` the
            model holds, ascending.
        outputs: tuple of str, the model's output names, in order
            (`("output_accurate",)` for the accurate mode).
        num_classes: int, channels of each head.
        channels: int, input channels.
        head_activation: `"sigmoid"`, `"softmax"` or `None` (logits).
        normalization: `"batch"`, `"group"` or `"none"`.
        upsampling: `"transpose"` or `"resize"`.
        filters: tuple of ints, the width of each level 0..depth.
        convs_per_node: int, convolutions in each unit H.
        dropout: bool, whether the nodes have dropout layers.
        encoder: str, `"builtin"` (the UNet++ encoder X(i,0)) or the name
            of the `keras.applications` backbone (e.g. `"resnet50"`).
        input_shape: tuple, the input shape without the batch axis.

    Example:

    ```python
    info = keras_unetpp.describe(keras.saving.load_model("unetpp.keras"))
    info.depth, info.heads, info.from_logits  # 4, (1, 2, 3, 4), False
    ```
    """

    name: str
    architecture: str
    rank: int
    depth: int
    heads: tuple
    outputs: tuple
    num_classes: int
    channels: int
    head_activation: str | None
    normalization: str
    upsampling: str
    filters: tuple
    convs_per_node: int
    dropout: bool
    encoder: str
    input_shape: tuple

    @property
    def from_logits(self):
        """Whether the heads return logits (no output activation)."""
        return self.head_activation is None

    @property
    def deep_supervision(self):
        """Whether the model returns several heads (a dict by output name)."""
        return len(self.outputs) > 1

    @property
    def accurate(self):
        """Whether the model is the accurate mode (mean of its heads)."""
        return self.outputs == (ACCURATE_OUTPUT,)

    @property
    def stride(self):
        """`2**depth`: spatial sizes must be multiples of it."""
        return 2**self.depth

    @property
    def output_level(self):
        """The level of a single-head model's output, or `None`."""
        if len(self.outputs) != 1 or self.accurate:
            return None
        return parse_head(self.outputs[0])


def describe(model):
    """Describes a keras_unetpp model: depth, heads, classes, activation, ...

    Works on a model from `build()` or `build_unet()`, on the sub-models of
    `prune()` and `inference_model()`, and on any of them reloaded from a
    `.keras` file (safe mode, without this package), since everything it
    reads is in the layers' names and configs.

    Args:
        model: a `keras.Model` built by keras_unetpp.

    Returns:
        A frozen `ModelDescription`.

    Raises:
        InputError: `model` was not built by keras_unetpp.

    Example:

    ```python
    model = keras_unetpp.build(depth=3, deep_supervision=True)
    info = keras_unetpp.describe(model)
    info.heads          # (1, 2, 3)
    info.num_classes    # 1
    keras_unetpp.describe(keras_unetpp.prune(model, 2)).depth  # 2
    ```
    """
    if not isinstance(model, keras.Model):
        raise InputError(
            f"describe() needs a keras_unetpp keras.Model. Received: {model!r}"
        )
    layers = {layer.name: layer for layer in model.layers}
    nodes = {parse_node(name) for name in layers} - {None}
    encoder = sorted(i for i, j in nodes if j == 0)
    if (
        not encoder
        or (0, 0) not in nodes
        or not (conv_name(0, 0, 1) in layers or tap_name(0) in layers)
    ):
        raise InputError(
            "This model has no UNet++ encoder layers (x_<i>_0_conv1); it was "
            f"not built by keras_unetpp.build. Received: model={model.name!r}"
        )
    depth = encoder[-1]
    heads = tuple(sorted(level for level in map(parse_head, layers) if level))
    if not heads:
        raise InputError(
            "This model has no output_l<L> heads; it was not built by "
            f"keras_unetpp.build. Received: model={model.name!r}"
        )
    head = layers[output_name(heads[-1])]
    activation = head.get_config().get("activation")
    logits = layers.get(logits_name(heads[-1]))
    num_classes = int((logits or head).output.shape[-1])
    input_shape = tuple(model.inputs[0].shape[1:])
    # The decoder's unit H tells the convolutions and normalization; a
    # depth-0 decoder (no X(0,1)) falls back to the encoder's X(0,0).
    unit = (0, 1) if conv_name(0, 1, 1) in layers else (0, 0)
    convs = 1
    while conv_name(*unit, convs + 1) in layers:
        convs += 1
    if norm_name(*unit, 1, "batch") in layers:
        normalization = "batch"
    elif norm_name(*unit, 1, "group") in layers:
        normalization = "group"
    else:
        normalization = "none"
    upsampling = "resize" if f"{up_name(0, 1)}_resize" in layers else "transpose"
    encoders = [m.group(1) for m in map(_ENCODER.match, layers) if m]
    nested = any(j and i + j < depth for i, j in nodes) or depth == 1
    return ModelDescription(
        name=model.name,
        architecture="unetpp" if nested else "unet",
        rank=len(input_shape) - 1,
        depth=depth,
        heads=heads,
        outputs=tuple(model.output_names),
        num_classes=num_classes,
        channels=int(input_shape[-1]),
        head_activation=None if activation in (None, "linear") else activation,
        normalization=normalization,
        upsampling=upsampling,
        filters=tuple(_width(layers, i) for i in range(depth + 1)),
        convs_per_node=convs,
        dropout=any(
            isinstance(layer, keras.layers.Dropout) for layer in layers.values()
        ),
        encoder=encoders[0] if encoders else BUILTIN_ENCODER,
        input_shape=input_shape,
    )


def _width(layers, i):
    """The channels of X(i,0): its convolutions' or the tapped feature map's."""
    if conv_name(i, 0, 1) in layers:
        return int(layers[conv_name(i, 0, 1)].filters)
    return int(layers[tap_name(i)].output.shape[-1])


def model_depth(model):
    """The depth of a keras_unetpp model (`describe(model).depth`).

    Args:
        model: a model built by `keras_unetpp.build` or `build_unet` (or
            one of its pruned sub-models).

    Returns:
        int, the deepest level i with an encoder node X(i,0).
    """
    return describe(model).depth


def head_levels(model):
    """The levels L whose head `output_l<L>` the model holds, as a sorted list."""
    return list(describe(model).heads)


def encoder_layers(model):
    """The layers of a model's `keras.applications` trunk, in graph order.

    Those are the backbone's own layers: every layer outside the naming
    contract above (not a node X(i,j), a head, the input, the backbone's
    pixel preprocessing or the accurate mode's mean). A model on the
    built-in encoder has none. `keras_unetpp.fine_tuning` freezes and
    unfreezes them.

    Args:
        model: a `keras.Model` built by keras_unetpp (or pruned from one).

    Returns:
        list of `keras.layers.Layer`, empty for the built-in encoder.

    Example:

    ```python
    model = keras_unetpp.build(3, (None, None, 3), backbone="resnet50")
    sum(layer.count_params() for layer in encoder_layers(model))
    ```
    """
    return [
        layer
        for layer in model.layers
        if not (
            isinstance(layer, keras.layers.InputLayer)
            or parse_node(layer.name) is not None
            or parse_head(layer.name) is not None
            or layer.name == ACCURATE_OUTPUT
            or _ENCODER.match(layer.name)
            or _LOGITS.match(layer.name)
        )
    ]
