"""What some bytes are: the one table of file signatures the package uses.

Encoded Datum records, image files and values that are not Datum records at all are all
recognized here, so that the converters, the readers, ``info`` and the image-size checks agree
on what a JPEG (or anything else) looks like.
"""
from __future__ import annotations

__all__ = ["IMAGE_SIGNATURES", "image_format", "describe_bytes"]

# (signature, format name as an extension, what to call it in a message). Checked in order.
# JPEG: SOI followed by the first marker's 0xFF, as OpenCV's own signature check requires.
IMAGE_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xd8\xff", "jpg", "a JPEG file"),
    (b"\x89PNG\r\n\x1a\n", "png", "a PNG file"),
    (b"GIF87a", "gif", "a GIF file"),
    (b"GIF89a", "gif", "a GIF file"),
    (b"BM", "bmp", "a BMP file"),
    (b"II*\x00", "tif", "a TIFF file"),
    (b"MM\x00*", "tif", "a TIFF file"),
    (b"\x59\xa6\x6a\x95", "ras", "a Sun raster file"),
    (b"#?RADIANCE", "hdr", "a Radiance HDR file"),
    (b"#?RGBE", "hdr", "a Radiance HDR file"),
)

_OTHER_SIGNATURES = (
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
)

_PNM_TYPES = frozenset(b"1234567Ff")


def image_format(blob: bytes | bytearray | memoryview) -> str | None:
    """The image format of some bytes as an extension (``"jpg"``, ``"png"``, ``"gif"``,
    ``"bmp"``, ``"tif"``, ``"webp"``, ``"pnm"``, ``"ras"``, ``"hdr"``), or None."""
    head = bytes(blob[:12])
    for signature, ext, _what in IMAGE_SIGNATURES:
        if head.startswith(signature):
            return ext
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[:1] == b"P" and len(head) > 1 and head[1] in _PNM_TYPES:
        return "pnm"
    return None


def describe_bytes(value: bytes | bytearray | memoryview) -> str:
    """A short description of what some bytes look like (for errors about values that are not
    what they should be)."""
    value = bytes(value[:64])
    if not value:
        return "empty values"
    for signature, _ext, what in IMAGE_SIGNATURES:
        if value.startswith(signature):
            return what
    if value.startswith(b"RIFF") and value[8:12] == b"WEBP":
        return "a WebP file"
    for signature, what in _OTHER_SIGNATURES:
        if value.startswith(signature):
            return what
    if value[:1] == b"\x80" and len(value) > 1 and 2 <= value[1] <= 5:
        return f"a Python pickle (protocol {value[1]})"
    text: str | None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut by the 64-byte window is still text
        text = value[:exc.start].decode("utf-8") if exc.start >= len(value) - 3 and \
            exc.start > 0 else None
    if text is not None and (text.isprintable() or _is_text_lines(text)):
        kind = "JSON" if text.lstrip()[:1] in ("{", "[") else "text"
        return f"{kind} {text[:40]!r}"
    return f"binary data starting {value[:12].hex(' ')}"


def _is_text_lines(text: str) -> bool:
    """Printable text with line breaks and tabs (a list file, a CSV row)."""
    return text.replace("\n", "").replace("\r", "").replace("\t", "").isprintable()
