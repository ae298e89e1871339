"""Writing predicted masks (and overlays, probabilities) for images of any size.

Images are read and scaled to [0, 1] by the same code as the training
pipeline (`keras_unetpp.data`). How an image meets the network is the
run's size policy (`keras_unetpp.size_policy.SizePolicy`), the same code the
exported SavedModels run: a model trained on resized images sees each
image resized to the training size (squashing its aspect ratio, as training
did), and its probabilities are resized back to the image's own size before
thresholding; a model trained at native scale (crop mode) sees the image at
its own scale, padded to the network's stride and cropped back. Either way
every mask has exactly the size of its image.
"""

import collections
import functools
import os
import pathlib

import cv2
import numpy as np

from keras_unetpp.data import IMAGE_EXTENSIONS
from keras_unetpp.data.decode import prepare_image, read_image
from keras_unetpp.description import describe
from keras_unetpp.errors import DataError, InputError
from keras_unetpp.size_policy import SizePolicy
from keras_unetpp.tiling import TTAS, predict_tiled
from keras_unetpp.validation import check_choice, check_threshold

# Colour of the foreground in overlays (RGB), and its opacity.
OVERLAY_COLOR = np.array([255, 40, 40], np.float32)
OVERLAY_ALPHA = 0.45
# How `--probabilities` writes them: 16-bit PNGs (0..65535) or float32 .npy.
PROBABILITY_FORMATS = ("png16", "npy")


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


def predict_probabilities(model, image, image_size=None, tta=None):
    """Probabilities of one image at its own size.

    Runs `SizePolicy.probabilities`, the code of the exported serving
    functions, so a SavedModel exported with the same policy (and `tta`)
    returns the same probabilities.

    Args:
        model: a single-output keras_unetpp model (e.g. `prune(model, 4)` or
            `inference_model(model)`).
        image: float32 array `(height, width, channels)` in [0, 1].
        image_size: `(height, width)` the model was trained at (resize
            mode: the image is resized to it and the probabilities back), a
            `SizePolicy`, or `None` to run at the image's own size (padded
            to the stride and cropped back). Defaults to `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: test-time augmentation
            of the whole image (`SizePolicy.probabilities`). Defaults to
            `None`.

    Returns:
        float32 array `(height, width, classes)`.
    """
    check_choice(tta, "tta", TTAS)
    policy = SizePolicy.from_image_size(image_size)
    info = describe(model)
    run_graph = _graph(model, policy, info.stride, info.head_activation, tta)
    probabilities = run_graph(np.asarray(image, np.float32)[None])
    return probabilities.numpy()[0].astype(np.float32, copy=False)


# The last few models' traced graphs: a graph is traced once per model, not
# once per image. The cache holds its models (keyed by identity), so a key is
# never reused while it is cached.
@functools.lru_cache(maxsize=4)
def _graph(model, policy, stride, output_activation, tta):
    """`policy.graph(model, stride, output_activation, tta)`, traced once."""
    return policy.graph(model, stride, output_activation, tta)


# Activation memory of whole-image inference per pixel and per unit of the
# level-0 width: a depth-4 UNet++ of widths 8-128 grew by 7.35 GB on one
# 4000x4000 image (benchmarks/tiling_benchmark.py), i.e. 57 bytes per pixel
# per level-0 channel; rounded up.
_BYTES_PER_PIXEL_AND_WIDTH = 60


def check_fits_in_memory(info, spatial_size, path=None, available=None):
    """Raises unless whole-image inference of this size likely fits in memory.

    The estimate is `60 * filters[0]` bytes per pixel (measured, see
    `_BYTES_PER_PIXEL_AND_WIDTH`); it must be under half the memory
    available now. Tiled prediction (`keras_unetpp.predict_tiled`,
    `keras-unetpp predict --tile-size`) bounds memory by the tile batch.

    Args:
        info: the model's `ModelDescription`.
        spatial_size: the image's `(height, width)` (or volume's sizes).
        path: the image file, for the message. Defaults to `None`.
        available: bytes of memory available; `None` reads the system's.
            Defaults to `None`.

    Returns:
        int, the estimated bytes.
    """
    pixels = int(np.prod(spatial_size))
    needed = pixels * _BYTES_PER_PIXEL_AND_WIDTH * info.filters[0]
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return needed
    if needed > available / 2:
        size = "x".join(str(s) for s in spatial_size)
        where = f"{path}: " if path is not None else ""
        raise InputError(
            f"{where}a {size} image needs about {needed / 2**30:.1f} GiB for "
            f"whole-image inference ({available / 2**30:.1f} GiB available). "
            "Predict it tile by tile: `keras-unetpp predict ... --tile-size "
            "256` or `keras_unetpp.predict_tiled(model, images, 256)`. "
            f"Received: image of {size} pixels"
        )
    return needed


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


def _check_threshold(threshold):
    return check_threshold(threshold)


def _check_single_output(model, caller):
    if isinstance(model.output, (dict, list, tuple)):
        raise InputError(
            f"{caller} needs a single-output model; use "
            "keras_unetpp.inference_model(model) or prune(model, level). "
            f"Received: model with outputs {list(model.output_names)}"
        )


def _output_folder(path, output_dir):
    """Creates a results folder, or raises a one-line `InputError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"Cannot create the output folder {str(path)!r}: "
            f"{error.strerror or error}. Received: output_dir={str(output_dir)!r}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(
            f"The output folder {str(path)!r} is not writable. "
            f"Received: output_dir={str(output_dir)!r}"
        )
    return path


def write_png(path, array):
    """`cv2.imwrite` that raises an `InputError` naming the file on failure."""
    try:
        written = cv2.imwrite(str(path), array)
    except cv2.error as error:
        raise InputError(f"Could not write {str(path)!r}: {error}") from None
    if not written:
        raise InputError(
            f"Could not write {str(path)!r} (cv2.imwrite failed: is the folder "
            "writable, the disk not full, the name not a folder?)"
        )
    return pathlib.Path(path)


def write_npy(path, array):
    """`np.save` that raises an `InputError` naming the file on failure."""
    try:
        with open(path, "wb") as f:
            np.save(f, array)
    except OSError as error:
        raise InputError(
            f"Could not write {str(path)!r}: {error.strerror or error}"
        ) from None
    return pathlib.Path(path)


def write_probabilities(folder, stem, probabilities, file_format):
    """Writes the probabilities of one image; returns the files written.

    `"npy"`: `<stem>.npy`, float32 `(height, width)` for one class,
    `(height, width, classes)` for several. `"png16"`: 16-bit PNGs of
    `round(probability * 65535)`: `<stem>.png` for one class, one
    `<stem>_class<k>.png` per class k for several (a PNG holds 1, 3 or 4
    channels, not any number of classes).
    """
    folder = pathlib.Path(folder)
    probabilities = np.asarray(probabilities, np.float32)
    one = probabilities.shape[-1] == 1
    if file_format == "npy":
        array = probabilities[..., 0] if one else probabilities
        return [write_npy(folder / f"{stem}.npy", array)]
    scaled = np.rint(np.clip(probabilities, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if one:
        return [write_png(folder / f"{stem}.png", scaled[..., 0])]
    return [
        write_png(folder / f"{stem}_class{k}.png", scaled[..., k])
        for k in range(scaled.shape[-1])
    ]


def _check_unique_names(inputs):
    """Refuses two inputs that would write the same output name."""
    by_stem = collections.defaultdict(list)
    for stem, path in inputs:
        by_stem[stem].append(str(path))
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        shown = "; ".join(
            " and ".join(repr(p) for p in paths) + f" -> {stem}.png"
            for stem, paths in sorted(clashes.items())
        )
        raise InputError(
            "Several inputs would write the same output file (outputs are "
            f"named by the input's name without extension): {shown}. Rename "
            "or move one of them. Received: "
            f"{sum(len(p) for p in clashes.values())} clashing inputs"
        )


def predict_images(
    model,
    inputs,
    output_dir,
    size_policy=None,
    threshold=0.5,
    overlays=False,
    probabilities=None,
    pixel_scaling="dtype",
    tiling=None,
    tta=None,
):
    """Predicts a mask PNG (and optionally more) for each of a list of images.

    Writes `output_dir/masks/<stem>.png` (0/255 for one class, class
    indices otherwise), with `overlays=True` also
    `output_dir/overlays/<stem>.png` (the image with the mask tinted red and
    outlined), and with `probabilities` also
    `output_dir/probabilities/<stem>.png|.npy` (see `write_probabilities`).
    Everything is checked before the first prediction: the output names
    are unique and the folders writable; every write is checked. An image
    that cannot be read (corrupt, truncated, too large for memory) does not
    stop the others: every other image gets its mask, then one `DataError`
    names each file left without one (and what an earlier prediction wrote
    under its name is deleted, so that no stale mask stands for it).

    Args:
        model: a single-output keras_unetpp model.
        inputs: list of `(stem, path)`: the output name and the image file.
        output_dir: folder for the results (created if missing).
        size_policy: `SizePolicy` (or a training `(height, width)`, or
            `None` for native). Defaults to `None`.
        threshold: float, probability threshold of one-class models.
            Defaults to `0.5`.
        overlays: bool, also write overlays. Defaults to `False`.
        probabilities: `None`, `"png16"` or `"npy"`. Defaults to `None`.
        pixel_scaling: `"dtype"` or `"minmax"`, as the training pipeline
            used. Defaults to `"dtype"`.
        tiling: `None` (the whole image at once, as the SavedModels run
            it), or a dict of `keras_unetpp.predict_tiled` arguments
            (`tile_size`, `overlap`, `tta`, ...): sliding-window prediction
            for images too large for one pass, native size policy only.
            Defaults to `None`.
        tta: `None`, `"flips"` or `"flips+rot90"`: test-time augmentation
            of whole images (`predict_probabilities`), as a SavedModel
            exported with the same `tta` computes it; with `tiling`, TTA is
            its `"tta"` entry instead. Defaults to `None`.

    Returns:
        dict with lists of `pathlib.Path`: `"masks"`, `"overlays"` and
        `"probabilities"`, the files written.

    Raises:
        DataError: after every other image is predicted, for the images
            that could not be: unreadable files and images too large for
            whole-image inference in the memory available (see
            `check_fits_in_memory`, with the advice to tile); `.path` is the
            first of them.
        InputError: bad arguments, before any prediction.
    """
    _check_threshold(threshold)
    _check_single_output(model, "predict_images")
    policy = SizePolicy.from_image_size(size_policy)
    if probabilities not in (None, *PROBABILITY_FORMATS):
        raise InputError(
            f"`probabilities` must be None or one of {PROBABILITY_FORMATS}. "
            f"Received: probabilities={probabilities!r}"
        )
    inputs = [(str(stem), pathlib.Path(path)) for stem, path in inputs]
    if not inputs:
        raise InputError("There are no images to predict. Received: 0 images")
    _check_unique_names(inputs)
    output_dir = pathlib.Path(output_dir)
    folders = {"masks": _output_folder(output_dir / "masks", output_dir)}
    if overlays:
        folders["overlays"] = _output_folder(output_dir / "overlays", output_dir)
    if probabilities:
        folders["probabilities"] = _output_folder(
            output_dir / "probabilities", output_dir
        )
    info = describe(model)
    check_choice(tta, "tta", TTAS)
    if tiling is not None and tta is not None:
        raise InputError(
            "Tiled prediction takes its test-time augmentation in `tiling` "
            f"(tiling={{..., 'tta': {tta!r}}}). Received: tta with tiling"
        )
    if tiling is not None and policy.mode != "native":
        raise InputError(
            "Tiled prediction runs at the images' own scale; this run resizes "
            f"every image to {policy.short_description()}, which needs no "
            "tiles. Received: tiling with a resize-mode run"
        )
    written = {"masks": [], "overlays": [], "probabilities": []}
    failed = []
    for stem, path in inputs:
        try:
            image = prepare_image(
                read_image(path), info.channels, pixel_scaling, str(path)
            )
            if tiling is None and policy.mode == "native":
                check_fits_in_memory(info, image.shape[:-1], path)
        except InputError as error:
            # One bad file does not cost the other images their masks; it
            # is reported at the end, never skipped in silence.
            failed.append((path, error))
            _remove_outputs(folders, stem, info.num_classes)
            continue
        if tiling is not None:
            probs = predict_tiled(model, image[None], **tiling)[0]
        else:
            probs = predict_probabilities(model, image, policy, tta)
        mask = to_mask(probs, threshold)
        written["masks"].append(write_png(folders["masks"] / f"{stem}.png", mask))
        if overlays:
            rgb = cv2.cvtColor(overlay(image, mask), cv2.COLOR_RGB2BGR)
            written["overlays"].append(
                write_png(folders["overlays"] / f"{stem}.png", rgb)
            )
        if probabilities:
            written["probabilities"] += write_probabilities(
                folders["probabilities"], stem, probs, probabilities
            )
    if failed:
        raise _failures(failed, len(inputs), folders["masks"])
    return written


def _remove_outputs(folders, stem, num_classes):
    """Deletes what an earlier prediction wrote for `stem`, so none is stale."""
    names = [f"{stem}.png", f"{stem}.npy"]
    names += [f"{stem}_class{k}.png" for k in range(num_classes)]
    for folder in folders.values():
        for name in names:
            (folder / name).unlink(missing_ok=True)


def _failures(failed, total, masks_folder, listed=5):
    """One `DataError` for the images that got no mask, naming each."""
    reasons = "; ".join(str(error).rstrip(".") for _, error in failed[:listed])
    more = f"; and {len(failed) - listed} more" if len(failed) > listed else ""
    return DataError(
        f"{len(failed)} of {total} images could not be predicted and have no "
        f"mask (the other {total - len(failed)} masks are written to "
        f"{str(masks_folder)!r}): {reasons}{more}.",
        failed[0][0],
    )


def predict_folder(
    model,
    input_dir,
    output_dir,
    image_size=None,
    threshold=0.5,
    overlays=False,
    pixel_scaling="dtype",
    probabilities=None,
):
    """Predicts a mask PNG for every image of a folder.

    Writes `output_dir/masks/<stem>.png` (0/255 for one class, class indices
    otherwise), and with `overlays=True` also
    `output_dir/overlays/<stem>.png` (the image with the mask tinted red and
    outlined). Images may have any size and 1 to 4 channels; they are
    converted to the model's channels. Two images with the same name
    (`a.png`, `a.tif`) are refused before anything is written.

    Args:
        model: a single-output keras_unetpp model.
        input_dir: folder of PNG, JPEG or TIFF images.
        output_dir: folder for the results (created if missing).
        image_size: `(height, width)` the model was trained at (images are
            resized to it and the masks back), a `SizePolicy`, or `None` to
            predict at each image's own size. Defaults to `None`.
        threshold: float, probability threshold of one-class models.
            Defaults to `0.5`.
        overlays: bool, also write overlays. Defaults to `False`.
        pixel_scaling: `"dtype"` or `"minmax"`, as the training pipeline
            used. Defaults to `"dtype"`.
        probabilities: `None`, `"png16"` or `"npy"`: also write the
            probabilities to `output_dir/probabilities/`. Defaults to
            `None`.

    Returns:
        list of `pathlib.Path`, the mask files written.

    Example:

    ```python
    model = keras_unetpp.prune(trained, 4)
    predict_folder(model, "new_images", "predictions", image_size=(96, 96),
                   overlays=True)
    ```
    """
    _check_threshold(threshold)
    _check_single_output(model, "predict_folder")
    files = image_files(input_dir)
    return predict_images(
        model,
        [(path.stem, path) for path in files],
        output_dir,
        size_policy=image_size,
        threshold=threshold,
        overlays=overlays,
        probabilities=probabilities,
        pixel_scaling=pixel_scaling,
    )["masks"]
