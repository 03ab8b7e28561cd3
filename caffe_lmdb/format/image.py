"""Image files to Datum records, as Caffe's ``ReadImageToDatum`` (convert_imageset) does.

The only module of ``format`` that reads files: given a path it reads the file's bytes once;
given bytes it reads nothing.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np

from ..errors import EncodeError, ImageReadError
from . import cv
from .datum import datum_bytes, messages
from .imagesize import declared_size
from .sniff import image_format

__all__ = ["read_file", "read_image", "decoded_shape", "encode_image", "encode_array",
           "image_to_datum", "extension_of", "extension_matches", "resize_to"]

_U8 = np.dtype(np.uint8)
if TYPE_CHECKING:
    from .proto import Datum

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]  # noqa: UP007 (runtime)


def extension_of(name):
    """The extension Caffe sees: what follows the last '.', lower-cased (the whole name if none)."""
    return name.rsplit(".", 1)[-1].lower()


def extension_matches(ext, encode_type):
    """Caffe's matchExt: case-insensitive equality, and type ``jpg`` also accepts ``jpeg``."""
    encode_type = encode_type.lower()
    return ext == encode_type or (encode_type == "jpg" and ext == "jpeg")


def resize_to(resize):
    """(H, W) when both are > 0 (Caffe's rule), else None."""
    if not resize:
        return None
    h, w = resize
    h, w = int(h), int(w)
    return (h, w) if h > 0 and w > 0 else None


#: bytes read_file asks for first: most images are smaller, and are read in one call
_FIRST_READ = 1 << 16
_O_BINARY = getattr(os, "O_BINARY", 0)


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file; ImageReadError naming it when it cannot be read.

    (os.open and one os.read of 64 KiB: a small file costs three system calls, each of which
    releases the GIL, and a converter of small images on several threads pays them once per
    image; a larger file is then read to its end.)"""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | _O_BINARY)
        try:
            data = os.read(fd, _FIRST_READ)
            if len(data) < _FIRST_READ:  # a regular file's read stops short only at its end
                return data
            parts = [data]
            rest = max(os.fstat(fd).st_size - len(data) + 1, _FIRST_READ)  # one more: EOF
            while data:
                data = os.read(fd, rest)
                parts.append(data)
            return b"".join(parts)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ImageReadError(f"could not read image {name}: {exc.strerror}", name) from exc


def read_image(path_or_bytes: PathOrBytes, gray: bool = False,
               resize: tuple[int, int] | None = None, data: bytes | None = None
               ) -> tuple[np.ndarray, bytes, str | None]:
    """Decode an image as Caffe's ReadImageToCVMat: BGR (or gray), bilinear resize to (H, W).

    Returns ``(image, file_bytes, name)``: the H x W (x 3) array, the undecoded bytes and the name
    used for the extension rule (None for bytes input). ``data``: the file's bytes, already
    read (the path then only names it). Raises ImageReadError.
    """
    cv2 = cv.cv2()
    blob, name = _load(path_or_bytes, data)
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(blob, _U8), flag) if blob else None
    if img is None:
        where = name if name is not None else f"<{len(blob)} bytes>"
        raise ImageReadError(f"could not decode image {where}: not an image OpenCV can read", name)
    size = resize_to(resize)
    if size is not None:
        img = cv2.resize(img, (size[1], size[0]))
    return img, blob, name


def _load(path_or_bytes: PathOrBytes, data: bytes | None) -> tuple[bytes, str | None]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), None
    if data is not None:
        return data, os.fspath(path_or_bytes)
    name = os.fspath(path_or_bytes)
    return read_file(name), name


#: OpenCV refuses to decode images of more pixels than this (its CV_IO_MAX_IMAGE_PIXELS)
_CV_MAX_PIXELS = 1 << 30


def decoded_shape(path_or_bytes: PathOrBytes, gray: bool = False, data: bytes | None = None
                  ) -> tuple[tuple[int, int, int], bytes, str | None]:
    """``((H, W, C), file_bytes, name)``: the shape :func:`read_image` would decode the image
    to, for converters that decode only to check an image they store as it is (Caffe's
    pass-through of encoded files, which still decodes each one). Raises ImageReadError as
    read_image does.

    A JPEG is decoded at 1/8 scale (libjpeg's DCT scaling: every entropy-coded byte is still
    read, at about a fifth of the cost), its exact size taken from its frame header and turned
    when the reduced image shows that OpenCV applied an EXIF rotation. Anything else, or a
    JPEG whose reduced decode fails or cannot tell the orientation, is decoded in full."""
    blob, name = _load(path_or_bytes, data)
    cv2 = cv.cv2()
    size = declared_size(blob) if blob[:3] == b"\xff\xd8\xff" else None
    if size is not None and 0 < size[0] * size[1] <= _CV_MAX_PIXELS \
            and "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ:
        w, h = size
        flag = cv2.IMREAD_REDUCED_GRAYSCALE_8 if gray else cv2.IMREAD_REDUCED_COLOR_8
        try:
            small = cv2.imdecode(np.frombuffer(blob, _U8), flag)
        except cv2.error:
            small = None
        if small is not None:
            c = 1 if small.ndim == 2 else small.shape[2]
            upright, turned = (-(-h // 8), -(-w // 8)), (-(-w // 8), -(-h // 8))
            if upright != turned or h == w:
                if small.shape[:2] == upright:
                    return (h, w, c), blob, name
                if small.shape[:2] == turned:
                    return (w, h, c), blob, name
    img, blob, name = read_image(blob if name is None else name, gray=gray, data=blob)
    return (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2]), blob, name


def encode_image(path_or_bytes: PathOrBytes, label: int | None,
                 resize: tuple[int, int] | None = None, gray: bool = False,
                 encode: bool | str | None = None, data: bytes | None = None) -> bytes:
    """Serialized Datum for one image file, byte-identical to Caffe's convert_imageset.

    * ``encode=None``: a raw record, planar C x H x W BGR (C = 1 with ``gray``), fields channels,
      height, width, data, label and ``encoded = false``.
    * ``encode="jpg"``/``"png"``/...: an encoded record (data, label, ``encoded = true``). With no
      resize, and a file whose extension matches the type (``jpg`` also matching ``.jpeg``), the
      file's own bytes are stored unchanged; otherwise the decoded, resized image is re-encoded
      with OpenCV. ``encode=True`` means the file's own extension (convert_imageset's
      ``--encoded`` without ``--encode_type``). For bytes input the format is sniffed from the
      magic number.
    * One deliberate difference from Caffe: with ``gray`` an encoded record is always re-encoded
      from the gray image. (Caffe's pass-through keeps the colour file under ``--gray``.)

    As in Caffe, the image is decoded even when its bytes are passed through, so an unreadable
    file raises :class:`~caffe_lmdb.errors.ImageReadError` in every mode. ``data``: the
    file's bytes when the caller has read them (the path then only names the file).
    """
    if encode and resize_to(resize) is None and not gray:
        blob, name = _load(path_or_bytes, data)
        ext = extension_of(name) if name is not None else image_format(blob)
        encode_type = ext if encode is True else str(encode).lower().lstrip(".")
        if ext is not None and encode_type is not None and extension_matches(ext, encode_type):
            decoded_shape(blob if name is None else name, data=blob)  # the check Caffe makes
            _refuse_deep(blob, name)
            return datum_bytes(data=blob, label=label, encoded=True)
        path_or_bytes, data = (blob, None) if name is None else (name, blob)
    img, blob, name = read_image(path_or_bytes, gray=gray, resize=resize, data=data)
    if not encode:
        chw = cv.planar(img)
        c, h, w = chw.shape
        return datum_bytes(c, h, w, data=chw, label=label, encoded=False)
    ext = extension_of(name) if name is not None else image_format(blob)
    encode_type = ext if encode is True else str(encode).lower().lstrip(".")
    if encode_type is None:
        raise EncodeError("encode=True needs a file name (or a known image format) to pick "
                          "the encoding; pass encode='jpg' or 'png'")
    return datum_bytes(data=encode_array(img, encode_type, name or "image"), label=label,
                       encoded=True)


def encode_array(img: np.ndarray, encode_type: str, name: str = "image") -> bytes:
    """An H x W (x C) image array as the bytes of an ``encode_type`` file (``jpg``, ``png``,
    ...), as Caffe's tools re-encode; EncodeError when OpenCV cannot write that type."""
    cv2 = cv.cv2()
    try:
        ok, buf = cv2.imencode("." + encode_type, img)
    except cv2.error:
        ok = False
    if not ok:
        raise EncodeError(f"OpenCV could not encode {name} as {encode_type!r} (use an image "
                          "type OpenCV writes, e.g. jpg or png)")
    return buf.tobytes()


def _refuse_deep(blob: bytes, name: str | None) -> None:
    """A file stored as it is must decode to 8 bits per sample: Caffe's DataLayer and
    compute_image_mean abort on anything else (a 16-bit PNG would decode to uint16)."""
    fmt = image_format(blob)
    if fmt in ("jpg", "gif", "bmp"):
        return  # 8 bits per sample (OpenCV decodes 12-bit JPEGs to 8 bits)
    if fmt == "png" and len(blob) > 24:
        deep = blob[24] > 8  # IHDR bit depth
    else:
        cv2 = cv.cv2()
        img = cv2.imdecode(np.frombuffer(blob, _U8), cv2.IMREAD_UNCHANGED)
        deep = img is not None and img.dtype != _U8
    if deep:
        raise ImageReadError(f"{name or 'image'} has more than 8 bits per sample (e.g. a "
                             "16-bit PNG): Caffe's DataLayer reads only 8-bit images. Convert "
                             "it to 8 bits, or convert without --encoded (raw records are "
                             "decoded to 8 bits)", name)


def image_to_datum(path_or_bytes: PathOrBytes, label: int | None,
                   resize: tuple[int, int] | None = None, gray: bool = False,
                   encode: bool | str | None = None) -> Datum:
    """A Datum message for one image, with Caffe's exact semantics (see :func:`encode_image`)."""
    datum = messages().Datum()
    datum.ParseFromString(encode_image(path_or_bytes, label, resize=resize, gray=gray,
                                       encode=encode))
    return datum
