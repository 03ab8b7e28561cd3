"""Caffe's ``transform_param`` (its DataTransformer), bit for bit, in NumPy and OpenCV.

:class:`Transform` turns records into the float32 blob Caffe's Data layer feeds a net, with
Caffe's arithmetic and order:

1. an encoded record is decoded natively (``cv::imdecode(..., IMREAD_UNCHANGED)``), or in colour
   / gray with ``force_color`` / ``force_gray`` (which, as in Caffe, do nothing to raw records);
2. per record, the random draws, each ``rng() % n`` from one MT19937 stream, in this order: the
   mirror draw ``rng() % 2`` (only when ``mirror`` is set, in both phases, as Caffe does), then in
   the TRAIN phase with a ``crop_size`` the crop's row offset ``rng() % (H - crop + 1)`` and its
   column offset ``rng() % (W - crop + 1)``; in the TEST phase the crop is centred with integer
   division, ``((H - crop) // 2, (W - crop) // 2)``;
3. every output value is ``(x - mean) * scale`` in float32, where a mean file is indexed on the
   uncropped image (``mean[c, h_off + h, w_off + w]``: its C, H, W must be the record's), a
   single ``mean_value`` serves every channel, and without a mean the value is ``x * scale``;
4. a mirrored record has its columns reversed in the output (the mean is still taken at the
   source pixel).

Caffe's generator is ``boost::mt19937`` seeded with one 32-bit value (``caffe_rng_rand()`` of the
solver's stream when the layer is set up); ``Transform(seed=s)`` starts exactly where a Caffe
transformer seeded with ``s`` starts (MT19937's ``init_genrand(s)``, as ``boost::mt19937(s)``).
Other streams derive from the seed deterministically: ``set_epoch(e)`` starts epoch e's stream,
and each torch DataLoader worker gets its own (see :meth:`Transform.enter_worker`).

Detection records (SSD-Caffe's AnnotatedDatum): ``transform_values(..., geometry=True)`` also
returns where each record was cropped and whether it was mirrored, and :meth:`Transform.
transform_boxes` moves the records' boxes the same way, as the fork's TransformAnnotation does
(float32, the fork's order; see :func:`project_boxes`), with its optional ``emit_constraint``.
``resize=(height, width)`` is the fork's ``resize_param`` in WARP mode: an encoded record's
decoded image is resized (``cv::resize``, ``interp_mode``) before the crop, as the fork does
after the mirror draw and before the crop draws (the resize draws nothing from this stream).

A batch is decoded and transformed on a thread pool (OpenCV and NumPy release the GIL): the
random draws of the whole batch are taken first, in record order, in the calling thread, so the
result does not depend on the threads. Records of a batch may differ in size; the output is one
(N, C, crop, crop) array.
"""
from __future__ import annotations

import os
import secrets
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DatumDecodeError, ShapeMismatchError
from ..format import cv
from ..format.batch import image_pool
from ..format.datum import decode, parse_datum
from ..messages import show_key

__all__ = ["Transform", "caffe_mt19937", "TransformError", "project_boxes"]

_F4 = np.dtype(np.float32)
_U32 = (1 << 32) - 1
_PHASES = {"train": "train", "test": "test"}
#: SSD-Caffe's ResizeParameter.Interp_mode names and their OpenCV flags (cv::INTER_*).
_INTERP = {"LINEAR": 1, "AREA": 3, "NEAREST": 0, "CUBIC": 2, "LANCZOS4": 4}


class TransformError(ShapeMismatchError):
    """A record that Caffe's DataTransformer would refuse (smaller than the crop, a mean file
    of another shape, a mean_value count that is neither 1 nor the channel count)."""


# ---------------------------------------------------------------------------------------------
# The random streams
# ---------------------------------------------------------------------------------------------


def caffe_mt19937(seed: int) -> np.random.MT19937:
    """An MT19937 in the state ``boost::mt19937(seed)`` (and ``std::mt19937(seed)``) starts in:
    the reference ``init_genrand`` seeding. ``.random_raw()`` then gives Caffe's ``rng()``
    outputs, 32-bit values, in order."""
    seed = _seed32(seed)
    # RandomState seeds an int with init_genrand (its legacy seeding); copy that state over
    _, key, pos, _, _ = np.random.RandomState(seed).get_state(legacy=True)
    return _with_state(key, pos)


def _by_array(words: list[int]) -> np.random.MT19937:
    """MT19937 seeded with ``init_by_array(words)`` (the reference seeding of a key array)."""
    _, key, pos, _, _ = np.random.RandomState(words).get_state(legacy=True)
    return _with_state(key, pos)


def _with_state(key, pos) -> np.random.MT19937:
    bg = np.random.MT19937(0)
    bg.state = {"bit_generator": "MT19937", "state": {"key": np.asarray(key, np.uint32),
                                                      "pos": int(pos)}}
    return bg


def _seed32(seed) -> int:
    seed = int(seed)
    if not 0 <= seed <= _U32:
        raise ValueError(f"seed must be an unsigned 32-bit integer (Caffe's seeds are), "
                         f"not {seed}")
    return seed


def _stream(seed: int, epoch, worker) -> np.random.MT19937:
    """The stream of (seed, epoch, worker): Caffe's own stream for epoch 0 (or None) outside a
    worker; otherwise MT19937 seeded by ``init_by_array`` with all of them."""
    if worker is None and not epoch:
        return caffe_mt19937(seed)
    words = [seed, 0 if worker is None else int(worker) + 1]
    if isinstance(epoch, tuple):  # ("torch", base seed of the DataLoader iterator)
        base = int(epoch[1]) & ((1 << 64) - 1)
        words += [2, base & _U32, base >> 32]
    else:
        e = int(epoch or 0)
        words += [1, e & _U32, (e >> 32) & _U32]
    return _by_array(words)


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------

_local = threading.local()


def threads() -> int:
    """Threads a batch is spread over (on the package's decoding pool): one per core, or,
    inside a torch DataLoader worker, the worker's share of the cores (cores // num_workers, at
    least 1), so that workers and their threads do not oversubscribe the machine."""
    n = os.cpu_count() or 1
    data = sys.modules.get("torch.utils.data")
    if data is not None:
        info = data.get_worker_info()
        if info is not None:
            n = max(1, n // max(1, info.num_workers))
    return n


def _scratch(shape, dtype) -> np.ndarray:
    """A per-thread buffer (the planes of a decoded crop)."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    a = cache.get((shape, dtype))
    if a is None:
        if len(cache) > 8:
            cache.clear()
        a = cache[(shape, dtype)] = np.empty(shape, dtype)
    return a


def _name(keys, j) -> str:
    if keys is None:
        return f"record {j}"
    return f"record {show_key(keys[j])}"


def mismatch_message(first: str, shape0, other: str, shape1, transformed: bool) -> str:
    """The error for two records of one batch that do not have one shape, with the fix."""
    what = "after the transform" if transformed else "decoded"
    if tuple(shape0)[0] != tuple(shape1)[0]:
        fix = ("decode every record with one channel count: Transform(force_color=True) (or "
               "force_gray=True), or open the database with color=True")
    else:
        fix = ("give them one size: a Transform(crop_size=...) no larger than the smallest "
               "record, a resize in your transform (or convert with --resize_height/"
               "--resize_width), or batch_size=1")
    return (f"{other} has shape {tuple(shape1)} {what}, but the batch's first record "
            f"({first.removeprefix('record ')}) has {tuple(shape0)}: records of one batch must "
            f"have one shape; {fix}")


# ---------------------------------------------------------------------------------------------
# Transform
# ---------------------------------------------------------------------------------------------


class Transform:
    """Caffe's ``transform_param``, applied as Caffe's Data layer applies it.

    Parameters (Caffe's TransformationParameter, and the layer's phase)
    ----------
    crop_size : side of the square crop (0: no crop). TRAIN: a random offset; TEST: centred.
    mirror : flip each record horizontally with probability 1/2 (drawn in both phases).
    mean_file : a ``.binaryproto`` mean (compute_image_mean's output) or a (C, H, W) array; it
        must have the records' own (uncropped) shape.
    mean_value : one value for every channel, or one per channel (in the records' channel
        order: BGR for Caffe's images). Not with mean_file.
    scale : multiplies ``x - mean``.
    force_color, force_gray : decode encoded records in 3-channel BGR / gray instead of natively.
    phase : ``"train"`` or ``"test"``.
    seed : the 32-bit seed of the MT19937 stream (None: one from the OS).

    ``t(record)`` takes a (C, H, W) array (uint8 or float) or a serialized Datum and returns a
    float32 (C, crop, crop) array; ``t(records)`` takes a list of them (sizes may differ) or an
    (N, C, H, W) array and returns one (N, C, crop, crop) array. ``db.batches(n, transform=t)``,
    ``db.read(positions, transform=t)`` and ``DatumDataset(..., transform=t)`` use it on whole
    batches (decoded and transformed on a thread pool).
    """

    def __init__(self, crop_size: int = 0, mirror: bool = False,
                 mean_file: str | os.PathLike | np.ndarray | None = None,
                 mean_value: float | Sequence[float] | None = None, scale: float = 1.0,
                 force_color: bool = False, force_gray: bool = False, phase: str = "test",
                 seed: int | None = None, resize: tuple[int, int] | None = None,
                 interp_mode: str = "LINEAR", emit_constraint: str | None = None,
                 emit_overlap: float = 0.0):
        crop_size = int(crop_size)
        if crop_size < 0:
            raise ValueError(f"crop_size must be >= 0, not {crop_size}")
        if force_color and force_gray:
            raise ValueError("force_color and force_gray cannot both be set (Caffe: \"cannot "
                             "set both force_color and force_gray\")")
        key = str(phase).lower()
        if key not in _PHASES:
            raise ValueError(f"phase must be 'train' or 'test', not {phase!r}")
        values: list[float] = [] if mean_value is None else \
            [float(v) for v in np.atleast_1d(np.asarray(mean_value, np.float64))]
        if mean_file is not None and values:
            raise ValueError("mean_file and mean_value cannot both be set (Caffe: \"Cannot "
                             "specify mean_file and mean_value at the same time\")")
        self.resize = _check_resize(resize)
        mode = str(interp_mode).upper()
        if mode not in _INTERP:
            raise ValueError(f"interp_mode must be one of {', '.join(_INTERP)} (SSD-Caffe's "
                             f"ResizeParameter.Interp_mode), not {interp_mode!r}")
        self.interp_mode = mode
        if self.resize is not None and mean_file is not None:
            raise ValueError("mean_file with a resize is not supported yet: SSD-Caffe indexes "
                             "the mean file on the resized image in a way this Transform does "
                             "not model; use mean_value")
        emit = None if emit_constraint is None else str(emit_constraint).upper()
        if emit not in (None, "CENTER", "MIN_OVERLAP"):
            raise ValueError(f"emit_constraint must be None, 'CENTER' or 'MIN_OVERLAP' "
                             f"(SSD-Caffe's EmitConstraint.emit_type), not {emit_constraint!r}")
        self.emit_constraint = emit
        self.emit_overlap = float(np.float32(emit_overlap))
        self.crop_size = crop_size
        self.mirror = bool(mirror)
        self.scale = float(np.float32(scale))
        self.force_color = bool(force_color)
        self.force_gray = bool(force_gray)
        self.phase = _PHASES[key]
        self.mean_value = values
        self.mean_file = None if mean_file is None or isinstance(mean_file, np.ndarray) \
            else os.fspath(mean_file)
        self._mean = None if mean_file is None else _load_mean(mean_file)
        self._mean_values = np.asarray(values, _F4)
        self._scale = np.float32(scale)
        self.seed = secrets.randbits(32) if seed is None else _seed32(seed)
        self.epoch: int | None = None
        self.worker: int | None = None
        self._worker_key: tuple | None = None
        self._lock = threading.Lock()
        self._bg = _stream(self.seed, None, None)
        self._warned_raw_force = False

    # -- description ---------------------------------------------------------------------------

    @property
    def draws_per_record(self) -> int:
        """rng() draws per record: 1 for the mirror (if set), 2 for a TRAIN crop."""
        return int(self.mirror) + (2 if self.phase == "train" and self.crop_size else 0)

    @property
    def color(self) -> bool | None:
        """How encoded records are decoded: None natively, True colour, False gray."""
        return True if self.force_color else (False if self.force_gray else None)

    def __repr__(self) -> str:
        parts = []
        if self.crop_size:
            parts.append(f"crop_size={self.crop_size}")
        if self.mirror:
            parts.append("mirror=True")
        if self.mean_file is not None:
            parts.append(f"mean_file={self.mean_file!r}")
        elif self._mean is not None:
            parts.append(f"mean_file=<array {self._mean.shape}>")
        if self.mean_value:
            parts.append(f"mean_value={self.mean_value}")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale!r}")
        if self.force_color:
            parts.append("force_color=True")
        if self.force_gray:
            parts.append("force_gray=True")
        if self.resize is not None:
            parts.append(f"resize={self.resize}")
            if self.interp_mode != "LINEAR":
                parts.append(f"interp_mode={self.interp_mode!r}")
        if self.emit_constraint is not None:
            parts.append(f"emit_constraint={self.emit_constraint!r}")
            if self.emit_constraint == "MIN_OVERLAP":
                parts.append(f"emit_overlap={self.emit_overlap!r}")
        parts += [f"phase={self.phase!r}", f"seed={self.seed}"]
        return f"Transform({', '.join(parts)})"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The (C, h, w) a record of shape (C, H, W) becomes."""
        c, h, w = (int(v) for v in shape)
        return (c, self.crop_size, self.crop_size) if self.crop_size else (c, h, w)

    # -- pickling (spawn workers): the lock is per process -----------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- streams -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start the stream of this epoch (derived from the seed; epoch 0 outside a DataLoader
        worker is the stream Caffe's transformer with this seed draws from). Call it before
        each epoch for reproducible DataLoader epochs."""
        with self._lock:
            self.epoch = int(epoch)
            self._bg = _stream(self.seed, self.epoch, self.worker)

    def enter_worker(self) -> bool:
        """Inside a torch DataLoader worker, switch (once per worker and epoch) to the worker's
        own stream: derived from (seed, epoch, worker id) after :meth:`set_epoch`, else from
        (seed, the iterator's base seed, worker id), which changes every epoch and is
        reproducible under ``torch.manual_seed``. True when inside a worker."""
        data = sys.modules.get("torch.utils.data")
        info = data.get_worker_info() if data is not None else None
        if info is None:
            return False
        key = (os.getpid(), info.id, info.seed)
        if self._worker_key != key:
            with self._lock:
                self._worker_key = key
                self.worker = info.id
                epoch = self.epoch if self.epoch is not None else ("torch", info.seed - info.id)
                self._bg = _stream(self.seed, epoch, info.id)
        return True

    def draw(self, n: int) -> np.ndarray | None:
        """The next ``n`` records' raw rng() outputs, (n, draws_per_record) uint64 holding
        32-bit values (None when the transform draws nothing)."""
        k = self.draws_per_record
        if not k:
            return None
        with self._lock:
            return self._bg.random_raw(n * k).reshape(n, k)

    # -- applying ------------------------------------------------------------------------------

    def __call__(self, records: Any) -> np.ndarray:
        if isinstance(records, (bytes, bytearray, memoryview)):
            return self.transform_values([records])[0][0]
        if isinstance(records, (list, tuple)):
            if not records:
                raise ValueError("no records to transform")
            return self._run(len(records), lambda j: self._as_record(records[j]), None,
                             np.empty)
        arr = np.asarray(records)
        if arr.ndim == 3:
            return self._run(1, lambda j: (self._resized(arr), 0), None, np.empty)[0]
        if arr.ndim == 4:
            return self._run(len(arr), lambda j: (self._resized(arr[j]), 0), None, np.empty)
        raise ValueError(f"a record is a (C, H, W) array (or a batch (N, C, H, W), a list of "
                         f"records, or Datum bytes); got an array of shape {arr.shape}")

    def _as_record(self, item):
        if isinstance(item, (bytes, bytearray, memoryview)):
            arr, label = self._decode(item, self.color)
            if self.resize is not None:
                arr = self._resize_value(item, arr, None, 0)
            return arr, label
        arr = np.asarray(item)
        if arr.ndim != 3:
            raise ValueError(f"a record is a (C, H, W) array; got shape {arr.shape}")
        return self._resized(arr), 0

    def _resized(self, arr):
        """A (C, H, W) image resized to ``resize`` (SSD-Caffe's WARP: ``cv::resize`` to
        width x height with the interp_mode), as a (C, h, w) view of an (h, w, C) image."""
        if self.resize is None or arr.ndim != 3:
            return arr
        h, w = self.resize
        if arr.shape[1:] == (h, w):  # cv::resize to the same size copies the pixels
            return arr
        hwc = np.ascontiguousarray(arr.transpose(1, 2, 0))
        out = cv.cv2().resize(hwc, (w, h), interpolation=_INTERP[self.interp_mode])
        return out.reshape(h, w, -1).transpose(2, 0, 1)

    def _resize_value(self, value, arr, keys, j):
        """The resize of a record given as Datum bytes: SSD-Caffe resizes the decoded image of
        an encoded record; its raw-record path has no resize (and fails its shape check when
        the record is not already the resize's size)."""
        if parse_datum(value).encoded:
            return self._resized(arr)
        if arr.shape[1:] != self.resize:
            h, w = self.resize
            raise TransformError(
                f"{_name(keys, j)} is a raw (not encoded) record of {arr.shape[1]} x "
                f"{arr.shape[2]}: SSD-Caffe applies resize_param ({h} x {w}) to encoded "
                "records only (on a raw record of another size its shape check fails); "
                "convert the images encoded (--encoded) or at that size (--resize_height/"
                "--resize_width)")
        return arr

    def _decode(self, value, color):
        arr, label = decode(value, color)
        return arr, label

    def transform_values(self, values: Sequence, keys: Sequence | None = None, *,
                         color: bool | None = None,
                         alloc: Callable[[tuple, np.dtype], np.ndarray] | None = None,
                         channel_order: str = "BGR", layout: str = "CHW",
                         dtype: Any = None, geometry: bool = False) -> tuple:
        """``(images, labels)`` of serialized Datum records: decoded and transformed on a
        thread pool into one float32 (N, C, crop, crop) batch and an (N,) int64 label array.

        ``color`` is how encoded records are decoded when neither force_color nor force_gray
        is set (None: natively, as Caffe). ``keys`` name the records in errors; ``alloc(shape,
        dtype)`` makes the output array. ``channel_order="RGB"``, ``layout="HWC"`` and
        ``dtype`` rearrange the result afterwards (a reader's options; Caffe's blob is BGR CHW
        float32)."""
        mode = self.color if (self.force_color or self.force_gray) else color
        forced = self.force_color or self.force_gray

        def get(j):
            try:
                arr, label = decode(values[j], mode)
            except DatumDecodeError as exc:
                raise DatumDecodeError(f"{_name(keys, j)}: {exc}") from exc
            if self.resize is not None:
                arr = self._resize_value(values[j], arr, keys, j)
            if geometry and self._mean is not None and parse_datum(values[j]).encoded:
                raise TransformError(
                    f"{_name(keys, j)} is encoded: a mean_file with the boxes of encoded "
                    "records is not supported yet (SSD-Caffe's transformer indexes the mean "
                    "of a decoded image differently from Caffe's); use mean_value")
            if arr.dtype != np.uint8 and arr.dtype != _F4:
                raise TransformError(
                    f"{_name(keys, j)} decodes to {arr.dtype} pixels; Caffe's DataTransformer "
                    "takes 8-bit images only (\"Image data type must be unsigned byte\"): "
                    "convert the images to 8 bits")
            if j == 0 and forced and not self._warned_raw_force \
                    and not parse_datum(values[0]).encoded:
                self._warned_raw_force = True  # Caffe logs this and goes on
                warnings.warn("force_color / force_gray apply to encoded records only (as in "
                              "Caffe): raw records are used as stored", stacklevel=4)
            return arr, label

        labels = np.empty(len(values), np.int64)
        where = np.zeros((len(values), 7), np.int64) if geometry else None
        images = self._run(len(values), get, keys, alloc or np.empty, labels, where)
        if channel_order == "RGB" and images.shape[1] == 3:
            images = images[:, ::-1]
        if layout == "HWC":
            images = images.transpose(0, 2, 3, 1)
        if dtype is not None and np.dtype(dtype) != images.dtype:
            images = images.astype(dtype)
        elif images.base is not None and not images.flags.c_contiguous:
            images = np.ascontiguousarray(images)
        if geometry:
            return images, labels, where
        return images, labels

    def _run(self, n, get, keys, alloc, labels=None, where=None):
        """Transform records 0..n-1 (``get(j)`` -> (array, label)) into one batch; ``where``:
        an (n, 7) array to record each one's crop and mirror in (see transform_values)."""
        draws = self.draw(n)
        arr0, label0 = get(0)
        shape = self.output_shape(self._check_record(arr0, keys, 0))
        out = alloc((n,) + shape, _F4)
        placed = self._apply(arr0, None if draws is None else draws[0], out[0], keys, 0)
        if where is not None:
            where[0] = (*placed[:4], *arr0.shape[1:], placed[4])
        if labels is not None:
            labels[0] = label0

        def work(span):
            for j in range(*span):
                try:
                    arr, label = get(j)
                    here = self.output_shape(self._check_record(arr, keys, j))
                    if here != shape:
                        return ShapeMismatchError(mismatch_message(
                            _name(keys, 0), shape, _name(keys, j), here, transformed=True))
                    placed = self._apply(arr, None if draws is None else draws[j], out[j], keys,
                                         j)
                    if where is not None:
                        where[j] = (*placed[:4], *arr.shape[1:], placed[4])
                except (DatumDecodeError, ShapeMismatchError, ValueError) as exc:
                    return exc
                if labels is not None:
                    labels[j] = label
            return None

        if n > 1:
            t = min(threads(), n - 1)
            if t <= 1:
                error = work((1, n))
                if error is not None:
                    raise error
            else:
                step = -(-(n - 1) // (2 * t))
                spans = [(a, min(a + step, n)) for a in range(1, n, step)]
                for error in image_pool().map(work, spans):
                    if error is not None:  # the first failing record, in record order
                        raise error
        return out

    def _check_record(self, arr, keys, j):
        if arr.ndim != 3:
            raise ValueError(f"{_name(keys, j)}: a record is (C, H, W); got shape {arr.shape}")
        c, h, w = arr.shape
        if arr.dtype.kind not in "uifb":
            raise ValueError(f"{_name(keys, j)}: a record holds numbers; got {arr.dtype}")
        crop = self.crop_size
        if crop and (h < crop or w < crop):
            raise TransformError(f"{_name(keys, j)} is {h} x {w}, smaller than crop_size {crop} "
                                 "(Caffe: Check failed: height >= crop_size): use a smaller "
                                 "crop_size or resize the records")
        if self._mean is not None and self._mean.shape != (c, h, w):
            raise TransformError(
                f"{_name(keys, j)} has shape {(c, h, w)} but the mean file "
                f"{self.mean_file or '(array)'} has {self._mean.shape}: a mean file is "
                "indexed on the uncropped record, so it must have the records' own C, H, W "
                "(compute it on this database, or use mean_value)")
        if self.mean_value and len(self.mean_value) not in (1, c):
            raise TransformError(
                f"{_name(keys, j)} has {c} channel(s) but {len(self.mean_value)} mean_values "
                f"were given: specify either 1 mean_value or as many as channels ({c})")
        return c, h, w

    def _apply(self, arr, r, dest, keys, j):
        """One record (C, H, W) into dest (C, h, w) float32, as Caffe's Transform does.
        Returns where it was taken from: ``(h_off, w_off, crop_h, crop_w, mirrored)``."""
        c, h, w = arr.shape
        i = 0
        mirror = False
        if self.mirror:
            mirror = bool(int(r[0]) % 2)
            i = 1
        crop = self.crop_size
        if crop:
            if self.phase == "train":
                h_off = int(r[i]) % (h - crop + 1)
                w_off = int(r[i + 1]) % (w - crop + 1)
            else:
                h_off, w_off = (h - crop) // 2, (w - crop) // 2
            ch = cw = crop
        else:
            h_off = w_off = 0
            ch, cw = h, w
        hwc = arr.transpose(1, 2, 0)
        if c > 1 and arr.dtype == np.uint8 and hwc.flags.c_contiguous:
            # a decoded image (OpenCV's H x W x C): crop (a view), flip and split the crop
            # into planes with OpenCV (it releases the GIL; NumPy's transposing copy is slower)
            cv2 = cv.cv2()
            region = hwc[h_off:h_off + ch, w_off:w_off + cw]
            if mirror:
                region = cv2.flip(region, 1)
            src = _scratch((c, ch, cw), np.uint8)
            cv2.split(np.ascontiguousarray(region) if c > 4 else region, list(src))
            self._planes(src, mirror, False, h_off, w_off, dest)
            return h_off, w_off, ch, cw, int(mirror)
        src = arr[:, h_off:h_off + ch, w_off:w_off + cw]
        if src.dtype == np.uint8:
            # a raw record (C, H, W): plane by plane, so that each plane's subtract and
            # scale run while it is in the cache; a mirrored uint8 plane is flipped by
            # OpenCV into a scratch plane (NumPy's casting subtract over a reversed view
            # costs twice a contiguous one). The arithmetic is the same as below.
            self._planes(src, mirror, mirror, h_off, w_off, dest)
            return h_off, w_off, ch, cw, int(mirror)
        if mirror:
            src = src[:, :, ::-1]
        if self._mean is not None:
            mean = self._mean[:, h_off:h_off + ch, w_off:w_off + cw]
            np.subtract(src, mean[:, :, ::-1] if mirror else mean, out=dest, dtype=_F4)
        elif len(self._mean_values):
            np.subtract(src, self._channel_means(c)[:, None, None], out=dest, dtype=_F4)
        else:
            np.multiply(src, self._scale, out=dest, dtype=_F4)
            return h_off, w_off, ch, cw, int(mirror)
        if self._scale != 1:
            np.multiply(dest, self._scale, out=dest)
        return h_off, w_off, ch, cw, int(mirror)

    def _channel_means(self, c):
        mv = self._mean_values
        return mv if len(mv) == c else np.repeat(mv, c)

    def _planes(self, src, mirror, flip_planes, h_off, w_off, dest):
        """(src - mean) * scale of uint8 planes (C, ch, cw) into dest: float32 arithmetic in
        Caffe's order, one plane at a time. ``mirror``: the output is mirrored (the mean crop
        is taken mirrored); ``flip_planes``: src is not yet, flip each plane here."""
        c, ch, cw = src.shape
        flip = None
        if flip_planes:
            flip = _scratch((ch, cw), np.uint8)
            cv2 = cv.cv2()
        means = self._channel_means(c) if self._mean is None and len(self._mean_values) \
            else None
        for k in range(c):
            plane, out = src[k], dest[k]
            if flip_planes:
                cv2.flip(plane, 1, dst=flip)
                plane = flip
            if self._mean is not None:
                mean = self._mean[k, h_off:h_off + ch, w_off:w_off + cw]
                np.subtract(plane, mean[:, ::-1] if mirror else mean, out=out, dtype=_F4)
            elif means is not None:
                np.subtract(plane, means[k], out=out, dtype=_F4)
            else:
                np.multiply(plane, self._scale, out=out, dtype=_F4)
                continue
            if self._scale != 1:
                np.multiply(out, self._scale, out=out)

    # -- boxes (SSD-Caffe's AnnotatedDatum records) ----------------------------------------------

    def transform_boxes(self, rows: Sequence[np.ndarray], geometry: np.ndarray,
                        pixels: bool = False) -> list[np.ndarray]:
        """The boxes of each record moved as its image was: ``rows[j]`` are record j's box rows
        (``group_label, instance_id, xmin, ymin, xmax, ymax, difficult``, normalized, as
        :meth:`~caffe_lmdb.read.reader.DatumDB.boxes` gives them) and ``geometry[j]`` where
        its image was cropped and whether it was mirrored (``transform_values(...,
        geometry=True)``). As SSD-Caffe's TransformAnnotation, in float32: a box that fails the
        ``emit_constraint`` or does not overlap the crop is dropped, the others are projected
        into the crop, clipped to [0, 1], dropped if nothing is left of them, and mirrored
        with the image; labels, instance ids and ``difficult`` are kept. A resize (WARP)
        leaves normalized boxes as they are. ``pixels=True``: coordinates in pixels of the
        transformed image."""
        out = []
        for j, box_rows in enumerate(rows):
            g = [int(v) for v in geometry[j]]
            moved = project_boxes(box_rows, g, self.emit_constraint, self.emit_overlap)
            if pixels:
                from ..format.annotated import boxes_to_pixels

                moved = boxes_to_pixels(moved, g[3], g[2])
            out.append(moved)
        return out

    # -- Caffe's files -------------------------------------------------------------------------

    @classmethod
    def from_prototxt(cls, text_or_path: str | os.PathLike, phase: str = "test", *,
                      layer: str | None = None, root: str | os.PathLike | None = None,
                      seed: int | None = None, level: int | None = None,
                      stages: Sequence[str] | None = None) -> Transform:
        """The ``transform_param`` of the Data layer of a net (a train_val.prototxt path, or
        its text) that is active in ``phase``; see :func:`caffe_lmdb.from_prototxt` for how the
        layer is chosen and relative paths are resolved."""
        from .prototxt import from_prototxt

        return from_prototxt(text_or_path, phase, layer=layer, root=root, seed=seed,
                             level=level, stages=stages).transform


def _check_resize(resize):
    if resize is None:
        return None
    try:
        h, w = (int(v) for v in resize)
    except (TypeError, ValueError):
        raise ValueError(f"resize is (height, width), not {resize!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"resize needs a height and a width > 0 (SSD-Caffe: \"Check failed: "
                         f"resize_param().height() > 0\"), not {resize!r}")
    return h, w


def project_boxes(rows: np.ndarray, geometry: Sequence[int], emit_constraint: str | None = None,
                  emit_overlap: float = 0.0) -> np.ndarray:
    """Box rows (``group_label, instance_id, xmin, ymin, xmax, ymax, difficult``) after the crop
    and mirror ``geometry = (h_off, w_off, crop_h, crop_w, height, width, mirrored)``, with
    SSD-Caffe's float32 arithmetic and order (its DataTransformer::TransformAnnotation,
    MeetEmitConstraint, ProjectBBox, ClipBBox and BBoxSize). Rows keep their order; a group
    none of whose boxes is kept has no rows left."""
    f4 = np.float32
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    h_off, w_off, crop_h, crop_w, height, width, mirrored = (int(v) for v in geometry)
    # the crop, normalized: Dtype(w_off) / img_width, ...
    cx0 = f4(w_off) / f4(width)
    cy0 = f4(h_off) / f4(height)
    cx1 = f4(w_off + crop_w) / f4(width)
    cy1 = f4(h_off + crop_h) / f4(height)
    x0, y0, x1, y1 = (rows[:, k].astype(f4) for k in (2, 3, 4, 5))
    keep = np.ones(len(rows), bool)
    with np.errstate(all="ignore"):
        if emit_constraint == "CENTER":
            xc = (x0 + x1) / f4(2)
            yc = (y0 + y1) / f4(2)
            keep &= (xc >= cx0) & (xc <= cx1) & (yc >= cy0) & (yc <= cy1)
        elif emit_constraint == "MIN_OVERLAP":
            keep &= _coverage(x0, y0, x1, y1, cx0, cy0, cx1, cy1) > f4(emit_overlap)
        # ProjectBBox: no overlap with the crop
        keep &= ~((x0 >= cx1) | (x1 <= cx0) | (y0 >= cy1) | (y1 <= cy0))
        cw = f4(cx1 - cx0)
        chh = f4(cy1 - cy0)
        px0 = _clip((x0 - cx0) / cw)
        py0 = _clip((y0 - cy0) / chh)
        px1 = _clip((x1 - cx0) / cw)
        py1 = _clip((y1 - cy0) / chh)
        keep &= _size(px0, py0, px1, py1) > 0
        if mirrored:
            px0, px1 = f4(1) - px1, f4(1) - px0
    out = rows[keep].copy()
    for k, v in zip((2, 3, 4, 5), (px0, py0, px1, py1), strict=True):
        out[:, k] = v[keep]
    return out


def _clip(v):
    """std::max(std::min(v, 1.f), 0.f), NaN and signed zeros included."""
    v = np.where(np.float32(1) < v, np.float32(1), v)
    return np.where(v < np.float32(0), np.float32(0), v).astype(np.float32)


def _size(x0, y0, x1, y1):
    """BBoxSize of normalized boxes: 0 when inverted, else width * height (float32)."""
    area = (x1 - x0) * (y1 - y0)
    return np.where((x1 < x0) | (y1 < y0), np.float32(0), area).astype(np.float32)


def _coverage(x0, y0, x1, y1, cx0, cy0, cx1, cy1):
    """BBoxCoverage(box, crop): the share of each box inside the crop (float32)."""
    apart = (cx0 > x1) | (cx1 < x0) | (cy0 > y1) | (cy1 < y0)
    z = np.float32(0)
    ix0 = np.where(apart, z, np.maximum(x0, cx0))
    iy0 = np.where(apart, z, np.maximum(y0, cy0))
    ix1 = np.where(apart, z, np.minimum(x1, cx1))
    iy1 = np.where(apart, z, np.minimum(y1, cy1))
    inter = _size(ix0, iy0, ix1, iy1)
    cover = (inter / _size(x0, y0, x1, y1)).astype(np.float32)
    return np.where(inter > 0, cover, z)


def _load_mean(mean_file) -> np.ndarray:
    if isinstance(mean_file, np.ndarray):
        mean = mean_file
    else:
        from ..format.blob import read_mean

        mean = read_mean(mean_file)
    mean = np.asarray(mean, _F4)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        where = f"{os.fspath(mean_file)} holds" if not isinstance(mean_file, np.ndarray) \
            else "the mean array has"
        raise ValueError(f"{where} a blob of shape {mean.shape}; a mean is (C, H, W)")
    return np.ascontiguousarray(mean)
