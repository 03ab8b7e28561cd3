"""Datum records: arrays and fields to bytes, and bytes back to arrays, as Caffe's tools
write and read them.

Pure functions of their arguments (no files, no LMDB), so any executor can run them. This is
the only module besides :mod:`caffe_lmdb.format.proto` (which makes them) that uses the
protobuf message classes, imported on first use (see :func:`messages`): readers and writers
never need them.

Two paths lead from bytes to arrays:

* the protobuf classes (``Datum``, ``BlobProto``), for people who want the message objects;
* :func:`parse_datum` and :func:`decode`, a parser of the Datum wire format written for speed.
  It reads the pixels in place (NumPy views over the buffer, no copy), reuses the parse of the
  header bytes when records share them, and reads Caffe's unpacked ``float_data`` (tag ``0x35``
  + 4 bytes per value) as one strided view. It accepts exactly what the protobuf parser accepts
  and raises :class:`~caffe_lmdb.errors.DatumDecodeError` on everything else (property-tested).
  Many records at once: :mod:`caffe_lmdb.format.batch`.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DatumDecodeError, ImageReadError
from . import cv
from .imagesize import DEFAULT_MAX_PIXELS, check_image
from .sniff import image_format

#: what the parser reads: bytes, or any object exposing a byte buffer (an LMDB value)
Buffer = Any

if TYPE_CHECKING:
    from .proto import BlobProto, BlobProtoVector, BlobShape, Datum

_MESSAGES = ("Datum", "BlobShape", "BlobProto", "BlobProtoVector")

__all__ = [
    "Datum", "BlobShape", "BlobProto", "BlobProtoVector",
    "array_to_datum", "array_to_datum_bytes", "arrays_to_datum_bytes", "datum_to_array",
    "datum_bytes", "decode", "parse_datum", "fields_to_array", "float_values", "shape_of",
    "read_varint", "write_varint", "int32_varint", "skip_field", "DatumFields",
]

_U8 = np.dtype(np.uint8)
_F4 = np.dtype("<f4")
_MASK64 = (1 << 64) - 1
_MAX_GROUP_DEPTH = 100


def messages() -> ModuleType:
    """:mod:`caffe_lmdb.format.proto` (the message classes), imported on first use: the
    protobuf runtime costs tens of milliseconds to import, and the readers and writers of this
    package never need it (they use the wire parser and :func:`datum_bytes`)."""
    from . import proto

    return proto


def __getattr__(name: str) -> Any:  # Datum, BlobShape, BlobProto, BlobProtoVector: lazily
    if name in _MESSAGES:
        return getattr(messages(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Writing: fields to bytes, in field-number order, with proto2 presence (what was set is written)
# ---------------------------------------------------------------------------------------------


def write_varint(value):
    """Protobuf varint of a non-negative int (< 2**64)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes([v]) for v in range(128)]  # the varints of 0 .. 127


def int32_varint(value):
    """Varint of an int32 field: negative values take ten bytes, as in every protobuf."""
    if type(value) is int and 0 <= value < 128:  # (most labels and sizes: one byte)
        return _ONE_BYTE[value]
    value = int(value)
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"{value} does not fit in an int32 field")
    return write_varint(value & _MASK64)


def _unpacked_floats(values):
    """Caffe's repeated float (not packed): tag 0x35 then 4 little-endian bytes, per value."""
    values = np.ascontiguousarray(values, dtype=_F4).reshape(-1)
    rows = np.empty((values.size, 5), _U8)
    rows[:, 0] = 0x35
    rows[:, 1:] = values.view(_U8).reshape(-1, 4)
    return rows.tobytes()


_HEADS: dict = {}  # (channels, height, width, data size) -> the serialized fields before data


def datum_bytes(channels: int | None = None, height: int | None = None,
                width: int | None = None, data: Buffer | None = None, label: int | None = None,
                float_data: ArrayLike | None = None, encoded: bool | None = None) -> bytes:
    """Serialize a Datum from its fields; ``None`` leaves a field out.

    Produces the bytes ``Datum(...).SerializeToString()`` would (and so the bytes of Caffe's C++
    tools) without building a message, and without copying ``data`` more than once.
    ``data`` may be bytes or any C-contiguous buffer (e.g. a uint8 array).
    """
    if data is not None:
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    shape = (channels, height, width, None if data is None else len(data))
    head = _HEADS.get(shape)
    if head is None:  # the fields before the payload, made once per shape
        parts: list = []
        if channels is not None:
            parts += (b"\x08", int32_varint(channels))
        if height is not None:
            parts += (b"\x10", int32_varint(height))
        if width is not None:
            parts += (b"\x18", int32_varint(width))
        if data is not None:
            parts += (b"\x22", write_varint(len(data)))
        head = b"".join(parts)
        if len(_HEADS) < 256:
            _HEADS[shape] = head
    parts = [head]
    if data is not None:
        parts.append(data)
    if label is not None:
        parts += (b"\x28", int32_varint(label))
    if float_data is not None:
        parts.append(_unpacked_floats(float_data))
    if encoded is not None:
        parts.append(b"\x38\x01" if encoded else b"\x38\x00")
    return b"".join(parts)


def _as_chw(arr: ArrayLike) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D (channels, height, width) array, got shape {arr.shape}")
    return arr


def array_to_datum(arr: ArrayLike, label: int | None = None) -> Any:
    """A (C, H, W) array to a Datum, as pycaffe's ``caffe.io.array_to_datum``.

    uint8 arrays go to ``data`` (and ``encoded`` is set to false explicitly, as convert_imageset
    does, which readers such as NVIDIA DALI need); any other dtype goes to ``float_data`` as
    float32. ``label`` is written when given, 0 included.
    """
    datum = messages().Datum()
    datum.ParseFromString(array_to_datum_bytes(arr, label))
    return datum


def array_to_datum_bytes(arr: ArrayLike, label: int | None = None) -> bytes:
    """Serialized form of :func:`array_to_datum` (the fast path writers use)."""
    chw = _as_chw(arr)
    c, h, w = chw.shape
    if chw.dtype == _U8:
        return datum_bytes(c, h, w, data=np.ascontiguousarray(chw), label=label, encoded=False)
    return datum_bytes(c, h, w, label=label, float_data=chw)


def arrays_to_datum_bytes(arrays, labels=None):
    """:func:`array_to_datum_bytes` of every (C, H, W) array of ``arrays`` (an (N, C, H, W)
    array), as a list of N bytes objects: the same bytes, made with a few NumPy steps for the
    whole block instead of a Python call per record. ``labels``: N ints, or None (no label
    field)."""
    arrays = np.asarray(arrays)
    if arrays.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) array, got shape {arrays.shape}")
    n, c, h, w = arrays.shape
    pixels = arrays.dtype == _U8
    size = c * h * w
    head = b"\x08" + int32_varint(c) + b"\x10" + int32_varint(h) + b"\x18" + int32_varint(w)
    if pixels:
        head += b"\x22" + write_varint(size)
        body = np.ascontiguousarray(arrays).reshape(n, size)
    else:  # Caffe's unpacked float_data: tag 0x35 + 4 bytes per value
        body = np.empty((n, size, 5), _U8)
        body[:, :, 0] = 0x35
        body[:, :, 1:] = np.ascontiguousarray(arrays, dtype=_F4).reshape(n, size, 1).view(
            _U8).reshape(n, size, 4)
        body = body.reshape(n, 5 * size)
    tail = b"\x38\x00" if pixels else b""
    if labels is None:
        groups = [(np.arange(n), 0, None)]
    else:
        labels = np.asarray(labels, np.int64).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{n} arrays but {len(labels)} labels")
        if ((labels < -(1 << 31)) | (labels >= (1 << 31))).any():
            raise ValueError("a label does not fit in a Datum's int32 field")
        raw = labels.astype(np.uint64)  # negative: two's complement, ten varint bytes
        sizes = np.ones(n, np.int64)
        for k in range(1, 10):
            sizes += raw >= np.uint64(1 << (7 * k))
        groups = [(np.flatnonzero(sizes == k), k, raw) for k in np.unique(sizes).tolist()]
    out = None if len(groups) == 1 else np.empty(n, object)
    for rows, k, raw in groups:
        label_bytes = np.empty((len(rows), 1 + k), _U8) if k else np.empty((len(rows), 0), _U8)
        if k:
            label_bytes[:, 0] = 0x28
            values = raw[rows]
            for j in range(k):
                byte = (values >> np.uint64(7 * j)) & np.uint64(0x7F)
                label_bytes[:, 1 + j] = byte | np.uint64(0x80 if j < k - 1 else 0)
        block = np.empty((len(rows), len(head) + body.shape[1] + label_bytes.shape[1]
                          + len(tail)), _U8)
        block[:, :len(head)] = np.frombuffer(head, _U8)
        at = len(head)
        if pixels:  # data, label, encoded = false
            parts = (body[rows] if len(groups) > 1 else body, label_bytes,
                     np.frombuffer(tail, _U8))
        else:  # label, then float_data
            parts = (label_bytes, body[rows] if len(groups) > 1 else body)
        for part in parts:
            block[:, at:at + part.shape[-1]] = part
            at += part.shape[-1]
        values = block.view(f"V{block.shape[1]}").ravel().tolist()  # bytes, zeros kept
        if out is None:
            return values
        out[rows] = values
    return out.tolist()


def datum_to_array(datum: Any, color: bool | None = None) -> np.ndarray:
    """A Datum message to an array: (C, H, W) uint8 from ``data``, float32 from ``float_data``.

    Unlike pycaffe's version this also decodes encoded records (natively, or as ``color`` says:
    see :func:`decode`) and works with NumPy 2.
    """
    arr, _ = decode(datum.SerializeToString(), color=color)
    return arr


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


def read_varint(buf, pos, end):
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


def skip_field(buf, pos, end, wire, field, depth=0):
    """Skip one unknown field's payload; returns the new position."""
    if wire == 0:
        return read_varint(buf, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        size, pos = read_varint(buf, pos, end)
        if size > 0x7FFFFFFF:
            raise DatumDecodeError(f"length {size} at byte {pos} is too large")
        pos += size
    elif wire == 3:
        if depth >= _MAX_GROUP_DEPTH:
            raise DatumDecodeError("groups nested too deeply")
        while True:
            if pos >= end:
                raise DatumDecodeError(f"group {field} is not closed")
            tag, pos = read_varint(buf, pos, end)
            inner_field, inner_wire = tag >> 3, tag & 7
            # protobuf (upb) skips a field 0 of a scalar wire type inside an unknown group, and
            # rejects a field 0 that opens or closes a group (C++ protobuf rejects them all)
            if tag > 0xFFFFFFFF or (inner_field == 0 and inner_wire in (3, 4)):
                raise DatumDecodeError(f"invalid tag {tag} at byte {pos}")
            if inner_wire == 4:
                if inner_field != field:
                    raise DatumDecodeError(f"group {field} closed by end-group {inner_field}")
                return pos
            pos = skip_field(buf, pos, end, inner_wire, inner_field, depth + 1)
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
            tag, pos = read_varint(buf, pos, end)
            if tag > 0xFFFFFFFF:
                raise DatumDecodeError(f"invalid tag at byte {pos}")
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise DatumDecodeError(f"invalid field number 0 at byte {pos - 1}")
        if wire == 0 and field in (1, 2, 3, 5, 7):
            value, pos = read_varint(buf, pos, end)
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
            size, pos = read_varint(buf, pos, end)
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
            size, pos = read_varint(buf, pos, end)
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
            pos = skip_field(buf, pos, end, wire, field, 0)
    if pos != end:
        raise DatumDecodeError(f"truncated record: a field runs past the end ({end} bytes)")
    return snap


# Header cache: the bytes up to the first data payload, and the fields parsed from them.
# Records of one dataset share these bytes (same tags, shape and data length), so their parse is
# done once. Sound because a protobuf parse is a function of the bytes read so far.
_header = (b"", None)


def parse_datum(buf: Buffer) -> DatumFields:
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
        elif rest in (3, 5) and buf[pos + 2] < 0x80 \
                and (rest == 3 or (buf[pos + 3] == 0x38 and buf[pos + 4] == 0)):
            return (b1 & 0x7F) | (buf[pos + 2] << 7)
        return None
    if rest == 2 and buf[pos] == 0x38 and buf[pos + 1] == 0:
        return label
    return None


def fields_to_array(buf, f, color, max_pixels=DEFAULT_MAX_PIXELS):
    """The array a parsed record holds (a view into buf for raw data)."""
    if f.encoded:
        return _decode_image(buf, f, color, max_pixels)
    if f.data is not None and f.data[1]:
        shape = shape_of(f)
        offset, size = f.data
        if shape[0] * shape[1] * shape[2] != size:
            raise DatumDecodeError(f"data holds {size} bytes but channels x height x width = "
                                   f"{shape[0]} x {shape[1]} x {shape[2]}")
        return np.frombuffer(buf, _U8, count=size, offset=offset).reshape(shape)
    shape = shape_of(f)
    count = f.float_count
    if shape[0] * shape[1] * shape[2] != count:
        raise DatumDecodeError(f"float_data holds {count} values but channels x height x width "
                               f"= {shape[0]} x {shape[1]} x {shape[2]}")
    return float_values(buf, f.floats, count).reshape(shape)


def shape_of(f):
    if f.channels < 0 or f.height < 0 or f.width < 0:
        raise DatumDecodeError(f"negative shape {f.channels} x {f.height} x {f.width}")
    return f.channels, f.height, f.width


def float_values(buf, spans, count):
    """The values of float spans (see DatumFields.floats) as one contiguous float32 array."""
    out = np.empty(count, _F4)
    at = 0
    for offset, n, stride in spans:
        view = np.ndarray(shape=(n,), dtype=_F4, buffer=buf, offset=offset, strides=(stride,))
        out[at:at + n] = view
        at += n
    return out


def _decode_image(buf, f, color, max_pixels):
    cv2 = cv.cv2()
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
                               f"(format {image_format(blob) or 'unknown'})")
    if img.dtype != _U8:  # decoded natively: a 16-bit PNG or TIFF (Caffe aborts on it)
        raise DatumDecodeError(
            f"encoded image has {img.dtype} samples ({img.dtype.itemsize * 8}-bit "
            f"{image_format(blob) or 'image'}): Caffe's DataLayer and compute_image_mean read "
            "only 8-bit images; read with color=True or color=False to have it converted to 8 "
            "bits, or convert the file to 8 bits")
    return cv.hwc_to_chw(img)


def decode(buf: Buffer, color: bool | None = None,
           max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
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
    return fields_to_array(buf, f, color, max_pixels), f.label


