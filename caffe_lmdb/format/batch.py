"""Many Datum records at once: the one batch decoder of the package.

:class:`BatchDecoder` turns a batch of serialized records into one (N, C, H, W) (or
(N, H, W, C)) array and an (N,) int64 label array, in the channel order, layout and dtype asked
for. Every reader of the package goes through it: ``DatumDB.batches`` and ``read``,
``read_features``, ``compute_mean`` and ``export``. :func:`decode_batch` is its one-call form.

* Raw and float records that share one byte layout (one converter, one shape; labels of
  different varint lengths are fine) are decoded with a few vectorized NumPy steps for the whole
  batch, split across cores when the batch is large; others are parsed one by one.
* Encoded records are decoded on :func:`image_pool` (a thread per core: OpenCV releases the GIL
  while it decodes), each thread writing its images straight into their slots of the batch.

Errors name the record (its key when the caller passes the keys) and are raised in record order.
"""
from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DatumDecodeError, ShapeMismatchError, show_key
from . import cv
from .datum import decode, fields_to_array, parse_datum, shape_of
from .imagesize import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["BatchDecoder", "decode_batch", "image_pool", "record_shape", "MIXED_SHAPES_FIX",
           "CHANNEL_ORDERS", "LAYOUTS", "JoinedValues", "ValueJoiner"]

CHANNEL_ORDERS = ("BGR", "RGB")
LAYOUTS = ("CHW", "HWC")

_U8 = np.dtype(np.uint8)
_F4 = np.dtype("<f4")

Allocator = Callable[[tuple, np.dtype], np.ndarray]
Output = None | np.ndarray | Allocator


# ---------------------------------------------------------------------------------------------
# The pool: one per process, made on first use
# ---------------------------------------------------------------------------------------------


class _Pool:
    """A thread per core, created on first use. A forked child makes its own: the parent's
    threads do not exist there, and a lock held by one of them at fork time would stay locked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        self.workers = 0  # its threads (os.cpu_count() costs a file read per call)
        self.pid = 0

    def get(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None or self.pid != os.getpid():
                from concurrent.futures import ThreadPoolExecutor  # (imports logging: lazily)

                self.workers = os.cpu_count() or 1
                self.executor = ThreadPoolExecutor(max_workers=self.workers,
                                                   thread_name_prefix="caffe_lmdb-decode")
                self.pid = os.getpid()
            return self.executor

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.executor = None


_POOL = _Pool()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.after_fork_in_child)


def image_pool() -> ThreadPoolExecutor:
    """The package's decoding threads (one per core), shared by every batch decode."""
    return _POOL.get()


MIXED_SHAPES_FIX = (
    "records of one batch must have one shape: pass transform=caffe_lmdb.Transform("
    "crop_size=...) (force_color=True when channel counts differ), a transform that resizes, "
    "or use batch_size=1")


def _record_name(keys, i):
    return f"record {i}" + (f" (key {show_key(keys[i])})" if keys is not None else "")


def record_shape(value, key=None):
    """``(shape, dtype, encoded)`` of one serialized record without decoding its pixels; the
    shape of an encoded record is None (only decoding tells)."""
    try:
        f = parse_datum(value)
    except DatumDecodeError as exc:
        raise DatumDecodeError(str(exc), key) from exc
    if f.encoded:
        return None, _U8, True
    shape = (f.channels, f.height, f.width)
    if f.data is not None and f.data[1]:
        return shape, _U8, False
    return shape, np.dtype(np.float32), False


# ---------------------------------------------------------------------------------------------
# The vectorized path for raw and float records of one layout
# ---------------------------------------------------------------------------------------------

_TAIL = 8  # bytes after the payload that the vectorized path reads: label varint + encoded
_PAD = bytes(_TAIL)
_PADS = [bytes(k) for k in range(_TAIL + 1)]


def _simple_tail(tail):
    """(structure mask, label size) when ``tail`` is one of Caffe's usual tails with a label of
    one or two bytes (``28 <label>``, then optionally ``38 00``), or just ``38 00``, or nothing;
    else None. The mask keeps tag and encoded bytes whole, and the label's continuation bits."""
    if tail in (b"", b"\x38\x00"):
        return _MASKS[0, len(tail)], 0
    if len(tail) < 2 or tail[0] != 0x28:
        return None
    size = 1 if tail[1] < 0x80 else (2 if len(tail) > 2 and tail[2] < 0x80 else 0)
    rest = tail[1 + size:]
    if not size or rest not in (b"", b"\x38\x00"):
        return None
    return _MASKS[size, len(rest)], size


# the structure masks of _simple_tail, by (label size, bytes after the label)
_MASKS = {(0, 0): np.full(0, 0xFF, _U8), (0, 2): np.full(2, 0xFF, _U8)}
_MASKS.update({(size, rest): np.array([0xFF] + [0x80] * size + [0xFF] * rest, _U8)
               for size in (1, 2) for rest in (0, 2)})


_U64 = np.dtype("<u8")
#: the constants of the 64-bit tail parse, as NumPy words
_W = {k: np.uint64(k) for k in (0, 3, 7, 8, 14, 16, 24, 0x7F, 0xFF, 0xFFFF, 0x28, 0x38)}
#: _simple_tail's structure masks as 64-bit words, by the mask's bytes
_WORD_MASKS = {mask.tobytes(): np.uint64(int.from_bytes(mask.tobytes().ljust(8, b"\0"),
                                                         "little")) for mask in _MASKS.values()}


def _tail_labels(tails, tail_len, head_label, equal=False):
    """Vectorized parse of the bytes after the payload, when they are one of Caffe's usual tails:
    an optional label (``28`` + a varint of 1 to 3 bytes) then an optional ``38 00``
    (encoded = false). ``tails`` is (N, 8) (padded past each record's end), ``tail_len`` (N,),
    ``head_label`` the label of a record whose tail holds none (None: not known), ``equal``
    True when all tails have one length. Returns the (N,) labels, or None when some record's
    tail is anything else (or holds no label and ``head_label`` is None). Each tail is read as
    one 64-bit word: NumPy's cost per row on rows of a few bytes would otherwise be most of the
    work."""
    w = _W
    words = np.ascontiguousarray(tails).view(_U64)[:, 0]
    simple = _simple_tail(bytes(tails[0, :tail_len[0]])) if equal else None
    if simple is not None:  # one layout for all: the first record's, read at fixed places
        mask, size = simple
        if len(mask):
            word_mask = _WORD_MASKS[mask.tobytes()]
            if not ((words & word_mask) == (words[0] & word_mask)).all():
                return None
        if size == 0:
            return None if head_label is None else np.full(len(words), head_label, np.int64)
        labels = (words >> w[8]) & w[0xFF if size == 1 else 0x7F]
        if size == 2:
            labels |= (words >> w[16] & w[0x7F]) << w[7]
        return labels.astype(np.int64)
    # tails of several layouts: each `28 <label of 1 to 3 bytes>` or nothing, then perhaps
    # `38 00`, told apart by the tag and the varint's continuation bits
    b1, b2, b3 = (words >> w[8]) & w[0xFF], (words >> w[16]) & w[0xFF], (words >> w[24]) & w[0xFF]
    labelled = ((words & w[0xFF]) == w[0x28]) & (tail_len >= 2)
    more1 = (b1 >> w[7]) * labelled  # continuation bits: a label of 2 and 3 bytes
    more2 = more1 & (b2 >> w[7])
    if (more2 & (b3 >> w[7])).any():
        return None  # (a label of 4 bytes or more, or a negative one: not this path's)
    size = np.where(labelled, 2 + more1 + more2, w[0])  # tag and varint bytes
    rest = tail_len - size.astype(np.int64)
    after = (words >> (size << w[3])) & w[0xFFFF]
    if not ((rest == 0) | ((rest == 2) & (after == w[0x38]))).all():
        return None
    labels = b1 & w[0x7F]
    labels |= (b2 & w[0x7F]) * more1 << w[7]
    labels |= (b3 & w[0x7F]) * more2 << w[14]
    labels = labels.astype(np.int64)
    if not labelled.all():
        if head_label is None:
            return None
        labels[~labelled] = head_label
    return labels


_STAGE_MIN_BYTES = 1 << 20


class JoinedValues(Sequence):
    """Records in one buffer, with their sizes: a read-only sequence of the records
    (memoryviews into the buffer), which :class:`BatchDecoder` decodes without copying them
    again. Made by :class:`ValueJoiner` (records joined end to end; valid until its next
    ``take``), or over a database file's map with the ``offsets`` of each record (records
    apart, in LMDB's pages; ``adjacent`` is then False)."""

    __slots__ = ("buffer", "sizes", "_offsets", "_lengths", "adjacent")

    def __init__(self, buffer, sizes, offsets=None, lengths=None):
        self.buffer, self.sizes, self._offsets, self._lengths = buffer, sizes, offsets, lengths
        self.adjacent = offsets is None

    def __len__(self):
        return len(self.sizes)

    def lengths(self):
        """The records' sizes as an int64 array."""
        if self._lengths is None:
            self._lengths = np.array(self.sizes, np.int64)
        return self._lengths

    def offsets(self):
        """Where each record starts in ``buffer`` (an int64 array)."""
        if self._offsets is None:
            lengths = self.lengths()
            self._offsets = np.cumsum(lengths) - lengths
        return self._offsets

    def part(self, a, b):
        """Records a .. b - 1, in the same buffer (nothing copied)."""
        return JoinedValues(self.buffer, self.sizes[a:b], self.offsets()[a:b],
                            self.lengths()[a:b])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self.sizes))[i]
        start = int(self.offsets()[i])
        return self.buffer[start:start + self.sizes[i]]


class ValueJoiner:
    """Joins the records a cursor yields into one buffer as they come, reused from call to call.

    ``take(values, k)`` writes each value into a ``BytesIO`` and keeps its size (the sizes
    are what ``BytesIO.write`` returns, so the loop runs in C and each value is released as
    soon as it is copied, while it is still in the CPU cache). On small records this costs
    less than gathering them in a list and joining the list, and the buffer, kept from call to
    call, is not fresh memory (whose first touch costs a page fault per 4 KiB). A view of the
    previous buffer still alive (an exception's traceback) keeps it from being rewritten: a
    new one is then taken."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def take(self, values: Iterator, k: int) -> JoinedValues:
        """At most ``k`` values of the iterator ``values``, joined."""
        buffer = self.buffer
        try:
            buffer.seek(0)
            buffer.write(b"")  # raises BufferError while a view of the last join is alive
        except BufferError:
            self.buffer = buffer = io.BytesIO()
        sizes = list(map(buffer.write, islice(values, k)))
        end = buffer.tell()
        buffer.write(_PAD)  # room for the vectorized decoder's window past the last record
        return JoinedValues(buffer.getbuffer()[:end + _TAIL], sizes)


class _Stage:
    """Buffers that batches of records are joined into, reused from batch to batch (fresh
    memory costs a page fault per 4 KiB on its first touch, which on small records cost as
    much as the rest of the decoding)."""

    def __init__(self):
        self.joiner = ValueJoiner()
        self.rows = np.empty((0, 0), _U8)

    def join(self, parts):
        joined = self.joiner.take(iter(parts), len(parts))
        return joined.buffer[:-_TAIL]

    def gather(self, joined, width):
        """The records of ``joined`` (a JoinedValues) as rows of ``width`` bytes (each padded
        with the bytes that follow it), in a reused array, by one gather (a row that would run
        off the buffer's end copied alone)."""
        n = len(joined)
        rows = self.rows
        if rows.shape[1] != width or len(rows) < n:
            self.rows = rows = np.empty((max(n, len(rows)), width), _U8)
        rows = rows[:n]
        base = np.frombuffer(joined.buffer, _U8)
        offsets = joined.offsets()
        last = len(base) - width  # rows starting after it would run off the buffer
        window = np.lib.stride_tricks.as_strided(base, (last + 1, width), (1, 1),
                                                 writeable=False)
        if joined.adjacent or offsets.max() <= last:
            rows[:] = window[offsets]  # (np.take would first copy the whole window)
            return rows
        near = offsets > last  # (the last records of a file's map)
        rows[~near] = window[offsets[~near]]
        for i in np.flatnonzero(near).tolist():
            part = base[offsets[i]:]
            rows[i, :len(part)] = part
            rows[i, len(part):] = 0
        return rows


def _mode(values):
    """The most common value of an int array (one of its first two when it is most of it)."""
    for guess in values[:2].tolist():
        if 2 * np.count_nonzero(values == guess) > len(values):
            return guess
    kinds, counts = np.unique(values, return_counts=True)
    return int(kinds[counts.argmax()])


def _map_runs(joined, width):
    """The records of ``joined`` (apart, in a file's map) as a few regular runs, each
    ``(first, stop, offset, outer, count, inner)``: rows ``first .. stop - 1`` lie in blocks of
    ``count`` rows ``inner`` bytes apart, the blocks ``outer`` bytes apart, from ``offset`` on.
    LMDB lays small records out so (a leaf page's records one node size apart, from its end
    down; leaf pages one page apart when written in order), and large ones in overflow pages
    one after another (blocks of one). None when the records are not that regular."""
    offsets = joined.offsets()
    n = len(offsets)
    if n < 2 or offsets.min() < 0 or offsets.max() + width > len(joined.buffer):
        return None  # (rows of the last records of a map would run off it: gathered)
    steps = offsets[1:] - offsets[:-1]
    inner = _mode(steps)
    starts = np.flatnonzero(steps != inner) + 1  # each break starts a block
    if len(starts) > n // 2:
        return None
    bounds = np.concatenate([[0], starts, [n]])
    lengths, at = np.diff(bounds), offsets[bounds[:-1]]
    outer = _mode(np.diff(at)) if len(at) > 1 else 0
    # blocks of one length at one step make a run
    cut = np.flatnonzero((np.diff(at) != outer) | (lengths[1:] != lengths[:-1])) + 1
    if len(cut) > max(4, n // 64):
        return None
    groups = np.concatenate([[0], cut, [len(lengths)]]).tolist()
    return [(int(bounds[a]), int(bounds[b]), int(at[a]), outer, int(lengths[a]), inner)
            for a, b in zip(groups, groups[1:], strict=False)]


def _slabs(runs, a, b):
    """The rows ``a .. b - 1`` of ``runs`` (see _map_runs) as strided slabs ``(lo, hi,
    offset, shape, strides)``: whole blocks together (3-D), a partial block alone (2-D)."""
    for first, stop, offset, outer, count, inner in runs:
        i, end = max(a, first) - first, min(b, stop) - first
        while i < end:
            block, j = divmod(i, count)
            at = offset + block * outer + j * inner
            if j == 0 and end - i >= count:
                blocks = (end - i) // count
                yield first + i, first + i + blocks * count, at, (blocks, count), (outer, inner)
                i += blocks * count
            else:
                k = min(count - j, end - i)
                yield first + i, first + i + k, at, (k,), (inner,)
                i += k


def _decode_uniform(buffers, f0, out, labels_out, dtype, stage=None):
    """Vectorized decode of records that share the header of the first (same fields and shape
    up to the payload) and end in one of Caffe's usual tails. The records are seen as rows of
    one width (each row a record and the bytes after it) in a few regular runs of strided views:
    records joined end to end (one run per length: labels of 1 and 2 bytes differ in length),
    records where they lie in a file's map (see _map_runs), else rows gathered or joined into one
    buffer. Per run, one comparison of the headers; one parse of all tails (labels); one copy of
    the payloads (split across cores when large). Returns False when any record differs, or
    the first is bad: the caller then parses (and writes) every record one by one. ``f0`` is
    the parse of the first record; ``dtype``, when not None, is the dtype every record must
    hold. ``stage``: a :class:`_Stage` to join the records into."""
    try:
        shape = shape_of(f0)
    except DatumDecodeError:
        return False
    if f0.encoded or (dtype is not None and (f0.data is not None) != (dtype == _U8)):
        return False
    if f0.data is not None:
        payload, size = f0.data
        if f0.floats:
            return False
        head, tail_at = payload, payload + size
    elif len(f0.floats) == 1 and f0.floats[0][2] == 5:
        payload, count, _ = f0.floats[0]
        head, tail_at = payload - 1, payload - 1 + 5 * count
    else:
        return False
    if shape != out.shape[1:] or out[0].size != (size if f0.data is not None else count):
        return False
    n = len(buffers)
    joined = isinstance(buffers, JoinedValues)
    sizes = buffers.sizes if joined else list(map(len, buffers))
    width = tail_at + _TAIL
    equal = sizes.count(sizes[0]) == n
    lengths = np.full(n, sizes[0], np.int64) if equal else \
        buffers.lengths() if joined else np.array(sizes, np.int64)
    tail_len = lengths - tail_at
    if tail_len.min() < 0 or tail_len.max() > _TAIL:
        return False
    adjacent = not joined or buffers.adjacent
    runs = None  # rows in regular runs (see _map_runs) in source
    if joined and equal and adjacent:  # already joined, and padded at the end
        source = buffers.buffer
        runs = [(0, n, 0, 0, n, sizes[0])]
    elif joined and adjacent and (bounds := _few_runs(lengths)) is not None:
        source = buffers.buffer  # joined in a few runs of one length: a strided view each
        starts = buffers.offsets()[bounds[:-1]].tolist()
        runs = [(a, b, at, 0, b - a, int(lengths[a]))
                for a, b, at in zip(bounds, bounds[1:], starts, strict=False)]
    elif joined and not adjacent and (runs := _map_runs(buffers, width)):
        source = buffers.buffer  # records apart in a file's map, laid out regularly: no copy
    elif joined and stage is not None:  # joined, of different sizes: the rows gathered
        source = stage.gather(buffers, width)
    elif equal:  # rows one record apart; the padding keeps the last row's tail window in range
        parts = [*buffers, _PAD]
        # (a join of a MiB or more goes into the stage: fresh memory that size costs faults)
        big = stage is not None and n * sizes[0] >= _STAGE_MIN_BYTES
        source = stage.join(parts) if big else b"".join(parts)
        runs = [(0, n, 0, 0, n, sizes[0])]
    else:  # each record padded with zeros to one width
        parts = [_PAD] * (2 * n)
        parts[::2] = buffers
        parts[1::2] = map(_PADS.__getitem__, (width - lengths).tolist())
        source = b"".join(parts)
    if runs is None:  # rows of width bytes, one after another
        runs = [(0, n, 0, 0, n, width)]

    def rows(at, shape, strides):
        return np.ndarray((*shape, width), _U8, source, at, (*strides, 1))

    row0 = rows(runs[0][2], (1,), (width,))[0]
    head0 = row0[:head]
    # the label of a record whose tail holds none is its head's: the first record's when its
    # own tail holds none either (else not known here: such records go one by one)
    bare = f0.label if bytes(row0[tail_at:tail_at + tail_len[0]]) in (b"", b"\x38\x00") \
        else None
    tails = np.empty((n, _TAIL), _U8)
    for lo, hi, at, shape, strides in _slabs(runs, 0, n):
        part = rows(at, shape, strides)
        if not (part[..., :head] == head0).all():
            return False
        tails[lo:hi].reshape(*shape, _TAIL)[...] = part[..., tail_at:]
    labels = _tail_labels(tails, tail_len, bare, equal)
    if labels is None:
        return False
    flat = out.reshape(n, -1)
    if f0.data is None:
        def rows_of(a, b):  # every value of a float run has its tag, then the copy; a few
            for lo, hi, at, shape, strides in _slabs(runs, a, b):  # rows at a time, so
                for x, y, first, stride in _flat_slabs(lo, hi, at, shape, strides):  # that
                    step = max(1, _CACHED_BYTES // abs(stride))  # the copy reads from cache
                    for u in range(x, y, step):
                        v = min(y, u + step)
                        offset = first + (u - x) * stride + head
                        if not _float_tags_ok(source, offset, stride, v - u, count):
                            return False
                        flat[u:v] = np.ndarray((v - u, count), _F4, source, offset + 1,
                                               (stride, 5))
            return True
    else:
        def rows_of(a, b):
            for lo, hi, at, shape, strides in _slabs(runs, a, b):
                flat[lo:hi].reshape(*shape, -1)[...] = rows(at, shape, strides)[..., head:tail_at]
            return True
    if not _split_rows(rows_of, n, n * (tail_at - head)):
        return False  # out may be partly written: the caller rewrites every row
    labels_out[...] = labels
    return True


def _flat_slabs(lo, hi, at, shape, strides):
    """A slab of _slabs as 2-D pieces ``(lo, hi, offset, stride)`` (one per block)."""
    if len(shape) == 1 or shape[1] == 1:
        yield lo, hi, at, strides[0]
        return
    blocks, count = shape
    for k in range(blocks):
        yield lo + k * count, lo + (k + 1) * count, at + k * strides[0], strides[1]


def _few_runs(lengths):
    """The starts of the runs of equal lengths in ``lengths``, when there are few of them (at
    most one per 64 records: records sorted by label come in long runs), else None."""
    n = len(lengths)
    cuts = np.flatnonzero(lengths[1:] != lengths[:-1])
    return None if len(cuts) > n // 64 else [0, *(cuts + 1).tolist(), n]


def _float_tags_ok(source, offset, stride, n, count):
    """True when each of ``n`` float runs (``stride`` bytes apart from ``offset`` in
    ``source``) holds ``count`` values that all carry float_data's tag (0x35). OpenCV takes
    every fifth byte into one plane and finds its extremes, faster than NumPy's
    strided comparison (and it releases the GIL)."""
    runs = np.ndarray((n, count, 5), _U8, source, offset, (stride, 5, 1))
    cv2 = cv.cv2()
    low, high, _, _ = cv2.minMaxLoc(cv2.extractChannel(runs, 0))
    return low == high == 0x35


_SPLIT_BYTES = 1 << 20
#: bytes of float runs checked then copied at once (read twice: they should stay in cache)
_CACHED_BYTES = 512 << 10


def _split_rows(fn, n, nbytes):
    """fn(a, b) over rows [0, n): on one thread per core, 1 MiB of rows or more each, when the
    rows hold 2 MiB or more (NumPy and OpenCV release the GIL), else in this thread. True when
    every call returned True."""
    if nbytes < 2 * _SPLIT_BYTES:
        return fn(0, n)
    pool = image_pool()
    parts = min(_POOL.workers, n, nbytes // _SPLIT_BYTES)
    if parts <= 1:
        return fn(0, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [pool.submit(fn, a, b) for a, b in zip(bounds[1:-1], bounds[2:], strict=True)]
    ok = fn(bounds[0], bounds[1])
    return all([f.result() for f in futures]) and ok


# ---------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------


class _Offset:
    """keys shifted by ``offset`` (the keys of one chunk of a batch)."""

    def __init__(self, keys, offset):
        self.keys, self.offset = keys, offset

    def __getitem__(self, i):
        return self.keys[self.offset + i]


class BatchDecoder:
    """Decodes batches of records into arrays, as one reader wants them.

    Parameters
    ----------
    layout : ``"CHW"`` (Caffe's planar order) or ``"HWC"``.
    channel_order : ``"BGR"`` (as stored) or ``"RGB"`` (3-channel pixel records reversed).
    dtype : output dtype; None keeps the records' own (uint8 pixels, float32 float_data).
    color : encoded records: None decodes natively, True forces BGR, False gray.
    max_pixels : encoded images declaring more pixels are refused unread (None: no limit).

    A decoder keeps two things between batches, both only for speed: the shape of the last
    batch of encoded images (so the next batch's output can be allocated before its first image
    is decoded) and a scratch array for layouts that need a second pass.
    """

    def __init__(self, layout: str = "CHW", channel_order: str = "BGR", dtype: Any = None,
                 color: bool | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, "
                             f"not {channel_order!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        if color not in (None, True, False):
            raise ValueError(f"color must be None (native), True or False, not {color!r}")
        self.layout, self.channel_order, self.color = layout, channel_order, color
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.max_pixels = max_pixels
        self._encoded_shape: tuple | None = None
        self._scratch: dict = {}
        self._stages: list = []  # _Stage objects not in use (one per thread decoding)

    # -- one record ---------------------------------------------------------------------------

    def decode_one(self, value, key=None) -> tuple[np.ndarray, int]:
        """``(image, label)`` of one record, as a new array in this decoder's form."""
        arr, label = self._decode(value, key)
        out = np.empty(self.output_shape(arr.shape), self.dtype or arr.dtype)
        self._arrange(arr[None], out[None], arr.dtype == _U8)
        return out, int(label)

    def output_shape(self, shape: tuple, n: int | None = None) -> tuple:
        """The output shape of records of (C, H, W) ``shape`` (with a batch axis of ``n``)."""
        shape = tuple(shape) if self.layout == "CHW" else tuple(shape[1:]) + tuple(shape[:1])
        return shape if n is None else (n,) + shape

    # -- batches ------------------------------------------------------------------------------

    def decode(self, values: Any, n: int | None = None,
               keys: Any = None, out: Output = None, labels_out: np.ndarray | None = None,
               chunked: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``n`` records into one batch.

        ``values``: the serialized records (bytes, memoryviews), or with ``chunked=True``
        successive lists of them (each list is decoded as it comes, so a caller can hand over
        values that are valid only until the next list is taken). ``keys[i]`` names record i
        in errors. ``out``: None (a new array), an array to fill (its dtype may differ from the
        records': values are cast), or a function ``(shape, dtype) -> array``. All records must
        have one shape (and, for encoded images, one dtype): ShapeMismatchError names the first
        that differs.
        """
        chunks = iter(values) if chunked else iter([values])
        first = next(chunks)
        first = first if isinstance(first, (list, JoinedValues)) else list(first)
        if n is None:
            if chunked:
                raise ValueError("decode(chunked=True) needs n")
            n = len(first)
        if n == 0 or not first:
            raise ValueError("a batch needs at least one record")
        try:
            f0 = parse_datum(first[0])
        except DatumDecodeError as exc:
            raise DatumDecodeError(f"{_record_name(keys, 0)}: {exc}") from exc
        if f0.encoded:
            rest = [v for chunk in chunks for v in chunk]
            return self._decode_encoded(list(first) + rest if rest else first, keys, out,
                                        labels_out)
        shape = shape_of(f0)
        pixels = f0.data is not None and bool(f0.data[1])
        native = _U8 if pixels else np.dtype(np.float32)
        images = self._output(out, n, shape, native)
        labels = _prepare_labels(labels_out, n)
        require = native if out is None and self.dtype is None else None
        direct = self.layout == "CHW" and not (pixels and self._flips(shape))
        a = 0
        for chunk in (first, *chunks) if chunked else (first,):
            b = a + len(chunk)
            if b > n:
                raise ValueError(f"more than the {n} records announced")
            if a:
                here = record_shape(chunk[0], keys[a] if keys is not None else None)[0]
                if here != shape:
                    raise ShapeMismatchError(
                        f"{_record_name(keys, a)} has shape {here}, but the batch's first "
                        f"record, {_record_name(keys, 0)}, has {shape}: {MIXED_SHAPES_FIX}")
            target = images[a:b] if direct else self._scratch_for((b - a,) + shape, native)
            stage = self._stages.pop() if self._stages else _Stage()
            _decode_plain(chunk, target, labels[a:b], self.color, self.max_pixels,
                          _Offset(keys, a) if keys is not None and a else keys, require, stage)
            self._stages.append(stage)
            if not direct:
                self._arrange(target, images[a:b], pixels)
            a = b
        if a != n:
            raise ValueError(f"{a} records given, {n} announced")
        return images, labels

    # -- internals ----------------------------------------------------------------------------

    def _decode(self, value, key):
        try:
            return decode(value, self.color, self.max_pixels)
        except DatumDecodeError as exc:
            raise DatumDecodeError(str(exc), key) from exc

    def _flips(self, shape):
        return self.channel_order == "RGB" and shape[0] == 3

    def _output(self, out, n, shape, native):
        want = self.output_shape(shape, n)
        if out is None:
            return np.empty(want, self.dtype or native)
        if callable(out):
            return out(want, self.dtype or native)
        if out.shape != want:
            raise ValueError(f"out has shape {out.shape}, the batch needs {want}")
        return out

    def _arrange(self, src, dest, pixels):
        """Copy a (N, C, H, W) batch into dest in this decoder's channel order and layout."""
        if pixels and self._flips(src.shape[1:]):
            src = src[:, ::-1]
        if self.layout == "HWC":
            src = src.transpose(0, 2, 3, 1)
        dest[...] = src

    def _put(self, chw, dest):
        """Write one decoded (C, H, W) image into its slot of the batch."""
        flip = self._flips(chw.shape)
        if self.layout == "CHW":
            cv.place(chw, dest, reverse=flip)
        else:
            hwc = chw.transpose(1, 2, 0)
            dest[...] = hwc[:, :, ::-1] if flip else hwc

    def _scratch_for(self, shape, dtype):
        a = self._scratch.get((shape, dtype))
        if a is None:
            self._scratch.clear()
            a = self._scratch[(shape, dtype)] = np.empty(shape, dtype)
        return a

    def _decode_encoded(self, values, keys, out, labels_out):
        """Encoded records, each decoded on a pool thread and written by it into its slot. The
        batch is allocated with the shape of the previous batch's images when there was one;
        otherwise (or when the first image differs) the first image is decoded alone first."""
        guess = self._encoded_shape
        if guess is not None and not isinstance(out, np.ndarray):
            result = self._decode_encoded_as(values, keys, out, labels_out, guess, 0)
            if result is not None:
                return result
        first, label = self._decode(values[0], keys[0] if keys is not None else None)
        self._encoded_shape = (first.shape, first.dtype)
        images, labels = self._decode_encoded_as(values, keys, out, labels_out,
                                                 self._encoded_shape, 1)
        self._put(first, images[0])
        labels[0] = label
        return images, labels

    def _decode_encoded_as(self, values, keys, out, labels_out, guess, start):
        """Decode values[start:] into a batch of images of ``guess`` (shape, dtype); None when
        the first image turns out to be of another shape (the caller starts over)."""
        shape, dtype = guess
        images = self._output(out, len(values), shape, dtype)
        labels = _prepare_labels(labels_out, len(values))
        put, color, max_pixels = self._put, self.color, self.max_pixels

        def work_range(span):
            for j in range(*span):
                try:
                    arr, label = decode(values[j], color, max_pixels)
                except DatumDecodeError as exc:
                    err = DatumDecodeError(f"{_record_name(keys, j)}: {exc}")
                    err.__cause__ = exc
                    return err
                if arr.shape != shape or arr.dtype != dtype:
                    err = ShapeMismatchError(
                        f"{_record_name(keys, j)} decodes to shape {arr.shape} ({arr.dtype}), "
                        f"but the batch's first record, {_record_name(keys, 0)}, has {shape} "
                        f"({dtype}): {MIXED_SHAPES_FIX}")
                    err.index = j
                    return err
                put(arr, images[j])
                labels[j] = label
            return None

        step = -(-(len(values) - start) // (2 * (os.cpu_count() or 1))) or 1
        spans = [(a, min(a + step, len(values))) for a in range(start, len(values), step)]
        work = map(work_range, spans) if len(spans) <= 1 else image_pool().map(work_range, spans)
        for error in work:
            if error is not None:
                if getattr(error, "index", None) == 0:
                    return None
                raise error
        return images, labels


def _decode_plain(buffers, out, labels_out, color, max_pixels, keys, require, stage=None):
    """Raw and float records into ``out`` (N, C, H, W); ``require``: the dtype every record
    must hold (None: any, cast into out); ``stage``: see _decode_uniform."""
    n = len(buffers)
    try:
        f0 = parse_datum(buffers[0])
        first = fields_to_array(buffers[0], f0, color, max_pixels)
    except DatumDecodeError as exc:
        raise DatumDecodeError(f"{_record_name(keys, 0)}: {exc}") from exc
    if n > 1 and len(buffers[0]) <= (1 << 16) \
            and _decode_uniform(buffers, f0, out, labels_out, require, stage):
        return
    out[0] = first
    labels_out[0] = f0.label
    for i in range(1, n):
        try:
            arr, label = decode(buffers[i], color, max_pixels)
        except DatumDecodeError as exc:
            raise DatumDecodeError(f"{_record_name(keys, i)}: {exc}") from exc
        if arr.shape != first.shape or (require is not None and arr.dtype != require):
            raise ShapeMismatchError(
                f"{_record_name(keys, i)} holds a {arr.dtype} array of shape {arr.shape}, "
                f"but the batch's first record, {_record_name(keys, 0)}, holds {first.dtype} "
                f"{first.shape}: {MIXED_SHAPES_FIX}")
        out[i] = arr
        labels_out[i] = label


def _prepare_labels(labels_out, n):
    if labels_out is None:
        return np.empty(n, np.int64)
    if labels_out.shape != (n,):
        raise ValueError(f"labels_out has shape {labels_out.shape}, the batch needs ({n},)")
    return labels_out


def decode_batch(buffers: Iterable, out: Output = None, labels_out: np.ndarray | None = None,
                 color: bool | None = None, keys: Any = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, layout: str = "CHW",
                 channel_order: str = "BGR", dtype: Any = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Decode many records of one shape into an (N, C, H, W) array and an (N,) int64 label
    array (see :class:`BatchDecoder` for ``layout``, ``channel_order`` and ``dtype``).

    ``out`` (and ``labels_out``) may be preallocated arrays to fill, and ``out``'s dtype may
    differ from the records' (values are cast); without ``out``, records must also agree in
    dtype. ``keys``, when given, name the records in error messages; ``color`` and
    ``max_pixels`` are as in :func:`~caffe_lmdb.decode`. Raises ShapeMismatchError when records
    differ.
    """
    buffers = buffers if isinstance(buffers, list) else list(buffers)
    if not buffers:
        raise ValueError("decode_batch needs at least one record")
    decoder = BatchDecoder(layout=layout, channel_order=channel_order, dtype=dtype, color=color,
                           max_pixels=max_pixels)
    return decoder.decode(buffers, keys=keys, out=out, labels_out=labels_out)
