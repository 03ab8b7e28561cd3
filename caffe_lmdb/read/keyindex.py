"""The key index of an open database: position <-> key, without a Python object per key.

* :class:`DenseKeys`: keys that are exactly ``%0Wd`` of a run of consecutive numbers (what
  Caffe's extract_features and this package's ``write_arrays`` write): nothing is stored.
* :class:`PackedKeys`: any keys, as one bytes object and an array of end offsets, so a forked
  DataLoader worker does not copy the index page by page as reference counts are touched.

Opening without reading every key (:func:`probe_dense`): when the first and last keys are
``%0Wd`` numbers ``a`` and ``b`` of one width and LMDB's entry count is ``b - a + 1``, the keys
are *presumably* the dense run ``a .. b``. Presumably only: a key such as ``00000005x`` or
``0000001`` sorts between two numbers, and with one number missing the count still matches, so
that every position after the foreign key would name the wrong record. No O(log n) look at the
database can rule that out (LMDB keeps no ranks), so the presumption is checked before it is
relied on: :attr:`DenseKeys.checked` counts the leading positions whose keys were seen to be
exactly ``a, a + 1, ...`` in key order, and the reader uses position ``i`` of an unchecked run
only once ``i < checked``. A sequential pass checks the keys it reads as it goes (one
comparison of a block's joined keys with the expected bytes, :func:`run_bytes`); random access
first checks the prefix it needs with a keys-only scan (:func:`check_prefix`). When a check
fails, the reader replaces the index with a full scan (:func:`scan_keys`) and goes on from
there: positions before the failure were checked, so no record is ever given for the wrong
position.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import islice

import numpy as np

from ..format.keys import index_key

__all__ = ["DenseKeys", "PackedKeys", "KeysAt", "RangeKeys", "scan_keys", "position",
           "powers_of_ten", "probe_dense", "check_prefix", "run_bytes", "MAX_DENSE_WIDTH"]

#: widest dense key handled (numbers up to 10**18 fit an int64)
MAX_DENSE_WIDTH = 18

_SCAN_CHUNK = 1 << 14


class DenseKeys(Sequence):
    """Keys that are exactly ``%0Wd`` of start, start + 1, ...: nothing is stored.

    ``checked``: how many leading positions are known to hold exactly these keys (``count``
    for an index built by a full scan; fewer for one presumed by :func:`probe_dense`, see the
    module docstring)."""

    __slots__ = ("width", "start", "count", "checked")

    def __init__(self, width, start, count, checked=None):
        self.width, self.start, self.count = width, start, count
        self.checked = count if checked is None else checked

    @property
    def complete(self):
        """True when every position is checked (the index can be trusted as it is)."""
        return self.checked >= self.count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        i = position(i, self.count)
        return index_key(self.start + i, self.width)

    def take(self, positions):
        numbers = np.asarray(positions, np.int64) + self.start
        # the digits of every key at once, as one (n, width) array of ASCII bytes
        digits = (numbers[:, None] // powers_of_ten(self.width)) % 10 + 48
        return digits.astype(np.uint8).view(f"S{self.width}").ravel().tolist()

    def find(self, key):
        if len(key) == self.width and key.isdigit():
            i = int(key) - self.start
            if 0 <= i < self.count:
                return i
        return None

    def run(self, position, k):
        """The keys of positions ``position .. position + k - 1`` joined (see run_bytes)."""
        return run_bytes(self.start + position, k, self.width)

    @property
    def nbytes(self):
        return 0


class PackedKeys(Sequence):
    """Any keys: one bytes object holding them all, and an array of their end offsets.

    No Python object per key, so a forked DataLoader worker does not copy the index page by
    page as reference counts are touched (the usual memory growth of list-based indexes)."""

    __slots__ = ("blob", "ends")

    def __init__(self, blob, ends):
        self.blob, self.ends = blob, ends

    def __len__(self):
        return len(self.ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.ends)))]
        i = position(i, len(self.ends))
        start = int(self.ends[i - 1]) if i else 0
        return self.blob[start:int(self.ends[i])]

    def take(self, positions):
        positions = np.asarray(positions, np.int64)
        ends = self.ends[positions].tolist()
        starts = np.where(positions > 0, self.ends[positions - 1], 0).tolist()
        blob = self.blob
        return [blob[a:b] for a, b in zip(starts, ends, strict=True)]

    def find(self, key):
        i = bisect.bisect_left(self, key)
        return i if i < len(self.ends) and self[i] == key else None

    @property
    def nbytes(self):
        return len(self.blob) + self.ends.nbytes


_TABLE = None  # "0000" .. "9999" as a (10000, 4) array of ASCII digits, made on first use


def _table():
    global _TABLE
    if _TABLE is None:
        _TABLE = ((np.arange(10000)[:, None] // powers_of_ten(4)) % 10 + 48).astype(np.uint8)
    return _TABLE


def run_bytes(first, k, width):
    """``b"".join(b"%0*d" % (width, x) for x in range(first, first + k))``, made with a few
    NumPy copies (the last four digits come from a table, the others change every 10,000)."""
    out = np.empty((k, width), np.uint8)
    low = min(width, 4)
    base = 10 ** low
    table = _table()[:, 4 - low:]
    i, x = 0, first
    while i < k:
        high, rest = divmod(x, base)
        m = min(k - i, base - rest)
        out[i:i + m, width - low:] = table[rest:rest + m]
        if width > low:
            out[i:i + m, :width - low] = np.frombuffer(b"%0*d" % (width - low, high), np.uint8)
        i += m
        x += m
    return out.tobytes()


def probe_dense(txn):
    """A :class:`DenseKeys` presumed from the ends of the database, in O(log n): when its first
    and last keys are ``%0Wd`` numbers ``a``, ``b`` of one width and it holds ``b - a + 1``
    entries. Only position 0 is checked (see the module docstring). None otherwise, or when the
    engine cannot tell its bounds cheaply."""
    bounds = getattr(txn, "bounds", None)
    found = bounds() if bounds is not None else None
    if found is None:
        return None
    entries, first, last = found
    width = len(first)
    if not (0 < width <= MAX_DENSE_WIDTH and len(last) == width and first.isdigit()
            and last.isdigit()):
        return None
    start = int(first)
    if int(last) - start + 1 != entries:
        return None
    return DenseKeys(width, start, entries, checked=1)


def check_prefix(txn, index, stop):
    """Extend ``index.checked`` (a DenseKeys) to at least ``stop`` with a keys-only scan from
    the last checked key. True when the keys are as presumed; False when one is not (the
    index is then wrong from ``index.checked`` on: rebuild it with scan_keys)."""
    stop = min(stop, index.count)
    if index.checked >= stop:
        return True
    at = index.checked
    it = txn.iter_keys(index[at - 1])  # the last checked key: its successor must be key `at`
    if it is None:
        return False
    next(it, None)
    while at < stop:
        k = min(_SCAN_CHUNK, index.count - at)  # check to the end of the chunk
        keys = list(islice(it, k))
        if len(keys) != k or b"".join(keys) != index.run(at, k):
            return False
        at += k
        index.checked = at
    return True


def powers_of_ten(width):
    """The place value of each digit of a ``width``-digit number, most significant first."""
    return 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)


def position(i, n):
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"record {i} out of range: the database has {n} records")
    return i


def scan_keys(txn):
    """The key index of a read view (:class:`~caffe_lmdb.storage.base.ReadTxn`), from a
    keys-only scan (values are never touched)."""
    it = txn.iter_keys()
    blobs, lengths = [], []
    dense = True
    width = nxt = start = None
    while True:
        chunk = list(islice(it, _SCAN_CHUNK))
        if not chunk:
            break
        blob = b"".join(chunk)
        lens = np.fromiter(map(len, chunk), np.int64, len(chunk))
        blobs.append(blob)
        lengths.append(lens)
        if dense:
            w = int(lens[0])
            if (width is not None and w != width) or not 0 < w <= 18 or (lens != w).any():
                dense = False
                continue
            digits = np.frombuffer(blob, np.uint8).reshape(len(chunk), w)
            if ((digits < 48) | (digits > 57)).any():
                dense = False
                continue
            values = (digits - 48).astype(np.int64) @ powers_of_ten(w)
            first = int(values[0]) if nxt is None else nxt
            if not (values == first + np.arange(len(chunk))).all():
                dense = False
                continue
            if start is None:
                start, width = first, w
            nxt = first + len(chunk)
    if not blobs:
        return PackedKeys(b"", np.zeros(0, np.int64))
    if dense:
        return DenseKeys(width, start, nxt - start)  # every key seen: checked
    lens = np.concatenate(lengths)
    blob = b"".join(blobs)
    ends = np.cumsum(lens, dtype=np.uint32 if len(blob) < (1 << 32) else np.int64)
    return PackedKeys(blob, ends)


class KeysAt:
    """``keys[i]`` = key of position ``positions[i]``, computed only when asked (error messages)."""

    def __init__(self, index, positions):
        self.index, self.positions = index, positions

    def __getitem__(self, i):
        return self.index[int(self.positions[i])]


class RangeKeys(KeysAt):
    def __init__(self, index, start):
        super().__init__(index, None)
        self.start = start

    def __getitem__(self, i):
        return self.index[self.start + i]
