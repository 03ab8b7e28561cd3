"""compute_image_mean: the mean image of a database (read and write mean files with
:mod:`caffe_lmdb.format.blob`).

Raw pixel records of some size (an ImageNet-sized 3 x 256 x 256 database, where a user waits)
are summed straight from the stored bytes: each record's pixels are a view into the database's
memory map (nothing is copied), added into a uint16 accumulator (exact for 257 records of 255,
then carried into int64), on two threads (NumPy releases the GIL while it adds). Other records
(small ones, float_data, encoded images) are decoded in batches and summed per batch.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DatumDecodeError, NotADatumDBError, ShapeMismatchError, show_key
from ..format.batch import image_pool
from ..format.datum import decode

__all__ = ["compute_mean", "channel_means"]

#: records smaller than this are decoded in batches (a call per record would cost more)
_DIRECT_MIN_BYTES = 16384
#: records per chunk of the direct path: about 32 MiB
_DIRECT_CHUNK_BYTES = 32 << 20
_U16_ADDS = 257  # 257 * 255 = 65535: the most uint8 values a uint16 holds exactly


def compute_mean(source: Any, progress: Callable[[int, int], Any] | None = None,
                 batch_size: int = 256, backend: str | None = None) -> np.ndarray:
    """The mean image of a database, as Caffe's compute_image_mean: a (C, H, W) float32 array.

    ``source`` is a path or a :class:`~caffe_lmdb.reader.DatumDB` (its path is read with the
    default options: planar BGR as stored, encoded records decoded natively, with the file's
    own channel count, as Caffe's tool does). Every record must have one shape (else
    ShapeMismatchError naming the first record that differs).

    Exactness: pixel (uint8) records are summed as exact integers (into int64, exact for up to
    3.6e16 records), float_data records in float64; the mean is the sum divided by the count
    in float64, rounded once to float32. Caffe sums in float32, which is exact below
    2**24 / 255 = 65,793 records and drifts beyond; on smaller databases both give the same
    float32 values. ``progress(done, total)`` is called after each batch (of ``batch_size``
    records; large raw records go by chunks of some 32 MiB).
    ``backend``: ``"lmdb"`` or ``"leveldb"`` (Caffe's ``-backend``; default: detected).
    """
    from ..read.reader import DatumDB
    from ..read.reader import open as open_db

    if isinstance(source, DatumDB):  # its records with the default decoding options
        db = open_db(source.path, backend=source.backend, cache=source.options["cache"])
    else:
        db = open_db(source, backend=backend)
    n = len(db)
    if n == 0:
        raise NotADatumDBError(f"{db.path} holds no records: there is no mean to compute")
    shape, dtype, encoded = db.record_shape(0)
    if not encoded and dtype == np.uint8 and int(np.prod(shape)) >= _DIRECT_MIN_BYTES:
        total = _sum_raw(db, tuple(shape), progress)
    else:
        total = _sum_batches(db, progress, batch_size)
    return (total / np.float64(n)).astype(np.float32)


def _sum_batches(db, progress, batch_size):
    """The sum of every record, decoded a batch at a time."""
    n = len(db)
    total = None
    for start, images, _ in db.scan(batch_size, purpose="the records of a mean"):
        if total is None:
            total = np.zeros(images.shape[1:], np.int64 if images.dtype == np.uint8
                             else np.float64)
        if images.dtype == np.uint8:
            total += np.add.reduce(images, axis=0, dtype=np.uint32)
        else:
            total += np.add.reduce(images, axis=0, dtype=np.float64)
        if progress is not None:
            progress(start + len(images), n)
    return total


class _Sum:
    """An exact running sum of uint8 images: a uint16 accumulator carried into int64."""

    def __init__(self, shape):
        self.total = np.zeros(shape, np.int64)
        self.part = np.zeros(shape, np.uint16)
        self.adds = 0

    def add(self, images):
        part = self.part
        for image in images:
            if self.adds == _U16_ADDS:
                self.carry()
            np.add(part, image, out=part)
            self.adds += 1

    def carry(self):
        self.total += self.part
        self.part[...] = 0
        self.adds = 0


def _sum_raw(db, shape, progress):
    """The int64 sum of raw uint8 records, each a view of its stored bytes. Every record is
    checked as the batch decoder checks it (decode()'s parse: a record that is not a Datum
    raises DatumDecodeError, one of another shape ShapeMismatchError, both naming its key)."""
    n = len(db)
    size = int(np.prod(shape))
    chunk = max(1, _DIRECT_CHUNK_BYTES // size)
    sums = [_Sum(shape), _Sum(shape)]
    pool = image_pool()
    for start, values in db.value_chunks(chunk):
        images = []
        for j, value in enumerate(values):
            try:
                image, _ = decode(value)
            except DatumDecodeError as exc:
                raise DatumDecodeError(str(exc), db.keys()[start + j]) from exc
            if image.shape != shape or image.dtype != np.uint8:
                key = db.keys()[start + j]
                raise ShapeMismatchError(
                    f"{db.path}: record {show_key(key)} has shape {image.shape} "
                    f"({image.dtype}), the records before it {shape} (uint8): the records of "
                    "a mean need one shape")
            images.append(image)
        half = len(images) // 2
        other = pool.submit(sums[1].add, images[half:]) if half else None
        sums[0].add(images[:half] if half else images)
        if other is not None:
            other.result()
        del images  # views of this chunk's buffers, valid until the next chunk
        if progress is not None:
            progress(start + len(values), n)
    for s in sums:
        s.carry()
    return sums[0].total + sums[1].total


def channel_means(mean: np.ndarray) -> np.ndarray:
    """Per-channel mean values of a (C, H, W) mean image (what compute_image_mean logs as
    ``mean_value channel [c]``), as float64."""
    mean = np.asarray(mean)
    return mean.reshape(mean.shape[0], -1).mean(axis=1, dtype=np.float64)
