"""Encode: one sample -> the bytes stored under its key, or a skip with its reason.

:func:`encode` is a pure function of its argument: it reads the sample's file (if any), builds
the record with :mod:`caffe_lmdb.codec`, and touches no shared state, no LMDB, no globals of
this package. So threads, worker processes, or a cluster scheduler (e.g. Ray) can run it
unchanged, and the bytes never depend on who ran it or when. It is defined at module level so
that it pickles by reference.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import ImageReadError
from ..format.datum import array_to_datum_bytes, datum_bytes
from ..format.image import encode_image, read_file
from ..format.imagesize import check_image
from .sources import ArraySample, ImageSample, Keyed, RawSample

__all__ = ["Record", "Skip", "encode", "encode_many"]


@dataclass(frozen=True)
class Record(Keyed):
    """An encoded sample: ``value`` goes under ``key``; ``targets`` (multi-target lists) is the
    float Datum for the companion targets DB, under the same key."""
    value: bytes
    targets: bytes | None = None


@dataclass(frozen=True)
class Skip(Keyed):
    """A sample that produced no record: its position, key, where it came from, and why."""
    where: str
    reason: str


_ERRORS: tuple = ()


def _decoder_errors():
    """The errors that make a sample a Skip (made once: an import per image is not free)."""
    global _ERRORS
    if not _ERRORS:
        try:
            import cv2
        except ImportError:  # pragma: no cover - OpenCV is a dependency
            _ERRORS = (ImageReadError,)
        else:
            _ERRORS = (ImageReadError, cv2.error)
    return _ERRORS


def targets_bytes(values, label):
    """The float Datum of a multi-target line: shape (K, 1, 1), ``float_data`` = the values."""
    arr = np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)
    return array_to_datum_bytes(arr, label)


def encode(sample):
    """Encode one sample (see :mod:`caffe_lmdb.sources`) into a :class:`Record`, or a
    :class:`Skip` when its image cannot be read or decoded (as convert_imageset skips it).
    A Record or Skip that a source made itself (records copied or rebuilt from another
    database, which only the writing process can read) passes through unchanged."""
    if isinstance(sample, ImageSample):
        o = sample.options
        try:  # the file is opened once: its header checked, then decoded, from its bytes
            data = read_file(sample.path)
            check_image(data, o.max_pixels, name=sample.path)
            value = encode_image(sample.path, sample.label, resize=o.resize, gray=o.gray,
                                 encode=o.encode, data=data)
        except _decoder_errors() as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Skip(sample.index, sample.key, sample.where, reason)
        targets = None
        if sample.targets is not None:
            targets = targets_bytes(sample.targets, sample.label)
        return Record(sample.index, sample.key, value, targets)
    if isinstance(sample, RawSample):
        c, h, w = sample.shape
        return Record(sample.index, sample.key,
                      datum_bytes(c, h, w, data=sample.data, label=sample.label))
    if isinstance(sample, ArraySample):
        return Record(sample.index, sample.key, array_to_datum_bytes(sample.array, sample.label))
    if hasattr(sample, "encode"):  # samples of other record kinds encode themselves
        return sample.encode()
    if isinstance(sample, (Record, Skip)):  # built by the source itself (rekey, import-raw)
        return sample
    raise TypeError(f"encode() does not know samples of type {type(sample).__name__}")


def encode_many(samples):
    """:func:`encode` over a list of samples (one worker task), results in the same order."""
    return [encode(s) for s in samples]
