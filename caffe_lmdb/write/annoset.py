"""SSD-Caffe's ``convert_annoset``: images + annotation files -> an LMDB of AnnotatedDatum.

:func:`convert_annoset` takes the fork's arguments (``ROOT/``, a list of ``image annotation``
lines, or ``image label`` lines for ``anno_type="classification"``) and flags, and writes the
same keys (``%08d_<image path>``, numbered by list line) and the same record bytes as the fork's
tool, on the converters' engine (:func:`caffe_lmdb.convert.run`): every core, results in order,
a valid prefix after a crash, ``resume=True``.

The fork's behaviour, kept (see docs/detection.md):

* the Datum carries ``channels``/``height``/``width`` of the decoded (and resized) image in
  encoded records too, and ``label = -1`` in detection records;
* encoded records keep the file's bytes only when its extension matches the type and no
  resize or ``min_dim``/``max_dim`` is asked; ``--encoded`` without ``--encode_type`` guesses
  the type *with* its dot, so every image is re-encoded (``cv::imencode("..jpg")``);
* ``min_dim``/``max_dim`` scale by a float32 factor that only up-scales short images or only
  down-scales long ones, and take precedence over ``resize_height``/``resize_width``;
* boxes are normalized against the original image (or the XML/JSON size), never the resized
  one; a missing annotation file gives a record without boxes, an unreadable image no record.

Where the fork writes wrong data silently, an :class:`~caffe_lmdb.errors.AnnotationError`
naming the file and line stops the conversion instead (what was written before stays valid).
"""
from __future__ import annotations

import functools
import hashlib
import os
import random
import re
from dataclasses import dataclass

import numpy as np

from ..errors import AnnotationError, ImageReadError, ListFileError, OptionError
from ..format import cv
from ..format.annofiles import READERS
from ..format.annotated import (
    BBOX,
    annotated_bytes,
    group_boxes,
    labelmap_text,
    name_to_label,
    read_labelmap,
)
from ..format.datum import datum_bytes
from ..format.image import decoded_shape, encode_array, read_file, read_image
from ..format.imagesize import DEFAULT_MAX_PIXELS, check_image
from ..format.keys import MAX_KEY_BYTES, index_key
from .convert import DEFAULT_TIMEOUT, DatumWriter, Summary, run  # noqa: F401 (re-export)
from .encode import Record, Skip
from .sink import read_state
from .sources import Keyed

__all__ = ["convert_annoset", "AnnotatedDatumWriter", "AnnoOptions", "AnnoSample",
           "AnnosetSource", "annoset_image_datum", "encode_annotated", "write_labelmap",
           "labelmap_items"]

ANNO_TYPES = ("detection", "classification")


@dataclass(frozen=True)
class AnnoOptions:
    """convert_annoset's flags, as one picklable value shared by the samples."""
    anno_type: str = "detection"
    label_type: str = "xml"
    labels: tuple = ()  # ((name, label), ...): the label map after MapNameToLabel
    resize_height: int = 0
    resize_width: int = 0
    min_dim: int = 0
    max_dim: int = 0
    gray: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class AnnoSample(Keyed):
    """One list line: the image, its annotation file (detection) or label (classification),
    and the encoding to use ("" for raw pixels)."""
    path: str
    anno: str | None
    label: int
    enc: str
    where: str
    options: AnnoOptions

    def encode(self):
        return encode_annotated(self)


@functools.lru_cache(maxsize=8)
def _label_dict(labels):
    return dict(labels)


def _match_ext(filename, enc):
    """The fork's matchExt: the text after the file name's last dot (the whole name without
    one), case-insensitive, equals the type; type jpg also accepts jpeg."""
    p = filename.rfind(".")
    ext = (filename[p + 1:] if p != -1 else filename).lower()
    enc = enc.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def _scale(h, w, min_dim, max_dim):
    """ReadImageToCVMat's min_dim/max_dim factor, computed in float32 as the fork does."""
    f32 = np.float32
    lo, hi = min(h, w), max(h, w)
    s = f32(1)
    if min_dim > 0 and lo < min_dim:
        s = f32(min_dim) / f32(lo)
    if max_dim > 0 and int(s * f32(hi)) > max_dim:
        s = f32(max_dim) / f32(hi)
    return s


def annoset_image_datum(path, label, *, resize_height=0, resize_width=0, min_dim=0,
                        max_dim=0, gray=False, enc="", data=None):
    """The fork's ReadImageToDatum: ``(datum_bytes, (original_height, original_width))``.
    ``data``: the file's bytes when the caller has read them.

    Raises ImageReadError when the image cannot be read, EncodeError when OpenCV cannot encode
    as ``enc``."""
    if enc and not (resize_height or resize_width or min_dim or max_dim) \
            and _match_ext(os.fspath(path), enc):
        # the file is stored as it is: decoded only for its shape and as a check
        (h, w, c), data, _name = decoded_shape(path, gray=gray, data=data)
        if (c == 3) == (not gray):
            return datum_bytes(c, h, w, data=data, label=label, encoded=True), (h, w)
    img, blob, _name = read_image(path, gray=gray, data=data)
    orig = img.shape[:2]
    if min_dim > 0 or max_dim > 0:
        s = _scale(orig[0], orig[1], min_dim, max_dim)
        if s != 1:
            img = cv.cv2().resize(img, (0, 0), fx=float(s), fy=float(s))
    elif resize_height > 0 and resize_width > 0:
        img = cv.cv2().resize(img, (resize_width, resize_height))
    c = 1 if img.ndim == 2 else img.shape[2]
    h, w = img.shape[:2]
    if not enc:
        return datum_bytes(c, h, w, data=cv.planar(img), label=label, encoded=False), orig
    if ((c == 3) == (not gray) and not resize_height and not resize_width and not min_dim
            and not max_dim and _match_ext(os.fspath(path), enc)):
        data = blob
    else:
        data = encode_array(img, enc, path)
    return datum_bytes(c, h, w, data=data, label=label, encoded=True), orig


def _decoder_errors():
    try:
        import cv2
    except ImportError:  # pragma: no cover
        return (ImageReadError,)
    return (ImageReadError, cv2.error)


def encode_annotated(sample: AnnoSample):
    """One list line -> a :class:`~caffe_lmdb.encode.Record` holding the AnnotatedDatum, or a
    :class:`~caffe_lmdb.encode.Skip` when the image cannot be read. Annotation errors raise
    (they stop the conversion, as in the fork)."""
    o = sample.options
    try:
        data = read_file(sample.path)  # opened once: header checked, then decoded
        check_image(data, o.max_pixels, name=sample.path)
        datum, (oh, ow) = annoset_image_datum(
            sample.path, sample.label, resize_height=o.resize_height,
            resize_width=o.resize_width, min_dim=o.min_dim, max_dim=o.max_dim, gray=o.gray,
            enc=sample.enc, data=data)
    except _decoder_errors() as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Skip(sample.index, sample.key, sample.where, reason)
    if o.anno_type == "classification":
        return Record(sample.index, sample.key, annotated_bytes(datum, None))
    rows = None
    if sample.anno is not None and os.path.exists(sample.anno):  # missing: no boxes
        rows = READERS[o.label_type](sample.anno, oh, ow, _label_dict(o.labels))
    return Record(sample.index, sample.key, annotated_bytes(datum, BBOX, rows))


_INT = re.compile(rb"[+-]?[0-9]+")


def _join(root, path):
    if not root or root.endswith(os.sep):
        return root + path
    return os.path.join(root, path)


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class AnnosetSource:
    """convert_annoset's input: ``ROOT`` + a list of ``image annotation`` lines (detection) or
    ``image label`` lines (classification), split on whitespace as the fork reads them (so
    paths cannot hold spaces). Blank lines are ignored; key numbers count the other lines
    (the fork's line_id). The whole list is checked before anything is written."""

    chunk = 1

    def __init__(self, root, list_file, options: AnnoOptions, *, encoded=False,
                 encode_type="", shuffle=False, seed=None, index_keys=False):
        self.root = os.fspath(root)
        self.list_file = os.fspath(list_file)
        self.options = options
        self.encode_type = str(encode_type or "")
        self.encoded = bool(encoded)
        self.index_keys = bool(index_keys)
        self.shuffle = bool(shuffle)
        detection = options.anno_type == "detection"
        with open(self.list_file, "rb") as f:
            lines = f.read().split(b"\n")
        self._paths, self._second, self._lines = [], [], []
        for n, raw in enumerate(lines, 1):
            tokens = raw.split()
            if not tokens:
                continue
            if len(tokens) != 2:
                want = "an image path and an annotation file" if detection else \
                    "an image path and a label"
                raise ListFileError(f"expected {want} separated by whitespace (paths cannot "
                                    f"hold spaces), got {len(tokens)} fields",
                                    self.list_file, n)
            path, text = tokens
            second: bytes | int = text
            if not detection:
                if not _INT.fullmatch(text) or not -(1 << 31) <= int(text) < (1 << 31):
                    raise ListFileError(f"label {text.decode('utf-8', 'replace')!r} is not "
                                        "an int32", self.list_file, n)
                second = int(text)
            if not self.encode_type and self.encoded and b"." not in path:
                raise ListFileError(f"{path.decode('utf-8', 'replace')} has no extension for "
                                    "--encoded to guess the type from: give --encode_type",
                                    self.list_file, n)
            self._paths.append(path)
            self._second.append(second)
            self._lines.append(n)
        del lines
        self._order: np.ndarray | None = None
        if shuffle:
            if seed is None:
                seed = random.SystemRandom().randrange(1 << 63)
            self._order = np.random.default_rng(seed).permutation(len(self._paths))
        self.seed = seed if shuffle else None
        for i in range(len(self._paths)):
            j = self._entry(i)
            key = self._key(i, self._paths[j])
            if len(key) > MAX_KEY_BYTES:
                raise ListFileError(f"the key would be {len(key)} bytes, over LMDB's limit of "
                                    f"{MAX_KEY_BYTES}; shorten the paths or use --index_keys",
                                    self.list_file, self._lines[j])

    def __len__(self):
        return len(self._paths)

    def _entry(self, i):
        return i if self._order is None else int(self._order[i])

    def _key(self, i, path):
        return index_key(i) if self.index_keys else index_key(i) + b"_" + path

    def _enc(self, path):
        if self.encode_type:
            return self.encode_type
        if self.encoded:  # the fork's guess keeps the dot: ".jpg" (so it never matches)
            return path[path.rfind("."):].lower()
        return ""

    def samples(self, start=0):
        detection = self.options.anno_type == "detection"
        for i in range(start, len(self._paths)):
            j = self._entry(i)
            path = os.fsdecode(self._paths[j])
            second = self._second[j]
            anno = _join(self.root, os.fsdecode(second)) if detection else None
            label = -1 if detection else second
            yield AnnoSample(i, self._key(i, self._paths[j]), _join(self.root, path), anno,
                             label, self._enc(path), f"{self.list_file}:{self._lines[j]}",
                             self.options)

    def fingerprint(self):
        o = self.options
        return {"source": "annoset", "root": os.path.abspath(self.root),
                "list_file": os.path.abspath(self.list_file),
                "list_sha256": _digest(self.list_file), "anno_type": o.anno_type,
                "label_type": o.label_type, "labels": [list(p) for p in o.labels],
                "resize": [o.resize_height, o.resize_width], "min_dim": o.min_dim,
                "max_dim": o.max_dim, "gray": o.gray, "max_pixels": o.max_pixels,
                "encoded": self.encoded, "encode_type": self.encode_type,
                "shuffle": self.shuffle, "seed": self.seed, "index_keys": self.index_keys}


def convert_annoset(root, list_file, db, *, anno_type: str = "detection",
                    label_type: str = "xml", label_map_file=None, check_label: bool = False,
                    min_dim: int = 0, max_dim: int = 0, resize_height: int = 0,
                    resize_width: int = 0, gray: bool = False, encoded: bool = False,
                    encode_type: str = "", shuffle: bool = False, seed: int | None = None,
                    check_size: bool = False, index_keys: bool = False,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS, **options) -> Summary:
    """SSD-Caffe's ``convert_annoset ROOT/ LISTFILE DB``, with its flags and its records.

    ``anno_type``: "detection" (lines ``image annotation_file``; ``label_type`` "xml", "json"
    or "txt"; ``label_map_file`` maps names to labels, needed for xml and json) or
    "classification" (lines ``image label``). ``check_label``: a name given twice in the label
    map is an error. ``seed`` makes ``shuffle`` reproducible (the fork's order cannot be).
    ``index_keys``: keys ``%08d`` only. Other options (workers, executor, resume, overwrite,
    strict, progress, ...): see :func:`caffe_lmdb.convert.run`. Returns a Summary.
    """
    if anno_type not in ANNO_TYPES:
        raise OptionError(f"anno_type must be detection or classification, not {anno_type!r}")
    labels: tuple[tuple[str, int], ...] = ()
    if anno_type == "detection":
        if label_type not in READERS:
            raise OptionError(f"label_type must be xml, json or txt, not {label_type!r}")
        if label_map_file:
            items = read_labelmap(label_map_file)
            labels = tuple(name_to_label(items, strict=check_label,
                                         path=os.fspath(label_map_file)).items())
        elif label_type != "txt":
            raise OptionError(f"--label_type={label_type} needs --label_map_file (the names "
                              "of the annotation files are looked up in it)")
    opts = AnnoOptions(anno_type=anno_type, label_type=label_type, labels=labels,
                       resize_height=max(0, int(resize_height)),
                       resize_width=max(0, int(resize_width)), min_dim=max(0, int(min_dim)),
                       max_dim=max(0, int(max_dim)), gray=bool(gray),
                       max_pixels=int(max_pixels or 0) or None)
    if shuffle and seed is None:
        if options.get("shard") is not None:
            raise OptionError("--shard with --shuffle needs --seed: every part must draw the "
                              "same permutation")
        if options.get("resume"):
            state = read_state(db)
            if state is not None:
                seed = (state.get("job") or {}).get("seed")
    source = AnnosetSource(root, list_file, opts, encoded=encoded, encode_type=encode_type,
                           shuffle=shuffle, seed=seed, index_keys=index_keys)
    return run(source, db, job="convert_annoset", check_size=check_size, **options)


# ---------------------------------------------------------------------------------------------
# From Python: a writer of (image, boxes, labels) samples
# ---------------------------------------------------------------------------------------------


class AnnotatedDatumWriter(DatumWriter):
    """Write AnnotatedDatum records (SSD-Caffe's detection format) from your own loop::

        with AnnotatedDatumWriter("train_lmdb") as w:
            w.put(image, boxes, labels)   # key %08d of the running index

    ``put(image, boxes=None, labels=None, difficult=None, *, pixels=False, encode=None,
    key=None)``:

    * ``image``: a (C, H, W) uint8 array (or (H, W) for gray), stored raw as the fork stores it
      (``--encode_type`` unset), or encoded with ``encode="jpg"``/``"png"``; or the path or
      bytes of an image file, stored verbatim as an encoded record (channels/height/width of
      its colour decode, as the fork writes them).
    * ``boxes``: (N, 4) ``xmin, ymin, xmax, ymax``, normalized to [0, 1] (or in pixels of the
      image with ``pixels=True``, divided in float32 as the fork does); ``labels``: N ints;
      ``difficult``: N flags. Grouped as the fork groups them (see
      :func:`caffe_lmdb.format.annotated.group_boxes`).

    Records have ``type = BBOX`` and ``datum.label = -1``, as convert_annoset writes them.
    Commit, resume and overwrite as :class:`caffe_lmdb.DatumWriter`.
    """

    def put(self, image, boxes=None, labels=None, difficult=None, *, pixels=False,
            encode=None, key=None):
        datum, (h, w) = _datum_of(image, encode)
        if boxes is None:
            boxes = np.zeros((0, 4))
            labels = [] if labels is None else labels
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if labels is None:
            raise ValueError("boxes need labels (one int per box)")
        if pixels:
            f32 = np.float32
            boxes = boxes.astype(f32)
            boxes[:, [0, 2]] /= f32(w)
            boxes[:, [1, 3]] /= f32(h)
            boxes = boxes.astype(np.float64)
        rows = group_boxes(labels, boxes, difficult)
        super().put(annotated_bytes(datum, BBOX, rows), key=key)


def _datum_of(image, encode):
    """(datum bytes with label -1, (height, width)) of an image given as an array, a path or
    file bytes."""
    if isinstance(image, (bytes, bytearray, memoryview, str, os.PathLike)):
        if isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as f:
                blob = f.read()
        else:
            blob = bytes(image)
        img, _, _ = read_image(blob)
        h, w = img.shape[:2]
        return datum_bytes(3, h, w, data=blob, label=-1, encoded=True), (h, w)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be a (C, H, W) uint8 array, a path or file bytes; got "
                         f"{arr.dtype} {arr.shape}")
    c, h, w = arr.shape
    if encode:
        hwc = arr[0] if c == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
        data = encode_array(hwc, str(encode).lstrip("."))
        return datum_bytes(c, h, w, data=data, label=-1, encoded=True), (h, w)
    return datum_bytes(c, h, w, data=np.ascontiguousarray(arr), label=-1, encoded=False), (h, w)


# ---------------------------------------------------------------------------------------------
# Label maps
# ---------------------------------------------------------------------------------------------


def labelmap_items(classes, background: str | None = "none_of_the_above",
                   background_display: str = "background"):
    """Label map items from class names: label 0 for ``background`` (None: no background
    item, the classes start at 0), then one label per class in order. A class given as
    ``"name display name"`` gets that display name (the name is the first word: COCO maps use
    ``"1 person"``); otherwise the display name is the name."""
    items = []
    if background is not None:
        items.append((background, 0, background_display))
    seen = {background} if background is not None else set()
    for cls in classes:
        cls = cls.strip()
        if not cls:
            continue
        name, _, display = cls.partition(" ")
        display = display.strip() or name
        if name in seen:
            raise AnnotationError(f"the class {name!r} is listed twice")
        seen.add(name)
        items.append((name, len(items), display))
    return items


def write_labelmap(path, classes, **kwargs) -> list:
    """Write a label map (protobuf text format) for ``classes`` (see :func:`labelmap_items`);
    returns its items."""
    items = labelmap_items(classes, **kwargs)
    with open(path, "w", encoding="utf-8") as f:
        f.write(labelmap_text(items))
    return items
