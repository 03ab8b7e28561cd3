"""Annotation files -> box rows, as the SSD fork's ``convert_annoset`` reads them.

Three readers, each returning the (N, 7) float64 rows of
:data:`caffe_lmdb.format.annotated.BOX_COLUMNS` in the record's order (groups in order of their
label's first appearance, instance ids counted per group, coordinates normalized in float32):

* :func:`read_xml` (``--label_type=xml``, PASCAL VOC): the size from ``<size>`` (the image's
  only when ``<size>`` is missing or not integers), ``<difficult>`` applies only when it comes
  before ``<bndbox>`` (the fork copies the flag when the box is read);
* :func:`read_json` (``--label_type=json``, COCO style per image): ``category_id`` looked up
  among the label map's *names* as text, ``bbox = [x, y, w, h]``, ``iscrowd`` -> difficult;
* :func:`read_txt` (``--label_type=txt``): ``label xmin ymin xmax ymax`` per object, divided by
  the original image size; difficult is always false.

Where the fork silently writes wrong data, these raise
:class:`~caffe_lmdb.errors.AnnotationError` naming the file and line instead: an XML coordinate
that is not an integer (the fork reads ``12.5`` as 0) or is missing, a TXT file that stops
parsing half-way (the fork keeps the boxes before it), an object without a box. Where the fork
aborts (malformed files, unknown names, a zero size), so do these, with the place named.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from xml.etree import ElementTree
from xml.parsers import expat

import numpy as np

from ..errors import AnnotationError

__all__ = ["read_xml", "read_json", "read_txt", "strtof", "READERS"]

_WS = " \t\n\v\f\r"  # C's isspace
_INT = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*")
_FLOAT = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                    r"[ \t\n\v\f\r]*")
_F32 = np.float32


def _int32(text):
    """boost::property_tree's ``get<int>``: the whole text an int (surrounding whitespace
    allowed), else None."""
    if text is None or not _INT.fullmatch(text):
        return None
    value = int(text.strip(_WS))
    return value if -(1 << 31) <= value < (1 << 31) else None


def strtof(text):
    """A decimal number to the nearest float32, as C's ``strtof`` (no double rounding).
    None when ``text`` is not a decimal number (surrounding whitespace allowed)."""
    if text is None or not _FLOAT.fullmatch(text):
        return None
    text = text.strip(_WS)
    x = float(text)
    f = _F32(x)
    if np.isfinite(f) and float(f) != x:
        # x is not a float32: make sure rounding through the double did not cross a midpoint
        other = np.nextafter(f, _F32(np.inf) if float(f) < x else _F32(-np.inf))
        mid = (float(f) + float(other)) / 2
        if mid == x:  # the double sits on the midpoint: decide on the exact decimal
            exact = Decimal(text)
            if exact != Decimal(mid):
                f = f if (exact < Decimal(mid)) == (float(f) < mid) else other
    return f


class _Node:
    """An element with its line (the slow, exact path: only to name the line of an error).
    It reads like an ElementTree element: ``tag``, ``text``, ``find(tag)``, iteration."""
    __slots__ = ("tag", "line", "parts", "children")

    def __init__(self, tag, line):
        self.tag, self.line, self.parts, self.children = tag, line, [], []

    @property
    def text(self):
        return "".join(self.parts)

    def find(self, tag):
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def __iter__(self):
        return iter(self.children)


def _parse_xml(path):
    """The element tree of an XML file, each element with its line (expat)."""
    parser = expat.ParserCreate()
    root = _Node(None, 0)
    stack = [root]

    def start(tag, _attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag):
        stack.pop()

    def chars(text):
        stack[-1].parts.append(text)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.buffer_text = True
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as exc:
        raise AnnotationError(f"malformed XML: {expat.ErrorString(exc.code)}", path,
                              exc.lineno) from None
    except IsADirectoryError:
        raise AnnotationError("is a folder, not an annotation file", path) from None
    return root


class _Groups:
    """The fork's grouping: one group per label in order of first appearance."""

    def __init__(self):
        self.groups = {}

    def add(self, label, row):
        members = self.groups.setdefault(label, [])
        row[0], row[1] = float(label), float(len(members))
        members.append(row)
        return row

    def rows(self):
        rows = [r for members in self.groups.values() for r in members]
        return np.array(rows, np.float64).reshape(-1, 7)


def _size(text_h, text_w, img_h, img_w, path, what):
    h, w = _int32(text_h), _int32(text_w)
    if h is None or w is None:  # the fork falls back on the image's size (with a warning)
        h, w = img_h, img_w
    if not h or not w:
        raise AnnotationError(f"no valid image width/height ({what}: {w} x {h})", path)
    return h, w


def read_xml(path, img_height: int, img_width: int, labels: dict) -> np.ndarray:
    """Box rows of a PASCAL VOC XML file (the fork's ReadXMLToAnnotatedDatum).

    Parsed with ElementTree's C parser; a file with an error is parsed again, slowly, with the
    line of every element, so that the error names its line."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, IsADirectoryError):
        root = None
    if root is not None:
        try:
            return _read_voc(root, path, img_height, img_width, labels)
        except AnnotationError:
            pass
    tree = _parse_xml(path)
    if not tree.children:
        raise AnnotationError("malformed XML: no element", path)
    return _read_voc(tree.children[0], path, img_height, img_width, labels)


def _line(node):
    return getattr(node, "line", None)


def _data(node):
    text = node.text
    return "" if text is None else text


def _read_voc(ann, path, img_height, img_width, labels):
    if ann.tag != "annotation":
        raise AnnotationError(f"the root element is <{ann.tag}>, not <annotation>", path)
    size = ann.find("size")
    sh = size.find("height") if size is not None else None
    sw = size.find("width") if size is not None else None
    height, width = _size(_data(sh) if sh is not None else None,
                          _data(sw) if sw is not None else None, img_height, img_width, path,
                          "<size>")
    fh, fw = _F32(height), _F32(width)
    groups = _Groups()
    for obj in ann:
        if obj.tag != "object":
            continue
        row = None
        unboxed = []
        difficult = False
        for child in obj:
            if child.tag == "name":
                name = _data(child)
                if name not in labels:
                    raise AnnotationError(f"the name {name!r} is not in the label map",
                                          path, _line(child))
                row = groups.add(labels[name], [0.0] * 7)
                unboxed.append(row)
            elif child.tag == "difficult":
                difficult = _data(child) == "1"
            elif child.tag == "bndbox":
                if row is None:
                    raise AnnotationError("<bndbox> before the object's <name>", path,
                                          _line(child))
                coords = []
                for tag in ("xmin", "ymin", "xmax", "ymax"):
                    node = child.find(tag)
                    if node is None:
                        raise AnnotationError(f"<bndbox> has no <{tag}>", path, _line(child))
                    value = _int32(_data(node))
                    if value is None:
                        raise AnnotationError(
                            f"<{tag}> is {_data(node).strip()!r}, not an integer (SSD-Caffe "
                            "reads it as 0; round the coordinates to whole pixels)", path,
                            _line(node))
                    coords.append(value)
                row[2] = float(_F32(coords[0]) / fw)
                row[3] = float(_F32(coords[1]) / fh)
                row[4] = float(_F32(coords[2]) / fw)
                row[5] = float(_F32(coords[3]) / fh)
                row[6] = 1.0 if difficult else 0.0
                if unboxed and unboxed[-1] is row:
                    unboxed.pop()
        if unboxed:
            raise AnnotationError("<object> without a <bndbox> after its <name>", path,
                                  _line(obj))
    return groups.rows()


def _json_text(value):
    """What boost's JSON ptree holds for a value: its text (numbers as written)."""
    if isinstance(value, (dict, list)):
        return ""
    return value


def read_json(path, img_height: int, img_width: int, labels: dict) -> np.ndarray:
    """Box rows of a COCO-style per-image JSON file (the fork's ReadJSONToAnnotatedDatum)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f, parse_int=str, parse_float=str, parse_constant=str)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"malformed JSON: {exc.msg} (column {exc.colno})", path,
                              exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"not UTF-8 text ({exc.reason})", path) from None
    except IsADirectoryError:
        raise AnnotationError("is a folder, not an annotation file", path) from None
    if not isinstance(doc, dict):
        raise AnnotationError("expected a JSON object with \"image\" and \"annotation\"", path)
    image = doc["image"] if isinstance(doc.get("image"), dict) else {}
    height, width = _size(_json_text(image.get("height")), _json_text(image.get("width")),
                          img_height, img_width, path, "image")
    fh, fw = _F32(height), _F32(width)
    if "annotation" not in doc:
        raise AnnotationError("no \"annotation\" list", path)
    objects = doc["annotation"]
    objects = list(objects.values()) if isinstance(objects, dict) else objects
    if not isinstance(objects, list):
        objects = []  # a scalar has no children in a ptree
    groups = _Groups()
    for i, obj in enumerate(objects):
        where = f"annotation[{i}]"
        if not isinstance(obj, dict) or "category_id" not in obj:
            raise AnnotationError(f"{where} has no category_id", path)
        name = _json_text(obj["category_id"])
        if name not in labels:
            raise AnnotationError(f"{where}: category_id {name!r} is not a name in the label "
                                  "map (the label map's names are the category ids as text)",
                                  path)
        crowd = _int32(_json_text(obj.get("iscrowd", "0"))) or 0
        bbox = obj.get("bbox")
        items = list(bbox.values()) if isinstance(bbox, dict) else bbox
        if not isinstance(items, list):
            raise AnnotationError(f"{where} has no bbox list [x, y, w, h]", path)
        values = [strtof(_json_text(v)) for v in items]
        if len(values) != 4 or any(v is None for v in values):
            raise AnnotationError(f"{where}: bbox {bbox!r} is not four numbers [x, y, w, h]",
                                  path)
        x, y, w, h = values
        groups.add(labels[name], [0.0, 0.0, float(x / fw), float(y / fh),
                                  float((x + w) / fw), float((y + h) / fh),
                                  1.0 if crowd else 0.0])
    return groups.rows()


def read_txt(path, img_height: int, img_width: int, labels: dict | None = None) -> np.ndarray:
    """Box rows of a TXT file of ``label xmin ymin xmax ymax`` lines, in pixels of the
    original image (the fork's ReadTxtToAnnotatedDatum; the label map is not used)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise AnnotationError("is a folder, not an annotation file", path) from None
    tokens: list[tuple[str, int]] = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):  # bytes.split(): C's whitespace
        tokens.extend((tok.decode("latin-1"), lineno) for tok in line.split())
    fh, fw = _F32(img_height), _F32(img_width)
    groups = _Groups()
    for k in range(0, len(tokens), 5):
        obj = tokens[k:k + 5]
        lineno = obj[0][1]
        if len(obj) < 5:
            raise AnnotationError(f"{len(obj)} values where 'label xmin ymin xmax ymax' (5) "
                                  "are expected", path, lineno)
        label = _int32(obj[0][0])
        coords = [strtof(tok) for tok, _ in obj[1:]]
        if label is None or any(c is None for c in coords):
            if label is None:
                bad, what = obj[0], "an integer label"
            else:
                bad, what = obj[1 + [c is None for c in coords].index(True)], "a number"
            raise AnnotationError(f"{bad[0]!r} is not {what} (lines are 'label xmin ymin "
                                  "xmax ymax')", path, bad[1])
        groups.add(label, [0.0, 0.0, float(coords[0] / fw), float(coords[1] / fh),
                           float(coords[2] / fw), float(coords[3] / fh), 0.0])
    return groups.rows()


READERS = {"xml": read_xml, "json": read_json, "txt": read_txt}
