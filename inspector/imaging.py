"""Image decoding with OpenCV: bytes or files to float32 RGB arrays in [0, 1], refusing empty,
truncated, corrupt and oversized images with an ImageDecodeError that says what was wrong.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import cv2
import numpy as np

from inspector.errors import ConfigurationError, ImageDecodeError
from inspector.settings import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "decode_image",
    "image_size",
    "is_image_file",
    "read_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

# Suffixes of files that are still being written or are editor/transfer leftovers.
_TEMPORARY_SUFFIXES: frozenset[str] = frozenset({".tmp", ".part"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
# A JPEG's end-of-image marker must lie within this many bytes of the end (after stripping
# trailing zero padding, which some cameras and transfer tools append).
_JPEG_EOI_WINDOW = 64
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG, reserved) and CC (DAC) are not frames.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})

_opencv_logging_quietened = False


def _quieten_opencv_logging() -> None:
    """Silence OpenCV's own log output, once, the first time we decode.

    Every decode failure becomes an ImageDecodeError that says what was wrong, so OpenCV's
    messages about the same data (imdecode's "can't read data", libtiff's errors, which OpenCV
    logs at ERROR level, not WARNING) are only noise on stderr. Not done at import time:
    importing this module must not change process-wide state. An explicit OPENCV_LOG_LEVEL in
    the environment wins, so OpenCV's logs can be switched back on for debugging. libpng's own
    "libpng error: ..." lines bypass OpenCV's logging and cannot be switched off from here.
    """
    global _opencv_logging_quietened
    if _opencv_logging_quietened:
        return
    _opencv_logging_quietened = True
    if os.environ.get("OPENCV_LOG_LEVEL"):
        return
    try:
        cv_logging: Any = cv2.utils.logging
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
    except (AttributeError, cv2.error):  # builds without the logging bindings
        pass


def _sniff_format(data: bytes) -> str | None:
    """The format named by the magic bytes, for messages and header checks; None if unknown."""
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(_JPEG_SOI):
        return "JPEG"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature (8), then the IHDR chunk: length (4), b"IHDR", width (4), height (4), big-endian.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    return (height, width) if height > 0 and width > 0 else None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments after SOI up to the first SOFn, which holds
    # precision (1), height (2), width (2), big-endian.
    n = len(data)
    i = 2
    while i < n:
        if data[i] != 0xFF:
            return None  # not at a marker: corrupt header
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        if i + 2 > n:
            return None
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF_MARKERS:
            if i + 7 > n:
                return None
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            # Height 0 means "defined later by a DNL marker": unknown from the header.
            return (height, width) if height > 0 and width > 0 else None
        i += length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    # File header (14), then the DIB header whose first field is its own size.
    if len(data) < 26:
        return None
    dib_size = int.from_bytes(data[14:18], "little")
    if dib_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit width and height
        width = int.from_bytes(data[18:20], "little")
        height = int.from_bytes(data[20:22], "little")
    elif dib_size >= 16:  # BITMAPINFOHEADER and later: signed 32-bit, height < 0 is top-down
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = abs(int.from_bytes(data[22:26], "little", signed=True))
    else:
        return None
    return (height, width) if height > 0 and width > 0 else None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    # Byte order (II or MM), then classic TIFF (42): the first IFD's offset (4 bytes), its
    # entry count (2) and 12-byte entries; BigTIFF (43): offset (8), count (8), 20-byte entries.
    # Each entry: tag (2), type (2), count, value; ImageWidth is tag 256, ImageLength 257.
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43
    word, entry_size = (8, 20) if big else (4, 12)
    start = 8 if big else 4
    if len(data) < start + word:
        return None
    offset = int.from_bytes(data[start : start + word], order)
    count_size = 8 if big else 2
    if offset + count_size > len(data):
        return None
    count = int.from_bytes(data[offset : offset + count_size], order)
    found: dict[int, int] = {}
    for k in range(min(count, 4096)):
        at = offset + count_size + k * entry_size
        if at + entry_size > len(data):
            return None
        tag = int.from_bytes(data[at : at + 2], order)
        kind = int.from_bytes(data[at + 2 : at + 4], order)
        if tag in (256, 257):
            value = at + 4 + word  # after tag, type and count
            width_of = {3: 2, 4: 4, 16: 8}.get(kind)  # SHORT, LONG, LONG8
            if width_of is None:
                return None
            found[tag] = int.from_bytes(data[value : value + width_of], order)
    width, height = found.get(256, 0), found.get(257, 0)
    return (height, width) if height > 0 and width > 0 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    # RIFF header (12), then the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended).
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # canvas width - 1 and height - 1, 24 bits each
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8L" and data[20] == 0x2F:  # 14 bits each, after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # after the key frame's start code
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
    else:
        return None
    return (height, width) if height > 0 and width > 0 else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) read from the header of a PNG, JPEG, BMP, TIFF or WebP without
    decoding it.

    None when the format is another one or the header is missing, short or implausible.
    """
    fmt = _sniff_format(data)
    if fmt == "PNG":
        return _png_size(data)
    if fmt == "JPEG":
        return _jpeg_size(data)
    if fmt == "BMP":
        return _bmp_size(data)
    if fmt == "TIFF":
        return _tiff_size(data)
    if fmt == "WebP":
        return _webp_size(data)
    return None


def _png_truncation(data: bytes) -> str | None:
    """Why a PNG is truncated (its chunks end before IEND), or None if it is complete."""
    n = len(data)
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > n:
            return "truncated PNG (no IEND chunk)"
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_type = data[pos + 4 : pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > n:
            kind = chunk_type.decode("ascii", "replace")
            return f"truncated PNG (no IEND chunk; data ends inside a {kind!r} chunk)"
        if chunk_type == b"IEND":
            return None
        pos = end


def _jpeg_truncation(data: bytes) -> str | None:
    """Why a JPEG is truncated (no EOI marker near its end), or None if it looks complete."""
    tail = data.rstrip(b"\x00")[-_JPEG_EOI_WINDOW:]
    if _JPEG_EOI not in tail:
        return "truncated JPEG (no end-of-image marker)"
    return None


def _check_pixels(name: str, height: int, width: int, max_pixels: int) -> None:
    pixels = height * width
    if pixels > max_pixels:
        raise ImageDecodeError(
            f"{name}: {width}x{height} = {pixels:,} pixels exceeds the limit of "
            f"{max_pixels:,} (INSPECTOR_MAX_IMAGE_PIXELS)"
        )


def _to_rgb_float(name: str, image: np.ndarray) -> np.ndarray:
    """Any decoded OpenCV image (grey/BGR/BGRA, 8/16-bit or float) to float32 RGB in [0, 1]."""
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3:
        raise ImageDecodeError(f"{name}: unsupported image layout (shape {image.shape})")

    if image.dtype == np.uint8:
        pixels = image.astype(np.float32) / np.float32(255.0)
    elif image.dtype == np.uint16:
        # Full 16-bit precision: 65535 is white. Not /255 (that would clip everything to 1)
        # and not a round trip through 8 bits (that would drop the low byte).
        pixels = image.astype(np.float32) / np.float32(65535.0)
    elif image.dtype in (np.float16, np.float32, np.float64):
        # Float images (e.g. float TIFF) are taken as already in [0, 1]; NaN becomes 0.
        pixels = np.clip(np.nan_to_num(image.astype(np.float32), nan=0.0), 0.0, 1.0)
    else:
        raise ImageDecodeError(
            f"{name}: unsupported pixel type {image.dtype} (shape {image.shape})"
        )

    channels = pixels.shape[2]
    # Alpha is composited over black (colour * alpha): a transparent background is not part
    # surface, so it must not show up as whatever colour happens to be stored under it.
    if channels == 1:  # grey
        rgb = np.repeat(pixels, 3, axis=2)
    elif channels == 2:  # grey + alpha
        rgb = np.repeat(pixels[:, :, :1] * pixels[:, :, 1:2], 3, axis=2)
    elif channels == 3:  # BGR
        rgb = pixels[:, :, ::-1]
    elif channels == 4:  # BGRA
        rgb = pixels[:, :, 2::-1] * pixels[:, :, 3:4]
    else:
        raise ImageDecodeError(f"{name}: unsupported number of channels ({channels})")
    return np.ascontiguousarray(rgb, dtype=np.float32)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, name: str = "image"
) -> np.ndarray:
    """Decode an encoded image to a C-contiguous float32 array (H, W, 3), RGB, values in [0, 1].

    Grey is replicated to three channels; 8-bit is divided by 255, 16-bit by 65535 (full
    precision kept); float images are clipped to [0, 1]. An alpha channel is composited over
    black (colour * alpha), because a transparent background is not part surface and must not
    look like it. EXIF orientation is ignored (see below).

    Raises ImageDecodeError, naming ``name``, for empty data, a truncated PNG or JPEG, data
    OpenCV cannot decode, an empty image, or more than ``max_pixels`` pixels. For PNG, JPEG,
    BMP, TIFF and WebP the size is read from the header and checked before decoding, so a
    decompression bomb is refused without allocating it; other formats are checked after
    decoding.
    """
    if max_pixels < 1:
        raise ConfigurationError(f"max_pixels must be at least 1, got {max_pixels}")
    if len(data) == 0:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")

    fmt = _sniff_format(data)
    size = image_size(data)
    if size is not None:
        _check_pixels(name, size[0], size[1], max_pixels)

    # OpenCV returns a partial image (the missing part grey) for a truncated JPEG, and may do
    # so for PNG too, so truncation is detected from the bytes before decoding.
    problem = None
    if fmt == "JPEG":
        problem = _jpeg_truncation(data)
    elif fmt == "PNG":
        problem = _png_truncation(data)
    if problem is not None:
        raise ImageDecodeError(f"{name}: {problem}")

    _quieten_opencv_logging()
    # IMREAD_UNCHANGED keeps 16-bit depth, float and alpha; it also ignores EXIF orientation,
    # which is what we want for line and area cameras that write pixels in sensor order.
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError(
            f"{name}: not a decodable image (OpenCV failed: {str(exc).strip()})"
        ) from None
    if image is None:
        head = data[:8].hex()
        if fmt is None:
            raise ImageDecodeError(
                f"{name}: not a decodable image (unknown or corrupt format, first bytes 0x{head})"
            )
        raise ImageDecodeError(
            f"{name}: not a decodable image (corrupt {fmt} data, first bytes 0x{head})"
        )

    height, width = int(image.shape[0]), int(image.shape[1])
    if height == 0 or width == 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    _check_pixels(name, height, width, max_pixels)
    return _to_rgb_float(name, image)


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Read and decode the image file at ``path``, as decode_image does.

    A missing or unreadable file, or a directory, raises ImageDecodeError naming the path.
    """
    return decode_image(read_file(path), max_pixels=max_pixels, name=os.fspath(path))


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file; a missing or unreadable file, or a directory, raises
    ImageDecodeError naming the path and why."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise ImageDecodeError(f"{name}: is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: no such file") from None
    except OSError as exc:
        if os.path.isdir(name):  # Windows reports a directory as PermissionError
            raise ImageDecodeError(f"{name}: is a directory, not an image file") from None
        reason = exc.strerror or str(exc)
        raise ImageDecodeError(f"{name}: cannot read file ({reason})") from None
    return data


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an image by its extension (case-insensitive).

    Hidden and temporary names are not images: a leading '.', a trailing '~', or a .tmp or
    .part suffix (files still being written or copied).
    """
    filename = os.path.basename(os.fspath(path))
    if not filename or filename.startswith(".") or filename.endswith("~"):
        return False
    suffix = os.path.splitext(filename)[1].lower()
    if suffix in _TEMPORARY_SUFFIXES:
        return False
    return suffix in IMAGE_EXTENSIONS
