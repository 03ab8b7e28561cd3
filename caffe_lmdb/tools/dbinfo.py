"""Looking inside a database: :func:`info`, :func:`verify` and :func:`export`.

* :func:`info`: entries, file size, key pattern (``%08d_<path>``, ``%010d``, ...), gaps in the
  key numbers, record kinds (raw, encoded with their format, float), shapes, label histogram
  and a sample of keys.
* :func:`verify`: parses every record (and decodes every encoded image) and lists the
  problems: records that do not parse or whose pixel count does not match their shape,
  images that do not decode, records of several shapes (Caffe's DataLayer needs one shape for
  a batch), and keys that are numbers without zero padding, whose byte order (Caffe's read
  order) is not their numeric order, the classic cause of images and labels out of step.
* :func:`export`: records back to image files plus a Caffe list file (the inverse of
  convert_imageset), or to one ``.npz``.

All three read a chunk of records at a time: memory does not grow with the database.
"""
import os
import re
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import (
    CaffeLMDBError,
    DamagedDBError,
    DatumDecodeError,
    OutputExistsError,
    show_key,
)
from ..format import keys as _keys
from ..format.datum import decode, parse_datum
from ..format.sniff import describe_bytes, image_format
from ..messages import human_bytes, lmdb_1_message
from ..read.reader import DatumDB, as_db, check_structure
from ..write.sink import incomplete_message

__all__ = ["info", "verify", "export", "DBInfo", "Problem"]

_CHUNK = 512
_ENCODED_SAMPLE = 200  # encoded images decoded by info() to report their shapes


@dataclass
class Problem:
    """One thing wrong with a database: ``kind`` (``parse``, ``decode``, ``shape``, ``keys``),
    the key of the (first) record concerned, and a message."""
    kind: str
    key: bytes
    message: str

    def __str__(self):
        where = f"record {show_key(self.key)}: " if self.key is not None else ""
        return f"{self.kind}: {where}{self.message}"


@dataclass
class DBInfo:
    """What :func:`info` and :func:`verify` found (``str()`` gives the report)."""
    path: str
    entries: int = 0
    data_format: str | None = None    # "LMDB 0.9" (Caffe's) or "LMDB 1.0"
    # why the database is not finished (an interrupted conversion); not a problem of its records
    incomplete: str | None = None
    file_bytes: int = 0
    used_bytes: int = 0
    key_pattern: str = ""
    first_keys: list = field(default_factory=list)
    last_keys: list = field(default_factory=list)
    numbered: int = 0          # keys with a leading number
    number_range: tuple | None = None
    gaps: list = field(default_factory=list)   # missing numbers (first ones)
    gap_count: int = 0
    unpadded: bool = False
    out_of_order: tuple | None = None  # two neighbouring keys whose numbers go down
    kinds: Counter = field(default_factory=Counter)
    shapes: Counter = field(default_factory=Counter)
    first_key_of_shape: dict = field(default_factory=dict)
    shapes_from: str = "all records"
    labels: Counter = field(default_factory=Counter)
    without_label: int = 0
    raw_without_encoded: int = 0
    problems: list = field(default_factory=list)
    problem_count: int = 0
    record_format: str = "Datum"  # or "AnnotatedDatum" (SSD-Caffe detection records)
    boxes: int = 0
    box_labels: Counter = field(default_factory=Counter)  # boxes per group label
    without_boxes: int = 0
    first_without_boxes: bytes | None = None
    boxes_outside: int = 0     # a coordinate outside [0, 1]
    boxes_degenerate: int = 0  # xmin >= xmax or ymin >= ymax
    backend: str = "lmdb"

    @property
    def ok(self):
        return not self.problem_count

    def __str__(self):
        lines = [f"{self.path}",
                 f"  entries      {self.entries}",
                 *([f"  format       {self.data_format}"
                    + (" (Caffe reads it)" if self.data_format == "LMDB 0.9" else
                       " (Caffe cannot open it)")] if self.data_format else []),
                 f"  size         {human_bytes(self.file_bytes)} "
                 + ("data.mdb" if self.backend == "lmdb" else "of LevelDB files")
                 + (f" ({human_bytes(self.used_bytes)} in use)" if self.used_bytes else ""),
                 f"  keys         {self.key_pattern or '<none>'}"]
        if self.number_range is not None:
            gap = (f"{self.gap_count} missing ({', '.join(map(str, self.gaps))}"
                   f"{', ...' if self.gap_count > len(self.gaps) else ''})"
                   if self.gap_count else "no gaps")
            lines.append(f"  key numbers  {self.number_range[0]}..{self.number_range[1]}, {gap}")
        if self.first_keys:
            shown = [show_key(k) for k in self.first_keys]
            if self.last_keys:
                shown += ["..."] + [show_key(k) for k in self.last_keys]
            lines.append(f"  sample keys  {', '.join(shown)}")
        if self.record_format != "Datum":
            lines.append(f"  format       {self.record_format} (SSD-Caffe: a Datum plus boxes)")
        if self.kinds:
            lines.append("  records      " + ", ".join(f"{n} {kind}" for kind, n
                                                       in sorted(self.kinds.items())))
        if self.shapes:
            lines.append(f"  shapes       ({self.shapes_from}) " + ", ".join(
                f"{'x'.join(map(str, s))}: {n}" for s, n in self.shapes.most_common(8))
                + (f", ... ({len(self.shapes)} shapes)" if len(self.shapes) > 8 else ""))
        if self.labels:
            top = sorted(self.labels.items())
            hist = ", ".join(f"{label}: {n}" for label, n in top[:20])
            more = f", ... ({len(top)} labels)" if len(top) > 20 else ""
            lines.append(f"  labels       {hist}{more}")
        if self.without_label:
            lines.append(f"  no label     {self.without_label} records")
        if self.record_format != "Datum":
            hist = ", ".join(f"{label}: {n}" for label, n in sorted(self.box_labels.items()))
            lines.append(f"  boxes        {self.boxes} ({hist or 'none'}, by group label)")
            lines.append(f"  no boxes     {self.without_boxes} records"
                         + (f" (first {show_key(self.first_without_boxes)})"
                            if self.without_boxes else ""))
            if self.boxes_outside or self.boxes_degenerate:
                lines.append(f"  odd boxes    {self.boxes_outside} outside [0, 1], "
                             f"{self.boxes_degenerate} with xmin >= xmax or ymin >= ymax")
        if self.raw_without_encoded:
            lines.append(f"  note         {self.raw_without_encoded} raw records have no "
                         "'encoded' field (as Caffe's MNIST/CIFAR converters write): Caffe "
                         "reads them, NVIDIA DALI takes them for encoded images")
        if self.incomplete:
            lines.append(f"  INCOMPLETE   {self.incomplete}")
        if self.problem_count:
            lines.append(f"  problems     {self.problem_count}")
            lines += [f"    {p}" for p in self.problems]
            if self.problem_count > len(self.problems):
                lines.append(f"    ... and {self.problem_count - len(self.problems)} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The scan shared by info and verify
# ---------------------------------------------------------------------------------------------


class _Scan:
    def __init__(self, db, decode_images, max_listed):
        self.db = db
        self.report = DBInfo(path=db.path if db is not None else "")
        self.decode_images = decode_images  # "all", "sample" or "none"
        self.max_listed = max_listed
        self.encoded_seen = 0
        self.pool = None

    def problem(self, kind, key, message):
        r = self.report
        r.problem_count += 1
        if len(r.problems) < self.max_listed:
            r.problems.append(Problem(kind, None if key is None else bytes(key), message))

    def shape(self, shape, key):
        r = self.report
        r.shapes[shape] += 1
        r.first_key_of_shape.setdefault(shape, bytes(key))

    def record(self, key, value):
        """Classify one record; returns the encoded payload to decode, or None."""
        r = self.report
        try:
            f = parse_datum(value)
        except DatumDecodeError as exc:
            self.problem("parse", key, f"{exc} (the value looks like {describe_bytes(value)})")
            return None
        if f.has_label:
            r.labels[f.label] += 1
        else:
            r.without_label += 1
        if f.encoded:
            data = value[f.data[0]:f.data[0] + f.data[1]] if f.data else b""
            r.kinds[f"encoded {image_format(data) or 'unknown format'}"] += 1
            if not f.data or not f.data[1]:
                self.problem("parse", key, "encoded record without data")
                return None
            self.encoded_seen += 1
            if self.decode_images == "all" or (self.decode_images == "sample"
                                               and self.encoded_seen <= _ENCODED_SAMPLE):
                return value
            return None
        if f.data is not None and f.data[1]:
            r.kinds["raw"] += 1
            if not f.has_encoded:
                r.raw_without_encoded += 1
        elif f.floats:
            r.kinds["float"] += 1
        else:
            r.kinds["empty"] += 1
        try:
            arr, _ = decode(value)
        except DatumDecodeError as exc:
            self.problem("parse", key, str(exc))
            return None
        self.shape(arr.shape, key)
        return None

    def decode_many(self, keys, values):
        if not values:
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)

        def one(value):
            try:
                return decode(value)[0].shape, None
            except DatumDecodeError as exc:
                return None, str(exc)

        for key, (shape, error) in zip(keys, self.pool.map(one, values), strict=True):
            if error is not None:
                self.problem("decode", key, error)
            else:
                self.shape(shape, key)

    def run(self, progress):
        db, r = self.db, self.report
        index = db.keys()
        n = r.entries = len(index)
        try:
            for start, values in db.value_chunks(_CHUNK):
                todo_keys, todo = [], []
                for j, value in enumerate(values):
                    key = index[start + j]
                    payload = self.record(key, value)
                    if payload is not None:
                        todo_keys.append(key)
                        todo.append(payload)
                self.decode_many(todo_keys, todo)
                if progress is not None:
                    progress(start + len(values), n)
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        if self.decode_images == "sample" and self.encoded_seen > _ENCODED_SAMPLE:
            r.shapes_from = f"{_ENCODED_SAMPLE} of {self.encoded_seen} encoded images decoded"
        elif self.decode_images == "none" and self.encoded_seen:
            r.shapes_from = "raw and float records; encoded images not decoded"
        return r


def _key_facts(db, report, sample=3):
    """Key pattern, sample, numbers and gaps, and whether numeric keys lack zero padding."""
    index = db.keys()
    n = len(index)
    if not n:
        return
    ends = list(range(min(n, 1000))) + list(range(max(1000, n - 1000), n))
    report.key_pattern = _keys.describe_pattern(index[i] for i in ends)
    report.first_keys = list(index[:sample])
    report.last_keys = list(index[max(sample, n - sample):])
    numbers = []
    for key in index:
        number = _keys.key_index(key)
        if number is not None:
            numbers.append(number)
    report.numbered = len(numbers)
    if not numbers or len(numbers) != n:
        return
    nums = np.asarray(numbers, np.int64)
    out_of_order = np.flatnonzero(np.diff(nums) < 0)
    if len(out_of_order):
        i = int(out_of_order[0])
        report.unpadded = True
        report.key_pattern += " (numbers without zero padding)"
        report.out_of_order = (index[i], index[i + 1])
    uniq = np.unique(nums)
    lo, hi = int(uniq[0]), int(uniq[-1])
    report.number_range = (lo, hi)
    report.gap_count = (hi - lo + 1) - len(uniq)
    if report.gap_count:  # the first missing numbers, from the steps between keys (a range of
        # every number up to the last one would take minutes for sparse keys such as 5, 10**9)
        gaps = []
        for i in np.flatnonzero(np.diff(uniq) > 1)[:10].tolist():
            a, b = int(uniq[i]), int(uniq[i + 1])
            gaps.extend(range(a + 1, min(b, a + 1 + 10 - len(gaps))))
            if len(gaps) >= 10:
                break
        report.gaps = gaps


def _file_sizes(db, report):
    report.backend = db.backend
    report.file_bytes, used = db.disk_usage()
    report.used_bytes = used if db.backend == "lmdb" else 0
    report.data_format = db.data_format if db.backend == "lmdb" else None
    report.incomplete = incomplete_message(db.path)


#: the resume state a converter keeps beside data.mdb (caffe_lmdb.write.sink.STATE_NAME)
def _box_facts(db, report, scan, problems):
    """Boxes of an AnnotatedDatum database: count, labels, records without boxes, odd boxes
    (problems of verify when ``problems``)."""
    if db.kind != "annotated":
        return
    report.record_format = "AnnotatedDatum"
    for key, rows in db.box_items():
        if not len(rows):
            report.without_boxes += 1
            if report.first_without_boxes is None:
                report.first_without_boxes = bytes(key)
            continue
        report.boxes += len(rows)
        report.box_labels.update(int(v) for v in rows[:, 0])
        c = rows[:, 2:6]
        outside = ((c < 0) | (c > 1)).any(axis=1)
        degenerate = (c[:, 0] >= c[:, 2]) | (c[:, 1] >= c[:, 3])
        report.boxes_outside += int(outside.sum())
        report.boxes_degenerate += int(degenerate.sum())
        if problems:
            for j in np.flatnonzero(outside | degenerate):
                what = "outside [0, 1]" if outside[j] else "empty (xmin >= xmax or ymin >= ymax)"
                box = ", ".join(f"{v:.4g}" for v in c[j])
                scan.problem("box", key, f"box {j} (label {int(rows[j, 0])}) is {what}: "
                             f"xmin, ymin, xmax, ymax = {box}")


def info(source, decode_images="sample", progress=None, backend=None):
    """A :class:`DBInfo` of a database (path or DatumDB). Reads every record's header (for the
    kinds, shapes and labels); encoded images are decoded for their shapes only for the first
    200 (``decode_images="sample"``), or ``"all"``, or ``"none"``."""
    db = as_db(source, backend=backend)
    scan = _Scan(db, decode_images, max_listed=20)
    report = scan.run(progress)
    _key_facts(db, report)
    _file_sizes(db, report)
    _box_facts(db, report, scan, problems=False)
    return report


def verify(source, decode_images=True, progress=None, max_listed=20, backend=None):
    """Check every record; returns a :class:`DBInfo` whose ``problems`` list what is wrong
    (``ok`` is True when nothing is). ``decode_images=False`` skips decoding encoded images
    (faster; their shapes are then not checked)."""
    path = source.path if isinstance(source, DatumDB) else os.fspath(source)
    structure = check_structure(path)  # None for a LevelDB (no offline checker)
    try:
        db = as_db(source, backend=backend)
        scan = _Scan(db, "all" if decode_images else "none", max_listed)
        report = scan.run(progress)
    except DamagedDBError as exc:  # the records cannot be walked: say what the checker saw
        scan = _Scan(None, "none", max_listed)
        scan.report.path = path
        for line in structure or []:
            scan.problem("structure", None, line)
        scan.problem("damaged", None, str(exc))
        return scan.report
    for line in structure or []:
        scan.problem("structure", None, line)
    _key_facts(db, report)
    _file_sizes(db, report)
    _box_facts(db, report, scan, problems=True)
    if report.data_format == "LMDB 1.0":
        scan.problem("format", None, lmdb_1_message(db.path))
    if report.unpadded:
        a, b = report.out_of_order
        scan.problem("keys", None,
                     f"keys are numbers without zero padding: LMDB (and Caffe) read "
                     f"{show_key(a)} before {show_key(b)}, so records are not in their "
                     "numeric order; a list of labels kept beside this database is out of step "
                     f"with it. Fix: caffe-lmdb rekey {report.path} NEW_DB (a copy with keys "
                     "%08d in numeric order; --width 10 for extract_features output)")
    if len(report.shapes) > 1 and report.record_format == "Datum":
        # (SSD's AnnotatedDataLayer resizes each image: detection records may differ)
        shown = ", ".join(
            f"{'x'.join(map(str, s))} x {n} (first {show_key(report.first_key_of_shape[s])})"
            for s, n in report.shapes.most_common(5))
        scan.problem("shape", None,
                     f"records have {len(report.shapes)} different shapes: {shown}; Caffe's "
                     "DataLayer needs one shape for a batch (resize when converting)")
    return report


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f]")


def _relative_name(key):
    """The file name a key stands for: the path of ``%08d_<path>`` keys, else the key, made
    safe (no absolute paths, no '..', no control characters)."""
    name = _keys.path_of(key) or key
    text = _UNSAFE.sub("_", name.decode("utf-8", "replace")).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "record"


def _with_extension(name, fmt):
    stem, ext = os.path.splitext(name)
    ext = ext.lower().lstrip(".")
    if ext == fmt or (fmt == "jpg" and ext == "jpeg") or (fmt == "tif" and ext == "tiff"):
        return name
    return (stem if ext in ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "gif", "webp", "ppm",
                            "pgm") else name) + "." + fmt


def _image_file(value, key):
    """(format, bytes) of the image file for one record: encoded records as stored, raw
    records as lossless PNG."""
    f = parse_datum(value)
    if f.encoded:
        data = bytes(value[f.data[0]:f.data[0] + f.data[1]])
        return (image_format(data) or "unknown format"), data, f.label
    arr, label = decode(value)
    if arr.dtype != np.uint8:
        raise CaffeLMDBError(f"record {show_key(key)} holds float_data, not an image: export "
                             "it with --npz (or read it with caffe_lmdb.features)")
    if arr.shape[0] not in (1, 3, 4):
        raise CaffeLMDBError(f"record {show_key(key)} has {arr.shape[0]} channels: no image "
                             "format holds that; export it with --npz")
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr.transpose(1, 2, 0)))
    if not ok:
        raise CaffeLMDBError(f"record {show_key(key)}: OpenCV could not encode it as PNG")
    return "png", buf.tobytes(), label


def _prepare_dir(out):
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise OutputExistsError(f"{out} exists and is not an empty folder: export into a new "
                                "folder")
    os.makedirs(out, exist_ok=True)


def _voc_xml(name, rows, shape, names):
    """A PASCAL VOC annotation of one image: boxes in pixels, rounded to integers."""
    from xml.sax.saxutils import escape

    c, h, w = shape
    objs = []
    for r in rows:
        label = int(r[0])
        box = [int(round(v)) for v in r[2:6]]
        objs.append(f"  <object>\n    <name>{escape(names.get(label, str(label)))}</name>\n"
                    f"    <difficult>{int(r[6])}</difficult>\n    <bndbox>\n"
                    f"      <xmin>{box[0]}</xmin>\n      <ymin>{box[1]}</ymin>\n"
                    f"      <xmax>{box[2]}</xmax>\n      <ymax>{box[3]}</ymax>\n"
                    "    </bndbox>\n  </object>\n")
    return (f"<annotation>\n  <filename>{escape(name)}</filename>\n  <size>\n"
            f"    <width>{w}</width>\n    <height>{h}</height>\n    <depth>{c}</depth>\n"
            f"  </size>\n{''.join(objs)}</annotation>\n")


def export(source, out, npz=False, list_name="list.txt", progress=None, label_map=None,
           backend=None):
    """Write a database's records back out.

    * images (default): one file per record under folder ``out``, named after its key (the
      path of a ``%08d_<path>`` key; other keys as they are), plus ``out/list.txt`` with a
      ``path label`` line per record in key order: run convert_imageset on ``out/`` and that
      list to rebuild the database. Encoded records are written as stored (byte for byte the
      original file for pass-through records); raw records as lossless PNG (``.png`` replaces
      the name's image extension). Keys are renumbered by the new list's lines, so keys with
      gaps come back without them; the values are the same.
    * ``npz=True``: one ``out`` ``.npz`` file with ``images`` (N, C, H, W), ``labels`` (N,)
      and ``keys`` (N,), written a chunk at a time (all records must have one shape).

    Detection databases (SSD-Caffe's AnnotatedDatum) also get a PASCAL VOC file per image
    under ``out/Annotations/`` (boxes in pixels of the stored image, rounded to integers;
    names from ``label_map``, a labelmap.prototxt, else the label numbers), and the list's
    lines are ``image annotation`` as convert_annoset reads them.

    Returns the number of records written."""
    db = as_db(source, backend=backend)
    detection = db.kind == "annotated"
    names = {}
    if detection and label_map is not None:
        from ..format.annotated import read_labelmap

        names = {label: name for name, label, _ in read_labelmap(label_map)}
    out = os.fspath(out)
    if npz:
        return _export_npz(db, out, progress)
    _prepare_dir(out)
    index = db.keys()
    n = len(index)
    used = set()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            open(os.path.join(out, list_name), "w", encoding="utf-8", newline="\n") as listing:
        for start, values in db.value_chunks(_CHUNK):
            keys = index[start:start + len(values)]
            files = list(pool.map(_image_file, values, keys))
            for j, (key, (fmt, data, label)) in enumerate(zip(keys, files, strict=True)):
                name = _with_extension(_relative_name(key), fmt)
                if name in used or name == list_name:
                    stem, ext = os.path.splitext(name)
                    name = f"{stem}_{start + j}{ext}"
                used.add(name)
                target = os.path.join(out, *name.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
                if detection:
                    rows = db.boxes(start + j, pixels=True)
                    shape = db[start + j][0].shape
                    xml = "Annotations/" + os.path.splitext(name)[0] + ".xml"
                    target = os.path.join(out, *xml.split("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "w", encoding="utf-8") as f:
                        f.write(_voc_xml(name, rows, shape, names))
                    listing.write(f"{name} {xml}\n")
                    continue
                listing.write(f"{name} {label}\n")
            if progress is not None:
                progress(start + len(values), n)
    return n


def _export_npz(db, out, progress):
    if not out.endswith(".npz"):
        out += ".npz"
    if os.path.exists(out):
        raise OutputExistsError(f"{out} exists: export into a new file")
    n = len(db)
    index = db.keys()
    tmp = out + ".part"
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            labels = np.empty(n, np.int64)
            with zf.open("images.npy", "w", force_zip64=True) as f:
                for start, images, lab in db.scan(_CHUNK, purpose="the images of an .npz "
                                                  "(export images instead)"):
                    if start == 0:
                        np.lib.format.write_array_header_1_0(
                            f, {"descr": images.dtype.str, "fortran_order": False,
                                "shape": (n,) + images.shape[1:]})
                    f.write(images.tobytes())
                    labels[start:start + len(lab)] = lab
                    if progress is not None:
                        progress(start + len(lab), n)
                if n == 0:
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "|u1", "fortran_order": False, "shape": (0,)})
            _zip_array(zf, "labels.npy", labels)
            _zip_array(zf, "keys.npy", np.array(list(index), dtype=bytes))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def _zip_array(zf, name, array):
    with zf.open(name, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
