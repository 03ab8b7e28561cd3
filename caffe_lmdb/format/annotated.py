"""SSD-Caffe's ``AnnotatedDatum``: a Datum plus normalized boxes in groups, to and from bytes.

The SSD fork of Caffe (weiliu89/caffe, branch ``ssd``) stores detection datasets as one
``AnnotatedDatum`` per image::

    AnnotatedDatum { Datum datum = 1; AnnotationType type = 2 (BBOX = 0);
                     repeated AnnotationGroup annotation_group = 3; }
    AnnotationGroup { int32 group_label = 1; repeated Annotation annotation = 2; }
    Annotation      { int32 instance_id = 1; NormalizedBBox bbox = 2; }
    NormalizedBBox  { float xmin = 1, ymin = 2, xmax = 3, ymax = 4; int32 label = 5;
                      bool difficult = 6; float score = 7, size = 8; }

Here the boxes of a record are one NumPy array of rows (:data:`BOX_COLUMNS`)::

    group_label, instance_id, xmin, ymin, xmax, ymax, difficult

float64, so that int32 labels and float32 coordinates are held exactly; rows come in the order
of the record (group by group). :func:`annotated_bytes` writes what ``convert_annoset`` writes
(every field the fork sets, in field order), byte for byte; :func:`parse_annotated` reads any
AnnotatedDatum (unknown fields skipped; ``label``, ``score`` and ``size`` of a box, which
convert_annoset never sets, are not kept). :func:`group_boxes` makes rows from per-object
labels the way the fork's annotation readers do (groups in order of first appearance, instance
ids counted per group).

Label maps (``labelmap.prototxt``, protobuf text format): :func:`read_labelmap`,
:func:`labelmap_text`, :func:`name_to_label`.

Pure functions: no file is written here (the label map reader only reads).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import AnnotationError, DatumDecodeError
from .datum import int32_varint, read_varint, skip_field, write_varint

__all__ = [
    "BBOX", "BOX_COLUMNS", "is_annotated", "annotated_bytes", "parse_annotated",
    "unwrap_datum", "group_boxes", "boxes_to_pixels", "read_labelmap", "labelmap_text",
    "name_to_label", "messages",
]

#: AnnotatedDatum.AnnotationType BBOX, the only type the fork has
BBOX = 0
#: the columns of a box array
BOX_COLUMNS = ("group_label", "instance_id", "xmin", "ymin", "xmax", "ymax", "difficult")

_EMPTY = np.zeros((0, 7), np.float64)
_EMPTY.setflags(write=False)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _rows(boxes) -> np.ndarray:
    rows = np.asarray(boxes if boxes is not None else _EMPTY, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 7:
        raise ValueError(f"boxes must be an (N, 7) array of rows {BOX_COLUMNS}, got shape "
                         f"{rows.shape}")
    return rows


def annotated_bytes(datum: bytes, type: int | None = BBOX, boxes=None) -> bytes:
    """Serialize an AnnotatedDatum: the Datum bytes, ``type`` (None leaves it out, as
    classification records do) and the box rows (see :data:`BOX_COLUMNS`).

    Consecutive rows with the same group label form one ``annotation_group``; each box is
    written with exactly ``xmin, ymin, xmax, ymax, difficult`` (as float32 and bool), the fields
    convert_annoset sets, so the bytes are the fork's.
    """
    rows = _rows(boxes)
    datum = bytes(datum)
    parts = [b"\x0a", write_varint(len(datum)), datum]
    if type is not None:
        parts += (b"\x10", int32_varint(type))
    if len(rows):
        blobs = rows[:, 2:6].astype("<f4").tobytes()
        labels = rows[:, 0]
        start = 0
        n = len(rows)
        while start < n:
            stop = start + 1
            while stop < n and labels[stop] == labels[start]:
                stop += 1
            group = [b"\x08", int32_varint(labels[start])]
            for i in range(start, stop):
                b = blobs[16 * i:16 * i + 16]
                bbox = (b"\x0d" + b[0:4] + b"\x15" + b[4:8] + b"\x1d" + b[8:12] + b"\x25"
                        + b[12:16] + (b"\x30\x01" if rows[i, 6] else b"\x30\x00"))
                ann = b"\x08" + int32_varint(rows[i, 1]) + b"\x12" + write_varint(len(bbox)) + bbox
                group += (b"\x12", write_varint(len(ann)), ann)
            body = b"".join(group)
            parts += (b"\x1a", write_varint(len(body)), body)
            start = stop
    return b"".join(parts)


def group_boxes(labels: Sequence[int], boxes, difficult: Sequence | None = None) -> np.ndarray:
    """Box rows from per-object ``labels`` and ``boxes`` ((N, 4) xmin, ymin, xmax, ymax),
    grouped as the fork's annotation readers group them: a group per label, in the order of
    the label's first appearance; objects keep their order within a group, and instance ids
    count 0, 1, 2, ... per group. ``difficult``: per-object flags (default all false)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = [int(v) for v in np.asarray(labels).reshape(-1).tolist()]
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    flags = np.zeros(len(labels), bool) if difficult is None else \
        np.asarray(difficult, dtype=bool).reshape(-1)
    if len(flags) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(flags)} difficult flags")
    order: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        order.setdefault(label, []).append(i)
    rows = np.empty((len(labels), 7), np.float64)
    r = 0
    for label, members in order.items():
        for instance, i in enumerate(members):
            rows[r] = (label, instance, *boxes[i], float(flags[i]))
            r += 1
    return rows


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def is_annotated(value) -> bool:
    """True when a record starts with field 1 length-delimited (``0a``): an AnnotatedDatum's
    datum. A Datum's field 1 (channels) is a varint (``08``), so no Datum starts this way."""
    return len(value) > 0 and value[0] == 0x0A


def _fields(buf, pos, end):
    """Yield (field, wire, value, start, stop) of a message's fields: value is the varint or
    fixed value, start/stop the payload span for length-delimited fields."""
    while pos < end:
        tag, pos = read_varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0 or tag > 0xFFFFFFFF:
            raise DatumDecodeError(f"invalid tag {tag} at byte {pos}")
        if wire == 0:
            value, pos = read_varint(buf, pos, end)
            yield field, wire, value, pos, pos
        elif wire == 2:
            size, pos = read_varint(buf, pos, end)
            if pos + size > end:
                raise DatumDecodeError(f"field {field}: {size} bytes announced, "
                                       f"{end - pos} left")
            yield field, wire, None, pos, pos + size
            pos += size
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise DatumDecodeError(f"truncated field {field}")
            yield field, wire, None, pos, pos + n
            pos += n
        else:
            start = pos
            pos = skip_field(buf, pos, end, wire, field)
            yield field, wire, None, start, pos


def _signed32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def unwrap_datum(value):
    """The Datum bytes inside an AnnotatedDatum (a zero-copy slice of ``value`` when, as
    always in practice, field 1 occurs once; protobuf's merge of several occurrences is their
    concatenation). Raises DatumDecodeError when ``value`` is not a valid AnnotatedDatum."""
    view = memoryview(value) if not isinstance(value, memoryview) else value
    end = len(view)
    spans = [(s, e) for f, w, _v, s, e in _fields(view, 0, end) if f == 1 and w == 2]
    if not spans:
        return b""
    if len(spans) == 1:
        s, e = spans[0]
        return view[s:e]
    return b"".join(bytes(view[s:e]) for s, e in spans)


_F4 = struct.Struct("<f")


def _parse_bbox(buf, s, e, row):
    for field, wire, value, a, _b in _fields(buf, s, e):
        if 1 <= field <= 4 and wire == 5:
            row[1 + field] = _F4.unpack_from(buf, a)[0]
        elif field == 6 and wire == 0:
            row[6] = 1.0 if value else 0.0


def parse_annotated(value):
    """``(datum_bytes, type, boxes)`` of an AnnotatedDatum: the inner Datum (bytes, b"" when
    absent), ``type`` (None when absent) and the (N, 7) float64 box rows (:data:`BOX_COLUMNS`;
    a missing coordinate reads 0, as protobuf's default). Raises DatumDecodeError."""
    view = memoryview(value) if not isinstance(value, memoryview) else value
    datum_parts, kind, rows = [], None, []
    for field, wire, v, s, e in _fields(view, 0, len(view)):
        if field == 1 and wire == 2:
            datum_parts.append(bytes(view[s:e]))
        elif field == 2 and wire == 0:
            kind = _signed32(v)
        elif field == 3 and wire == 2:
            label, anns = 0, []
            for f2, w2, v2, s2, e2 in _fields(view, s, e):
                if f2 == 1 and w2 == 0:
                    label = _signed32(v2)
                elif f2 == 2 and w2 == 2:
                    row = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
                    for f3, w3, v3, s3, e3 in _fields(view, s2, e2):
                        if f3 == 1 and w3 == 0:
                            row[1] = float(_signed32(v3))
                        elif f3 == 2 and w3 == 2:
                            _parse_bbox(view, s3, e3, row)
                    anns.append(row)
            for row in anns:
                row[0] = float(label)
            rows.extend(anns)
    boxes = np.array(rows, np.float64).reshape(-1, 7) if rows else _EMPTY.copy()
    return b"".join(datum_parts), kind, boxes


def boxes_to_pixels(boxes, width: int, height: int) -> np.ndarray:
    """A copy of box rows with the coordinates in pixels of a ``width`` x ``height`` image
    (x times width, y times height, multiplied in float32 as the values are stored: a box
    written from integer pixels comes back as those integers)."""
    out = np.array(_rows(boxes), dtype=np.float64)
    f32 = np.float32
    out[:, [2, 4]] = out[:, [2, 4]].astype(f32) * f32(width)
    out[:, [3, 5]] = out[:, [3, 5]].astype(f32) * f32(height)
    return out


# ---------------------------------------------------------------------------------------------
# Message classes and label maps
# ---------------------------------------------------------------------------------------------


def messages():
    """The message classes of proto/annotated.proto (``AnnotatedDatum``, ``LabelMap``, ...) and
    of datum.proto, as attributes (see :mod:`caffe_lmdb.format.proto`)."""
    from .proto import messages as _messages

    return _messages()


def read_labelmap(path) -> list[tuple[str, int, str]]:
    """``(name, label, display_name)`` of every item of a label map file (protobuf text
    format, as the fork's ``labelmap_voc.prototxt``), in file order. A missing ``label``
    reads 0 and a missing ``display_name`` reads "" (protobuf defaults)."""
    from google.protobuf import text_format

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise AnnotationError("label map file not found", path) from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"not a text file ({exc.reason})", path) from None
    msg = messages().LabelMap()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        line = getattr(exc, "GetLine", lambda: None)()
        detail = str(exc).split(" : ", 1)[-1]
        raise AnnotationError(f"not a LabelMap in protobuf text format: {detail}", path,
                              line) from None
    return [(item.name, item.label, item.display_name) for item in msg.item]


def labelmap_text(items: Iterable) -> str:
    """A label map in protobuf text format from ``(name, label[, display_name])`` items,
    formatted as protobuf writes it (and as the fork's label maps look)."""
    from google.protobuf import text_format

    msg = messages().LabelMap()
    for item in items:
        name, label, *rest = item
        entry = msg.item.add(name=str(name), label=int(label))
        if rest and rest[0] is not None:
            entry.display_name = str(rest[0])
    return text_format.MessageToString(msg)


def name_to_label(items, strict: bool = False, path=None) -> dict[str, int]:
    """The fork's MapNameToLabel: name -> label. With ``strict`` (``--check_label``) a name
    given twice is an error; otherwise the last one wins."""
    out: dict[str, int] = {}
    for name, label, *_ in items:
        if strict and name in out:
            raise AnnotationError(f"the name {name!r} is given more than once (--check_label)",
                                  path)
        out[name] = int(label)
    return out
