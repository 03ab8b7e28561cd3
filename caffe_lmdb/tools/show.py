"""See a database: contact sheets of its records and plots of its statistics.

* :func:`contact_sheet`: a grid of records (only those shown are read, by position), each tile
  the decoded image in true colour, with its position, key, label (a class name from a labels
  file), its size, and, for a companion database of targets, their numbers (a bounding box and
  five landmarks drawn on the image). Float records (features) are shown as heat maps, or as a
  bar plot when they are C x 1 x 1. Detection records (a database object with a ``boxes(i)``
  method) get their boxes drawn by :func:`draw_boxes`.
* :func:`plot_stats`: label histogram, height-vs-width scatter of the image sizes, and the value
  histogram of float records.

Everything is drawn with OpenCV (its Hershey fonts need no font files); the result is an
H x W x 3 uint8 BGR array, written as PNG by ``out=``. OpenCV is imported on first use.

Sheet geometry (pixels): ``tile`` is the side of the square area each image is fitted into;
a cell is ``tile + 8`` wide and ``tile + 8 + 14 * lines`` high, where ``lines`` is 3 (position
and key; label; size), plus 1 when float records are shown (their value range), plus the lines
the targets' numbers take. The sheet is ``columns * cell width`` wide and ``22 + rows * cell
height`` high (22: the title line), ``rows = ceil(records / columns)``.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CaffeLMDBError, DatumDecodeError, ListFileError, OptionError
from ..format.cv import cv2 as _cv2
from ..format.datum import decode, parse_datum
from ..format.imagesize import check_image, declared_size
from ..format.sniff import image_format
from ..read.reader import DatumDB
from ..read.reader import open as open_db

__all__ = ["contact_sheet", "SheetInfo", "draw_boxes", "draw_targets", "read_labels",
           "find_labels", "plot_stats", "dataset_stats", "DatasetStats", "save_image",
           "sheet_size"]

PAD = 4            # around each tile's image area
LINE = 14          # height of a text line
HEADER = 22        # the title line of a sheet
BASE_LINES = 3     # position + key, label, size
MAX_TARGET_LINES = 6

_FONT = 0          # cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.4
_SMALL = 0.35
_BG = (24, 24, 24)
_TILE_BG = (56, 56, 56)
_TEXT = (235, 235, 235)
_DIM = (150, 150, 150)
_WARN = (80, 80, 255)
_PALETTE = [(75, 180, 60), (48, 130, 245), (200, 130, 0), (25, 225, 255), (180, 30, 145),
            (240, 240, 70), (60, 20, 230), (230, 50, 240), (128, 128, 0), (195, 255, 170)]
_LANDMARK_COLORS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)]
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# Class names
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|"((?:[^"\\\n]|\\.)*)"|\'((?:[^\'\\\n]|\\.)*)\'|([{}:])|'
                    r'([^\s{}:"\'#]+)')


def _tokens(text: str, path: str):
    """(kind, value, line) tokens of a protobuf text file: 'str', 'sym' ({ } :) or 'word'."""
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ListFileError(f"cannot read {text[pos:pos + 10]!r} (not a LabelMap "
                                "prototxt)", path, line)
        if m.group(1) is not None or m.group(2) is not None:
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            yield "str", bytes(raw, "utf-8").decode("unicode_escape", "replace"), line
        elif m.group(3):
            yield "sym", m.group(3), line
        elif m.group(4):
            yield "word", m.group(4), line
        line += text.count("\n", pos, m.end())
        pos = m.end()


def _read_labelmap(text: str, path: str) -> dict[int, str]:
    """An SSD LabelMap (``item { name: "cat" label: 1 display_name: "Cat" }``): label ->
    display_name (or name when it has none)."""
    names: dict[int, str] = {}
    toks = list(_tokens(text, path))
    i = 0

    def expect(kind, value=None):
        nonlocal i
        if i >= len(toks):
            raise ListFileError(f"unexpected end of file (expected {value or kind})", path,
                                toks[-1][2] if toks else 1)
        tok = toks[i]
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise ListFileError(f"expected {value or kind}, found {tok[1]!r}", path, tok[2])
        i += 1
        return tok

    while i < len(toks):
        word = expect("word")
        if word[1] != "item":
            raise ListFileError(f"expected 'item {{', found {word[1]!r} (not a LabelMap "
                                "prototxt)", path, word[2])
        if i < len(toks) and toks[i][1] == ":":
            i += 1
        expect("sym", "{")
        fields: dict[str, Any] = {}
        while i < len(toks) and toks[i][1] != "}":
            name = expect("word")
            expect("sym", ":")
            if i >= len(toks) or toks[i][0] == "sym":
                raise ListFileError(f"field {name[1]} has no value", path, name[2])
            fields[name[1]] = toks[i]
            i += 1
        expect("sym", "}")
        if "label" not in fields:
            raise ListFileError("item without a label", path, word[2])
        try:
            label = int(fields["label"][1])
        except ValueError:
            raise ListFileError(f"label {fields['label'][1]!r} is not an integer", path,
                                fields["label"][2]) from None
        if label in names:
            raise ListFileError(f"label {label} is listed twice", path, fields["label"][2])
        shown = fields.get("display_name") or fields.get("name")
        names[label] = shown[1] if shown is not None else str(label)
    if not names:
        raise ListFileError("no items in the label map", path, 1)
    return names


def read_labels(path: str | os.PathLike) -> dict[int, str]:
    """Class names from a labels file: label -> name.

    * one name per line, line i (from 0) naming label i, as ``convert-folder`` writes
      ``labels.txt`` (blank lines leave their label unnamed);
    * or an SSD LabelMap prototxt (``item { name: ... label: N display_name: ... }``), named
      by ``display_name`` when an item has one.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ListFileError(f"{path} is not a text file of class names ({exc.reason})") \
            from None
    if re.search(r"^\s*item\s*:?\s*\{", text, re.M):
        return _read_labelmap(text, path)
    names = {i: line.strip() for i, line in enumerate(text.splitlines()) if line.strip()}
    if not names:
        raise ListFileError(f"{path} holds no class names (one name per line)")
    return names


def find_labels(db_path: str | os.PathLike) -> str | None:
    """The labels file of a database, if there is one: ``labels.txt`` or
    ``labelmap.prototxt`` in its folder, then the same names beside the folder."""
    folder = os.path.abspath(os.fspath(db_path)).rstrip(os.sep)
    for where in (folder, os.path.dirname(folder)):
        for name in ("labels.txt", "labelmap.prototxt"):
            candidate = os.path.join(where, name)
            if os.path.isfile(candidate):
                return candidate
    return None


def _label_names(labels, db_path) -> tuple[dict[int, str] | None, str | None]:
    """(names, where they came from) for the ``labels`` argument."""
    if labels is False or labels == "none":
        return None, None
    if labels is None:
        found = find_labels(db_path)
        return (read_labels(found), found) if found else (None, None)
    if isinstance(labels, (str, os.PathLike)):
        return read_labels(labels), os.fspath(labels)
    if isinstance(labels, Mapping):
        return {int(k): str(v) for k, v in labels.items()}, "a dict"
    if isinstance(labels, Sequence):
        return {i: str(v) for i, v in enumerate(labels)}, "a list"
    raise TypeError(f"labels must be a file, a dict, a list of names, None or False, not "
                    f"{type(labels).__name__}")


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _ascii(text: str) -> str:
    """Hershey fonts draw ASCII only: anything else becomes '?'."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _text_width(text: str, scale: float = _SCALE) -> int:
    return _cv2().getTextSize(text, _FONT, scale, 1)[0][0]


def _fit(text: str, width: int, scale: float = _SCALE, head: float = 0.4) -> str:
    """``text`` shortened in the middle (``...``) to fit ``width`` pixels; the tail (a file
    name) is kept longer than the head."""
    text = _ascii(text)
    if _text_width(text, scale) <= width:
        return text
    lo, hi = 0, len(text)
    best = "..."
    while lo <= hi:  # the longest kept length that fits
        mid = (lo + hi) // 2
        a = int(round(mid * head))
        candidate = text[:a] + "..." + text[len(text) - (mid - a):] if mid else "..."
        if _text_width(candidate, scale) <= width:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def _put(img, text, x, y, color=_TEXT, scale=_SCALE):
    _cv2().putText(img, text, (int(x), int(y)), _FONT, scale, color, 1, _cv2().LINE_AA)


def _show_key(key: bytes) -> str:
    text = bytes(key).decode("utf-8", "backslashreplace")
    return _ascii(text)


def _number(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


def _wrap(values, width: int) -> list[str]:
    """Numbers as lines of text that fit ``width`` pixels."""
    lines: list[str] = []
    current = ""
    for v in values:
        word = _number(float(v))
        candidate = f"{current} {word}" if current else word
        if current and _text_width(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------


def _fit_image(img: np.ndarray, tile: int) -> tuple[np.ndarray, float]:
    """Scale an H x W x 3 image to fit a tile x tile square, keeping its aspect ratio: small
    images by an integer factor with nearest neighbour (pixels stay square and sharp), large
    ones down with area averaging. Returns the image and its scale factor."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = tile / max(h, w)
    if s >= 2:
        k = int(s)
        return cv2.resize(img, (w * k, h * k), interpolation=cv2.INTER_NEAREST), float(k)
    if s >= 1:
        return img, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA), s


def _to_bgr(chw: np.ndarray, channel_order: str = "BGR") -> np.ndarray:
    """A (C, H, W) pixel record as an H x W x 3 uint8 BGR image: gray replicated, BGR as it
    is, RGB reversed, a fourth (alpha) channel dropped."""
    c = chw.shape[0]
    if chw.dtype != np.uint8:  # 16-bit PNG and the like
        chw = (chw.astype(np.float64) / np.iinfo(chw.dtype).max * 255 + 0.5).astype(np.uint8) \
            if np.issubdtype(chw.dtype, np.integer) else np.clip(chw, 0, 255).astype(np.uint8)
    if c == 1:
        return np.repeat(chw[0][:, :, None], 3, axis=2)
    rgb = channel_order == "RGB"
    planes = [chw[2], chw[1], chw[0]] if rgb else [chw[0], chw[1], chw[2]]
    return np.ascontiguousarray(np.stack(planes, axis=2))


def _value_range(arr: np.ndarray) -> tuple[float, float, int]:
    """(min, max) of the finite values, and the count of the others."""
    finite = np.isfinite(arr)
    bad = int(arr.size - np.count_nonzero(finite))
    if bad == arr.size:
        return 0.0, 0.0, bad
    values = arr[finite] if bad else arr
    return float(values.min()), float(values.max()), bad


def _heat_tile(arr: np.ndarray, tile: int) -> np.ndarray:
    """A (C, H, W) array as a heat map (viridis over the record's own value range), the C
    channels side by side in a grid with 1-pixel gaps; fitted into tile x tile. NaN and
    infinite values are magenta."""
    cv2 = _cv2()
    arr = np.asarray(arr, np.float64)
    c, h, w = arr.shape
    lo, hi, _ = _value_range(arr)
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    gap = 1 if c > 1 else 0
    mosaic = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap))
    empty = np.ones(mosaic.shape, bool)
    for i in range(c):
        r, q = divmod(i, cols)
        ys, xs = slice(r * (h + gap), r * (h + gap) + h), slice(q * (w + gap), q * (w + gap) + w)
        mosaic[ys, xs] = arr[i]
        empty[ys, xs] = False
    bad = ~np.isfinite(mosaic)
    scaled = (mosaic - lo) / (hi - lo) if hi > lo else np.full(mosaic.shape, 0.5)
    index = np.clip(np.nan_to_num(scaled, nan=0.0) * 255 + 0.5, 0, 255).astype(np.uint8)
    img = cv2.applyColorMap(index, cv2.COLORMAP_VIRIDIS)
    img[bad] = (255, 0, 255)
    img[empty] = _TILE_BG
    return _fit_image(img, tile)[0]


def _bar_tile(values: np.ndarray, tile: int) -> np.ndarray:
    """C values as a bar plot, tile x tile, with a zero line: one bar per value, or when
    there are more values than pixel columns, each column spans its values' min..max."""
    cv2 = _cv2()
    img = np.full((tile, tile, 3), _TILE_BG, np.uint8)
    v = np.nan_to_num(np.asarray(values, np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi == lo:
        hi = lo + 1.0
    top, bottom = 2, tile - 3

    def y_of(x):
        return int(round(bottom - (x - lo) / (hi - lo) * (bottom - top)))

    zero = y_of(0.0)
    color = (235, 200, 120)
    n = len(v)
    if n <= tile:
        step = tile / n
        for i, x in enumerate(v):
            x0 = int(i * step)
            x1 = max(x0, int((i + 1) * step) - (1 if step >= 3 else 0) - 1)
            y = y_of(x)
            cv2.rectangle(img, (x0, min(y, zero)), (x1, max(y, zero)), color, -1)
    else:
        edges = np.linspace(0, n, tile + 1).astype(int)
        for col in range(tile):
            part = v[edges[col]:max(edges[col + 1], edges[col] + 1)]
            y0, y1 = y_of(max(float(part.max()), 0.0)), y_of(min(float(part.min()), 0.0))
            cv2.line(img, (col, y0), (col, y1), color, 1)
    cv2.line(img, (0, zero), (tile - 1, zero), _DIM, 1)
    return img


def _dashed_line(img, p0, p1, color, thickness=1, dash=4, gap=3):
    cv2 = _cv2()
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        return
    t = 0.0
    while t < length:
        t1 = min(t + dash, length)
        a = (int(round(x0 + (x1 - x0) * t / length)), int(round(y0 + (y1 - y0) * t / length)))
        b = (int(round(x0 + (x1 - x0) * t1 / length)),
             int(round(y0 + (y1 - y0) * t1 / length)))
        cv2.line(img, a, b, color, thickness)
        t += dash + gap


def _box_color(label: int) -> tuple[int, int, int]:
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_boxes(image: np.ndarray, boxes, names: Mapping[int, str] | None = None, *,
               thickness: int = 1, text: bool = True) -> np.ndarray:
    """Draw detection boxes on an H x W x 3 uint8 BGR image, in place; returns the image.

    ``boxes``: one row per box, ``(group label, instance id, xmin, ymin, xmax, ymax,
    difficult)``, the coordinates normalized to the image (0..1 of its width and height, as
    SSD's NormalizedBBox); a (K, 6) array without the difficult column is accepted. Each box
    is drawn in its label's colour, solid, or dashed (and its name marked ``*``) when
    difficult, with the class name (``names[label]``, else the number) in its top-left
    corner. Coordinates outside 0..1 are clipped to the image."""
    cv2 = _cv2()
    rows = np.asarray(boxes, np.float64)
    if rows.size == 0:
        return image
    if rows.ndim != 2 or rows.shape[1] not in (6, 7):
        raise ValueError(f"boxes must be rows of (label, instance, xmin, ymin, xmax, ymax, "
                         f"difficult), not an array of shape {rows.shape}")
    h, w = image.shape[:2]

    def px(v, size):
        return int(min(max(round(v * size), 0), size - 1))

    for row in rows:
        label = int(row[0])
        x0, y0, x1, y1 = px(row[2], w), px(row[3], h), px(row[4], w), px(row[5], h)
        difficult = rows.shape[1] == 7 and bool(row[6])
        color = _box_color(label)
        if difficult:
            for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)),
                         ((x0, y1), (x0, y0))):
                _dashed_line(image, a, b, color, thickness)
        else:
            cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness)
        if text:
            name = names.get(label, str(label)) if names else str(label)
            name = _ascii(name) + ("*" if difficult else "")
            (tw, th), base = cv2.getTextSize(name, _FONT, _SMALL, 1)
            tx = min(x0 + thickness + 1, max(0, w - tw - 1))  # inside the box, off its edge
            ty = min(max(y0 + th + 2, th + 1), h - 1)
            cv2.rectangle(image, (tx - 1, ty - th - 1), (tx + tw, ty + base - 1), (0, 0, 0), -1)
            cv2.putText(image, name, (tx, ty), _FONT, _SMALL, color, 1, cv2.LINE_AA)
    return image


def draw_targets(image: np.ndarray, values, scale: float = 1.0, coords: str = "auto",
                 landmarks: str = "xy") -> bool:
    """Draw a record's targets on its (scaled) tile image, in place, when they are a bounding
    box (4 numbers: x1 y1 x2 y2) or a bounding box and five landmarks (14 numbers: the box,
    then the points as x y pairs, or ``landmarks="xxyy"``: five x then five y).

    ``coords``: ``"pixels"`` (of the record's image; ``scale`` maps them onto ``image``),
    ``"normalized"`` (0..1 of the width and height), or ``"auto"``: normalized when every
    number is within 0..1, else pixels. Returns whether anything was drawn."""
    cv2 = _cv2()
    v = np.asarray(values, np.float64).ravel()
    if len(v) not in (4, 14) or not np.isfinite(v).all():
        return False
    if coords not in ("auto", "pixels", "normalized"):
        raise ValueError(f"coords must be 'auto', 'pixels' or 'normalized', not {coords!r}")
    if landmarks not in ("xy", "xxyy"):
        raise ValueError(f"landmarks must be 'xy' or 'xxyy', not {landmarks!r}")
    h, w = image.shape[:2]
    normalized = coords == "normalized" or (coords == "auto" and v.min() >= 0 and v.max() <= 1)
    sx, sy = (w, h) if normalized else (scale, scale)
    x0, y0, x1, y1 = (int(round(a)) for a in (v[0] * sx, v[1] * sy, v[2] * sx, v[3] * sy))
    cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 0), 1)
    if len(v) == 14:
        pts = v[4:].reshape(5, 2) if landmarks == "xy" else v[4:].reshape(2, 5).T
        for (x, y), color in zip(pts, _LANDMARK_COLORS, strict=True):
            cv2.circle(image, (int(round(x * sx)), int(round(y * sy))), 2, color, -1,
                       cv2.LINE_AA)
    return True


# ---------------------------------------------------------------------------------------------
# Reading the records shown
# ---------------------------------------------------------------------------------------------


@dataclass
class _Record:
    position: int
    key: bytes
    image: np.ndarray | None = None     # H x W x 3 BGR tile image (before fitting) or None
    kind: str = "image"                 # image, heat, bars, error
    label: int | None = None
    size: str = ""
    value_range: str = ""
    boxes: np.ndarray | None = None
    targets: np.ndarray | None = None
    error: str = ""


def _decode_encoded(blob: bytes, tile: int):
    """Decode an encoded image for a tile: a JPEG much larger than the tile is decoded at
    1/2, 1/4 or 1/8 of its size (libjpeg's scaled decoding, several times faster)."""
    cv2 = _cv2()
    check_image(blob)
    size = declared_size(blob)
    buf = np.frombuffer(blob, np.uint8)
    if image_format(blob) == "jpg" and size is not None:
        factor = 1
        while factor < 8 and max(size) // (factor * 2) >= tile:
            factor *= 2
        if factor > 1:
            flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                    8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
            img = cv2.imdecode(buf, flag)
            if img is not None:
                return img, size
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatumDecodeError("the encoded image could not be decoded")
    if img.ndim == 2:
        img = img[:, :, None]
    return img, size or (img.shape[1], img.shape[0])


def _format_name(blob) -> str:
    return image_format(blob) or "encoded"


def _read_record(rec: _Record, value, tile: int, channel_order: str) -> None:
    """Fill a _Record from a Datum value: its tile image (or heat map / bars), label, size."""
    f = parse_datum(value)
    rec.label = f.label if f.has_label else None
    if f.encoded:
        if f.data is None or not f.data[1]:
            raise DatumDecodeError("encoded record without data")
        blob = bytes(value[f.data[0]:f.data[0] + f.data[1]])
        img, (w, h) = _decode_encoded(blob, tile)
        native = img.shape[2]
        chw = img.transpose(2, 0, 1)
        rec.size = f"{w}x{h} {_format_name(blob)}" + (" gray" if native == 1 else "")
    else:
        chw, _ = decode(value)
        c, h, w = chw.shape
        if chw.dtype == np.uint8 and c in (1, 3, 4):
            rec.size = f"{w}x{h}" + (" gray" if c == 1 else f" {c}ch" if c == 4 else "")
        else:
            _read_values(rec, chw)
            return
    if chw.shape[0] in (1, 3, 4) and np.issubdtype(chw.dtype, np.integer):
        rec.image = _to_bgr(chw, channel_order)
    else:
        _read_values(rec, np.asarray(chw, np.float32))


def _read_values(rec: _Record, arr: np.ndarray) -> None:
    c, h, w = arr.shape
    lo, hi, bad = _value_range(arr)
    rec.size = f"{c}x{h}x{w}" + (" u8" if arr.dtype == np.uint8 else "")
    rec.value_range = f"{_number(lo)}..{_number(hi)}" + (f" {bad} nan/inf" if bad else "")
    rec.kind = "bars" if h == 1 and w == 1 else "heat"
    rec.image = arr  # made into a tile once the tile size is known


def _tile_image(rec: _Record, tile: int) -> tuple[np.ndarray, float]:
    image = rec.image
    assert image is not None  # only records that decoded get here
    if rec.kind == "heat":
        return _heat_tile(image, tile), 1.0
    if rec.kind == "bars":
        return _bar_tile(image, tile), 1.0
    return _fit_image(image, tile)


def _error_tile(tile: int) -> np.ndarray:
    cv2 = _cv2()
    img = np.full((tile, tile, 3), (40, 40, 90), np.uint8)
    cv2.line(img, (0, 0), (tile - 1, tile - 1), _WARN, 1)
    cv2.line(img, (0, tile - 1), (tile - 1, 0), _WARN, 1)
    return img


def _open(source, **options) -> DatumDB:
    if isinstance(source, (str, bytes, os.PathLike)):
        return open_db(source, **options)
    return source


def _choose(n_records: int, n: int, start: int, shuffle: bool, seed, positions):
    """The positions to show, and how they were chosen (for the title), and the seed used."""
    if positions is not None:
        chosen = np.asarray(positions, np.int64).ravel()
        bad = chosen[(chosen < -n_records) | (chosen >= n_records)]
        if len(bad):
            raise OptionError(f"position {int(bad[0])} is out of range: the database has "
                              f"{n_records} records")
        chosen = np.where(chosen < 0, chosen + n_records, chosen)
        return chosen, f"{len(chosen)} chosen records", seed
    if n < 1:
        raise OptionError(f"n must be at least 1, not {n}")
    if shuffle:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] % 1_000_000)
        rng = np.random.default_rng(int(seed))
        count = min(n, n_records)
        chosen = np.sort(rng.choice(n_records, size=count, replace=False))
        return chosen, f"{count} at random (seed {seed})", seed
    if not 0 <= start < max(n_records, 1):
        raise OptionError(f"start {start} is out of range: the database has {n_records} "
                          f"records (positions 0..{n_records - 1})")
    stop = min(n_records, start + n)
    return np.arange(start, stop), f"#{start}..#{stop - 1} in key order", seed


# ---------------------------------------------------------------------------------------------
# The contact sheet
# ---------------------------------------------------------------------------------------------


@dataclass
class SheetInfo:
    """What :func:`contact_sheet` showed: the database, positions, labels file used, the
    seed of a shuffled sheet, records that could not be decoded, targets found."""
    path: str
    records: int
    positions: list = field(default_factory=list)
    title: str = ""
    labels_from: str | None = None
    seed: int | None = None
    errors: list = field(default_factory=list)   # (position, key, message)
    targets_found: int = 0
    columns: int = 0
    tile: int = 0
    lines: int = BASE_LINES

    def __str__(self):
        text = f"{self.path}: {len(self.positions)} of {self.records} records shown " \
               f"({self.title})"
        if self.labels_from:
            text += f"; class names from {self.labels_from}"
        if self.errors:
            text += f"; {len(self.errors)} could not be decoded, e.g. record " \
                    f"{self.errors[0][0]} ({self.errors[0][2]})"
        return text


def sheet_size(count: int, tile: int = 96, columns: int | None = None,
               lines: int = BASE_LINES) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``count`` tiles (see the module docstring)."""
    columns = columns or _default_columns(count)
    rows = math.ceil(count / columns)
    return columns * (tile + 2 * PAD), HEADER + rows * (tile + 2 * PAD + lines * LINE)


def _default_columns(count: int) -> int:
    return max(1, math.ceil(math.sqrt(count)))


def contact_sheet(db, n: int = 64, start: int = 0, *, shuffle: bool = False,
                  seed: int | None = None, positions=None, labels=None, targets=None,
                  tile: int = 96, columns: int | None = None, channel_order: str = "BGR",
                  coords: str = "auto", landmarks: str = "xy", out=None,
                  return_info: bool = False):
    """A contact sheet of a database's records, as an H x W x 3 uint8 BGR array.

    Parameters
    ----------
    db : path of an LMDB, or a :class:`~caffe_lmdb.reader.DatumDB` (or any object with its
        ``keys()``, ``begin()`` and ``path``; one with a ``boxes(i)`` method returning detection
        rows also gets its boxes drawn, see :func:`draw_boxes`).
    n, start : the records at positions ``start .. start + n - 1`` (key order, Caffe's).
    shuffle, seed : instead, ``n`` records drawn at random (shown in position order); the
        title shows the seed, so a sheet can be drawn again.
    positions : instead, these positions (in this order).
    labels : class names: a file (one name per line, or an SSD LabelMap prototxt), a dict,
        a list; None looks for ``labels.txt`` / ``labelmap.prototxt`` in and beside the
        database folder; False shows numbers only.
    targets : a companion database (path or DatumDB) of float records under the same keys
        (convert-imageset ``--targets``): their numbers are printed under each tile, and
        4 numbers (x1 y1 x2 y2) or 14 (the box and 5 landmarks) are drawn on the image
        (``coords``: "pixels", "normalized" or "auto"; ``landmarks``: "xy" pairs or "xxyy").
    tile : side in pixels of the square each image is fitted into (16 .. 1024). Images
        smaller than half of it are enlarged by an integer factor (nearest neighbour),
        larger ones reduced; the aspect ratio is kept.
    columns : tiles per row (default: ceil(sqrt(count)), 8 for 64).
    channel_order : "BGR" (Caffe's order, the default) or "RGB" for databases that hold RGB
        (convert_cifar_data writes RGB).
    out : also write the sheet to this file (PNG; .jpg/.bmp/.webp/.tif also work).
    return_info : return ``(sheet, SheetInfo)`` instead of the sheet.

    Only the records shown are read (by position), so a sheet of a large database is
    quick. A record that cannot be decoded gets a crossed-out tile with the error; the
    other tiles are drawn as usual (see ``SheetInfo.errors``).
    """
    if not 16 <= int(tile) <= 1024:
        raise OptionError(f"tile must be between 16 and 1024 pixels, not {tile}")
    if channel_order not in ("BGR", "RGB"):
        raise OptionError(f"channel_order must be 'BGR' or 'RGB', not {channel_order!r}")
    if coords not in ("auto", "pixels", "normalized"):
        raise OptionError(f"coords must be 'auto', 'pixels' or 'normalized', not {coords!r}")
    if landmarks not in ("xy", "xxyy"):
        raise OptionError(f"landmarks must be 'xy' or 'xxyy', not {landmarks!r}")
    tile = int(tile)
    if out is not None:
        _check_out(out)
    owned = isinstance(db, (str, bytes, os.PathLike))
    database = _open(db)
    tdb = None
    try:
        index = database.keys()
        chosen, title, seed = _choose(len(index), int(n), int(start), shuffle, seed, positions)
        if not len(chosen):
            raise OptionError(f"{database.path} is empty: there is nothing to show")
        names, labels_from = _label_names(labels, database.path)
        records = [_Record(int(p), bytes(index[int(p)])) for p in chosen]
        _read_records(database, records, tile, channel_order)
        info = SheetInfo(path=database.path, records=len(index), title=title,
                         positions=[r.position for r in records], labels_from=labels_from,
                         seed=seed if shuffle else None, tile=tile)
        if targets is not None:
            tdb = _open(targets)
            info.targets_found = _read_targets(tdb, records, database.path)
        columns = int(columns) if columns else _default_columns(len(records))
        if columns < 1:
            raise OptionError(f"columns must be at least 1, not {columns}")
        info.columns = columns
        info.errors = [(r.position, r.key, r.error) for r in records if r.kind == "error"]
        sheet, info.lines = _draw_sheet(records, tile, columns, names, info, coords, landmarks)
    finally:
        if owned and isinstance(database, DatumDB):
            database.close()
        if tdb is not None and isinstance(targets, (str, bytes, os.PathLike)):
            tdb.close()
    if out is not None:
        save_image(sheet, out)
    return (sheet, info) if return_info else sheet


def _read_records(db, records: list[_Record], tile: int, channel_order: str) -> None:
    boxes = getattr(db, "boxes", None)
    if getattr(db, "kind", "annotated") != "annotated":  # a DatumDB of plain Datum records
        boxes = None
    if callable(boxes):  # detection records: the database object decodes them
        for rec in records:
            try:
                image, label = db[rec.position]
                image = np.asarray(image)
                if getattr(db, "layout", "CHW") == "HWC":
                    image = image.transpose(2, 0, 1)
                order = "RGB" if getattr(db, "channel_order", "BGR") == "RGB" else channel_order
                rec.label = int(label)
                c, h, w = image.shape
                rec.size = f"{w}x{h}" + (" gray" if c == 1 else "")
                if c in (1, 3, 4) and np.issubdtype(image.dtype, np.integer):
                    rec.image = _to_bgr(image, order)
                else:
                    _read_values(rec, np.asarray(image, np.float32))
                rec.boxes = np.asarray(boxes(rec.position), np.float64)
            except (CaffeLMDBError, ValueError) as exc:
                rec.kind, rec.error = "error", str(exc)
        return
    with db.begin(buffers=False) as txn:
        for rec in records:
            value = txn.get(rec.key)
            if value is None:
                raise CaffeLMDBError(f"{db.path}: record {_show_key(rec.key)!r} is gone: the "
                                     "database was modified after it was opened")
            try:
                _read_record(rec, value, tile, channel_order)
            except (CaffeLMDBError, ValueError) as exc:
                rec.kind, rec.error = "error", str(exc)


def _read_targets(tdb, records: list[_Record], db_path: str) -> int:
    """The companion's record for each shown key (flattened floats); returns how many were
    found. None found at all is an error (the wrong database, or keys of another scheme)."""
    found = 0
    with tdb.begin(buffers=False) as txn:
        for rec in records:
            value = txn.get(rec.key)
            if value is None:
                continue
            try:
                arr, _ = decode(value)
            except CaffeLMDBError as exc:
                raise DatumDecodeError(f"in the targets database {tdb.path}: {exc}",
                                       rec.key) from None
            rec.targets = np.asarray(arr, np.float64).ravel()
            found += 1
    if not found:
        some = tdb.keys()[0] if len(tdb.keys()) else None
        raise CaffeLMDBError(
            f"the targets database {tdb.path} has none of the keys shown from {db_path} "
            f"(e.g. {_show_key(records[0].key)!r}; its own keys look like "
            f"{_show_key(some) if some is not None else 'nothing'!r}): a companion holds one "
            "record per image under the same key")
    return found


def _draw_sheet(records, tile, columns, names, info, coords, landmarks):
    text_w = tile
    target_lines = []
    for rec in records:
        if rec.targets is None:
            target_lines.append(["targets: none"] if info.targets_found else [])
            continue
        lines = _wrap(rec.targets, text_w)
        if len(lines) > MAX_TARGET_LINES:
            lines = lines[:MAX_TARGET_LINES - 1] + [f"... ({len(rec.targets)} values)"]
        target_lines.append(lines)
    any_values = any(rec.kind in ("heat", "bars") for rec in records)
    n_lines = BASE_LINES + (1 if any_values else 0) + max(map(len, target_lines), default=0)
    width, height = sheet_size(len(records), tile, columns, n_lines)
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = _BG
    cell_w, cell_h = tile + 2 * PAD, tile + 2 * PAD + n_lines * LINE
    title = f"{os.path.basename(info.path.rstrip('/')) or info.path}: {info.title} of " \
            f"{info.records}"
    if info.labels_from:
        title += f"; names: {os.path.basename(info.labels_from)}"
    _put(sheet, _fit(title, width - 2 * PAD), PAD, HEADER - 7)
    for j, rec in enumerate(records):
        r, q = divmod(j, columns)
        x0, y0 = q * cell_w + PAD, HEADER + r * cell_h + PAD
        sheet[y0:y0 + tile, x0:x0 + tile] = _TILE_BG
        if rec.kind == "error":
            img = _error_tile(tile)
        else:
            img, scale = _tile_image(rec, tile)
            img = np.ascontiguousarray(img)
            if rec.targets is not None:
                draw_targets(img, rec.targets, scale, coords, landmarks)
            if rec.boxes is not None:
                draw_boxes(img, rec.boxes, names)
        h, w = img.shape[:2]
        ix, iy = x0 + (tile - w) // 2, y0 + (tile - h) // 2
        sheet[iy:iy + h, ix:ix + w] = img
        lines = [(_position_and_key(rec, text_w), _TEXT)]
        if rec.kind == "error":
            lines.append((_fit("decode error", text_w), _WARN))
            lines.append((_fit(rec.error, text_w, head=1.0), _WARN))
        else:
            if rec.label is None:
                label = "no label"
            else:
                name = names.get(rec.label) if names else None
                label = f"{rec.label} {name}" if name is not None else f"label {rec.label}"
            color = _WARN if names and rec.label is not None and rec.label not in names \
                else _TEXT
            lines.append((_fit(label, text_w, head=1.0), color))
            lines.append((_fit(rec.size, text_w), _DIM))
            if any_values:
                lines.append((_fit(rec.value_range, text_w), _DIM))
        if any_values and rec.kind == "error":
            lines.append(("", _DIM))
        lines += [(_fit(t, text_w), _DIM) for t in target_lines[j]]
        ty = y0 + tile + PAD
        for k, (text, color) in enumerate(lines):
            _put(sheet, text, x0, ty + (k + 1) * LINE - 4, color)
    return sheet, n_lines


def _position_and_key(rec: _Record, width: int) -> str:
    """``#position key``: the position whole, the key shortened in the middle to fit."""
    position = f"#{rec.position}"
    room = width - _text_width(position + " ")
    key = _show_key(rec.key)
    if room < _text_width("a...b") and _text_width(f"{position} {key}") > width:
        return _fit(position, width, head=1.0)
    return f"{position} {_fit(key, room, head=0.2)}"


def _check_out(out) -> None:
    ext = os.path.splitext(os.fspath(out))[1].lower()
    if ext not in _IMAGE_EXTS:
        raise OptionError(f"cannot write {os.fspath(out)}: name the output .png (or "
                          f"{', '.join(_IMAGE_EXTS[1:])})")


def save_image(image: np.ndarray, out) -> None:
    """Write a sheet or plot to ``out``, in the format of its extension (.png, lossless, is
    the one meant; .jpg, .bmp, .webp, .tif also work)."""
    cv2 = _cv2()
    out = os.fspath(out)
    _check_out(out)
    ext = os.path.splitext(out)[1].lower()
    # zlib level 1: OpenCV's default PNG setting makes files ~3x larger for ~half the time
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if ext == ".png" else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise CaffeLMDBError(f"OpenCV could not encode the image as {ext}")
    tmp = out + ".part"
    with open(tmp, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# Statistics plots (info --plot)
# ---------------------------------------------------------------------------------------------


@dataclass
class DatasetStats:
    """What :func:`plot_stats` plots: labels, image sizes and float values of every record."""
    path: str
    records: int = 0
    labels: Counter = field(default_factory=Counter)
    without_label: int = 0
    sizes: Counter = field(default_factory=Counter)   # (height, width) -> count
    unreadable: int = 0
    float_records: int = 0
    value_min: float = math.inf
    value_max: float = -math.inf
    value_count: int = 0
    value_nonfinite: int = 0
    value_hist: np.ndarray | None = None
    value_edges: np.ndarray | None = None


_CHUNK = 512
_BINS = 100


def dataset_stats(db, progress=None) -> DatasetStats:
    """Read every record once for its label and size (encoded images: the size their header
    declares, decoding only those whose header is not understood), and the float records a
    second time for a 100-bin histogram of their values over their exact range."""
    owned = isinstance(db, (str, bytes, os.PathLike))
    database = _open(db)
    try:
        stats = DatasetStats(path=database.path)
        n = stats.records = len(database.keys())
        index = database.keys()
        float_keys: list[bytes] = []
        for start, values in database.value_chunks(_CHUNK):
            for j, value in enumerate(values):
                _stat_record(stats, index[start + j], value, float_keys)
            if progress is not None:
                progress(start + len(values), n)
        if float_keys:
            with database.begin() as txn:
                _value_histogram(stats, txn, float_keys)
        return stats
    finally:
        if owned and isinstance(database, DatumDB):
            database.close()


def _stat_record(stats: DatasetStats, key, value, float_keys) -> None:
    try:
        f = parse_datum(value)
    except DatumDecodeError:
        stats.unreadable += 1
        return
    if f.has_label:
        stats.labels[f.label] += 1
    else:
        stats.without_label += 1
    if f.encoded:
        blob = value[f.data[0]:f.data[0] + f.data[1]] if f.data else b""
        size = declared_size(bytes(blob[:65536])) if blob else None
        if size is None and blob:
            try:
                size = _decode_encoded(bytes(blob), 1 << 30)[1]
            except (CaffeLMDBError, ValueError):
                size = None
        if size is None:
            stats.unreadable += 1
        else:
            stats.sizes[(size[1], size[0])] += 1
        return
    if f.data is not None and f.data[1]:  # raw pixels: the header's shape, if it fits the data
        if f.channels * f.height * f.width != f.data[1]:
            stats.unreadable += 1
        else:
            stats.sizes[(f.height, f.width)] += 1
        return
    try:
        arr, _ = decode(value)
    except DatumDecodeError:  # neither pixels nor a float count matching the shape
        stats.unreadable += 1
        return
    stats.sizes[(f.height, f.width)] += 1
    stats.float_records += 1
    float_keys.append(bytes(key))
    lo, hi, bad = _value_range(arr)
    stats.value_nonfinite += bad
    stats.value_count += arr.size - bad
    if bad < arr.size:
        stats.value_min = min(stats.value_min, lo)
        stats.value_max = max(stats.value_max, hi)


def _value_histogram(stats: DatasetStats, txn, float_keys) -> None:
    lo, hi = stats.value_min, stats.value_max
    if not math.isfinite(lo):
        return
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, _BINS + 1)
    hist = np.zeros(_BINS, np.int64)
    for key in float_keys:
        arr, _ = decode(txn.get(key))
        values = arr[np.isfinite(arr)]
        hist += np.histogram(values, bins=edges)[0]
    stats.value_hist, stats.value_edges = hist, edges


_PANEL_W, _PANEL_H = 420, 300


def plot_stats(db, out=None, progress=None, labels=None) -> np.ndarray:
    """Plots of a database as one H x W x 3 BGR image (``out``: also write it as PNG):
    label histogram (with class names from ``labels``, as in :func:`contact_sheet`, when
    there are at most 24 labels), height-vs-width scatter of the image sizes (dot area grows
    with the count), and for float records the histogram of their values. Each panel is
    420 x 300 pixels, side by side: 840 x 300, or 1260 x 300 with float records."""
    owned = isinstance(db, (str, bytes, os.PathLike))
    database = db if isinstance(db, DatasetStats) else _open(db)
    try:
        stats = database if isinstance(database, DatasetStats) else \
            dataset_stats(database, progress)
        names = _label_names(labels, stats.path)[0] if stats.labels else None
    finally:
        if owned and isinstance(database, DatumDB):
            database.close()
    panels = [_label_panel(stats, names), _size_panel(stats)]
    if stats.value_hist is not None:
        panels.append(_value_panel(stats))
    image = np.concatenate(panels, axis=1)
    if out is not None:
        save_image(image, out)
    return image


def _panel(title: str):
    img = np.full((_PANEL_H, _PANEL_W, 3), _BG, np.uint8)
    _put(img, _fit(title, _PANEL_W - 12), 6, 16)
    return img


_PLOT = (44, 28, _PANEL_W - 14, _PANEL_H - 36)  # x0, y0, x1, y1 of the plotting area


def _axes(img, x_lo: str, x_hi: str, y_hi: str, x_name: str, y_name: str):
    cv2 = _cv2()
    x0, y0, x1, y1 = _PLOT
    cv2.line(img, (x0, y1), (x1, y1), _DIM, 1)
    cv2.line(img, (x0, y0), (x0, y1), _DIM, 1)
    _put(img, x_lo, x0, y1 + 14, _DIM, _SMALL)
    _put(img, x_hi, x1 - _text_width(x_hi, _SMALL), y1 + 14, _DIM, _SMALL)
    _put(img, x_name, (x0 + x1 - _text_width(x_name, _SMALL)) // 2, y1 + 28, _DIM, _SMALL)
    _put(img, _fit(y_hi, x0 - 4, _SMALL), 2, y0 + 8, _DIM, _SMALL)
    _put(img, "0", x0 - 4 - _text_width("0", _SMALL), y1, _DIM, _SMALL)
    _put(img, _fit(y_name, x0 - 4, _SMALL), 2, (y0 + y1) // 2, _DIM, _SMALL)


def _bars(img, counts: np.ndarray, color):
    """Bars of ``counts`` across the plotting area (binned by max when there are more
    counts than pixels)."""
    cv2 = _cv2()
    x0, y0, x1, y1 = _PLOT
    width = x1 - x0 - 1
    counts = np.asarray(counts, np.float64)
    if len(counts) > width:
        edges = np.linspace(0, len(counts), width + 1).astype(int)
        counts = np.maximum.reduceat(counts, edges[:-1])
    top = counts.max() if len(counts) and counts.max() > 0 else 1.0
    step = width / max(len(counts), 1)
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        a = x0 + 1 + int(i * step)
        b = max(a, x0 + int((i + 1) * step) - (1 if step >= 3 else 0))
        h = max(1, int(round(c / top * (y1 - y0))))
        cv2.rectangle(img, (a, y1 - h), (b, y1 - 1), color, -1)


def _label_panel(stats: DatasetStats, names=None) -> np.ndarray:
    cv2 = _cv2()
    labeled = sum(stats.labels.values())
    title = f"labels: {len(stats.labels)} distinct in {labeled} records"
    if stats.without_label:
        title += f", {stats.without_label} without"
    img = _panel(title)
    if not stats.labels:
        _put(img, "no labels", _PLOT[0] + 10, (_PLOT[1] + _PLOT[3]) // 2, _DIM)
        return img
    lo, hi = min(stats.labels), max(stats.labels)
    color = (235, 200, 120)
    if hi - lo < 24:  # few labels: a bar each, with its count and name
        x0, y0, x1, y1 = _PLOT
        top = max(stats.labels.values())
        slot = (x1 - x0 - 2) / (hi - lo + 1)
        for i, label in enumerate(range(lo, hi + 1)):
            c = stats.labels.get(label, 0)
            a, b = x0 + 2 + int(i * slot + slot * 0.15), x0 + 2 + int((i + 1) * slot - slot * 0.15)
            h = round(c / top * (y1 - y0 - 14))
            if c:
                cv2.rectangle(img, (a, y1 - max(h, 1)), (b, y1 - 1), color, -1)
            count = _fit(str(c), int(slot), _SMALL)
            _put(img, count, (a + b - _text_width(count, _SMALL)) // 2, y1 - h - 3, _TEXT, _SMALL)
            name = names.get(label, str(label)) if names else str(label)
            name = _fit(name, int(slot) - 2, _SMALL, head=1.0)
            _put(img, name, (a + b - _text_width(name, _SMALL)) // 2, y1 + 14, _DIM, _SMALL)
        cv2.line(img, (x0, y1), (x1, y1), _DIM, 1)
        _put(img, "label", (x0 + x1 - _text_width("label", _SMALL)) // 2, y1 + 28, _DIM, _SMALL)
        return img
    if hi - lo > 100_000:  # sparse, huge label values: one bar per distinct label
        keys = sorted(stats.labels)
        counts = np.array([stats.labels[k] for k in keys])
        x_lo, x_hi = str(keys[0]), str(keys[-1])
    else:
        counts = np.zeros(hi - lo + 1)
        for label, c in stats.labels.items():
            counts[label - lo] = c
        x_lo, x_hi = str(lo), str(hi)
    _bars(img, counts, color)
    _axes(img, x_lo, x_hi, str(int(counts.max())), "label", "count")
    return img


def _size_panel(stats: DatasetStats) -> np.ndarray:
    cv2 = _cv2()
    img = _panel(f"image sizes: {len(stats.sizes)} distinct (height vs width)"
                 + (f", {stats.unreadable} unreadable" if stats.unreadable else ""))
    if not stats.sizes:
        _put(img, "no sizes", _PLOT[0] + 10, (_PLOT[1] + _PLOT[3]) // 2, _DIM)
        return img
    x0, y0, x1, y1 = _PLOT
    wmax = _nice(max(w for _, w in stats.sizes) * 1.1)
    hmax = _nice(max(h for h, _ in stats.sizes) * 1.1)
    top = max(stats.sizes.values())
    for (h, w), c in sorted(stats.sizes.items(), key=lambda item: -item[1]):
        x = x0 + 4 + int(round(w / wmax * (x1 - x0 - 8)))
        y = y1 - 4 - int(round(h / hmax * (y1 - y0 - 8)))
        radius = 2 + round(4 * math.sqrt(c / top))
        cv2.circle(img, (x, y), radius, (120, 200, 235), -1, cv2.LINE_AA)
    _axes(img, "0", str(wmax), str(hmax), "width", "height")
    if len(stats.sizes) == 1:
        (h, w), = stats.sizes
        _put(img, f"all {w}x{h}", x0 + 8, y0 + 14, _TEXT, _SMALL)
    return img


def _nice(v: float) -> int:
    """The axis end at or above ``v``: 1, 2 or 5 times a power of ten (at least 1)."""
    v = max(float(v), 1.0)
    power = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 5, 10):
        if step * power >= v:
            return int(step * power)
    return int(10 * power)


def _value_panel(stats: DatasetStats) -> np.ndarray:
    img = _panel(f"float values of {stats.float_records} records: "
                 f"{_number(stats.value_min)} .. {_number(stats.value_max)}"
                 + (f", {stats.value_nonfinite} nan/inf" if stats.value_nonfinite else ""))
    hist, edges = stats.value_hist, stats.value_edges
    assert hist is not None and edges is not None  # only called for float records
    _bars(img, hist, (160, 220, 140))
    _axes(img, _number(edges[0]), _number(edges[-1]), str(int(hist.max())), "value", "count")
    return img
