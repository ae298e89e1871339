"""How an image of any size meets the network: one policy for every path.

A run is trained in one of two ways (`run.json`'s `data.resize_mode`):

- `"resize"`: every image is resized to `image_size` (bilinear,
  antialiased, clipped to [0, 1]), squashing its aspect ratio. The network
  has only ever seen that scale, so at inference the image is resized the
  same way, the network runs at `image_size`, and its probabilities are
  resized back (bilinear) to the image's own size before the threshold.
- `"crop"`: the network is trained on crops at the images' native scale.
  At inference the image keeps its scale: it is padded at the bottom and
  right to a multiple of the network's stride `2**level` and the
  predictions are cropped back.

`SizePolicy` records which (`SizePolicy.from_run_config(config)`), and
`SizePolicy.probabilities` is the single implementation of it: the
`keras-unetpp predict` path (`prediction.predict_probabilities`) and the
serving function of every exported SavedModel
(`export.signatures.make_serving_fn`) both call it, so a served model and
`predict` agree by construction; `predict` and `evaluate` trace it into a
graph (`SizePolicy.graph`) as the SavedModels do, so that they also compute
with the same fused layers. Everything here is TensorFlow ops that
trace with unknown batch, height and width.
"""

import dataclasses

import tensorflow as tf

from keras_unetpp.errors import InputError
from keras_unetpp.validation import is_int

RESIZE = "resize"
NATIVE = "native"
MODES = (RESIZE, NATIVE)
# run.json's data.resize_mode -> the policy mode inference must use.
_RUN_MODES = {"resize": RESIZE, "crop": NATIVE}


@dataclasses.dataclass(frozen=True)
class SizePolicy:
    """How images of any size are fed to the network and mapped back.

    Attributes:
        mode: `"resize"` (resize to `image_size`, as in resize-mode
            training) or `"native"` (own scale, padded to the stride, as in
            crop-mode training).
        image_size: `(height, width)` of the network input in resize mode,
            `None` in native mode.

    Example:

    ```python
    policy = SizePolicy.from_run_config(runs.read_run_config("runs/nuclei"))
    policy                      # SizePolicy(mode='resize', image_size=(96, 96))
    probabilities = policy.probabilities(model, images, stride=16)
    ```
    """

    mode: str = NATIVE
    image_size: tuple | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(
                f"The size policy's `mode` must be one of {MODES}. "
                f"Received: mode={self.mode!r}"
            )
        if self.mode == NATIVE:
            if self.image_size is not None:
                raise InputError(
                    "A native size policy runs at each image's own size; it "
                    f"takes no image_size. Received: image_size={self.image_size!r}"
                )
            return
        try:
            values = tuple(self.image_size)
        except TypeError:
            values = ()
        if len(values) != 2 or not all(is_int(v) and v > 0 for v in values):
            raise InputError(
                "A resize size policy needs the training `image_size` as "
                "(height, width) of positive ints. "
                f"Received: image_size={self.image_size!r}"
            )
        height, width = (int(v) for v in values)
        object.__setattr__(self, "image_size", (height, width))

    @classmethod
    def native(cls):
        """The policy of crop-mode runs: each image at its own scale."""
        return cls(NATIVE)

    @classmethod
    def resize(cls, image_size):
        """The policy of resize-mode runs trained at `image_size`."""
        return cls(RESIZE, image_size)

    @classmethod
    def from_image_size(cls, image_size):
        """`native()` for `None`, `resize(image_size)` otherwise.

        A `SizePolicy` is returned as it is, so functions that take the
        older `image_size=` argument accept a policy too.
        """
        if isinstance(image_size, cls):
            return image_size
        return cls.native() if image_size is None else cls.resize(image_size)

    @classmethod
    def from_run_config(cls, config):
        """The policy a training run was made with, from its `run.json` dict.

        Args:
            config: dict read from `<run>/run.json` (see
                `keras_unetpp.runs.read_run_config`).

        Returns:
            `SizePolicy`: `resize(data.image_size)` for a run trained with
            `resize_mode="resize"` (the default), `native()` for `"crop"`.
        """
        settings = config.get("data", {}) if isinstance(config, dict) else {}
        resize_mode = settings.get("resize_mode", "resize")
        if resize_mode not in _RUN_MODES:
            raise InputError(
                "run.json's data.resize_mode must be one of "
                f"{tuple(_RUN_MODES)}. Received: resize_mode={resize_mode!r}"
            )
        if _RUN_MODES[resize_mode] == NATIVE:
            return cls.native()
        if settings.get("image_size") is None:
            raise InputError(
                "run.json records resize_mode='resize' but no data.image_size; "
                "the run folder is incomplete. Received: image_size=None"
            )
        return cls.resize(settings["image_size"])

    @classmethod
    def from_dict(cls, values):
        """The policy of a `to_dict()` dict (e.g. from export metadata)."""
        try:
            mode = values["mode"]
            image_size = values.get("image_size")
        except (TypeError, KeyError):
            raise InputError(
                "A size policy dict needs 'mode' (and 'image_size' for "
                f"'resize'). Received: {values!r}"
            ) from None
        return cls(mode, None if image_size is None else tuple(image_size))

    def to_dict(self):
        """A JSON-serialisable description, as recorded in export metadata."""
        return {
            "mode": self.mode,
            "image_size": None if self.image_size is None else list(self.image_size),
            "aspect_ratio": "squashed" if self.mode == RESIZE else "kept",
            "description": self.description(),
        }

    def description(self, stride=None):
        """One sentence saying what happens to an input image.

        Args:
            stride: int, the padding multiple of native mode (`2**level`),
                or `None` to leave it unnamed. Defaults to `None`.
        """
        if self.mode == RESIZE:
            height, width = self.image_size
            return (
                f"resized to {height}x{width} for the network, as in training "
                "(bilinear, antialiased; the aspect ratio is not kept); "
                "probabilities resized back to the input size (bilinear) "
                "before the threshold"
            )
        multiple = "the network's stride" if stride is None else str(stride)
        return (
            "used at its own scale, as in training (crop mode): reflect-padded "
            f"at the bottom and right to a multiple of {multiple} (edge "
            "padding when the image is smaller than the padding), predictions "
            "cropped back"
        )

    def short_description(self):
        """A few words for a status line, e.g. for `keras-unetpp predict`."""
        if self.mode == RESIZE:
            height, width = self.image_size
            return (
                f"images resized to {height}x{width} for the network as in "
                "training (aspect ratio not kept), masks at each image's own size"
            )
        return "images at their own scale as in training (crop mode)"

    def check_stride(self, stride):
        """Raises an `InputError` if the network cannot run at `image_size`."""
        if self.mode == RESIZE and any(s % stride for s in self.image_size):
            raise InputError(
                f"The training image_size {self.image_size} is not a multiple "
                f"of the network's stride {stride}. Received: "
                f"image_size={self.image_size}, stride={stride}"
            )
        return self

    def to_model_input(self, images, stride):
        """Maps a batch of images to the network's input.

        Args:
            images: float32 tensor `(batch, height, width, channels)` in
                [0, 1], any height and width (or a batch of volumes,
                `(batch, depth, height, width, channels)`, native mode).
            stride: int, the multiple the network needs (`2**level`).

        Returns:
            `(inputs, size)`: the network input and the images' own
            spatial size (`(height, width)`) as an int32 tensor, for
            `to_image_size`.
        """
        images = tf.convert_to_tensor(images, tf.float32)
        size = tf.shape(images)[1:-1]
        if self.mode == RESIZE:
            self.check_stride(stride)
            resized = tf.image.resize(
                images, self.image_size, method="bilinear", antialias=True
            )
            return tf.clip_by_value(resized, 0.0, 1.0), size
        return pad_to_stride(images, stride)[0], size

    def to_image_size(self, outputs, size):
        """Maps the network's outputs back to the images' own size.

        Args:
            outputs: float32 tensor `(batch, h, w, classes)` from the
                network, at the size `to_model_input` gave it.
            size: the int32 `(height, width)` from `to_model_input`.

        Returns:
            float32 tensor `(batch, height, width, classes)`.
        """
        if self.mode == RESIZE:
            return tf.image.resize(outputs, size, method="bilinear")
        spatial = tuple(slice(0, size[axis]) for axis in range(outputs.shape.rank - 2))
        return outputs[(slice(None), *spatial, slice(None))]

    def graph(self, model, stride, output_activation="sigmoid", tta=None):
        """`probabilities` traced once into a graph, as every SavedModel runs it.

        Called eagerly, a network computes each layer on its own; traced,
        TensorFlow's graph optimizer fuses layers (on CPU, oneDNN folds the
        batch normalization and the activation into the convolution). In
        float32 the two differ by float rounding; in bfloat16 the fused
        graph skips roundings to bfloat16 between layers, and eager
        probabilities differ from a SavedModel's by up to 2e-3, enough to
        flip the odd mask pixel near the threshold. `keras-unetpp predict`
        and `evaluate` call this graph, so that they compute what a served
        model computes, operation for operation.

        Args:
            model: a keras_unetpp model (see `probabilities`).
            stride: int, `2**depth` of `model`.
            output_activation: see `probabilities`. Defaults to `"sigmoid"`.
            tta: see `probabilities`. Defaults to `None`.

        Returns:
            A `tf.function` of one float32 batch `(batch, height, width,
            channels)` (or of volumes), traced once for any batch and size,
            returning `probabilities(model, images, stride,
            output_activation, tta)`.

        Example:

        ```python
        run_graph = SizePolicy().graph(keras_unetpp.prune(model, 4), 16)
        probabilities = run_graph(images)  # (batch, height, width, classes)
        ```
        """
        shape = model.inputs[0].shape
        spec = tf.TensorSpec((None,) * (len(shape) - 1) + (shape[-1],), tf.float32)

        def run(images):
            return self.probabilities(model, images, stride, output_activation, tta)

        return tf.function(run, input_signature=[spec], autograph=False)

    def probabilities(
        self, model, images, stride, output_activation="sigmoid", tta=None
    ):
        """Probabilities of a batch of images at their own size.

        The one implementation behind `keras-unetpp predict` and every
        exported serving function: `to_model_input`, the model in
        inference mode, the head's activation if it returns logits, then
        `to_image_size`. With `tta`, the network runs on every transform of
        the model input (flips, and quarter turns), each prediction is
        turned back and the probabilities are averaged, before
        `to_image_size`.

        Args:
            model: a single-output keras_unetpp model (pruned or accurate).
            images: float32 `(batch, height, width, channels)` in [0, 1].
            stride: int, `2**depth` of `model`.
            output_activation: what the model returns: `"sigmoid"` or
                `"softmax"` probabilities, or `None` for logits (then a
                sigmoid is applied for one class, a softmax for more).
                Defaults to `"sigmoid"`.
            tta: `None`, `"flips"` or `"flips+rot90"`: test-time
                augmentation (`keras_unetpp.tiling.transforms`). Defaults
                to `None`.

        Returns:
            float32 tensor `(batch, height, width, classes)`.
        """
        from keras_unetpp.tiling import transforms  # keras_unetpp.tiling is Keras

        inputs, size = self.to_model_input(images, stride)
        rank = inputs.shape.rank - 2
        total = None
        chosen = transforms(rank, tta)
        for transform in chosen:
            moved = transform_batch(inputs, transform, rank)
            outputs = tf.cast(model(moved, training=False), tf.float32)
            if output_activation is None:
                if outputs.shape[-1] == 1:
                    outputs = tf.sigmoid(outputs)
                else:
                    outputs = tf.nn.softmax(outputs)
            outputs = untransform_batch(outputs, transform, rank)
            total = outputs if total is None else total + outputs
        if tta is not None:
            total = total / len(chosen)
        return self.to_image_size(total, size)


def _rotation(rank):
    """The axis order that swaps the last two spatial axes of a batch."""
    order = list(range(rank + 2))
    order[rank - 1], order[rank] = rank, rank - 1
    return order


def transform_batch(batch, transform, rank):
    """One test-time transform of a batch tensor, in TensorFlow ops.

    Args:
        batch: tensor `(batch, *spatial, channels)` with `rank` spatial axes.
        transform: `(flip_axes, rotate)`, one of
            `keras_unetpp.tiling.transforms(rank, tta)`.
        rank: int, 2 for images, 3 for volumes.

    Returns:
        The flipped (and quarter-turned in the last two spatial axes,
        as `np.rot90(batch, 1, axes=(rank - 1, rank))`) batch.
    """
    flip, rotate = transform
    if flip:
        batch = tf.reverse(batch, axis=list(flip))
    if rotate:  # np.rot90(batch, 1, axes=(rank - 1, rank)): flip, then swap.
        batch = tf.transpose(tf.reverse(batch, axis=[rank]), _rotation(rank))
    return batch


def untransform_batch(batch, transform, rank):
    """Undoes `transform_batch(batch, transform, rank)`."""
    flip, rotate = transform
    if rotate:  # np.rot90(batch, -1, axes=(rank - 1, rank)): swap, then flip.
        batch = tf.reverse(tf.transpose(batch, _rotation(rank)), axis=[rank])
    if flip:
        batch = tf.reverse(batch, axis=list(flip))
    return batch


def pad_indices(size, padded_size, reflect):
    """Source indices along one axis for reflect or edge padding, in-graph.

    Gathering them pads an axis of `size` at its end to `padded_size`:
    mirrored (without repeating the last pixel) where `reflect`, else the
    last pixel repeated.
    """
    positions = tf.range(padded_size)
    reflected = tf.where(positions < size, positions, 2 * (size - 1) - positions)
    edge = tf.minimum(positions, size - 1)
    return tf.where(reflect, reflected, edge)


def pad_to_stride(images, stride):
    """Pads a batch at the end of each spatial axis to a multiple of `stride`, in-graph.

    The same rule as `keras_unetpp.pad_to_multiple`: reflect padding, or edge
    padding when the padding of any axis is not smaller than that axis
    (a reflection needs that many pixels to mirror). Written with gathers of
    computed indices, so it traces with unknown sizes and compiles with XLA.
    Images `(batch, height, width, channels)` are padded at the bottom and
    right; volumes `(batch, depth, height, width, channels)` at the end of
    all three axes.

    Args:
        images: float tensor `(batch, height, width, channels)`, or
            `(batch, depth, height, width, channels)`.
        stride: int, e.g. `2**level`.

    Returns:
        `(padded, *sizes)`: the padded batch, then the original length of
        each spatial axis as a scalar int32 tensor (`height, width` for
        images).
    """
    shape = tf.shape(images)
    rank = images.shape.rank - 2
    sizes = [shape[axis] for axis in range(1, rank + 1)]
    targets = [(size + stride - 1) // stride * stride for size in sizes]
    reflect = tf.reduce_all(
        tf.stack([target - size < size for size, target in zip(sizes, targets)])
    )
    padded = images
    for axis, (size, target) in enumerate(zip(sizes, targets), start=1):
        padded = tf.gather(padded, pad_indices(size, target, reflect), axis=axis)
    return (padded, *sizes)
