"""The dimensions an image file declares in its header, read without decoding it.

A decompression bomb is a small file that declares an enormous image (a PNG of a few hundred
kilobytes can declare 100,000 x 100,000 pixels): decoding it would allocate gigabytes. OpenCV
refuses images over 2^30 pixels on its own, a limit fixed when the library loads
(``OPENCV_IO_MAX_IMAGE_PIXELS``), which still lets one image take 3 GB as BGR. The converters
therefore read the header first and refuse an image over ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS`, the threshold at which Pillow raises its DecompressionBombError).
They also refuse a PNG with a chunk longer than the file: OpenCV allocates a chunk's declared
length before reading it (a 400-byte PNG with an IDAT length of 4 GB took 4 GB), and fails on
such a file anyway.

Headers understood: PNG, JPEG, GIF, BMP, WebP, TIFF, PNM (PBM/PGM/PPM/PAM), PFM, Sun raster
and Radiance HDR. Other formats (JPEG 2000, AVIF, OpenEXR) are left to OpenCV's own limit.
"""
import io
import os
import stat
import struct

from ..errors import ImageReadError, ImageTooLargeError
from . import DEFAULT_MAX_PIXELS  # the package's constant, exported here too

__all__ = ["DEFAULT_MAX_PIXELS", "declared_size", "check_image"]


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}
_MAX_JPEG_SEGMENTS = 4096


def _png(f, head):
    if head[12:16] != b"IHDR" or len(head) < 24:
        return None
    return struct.unpack(">II", head[16:24])


def _gif(f, head):
    return struct.unpack("<HH", head[6:10]) if len(head) >= 10 else None


def _bmp(f, head):
    if len(head) < 26:
        return None
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", head[18:22])
    w, h = struct.unpack("<ii", head[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _webp(f, head):
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg(f, head):
    f.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = f.read(1)
        if byte != b"\xff":
            return None
        marker = 0xFF
        while marker == 0xFF:  # fill bytes
            b = f.read(1)
            if not b:
                return None
            marker = b[0]
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header
            return None
        raw = f.read(2)
        if len(raw) < 2:
            return None
        (length,) = struct.unpack(">H", raw)
        if marker in _JPEG_SOF:
            body = f.read(5)
            if len(body) < 5:
                return None
            h, w = struct.unpack(">HH", body[1:5])
            return w, h
        if length < 2:
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None


def _tiff(f, head):
    order = "<" if head[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", head[4:8])
    f.seek(offset)
    raw = f.read(2)
    if len(raw) < 2:
        return None
    (count,) = struct.unpack(order + "H", raw)
    entries = f.read(12 * min(count, 4096))
    size = {}
    for i in range(len(entries) // 12):
        tag, kind, n = struct.unpack(order + "HHI", entries[12 * i:12 * i + 8])
        if tag in (256, 257) and n == 1:
            if kind == 3:  # SHORT
                size[tag] = struct.unpack(order + "H", entries[12 * i + 8:12 * i + 10])[0]
            elif kind == 4:  # LONG
                size[tag] = struct.unpack(order + "I", entries[12 * i + 8:12 * i + 12])[0]
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def _pnm_tokens(head, start, count):
    """The first ``count`` whitespace-separated tokens after ``start``, skipping comments."""
    tokens, i, n = [], start, len(head)
    while len(tokens) < count and i < n:
        c = head[i:i + 1]
        if c == b"#":
            while i < n and head[i:i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and not head[j:j + 1].isspace() and head[j:j + 1] != b"#":
                j += 1
            tokens.append(head[i:j])
            i = j
    return tokens


def _pnm(f, head):
    if head[:2] == b"P7":  # PAM: WIDTH and HEIGHT lines
        size = {}
        for line in head.split(b"\n")[1:]:
            parts = line.split()
            if len(parts) == 2 and parts[0] in (b"WIDTH", b"HEIGHT") and parts[1].isdigit():
                size[parts[0]] = int(parts[1])
            if line.strip() == b"ENDHDR":
                break
        return (size[b"WIDTH"], size[b"HEIGHT"]) if len(size) == 2 else None
    tokens = _pnm_tokens(head, 2, 2)
    if len(tokens) == 2 and all(t.isdigit() for t in tokens):
        return int(tokens[0]), int(tokens[1])
    return None


def _sun(f, head):
    return struct.unpack(">II", head[4:12]) if len(head) >= 12 else None


def _hdr(f, head):
    for line in head.split(b"\n")[1:]:  # header lines, a blank line, then "-Y h +X w"
        parts = line.split()
        if len(parts) == 4 and parts[0][1:] == b"Y" and parts[2][1:] == b"X" \
                and parts[1].isdigit() and parts[3].isdigit():
            return int(parts[3]), int(parts[1])
    return None


def _kind(head):
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png
    if head.startswith(b"\xff\xd8"):
        return _jpeg
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _gif
    if head.startswith(b"BM"):
        return _bmp
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff
    if head.startswith(b"\x59\xa6\x6a\x95"):
        return _sun
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return _hdr
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"F", b"f"):
        return _pnm
    return None


def declared_size(image):
    """``(width, height)`` as the header of an image declares them, or None when the format
    is not one listed in the module docstring or the header is cut short. ``image``: the path
    of a file (a FIFO, a device or a missing file gives None: nothing is read from those) or
    the bytes of one (e.g. the ``data`` of an encoded Datum)."""
    return _inspect(image)[0]


def _jpeg_bytes(buf):
    """_jpeg on the bytes of a whole file: the same walk over the segments, by indexing (a
    converter checks every image it reads: the file-like walk cost more than the decoding of
    a small JPEG)."""
    pos, end = 2, len(buf)
    for _ in range(_MAX_JPEG_SEGMENTS):
        if pos >= end or buf[pos] != 0xFF:
            return None
        pos += 1
        marker = 0xFF
        while marker == 0xFF:  # fill bytes
            if pos >= end:
                return None
            marker = buf[pos]
            pos += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header
            return None
        if pos + 2 > end:
            return None
        length = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
        if marker in _JPEG_SOF:
            if pos + 5 > end:
                return None
            h, w = struct.unpack(">HH", buf[pos + 1:pos + 5])
            return w, h
        if length < 2:
            return None
        pos += length - 2
    return None


def _inspect(image):
    """(declared size or None, damage found or None) of a path or bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        if bytes(image[:2]) == b"\xff\xd8":
            return _jpeg_bytes(image), None
        return _read_header(io.BytesIO(image), len(image))
    try:
        st = os.stat(image)
    except OSError:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        return None, None
    with open(image, "rb") as f:
        return _read_header(f, st.st_size)


def _read_header(f, total):
    head = f.read(512)
    parse = _kind(head)
    if parse is None:
        return None, None
    try:
        size = parse(f, head)
    except (struct.error, OSError, ValueError):
        size = None
    return size, (_png_damage(f, total) if parse is _png else None)


def _png_damage(f, total):
    """A message when a PNG chunk before IEND declares more bytes than the file holds. OpenCV
    allocates (and clears) a chunk's declared length before it reads it: a 400-byte file with
    an IDAT of 4 GB took 4 GB of memory and seconds, and then failed to decode anyway."""
    pos = 8
    for _ in range(1 << 20):
        f.seek(pos)
        raw = f.read(8)
        if len(raw) < 8:
            return None
        length, kind = struct.unpack(">I4s", raw)
        left = total - pos - 12
        if length > left:
            name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            return (f"its {name} chunk declares {length:,} bytes, more than the {max(left, 0):,} "
                    "left in the file (damaged or truncated)")
        if kind == b"IEND":
            return None
        pos += 12 + length
    return None


def check_image(image, max_pixels=DEFAULT_MAX_PIXELS, name=None):
    """Check an image before it is decoded (``image``: a path, or the bytes of a file):

    * :class:`~caffe_lmdb.errors.ImageTooLargeError` when its header declares more than
      ``max_pixels`` pixels (None or 0: no limit);
    * :class:`~caffe_lmdb.errors.ImageReadError` when it is a PNG with a chunk longer than
      the file (OpenCV would allocate that length, up to 4 GB, before failing).

    Only headers are read (see :func:`declared_size` for the formats). ``name``: what to
    call the image in messages (by default its path, or its size for bytes)."""
    size, damage = _inspect(image)
    if name is None:
        name = f"<{len(image)} bytes>" if isinstance(image, (bytes, bytearray, memoryview)) \
            else os.fspath(image)
    if damage is not None:
        raise ImageReadError(f"could not decode image {name}: {damage}", name)
    if not max_pixels or size is None:
        return
    w, h = size
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{name} declares {w} x {h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(a decompression bomb?); raise max_pixels (--max_pixels) to convert it",
            name, (w, h))
