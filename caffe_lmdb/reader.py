"""Lazy, read-only access to a Caffe LMDB of Datum records.

``caffe_lmdb.open(path)`` returns a :class:`DatumDB`. Opening reads no values: it builds a key
index from a keys-only cursor scan (py-lmdb ``iternext(keys=True, values=False)``) and parses
the first record to check that the values are Datum records. Records are read on demand:
by position (``db[i]``, the i-th key in LMDB's byte order, which is the order Caffe's DataLayer
reads), by key (``db.get(key)``), in key order (iteration) or in decoded batches
(``db.batches()``), sequential or shuffled, optionally sharded between processes.

How the database is opened, and what it means:

* ``readonly=True, lock=False``: no lock file is created and no reader slot is taken, so a
  database on read-only media, or one shared by many processes, opens fine. The price: a
  writer in another process cannot see this reader, so reading a database *while it is being
  written* may return records of a half-finished write, or garbage once the writer reuses
  pages this reader still looks at. Read a database that is being written with ``lock=True``
  (which needs a writable folder for ``lock.mdb``), and call ``db.refresh()`` to see new
  records.
* ``readahead=False`` (default): the OS does not read ahead on page faults, which keeps random
  access (shuffling) from reading pages it never uses. For one sequential pass over a
  database bigger than the page cache on a spinning disk, ``readahead=True`` can be faster.
* One LMDB environment per database per process: py-lmdb >= 2 refuses to open the files of an
  environment twice in one process, so every :class:`DatumDB` on the same files in a process
  shares one environment (reference-counted). A :class:`DatumDB` pickles as its path and
  options only, and reopens by itself in the process that unpickles it (``spawn`` workers).
  In a ``fork``-ed child, the environments inherited from the parent are closed (the child's
  copy of the memory map and descriptors only: the parent keeps its own) and opened afresh on
  first use; see :func:`_forked_child_cleanup` and docs/readers.md.
"""
import bisect
import os
import sys
import threading
from collections.abc import Sequence
from itertools import chain, islice
from operator import itemgetter

import lmdb
import numpy as np

from . import keys as _keyfmt
from .codec import _image_pool, decode, decode_batch, parse_datum
from .errors import DatumDecodeError, NotADatumDBError, ShapeMismatchError, _show_key
from .lmdbenv import MAX_READERS, truncation

__all__ = ["open", "DatumDB", "describe_bytes"]

_builtin_open = open
_CHANNEL_ORDERS = ("BGR", "RGB")
_LAYOUTS = ("CHW", "HWC")
_SCAN_CHUNK = 1 << 14


def _low_memory_step(n):
    """Low-memory mode (batches(reuse=True)): records gathered and decoded per call. Each
    decode_batch call copies its values into one bytes object; a quarter of the batch (at
    least 64 records, each call costing some 20 us) keeps that copy and the memoryviews of the
    values under one batch."""
    return max(64, -(-n // 4))


# ---------------------------------------------------------------------------------------------
# Paths and values that are not what they should be
# ---------------------------------------------------------------------------------------------

_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG file"), (b"\x89PNG\r\n\x1a\n", "a PNG file"),
    (b"GIF8", "a GIF file"), (b"BM", "a BMP file"), (b"II*\x00", "a TIFF file"),
    (b"MM\x00*", "a TIFF file"), (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "gzip-compressed data"), (b"PK\x03\x04", "a zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
)


def describe_bytes(value):
    """A short description of what some bytes look like (for errors about non-Datum values)."""
    value = bytes(value[:64])
    if not value:
        return "empty values"
    for magic, what in _MAGIC:
        if value.startswith(magic):
            return what
    if value.startswith(b"RIFF") and value[8:12] == b"WEBP":
        return "a WebP file"
    if value[:1] == b"\x80" and len(value) > 1 and 2 <= value[1] <= 5:
        return f"a Python pickle (protocol {value[1]})"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        kind = "JSON" if text.lstrip()[:1] in ("{", "[") else "text"
        return f"{kind} {text[:40]!r}"
    return f"binary data starting {value[:12].hex(' ')}"


def _check_path(path):
    """The LMDB folder to open, or NotADatumDBError saying what is wrong with ``path``."""
    path = os.fsdecode(os.fspath(path))
    if os.path.isfile(path):
        name = os.path.basename(path)
        if name in ("data.mdb", "lock.mdb"):
            folder = os.path.dirname(path) or "."
            raise NotADatumDBError(f"{path} is LMDB's {name} file: pass the folder that holds "
                                   f"it ({folder}), as Caffe's tools do")
        with _builtin_open(path, "rb") as f:
            head = f.read(64)
        raise NotADatumDBError(f"{path} is a file ({describe_bytes(head)}), not an LMDB folder: "
                               "Caffe's LMDBs are folders holding data.mdb")
    if not os.path.exists(path):
        raise NotADatumDBError(f"no LMDB at {path}: the folder does not exist")
    if not os.path.isdir(path):
        raise NotADatumDBError(f"{path} is not a folder")
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        entries = sorted(os.listdir(path))
        held = (f"it holds {len(entries)} entries, e.g. {', '.join(entries[:3])}" if entries
                else "it is empty")
        raise NotADatumDBError(f"{path} has no data.mdb, so it is not an LMDB folder ({held})")
    return path


def _check_first_record(path, key, value):
    """Raise NotADatumDBError when the first value is not a Datum with pixels or floats."""
    where = f"{path}: the value of key {_show_key(key)}"
    try:
        f = parse_datum(value)
    except DatumDecodeError:
        raise NotADatumDBError(f"{where} is not a Datum record: it looks like "
                               f"{describe_bytes(value)}") from None
    if f.encoded:
        if f.data is None or not f.data[1]:
            raise NotADatumDBError(f"{where} is an encoded Datum without data")
        return
    if f.data is not None and f.data[1]:
        count, what = f.data[1], "bytes of data"
    elif f.floats:
        count, what = f.float_count, "float_data values"
    else:
        raise NotADatumDBError(f"{where} is not a Datum record with pixels (it parses as "
                               f"protobuf but holds neither data nor float_data); it looks like "
                               f"{describe_bytes(value)}")
    if f.channels * f.height * f.width != count:
        raise NotADatumDBError(f"{where} is not a valid Datum: {count} {what} for a shape of "
                               f"{f.channels} x {f.height} x {f.width}; it looks like "
                               f"{describe_bytes(value)}")


# ---------------------------------------------------------------------------------------------
# One environment per database per process
# ---------------------------------------------------------------------------------------------


class _Registry:
    """The open environments of this process, keyed by the identity of their data.mdb.

    py-lmdb >= 2 keeps a process-wide set of the files of every open environment and refuses a
    second open of them (LMDB's POSIX locks belong to the (process, file) pair, so two
    environments on one file in a process would break each other). That set is inherited by a
    forked child, and py-lmdb's fork detection (a cached pid) only keeps transactions from
    being freed in the child: it does not drop the inherited environments. So the first time
    this process asks for an environment after a fork, every inherited one is closed. Closing
    in the child is safe: ``mdb_env_close`` unmaps the child's own mapping and closes the
    child's own copies of the descriptors, and with ``lock=False`` there is no reader table to
    touch (with a lock file, LMDB clears only the reader slots of ``getpid()``, and fcntl locks
    are never inherited by a child). The parent's environment is left as it was.
    """

    def __init__(self):
        # re-entrant: a DatumDB collected while this thread holds the lock (lmdb.open allocates,
        # so the garbage collector may run inside acquire) releases through it in __del__
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.envs = {}  # identity -> [env, users, flags]

    def acquire(self, path, lock, readahead):
        with self.lock:
            self._drop_inherited()
            ident = _identity(path)
            entry = self.envs.get(ident)
            if entry is not None:
                entry[1] += 1
                return entry[0], ident
            try:
                env = lmdb.open(path, readonly=True, lock=lock, readahead=readahead,
                                subdir=True, create=False,
                                max_readers=MAX_READERS if lock else 126)
            except lmdb.InvalidError as exc:
                raise NotADatumDBError(f"{path}/data.mdb is not an LMDB data file ({exc})") \
                    from exc
            except lmdb.Error as exc:
                if "already open" in str(exc):
                    raise NotADatumDBError(
                        f"{path} is already open in this process by code other than "
                        "caffe_lmdb (py-lmdb >= 2 allows one Environment per database per "
                        "process): close that Environment first") from exc
                raise NotADatumDBError(f"could not open the LMDB at {path}: {exc}") from exc
            short = truncation(env, path)
            if short is not None:  # reading a missing page would kill the process (SIGBUS)
                env.close()
                raise NotADatumDBError(short)
            self.envs[ident] = [env, 1]
            return env, ident

    def release(self, ident):
        with self.lock:
            if self.pid != os.getpid():
                return  # an inherited environment: _drop_inherited closes it
            entry = self.envs.get(ident)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self.envs[ident]
                entry[0].close()

    def _drop_inherited(self):
        if self.pid == os.getpid():
            return
        for env, _users in self.envs.values():
            env.close()
        self.envs.clear()
        self.pid = os.getpid()


def _identity(path):
    st = os.stat(os.path.join(path, "data.mdb"))
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


_REGISTRY = _Registry()


def _forked_child_cleanup():
    # A lock held by another thread at fork time stays locked forever in the child.
    _REGISTRY.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_child_cleanup)


# ---------------------------------------------------------------------------------------------
# The key index
# ---------------------------------------------------------------------------------------------


class _DenseKeys(Sequence):
    """Keys that are exactly ``%0Wd`` of start, start + 1, ...: nothing is stored."""

    __slots__ = ("width", "start", "count")

    def __init__(self, width, start, count):
        self.width, self.start, self.count = width, start, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        i = _position(i, self.count)
        return _keyfmt.index_key(self.start + i, self.width)

    def take(self, positions):
        numbers = np.asarray(positions, np.int64) + self.start
        # the digits of every key at once, as one (n, width) array of ASCII bytes
        digits = (numbers[:, None] // _powers_of_ten(self.width)) % 10 + 48
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


class _PackedKeys(Sequence):
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
        i = _position(i, len(self.ends))
        start = int(self.ends[i - 1]) if i else 0
        return self.blob[start:int(self.ends[i])]

    def take(self, positions):
        positions = np.asarray(positions, np.int64)
        ends = self.ends[positions].tolist()
        starts = np.where(positions > 0, self.ends[positions - 1], 0).tolist()
        blob = self.blob
        return [blob[a:b] for a, b in zip(starts, ends)]

    def find(self, key):
        i = bisect.bisect_left(self, key)
        return i if i < len(self.ends) and self[i] == key else None

    @property
    def nbytes(self):
        return len(self.blob) + self.ends.nbytes


def _powers_of_ten(width):
    """The place value of each digit of a ``width``-digit number, most significant first."""
    return 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)


def _position(i, n):
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"record {i} out of range: the database has {n} records")
    return i


def _scan_keys(txn):
    """Key index from a keys-only cursor scan (values are never touched)."""
    it = txn.cursor().iternext(keys=True, values=False)
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
            values = (digits - 48).astype(np.int64) @ _powers_of_ten(w)
            first = int(values[0]) if nxt is None else nxt
            if not (values == first + np.arange(len(chunk))).all():
                dense = False
                continue
            if start is None:
                start, width = first, w
            nxt = first + len(chunk)
    if not blobs:
        return _PackedKeys(b"", np.zeros(0, np.int64))
    if dense:
        return _DenseKeys(width, start, nxt - start)
    lens = np.concatenate(lengths)
    blob = b"".join(blobs)
    ends = np.cumsum(lens, dtype=np.uint32 if len(blob) < (1 << 32) else np.int64)
    return _PackedKeys(blob, ends)


class _KeysAt:
    """``keys[i]`` = key of position ``positions[i]``, computed only when asked (error messages)."""

    def __init__(self, index, positions):
        self.index, self.positions = index, positions

    def __getitem__(self, i):
        return self.index[int(self.positions[i])]


class _RangeKeys(_KeysAt):
    def __init__(self, index, start):
        super().__init__(index, None)
        self.start = start

    def __getitem__(self, i):
        return self.index[self.start + i]


# ---------------------------------------------------------------------------------------------
# Output buffers
# ---------------------------------------------------------------------------------------------


class _Recycler:
    """Arrays handed out by batches(), reused once nobody else holds them.

    An array is reused only when this pool holds its sole reference: any view of it (a slice,
    ``torch.from_numpy``, a loop variable) keeps it out of reuse. Fresh pages cost a page fault
    each, which on small records costs more than decoding them."""

    def __init__(self, keep=3):
        self.keep = keep
        self.arrays = []

    def get(self, shape, dtype, reuse=False):
        """An array of ``shape``: a recycled one (or the first rows of a larger one, for a
        short last batch), else a new one."""
        arrays = self.arrays
        for i in range(len(arrays)):
            a = arrays[i]
            if (a.shape[1:] == shape[1:] and a.shape[0] >= shape[0] and a.dtype == dtype
                    and (reuse or sys.getrefcount(arrays[i]) <= 3)):
                return a if a.shape[0] == shape[0] else a[:shape[0]]
        a = np.empty(shape, dtype)
        arrays.append(a)
        if len(arrays) > self.keep:
            del arrays[0]
        return a


# ---------------------------------------------------------------------------------------------
# DatumDB
# ---------------------------------------------------------------------------------------------


def open(path, **options):  # noqa: A001 - the package's entry point, as lmdb.open
    """Open a Caffe LMDB for reading; see :class:`DatumDB` for the options."""
    return DatumDB(path, **options)


class DatumDB:
    """A read-only Caffe LMDB of Datum records, read lazily.

    Parameters
    ----------
    path : folder of the LMDB (the one holding data.mdb).
    channel_order : ``"BGR"`` (as Caffe's OpenCV-based tools store images; the default, no
        change) or ``"RGB"`` (the channel axis of 3-channel pixel records reversed). CIFAR
        databases from convert_cifar_data already hold RGB: read them with the default.
    layout : ``"CHW"`` (Caffe's planar order, the default) or ``"HWC"``.
    dtype : output dtype; default uint8 for pixel records, float32 for float_data records.
    color : for encoded records: None decodes natively (a gray PNG gives one channel, as
        Caffe's DataLayer), True forces 3-channel BGR, False forces gray.
    readahead, lock : see the module documentation.
    """

    def __init__(self, path, *, channel_order="BGR", layout="CHW", dtype=None, color=None,
                 readahead=False, lock=False):
        if channel_order not in _CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {_CHANNEL_ORDERS}, "
                             f"not {channel_order!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, not {layout!r}")
        if color not in (None, True, False):
            raise ValueError(f"color must be None (native), True or False, not {color!r}")
        self.path = _check_path(path)
        self.options = dict(channel_order=channel_order, layout=layout,
                            dtype=None if dtype is None else np.dtype(dtype).str, color=color,
                            readahead=bool(readahead), lock=bool(lock))
        self._setup()
        self._load()

    def _setup(self):
        o = self.options
        self.channel_order, self.layout, self.color = o["channel_order"], o["layout"], o["color"]
        self.dtype = None if o["dtype"] is None else np.dtype(o["dtype"])
        self._env = self._ident = self._env_pid = None
        self._index = None
        self._expected_len = None
        self._epoch = 0
        self._encoded_shape = None  # (shape, dtype) of the last encoded batch's images
        self._recycler = _Recycler()  # image arrays
        self._label_recycler = _Recycler()
        self._scratch = {}

    # -- pickling: path and options only; reopened lazily where unpickled --------------------

    def __getstate__(self):
        return {"path": self.path, "options": self.options, "entries": len(self)}

    def __setstate__(self, state):
        self.path, self.options = state["path"], state["options"]
        self._setup()
        self._expected_len = state["entries"]

    # -- environment and index --------------------------------------------------------------

    def _environment(self):
        pid = os.getpid()
        if self._env is None or self._env_pid != pid:
            self._env, self._ident = _REGISTRY.acquire(self.path, self.options["lock"],
                                                       self.options["readahead"])
            self._env_pid = pid
        return self._env

    @property
    def env(self):
        """This process's py-lmdb Environment of the database (read-only, shared by every
        DatumDB on these files: do not close it). For raw access beside the reader, since
        py-lmdb >= 2 refuses a second ``lmdb.open`` of the same files in a process."""
        return self._environment()

    def _load(self):
        with self._txn(buffers=False) as txn:  # refresh() after a writer grew the map, too
            index = _scan_keys(txn)
            if len(index):
                key = index[0]
                _check_first_record(self.path, key, txn.get(key))
        if self._expected_len is not None and len(index) != self._expected_len:
            raise NotADatumDBError(
                f"{self.path} changed since it was opened: it had {self._expected_len} records "
                f"in the process that pickled it, {len(index)} now")
        self._index = index

    def _keys(self):
        if self._index is None:
            self._load()
        return self._index

    def refresh(self):
        """Rebuild the key index (after records were added by a writer)."""
        self._expected_len = None
        self._load()

    def close(self):
        """Release this process's environment (shared with other DatumDBs on the same files)."""
        if self._env is not None and self._env_pid == os.getpid():
            _REGISTRY.release(self._ident)
        self._env = self._ident = self._env_pid = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _txn(self, buffers=True):
        env = self._environment()
        try:
            return env.begin(buffers=buffers)
        except lmdb.MapResizedError:  # a writer grew the map since it was opened (lock=True)
            env.set_mapsize(0)
            return env.begin(buffers=buffers)

    # -- the sequence of records ------------------------------------------------------------

    def __len__(self):
        return len(self._keys())

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items()
                         if v != _DEFAULTS[k])
        return f"DatumDB({self.path!r}{', ' + opts if opts else ''}) with {len(self)} records"

    def keys(self):
        """The keys in LMDB order (a read-only sequence of bytes; nothing is copied)."""
        return self._keys()

    def index(self, key):
        """Position of ``key`` (str or bytes) in key order; KeyError when absent."""
        key = _as_key(key)
        i = self._keys().find(key)
        if i is None:
            raise KeyError(f"no record with key {_show_key(key)} in {self.path}")
        return i

    def __getitem__(self, i):
        """``(image, label)`` of the i-th record in key order (negative i counts from the end).

        A slice or a list of positions gives ``(images, labels)`` batch arrays (see
        :meth:`read`)."""
        if isinstance(i, slice):
            return self.read(range(*i.indices(len(self))))
        if isinstance(i, (list, tuple, np.ndarray, range)):
            return self.read(i)
        index = self._keys()
        key = index[_position(i, len(index))]
        return self._get(key, missing=lambda: _changed(self.path, key))

    def get(self, key, default=None):
        """``(image, label)`` of the record with this key (str or bytes), or ``default``."""
        return self._get(_as_key(key), missing=lambda: default)

    def _get(self, key, missing):
        with self._txn() as txn:
            value = txn.get(key)
            if value is None:
                return missing()
            arr, label = self._decode_one(value, key)
        return arr, label

    def _decode_one(self, value, key):
        try:
            arr, label = decode(value, self.color)
        except DatumDecodeError as exc:
            raise DatumDecodeError(str(exc), key) from exc
        pixels = arr.dtype == np.uint8
        shape = arr.shape if self.layout == "CHW" else arr.shape[1:] + arr.shape[:1]
        out = np.empty(shape, self.dtype or arr.dtype)
        self._arrange(arr[None], out[None], pixels)
        return out, int(label)

    def __iter__(self):
        """``(image, label)`` for every record in key order (records may differ in shape)."""
        for _key, image, label in self.items():
            yield image, label

    def items(self):
        """``(key, image, label)`` for every record in key order."""
        index = self._keys()
        n = len(index)
        for start in range(0, n, 256):
            stop = min(n, start + 256)
            with self._txn() as txn:
                values = self._gather_range(txn, start, stop - start)
                decoded = [self._decode_one(v, index[start + j]) for j, v in enumerate(values)]
            for j, (image, label) in enumerate(decoded):
                yield index[start + j], image, label

    # -- batches ------------------------------------------------------------------------------

    def read(self, positions):
        """``(images, labels)`` of the records at these positions, in the order given.

        Values are fetched in key order inside one read transaction (LMDB pages in order) and
        decoded into new arrays; all records must have one shape."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        n = len(self)
        if len(positions) and (positions.min() < -n or positions.max() >= n):
            bad = positions[(positions < -n) | (positions >= n)][0]
            raise IndexError(f"record {bad} out of range: the database has {n} records")
        positions = np.where(positions < 0, positions + n, positions)
        if not len(positions):
            raise ValueError("read() needs at least one position")
        return self._read_positions(positions, fresh=True)

    def batches(self, batch_size, shuffle=False, seed=None, drop_last=False, shard=None,
                epoch=None, reuse=False):
        """Yield ``(images, labels)``: (N, C, H, W) (or (N, H, W, C)) arrays and (N,) int64.

        * ``shuffle=False``: key order (Caffe's order); each batch is one cursor run.
        * ``shuffle=True``: a permutation of the positions per epoch, from
          ``numpy.random.default_rng([seed, epoch])``. ``epoch`` defaults to a counter of
          this object's shuffled passes, so successive calls give successive epochs; a fixed
          ``seed`` makes every epoch reproducible (seed None: a fresh random permutation).
          A batch's values are read in key order and put back in permutation order.
        * ``shard=(rank, world_size)``: this process's share of the (permuted) positions:
          the rank-th of ``world_size`` contiguous slices, so that the shares of all ranks
          are disjoint and cover every record once per epoch (their sizes differ by at most
          one). Shuffled sharding needs a ``seed`` shared by all ranks.
        * ``drop_last``: leave out the last batch when it is short.
        * ``reuse=False``: each batch is new to its consumer, but its arrays are recycled
          once nothing refers to them any more (fresh memory costs a page fault per 4 KiB,
          more than decoding small records). ``reuse=True`` refills the same arrays for every
          batch, so a batch is valid only until the next one is asked for; it is the
          low-memory mode (about 1.5 x one batch at the peak, see docs/readers.md).

        All records of a batch must have one shape (else ShapeMismatchError naming the
        first record that differs). Encoded records are decoded on a thread per core.
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        n = len(self)
        positions = None
        if shuffle:
            if shard is not None and seed is None:
                raise ValueError("shuffle with shard needs a seed: every rank must draw the "
                                 "same permutation for the shares to be disjoint")
            if epoch is None:
                epoch = self._epoch
                self._epoch += 1
            rng = np.random.default_rng(None if seed is None else [int(seed), int(epoch)])
            positions = rng.permutation(n)
        lo, hi = 0, n
        if shard is not None:
            rank, world = (int(v) for v in shard)
            if world < 1 or not 0 <= rank < world:
                raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < "
                                 f"world_size, not {shard!r}")
            lo, hi = rank * n // world, (rank + 1) * n // world
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            if drop_last and stop - start < batch_size:
                break
            if positions is None:
                yield self._read_range(start, stop - start, reuse)
            else:
                yield self._read_positions(positions[start:stop], fresh=False, reuse=reuse)

    def _read_range(self, start, count, reuse=False):
        keys = _RangeKeys(self._keys(), start)
        with self._txn() as txn:
            if not reuse:
                chunks = [self._gather_range(txn, start, count)]
            else:  # low-memory mode: gather and decode a third of the batch at a time
                chunks = self._gather_chunks(txn, start, count, _low_memory_step(count))
            return self._decode_values(chunks, keys, count, fresh=False, reuse=reuse)

    def _read_positions(self, positions, fresh, reuse=False):
        index = self._keys()
        order = np.argsort(positions, kind="stable")
        keys = index.take(positions[order])
        with self._txn() as txn:
            found = list(map(txn.get, keys))  # read in key order (LMDB's pages in order)
            if None in found:
                _changed(self.path, keys[found.index(None)])
            # and put in the order asked: values[j] = found[inverse[j]]
            inverse = np.empty(len(order), np.intp)
            inverse[order] = np.arange(len(order))
            values = [found[0]] if len(found) == 1 else \
                list(itemgetter(*inverse.tolist())(found))
            step = _low_memory_step(len(values)) if reuse else len(values)
            chunks = [values[a:a + step] for a in range(0, len(values), step)]
            return self._decode_values(chunks, _KeysAt(index, positions), len(values),
                                       fresh=fresh, reuse=reuse)

    def _gather_chunks(self, txn, start, count, step):
        """Like _gather_range, as successive lists of at most ``step`` values."""
        index = self._keys()
        cursor = txn.cursor()
        first = index[start]
        if not cursor.set_key(first):
            _changed(self.path, first)
        it = cursor.iternext(keys=False, values=True)
        for a in range(0, count, step):
            values = list(islice(it, min(step, count - a)))
            if len(values) != min(step, count - a):
                _changed(self.path, first)
            yield values

    def _gather_range(self, txn, start, count):
        """The values of positions start .. start + count - 1: one cursor run."""
        return next(self._gather_chunks(txn, start, count, count))

    def _value_chunks(self, chunk=1024, start=0, stop=None):
        """Yield ``(start_position, values)`` in key order; the values are memoryviews that
        are valid only until the next chunk is asked for (for this package's scanners)."""
        n = len(self)
        stop = n if stop is None else min(stop, n)
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            with self._txn() as txn:
                yield a, self._gather_range(txn, a, b - a)

    # -- decoding into the requested layout ---------------------------------------------------

    def _probe(self, value, key):
        """(shape, dtype, is_pixels, encoded) of a record without decoding it (the shape of an
        encoded record is None: only decoding tells)."""
        try:
            f = parse_datum(value)
        except DatumDecodeError as exc:
            raise DatumDecodeError(str(exc), key) from exc
        if f.encoded:
            return None, np.dtype(np.uint8), True, True
        shape = (f.channels, f.height, f.width)
        if f.data is not None and f.data[1]:
            return shape, np.dtype(np.uint8), True, False
        return shape, np.dtype(np.float32), False, False

    def _outputs(self, n, shape, native, fresh, reuse):
        out_shape = (n,) + (shape if self.layout == "CHW" else shape[1:] + shape[:1])
        dtype = self.dtype or native
        if fresh:
            return np.empty(out_shape, dtype), np.empty(n, np.int64)
        return (self._recycler.get(out_shape, dtype, reuse),
                self._label_recycler.get((n,), np.dtype(np.int64), reuse))

    def _decode_values(self, chunks, keys, n, fresh, reuse=False):
        """Decode ``n`` records, given as successive lists of values (one decode_batch call
        each), into one batch."""
        chunks = iter(chunks)
        first = next(chunks)
        shape, native, pixels, encoded = self._probe(first[0], keys[0])
        if encoded:
            values = first + [v for chunk in chunks for v in chunk]
            return self._decode_encoded(values, keys, fresh, reuse)
        images, labels = self._outputs(n, shape, native, fresh, reuse)
        direct = self.layout == "CHW" and not (pixels and self._flip(shape))
        a = 0
        for values in chain([first], chunks):
            b = a + len(values)
            if a:
                here = self._probe(values[0], keys[a])[0]
                if here != shape:
                    raise ShapeMismatchError(
                        f"record {_show_key(keys[a])} has shape {here}, but the batch's first "
                        f"record ({_show_key(keys[0])}) has {shape}")
            target = images[a:b] if direct else self._scratch_for((b - a,) + shape, native)
            decode_batch(values, out=target, labels_out=labels[a:b], color=self.color,
                         keys=_Shifted(keys, a))
            if not direct:
                self._arrange(target, images[a:b], pixels)
            a = b
        return images, labels

    def _decode_image(self, value, key):
        try:
            return decode(value, self.color)
        except DatumDecodeError as exc:
            raise DatumDecodeError(str(exc), key) from exc

    def _decode_encoded(self, values, keys, fresh, reuse):
        """Encoded records: each image decoded on a thread per core and written by that thread
        straight into its slot of the batch, in the requested layout (a CHW slot is filled
        with cv2.split, some 10x faster than NumPy's transposing copy). The batch is allocated
        with the shape of the previous batch's images; the first batch (or one whose images
        changed shape) decodes its first image alone to learn it."""
        guess = self._encoded_shape
        if guess is not None:
            result = self._decode_encoded_as(values, keys, fresh, reuse, guess, 0)
            if result is not None:
                return result
        first, label = self._decode_image(values[0], keys[0])
        self._encoded_shape = (first.shape, first.dtype)
        images, labels = self._decode_encoded_as(values, keys, fresh, reuse,
                                                 self._encoded_shape, 1)
        self._place(first, images[0])
        labels[0] = label
        return images, labels

    def _decode_encoded_as(self, values, keys, fresh, reuse, guess, start):
        """Decode values[start:] into a batch of images of shape ``guess``; None when the
        first image is not of that shape (the caller starts over)."""
        shape, dtype = guess
        images, labels = self._outputs(len(values), shape, dtype, fresh, reuse)

        def work(j):
            try:
                arr, label = self._decode_image(values[j], keys[j])
            except DatumDecodeError as exc:
                return exc
            if arr.shape != shape or arr.dtype != dtype:
                return _Mismatch(j, arr)
            self._place(arr, images[j])
            labels[j] = label
            return None

        def work_range(span):
            for j in range(*span):
                error = work(j)
                if error is not None:
                    return error
            return None

        pool = _image_pool()
        step = -(-(len(values) - start) // (2 * (os.cpu_count() or 1))) or 1
        spans = [(a, min(a + step, len(values))) for a in range(start, len(values), step)]
        for error in pool.map(work_range, spans):
            if isinstance(error, _Mismatch):
                if error.index == 0:
                    return None
                raise ShapeMismatchError(
                    f"record {_show_key(keys[error.index])} decodes to shape "
                    f"{error.array.shape} ({error.array.dtype}), but the batch's first record "
                    f"({_show_key(keys[0])}) has {shape} ({dtype})")
            if error is not None:
                raise error
        return images, labels

    def _place(self, chw, dest):
        """Write one decoded (C, H, W) image (a view of OpenCV's H x W x C array) into its
        slot of the batch, in the requested channel order, layout and dtype."""
        c = chw.shape[0]
        flip = c == 3 and self.channel_order == "RGB"
        if dest.dtype == chw.dtype and c > 1:
            hwc = chw.transpose(1, 2, 0)
            if self.layout == "CHW" and hwc.flags.c_contiguous:
                planes = [dest[i] for i in (range(c - 1, -1, -1) if flip else range(c))]
                cv2 = _cv2()
                cv2.split(hwc, planes)
                return
            if self.layout == "HWC":
                dest[...] = hwc[:, :, ::-1] if flip else hwc
                return
        src = chw[::-1] if flip else chw
        dest[...] = src if self.layout == "CHW" else src.transpose(1, 2, 0)

    def _flip(self, shape):
        return self.channel_order == "RGB" and shape[0] == 3

    def _arrange(self, src, dest, pixels):
        """Copy a (N, C, H, W) batch into dest in the requested channel order and layout."""
        if pixels and self._flip(src.shape[1:]):
            src = src[:, ::-1]
        if self.layout == "HWC":
            src = src.transpose(0, 2, 3, 1)
        dest[...] = src

    def _scratch_for(self, shape, dtype):
        a = self._scratch.get((shape, dtype))
        if a is None:
            self._scratch.clear()
            a = self._scratch[(shape, dtype)] = np.empty(shape, dtype)
        return a


_DEFAULTS = dict(channel_order="BGR", layout="CHW", dtype=None, color=None, readahead=False,
                 lock=False)


class _Mismatch:
    def __init__(self, index, array):
        self.index, self.array = index, array


class _Shifted:
    def __init__(self, keys, offset):
        self.keys, self.offset = keys, offset

    def __getitem__(self, i):
        return self.keys[self.offset + i]


def _cv2():
    import cv2  # only encoded records need OpenCV

    return cv2


def _as_key(key):
    if isinstance(key, str):
        return key.encode("utf-8")
    return bytes(key)


def _changed(path, key):
    raise NotADatumDBError(f"{path}: record {_show_key(key)} of the key index is gone: the "
                           "database was modified after it was opened (call refresh())")
