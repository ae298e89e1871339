"""Reading files: formats, bit depths, channels, mask rules and bad input."""

import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from keras_unetpp.data import SamplePair, decode
from keras_unetpp.errors import DataError


def _options(**kwargs):
    values = dict(
        channels=1,
        num_classes=1,
        pixel_scaling="dtype",
        mask_threshold=None,
        invert_mask=False,
        mask_map=None,
    )
    values.update(kwargs)
    return decode.DecodeOptions(**values)


RNG = np.random.default_rng(7)
GRAY8 = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
RGBA16 = RNG.integers(0, 65536, (12, 10, 4), dtype=np.uint16)


@pytest.mark.parametrize(
    "name, array",
    [
        ("gray8.png", GRAY8),
        ("gray16.png", GRAY8.astype(np.uint16) * 250),
        ("rgb8.png", RGB8),
        ("rgba16.png", RGBA16),
        ("gray8.tif", GRAY8),
        ("rgb16.tiff", RGBA16[..., :3]),
    ],
)
def test_read_image_round_trips_lossless_formats(tmp_path, name, array):
    path = tmp_path / name
    if name.endswith("png"):
        mode = {1: None, 3: "RGB", 4: "RGBA"}[1 if array.ndim == 2 else array.shape[-1]]
        if array.dtype == np.uint16 and array.ndim == 3:
            # Pillow cannot write 16-bit colour PNGs; OpenCV writes BGR(A).
            order = [2, 1, 0, 3][: array.shape[-1]]
            assert cv2.imwrite(str(path), array[..., order])
        else:
            Image.fromarray(array, mode).save(path)
    else:
        tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else None)
    decoded = decode.read_image(path)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_read_image_jpeg_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    Image.fromarray(np.stack([smooth] * 3, -1)).save(tmp_path / "a.jpg", quality=95)
    decoded = decode.read_image(tmp_path / "a.jpg")
    assert decoded.shape == (32, 32, 3)
    assert np.abs(decoded.astype(int) - smooth[..., None]).max() <= 4


def test_read_image_palette_png_gives_indices_for_masks(tmp_path):
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    image = Image.fromarray(labels, "P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(
        decode.read_image(tmp_path / "m.png", palette_indices=True), labels
    )
    colours = decode.read_image(tmp_path / "m.png")
    np.testing.assert_array_equal(colours[1, 0], [0, 255, 0])


def test_read_image_bad_files_are_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png' is empty"):
        decode.read_image(tmp_path / "empty.png")
    good = cv2.imencode(".png", GRAY8)[1].tobytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="Cannot decode .*cut.png"):
        decode.read_image(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="Cannot decode .*text.png"):
        decode.read_image(tmp_path / "text.png")
    with pytest.raises(ValueError, match="Cannot read the file .*missing.png"):
        decode.read_image(tmp_path / "missing.png")
    with pytest.raises(DataError) as caught:
        decode.read_image(tmp_path / "cut.png")
    assert caught.value.path == str(tmp_path / "cut.png")


def _png_claiming(width, height, colour_type=0):
    """A small PNG whose header declares `width` x `height` 8-bit pixels."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # 4 rows of the many
    palette = chunk(b"PLTE", bytes(range(6))) if colour_type == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + palette
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("palette", [False, True])
def test_an_image_too_large_to_decode_is_named_with_its_size(tmp_path, palette):
    # 60000 x 60000 pixels declared in a 3 kB file: OpenCV (and Pillow, for
    # palette masks) refuse to allocate them. Before, OpenCV's exception
    # escaped without the file's name.
    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(60000, 60000, colour_type=3 if palette else 0))
    assert path.stat().st_size < 10_000
    message = (
        "huge.png.*60000" if palette else "huge.png': its header declares 60000x60000"
    )
    with pytest.raises(DataError, match=message) as caught:
        decode.read_image(path, palette_indices=palette)
    assert caught.value.path == str(path)
    assert "split into tiles" in str(caught.value)


def test_truncated_jpeg_is_refused(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    good = cv2.imencode(".jpg", smooth)[1].tobytes()
    (tmp_path / "whole.jpg").write_bytes(good + b"\x00" * 16)  # Padding is fine.
    assert decode.read_image(tmp_path / "whole.jpg").shape == (64, 64)
    cut = good[: len(good) * 2 // 3]
    (tmp_path / "cut.jpg").write_bytes(cut)
    # OpenCV 5 refuses it; OpenCV 4 decodes it with gray rows, which the
    # end-of-image check refuses.
    with pytest.raises(DataError, match="cut.jpg' is truncated|decode .*cut.jpg") as e:
        decode.read_image(tmp_path / "cut.jpg")
    assert e.value.path == str(tmp_path / "cut.jpg")
    assert decode._is_truncated_jpeg(np.frombuffer(cut, np.uint8))
    assert not decode._is_truncated_jpeg(np.frombuffer(good, np.uint8))


@pytest.mark.parametrize("pixel_scaling", decode.PIXEL_SCALINGS)
def test_nan_and_inf_pixels_are_refused_under_every_pixel_scaling(pixel_scaling):
    image = np.full((4, 5, 3), 0.5, np.float32)
    image[1, 2] = np.nan  # One pixel, all channels.
    image[3, 0, 1] = np.nan
    with pytest.raises(DataError, match=r"'n.tif' has 2 NaN pixels \(of 20\)") as e:
        decode.prepare_image(image, 1, pixel_scaling, "n.tif")
    assert "minmax" not in str(e.value) and e.value.path == "n.tif"
    image[0, 0, 0] = np.inf
    with pytest.raises(DataError, match="2 NaN pixels and 1 infinite pixel "):
        decode.prepare_image(image, 3, pixel_scaling, "n.tif")
    mask = np.zeros((4, 4), np.float32)
    mask[0, 0] = np.nan
    with pytest.raises(DataError, match="mask 'm.tif' has 1 NaN pixel "):
        decode.prepare_mask(mask, _options(), "m.tif")


def test_read_image_unsupported_tiffs(tmp_path):
    tifffile.imwrite(
        tmp_path / "five.tif",
        np.zeros((8, 8, 5), np.uint8),
        photometric="minisblack",
        planarconfig="contig",
    )
    with pytest.raises(ValueError, match="five.tif' has 5 channels"):
        decode.read_image(tmp_path / "five.tif")
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for _ in range(3):
            tif.write(GRAY8, contiguous=False)
    with pytest.raises(ValueError, match="pages.tif' has 3 pages"):
        decode.read_image(tmp_path / "pages.tif")


def test_prepare_image_normalizes_by_bit_depth():
    np.testing.assert_allclose(
        decode.prepare_image(GRAY8, 1, "dtype", "x")[..., 0], GRAY8 / 255.0, rtol=1e-6
    )
    gray16 = GRAY8.astype(np.uint16) * 257
    np.testing.assert_allclose(
        decode.prepare_image(gray16, 1, "dtype", "x")[..., 0], GRAY8 / 255.0, rtol=1e-6
    )
    span = GRAY8.max() - GRAY8.min()
    np.testing.assert_allclose(
        decode.prepare_image(GRAY8, 1, "minmax", "x")[..., 0],
        (GRAY8 - GRAY8.min()) / span,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="'f.tif' has values outside"):
        decode.prepare_image(np.full((4, 4), 2.0, np.float32), 1, "dtype", "f.tif")
    with pytest.raises(ValueError, match="'i.tif' has pixel type int32"):
        decode.prepare_image(np.zeros((4, 4), np.int32), 1, "dtype", "i.tif")


def test_prepare_image_channel_conversions():
    gray = decode.prepare_image(RGB8, 1, "dtype", "x")[..., 0]
    reference = cv2.cvtColor(RGB8, cv2.COLOR_RGB2GRAY) / 255.0  # rounds to uint8
    assert np.abs(gray - reference).max() <= 0.5 / 255 + 1e-6
    rgb = decode.prepare_image(GRAY8, 3, "dtype", "x")
    assert rgb.shape == (12, 10, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    rgba = np.concatenate([RGB8, np.zeros_like(RGB8[..., :1])], -1)
    np.testing.assert_array_equal(
        decode.prepare_image(rgba, 3, "dtype", "x"), RGB8 / np.float32(255)
    )
    with pytest.raises(ValueError, match="'odd.tif' has an unsupported shape"):
        decode.prepare_image(np.zeros((4, 4, 6), np.uint8), 1, "dtype", "odd.tif")


@pytest.mark.parametrize("foreground", [1, 255, 65535])
def test_binary_masks_any_single_foreground_value(foreground):
    blob = GRAY8 > 128
    dtype = np.uint16 if foreground > 255 else np.uint8
    raw = (blob * foreground).astype(dtype)
    np.testing.assert_array_equal(decode.prepare_mask(raw, _options(), "m"), blob)
    # Gray masks saved as RGB are accepted.
    rgb = np.stack([raw] * 3, -1)
    np.testing.assert_array_equal(decode.prepare_mask(rgb, _options(), "m"), blob)


def test_binary_mask_rules_and_errors():
    soft = GRAY8
    with pytest.raises(ValueError, match="'soft.jpg' has values .* num_classes=1"):
        decode.prepare_mask(soft, _options(), "soft.jpg")
    np.testing.assert_array_equal(
        decode.prepare_mask(soft, _options(mask_threshold=127), "m"), soft > 127
    )
    colour = RGB8
    with pytest.raises(ValueError, match="'c.png' is a colour image"):
        decode.prepare_mask(colour, _options(), "c.png")
    trimap = np.array([[1, 2], [3, 2]], np.uint8)
    mapped = decode.prepare_mask(trimap, _options(mask_map={1: 1, 2: 0, 3: 1}), "t")
    np.testing.assert_array_equal(mapped, [[1, 0], [1, 0]])
    with pytest.raises(ValueError, match=r"'t' has values 3 that are not in mask_map"):
        decode.prepare_mask(trimap, _options(mask_map={1: 1, 2: 0}), "t")


def test_class_masks():
    labels = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    out = decode.prepare_mask(labels, _options(num_classes=3), "m")
    np.testing.assert_array_equal(out, labels)
    with pytest.raises(ValueError, match=r"'m.png' has values 2 outside \[0, 1\]"):
        decode.prepare_mask(labels, _options(num_classes=2), "m.png")
    classes = decode.prepare_mask(
        labels * 100, _options(num_classes=3, mask_map={0: 0, 100: 1, 200: 2}), "m"
    )
    np.testing.assert_array_equal(classes, labels)
    many = decode.prepare_mask(labels, _options(num_classes=300), "m")
    assert many.dtype == np.uint16


def _pair_files(tmp_path, image, masks):
    cv2.imwrite(str(tmp_path / "img.png"), image)
    paths = []
    for k, mask in enumerate(masks):
        paths.append(str(tmp_path / f"mask{k}.png"))
        cv2.imwrite(paths[-1], mask)
    return SamplePair("img", str(tmp_path / "img.png"), tuple(paths))


def test_load_pair_merges_nucleus_masks_by_union_then_inverts(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    b = np.zeros((8, 8), np.uint8)
    a[1:3, 1:3] = 255
    b[2:6, 2:5] = 255
    pair = _pair_files(tmp_path, GRAY8[:8, :8], [a, b])
    image, mask = decode.load_pair(pair, _options())
    assert image.shape == (8, 8, 1) and image.dtype == np.float32
    np.testing.assert_array_equal(mask[..., 0], (a > 0) | (b > 0))
    _, inverted = decode.load_pair(pair, _options(invert_mask=True))
    np.testing.assert_array_equal(inverted[..., 0], ~((a > 0) | (b > 0)))


def test_load_pair_size_mismatch_names_both_files(tmp_path):
    pair = _pair_files(tmp_path, GRAY8, [np.zeros((12, 11), np.uint8)])
    with pytest.raises(
        ValueError, match=r"mask0.png' is 11x12 .* but its image .*img.png' is 10x12"
    ):
        decode.load_pair(pair, _options())


def test_check_files_exist(tmp_path):
    pair = _pair_files(tmp_path, GRAY8, [GRAY8])
    decode.check_files_exist([pair])
    gone = pair._replace(masks=(str(tmp_path / "gone.png"),))
    with pytest.raises(ValueError, match="gone.png' of sample 'img' does not exist"):
        decode.check_files_exist([pair, gone])
