"""compute_image_mean: the mean image of a database (read and write mean files with
:mod:`caffe_lmdb.format.blob`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import NotADatumDBError

__all__ = ["compute_mean", "channel_means"]


def compute_mean(source: Any, progress: Callable[[int, int], Any] | None = None,
                 batch_size: int = 256, backend: str | None = None) -> np.ndarray:
    """The mean image of a database, as Caffe's compute_image_mean: a (C, H, W) float32 array.

    ``source`` is a path or a :class:`~caffe_lmdb.reader.DatumDB` (its path is read with the
    default options: planar BGR as stored, encoded records decoded natively, with the file's
    own channel count, as Caffe's tool does). Every record must have one shape (else
    ShapeMismatchError naming the first record that differs).

    Exactness: pixel (uint8) records are summed as exact integers (uint32 per batch, added into
    an int64 total, exact for up to 3.6e16 records), float_data records in float64; the mean is
    the sum divided by the count in float64, rounded once to float32. Caffe sums in float32,
    which is exact below 2**24 / 255 = 65,793 records and drifts beyond; on smaller databases
    both give the same float32 values. ``progress(done, total)`` is called after each batch.
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
    return (total / np.float64(n)).astype(np.float32)


def channel_means(mean: np.ndarray) -> np.ndarray:
    """Per-channel mean values of a (C, H, W) mean image (what compute_image_mean logs as
    ``mean_value channel [c]``), as float64."""
    mean = np.asarray(mean)
    return mean.reshape(mean.shape[0], -1).mean(axis=1, dtype=np.float64)
