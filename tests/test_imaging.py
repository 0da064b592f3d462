"""Tests for inspector.imaging: every image is generated here with OpenCV and numpy."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.errors import ImageDecodeError
from inspector.imaging import (
    IMAGE_EXTENSIONS,
    decode_image,
    image_size,
    is_image_file,
    read_image,
)


def encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok, f"OpenCV could not encode {ext}"
    return buf.tobytes()


def pure_red_bgr(height: int = 16, width: int = 24) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 2] = 255  # OpenCV is BGR: red is the last channel
    return image


def assert_valid_output(out: np.ndarray, height: int, width: int) -> None:
    assert out.shape == (height, width, 3)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0


# --- colour, grey and depth ------------------------------------------------------------------


def test_png_colour_round_trip_is_rgb_and_exact() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    out = decode_image(encode(".png", bgr))
    assert_valid_output(out, 13, 17)
    expected = bgr[:, :, ::-1].astype(np.float32) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".webp"])
def test_pure_red_is_channel_0(ext: str) -> None:
    out = decode_image(encode(ext, pure_red_bgr()), name=f"red{ext}")
    assert_valid_output(out, 16, 24)
    tolerance = 0.05 if ext in (".jpg", ".webp") else 1e-6
    np.testing.assert_allclose(out[:, :, 0], 1.0, atol=tolerance)
    np.testing.assert_allclose(out[:, :, 1:], 0.0, atol=tolerance)


def test_jpeg_round_trip_close_to_original() -> None:
    bgr = np.zeros((32, 48, 3), np.uint8)
    bgr[:, :24] = (255, 0, 0)  # left half blue
    bgr[:, 24:] = (0, 255, 0)  # right half green
    out = decode_image(encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert_valid_output(out, 32, 48)
    # Away from the edge, so chroma subsampling does not matter.
    np.testing.assert_allclose(out[:, :16].mean(axis=(0, 1)), [0.0, 0.0, 1.0], atol=0.05)
    np.testing.assert_allclose(out[:, 32:].mean(axis=(0, 1)), [0.0, 1.0, 0.0], atol=0.05)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_grey_becomes_three_equal_channels(ext: str) -> None:
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (10, 1))  # 10 x 32 ramp
    out = decode_image(encode(ext, grey))
    assert_valid_output(out, 10, 32)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
    tolerance = 0.03 if ext == ".jpg" else 1e-6
    np.testing.assert_allclose(out[:, :, 0], grey / 255.0, atol=tolerance)


def test_16_bit_png_is_divided_by_65535() -> None:
    grey16 = np.zeros((4, 6), np.uint16)
    grey16[0] = 65535
    grey16[1] = 32768
    grey16[2] = 1  # would become 0 if squeezed through 8 bits
    grey16[3] = 0
    out = decode_image(encode(".png", grey16))
    assert_valid_output(out, 4, 6)
    assert np.all(out[0] == 1.0)
    np.testing.assert_allclose(out[1], 32768 / 65535, rtol=1e-6)
    np.testing.assert_allclose(out[2], 1 / 65535, rtol=1e-4)
    assert np.all(out[2] > 0)
    assert np.all(out[3] == 0.0)


def test_16_bit_colour_png_keeps_precision_and_rgb_order() -> None:
    bgr16 = np.zeros((3, 5, 3), np.uint16)
    bgr16[:, :, 0] = 1000  # blue
    bgr16[:, :, 2] = 60000  # red
    out = decode_image(encode(".png", bgr16))
    assert_valid_output(out, 3, 5)
    np.testing.assert_allclose(out[:, :, 0], 60000 / 65535, rtol=1e-6)
    np.testing.assert_allclose(out[:, :, 1], 0.0)
    np.testing.assert_allclose(out[:, :, 2], 1000 / 65535, rtol=1e-6)


def test_float_tiff_is_clipped_to_unit_range() -> None:
    values = np.array([[-0.5, 0.0, 0.25, 1.0, 2.0]], np.float32)
    out = decode_image(encode(".tiff", values))
    assert_valid_output(out, 1, 5)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.0, 0.25, 1.0, 1.0])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_bgra_is_composited_over_black() -> None:
    bgra = np.zeros((8, 9, 4), np.uint8)
    bgra[:, :, :3] = (255, 128, 0)  # orange-ish colour everywhere, BGR
    bgra[:, :3, 3] = 0  # transparent
    bgra[:, 3:6, 3] = 255  # opaque
    bgra[:, 6:, 3] = 51  # 20 % opaque
    out = decode_image(encode(".png", bgra))
    assert_valid_output(out, 8, 9)
    colour = np.array([0.0, 128 / 255, 1.0], np.float32)  # RGB
    np.testing.assert_array_equal(out[:, :3], 0.0)
    np.testing.assert_allclose(out[:, 3:6], np.broadcast_to(colour, (8, 3, 3)), atol=1e-6)
    np.testing.assert_allclose(out[:, 6:], np.broadcast_to(colour * 0.2, (8, 3, 3)), atol=1e-6)


# --- refusals --------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match=r"^scratch_01\.png: empty file \(0 bytes\)$"):
        decode_image(b"", name="scratch_01.png")


def test_random_garbage() -> None:
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    garbage = b"\x00\x01" + garbage  # not accidentally a known magic number
    with pytest.raises(ImageDecodeError) as info:
        decode_image(garbage, name="x.png")
    message = str(info.value)
    assert message.startswith("x.png: not a decodable image")
    assert "unknown or corrupt format" in message
    assert "0x0001" in message


def test_corrupt_data_behind_a_png_signature() -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    with pytest.raises(ImageDecodeError, match=r"^bad\.png: not a decodable image"):
        decode_image(data, name="bad.png")


def test_truncated_jpeg() -> None:
    rng = np.random.default_rng(2)
    data = encode(".jpg", rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"^x\.jpg: truncated JPEG"):
        decode_image(data[: len(data) // 2], name="x.jpg")


def test_jpeg_with_trailing_zero_padding_is_accepted() -> None:
    data = encode(".jpg", pure_red_bgr())
    out = decode_image(data + b"\x00" * 500)
    assert_valid_output(out, 16, 24)
    assert float(out[:, :, 0].min()) > 0.95


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_png(keep: float) -> None:
    rng = np.random.default_rng(3)
    data = encode(".png", rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    cut = data[: int(len(data) * keep)]
    with pytest.raises(ImageDecodeError, match=r"^x\.png: truncated PNG \(no IEND chunk"):
        decode_image(cut, name="x.png")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
def test_pixel_limit(ext: str) -> None:
    data = encode(ext, np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=5000, name=f"big{ext}")
    assert str(info.value) == (
        f"big{ext}: 100x100 = 10,000 pixels exceeds the limit of 5,000 (INSPECTOR_MAX_IMAGE_PIXELS)"
    )
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)


def test_pixel_limit_message_is_width_by_height() -> None:
    data = encode(".png", np.zeros((30, 200), np.uint8))
    with pytest.raises(ImageDecodeError, match=r": 200x30 = 6,000 pixels exceeds the limit"):
        decode_image(data, max_pixels=5999)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # A PNG header claiming 100000 x 100000 pixels, with no image data at all: the refusal must
    # come from the header, before any truncation check or decoding.
    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + b"\x00" * 4
    assert image_size(data) == (100_000, 100_000)
    with pytest.raises(ImageDecodeError, match=r"10,000,000,000 pixels exceeds the limit of"):
        decode_image(data, name="bomb.png")


def test_non_positive_max_pixels_is_rejected() -> None:
    from inspector.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        decode_image(encode(".png", pure_red_bgr()), max_pixels=0)


# --- image_size --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_size_matches_real_size(ext: str, channels: int) -> None:
    shape = (37, 53) if channels == 1 else (37, 53, 3)
    data = encode(ext, np.full(shape, 100, np.uint8))
    assert image_size(data) == (37, 53)


def test_image_size_of_progressive_jpeg_and_top_down_bmp() -> None:
    image = np.full((21, 34, 3), 7, np.uint8)
    progressive = encode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_size(progressive) == (21, 34)
    bmp = bytearray(encode(".bmp", image))
    bmp[22:26] = (-21).to_bytes(4, "little", signed=True)  # negative height: top-down rows
    assert image_size(bytes(bmp)) == (21, 34)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG", b"\xff\xd8\xff", b"BM", b"hello world, not an image", b"II*\x00" + bytes(8)],
)
def test_image_size_unknown(data: bytes) -> None:
    assert image_size(data) is None


@pytest.mark.parametrize(
    ("ext", "params"),
    [
        (".tiff", []),
        (".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 5]),  # LZW
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: VP8L
    ],
)
def test_image_size_of_tiff_and_webp(ext: str, params: list[int]) -> None:
    data = encode(ext, np.full((37, 53, 3), 90, np.uint8), params)
    assert image_size(data) == (37, 53)


def tiff_header(order: str, width: int, height: int, *, big: bool = False) -> bytes:
    """A TIFF holding only its first IFD, with ImageWidth and ImageLength (type LONG/LONG8)."""
    o = "little" if order == "II" else "big"
    if big:  # BigTIFF: version 43, offset size 8, IFD at 16; 20-byte entries
        head = order.encode() + (43).to_bytes(2, o) + (8).to_bytes(2, o) + bytes(2)
        head += (16).to_bytes(8, o) + (2).to_bytes(8, o)
        entry = [
            t.to_bytes(2, o) + (16).to_bytes(2, o) + (1).to_bytes(8, o) + v.to_bytes(8, o)
            for t, v in ((256, width), (257, height))
        ]
    else:
        head = order.encode() + (42).to_bytes(2, o) + (8).to_bytes(4, o) + (2).to_bytes(2, o)
        entry = [
            t.to_bytes(2, o) + (4).to_bytes(2, o) + (1).to_bytes(4, o) + v.to_bytes(4, o)
            for t, v in ((256, width), (257, height))
        ]
    return head + b"".join(entry) + bytes(8)


@pytest.mark.parametrize(("order", "big"), [("II", False), ("MM", False), ("II", True)])
def test_a_tiff_bomb_is_refused_from_its_header(order: str, big: bool) -> None:
    data = tiff_header(order, 20_000, 30_000, big=big)
    assert image_size(data) == (30_000, 20_000)
    with pytest.raises(ImageDecodeError, match=r"20000x30000 = 600,000,000 pixels exceeds"):
        decode_image(data, name="bomb.tif")


def test_extended_webp_size_comes_from_its_canvas() -> None:
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + bytes(4)
    vp8x += (15999).to_bytes(3, "little") + (8999).to_bytes(3, "little")
    data = b"RIFF" + (4 + len(vp8x)).to_bytes(4, "little") + b"WEBP" + vp8x
    assert image_size(data) == (9000, 16000)


# --- read_image ---------------------------------------------------------------------------------


def test_read_image(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(encode(".png", pure_red_bgr(5, 7)))
    for p in (path, str(path)):
        out = read_image(p)
        assert_valid_output(out, 5, 7)
        assert np.all(out[:, :, 0] == 1.0)
        assert np.all(out[:, :, 1:] == 0.0)


def test_read_image_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(".png", np.zeros((100, 100), np.uint8)))
    with pytest.raises(ImageDecodeError, match=r"exceeds the limit of 5,000") as info:
        read_image(path, max_pixels=5000)
    assert str(info.value).startswith(str(path))


def test_read_image_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert "no such file" in str(info.value)


def test_read_image_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageDecodeError) as info:
        read_image(folder)
    assert str(info.value).startswith(str(folder))
    assert "directory" in str(info.value)


def test_read_image_empty_and_corrupt_files_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "scratch_01.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"scratch_01\.png: empty file \(0 bytes\)$"):
        read_image(empty)
    half = tmp_path / "half.jpg"
    data = encode(".jpg", pure_red_bgr())
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"half\.jpg: truncated JPEG"):
        read_image(half)


# --- is_image_file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.PNG", True),
        ("a.png", True),
        ("dir/b.JpEg", True),
        ("c.jpg", True),
        ("d.bmp", True),
        ("e.tif", True),
        ("f.TIFF", True),
        ("g.webp", True),
        (".a.png", False),
        ("dir/.a.png", False),
        ("a.png.part", False),
        ("a.tmp", False),
        ("a.png.tmp", False),
        ("a.png~", False),
        ("notes.txt", False),
        ("png", False),
        ("", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


def test_image_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
