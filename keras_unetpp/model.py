"""The UNet++ graph (and the plain U-Net baseline) as Keras functional models."""

import keras

from keras_unetpp import blocks
from keras_unetpp.description import (
    NORMALIZATIONS,
    UPSAMPLINGS,
    concat_name,
    output_name,
    tap_name,
)
from keras_unetpp.errors import InputError
from keras_unetpp.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_stride,
    is_int,
)

MIN_DEPTH = 1
MAX_DEPTH = 6

PAPER_FILTERS = (32, 64, 128, 256, 512, 1024, 2048)


def default_filters(depth):
    """Widths 32, 64, 128, ... for levels 0..depth (the paper's widths)."""
    return PAPER_FILTERS[: depth + 1]


def _check_arguments(
    depth,
    input_shape,
    num_classes,
    filters,
    normalization,
    dropout,
    upsampling,
    output_activation,
    data_format,
    convs_per_node,
):
    depth = check_int(depth, "depth", MIN_DEPTH, MAX_DEPTH)
    num_classes = check_int(num_classes, "num_classes", 1, 65535)
    convs_per_node = check_int(convs_per_node, "convs_per_node", 1, 8)
    data_format = data_format or keras.config.image_data_format()
    if data_format != "channels_last":
        raise InputError(
            "keras_unetpp builds channels-last models only (NHWC, the fast "
            "layout on CPU, GPU and TPU); transpose your images instead. "
            f"Received: data_format={data_format!r}"
        )
    if filters is None:
        filters = default_filters(depth)
    if is_int(filters):
        filters = tuple(int(filters) * 2**i for i in range(depth + 1))
    try:
        filters = tuple(filters)
    except TypeError:
        raise InputError(
            f"`filters` must be an int or a sequence of {depth + 1} positive "
            f"ints (one per level 0..depth). Received: filters={filters!r}"
        ) from None
    if len(filters) != depth + 1 or not all(is_int(f) and f > 0 for f in filters):
        raise InputError(
            f"`filters` must have {depth + 1} positive ints for depth={depth} "
            f"(one per level 0..{depth}). Received: filters={filters!r}"
        )
    filters = tuple(int(f) for f in filters)
    try:
        input_shape = tuple(input_shape)
    except TypeError:
        raise InputError(
            "`input_shape` must be (height, width, channels) for images or "
            "(depth, height, width, channels) for volumes. "
            f"Received: input_shape={input_shape!r}"
        ) from None
    if len(input_shape) not in (3, 4) or input_shape[-1] is None or input_shape[-1] < 1:
        raise InputError(
            "`input_shape` must be (height, width, channels) for images or "
            "(depth, height, width, channels) for volumes, with a known "
            "channel count; the spatial sizes may be None. "
            f"Received: input_shape={input_shape!r}"
        )
    axes = ("height", "width")
    if len(input_shape) == 4:
        axes = ("depth",) + axes
    check_stride(input_shape[:-1], depth, "input_shape", axes=axes)
    check_choice(normalization, "normalization", NORMALIZATIONS)
    check_choice(upsampling, "upsampling", UPSAMPLINGS)
    dropout = check_number(dropout, "dropout", 0.0, 1.0, high_open=True)
    if output_activation == "auto":
        output_activation = "sigmoid" if num_classes == 1 else "softmax"
    check_choice(output_activation, "output_activation", ("sigmoid", "softmax", None))
    if output_activation == "softmax" and num_classes == 1:
        raise InputError(
            "A softmax over one channel is constant 1; use 'sigmoid' for "
            "binary segmentation. Received: output_activation='softmax', "
            "num_classes=1"
        )
    return (
        depth,
        input_shape,
        num_classes,
        filters,
        float(dropout),
        output_activation,
        convs_per_node,
    )


def build(
    depth=4,
    input_shape=(None, None, 1),
    num_classes=1,
    filters=None,
    deep_supervision=False,
    normalization="batch",
    dropout=0.0,
    upsampling="transpose",
    activation="relu",
    output_activation="auto",
    convs_per_node=2,
    kernel_initializer="he_normal",
    data_format=None,
    name="unetpp",
    backbone=None,
    encoder_weights=None,
    encoder_trainable=True,
):
    """Builds a UNet++ segmentation model (Keras functional API).

    The graph has one node X(i,j) for every level i (0 = full resolution) and
    convolution index j with i + j <= depth. X(i,0) is the encoder; for
    j >= 1 each node convolves the concatenation of all nodes before it on
    its level and the up-sampled node below-left of it:

        X(i,j) = H([X(i,0), ..., X(i,j-1), U(X(i+1,j-1))])

    H is `convs_per_node` 3x3 convolutions (each followed by the optional
    normalization, the activation and the optional dropout) and U is a 2x2
    transposed convolution (or a bilinear resize and a 3x3 convolution).
    Layers are named after the nodes: `x_{i}_{j}_conv1`, `x_{i}_{j}_up`,
    `x_{i}_{j}_concat`, `x_{i}_0_pool`. The output heads are 1x1 convolutions
    on X(0,L), named `output_l{L}` (L = 1..depth).

    Spatial sizes: a static height or width that is not a multiple of
    `2**depth` raises a `ValueError` here, up front. With `None` spatial
    dimensions the model accepts any multiple of `2**depth` at call time;
    for other sizes use `keras_unetpp.pad_to_multiple` (or the exported
    SavedModels, which pad and crop inside the serving graph).

    The paper's configuration (arXiv 1807.10165) is
    `build(4, (96, 96, 1), normalization="none", filters=(32, 64, 128, 256,
    512))`: 9,041,601 parameters, 9,041,700 with deep supervision. The
    default differs only in using batch normalization (without conv biases),
    which trains faster and more stably; its moving statistics use momentum
    0.9 so that inference mode matches training after a few hundred steps.

    Args:
        depth: int, number of down-sampling levels (1 to 6). The paper uses
            4. Defaults to `4`.
        input_shape: tuple `(height, width, channels)` for images or
            `(depth, height, width, channels)` for volumes (a 3D UNet++
            of 3x3x3 convolutions, 2x2x2 pooling and up-sampling), channels
            last; the spatial sizes may be `None`. Defaults to
            `(None, None, 1)`.
        num_classes: int, 1 for binary segmentation (sigmoid), more for
            multi-class segmentation (softmax over classes). Defaults to `1`.
        filters: sequence of `depth + 1` ints (the width of each level), an
            int (width of level 0, doubled per level), or `None` for
            32, 64, 128, ... Defaults to `None`.
        deep_supervision: bool. If `True`, the model has one head per level
            and returns a dict `{"output_l1": ..., "output_l<depth>": ...}`
            so that `compile()` takes losses, loss weights and metrics per
            output name; if `False`, only the `output_l<depth>` head exists
            and the model returns a single tensor. Defaults to `False`.
        normalization: `"batch"`, `"group"` or `"none"`. Defaults to
            `"batch"`.
        dropout: float in [0, 1), dropout rate after each activation.
            Defaults to `0.0`.
        upsampling: `"transpose"` (2x2 stride-2 transposed convolution, as
            in the paper) or `"resize"` (bilinear + 3x3 convolution).
            Defaults to `"transpose"`.
        activation: str, Keras activation of the convolutions.
            Defaults to `"relu"`.
        output_activation: `"auto"` (sigmoid for one class, softmax for
            more), `"sigmoid"`, `"softmax"` or `None` for logits. Outputs
            are always float32, also under a mixed-precision policy.
            Defaults to `"auto"`.
        convs_per_node: int, convolutions in each unit H. Defaults to `2`.
        kernel_initializer: str, initializer of the convolution kernels.
            Defaults to `"he_normal"`.
        data_format: must be `"channels_last"` or `None` (then
            `keras.config.image_data_format()` must be channels last).
            Defaults to `None`.
        name: str, the model name. Defaults to `"unetpp"`.
        backbone: `None` for UNet++'s own encoder, or a `keras.applications`
            trunk (`"vgg16"`, `"resnet50"`, `"densenet121"`,
            `"efficientnetb0"`, `"convnext_tiny"`, `"mobilenetv2"`, ...;
            see `keras_unetpp.backbones.BACKBONES`) whose feature maps at
            strides 2, 4, 8, ... become X(1,0), X(2,0), ... (2D only;
            `depth` at most 5). `filters` then sets the decoder's widths.
            Defaults to `None`.
        encoder_weights: `None` (random), `"imagenet"` (Keras' download
            and cache) or the path of a weights file of the same
            `keras.applications` model (`include_top=False`). Any channel
            count works: the first convolution's pretrained kernel is
            adapted. Defaults to `None`.
        encoder_trainable: bool, whether the backbone trains (frozen, its
            batch normalizations run in inference mode). Defaults to `True`.

    Returns:
        A `keras.Model`.

    Example:

    ```python
    model = keras_unetpp.build(depth=4, input_shape=(96, 96, 1),
                               deep_supervision=True)
    model.compile(optimizer="adam",
                  loss=keras_unetpp.BCEDiceLoss(),
                  metrics={"output_l4": [keras_unetpp.IoUScore()]})
    l2 = keras_unetpp.prune(model, 2)  # X(0,2) head, same weights
    ```

    Reference:
    - [Zhou et al., 2018. UNet++: A Nested U-Net Architecture for Medical
      Image Segmentation](https://arxiv.org/abs/1807.10165)
    """
    return _build_graph(
        nested=True,
        backbone=backbone,
        encoder_weights=encoder_weights,
        encoder_trainable=encoder_trainable,
        depth=depth,
        input_shape=input_shape,
        num_classes=num_classes,
        filters=filters,
        deep_supervision=deep_supervision,
        normalization=normalization,
        dropout=dropout,
        upsampling=upsampling,
        activation=activation,
        output_activation=output_activation,
        convs_per_node=convs_per_node,
        kernel_initializer=kernel_initializer,
        data_format=data_format,
        name=name,
    )


def build_unet(
    depth=4,
    input_shape=(None, None, 1),
    num_classes=1,
    filters=None,
    normalization="batch",
    dropout=0.0,
    upsampling="transpose",
    activation="relu",
    output_activation="auto",
    convs_per_node=2,
    kernel_initializer="he_normal",
    data_format=None,
    name="unet",
):
    """Builds the plain U-Net baseline with the same widths and blocks.

    The U-Net is the UNet++ graph without the nested skip nodes: the encoder
    X(i,0) and one decoder node per level, X(i, depth - i) =
    H([X(i,0), U(X(i+1, depth - i - 1))]). It uses the same names, blocks and
    options as `build()`, so the two can be compared on equal terms (the
    paper's claims are relative to this model). Its single head is
    `output_l<depth>`.

    Args:
        depth: int, number of down-sampling levels (1 to 6). Defaults to `4`.
        input_shape: `(height, width, channels)`, or `(depth, height,
            width, channels)` for a 3D U-Net. Defaults to `(None, None, 1)`.
        num_classes: int. Defaults to `1`.
        filters: widths per level, as in `build()`. Defaults to `None`.
        normalization: `"batch"`, `"group"` or `"none"`. Defaults to
            `"batch"`.
        dropout: float. Defaults to `0.0`.
        upsampling: `"transpose"` or `"resize"`. Defaults to `"transpose"`.
        activation: str. Defaults to `"relu"`.
        output_activation: as in `build()`. Defaults to `"auto"`.
        convs_per_node: int. Defaults to `2`.
        kernel_initializer: str. Defaults to `"he_normal"`.
        data_format: as in `build()`. Defaults to `None`.
        name: str. Defaults to `"unet"`.

    Returns:
        A single-output `keras.Model`.

    Example:

    ```python
    baseline = keras_unetpp.build_unet(depth=4, input_shape=(96, 96, 1))
    ```

    Reference:
    - [Ronneberger et al., 2015. U-Net: Convolutional Networks for
      Biomedical Image Segmentation](https://arxiv.org/abs/1505.04597)
    """
    return _build_graph(
        nested=False,
        backbone=None,
        encoder_weights=None,
        encoder_trainable=True,
        depth=depth,
        input_shape=input_shape,
        num_classes=num_classes,
        filters=filters,
        deep_supervision=False,
        normalization=normalization,
        dropout=dropout,
        upsampling=upsampling,
        activation=activation,
        output_activation=output_activation,
        convs_per_node=convs_per_node,
        kernel_initializer=kernel_initializer,
        data_format=data_format,
        name=name,
    )


def _build_graph(
    nested,
    backbone,
    encoder_weights,
    encoder_trainable,
    depth,
    input_shape,
    num_classes,
    filters,
    deep_supervision,
    normalization,
    dropout,
    upsampling,
    activation,
    output_activation,
    convs_per_node,
    kernel_initializer,
    data_format,
    name,
):
    (
        depth,
        input_shape,
        num_classes,
        filters,
        dropout,
        output_activation,
        convs_per_node,
    ) = _check_arguments(
        depth,
        input_shape,
        num_classes,
        filters,
        normalization,
        dropout,
        upsampling,
        output_activation,
        data_format,
        convs_per_node,
    )
    unit = dict(
        convs=convs_per_node,
        activation=activation,
        normalization=normalization,
        dropout=dropout,
        kernel_initializer=kernel_initializer,
    )
    inputs = keras.Input(shape=input_shape, name="image")
    taps = _backbone_taps(
        backbone, encoder_weights, encoder_trainable, inputs, depth, input_shape
    )
    nodes = {}
    # Encoder: X(0,0) on the image, X(i,0) on the pooled X(i-1,0), or the
    # backbone's feature map at stride 2**i where it has one.
    for i in range(depth + 1):
        if 2**i in taps:
            nodes[i, 0] = keras.layers.Identity(name=tap_name(i))(taps[2**i])
            continue
        x = inputs if i == 0 else blocks.downsample(nodes[i - 1, 0], i)
        nodes[i, 0] = blocks.conv_unit(x, filters[i], (i, 0), **unit)
    # Skip pathways, column by column so that X(i+1, j-1) exists for X(i,j).
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):
            if not nested and i + j != depth:
                continue
            up = blocks.upsample(
                nodes[i + 1, j - 1],
                filters[i],
                (i, j),
                mode=upsampling,
                kernel_initializer=kernel_initializer,
            )
            same_level = [nodes[i, k] for k in range(j) if (i, k) in nodes]
            x = keras.layers.Concatenate(name=concat_name(i, j))(same_level + [up])
            nodes[i, j] = blocks.conv_unit(x, filters[i], (i, j), **unit)
    levels = range(1, depth + 1) if deep_supervision else (depth,)
    heads = {
        output_name(level): blocks.output_head(
            nodes[0, level], num_classes, output_activation, level
        )
        for level in levels
    }
    outputs = heads if deep_supervision else heads[output_name(depth)]
    return _use_backend_kernels(keras.Model(inputs, outputs, name=name))


def _backbone_taps(backbone, weights, trainable, inputs, depth, input_shape):
    """The backbone's feature maps by stride (empty for the built-in encoder)."""
    if backbone is None:
        if weights is not None:
            raise InputError(
                "`encoder_weights` is for a backbone; give `backbone` too. "
                f"Received: backbone=None, encoder_weights={weights!r}"
            )
        return {}
    from keras_unetpp import backbones

    entry = backbones.get_backbone(backbone)
    if len(input_shape) != 3:
        raise InputError(
            "Backbones are 2D keras.applications trunks; 3D volumes use the "
            f"built-in encoder (backbone=None). Received: backbone={backbone!r}, "
            f"input_shape={input_shape!r}"
        )
    if depth > entry.max_depth:
        raise InputError(
            f"The {backbone} backbone has feature maps down to stride "
            f"{2**entry.max_depth}, so `depth` can be at most {entry.max_depth}. "
            f"Received: depth={depth}"
        )
    check_bool(trainable, "encoder_trainable")
    weights = backbones.check_encoder_weights(weights)
    preprocess = backbones.preprocessing_layer(backbone, input_shape[-1])
    return backbones.build_trunk(backbone, preprocess(inputs), weights, trainable)


def _use_backend_kernels(model):
    """Runs batch normalization as the backend's fused kernel where it has one.

    TensorFlow only (see `keras_unetpp/fused_batch_norm.py`): JAX's XLA
    fuses Keras' element-wise batch norm itself, and the PyTorch backend keeps
    Keras' computation. The graph, its layers and what is saved stay core
    Keras.
    """
    if keras.backend.backend() == "tensorflow":
        from keras_unetpp.fused_batch_norm import fuse_batch_norm

        fuse_batch_norm(model)
    return model
