"""Datum and BlobProto records: arrays and images to and from bytes, as Caffe's tools write them.

Pure functions only: no files are written and no LMDB is touched here, so any executor (threads,
processes, a cluster) can run them. This is the only module that imports the generated
``datum_pb2``.

Two paths lead from bytes to arrays:

* the protobuf classes (``Datum``, ``BlobProto``, pycaffe-style helpers), for people who want the
  message objects;
* :func:`decode` and :func:`decode_batch`, a parser of the Datum wire format written for speed. It
  reads the pixels in place (NumPy views over the buffer, no copy), reuses the parse of the header
  bytes when records share them, and reads Caffe's unpacked ``float_data`` (tag ``0x35`` + 4 bytes
  per value) as one strided view. It accepts exactly what the protobuf parser accepts and raises
  :class:`~caffe_lmdb.errors.DatumDecodeError` on everything else (property-tested).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from . import datum_pb2
from .errors import DatumDecodeError, EncodeError, ImageReadError
from .imagesize import DEFAULT_MAX_PIXELS, check_image

Datum = datum_pb2.Datum
BlobShape = datum_pb2.BlobShape
BlobProto = datum_pb2.BlobProto
BlobProtoVector = datum_pb2.BlobProtoVector

__all__ = [
    "Datum", "BlobShape", "BlobProto", "BlobProtoVector",
    "array_to_datum", "datum_to_array", "image_to_datum", "encode_image",
    "datum_bytes", "decode", "decode_batch", "parse_datum", "DatumFields",
    "array_to_blobproto", "blobproto_to_array",
    "arraylist_to_blobprotovector_str", "blobprotovector_str_to_arraylist",
]

_U8 = np.dtype(np.uint8)
_F4 = np.dtype("<f4")
_MASK64 = (1 << 64) - 1
_MAX_GROUP_DEPTH = 100

# ---------------------------------------------------------------------------------------------
# Writing: fields to bytes, in field-number order, with proto2 presence (what was set is written)
# ---------------------------------------------------------------------------------------------


def _varint(value):
    """Protobuf varint of a non-negative int (< 2**64)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int32(value):
    """Varint of an int32 field: negative values take ten bytes, as in every protobuf."""
    value = int(value)
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"{value} does not fit in a Datum's int32 field")
    return _varint(value & _MASK64)


def _unpacked_floats(values):
    """Caffe's repeated float (not packed): tag 0x35 then 4 little-endian bytes, per value."""
    values = np.ascontiguousarray(values, dtype=_F4).reshape(-1)
    rows = np.empty((values.size, 5), _U8)
    rows[:, 0] = 0x35
    rows[:, 1:] = values.view(_U8).reshape(-1, 4)
    return rows.tobytes()


def datum_bytes(channels=None, height=None, width=None, data=None, label=None,
                float_data=None, encoded=None):
    """Serialize a Datum from its fields; ``None`` leaves a field out.

    Produces the bytes ``Datum(...).SerializeToString()`` would (and so the bytes of Caffe's C++
    tools) without building a message, and without copying ``data`` more than once.
    ``data`` may be bytes or any C-contiguous buffer (e.g. a uint8 array).
    """
    parts = []
    if channels is not None:
        parts += (b"\x08", _int32(channels))
    if height is not None:
        parts += (b"\x10", _int32(height))
    if width is not None:
        parts += (b"\x18", _int32(width))
    if data is not None:
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        parts += (b"\x22", _varint(len(data)), data)
    if label is not None:
        parts += (b"\x28", _int32(label))
    if float_data is not None:
        parts.append(_unpacked_floats(float_data))
    if encoded is not None:
        parts.append(b"\x38\x01" if encoded else b"\x38\x00")
    return b"".join(parts)


def _as_chw(arr):
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D (channels, height, width) array, got shape {arr.shape}")
    return arr


def array_to_datum(arr, label=None):
    """A (C, H, W) array to a Datum, as pycaffe's ``caffe.io.array_to_datum``.

    uint8 arrays go to ``data`` (and ``encoded`` is set to false explicitly, as convert_imageset
    does, which readers such as NVIDIA DALI need); any other dtype goes to ``float_data`` as
    float32. ``label`` is written when given, 0 included.
    """
    datum = Datum()
    datum.ParseFromString(array_to_datum_bytes(arr, label))
    return datum


def array_to_datum_bytes(arr, label=None):
    """Serialized form of :func:`array_to_datum` (the fast path writers use)."""
    arr = _as_chw(arr)
    c, h, w = arr.shape
    if arr.dtype == _U8:
        return datum_bytes(c, h, w, data=np.ascontiguousarray(arr), label=label, encoded=False)
    return datum_bytes(c, h, w, label=label, float_data=arr)


def datum_to_array(datum, color=None):
    """A Datum message to an array: (C, H, W) uint8 from ``data``, float32 from ``float_data``.

    Unlike pycaffe's version this also decodes encoded records (natively, or as ``color`` says:
    see :func:`decode`) and works with NumPy 2.
    """
    arr, _ = decode(datum.SerializeToString(), color=color)
    return arr


# ---------------------------------------------------------------------------------------------
# Images: Caffe's ReadImageToDatum
# ---------------------------------------------------------------------------------------------

_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"BM", "bmp"),
          (b"II*\x00", "tif"), (b"MM\x00*", "tif"), (b"RIFF", "webp"))


def _cv2():
    import cv2  # imported on first use: readers of raw records never need OpenCV

    return cv2


def _ext_of(name):
    """The extension Caffe sees: what follows the last '.', lower-cased (the whole name if none)."""
    return name.rsplit(".", 1)[-1].lower()


def _sniff(blob):
    for magic, ext in _MAGIC:
        if blob.startswith(magic):
            return ext
    return None


def _ext_matches(ext, encode_type):
    """Caffe's matchExt: case-insensitive equality, and type ``jpg`` also accepts ``jpeg``."""
    encode_type = encode_type.lower()
    return ext == encode_type or (encode_type == "jpg" and ext == "jpeg")


def _resize_to(resize):
    """(H, W) when both are > 0 (Caffe's rule), else None."""
    if not resize:
        return None
    h, w = (int(v) for v in resize)
    return (h, w) if h > 0 and w > 0 else None


def read_image(path_or_bytes, gray=False, resize=None):
    """Decode an image as Caffe's ReadImageToCVMat: BGR (or gray), bilinear resize to (H, W).

    Returns ``(image, file_bytes, name)``: the H x W (x 3) array, the undecoded bytes and the name
    used for the extension rule (None for bytes input). Raises ImageReadError.
    """
    cv2 = _cv2()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        blob, name = bytes(path_or_bytes), None
    else:
        name = os.fspath(path_or_bytes)
        try:
            with open(name, "rb") as f:
                blob = f.read()
        except OSError as exc:
            raise ImageReadError(f"could not read image {name}: {exc.strerror}", name) from exc
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(blob, _U8), flag) if blob else None
    if img is None:
        where = name if name is not None else f"<{len(blob)} bytes>"
        raise ImageReadError(f"could not decode image {where}: not an image OpenCV can read", name)
    size = _resize_to(resize)
    if size is not None:
        img = cv2.resize(img, (size[1], size[0]))
    return img, blob, name


def _hwc_to_chw(img):
    if img.ndim == 2:
        return img[None, :, :]
    return img.transpose(2, 0, 1)


def encode_image(path_or_bytes, label, resize=None, gray=False, encode=None):
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
    file raises :class:`~caffe_lmdb.errors.ImageReadError` in every mode.
    """
    img, blob, name = read_image(path_or_bytes, gray=gray, resize=resize)
    if not encode:
        chw = np.ascontiguousarray(_hwc_to_chw(img))
        c, h, w = chw.shape
        return datum_bytes(c, h, w, data=chw, label=label, encoded=False)
    ext = _ext_of(name) if name is not None else _sniff(blob)
    encode_type = ext if encode is True else str(encode).lower().lstrip(".")
    if encode_type is None:
        raise EncodeError("encode=True needs a file name (or a known image format) to pick "
                          "the encoding; pass encode='jpg' or 'png'")
    if (_resize_to(resize) is None and not gray and ext is not None
            and _ext_matches(ext, encode_type)):
        payload = blob
    else:
        cv2 = _cv2()
        try:
            ok, buf = cv2.imencode("." + encode_type, img)
        except cv2.error:
            ok = False
        if not ok:
            raise EncodeError(f"OpenCV could not encode {name or 'image'} as {encode_type!r} "
                              "(use an image type OpenCV writes, e.g. jpg or png)")
        payload = buf.tobytes()
    return datum_bytes(data=payload, label=label, encoded=True)


def image_to_datum(path_or_bytes, label, resize=None, gray=False, encode=None):
    """A Datum message for one image, with Caffe's exact semantics (see :func:`encode_image`)."""
    datum = Datum()
    datum.ParseFromString(encode_image(path_or_bytes, label, resize=resize, gray=gray,
                                       encode=encode))
    return datum


# ---------------------------------------------------------------------------------------------
# Reading: the wire parser
# ---------------------------------------------------------------------------------------------


class DatumFields:
    """The fields of one parsed Datum, pointing into the buffer rather than copying it.

    ``data`` is ``(offset, length)`` or None; ``floats`` a list of ``(offset, count, stride)``
    spans of little-endian float32 values (stride 5 for Caffe's unpacked values, 4 for packed).
    """

    __slots__ = ("channels", "height", "width", "data", "label", "has_label", "floats",
                 "encoded", "has_encoded")

    def __init__(self):
        self.channels = self.height = self.width = self.label = 0
        self.data = None
        self.has_label = self.encoded = self.has_encoded = False
        self.floats = []

    def copy(self):
        other = DatumFields.__new__(DatumFields)
        other.channels, other.height, other.width = self.channels, self.height, self.width
        other.data, other.label, other.has_label = self.data, self.label, self.has_label
        other.encoded, other.has_encoded = self.encoded, self.has_encoded
        other.floats = list(self.floats)
        return other

    @property
    def float_count(self):
        return sum(span[1] for span in self.floats)


def _read_varint(buf, pos, end):
    """(value, new_pos) of the varint at pos; at most ten bytes, as protobuf allows."""
    result = shift = 0
    for i in range(pos, min(pos + 10, end)):
        b = buf[i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, i + 1
        shift += 7
    if pos + 10 <= end:
        raise DatumDecodeError(f"varint at byte {pos} is longer than ten bytes")
    raise DatumDecodeError(f"truncated varint at byte {pos}")


def _signed32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _skip_field(buf, pos, end, wire, field, depth):
    """Skip one unknown field's payload; returns the new position."""
    if wire == 0:
        return _read_varint(buf, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        size, pos = _read_varint(buf, pos, end)
        if size > 0x7FFFFFFF:
            raise DatumDecodeError(f"length {size} at byte {pos} is too large")
        pos += size
    elif wire == 3:
        if depth >= _MAX_GROUP_DEPTH:
            raise DatumDecodeError("groups nested too deeply")
        while True:
            if pos >= end:
                raise DatumDecodeError(f"group {field} is not closed")
            tag, pos = _read_varint(buf, pos, end)
            inner_field, inner_wire = tag >> 3, tag & 7
            # protobuf (upb) skips a field 0 of a scalar wire type inside an unknown group, and
            # rejects a field 0 that opens or closes a group (C++ protobuf rejects them all)
            if tag > 0xFFFFFFFF or (inner_field == 0 and inner_wire in (3, 4)):
                raise DatumDecodeError(f"invalid tag {tag} at byte {pos}")
            if inner_wire == 4:
                if inner_field != field:
                    raise DatumDecodeError(f"group {field} closed by end-group {inner_field}")
                return pos
            pos = _skip_field(buf, pos, end, inner_wire, inner_field, depth + 1)
    else:
        raise DatumDecodeError(f"invalid wire type {wire} for field {field}")
    if pos > end:
        raise DatumDecodeError(f"truncated field {field} (wire type {wire})")
    return pos


def _parse(buf, pos, end, f, snapshot=False):
    """Parse fields from pos to end into f (a DatumFields).

    With ``snapshot``, returns ``(offset, fields)`` as they stood at the first data payload, or
    at the first float_data tag when no data came first (for the header cache), else None.
    """
    snap = None
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_varint(buf, pos, end)
            if tag > 0xFFFFFFFF:
                raise DatumDecodeError(f"invalid tag at byte {pos}")
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise DatumDecodeError(f"invalid field number 0 at byte {pos - 1}")
        if wire == 0 and field in (1, 2, 3, 5, 7):
            value, pos = _read_varint(buf, pos, end)
            if field == 5:
                f.label = _signed32(value)
                f.has_label = True
            elif field == 7:
                f.encoded = value != 0
                f.has_encoded = True
            elif field == 1:
                f.channels = _signed32(value)
            elif field == 2:
                f.height = _signed32(value)
            else:
                f.width = _signed32(value)
        elif wire == 2 and field == 4:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise DatumDecodeError(f"data field of {size} bytes truncated at byte {end}")
            f.data = (pos, size)
            if snapshot and snap is None:
                snap = (pos, f.copy())
            pos += size
        elif wire == 5 and field == 6:
            # Caffe writes float_data unpacked: tag 0x35 + 4 bytes per value. Count the whole
            # run of such values with one strided look at the tag bytes.
            if (snapshot and snap is None and tag == 0x35 and buf[pos - 1] == 0x35
                    and f.data is None and not f.floats):  # a one-byte tag, before pos
                snap = (pos - 1, f.copy())
            chunks = (end - pos + 1) // 5
            if chunks >= 8 and buf[pos - 1] == 0x35:
                bad = np.ndarray(shape=(chunks,), dtype=_U8, buffer=buf, offset=pos - 1,
                                 strides=(5,)) != 0x35
                count = int(bad.argmax()) if bad.any() else chunks
            elif chunks and buf[pos - 1] == 0x35:
                count = 1
                while count < chunks and buf[pos - 1 + 5 * count] == 0x35:
                    count += 1
            else:
                count = 1
            if pos + 4 > end:
                raise DatumDecodeError(f"float_data value truncated at byte {end}")
            f.floats.append((pos, count, 5))
            pos += 5 * count - 1
        elif wire == 2 and field == 6:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise DatumDecodeError(f"packed float_data of {size} bytes truncated")
            if size % 4:
                raise DatumDecodeError(f"packed float_data of {size} bytes is not whole floats")
            if size:
                f.floats.append((pos, size // 4, 4))
            pos += size
        else:
            if wire == 4:
                raise DatumDecodeError(f"unexpected end-group tag at byte {pos - 1}")
            pos = _skip_field(buf, pos, end, wire, field, 0)
    if pos != end:
        raise DatumDecodeError(f"truncated record: a field runs past the end ({end} bytes)")
    return snap


# Header cache: the bytes up to the first data payload, and the fields parsed from them.
# Records of one dataset share these bytes (same tags, shape and data length), so their parse is
# done once. Sound because a protobuf parse is a function of the bytes read so far.
_header = (b"", None)


def parse_datum(buf):
    """Parse serialized Datum bytes (bytes, bytearray, memoryview, LMDB buffer) into
    :class:`DatumFields` without copying. Raises DatumDecodeError on malformed input."""
    global _header, _raw_fast
    end = len(buf)
    prefix, cached = _header
    n = len(prefix)
    if cached is not None and end >= n and buf[:n] == prefix:
        f = cached.copy()
        start = n
        if f.data is not None:  # the prefix ends inside the data field: skip its payload
            start += f.data[1]
            if start > end:
                raise DatumDecodeError(f"data field of {f.data[1]} bytes truncated at byte {end}")
        _parse(buf, start, end, f)
        return f
    f = DatumFields()
    snap = _parse(buf, 0, end, f, snapshot=True)
    if snap is not None and snap[0] <= 64:
        prefix, head = bytes(buf[:snap[0]]), snap[1]
        _header = (prefix, head)
        shape = (head.channels, head.height, head.width)
        if (head.data is not None and not head.encoded and not head.floats and min(shape) >= 0
                and head.data[1] and shape[0] * shape[1] * shape[2] == head.data[1]):
            _raw_fast = (prefix, shape, head.data[1], head.label)
    return f


# The fast path of decode for raw records: the header of the last raw record seen (prefix bytes,
# shape, data size, label as of the header), valid when the record after the data holds only
# the usual label and `encoded = false` fields.
_raw_fast = (b"", None, 0, 0)


def _raw_tail_label(buf, pos, end, label):
    """Label of a raw record whose bytes after the data are one of Caffe's usual tails
    (``28 <label>``, ``28 <label> 38 00``, ``38 00`` or nothing), else None."""
    rest = end - pos
    if rest == 0:
        return label
    if buf[pos] == 0x28:
        b1 = buf[pos + 1] if rest > 1 else 0x80
        if b1 < 0x80:
            if rest == 2 or (rest == 4 and buf[pos + 2] == 0x38 and buf[pos + 3] == 0):
                return b1
        elif rest in (3, 5) and buf[pos + 2] < 0x80:
            if rest == 3 or (buf[pos + 3] == 0x38 and buf[pos + 4] == 0):
                return (b1 & 0x7F) | (buf[pos + 2] << 7)
        return None
    if rest == 2 and buf[pos] == 0x38 and buf[pos + 1] == 0:
        return label
    return None


def _fields_to_array(buf, f, color, max_pixels=DEFAULT_MAX_PIXELS):
    """The array a parsed record holds (a view into buf for raw data)."""
    if f.encoded:
        return _decode_image(buf, f, color, max_pixels)
    if f.data is not None and f.data[1]:
        shape = _shape(f)
        offset, size = f.data
        if shape[0] * shape[1] * shape[2] != size:
            raise DatumDecodeError(f"data holds {size} bytes but channels x height x width = "
                                   f"{shape[0]} x {shape[1]} x {shape[2]}")
        return np.frombuffer(buf, _U8, count=size, offset=offset).reshape(shape)
    shape = _shape(f)
    count = f.float_count
    if shape[0] * shape[1] * shape[2] != count:
        raise DatumDecodeError(f"float_data holds {count} values but channels x height x width "
                               f"= {shape[0]} x {shape[1]} x {shape[2]}")
    return _gather_floats(buf, f.floats, count).reshape(shape)


def _shape(f):
    if f.channels < 0 or f.height < 0 or f.width < 0:
        raise DatumDecodeError(f"negative shape {f.channels} x {f.height} x {f.width}")
    return f.channels, f.height, f.width


def _gather_floats(buf, spans, count):
    """The values of float spans (see DatumFields.floats) as one contiguous float32 array."""
    out = np.empty(count, _F4)
    at = 0
    for offset, n, stride in spans:
        view = np.ndarray(shape=(n,), dtype=_F4, buffer=buf, offset=offset, strides=(stride,))
        out[at:at + n] = view
        at += n
    return out


def _decode_image(buf, f, color, max_pixels):
    cv2 = _cv2()
    if f.data is None or not f.data[1]:
        raise DatumDecodeError("encoded record has no data")
    offset, size = f.data
    blob = np.frombuffer(buf, _U8, count=size, offset=offset)
    try:  # a header declaring a bomb, or a PNG chunk longer than the file: refused unread
        check_image(memoryview(blob), max_pixels)
    except ImageReadError as exc:
        raise DatumDecodeError(f"encoded image refused: {exc}") from exc
    flag = cv2.IMREAD_UNCHANGED if color is None else (
        cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    try:
        img = cv2.imdecode(blob, flag)
    except cv2.error as exc:
        raise DatumDecodeError(f"encoded image could not be decoded: {exc}") from exc
    if img is None:
        raise DatumDecodeError(f"encoded image of {size} bytes could not be decoded "
                               f"(format {_sniff(bytes(blob[:8])) or 'unknown'})")
    return _hwc_to_chw(img)


def decode(buf, color=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode one serialized Datum into ``(array, label)``.

    * raw records: a read-only (C, H, W) uint8 view of ``buf`` (no copy: it lives as long as
      ``buf`` does; copy it if ``buf`` is an LMDB buffer that goes away with its transaction);
    * ``float_data`` records, packed or not: a (C, H, W) float32 array;
    * encoded records: decoded with OpenCV natively (the file's own channel count, as Caffe's
      DataLayer does), or forced to 3-channel BGR (``color=True``) or gray (``color=False``).

    ``label`` is the int label (0 when the record has none, as protobuf reports).
    An encoded image whose header declares more than ``max_pixels`` pixels (a decompression
    bomb; None or 0: no limit) is refused before OpenCV allocates it.
    Raises :class:`~caffe_lmdb.errors.DatumDecodeError` for bytes that are not a Datum, or whose
    pixel count does not match their shape.
    """
    prefix, shape, size, label = _raw_fast
    n = len(prefix)
    if shape is not None and buf[:n] == prefix:
        end = len(buf)
        if n + size <= end:
            label = _raw_tail_label(buf, n + size, end, label)
            if label is not None:
                return np.ndarray(shape, _U8, buf, n), label
    f = parse_datum(buf)
    return _fields_to_array(buf, f, color, max_pixels), f.label


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

_pool = (None, None)  # (executor, pid of the process that made it)
_pool_lock = threading.Lock()


def _image_pool():
    """Threads (one per core) for decoding encoded images: OpenCV releases the GIL while it
    decodes. A forked child makes its own: the parent's threads do not exist there."""
    global _pool
    with _pool_lock:
        pool, pid = _pool
        if pool is None or pid != os.getpid():
            pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                      thread_name_prefix="caffe_lmdb-decode")
            _pool = (pool, os.getpid())
        return pool


def _after_fork_in_child():
    # the parent's pool threads do not exist in the child, and a lock held by one of its
    # threads at fork time would stay locked forever
    global _pool, _pool_lock
    _pool, _pool_lock = (None, None), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _place(chw, dest):
    """Copy a decoded (C, H, W) image (a view of OpenCV's H x W x C array) into dest. For
    C > 1, cv2.split writes each plane straight into dest, about 10x faster than NumPy's
    transposing copy."""
    hwc = chw.transpose(1, 2, 0)
    if chw.shape[0] > 1 and chw.size and dest.dtype == chw.dtype and hwc.flags.c_contiguous \
            and dest.flags.c_contiguous:
        _cv2().split(hwc, [dest[c] for c in range(chw.shape[0])])
    else:
        dest[...] = chw


def _record_name(keys, i):
    from .errors import _show_key

    return f"record {i}" + (f" (key {_show_key(keys[i])})" if keys is not None else "")


_TAIL = 8  # bytes after the payload that the vectorized path reads: label varint + encoded
_PAD = bytes(_TAIL)
_PADS = [bytes(k) for k in range(_TAIL + 1)]


def _simple_tail(tail):
    """(structure mask, label size) when ``tail`` is one of Caffe's usual tails with a label of
    one or two bytes (``28 <label>``, then optionally ``38 00``), or just ``38 00``, or nothing;
    else None. The mask keeps tag and encoded bytes whole, and the label's continuation bits."""
    if tail in (b"", b"\x38\x00"):
        return np.full(len(tail), 0xFF, _U8), 0
    if len(tail) < 2 or tail[0] != 0x28:
        return None
    size = 1 if tail[1] < 0x80 else (2 if len(tail) > 2 and tail[2] < 0x80 else 0)
    rest = tail[1 + size:]
    if not size or rest not in (b"", b"\x38\x00"):
        return None
    return np.array([0xFF] + [0x80] * size + [0xFF] * len(rest), _U8), size


def _tail_labels(tails, tail_len, head_label, equal):
    """Vectorized parse of the bytes after the payload, when they are one of Caffe's usual tails:
    an optional label (``28`` + a varint of 1 to 3 bytes) then an optional ``38 00``
    (encoded = false). ``tails`` is (N, 8) (padded past each record's end), ``tail_len`` (N,),
    ``equal`` whether all tails have one length. Returns the (N,) labels, or None when some
    record's tail is anything else."""
    n = tails.shape[0]
    simple = _simple_tail(bytes(tails[0, :tail_len[0]])) if equal else None
    if simple is not None:
        # one layout for all: compare the structure bytes with the first record's, read the
        # label from fixed columns
        mask, size = simple
        width = len(mask)
        if width and not ((tails[:, :width] & mask) == (tails[0, :width] & mask)).all():
            return None
        if size == 0:
            return np.full(n, head_label, np.int64)
        labels = tails[:, 1].astype(np.int64)
        if size == 2:
            labels &= 0x7F
            labels |= tails[:, 2].astype(np.int64) << 7
        return labels
    # lengths differ: each record is `28 <label of k bytes>` then optionally `38 00`
    b1, b2, b3 = tails[:, 1], tails[:, 2], tails[:, 3]
    size = np.where(b1 < 0x80, 1, np.where(b2 < 0x80, 2, np.where(b3 < 0x80, 3, 9)))
    rest = tail_len - 1 - size
    rows = np.arange(n)
    at = np.minimum(size + 1, _TAIL - 2)
    ok = (tails[:, 0] == 0x28) & ((rest == 0) | ((rest == 2) & (tails[rows, at] == 0x38)
                                                 & (tails[rows, at + 1] == 0)))
    if not ok.all():
        return None
    labels = (b1 & 0x7F).astype(np.int64)
    labels |= (b2 & 0x7F).astype(np.int64) << 7
    labels |= (b3 & 0x7F).astype(np.int64) << 14
    # keep only the bytes that belong to each label
    labels &= np.where(size == 1, 0x7F, np.where(size == 2, 0x3FFF, 0x1FFFFF))
    return labels


def _decode_uniform(buffers, f0, out, labels_out, dtype):
    """Vectorized decode of records that share the header of the first (same fields and shape
    up to the payload) and end in one of Caffe's usual tails. One join (records whose lengths
    differ, e.g. labels of 1 and 2 bytes, padded to one width), one strided view, one comparison
    of the headers, one copy of the payloads (split across cores when large).
    Returns False when any record differs, or the first is bad: the caller then parses (and
    writes) every record one by one. ``f0`` is the parse of the first record; ``dtype``, when not None, is the dtype
    every record must hold."""
    try:
        shape = _shape(f0)
    except DatumDecodeError:
        return False
    if f0.encoded or (dtype is not None and (f0.data is not None) != (dtype == _U8)):
        return False
    if f0.data is not None:
        payload, size = f0.data
        if f0.floats:
            return False
        head, tail_at = payload, payload + size
    elif len(f0.floats) == 1 and f0.floats[0][2] == 5:
        payload, count, _ = f0.floats[0]
        head, tail_at = payload - 1, payload - 1 + 5 * count
    else:
        return False
    if shape != out.shape[1:] or out[0].size != (size if f0.data is not None else count):
        return False
    n = len(buffers)
    lengths = np.fromiter(map(len, buffers), np.int64, n)
    tail_len = lengths - tail_at
    if tail_len.min() < 0 or tail_len.max() > _TAIL:
        return False
    width = tail_at + _TAIL
    equal = bool((lengths == lengths[0]).all())
    if equal:  # rows one record apart; the padding keeps the last row's tail window in range
        joined = b"".join([*buffers, _PAD])
        stride = int(lengths[0])
    else:  # each record padded with zeros to one width: rows are again one stride apart
        parts = [_PAD] * (2 * n)
        parts[::2] = buffers
        parts[1::2] = [_PADS[k] for k in (width - lengths).tolist()]
        joined = b"".join(parts)
        stride = width
    rows = np.ndarray((n, width), _U8, joined, 0, (stride, 1))
    source = joined
    if not (rows[:, :head] == rows[0, :head]).all():
        return False
    labels = _tail_labels(rows[:, tail_at:], tail_len, f0.label, equal)
    if labels is None:
        return False
    flat = out.reshape(n, -1)
    if f0.data is None:
        floats = np.ndarray((n, count), _F4, source, head + 1, (stride, 5))

        def rows_of(a, b):  # every value of a float run has its tag, then the copy
            if not _float_tags_ok(source, head + a * stride, stride, b - a, count):
                return False
            flat[a:b] = floats[a:b]
            return True
    else:
        def rows_of(a, b):
            flat[a:b] = rows[a:b, head:tail_at]
            return True
    if not _split_rows(rows_of, n, n * (tail_at - head)):
        return False  # out may be partly written: the caller rewrites every row
    labels_out[...] = labels
    return True


def _float_tags_ok(source, offset, stride, n, count):
    """True when each of ``n`` float runs (``stride`` bytes apart from ``offset`` in
    ``source``) holds ``count`` values that all carry float_data's tag (0x35). OpenCV takes
    every fifth byte into one plane and finds its extremes, some 1.5x faster than NumPy's
    strided comparison (and it releases the GIL)."""
    runs = np.ndarray((n, count, 5), _U8, source, offset, (stride, 5, 1))
    cv2 = _cv2()
    low, high, _, _ = cv2.minMaxLoc(cv2.extractChannel(runs, 0))
    return low == high == 0x35


_SPLIT_BYTES = 1 << 20


def _split_rows(fn, n, nbytes):
    """fn(a, b) over rows [0, n): on one thread per core, 1 MiB of rows or more each, when the
    rows hold 2 MiB or more (NumPy and OpenCV release the GIL), else in this thread. True when every call
    returned True."""
    if nbytes < 2 * _SPLIT_BYTES:  # (checked first: os.cpu_count() costs some 8 us a call)
        return fn(0, n)
    parts = min(os.cpu_count() or 1, n, nbytes // _SPLIT_BYTES)
    if parts <= 1:
        return fn(0, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    pool = _image_pool()
    futures = [pool.submit(fn, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
    ok = fn(bounds[0], bounds[1])
    return all([f.result() for f in futures]) and ok


def decode_batch(buffers, out=None, labels_out=None, color=None, keys=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
    """Decode many records of one shape into an (N, C, H, W) array and an (N,) int64 label array.

    Records whose bytes share one layout (the usual case: one converter, one shape; labels of
    different varint lengths are fine) are decoded with a few vectorized NumPy steps for the
    whole batch; others one by one; encoded images on a thread per core. ``out`` (and
    ``labels_out``) may be preallocated arrays to fill, and ``out``'s dtype may differ from the
    records' (values are cast); without ``out``, records must also agree in dtype. ``keys``, when
    given, name the records in error messages; ``color`` and ``max_pixels`` are as in
    :func:`decode`. Raises ShapeMismatchError when records differ.
    """
    buffers = buffers if isinstance(buffers, list) else list(buffers)
    n = len(buffers)
    if n == 0:
        raise ValueError("decode_batch needs at least one record")
    try:
        f0 = parse_datum(buffers[0])
        first = _fields_to_array(buffers[0], f0, color, max_pixels)
    except DatumDecodeError as exc:
        raise DatumDecodeError(f"{_record_name(keys, 0)}: {exc}") from exc
    dtype = first.dtype if out is None else None  # without out, records must agree in dtype
    out = _prepare_out(out, n, first.shape, first.dtype)
    labels_out = _prepare_labels(labels_out, n)
    if f0.encoded:
        _place(first, out[0])
        labels_out[0] = f0.label
        work = partial(_decode_into, buffers, out, labels_out, color, max_pixels, keys, first,
                       dtype)
        for error in _image_pool().map(work, range(1, n)):
            if error is not None:  # the first failing record, in order
                raise error
        return out, labels_out
    if n > 1 and len(buffers[0]) <= (1 << 16) \
            and _decode_uniform(buffers, f0, out, labels_out, dtype):
        return out, labels_out
    out[0] = first
    labels_out[0] = f0.label
    for i in range(1, n):
        error = _decode_into(buffers, out, labels_out, color, max_pixels, keys, first, dtype, i)
        if error is not None:
            raise error
    return out, labels_out


def _decode_into(buffers, out, labels_out, color, max_pixels, keys, first, dtype, i):
    """Decode record i into out[i] and labels_out[i]; return (not raise) the error naming the
    record, so that a pool's errors are reported in record order."""
    from .errors import ShapeMismatchError

    try:
        arr, label = decode(buffers[i], color, max_pixels)
    except DatumDecodeError as exc:
        err = DatumDecodeError(f"{_record_name(keys, i)}: {exc}")
        err.__cause__ = exc
        return err
    if arr.shape != first.shape or (dtype is not None and arr.dtype != dtype):
        return ShapeMismatchError(
            f"{_record_name(keys, i)} holds a {arr.dtype} array of shape {arr.shape}, "
            f"but the batch's first record holds {first.dtype} {first.shape}")
    if out.flags.c_contiguous:
        _place(arr, out[i])
    else:
        out[i] = arr
    labels_out[i] = label
    return None


def _prepare_out(out, n, shape, dtype):
    if out is None:
        return np.empty((n,) + tuple(shape), dtype)
    if out.shape != (n,) + tuple(shape):
        raise ValueError(f"out has shape {out.shape}, the batch needs {(n,) + tuple(shape)}")
    return out


def _prepare_labels(labels_out, n):
    if labels_out is None:
        return np.empty(n, np.int64)
    if labels_out.shape != (n,):
        raise ValueError(f"labels_out has shape {labels_out.shape}, the batch needs ({n},)")
    return labels_out


# ---------------------------------------------------------------------------------------------
# BlobProto (mean files): pycaffe's helpers
# ---------------------------------------------------------------------------------------------


def array_to_blobproto(arr, diff=None):
    """An N-D array to a BlobProto with ``shape.dim`` (as pycaffe does); data as float32."""
    arr = np.asarray(arr)
    blob = BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(np.float32).ravel())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, np.float32).ravel())
    return blob


def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff) as a float32 array: the legacy (num, channels, height, width)
    shape when any of those is set, else ``shape.dim``."""
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float32)
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") \
            or blob.HasField("width"):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if int(np.prod(shape)) != values.size:
        raise DatumDecodeError(f"blob holds {values.size} values but its shape is {shape}")
    return values.reshape(shape)


def arraylist_to_blobprotovector_str(arraylist):
    """A list of arrays to serialized BlobProtoVector bytes."""
    vec = BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(str_):
    """Serialized BlobProtoVector bytes to a list of arrays."""
    vec = BlobProtoVector()
    try:
        vec.ParseFromString(str_)
    except Exception as exc:  # protobuf's DecodeError
        raise DatumDecodeError(f"not a BlobProtoVector: {exc}") from exc
    return [blobproto_to_array(blob) for blob in vec.blobs]
