"""Repair databases written by hand: unpadded numeric keys, raw pixel values, labels elsewhere.

Two repairs, each writing a new database (the source is only read):

* :func:`rekey` (``caffe-lmdb rekey SRC DST``): a database whose keys are decimal numbers
  written without zero padding (``str(i)``: LMDB, and so Caffe, reads them as 0, 1, 10, 100,
  ...) is copied with keys ``%0Nd`` in numeric order, values unchanged.
* :func:`import_raw` (``caffe-lmdb import-raw SRC DST --shape H,W,C``): values that are raw
  pixel arrays (``cv2.imread(path).tobytes()``, no Datum) become Datum records (planar
  C x H x W, channels as stored, ``encoded = false``) under keys ``%08d``, in numeric key
  order. Labels and other targets may live in companion keys (``"{}_"``: key ``17_`` goes with
  sample ``17``) of the same database or of a second one, as text (``"label,x1 y1 x2 y2,..."``)
  or as little-endian numbers; see :class:`FieldSpec`. The first field is the label; the other
  fields of each sample go to ``DST_targets`` as one float_data record under the same key, as
  ``convert-imageset --targets`` writes them, so ``DatumDataset(DST, companion=DST_targets)``
  returns image, label and targets together.

How they work, and what they cost:

* The key scan reads keys only (a keys-only cursor, values untouched), a chunk of 16,384 at a
  time, and keeps each sample or companion key as its number: an int64, 8 bytes a key, plus
  one byte a key when some keys are zero-padded (to give back their exact text). Sorting those
  numbers (in place) gives the numeric order. At the end of the scan the chunks and their
  concatenation are both held for a moment: 18 bytes a key, so about 36 MB for 1,000,000
  samples with their 1,000,000 companion keys, 16 MB after. Pairing samples with companions
  is a binary search of one sorted array in the other (9 bytes a key). Values are never held
  beyond one block (8 MB of raw values, or 256 records for rekey).
* Values are then read in numeric order (one ``get`` per key) and written through the
  converters' engine (:func:`caffe_lmdb.write.convert.run`): batched commits, a map that grows by
  itself, the resume state beside the data, a Summary. A run killed at any point leaves valid
  databases that ``resume=True`` completes, key for key and byte for byte the same as one run.
* Structural faults are found by the scan, before anything is written: keys that are neither
  samples nor companions, samples without companion, companions without sample, duplicate
  numbers (``7`` and ``007``), numbers too wide for the key width. Faults of one value (a size
  that does not match the shape, a label that is not a number) are found when it is read. Each
  is an error naming the key; ``skip_bad=True`` skips and counts them instead.
* ``caffe_lmdb.rekey`` and ``caffe_lmdb.import_raw`` (:mod:`caffe_lmdb.tools.repair`) are these
  functions followed by :func:`caffe_lmdb.tools.dbinfo.verify` of what they wrote.
"""
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from itertools import islice

import numpy as np

from ..errors import (
    DatumDecodeError,
    NotADatumDBError,
    OptionError,
    SourceFormatError,
)
from ..format.datum import datum_bytes, parse_datum
from ..format.keys import MAX_KEY_BYTES
from ..messages import human_bytes, show_key
from ..storage.base import open_reader
from .convert import run, targets_db_path
from .encode import Record, Skip
from .summary import Summary

__all__ = ["rekey", "import_raw", "FieldSpec", "RekeySource", "RawSource", "MAX_DIGITS"]

#: the longest decimal number a key may hold (an int64 holds every 18-digit number)
MAX_DIGITS = 18
_SCAN_CHUNK = 1 << 14
_SHOWN = 5  # keys named in a message about many
_BLOCK_BYTES = 8 << 20  # raw values read at once by import_raw
_SEPARATORS = bytes.maketrans(b",;\t\r\n\v\f", b"       ")
_FORMATS = {"text": None, "int8": "i1", "uint8": "u1", "int16": "<i2", "int32": "<i4",
            "int64": "<i8", "float32": "<f4", "float64": "<f8"}
_INT32 = (-(1 << 31), (1 << 31) - 1)


# ---------------------------------------------------------------------------------------------
# The companion keys: where labels and targets are, and how they are written
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """Where the label (and targets) of each sample are, and how they are written.

    ``pattern``: the companion key of a sample, ``{}`` standing for the sample key's digits
    (``"{}_"``: sample ``17`` -> ``17_``; ``"label_{}"`` -> ``label_17``). ``db``: another
    LMDB that holds the companion keys (``pattern`` then defaults to ``"{}"``: the same keys
    as the samples); None: the source database itself. ``format``: ``"text"`` (numbers
    separated by commas, semicolons, spaces or tabs, e.g. ``"1,0.1 0.2 0.3 0.4,..."``), or one
    little-endian number type for the whole value: ``int8``, ``uint8``, ``int16``, ``int32``,
    ``int64``, ``float32``, ``float64``.

    Every companion must hold the same number of fields: the first is the label (an integer
    that fits Caffe's int32 label), the others, if any, the targets.

    As a string (``--labels``): comma-separated items, a bare item being the pattern, others
    ``format=F`` or ``db=PATH``: ``"{}_"``, ``"{}_,format=int32"``, ``"db=labels_lmdb"``,
    ``"label_{},db=meta_lmdb,format=float32"``.
    """
    pattern: str | None = None
    format: str = "text"
    db: str | None = None

    def __post_init__(self):
        pattern = self.pattern
        if pattern is None:
            pattern = "{}" if self.db is not None else "{}_"
            object.__setattr__(self, "pattern", pattern)
        if pattern.count("{}") != 1 or pattern.replace("{}", "").count("{") \
                or pattern.replace("{}", "").count("}"):
            raise OptionError(f"labels pattern {pattern!r}: it must hold '{{}}' once (standing "
                              "for the sample key's digits), e.g. '{}_' or 'label_{}'")
        prefix, suffix = self.affixes
        if self.db is None and not prefix and not suffix:
            raise OptionError("labels pattern '{}' names the sample keys themselves: give a "
                              "suffix or prefix ('{}_'), or the database that holds the labels"
                              " (db=PATH)")
        if self.db is None and re.search(rb"[0-9]", prefix + suffix):
            raise OptionError(f"labels pattern {pattern!r}: the text around '{{}}' must not hold"
                              " digits (a key could then be read as a sample key too)")
        if len(prefix) + len(suffix) + MAX_DIGITS > MAX_KEY_BYTES:
            raise OptionError(f"labels pattern {pattern!r} is too long for LMDB keys")
        if self.format not in _FORMATS:
            raise OptionError(f"labels format {self.format!r}: use one of "
                              f"{', '.join(_FORMATS)}")
        if self.db is not None:
            object.__setattr__(self, "db", os.fspath(self.db))

    @property
    def affixes(self):
        prefix, _, suffix = self.pattern.partition("{}")
        return prefix.encode("utf-8"), suffix.encode("utf-8")

    def key(self, digits):
        """The companion key of a sample key's digits (bytes)."""
        prefix, suffix = self.affixes
        return prefix + digits + suffix

    @classmethod
    def parse(cls, spec):
        """A FieldSpec from its string form (see the class documentation), or as it is."""
        if spec is None or isinstance(spec, FieldSpec):
            return spec
        fields = {}
        for item in str(spec).split(","):
            name, eq, value = item.partition("=")
            if not eq:
                name, value = "pattern", item
            name = name.strip()
            if name not in ("pattern", "format", "db"):
                raise OptionError(f"labels spec {spec!r}: unknown item {item!r} (expected a key "
                                  "pattern such as '{}_', format=F or db=PATH)")
            if name in fields:
                raise OptionError(f"labels spec {spec!r}: {name} is given twice")
            fields[name] = value if name != "format" else value.strip().lower()
        return cls(**fields)

    def describe(self):
        where = f"keys {self.pattern!r}" + (f" of {self.db}" if self.db else "")
        return f"{where}, {self.format}"


# ---------------------------------------------------------------------------------------------
# Opening a source database, and its keys as sorted numbers
# ---------------------------------------------------------------------------------------------


def _open_source(path, what="source"):
    """A read-only store on an existing database folder (no lock file is created; shared with
    any reader of the same database in this process)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        hint = (f": pass the folder that holds it ({os.path.dirname(path) or '.'})"
                if os.path.basename(path) == "data.mdb" else ": an LMDB is a folder")
        raise NotADatumDBError(f"{what} {path} is a file{hint}")
    if not os.path.isdir(path):
        raise NotADatumDBError(f"{what} {path} does not exist")
    store = open_reader(path)
    with store.begin():  # opens it: a file that is not an LMDB, or truncated, is refused here
        pass
    return store


def _identity(path, keys):
    """What a resumed run must find unchanged about an input database."""
    data = os.path.join(path, "data.mdb")
    st = os.stat(data if os.path.exists(data) else path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "keys": int(keys)}


class _Numbers:
    """The digits of a set of keys, sorted by their value: ``numbers`` (int64) and, when some
    are zero-padded, ``widths`` (uint8: the digit count of padded ones, 0 for the others), so
    that :meth:`digits` gives back each key's exact text."""

    def __init__(self, numbers, widths):
        if widths.any():
            order = np.argsort(numbers, kind="stable")
            self.numbers, self.widths = numbers[order], widths[order]
        else:
            numbers.sort()
            self.numbers, self.widths = numbers, None

    def __len__(self):
        return len(self.numbers)

    def digits(self, i):
        width = 0 if self.widths is None else int(self.widths[i])
        return b"%0*d" % (width, self.numbers[i])

    def digits_of(self, lo, hi):
        nums = self.numbers[lo:hi].tolist()
        if self.widths is None:
            return [b"%d" % n for n in nums]
        return [b"%0*d" % (w, n) for w, n in zip(self.widths[lo:hi].tolist(), nums, strict=True)]

    def duplicate(self):
        """The first two keys of one number (``7`` and ``007``), or None."""
        same = np.flatnonzero(self.numbers[1:] == self.numbers[:-1])
        if not len(same):
            return None
        i = int(same[0])
        return self.digits(i), self.digits(i + 1)

    def nbytes(self):
        return self.numbers.nbytes + (0 if self.widths is None else self.widths.nbytes)


def _match(blob, starts, ends, nondigit, kind, k, prefix, suffix):
    """Mark (``kind = k``) the keys not matched yet that are ``prefix + digits + suffix``;
    returns (their positions, numbers, widths)."""
    size = len(blob)
    lo, hi = starts + len(prefix), ends - len(suffix)
    ndig = hi - lo
    ok = (kind < 0) & (ndig >= 1) & (ndig <= MAX_DIGITS)
    last = max(size - 1, 0)
    for j, byte in enumerate(prefix):
        ok &= blob[np.minimum(starts + j, last)] == byte
    for j, byte in enumerate(suffix):
        ok &= blob[np.clip(hi + j, 0, last)] == byte
    ok &= nondigit[np.clip(hi, 0, size)] == nondigit[np.clip(lo, 0, size)]
    sel = np.flatnonzero(ok)
    lo, ndig = lo[sel], ndig[sel]
    values = np.zeros(len(sel), np.int64)
    for d in range(int(ndig.max()) if len(sel) else 0):
        live = ndig > d
        digit = blob[np.where(live, lo + d, 0)].astype(np.int64) - 48
        values = np.where(live, values * 10 + digit, values)
    padded = (ndig > 1) & (blob[lo] == 48) if len(sel) else np.zeros(0, bool)
    kind[sel] = k
    return sel, values, np.where(padded, ndig, 0).astype(np.uint8)


def _scan(txn, patterns):
    """Classify every key of a database by the first of ``patterns`` (``(prefix, suffix)``
    pairs around the digits) it matches, reading keys only.

    Returns a :class:`_Numbers` per pattern, the number of keys seen, the number of keys that
    match none, and the first few of them."""
    found = [([], []) for _ in patterns]  # per pattern: chunks of numbers, of widths
    total = other_count = 0
    others = []
    it = txn.iter_keys()
    while True:
        keys = list(islice(it, _SCAN_CHUNK))
        if not keys:
            break
        m = len(keys)
        blob = np.frombuffer(b"".join(keys), np.uint8)
        ends = np.cumsum(np.fromiter(map(len, keys), np.int64, m))
        starts = np.concatenate(([0], ends[:-1]))
        nondigit = np.concatenate(([0], np.cumsum((blob < 48) | (blob > 57))))
        kind = np.full(m, -1, np.int8)
        for k, (prefix, suffix) in enumerate(patterns):
            sel, values, wid = _match(blob, starts, ends, nondigit, kind, k, prefix, suffix)
            found[k][0].append(values)
            found[k][1].append(wid)
        unmatched = np.flatnonzero(kind < 0)
        other_count += len(unmatched)
        others += [bytes(keys[j]) for j in unmatched[:_SHOWN - len(others)].tolist()]
        total += m
    sets = []
    for numbers, widths in found:
        sets.append(_Numbers(np.concatenate(numbers) if numbers else np.zeros(0, np.int64),
                             np.concatenate(widths) if widths else np.zeros(0, np.uint8)))
        numbers.clear()
        widths.clear()
    return sets, total, other_count, others


def _shown(keys, more=0):
    text = ", ".join(show_key(k) for k in keys)
    return text + (f" (and {more} more)" if more > 0 else "")


def _members(a, b):
    """Which numbers of the sorted array ``a`` are in the sorted array ``b`` (no sort, no
    copy of either: 9 bytes per number of ``a``)."""
    if not len(b):
        return np.zeros(len(a), bool)
    at = np.searchsorted(b, a)
    np.minimum(at, len(b) - 1, out=at)
    return b[at] == a


def _check_width(nums, width, src):
    if len(nums) and nums.numbers[-1] >= 10 ** width:
        big = nums.digits(len(nums) - 1)
        raise OptionError(f"{src}: key {show_key(big)} has {len(str(nums.numbers[-1]))} digits, "
                          f"more than the key width {width}: %0{width}d keys would not sort in "
                          f"numeric order; pass --width {len(str(nums.numbers[-1]))} (or more)")


def _check_duplicates(nums, src, what="keys"):
    dup = nums.duplicate()
    if dup is not None:
        raise SourceFormatError(f"{src}: {what} {show_key(dup[0])} and {show_key(dup[1])} are "
                                "the same number: their records would get one key; remove one "
                                "of them")


def _check_distinct(src, dst, names):
    """The output must not be (or hold) an input: overwrite would delete it."""
    for what, path in names:
        if path is None:
            continue
        for out in (dst, targets_db_path(dst)):
            if os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path):
                raise OptionError(f"the output {out} is the {what} database: write the repaired "
                                  "database to a new folder (the input is only read)")


def _looks_like(value):
    head = bytes(value[:16])
    if head and all(32 <= c < 127 for c in head):
        return f"text {head.decode('ascii')!r}"
    return f"bytes {head.hex(' ')}"


def _run(source, dst, job, targets=False, **options):
    t0 = time.perf_counter()
    try:
        summary = run(source, os.fspath(dst), job=job, workers=1, executor="inline",
                      targets=targets, **options)
    finally:
        source.close()
    summary.extra.update(source.notes)
    summary.seconds = time.perf_counter() - t0
    return summary


# ---------------------------------------------------------------------------------------------
# rekey
# ---------------------------------------------------------------------------------------------


class RekeySource:
    """The records of ``src`` whose keys are decimal numbers, in numeric order, under keys
    ``%0{width}d`` of the same numbers, values as they are (a source for
    :func:`caffe_lmdb.write.convert.run`). Other keys raise SourceFormatError, or are left out and
    counted with ``skip_other``."""

    chunk = 64

    def __init__(self, src, width=8, skip_other=False):
        self.path = os.fspath(src)
        self.width = int(width)
        if not 1 <= self.width <= MAX_DIGITS:
            raise OptionError(f"key width {width}: use 1 .. {MAX_DIGITS}")
        self.skip_other = bool(skip_other)
        self.store = _open_source(self.path)
        try:
            self._scan()
        except BaseException:
            self.store.close()
            raise

    def _scan(self):
        with self.store.begin(buffers=False) as txn:
            (nums,), keys, other_count, others = _scan(txn, [(b"", b"")])
            if len(nums):
                first = txn.get(nums.digits(0))
                try:
                    parse_datum(first)
                except DatumDecodeError:
                    raise SourceFormatError(
                        f"{self.path}: the value of key {show_key(nums.digits(0))} is not a "
                        f"Datum record (it looks like {_looks_like(first)}); rekey copies Datum "
                        "records: for raw pixel values use caffe-lmdb import-raw") from None
            self.identity = _identity(self.path, keys)
        if other_count and not self.skip_other:
            raise SourceFormatError(
                f"{self.path}: key {_shown(others[:1], other_count - 1)} is not a decimal "
                f"number (of up to {MAX_DIGITS} digits): rekey orders records by the numbers "
                "of their keys; --skip-other (skip_other=True) leaves such keys out")
        _check_duplicates(nums, self.path)
        _check_width(nums, self.width, self.path)
        self.nums = nums
        self.notes = {"keys": self._describe()}
        if other_count:
            self.notes["left out"] = (f"{other_count} keys that are not numbers "
                                      f"({_shown(others, other_count - len(others))})")

    def _describe(self):
        n = len(self.nums)
        if not n:
            return "no numeric keys"
        lo, hi = self.nums.digits(0).decode(), self.nums.digits(n - 1).decode()
        return (f"{n} numeric keys {lo} .. {hi} in numeric order -> %0{self.width}d "
                f"(key index: {human_bytes(self.nums.nbytes())})")

    def __len__(self):
        return len(self.nums)

    def samples(self, start=0):
        nums, width, step = self.nums, self.width, 256
        with self.store.begin(buffers=False) as txn:
            for lo in range(start, len(nums), step):
                hi = min(lo + step, len(nums))
                for i, digits, n in zip(range(lo, hi), nums.digits_of(lo, hi),
                                        nums.numbers[lo:hi].tolist(), strict=True):
                    value = txn.get(digits)
                    if value is None:
                        raise SourceFormatError(f"{self.path}: key {show_key(digits)} is gone "
                                                "(was the database written to meanwhile?)")
                    yield Record(i, b"%0*d" % (width, n), value)

    def fingerprint(self):
        return {"source": "rekey", "src": self.identity, "width": self.width,
                "skip_other": self.skip_other}

    def close(self):
        self.store.close()


def rekey(src, dst, width: int = 8, skip_other: bool = False, **options) -> Summary:
    """Copy the LMDB ``src`` to ``dst`` with keys ``%0{width}d`` of its keys' numbers, in
    numeric order, values unchanged (``caffe-lmdb rekey SRC DST``).

    For databases written with ``str(i)`` keys, which LMDB and Caffe read as 0, 1, 10, 100, ...
    (extract_features output has ``%010d`` keys: ``width=10`` gives them back). Keys that are
    not decimal numbers raise SourceFormatError naming them, unless ``skip_other``; numbers
    wider than ``width`` raise OptionError. ``options``: ``overwrite``, ``resume``,
    ``progress``, ``map_size``, ``commit_every``, as for the converters. Returns the
    :class:`~caffe_lmdb.write.summary.Summary`. (``caffe_lmdb.rekey`` then verifies ``dst``:
    :mod:`caffe_lmdb.tools.repair`.)
    """
    _check_distinct(src, dst, [("source", os.fspath(src))])
    source = RekeySource(src, width, skip_other)
    return _run(source, dst, job="rekey", **options)


# ---------------------------------------------------------------------------------------------
# import_raw
# ---------------------------------------------------------------------------------------------


class _BadSample(Exception):
    """One sample that cannot be imported; ``reason`` names its key."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class RawSource:
    """The samples of a database of raw pixel values (see :func:`import_raw`) as Datum records
    under keys ``%0{width}d`` of their numbers, in numeric order (a source for
    :func:`caffe_lmdb.write.convert.run`), with their targets records when the companions hold more
    than a label."""

    chunk = 512

    def __init__(self, src, shape, layout="HWC", labels=None, skip_bad=False, width=8):
        self.path = os.fspath(src)
        self.shape = _parse_shape(shape)
        self.layout = str(layout).upper()
        if self.layout not in ("HWC", "CHW"):
            raise OptionError(f"layout {layout!r}: HWC (rows of pixels, channels interleaved, "
                              "as cv2.imread(...).tobytes()) or CHW (planar)")
        self.labels = FieldSpec.parse(labels)
        self.skip_bad = bool(skip_bad)
        self.width = int(width)
        if not 1 <= self.width <= MAX_DIGITS:
            raise OptionError(f"key width {width}: use 1 .. {MAX_DIGITS}")
        h, w, c = self.shape
        self.size = h * w * c
        self.notes = {}
        self.ignored = []  # (key, reason) of the first keys left out with skip_bad
        self.ignored_count = 0
        self.first_companion = None  # the key whose field count every companion must have
        self.store = _open_source(self.path)
        self.lstore = None
        try:
            if self.labels is not None and self.labels.db is not None:
                self.lstore = _open_source(self.labels.db, "labels database")
            self._scan()
            self._first_fields()
        except BaseException:
            self.close()
            raise
        # the parts of every image record (datum_bytes writes fields in Caffe's order)
        self._head = datum_bytes(c, h, w, data=bytes(self.size))[:-self.size]
        self._encoded = datum_bytes(encoded=False)
        self._thead = datum_bytes(self.fields - 1, 1, 1) if self.fields > 1 else None
        self._label_bytes = {}

    # -- the scan: which keys are samples, which are companions -------------------------------

    def _ignore(self, keys, count, reason):
        """Keys that belong to no sample (``reason(shown key)`` says why): an error, or with
        skip_bad counted and left out."""
        if not count:
            return
        if not self.skip_bad:
            raise SourceFormatError(f"{reason(_shown(keys[:1], count - 1))}; --skip-bad "
                                    "(skip_bad=True) skips and counts them")
        self.ignored_count += count
        self.ignored += [(k, reason(show_key(k))) for k in keys]

    def _scan(self):
        spec = self.labels
        src = self.path
        same_db = spec is not None and spec.db is None
        patterns = [(b"", b"")] + ([spec.affixes] if same_db else [])
        with self.store.begin(buffers=False) as txn:
            sets, keys, other_count, others = _scan(txn, patterns)
            self.identity = _identity(src, keys)
        samples = sets[0]
        hint = ("" if spec is not None else
                " (if such keys hold labels, say where with --labels, e.g. '{}_')")
        what = (f"a companion key ({spec.pattern!r})" if same_db else
                "a sample key (a decimal number)")
        kinds = f"neither a sample key (a decimal number of up to {MAX_DIGITS} digits) nor {what}" \
            if same_db else f"not a sample key (a decimal number of up to {MAX_DIGITS} digits)"
        self._ignore(others, other_count, lambda key: f"{src}: key {key} is {kinds}{hint}")
        _check_duplicates(samples, src, "sample keys")
        _check_width(samples, self.width, src)
        companions = None
        if spec is not None:
            if same_db:
                companions = sets[1]
            else:
                with self.lstore.begin(buffers=False) as ltxn:
                    (companions,), lkeys, lother, lothers = _scan(ltxn, [spec.affixes])
                    self.labels_identity = _identity(spec.db, lkeys)
                self._ignore(lothers, lother, lambda key: f"{spec.db}: key {key} is not a "
                             f"companion key ({spec.pattern!r})")
            _check_duplicates(companions, spec.db or src, "companion keys")
            self._pair(samples, companions)
        self.samples_nums, self.companions = samples, companions
        n = len(samples)
        if n:
            lo, hi = samples.digits(0).decode(), samples.digits(n - 1).decode()
            index = samples.nbytes() + (companions.nbytes() if companions is not None else 0)
            self.notes["keys"] = (f"{n} samples, keys {lo} .. {hi} in numeric order -> "
                                  f"%0{self.width}d (key index: {human_bytes(index)})")

    def _pair(self, samples, companions):
        """Every sample needs its companion and every companion its sample."""
        spec = self.labels
        where = spec.db or self.path
        has = _members(samples.numbers, companions.numbers)
        self.has_companion = None if has.all() else has
        if not has.all() and not self.skip_bad:  # with skip_bad: skipped when their turn comes
            lonely = np.flatnonzero(~has)
            first = samples.digits(int(lonely[0]))
            raise SourceFormatError(
                f"{self.path}: sample key {_shown([first], len(lonely) - 1)} has no companion "
                f"key ({show_key(spec.key(first))}" + (f" in {spec.db}" if spec.db else "")
                + "); --skip-bad (skip_bad=True) skips and counts such samples")
        orphan = np.flatnonzero(~_members(companions.numbers, samples.numbers))
        self._ignore([spec.key(companions.digits(int(i))) for i in orphan[:_SHOWN]],
                     len(orphan), lambda key: f"{where}: companion key {key} has no sample key"
                     + (f" in {self.path}" if spec.db else ""))
        # companion i of sample i: keep only the companions that have a sample
        if len(orphan):
            keep = np.ones(len(companions), bool)
            keep[orphan] = False
            companions.numbers = companions.numbers[keep]
            if companions.widths is not None:
                companions.widths = companions.widths[keep]
        self._companion_pos = None
        if self.has_companion is not None:  # sample i -> its companion's position
            self._companion_pos = np.cumsum(self.has_companion) - 1

    def _first_fields(self):
        """The number of fields of the first companion that parses (all must have as many)."""
        self.fields = 0
        if self.labels is None or not len(self.companions):
            self.fields = 1 if self.labels is not None else 0
            return
        with (self.lstore or self.store).begin(buffers=False) as txn:
            for i in range(len(self.companions)):
                key = self.labels.key(self.companions.digits(i))
                try:
                    self.fields = len(self._parse_one(txn.get(key), key, None))
                    self.first_companion = key
                    return
                except _BadSample as exc:
                    if not self.skip_bad:
                        raise SourceFormatError(exc.reason + "; --skip-bad (skip_bad=True) "
                                                "skips such samples") from None
            self.fields = 1

    # -- values -------------------------------------------------------------------------------

    def _where(self, key):
        return f"{self.labels.db or self.path}: companion key {show_key(key)}"

    def _parse_one(self, value, key, fields):
        """The numbers of one companion value (raises _BadSample)."""
        if value is None:
            raise _BadSample(f"{self._where(key)} is gone (was the database written to "
                             "meanwhile?)")
        fmt = _FORMATS[self.labels.format]
        if fmt is None:
            tokens = bytes(value).translate(_SEPARATORS).split()
            try:
                numbers = [_number(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not _is_number(t))
                raise _BadSample(f"{self._where(key)}: {show_key(bad)} is not a number (expected "
                                 "numbers separated by commas, semicolons, spaces or tabs, the "
                                 f"label first; the value is {_looks_like(value)})") from None
        else:
            dtype = np.dtype(fmt)
            if len(value) % dtype.itemsize:
                raise _BadSample(f"{self._where(key)} is {len(value)} bytes, not a whole number of "
                                 f"{self.labels.format} values ({dtype.itemsize} bytes each)")
            numbers = np.frombuffer(value, dtype).astype(np.float64).tolist()
        if not numbers:
            raise _BadSample(f"{self._where(key)} is empty: it must hold at least the label")
        if fields is not None and len(numbers) != fields:
            raise _BadSample(f"{self._where(key)} holds {len(numbers)} numbers, but "
                             f"{show_key(self.first_companion)} holds {fields}: every sample "
                             "needs as many fields (label first)")
        if not _is_label(numbers[0]):
            raise _BadSample(_not_a_label(self._where(key), numbers[0]))
        return numbers

    def _label_of(self, label):
        found = self._label_bytes.get(label)
        if found is None:
            found = self._label_bytes[label] = datum_bytes(label=label)
        return found

    def _fields_of(self, values, keys):
        """(labels, targets rows, {j: reason}) of a block of companion values (None: the
        sample has no companion; reported by the caller)."""
        m, k = len(values), self.fields
        fmt = _FORMATS[self.labels.format]
        bad = {}
        numbers = None
        if fmt is None:
            numbers = _text_block(values, k)
        elif all(v is not None and len(v) == k * np.dtype(fmt).itemsize for v in values):
            numbers = np.frombuffer(b"".join(values), fmt).reshape(m, k).astype(np.float64)
        if numbers is not None:  # every value held k numbers: check the labels
            labels = numbers[:, 0]
            for j in np.flatnonzero(~_are_labels(labels)).tolist():
                bad[j] = _not_a_label(self._where(keys[j]), float(labels[j]))
        else:  # one at a time, to name what is wrong
            numbers = np.zeros((m, k), np.float64)
            for j, (value, key) in enumerate(zip(values, keys, strict=True)):
                if key is None:
                    continue
                try:
                    numbers[j] = self._parse_one(value, key, k)
                except _BadSample as exc:
                    bad[j] = exc.reason
        labels = numbers[:, 0]
        labels = np.where(_are_labels(labels), labels, 0).astype(np.int64)
        return labels, numbers[:, 1:], bad

    def _block(self, lo, hi, txn, ltxn):
        """Records (or skips) of samples lo .. hi - 1."""
        nums = self.samples_nums
        digits = nums.digits_of(lo, hi)
        values = list(map(txn.get, digits))
        m, size = hi - lo, self.size
        bad = {j: f"{self.path}: the value of key {show_key(digits[j])} is "
                  + (f"{len(v)} bytes, but shape {'x'.join(map(str, self.shape))} needs {size}"
                     if v is not None else "gone (was the database written to meanwhile?)")
               for j, v in enumerate(values) if v is None or len(v) != size}
        if bad:
            values = [b"\0" * size if j in bad else v for j, v in enumerate(values)]
        pixels = np.frombuffer(b"".join(values), np.uint8)
        if self.layout == "HWC":
            h, w, c = self.shape
            pixels = pixels.reshape(m, h, w, c).transpose(0, 3, 1, 2)
        planar = memoryview(np.ascontiguousarray(pixels).reshape(m, size)).cast("B")
        labels = targets = None
        if self.labels is not None:
            ckeys, cvalues = self._companions_of(lo, hi, digits, ltxn or txn)
            labels, targets, cbad = self._fields_of(cvalues, ckeys)
            for j, reason in cbad.items():
                bad.setdefault(j, reason)
            for j in range(m):
                if ckeys[j] is None:
                    bad[j] = (f"{self.labels.db or self.path}: no companion key "
                              f"{show_key(self.labels.key(digits[j]))} (the label of sample "
                              f"key {show_key(digits[j])})")
            labels = labels.tolist()
        tblob = tsize = None
        if self.fields > 1:
            tsize = (self.fields - 1) * 5
            tblob = memoryview(datum_bytes(float_data=targets.reshape(-1)))
        if bad and not self.skip_bad:
            j = min(bad)
            raise SourceFormatError(f"{bad[j]}; --skip-bad (skip_bad=True) skips and counts "
                                    "such samples")
        width = self.width
        head, encoded, thead = self._head, self._encoded, self._thead
        label_bytes = self._label_bytes
        out = []
        for j, n in enumerate(nums.numbers[lo:hi].tolist()):
            key = b"%0*d" % (width, n)
            if j in bad:
                out.append(Skip(lo + j, key, *self._split_where(bad[j])))
                continue
            pix = planar[j * size:(j + 1) * size]
            if labels is None:
                out.append(Record(lo + j, key, b"".join((head, pix, encoded))))
                continue
            lab = label_bytes.get(labels[j]) or self._label_of(labels[j])
            tvalue = None if tblob is None else b"".join(
                (thead, lab, tblob[j * tsize:(j + 1) * tsize]))
            out.append(Record(lo + j, key, b"".join((head, pix, lab, encoded)), tvalue))
        return out

    def _split_where(self, message):
        """(database, the rest) of a message about one sample, for the summary's skip list."""
        for path in (self.path, self.labels.db if self.labels is not None else None):
            if path and message.startswith(path + ": "):
                return path, message[len(path) + 2:]
        return self.path, message

    def _companions_of(self, lo, hi, digits, txn):
        """Keys and values of the companions of samples lo .. hi - 1 (None: it has none)."""
        comp = self.companions
        prefix, suffix = self.labels.affixes
        if self._companion_pos is None:  # companion i goes with sample i
            ckeys = [prefix + d + suffix for d in comp.digits_of(lo, hi)]
        else:
            ckeys = []
            for i in range(lo, hi):
                ckeys.append(prefix + comp.digits(int(self._companion_pos[i])) + suffix
                             if self.has_companion[i] else None)
        values = [txn.get(k) if k is not None else b"" for k in ckeys]
        return ckeys, values

    # -- the source interface -----------------------------------------------------------------

    def __len__(self):
        return len(self.samples_nums)

    def samples(self, start=0):
        n = len(self)
        step = max(1, min(4096, _BLOCK_BYTES // max(self.size, 1)))
        with self.store.begin(buffers=False) as txn:
            ltxn = self.lstore.begin(buffers=False) if self.lstore is not None else None
            try:
                for lo in range(start, n, step):
                    yield from self._block(lo, min(n, lo + step), txn, ltxn)
            finally:
                if ltxn is not None:
                    ltxn.__exit__(None, None, None)

    def fingerprint(self):
        spec = self.labels
        return {"source": "import_raw", "src": self.identity, "shape": list(self.shape),
                "layout": self.layout, "width": self.width, "skip_bad": self.skip_bad,
                "labels": None if spec is None else {
                    "pattern": spec.pattern, "format": spec.format,
                    "db": getattr(self, "labels_identity", None)},
                "fields": self.fields}

    def close(self):
        for store in (self.store, self.lstore):
            if store is not None:
                store.close()


def _is_label(value):
    return math.isfinite(value) and value == int(value) and _INT32[0] <= value <= _INT32[1]


def _are_labels(values):
    return np.isfinite(values) & (values == np.round(values)) & (values >= _INT32[0]) \
        & (values <= _INT32[1])


def _not_a_label(where, value):
    return (f"{where}: the label (first field) {value!r} is not an integer that fits Caffe's "
            "int32 label")


def _number(token):
    if b"_" in token:  # float() would read "1_0" as 10
        raise ValueError(token)
    return float(token)


def _is_number(token):
    try:
        _number(token)
    except ValueError:
        return False
    return True


#: the bytes of plain decimal numbers and their separators (after _SEPARATORS): a text value
#: made of nothing else is parsed by NumPy, a block at a time; others by _number
_PLAIN = np.zeros(256, bool)
_PLAIN[np.frombuffer(b"0123456789+-.eE ", np.uint8)] = True


def _text_block(values, k):
    """The (m, k) numbers of m text values that each hold exactly k plain decimal numbers,
    parsed at once; None when any value does not (the caller then parses them one by one)."""
    m = len(values)
    if not m or any(v is None or not v for v in values):
        return None
    joined = b" ".join(values).translate(_SEPARATORS)
    chars = np.frombuffer(joined, np.uint8)
    if not _PLAIN[chars].all():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            numbers = np.fromstring(joined, sep=" ")  # one number per token, or an error
    except (ValueError, DeprecationWarning):
        return None
    if numbers.size != m * k:
        return None
    # tokens per value: a token starts at a non-space after a space (values are joined by one)
    token = chars != 32
    starts = token.copy()
    starts[1:] &= ~token[:-1]
    lengths = np.fromiter(map(len, values), np.int64, m) + 1
    counts = np.add.reduceat(starts, np.cumsum(lengths) - lengths, dtype=np.int64)
    if (counts != k).any():
        return None
    return numbers.reshape(m, k)


def _parse_shape(shape):
    if isinstance(shape, str):
        parts = shape.replace("x", ",").split(",")
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise OptionError(f"shape {shape!r}: expected H,W,C (e.g. 12,12,3)") from None
    shape = tuple(int(v) for v in shape)
    if len(shape) == 2:
        shape += (1,)
    if len(shape) != 3 or min(shape) < 1:
        raise OptionError(f"shape {shape}: expected three positive sizes H,W,C (e.g. 12,12,3)")
    if shape[0] * shape[1] * shape[2] >= 1 << 31:
        raise OptionError(f"shape {shape}: too large for a Datum")
    return shape


def import_raw(src, dst, shape, layout: str = "HWC", labels=None, skip_bad: bool = False, *,
               width: int = 8, **options) -> Summary:
    """Turn a database of raw pixel values into Caffe Datum records (``caffe-lmdb import-raw
    SRC DST --shape H,W,C``).

    ``src``: an LMDB whose sample keys are decimal numbers (unpadded, as ``str(i)``, or not)
    and whose values are raw uint8 arrays of ``shape`` = (H, W, C), laid out as ``layout``:
    "HWC" (``cv2.imread(path).tobytes()``) or "CHW" (planar). ``dst`` gets one Datum per sample
    (C x H x W, channels as stored, ``encoded = false``) under key ``%0{width}d`` of the
    sample's number, in numeric order.

    ``labels``: a :class:`FieldSpec` (or its string, e.g. ``"{}_"``) saying where each
    sample's label and targets are; the label goes into the record, the other fields (if any)
    into ``DST_targets`` (float_data records of shape (K, 1, 1) with the label, under the same
    keys: what ``convert-imageset --targets`` writes). None: records without label.

    Errors name the key: a value whose size does not match the shape, a sample without its
    companion, a companion without its sample, a key of neither kind, a companion that does not
    parse. ``skip_bad``: skip and count them instead (the Summary lists them). ``options``:
    ``overwrite``, ``resume``, ``progress``, ``map_size``, ``commit_every``, as for the
    converters. Returns the :class:`~caffe_lmdb.write.summary.Summary`. (``caffe_lmdb.import_raw``
    then verifies what was written: :mod:`caffe_lmdb.tools.repair`.)
    """
    spec = FieldSpec.parse(labels)
    _check_distinct(src, dst, [("source", os.fspath(src)),
                               ("labels", spec.db if spec is not None else None)])
    source = RawSource(src, shape, layout, spec, skip_bad, width)
    if source.ignored_count:
        shown = [k for k, _ in source.ignored]
        source.notes["ignored keys"] = (f"{source.ignored_count} "
                                        f"({_shown(shown, source.ignored_count - len(shown))})")
    if source.fields > 1:
        source.notes["fields"] = (f"label + {source.fields - 1} targets per sample, from "
                                  f"{spec.describe()}")
    elif spec is not None:
        source.notes["fields"] = f"label from {spec.describe()}"
    # (an import whose every sample is skipped raises NothingWrittenError, as a converter's)
    return _run(source, dst, job="import_raw", targets=source.fields > 1, **options)


