"""Reading image and mask files into checked NumPy arrays.

Everything here is plain Python/NumPy/OpenCV so that every problem can be
reported with the name of the file it comes from: a `DataError` whose
`.path` is the file. `make_dataset` runs `load_pair` on every pair before it
builds its pipeline (see `pipeline.load_pairs`).

Rules:

- Files: not empty, decodable, not truncated (a JPEG must end with its
  end-of-image marker: libjpeg would fill missing rows with gray).
- Images: PNG, JPEG or TIFF; 8-bit, 16-bit (or float TIFF); 1 (gray),
  2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels. Alpha is dropped. Float
  images must have finite pixels (no NaN or Inf) under every pixel
  scaling.
  `pixel_scaling="dtype"` divides by 255 or 65535 (float images must already
  lie in [0, 1]); `"minmax"` maps each image's own range to [0, 1]. RGB is
  turned into gray with the ITU-R 601 weights (0.299, 0.587, 0.114), gray
  into RGB by repeating it.
- Binary masks (`num_classes == 1`): without a threshold a mask may hold at
  most two values, 0 = background and one other value = foreground (so 0/1,
  0/255 and 0/65535 masks all work); with `mask_threshold=t` foreground is
  `value > t`. Gray masks saved as RGB (equal channels) are accepted.
- Class masks (`num_classes > 1`): one channel (or a palette PNG, whose
  palette indices are the classes) of integers in `[0, num_classes)`.
- `mask_map` (a dict) first maps raw mask values to classes (or to 0/1 for a
  binary mask); a value that is not in the map is an error.
"""

import collections
import os
import struct

import cv2
import numpy as np

from keras_unetpp import validation
from keras_unetpp.errors import DataError
from keras_unetpp.validation import PIXEL_SCALINGS  # noqa: F401

# ITU-R BT.601 luma weights, the ones OpenCV and Pillow use for RGB -> gray.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# How far from the end of a JPEG file its end-of-image marker may lie.
_JPEG_TAIL = 1024

# Options shared by every sample of a pipeline.
DecodeOptions = collections.namedtuple(
    "DecodeOptions",
    [
        "channels",
        "num_classes",
        "pixel_scaling",
        "mask_threshold",
        "invert_mask",
        "mask_map",
    ],
)


def mask_dtype(num_classes):
    """The NumPy dtype that holds the mask labels of `num_classes` classes."""
    return np.dtype(validation.mask_dtype(num_classes)).type


def _values(array, limit=8):
    values = np.unique(array)
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    if values.size > limit:
        shown += f", ... ({values.size} distinct values)"
    return shown


def _is_palette_png(data):
    # IHDR is the first chunk; its colour type byte sits at offset 25.
    return data[:8].tobytes() == _PNG_SIGNATURE and data.size > 25 and data[25] == 3


def _png_size(data):
    """`(width, height)` declared in a PNG's header (IHDR), or None."""
    if data[:8].tobytes() != _PNG_SIGNATURE or data.size < 24:
        return None
    return struct.unpack(">II", data[16:24].tobytes())


def _decode_failure(path, data, error):
    """The message for a file OpenCV refused with an exception."""
    size = _png_size(data)
    declared = (
        f"its header declares {size[0]}x{size[1]} pixels (width x height), "
        if size
        else ""
    )
    if "CV_IO_MAX_IMAGE_PIXELS" in str(error):
        limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**30))
        return (
            f"Cannot decode {path!r}: {declared or 'it is '}more than the "
            f"{limit} pixels OpenCV decodes (the environment variable "
            "OPENCV_IO_MAX_IMAGE_PIXELS sets the limit); expected an image "
            "small enough to decode, e.g. split into tiles."
        )
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else ""
    return (
        f"Cannot decode {path!r}: it is not a valid PNG, JPEG or TIFF image "
        f"(corrupt, truncated or another format; {declared}OpenCV: {reason})."
    )


def _tiff_samples_per_pixel(data):
    """SamplesPerPixel (tag 277) of a TIFF's first page, or None."""
    raw = data.tobytes()
    if raw[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if raw[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", raw, 4)
        (count,) = struct.unpack_from(order + "H", raw, offset)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(
                order + "HHI4s", raw, offset + 2 + 12 * k
            )
            if tag == 277:
                fmt = order + ("H" if kind == 3 else "I")
                return struct.unpack_from(fmt, value)[0]
    except struct.error:
        return None
    return 1


def _is_truncated_jpeg(data):
    """Whether JPEG bytes lack the end-of-image marker near their end."""
    if data[:3].tobytes() != b"\xff\xd8\xff":
        return False
    # A little trailing data after the marker (padding, vendor blocks) is fine.
    return data[-_JPEG_TAIL:].tobytes().rstrip(b"\x00").rfind(b"\xff\xd9") < 0


def read_image(path, palette_indices=False):
    """Decodes a PNG, JPEG or TIFF file into a NumPy array.

    Args:
        path: str, the file.
        palette_indices: bool, return the palette indices of a palette
            (indexed-colour) PNG instead of its colours, as class masks need.
            Defaults to `False`.

    Returns:
        A `(height, width)` or `(height, width, channels)` array of dtype
        uint8, uint16 or float32, colour channels in RGB(A) order.

    Raises:
        DataError: the file cannot be read, is empty, cannot be decoded
            (corrupt or truncated), is a multi-page TIFF, or has more than
            4 channels; the message and `.path` name the file.
    """
    path = str(path)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise DataError(f"Cannot read the file {path!r}: {e}", path) from None
    if data.size == 0:
        raise DataError(
            f"The file {path!r} is empty (0 bytes); expected a PNG, JPEG or "
            "TIFF image.",
            path,
        )
    if palette_indices and _is_palette_png(data):
        from PIL import Image  # Only palette PNGs need Pillow.

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("P") if im.mode == "PA" else im)
        except Image.DecompressionBombError as e:
            raise DataError(
                f"Cannot decode the palette PNG {path!r}: {e}; expected an "
                "image small enough to decode, e.g. split into tiles.",
                path,
            ) from None
        except (OSError, ValueError) as e:
            raise DataError(
                f"Cannot decode the palette PNG {path!r} (corrupt or truncated): {e}",
                path,
            ) from None
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise DataError(_decode_failure(path, data, e), path) from None
    if array is None:
        samples = _tiff_samples_per_pixel(data)
        if samples is not None and samples > 4:
            raise DataError(
                f"The TIFF file {path!r} has {samples} channels; supported are "
                "1 (gray), 2 (gray + alpha), 3 (RGB) and 4 (RGBA).",
                path,
            )
        raise DataError(
            f"Cannot decode {path!r}: it is not a valid PNG, JPEG or TIFF "
            "image (corrupt, truncated or another format).",
            path,
        )
    if _is_truncated_jpeg(data):
        # libjpeg fills the missing rows with gray and only warns.
        raise DataError(
            f"The JPEG file {path!r} is truncated (it has no end-of-image "
            "marker); expected a complete JPEG image.",
            path,
        )
    if path.lower().endswith((".tif", ".tiff")) and cv2.imcount(path) > 1:
        raise DataError(
            f"The TIFF file {path!r} has {cv2.imcount(path)} pages; save one "
            "image (or one mask) per file.",
            path,
        )
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., ::-1]
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(array)


def drop_alpha(array, name):
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise DataError(
            f"{name!r} has an unsupported shape {array.shape}: expected "
            "(height, width) or (height, width, channels) with 1 (gray), "
            "2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels.",
            name,
        )
    return array[..., :1] if array.shape[-1] == 2 else array[..., :3]


def check_finite(array, role, name):
    """Raises a `DataError` if a float array has NaN or infinite pixels.

    Args:
        array: the decoded image or mask, `(height, width[, channels])`.
        role: str, `"image"` or `"mask"`, for the message.
        name: str, the file (or example) name.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    per_pixel = (lambda a: a.any(axis=-1)) if array.ndim == 3 else (lambda a: a)
    nan = int(np.count_nonzero(per_pixel(np.isnan(array))))
    inf = int(np.count_nonzero(per_pixel(np.isinf(array))))
    found = [
        f"{n} {kind} pixel{'s' if n != 1 else ''}"
        for n, kind in ((nan, "NaN"), (inf, "infinite"))
        if n
    ]
    raise DataError(
        f"The {role} {name!r} has {' and '.join(found)} (of "
        f"{array.shape[0] * array.shape[1]}); expected finite values. Fix "
        "or remove the file: no pixel scaling makes such pixels usable.",
        name,
    )


def prepare_image(array, channels, pixel_scaling, name):
    """Turns a decoded image into float32 `(height, width, channels)` in [0, 1].

    Args:
        array: the decoded image (see `read_image`).
        channels: int, 1 or 3, the channels the model takes.
        pixel_scaling: `"dtype"` or `"minmax"` (see the module docstring).
        name: str, the file (or example) name used in error messages.

    Returns:
        A float32 array `(height, width, channels)` with values in [0, 1].
    """
    array = drop_alpha(np.asarray(array), name)
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif array.dtype in (np.float32, np.float64):
        scale = None
    else:
        raise DataError(
            f"The image {name!r} has pixel type {array.dtype}; supported are "
            "8-bit, 16-bit and float images.",
            name,
        )
    image = array.astype(np.float32)
    if scale is None:
        # Before any scaling: no pixel scaling can make NaN or Inf usable.
        check_finite(image, "image", name)
    if pixel_scaling == "minmax":
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else image * 0.0
    elif scale is not None:
        image = image / np.float32(scale)
    elif image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise DataError(
            f"The float image {name!r} has values outside [0, 1] (from "
            f"{image.min()} to {image.max()}); use pixel_scaling='minmax'.",
            name,
        )
    if image.shape[-1] == channels:
        return np.ascontiguousarray(image)
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image @ LUMA_WEIGHTS[:, None])


def mask_plane(array, name):
    """The one channel of a mask; gray masks stored as RGB(A) are accepted."""
    array = drop_alpha(np.asarray(array), name)
    if array.shape[-1] == 3:
        if not (
            np.array_equal(array[..., 0], array[..., 1])
            and np.array_equal(array[..., 0], array[..., 2])
        ):
            raise DataError(
                f"The mask {name!r} is a colour image whose channels differ; "
                "a mask must be gray (or a palette PNG for classes). Convert "
                "its colours to class indices first.",
                name,
            )
    return array[..., 0]


def prepare_mask(array, options, name):
    """Turns a decoded mask into labels `(height, width)` by the module rules.

    Args:
        array: the decoded mask (see `read_image(..., palette_indices=True)`).
        options: a `DecodeOptions`.
        name: str, the file (or example) name used in error messages.

    Returns:
        An unsigned integer array `(height, width)`: 0/1 for a binary mask,
        class indices otherwise.
    """
    plane = mask_plane(array, name)
    check_finite(plane, "mask", name)
    num_classes = options.num_classes
    if options.mask_map is not None:
        keys = np.array(sorted(options.mask_map), dtype=np.float64)
        found = np.unique(plane)
        unknown = found[~np.isin(found, keys)]
        if unknown.size:
            raise DataError(
                f"The mask {name!r} has values {_values(unknown)} that are not "
                f"in mask_map (keys {sorted(options.mask_map)}).",
                name,
            )
        mapped = np.array([options.mask_map[k] for k in sorted(options.mask_map)])
        plane = mapped[np.searchsorted(keys, plane)]
    if num_classes == 1:
        if options.mask_threshold is not None and options.mask_map is None:
            foreground = plane > options.mask_threshold
        else:
            # mask_map values were checked to be 0/1 when the pipeline was made.
            found = np.unique(plane)
            if np.count_nonzero(found) > 1:
                raise DataError(
                    f"The mask {name!r} has values {_values(plane)}, which do "
                    "not fit num_classes=1: a binary mask holds 0 (background) "
                    "and one foreground value (1, 255, ...). For class-index "
                    "masks set num_classes (--num-classes); for soft or JPEG "
                    "masks set mask_threshold (--mask-threshold, e.g. 127); to "
                    "merge or drop values use mask_map (--mask-map).",
                    name,
                )
            foreground = plane != 0
        return foreground.astype(np.uint8)
    if np.issubdtype(plane.dtype, np.floating) and not np.array_equal(
        plane, np.round(plane)
    ):
        raise DataError(
            f"The class mask {name!r} has non-integer values "
            f"{_values(plane[plane != np.round(plane)])}.",
            name,
        )
    bad = (plane < 0) | (plane >= num_classes)
    if bad.any():
        raise DataError(
            f"The class mask {name!r} has values {_values(plane[bad])} outside "
            f"[0, {num_classes - 1}] for num_classes={num_classes}. If its "
            "values are not class indices (e.g. 0/255), use mask_map "
            "(--mask-map).",
            name,
        )
    return plane.astype(mask_dtype(num_classes))


def prepare_pair(image, masks, options, image_name, mask_names):
    """Checks and converts a decoded image and its mask(s).

    Args:
        image: the decoded image array.
        masks: list of decoded mask arrays, merged by union.
        options: a `DecodeOptions`.
        image_name: str, the image's name for error messages.
        mask_names: list of str, the masks' names for error messages.

    Returns:
        A tuple `(image, mask)`: float32 `(height, width, channels)` and
        unsigned integer `(height, width, 1)`.
    """
    height, width = np.shape(image)[:2]
    labels = None
    for mask, mask_name in zip(masks, mask_names):
        if np.shape(mask)[:2] != (height, width):
            raise DataError(
                f"The mask {mask_name!r} is {np.shape(mask)[1]}x"
                f"{np.shape(mask)[0]} (width x height) but its image "
                f"{image_name!r} is {width}x{height}; expected the same size.",
                mask_name,
            )
        current = prepare_mask(mask, options, mask_name)
        labels = current if labels is None else np.maximum(labels, current)
    if options.num_classes == 1 and options.invert_mask:
        labels = 1 - labels  # After the union: the background of all masks.
    image = prepare_image(image, options.channels, options.pixel_scaling, image_name)
    return image, labels[..., None]


def load_pair(pair, options):
    """Reads and checks one `SamplePair` from disk.

    Args:
        pair: a `SamplePair`.
        options: a `DecodeOptions`.

    Returns:
        A tuple `(image, mask)` as in `prepare_pair`.
    """
    image = read_image(pair.image)
    masks = [read_image(m, palette_indices=True) for m in pair.masks]
    return prepare_pair(image, masks, options, pair.image, list(pair.masks))


def check_files_exist(pairs):
    """Raises a `DataError` naming the first listed file that is missing."""
    for pair in pairs:
        for path in (pair.image, *pair.masks):
            if not os.path.isfile(path):
                raise DataError(
                    f"The file {path!r} of sample {pair.stem!r} does not exist.",
                    path,
                )
