"""The key index of an open database: position <-> key, without a Python object per key.

* :class:`DenseKeys`: keys that are exactly ``%0Wd`` of a run of consecutive numbers (what
  Caffe's extract_features and this package's ``write_arrays`` write): nothing is stored.
* :class:`PackedKeys`: any keys, as one bytes object and an array of end offsets, so a forked
  DataLoader worker does not copy the index page by page as reference counts are touched.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import islice

import numpy as np

from ..format.keys import index_key

__all__ = ["DenseKeys", "PackedKeys", "KeysAt", "RangeKeys", "scan_keys", "position",
           "powers_of_ten"]

_SCAN_CHUNK = 1 << 14


class DenseKeys(Sequence):
    """Keys that are exactly ``%0Wd`` of start, start + 1, ...: nothing is stored."""

    __slots__ = ("width", "start", "count")

    def __init__(self, width, start, count):
        self.width, self.start, self.count = width, start, count

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
        return DenseKeys(width, start, nxt - start)
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
