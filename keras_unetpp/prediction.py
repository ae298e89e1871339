"""Writing predicted masks (and overlays) for a folder of images of any size.

Images are read and scaled to [0, 1] by the same code as the training
pipeline (`keras_unetpp.data`). A model trained on resized images
(`image_size`) sees each image resized to that size, and its probabilities
are resized back to the image's own size before thresholding; with
`image_size=None` the image is used at its own scale, padded to the
network's stride and cropped back. Either way every mask has exactly the
size of its image.
"""

import pathlib

import cv2
import numpy as np
import tensorflow as tf

from keras_unetpp.data import IMAGE_EXTENSIONS
from keras_unetpp.data.decode import prepare_image, read_image
from keras_unetpp.errors import InputError
from keras_unetpp.padding import predict_padded

# Colour of the foreground in overlays (RGB), and its opacity.
OVERLAY_COLOR = np.array([255, 40, 40], np.float32)
OVERLAY_ALPHA = 0.45


def image_files(input_dir):
    """The image files of a folder (PNG, JPEG, TIFF), sorted by name.

    Raises:
        ValueError: the folder does not exist or holds no images.
    """
    folder = pathlib.Path(input_dir)
    if not folder.is_dir():
        raise InputError(
            f"The input folder does not exist. Received: input_dir={str(folder)!r}"
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise InputError(
            f"The input folder holds no {', '.join(IMAGE_EXTENSIONS)} images. "
            f"Received: input_dir={str(folder)!r}"
        )
    return files


def predict_probabilities(model, image, image_size=None):
    """Probabilities of one image at its own size.

    Args:
        model: a single-output keras_unetpp model (e.g. `prune(model, 4)` or
            `inference_model(model)`).
        image: float32 array `(height, width, channels)` in [0, 1].
        image_size: `(height, width)` the model was trained at, or `None`
            to run at the image's own size (padded to the stride).
            Defaults to `None`.

    Returns:
        float32 array `(height, width, classes)`.
    """
    height, width = image.shape[:2]
    if image_size is None:
        return predict_padded(model, image[None], batch_size=1)[0]
    resized = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    resized = tf.clip_by_value(resized, 0.0, 1.0)
    probabilities = model(resized[None], training=False)[0]
    back = tf.image.resize(probabilities, (height, width), method="bilinear")
    return back.numpy().astype(np.float32)


def to_mask(probabilities, threshold=0.5):
    """Turns probabilities `(h, w, classes)` into a uint8 mask image.

    One class: 255 where the probability is at least `threshold`, else 0.
    Several classes: the arg-max class index.
    """
    if probabilities.shape[-1] == 1:
        return np.where(probabilities[..., 0] >= threshold, 255, 0).astype(np.uint8)
    return np.argmax(probabilities, axis=-1).astype(np.uint8)


def overlay(image, mask):
    """The image in RGB with the foreground (mask > 0) tinted and outlined.

    Args:
        image: float array `(height, width, channels)` in [0, 1].
        mask: uint8 array `(height, width)`.

    Returns:
        uint8 RGB array `(height, width, 3)`.
    """
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    rgb = rgb.astype(np.float32) * 255.0
    foreground = mask > 0
    rgb[foreground] = (1 - OVERLAY_ALPHA) * rgb[foreground] + (
        OVERLAY_ALPHA * OVERLAY_COLOR
    )
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(
        foreground.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return out


def predict_folder(
    model,
    input_dir,
    output_dir,
    image_size=None,
    threshold=0.5,
    overlays=False,
    normalization="dtype",
):
    """Predicts a mask PNG for every image of a folder.

    Writes `output_dir/masks/<stem>.png` (0/255 for one class, class indices
    otherwise), and with `overlays=True` also
    `output_dir/overlays/<stem>.png` (the image with the mask tinted red and
    outlined). Images may have any size and 1 to 4 channels; they are
    converted to the model's channels.

    Args:
        model: a single-output keras_unetpp model.
        input_dir: folder of PNG, JPEG or TIFF images.
        output_dir: folder for the results (created if missing).
        image_size: `(height, width)` the model was trained at (images are
            resized to it and the masks back), or `None` to predict at each
            image's own size. Defaults to `None`.
        threshold: float, probability threshold of one-class models.
            Defaults to `0.5`.
        overlays: bool, also write overlays. Defaults to `False`.
        normalization: `"dtype"` or `"minmax"`, as the training pipeline
            used. Defaults to `"dtype"`.

    Returns:
        list of `pathlib.Path`, the mask files written.

    Example:

    ```python
    model = keras_unetpp.prune(trained, 4)
    predict_folder(model, "new_images", "predictions", image_size=(96, 96),
                   overlays=True)
    ```
    """
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(
            f"`threshold` must be in (0, 1). Received: threshold={threshold!r}"
        )
    if isinstance(model.output, (dict, list, tuple)):
        raise InputError(
            "predict_folder needs a single-output model; use "
            "keras_unetpp.inference_model(model) or prune(model, level). "
            f"Received: model with outputs {list(model.output_names)}"
        )
    files = image_files(input_dir)
    output_dir = pathlib.Path(output_dir)
    (output_dir / "masks").mkdir(parents=True, exist_ok=True)
    if overlays:
        (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
    channels = int(model.inputs[0].shape[-1])
    written = []
    for path in files:
        image = prepare_image(read_image(path), channels, normalization, str(path))
        probabilities = predict_probabilities(model, image, image_size)
        mask = to_mask(probabilities, threshold)
        mask_path = output_dir / "masks" / f"{path.stem}.png"
        cv2.imwrite(str(mask_path), mask)
        written.append(mask_path)
        if overlays:
            rgb = overlay(image, mask)
            cv2.imwrite(
                str(output_dir / "overlays" / f"{path.stem}.png"),
                cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
            )
    return written
