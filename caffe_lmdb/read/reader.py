"""Lazy, read-only access to a Caffe database of Datum records: :class:`DatumDB`.

``caffe_lmdb.open(path)`` returns a :class:`DatumDB`. Opening reads no values: it builds a key
index (:mod:`~caffe_lmdb.read.keyindex`) from a keys-only scan and parses the first record to
check that the values are Datum records. Records are read on demand: by position (``db[i]``,
the i-th key in byte order, which is the order Caffe's DataLayer reads), by key
(``db.get(key)``), in key order (iteration) or in decoded batches (``db.batches()``),
sequential or shuffled, optionally sharded between processes. Decoding goes through the
package's one batch decoder (:class:`~caffe_lmdb.format.batch.BatchDecoder`); storage through
the engine interface (:mod:`caffe_lmdb.storage`).

How the database is opened, and what it means:

* ``lock=False`` (default): no lock file is created and no reader slot is taken, so a
  database on read-only media, or one shared by many processes, opens fine. The price: a
  writer in another process cannot see this reader, so reading a database *while it is being
  written* may return records of a half-finished write, or garbage once the writer reuses
  pages this reader still looks at. Read a database that is being written with ``lock=True``
  (which needs a writable folder for ``lock.mdb``), and call ``db.refresh()`` to see new
  records.
* ``readahead=False`` (default): the OS does not read ahead on page faults, which keeps random
  access (shuffling) from reading pages it never uses. For one sequential pass over a
  database bigger than the page cache on a spinning disk, ``readahead=True`` can be faster.
* One environment per database per process (see :mod:`caffe_lmdb.storage.lmdb`). A
  :class:`DatumDB` pickles as its path and options only, and reopens by itself in the process
  that unpickles it (``spawn`` workers); in a ``fork``-ed child it reopens on first use.
* LevelDB (Caffe's other backend, detected from the folder's files or forced with
  ``backend=``): read in the opening process through snapshots. LevelDB admits one process and
  writes its folder even to read it, so other processes (DataLoader workers) and read-only
  folders are served by an LMDB cache of it, made once (see docs/leveldb.md and
  :meth:`DatumDB.use_lmdb_cache`).
"""
from __future__ import annotations

import builtins
import contextlib
import os
import sys
import threading
from itertools import islice
from operator import itemgetter

import numpy as np

from ..errors import DatumDecodeError, NotADatumDBError, ShapeMismatchError, show_key
from ..format.annotated import boxes_to_pixels, is_annotated, parse_annotated, unwrap_datum
from ..format.batch import (
    MIXED_SHAPES_FIX,
    BatchDecoder,
    JoinedValues,
    ValueJoiner,
    record_shape,
)
from ..format.datum import decode, parse_datum
from ..format.sniff import describe_bytes
from ..storage.base import backend_name, detect_backend, open_reader
from .keyindex import DenseKeys, KeysAt, RangeKeys, check_prefix, position, probe_dense, scan_keys

__all__ = ["open", "as_db", "DatumDB"]

#: sequential passes read values from the database file's pages (no cursor) when the records
#: are raw or float records of at most this size: larger ones and encoded images are decoded
#: one by one, and a run of the cursor costs less than the page reader's fixed cost per run of
#: values (measured: 5,000 3x256x256 records, 244 vs 201 ms a pass)
_MAPPED_VALUE = 1 << 16

#: values up to this size are read as bytes objects, not as buffers into the map: for small
#: records creating a bytes object costs less than py-lmdb's buffer object
_SMALL_VALUE = 16 << 10
#: bytes of records a sequential pass decodes at once (see DatumDB._block_batches)
_BLOCK_BYTES = 2 << 20


def _low_memory_step(n):
    """Low-memory mode (batches(reuse=True)): records gathered and decoded per call. Each
    decode call copies its values into one bytes object; a quarter of the batch (at least 64
    records, as each call has a fixed cost) keeps that copy and the memoryviews of the values
    under one batch."""
    return max(64, -(-n // 4))


def _check_path(path, backend=None):
    """``(folder, backend)`` of the database to open, or NotADatumDBError saying what is wrong
    with ``path``."""
    path = os.fsdecode(os.fspath(path))
    if os.path.isfile(path):
        name = os.path.basename(path)
        if name in ("data.mdb", "lock.mdb"):
            folder = os.path.dirname(path) or "."
            raise NotADatumDBError(f"{path} is LMDB's {name} file: pass the folder that holds "
                                   f"it ({folder}), as Caffe's tools do")
        with builtins.open(path, "rb") as f:
            head = f.read(64)
        raise NotADatumDBError(f"{path} is a file ({describe_bytes(head)}), not an LMDB folder: "
                               "Caffe's LMDBs are folders holding data.mdb (and its LevelDBs "
                               "folders holding CURRENT, MANIFEST-* and table files)")
    if not os.path.exists(path):
        raise NotADatumDBError(f"no LMDB or LevelDB at {path}: the folder does not exist")
    if not os.path.isdir(path):
        raise NotADatumDBError(f"{path} is not a folder")
    backend = backend_name(backend)
    try:
        found = detect_backend(path)
    except NotADatumDBError:
        if backend is None:
            raise
        found = backend  # forced: the engine says what is wrong
    if backend is not None and found != backend:
        kinds = {"lmdb": "an LMDB (data.mdb)", "leveldb": "a LevelDB (CURRENT, MANIFEST-*)"}
        raise NotADatumDBError(f"{path} holds {kinds[found]}, not {kinds[backend]}: drop "
                               f"backend={backend!r} (--backend) or pass {found!r}")
    return path, found


def _check_first_record(path, key, value):
    """Raise NotADatumDBError when the first value is not a Datum with pixels or floats;
    else return whether it is encoded."""
    where = f"{path}: the value of key {show_key(key)}"
    try:
        f = parse_datum(value)
    except DatumDecodeError:
        raise NotADatumDBError(f"{where} is not a Datum record: it looks like "
                               f"{describe_bytes(value)} (raw pixel arrays, such as "
                               "cv2.imread(path).tobytes()? caffe-lmdb import-raw turns them "
                               "into Datum records)") from None
    if f.encoded:
        if f.data is None or not f.data[1]:
            raise NotADatumDBError(f"{where} is an encoded Datum without data")
        return True
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
    return False


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


def check_structure(path):
    """The problems of the database file's structure (pages, counts, free list), one line
    each, from the storage engine's offline checker (py-lmdb >= 3 for LMDB); None where the
    engine has none. Reads the file without handing it to the engine, so it works on damaged
    files."""
    from ..storage.lmdb import structural_problems

    folder, backend = _check_path(path)
    return structural_problems(folder) if backend == "lmdb" else None


def open(path, **options):  # noqa: A001 - the package's entry point, as lmdb.open
    """Open a Caffe database for reading; see :class:`DatumDB` for the options."""
    return DatumDB(path, **options)


def as_db(source, **options):
    """``source`` itself when it is a :class:`DatumDB`, else the database at that path."""
    return source if isinstance(source, DatumDB) else DatumDB(source, **options)


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
    readahead, lock : see the module documentation (LMDB only).
    backend : ``"lmdb"`` or ``"leveldb"`` (any case, as Caffe's ``--backend``); default:
        detected from the folder's files.
    cache : LevelDB only: None (default) reads the LevelDB itself, except a read-only folder,
        which is read through an LMDB cache in the default cache folder
        (``$CAFFE_LMDB_CACHE``, else ``~/.cache/caffe_lmdb``); True always reads through the
        cache; a path: the cache folder to use; False: never (a read-only folder fails).
    """

    def __init__(self, path, *, channel_order="BGR", layout="CHW", dtype=None, color=None,
                 readahead=False, lock=False, backend=None, cache=None):
        BatchDecoder(layout=layout, channel_order=channel_order, dtype=dtype, color=color)
        self.path, self._backend = _check_path(path, backend)
        if cache not in (None, True, False):
            cache = os.fsdecode(os.fspath(cache))
        self.options = dict(channel_order=channel_order, layout=layout,
                            dtype=None if dtype is None else np.dtype(dtype).str, color=color,
                            readahead=bool(readahead), lock=bool(lock),
                            backend=backend_name(backend), cache=cache)
        self._setup()
        self._load()

    def _setup(self, cache_path=None):
        o = self.options
        self.channel_order, self.layout, self.color = o["channel_order"], o["layout"], o["color"]
        self.dtype = None if o["dtype"] is None else np.dtype(o["dtype"])
        self._cache_path = cache_path
        self._store = self._open_store()
        self._index = None
        self._kind = None
        self._small = True
        self._first = (0, False)  # (value size, encoded) of the first record
        self._expected_len = None
        self._epoch = 0
        self._decoder = BatchDecoder(layout=self.layout, channel_order=self.channel_order,
                                     dtype=self.dtype, color=self.color)
        self._recycler = _Recycler()  # image arrays
        self._label_recycler = _Recycler()
        self._block_recyclers = (_Recycler(), _Recycler())  # blocks of batches (_blocks)
        self._local = threading.local()  # a ValueJoiner per thread (see _joiner)

    # -- pickling: path and options only; reopened lazily where unpickled --------------------

    def _open_store(self):
        o = self.options
        if self._backend == "leveldb":
            from ..storage.leveldb import is_read_only, lmdb_cache  # (not for an LMDB)

            if self._cache_path is None and o["cache"] is not False and (
                    o["cache"] is not None or is_read_only(self.path)):
                self._cache_path = lmdb_cache(self.path, self._cache_folder())
            if self._cache_path is not None:
                return open_reader(self._cache_path, "lmdb", readahead=o["readahead"])
            if is_read_only(self.path):
                raise NotADatumDBError(f"{self.path} is a read-only LevelDB folder, which LevelDB "
                                       "cannot open (it writes even to read): open it with "
                                       "cache=True (or the default cache=None)")
        return open_reader(self.path, self._backend, lock=o["lock"], readahead=o["readahead"])

    def _cache_folder(self):
        cache = self.options["cache"]
        return cache if isinstance(cache, str) else None

    def use_lmdb_cache(self, folder=None):
        """Read a LevelDB through its LMDB cache from now on (made now unless it exists), and
        release the LevelDB; returns the cache's path (None for an LMDB: nothing to do).

        The cache is what other processes read (LevelDB admits one): ``DatumDataset`` calls
        this, and so does pickling. ``folder``: the cache folder (default: the ``cache``
        option's, else ``$CAFFE_LMDB_CACHE``, else ``~/.cache/caffe_lmdb``)."""
        if self._backend != "leveldb":
            return None
        if folder is not None:
            self.options["cache"] = os.fsdecode(os.fspath(folder))
        elif self.options["cache"] in (None, False):
            self.options["cache"] = True
        if self._cache_path is None:
            self._cache_path = self._make_cache()
            store, self._store = self._store, open_reader(self._cache_path, "lmdb",
                                                          readahead=self.options["readahead"])
            store.close()
        return self._cache_path

    def _make_cache(self):
        """The LMDB cache of this LevelDB, made from this process's snapshot when missing."""
        if self._cache_path is not None:
            return self._cache_path
        from ..storage.leveldb import lmdb_cache

        return lmdb_cache(self.path, self._cache_folder(), reader=self._store)

    @property
    def cache_path(self):
        """The LMDB cache this LevelDB is read through, or None (read directly, or an LMDB)."""
        return self._cache_path

    def __getstate__(self):
        # a LevelDB serves the process that opened it only: the unpickled copy reads the cache
        cache = self._make_cache() if self._backend == "leveldb" else None
        return {"path": self.path, "options": self.options, "entries": len(self),
                "backend": self._backend, "cache_path": cache}

    def __setstate__(self, state):
        self.path, self.options = state["path"], state["options"]
        self._backend = state.get("backend", "lmdb")
        self._setup(state.get("cache_path"))
        self._expected_len = state["entries"]

    # -- environment and index --------------------------------------------------------------

    @property
    def env(self):
        """This process's py-lmdb Environment of the database (read-only, shared by every
        DatumDB on these files: do not close it). For raw access beside the reader, since
        py-lmdb >= 2 refuses a second ``lmdb.open`` of the same files in a process. An LMDB
        only (a LevelDB read through its cache: the cache's); use :meth:`begin` otherwise."""
        env = getattr(self._store, "env", None)
        if env is None:
            raise NotADatumDBError(f"{self.path} is a LevelDB: it has no LMDB environment; use "
                                   "db.begin() for raw reads")
        return env

    @property
    def backend(self):
        """The storage engine of the database: ``"lmdb"`` or ``"leveldb"`` (also when read
        through its LMDB cache, see :attr:`cache_path`)."""
        return self._backend

    def disk_usage(self):
        """``(bytes of the database's files, bytes in use)`` (the source's files for a LevelDB
        read through its cache)."""
        if self._cache_path is not None:
            from ..storage.leveldb import folder_bytes

            size = folder_bytes(self.path)
            return size, size
        return self._store.disk_usage()

    @property
    def data_format(self):
        """The file format, e.g. ``"LMDB 0.9"`` (Caffe's) or ``"LMDB 1.0"`` (which Caffe
        cannot open); None where the engine has one format only."""
        get = getattr(self._store, "data_format", None)
        return get() if get is not None else None

    def begin(self, buffers=True):
        """A read view of the database (:class:`~caffe_lmdb.storage.base.ReadTxn`: ``get``,
        ``iter_keys``, ``iter_values``), to use as a context manager."""
        return self._store.begin(buffers=buffers)

    def _load(self):
        with self.begin(buffers=False) as txn:  # refresh() after a writer grew the map, too
            # keys %0Nd of a run: O(log n), checked as positions are used (see keyindex)
            index = probe_dense(txn) or scan_keys(txn)
            kind = "datum"
            if len(index):
                key = index[0]
                value = txn.get(key)
                self._small = len(value) <= _SMALL_VALUE
                if is_annotated(value):  # SSD-Caffe's AnnotatedDatum: check its Datum
                    kind = "annotated"
                    try:
                        value = unwrap_datum(value)
                    except DatumDecodeError as exc:
                        raise NotADatumDBError(f"{self.path}: the value of key {show_key(key)} "
                                               f"is not a Datum nor an AnnotatedDatum ({exc}); "
                                               f"it looks like {describe_bytes(value)}") from None
                encoded = _check_first_record(self.path, key, value)
                self._first = (len(value), encoded)
        if self._expected_len is not None and len(index) != self._expected_len:
            raise NotADatumDBError(
                f"{self.path} changed since it was opened: it had {self._expected_len} records "
                f"in the process that pickled it, {len(index)} now")
        self._index = index
        self._kind = kind

    @property
    def kind(self):
        """``"datum"`` (Caffe's Datum records) or ``"annotated"`` (SSD-Caffe's AnnotatedDatum:
        a Datum plus boxes, see :meth:`boxes`), from the first record."""
        if self._kind is None:
            self._load()
        return self._kind

    def _inner(self, values):
        """The Datum of each value (AnnotatedDatum records are unwrapped, without a copy)."""
        if self.kind != "annotated":
            return values
        return [unwrap_datum(v) if v[:1] == b"\x0a" else v for v in values]

    def _unchecked(self):
        """The key index, possibly a presumed dense run whose positions from
        ``index.checked`` on are not checked yet: for the sequential readers, which check the
        keys they read (see _gather_chunks) and for the length (LMDB's own count)."""
        if self._index is None:
            self._load()
        return self._index

    def _keys(self, stop=None):
        """The key index, every position before ``stop`` (default: all) checked."""
        index = self._unchecked()
        if isinstance(index, DenseKeys) and index.checked < (stop or index.count):
            with self.begin(buffers=False) as txn:
                if not check_prefix(txn, index, stop or index.count):
                    index = self._rescan(txn, index)
        return index

    def _rescan(self, txn, presumed):
        """The presumed dense index was wrong: the full scan's index replaces it."""
        index = scan_keys(txn)
        if len(index) != len(presumed):
            raise NotADatumDBError(f"{self.path} changed since it was opened: {len(presumed)} "
                                   f"records then, {len(index)} now (call refresh())")
        self._index = index
        return index


    def refresh(self):
        """Rebuild the key index (after records were added by a writer)."""
        self._expected_len = None
        self._load()

    def close(self):
        """Release this process's environment (shared with other DatumDBs on the same files)."""
        self._store.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the sequence of records ------------------------------------------------------------

    def __len__(self):
        return len(self._unchecked())  # LMDB's count: exact, checked keys or not

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items()
                         if v != _DEFAULTS[k])
        return f"DatumDB({self.path!r}{', ' + opts if opts else ''}) with {len(self)} records"

    def keys(self):
        """The keys in key order: the key index, a read-only sequence of bytes with
        ``take(positions)`` (the keys of many positions at once) and ``find(key)`` (a position
        or None). Nothing is copied."""
        return self._keys()

    def index(self, key):
        """Position of ``key`` (str or bytes) in key order; KeyError when absent."""
        key = _as_key(key)
        i = self._keys().find(key)
        if i is None:
            raise KeyError(f"no record with key {show_key(key)} in {self.path}")
        return i

    def __getitem__(self, i):
        """``(image, label)`` of the i-th record in key order (negative i counts from the end).

        A slice or a list of positions gives ``(images, labels)`` batch arrays (see
        :meth:`read`)."""
        if isinstance(i, slice):
            return self.read(range(*i.indices(len(self))))
        if isinstance(i, (list, tuple, np.ndarray, range)):
            return self.read(i)
        if isinstance(i, (str, bytes, bytearray)):
            raise TypeError(f"db[...] takes a position (an int); for the record with key "
                            f"{show_key(i)} use db.get({i!r}) (or db.index(key) for its "
                            "position)")
        i = position(i, len(self))
        key = self._keys(i + 1)[i]
        return self._get(key, missing=lambda: _changed(self.path, key))

    def get(self, key, default=None):
        """``(image, label)`` of the record with this key (str or bytes), or ``default``."""
        return self._get(_as_key(key), missing=lambda: default)

    def _get(self, key, missing):
        with self.begin() as txn:
            value = txn.get(key)
            if value is None:
                return missing()
            arr, label = self._decode_one(self._inner([value])[0], key)
        return arr, label

    def _decode_one(self, value, key):
        return self._decoder.decode_one(value, key)

    def __iter__(self):
        """``(image, label)`` for every record in key order (records may differ in shape)."""
        for _key, image, label in self.items():
            yield image, label

    def items(self):
        """``(key, image, label)`` for every record in key order."""
        n = len(self)
        follow = _Follow()
        for start in range(0, n, 256):
            stop = min(n, start + 256)
            with self.begin(buffers=not self._small) as txn:
                values = self._gather_range(txn, start, stop - start, follow)
                index = self._keys(stop)  # the keys themselves, checked up to stop
                decoded = [self._decode_one(v, index[start + j]) for j, v in enumerate(values)]
            for j, (image, label) in enumerate(decoded):
                yield index[start + j], image, label

    # -- batches ------------------------------------------------------------------------------

    def read(self, positions, transform=None, boxes=False, pixels=False):
        """``(images, labels)`` of the records at these positions, in the order given.

        Values are fetched in key order inside one read transaction (LMDB pages in order) and
        decoded into new arrays; all records must have one shape, or ``transform`` (applied to
        each record before they are stacked, see :meth:`batches`) must give them one.
        ``boxes=True`` (AnnotatedDatum databases): ``(images, labels, boxes)`` as in
        :meth:`batches`, the boxes moved with the images by a :class:`caffe_lmdb.Transform`."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        n = len(self)
        if len(positions) and (positions.min() < -n or positions.max() >= n):
            bad = positions[(positions < -n) | (positions >= n)][0]
            raise IndexError(f"record {bad} out of range: the database has {n} records")
        positions = np.where(positions < 0, positions + n, positions)
        if not len(positions):
            raise ValueError("read() needs at least one position")
        if boxes:
            moved = self._boxes_transform(transform)
            batch = self._read_positions(positions, fresh=True, transform=moved)
            return (*batch, self._moved_boxes(moved, positions, pixels))
        return self._read_positions(positions, fresh=True, transform=transform)

    def batches(self, batch_size, shuffle=False, seed=None, drop_last=False, shard=None,
                epoch=None, reuse=False, boxes=False, pixels=False, transform=None):
        """Yield ``(images, labels)``: (N, C, H, W) (or (N, H, W, C)) arrays and (N,) int64.

        * ``boxes=True`` (AnnotatedDatum databases): ``(images, labels, boxes)``, boxes a list
          of each image's box rows (see :meth:`boxes`; in pixels with ``pixels=True``). With a
          :class:`caffe_lmdb.Transform` the boxes are cropped and mirrored with their image (as
          SSD-Caffe's transformer does; pixels are then those of the transformed image); any
          other callable ``transform`` is refused (it cannot move the boxes).

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

        * ``transform``: applied to each record before the batch is stacked, so records may
          differ in size when it makes them one (a crop). A :class:`caffe_lmdb.Transform`
          (Caffe's transform_param) decodes and transforms on a thread per core into one
          float32 batch; any other callable gets each image as ``db[i]`` gives it, in order.

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
        if boxes:
            transform = self._boxes_transform(transform)
        if (positions is None and not reuse and transform is None and not boxes
                and self.kind == "datum" and self._block_batches(batch_size) > 1):
            yield from self._blocks(lo, hi, batch_size, drop_last)
            return
        follow = _Follow(lo)  # sequential: each batch's run goes on from the last one's key
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            if drop_last and stop - start < batch_size:
                break
            if positions is None:
                batch = self._read_range(start, stop - start, reuse, transform, follow)
            else:
                batch = self._read_positions(positions[start:stop], fresh=False, reuse=reuse,
                                             transform=transform)
            if boxes:
                at = np.arange(start, stop) if positions is None else positions[start:stop]
                batch = (*batch, self._moved_boxes(transform, at, pixels))
            yield batch

    # -- boxes of AnnotatedDatum records --------------------------------------------------------

    def boxes(self, i, pixels=False):
        """The boxes of record ``i`` (a position, or a key as str or bytes) of an AnnotatedDatum
        database: an (N, 7) float64 array of rows ``group_label, instance_id, xmin, ymin, xmax,
        ymax, difficult`` in the record's order, coordinates normalized as stored (float32
        values), or in pixels of the decoded image with ``pixels=True``."""
        if isinstance(i, (str, bytes)):
            key = _as_key(i)
        else:
            i = position(int(i), len(self))
            key = self._keys(i + 1)[i]
        with self.begin() as txn:
            value = txn.get(key)
            if value is None:
                raise KeyError(f"no record with key {show_key(key)} in {self.path}")
            return self._rows(value, key, pixels)

    def read_boxes(self, positions, pixels=False):
        """The box rows (see :meth:`boxes`) of the records at these positions, in order."""
        keys = self._keys().take(np.asarray(positions, np.int64))
        with self.begin() as txn:
            return [self._rows(txn.get(key), key, pixels) for key in keys]

    def _boxes_transform(self, transform):
        """The transform of a batch read with its boxes: a caffe_lmdb.Transform is wrapped so
        that the crop and mirror of each record are kept for its boxes."""
        self._need_boxes()
        if transform is None:
            return None
        if not (hasattr(transform, "transform_values") and hasattr(transform,
                                                                   "transform_boxes")):
            raise ValueError(f"{self.path} holds detection records (AnnotatedDatum): a transform "
                             "of the image alone would leave the boxes behind; use a "
                             "caffe_lmdb.Transform (it moves the boxes with the image), or read "
                             "without transform and transform image and boxes together")
        return _KeepGeometry(transform)

    def _moved_boxes(self, transform, positions, pixels):
        """The box rows of these positions, moved as ``transform`` (a _KeepGeometry, or None)
        moved their images in the batch just read."""
        if transform is None:
            return self.read_boxes(positions, pixels)
        return transform.transform.transform_boxes(self.read_boxes(positions), transform.geometry,
                                                   pixels=pixels)

    def box_items(self):
        """``(key, boxes)`` of every record in key order (normalized box rows; see
        :meth:`boxes`), without decoding images."""
        self._need_boxes()
        index = self._keys()
        for start in range(0, len(index), 1024):
            with self.begin() as txn:
                keys = [index[j] for j in range(start, min(len(index), start + 1024))]
                rows = [self._rows(txn.get(k), k, False) for k in keys]
            yield from zip(keys, rows, strict=True)

    def _need_boxes(self):
        if self.kind != "annotated":
            raise NotADatumDBError(f"{self.path} holds Datum records, which have no boxes "
                                   "(boxes are in SSD-Caffe's AnnotatedDatum records)")

    def _rows(self, value, key, pixels):
        self._need_boxes()
        if value is None:
            _changed(self.path, key)
        try:
            datum, _type, rows = parse_annotated(value)
        except DatumDecodeError as exc:
            raise DatumDecodeError(str(exc), key) from exc
        if pixels:
            f = parse_datum(datum)
            h, w = f.height, f.width
            if not (h and w):  # an encoded Datum without its size: decode to learn it
                h, w = decode(datum)[0].shape[1:]
            rows = boxes_to_pixels(rows, w, h)
        return rows

    def _block_batches(self, batch_size):
        """Batches read and decoded at once by a sequential pass: small raw or float records
        are decoded some 2 MiB at a time, since a batch of them costs less to decode than the
        fixed cost of one decode call (the vectorized decoder's dozens of NumPy calls)."""
        size, encoded = self._first
        if encoded or not size:
            return 1
        return max(1, min(64, _BLOCK_BYTES // (batch_size * size)))

    def _blocks(self, lo, hi, batch_size, drop_last):
        """Sequential batches of positions lo .. hi - 1, read and decoded a block of several
        batches at a time; each batch is a view of its block (which is recycled, as single
        batches are, once no batch of it is referred to). A block whose records differ in
        shape, or hold a bad record, is read again batch by batch, so that the batches before
        the bad one come out and the error is the one a batch-by-batch pass raises."""
        step = self._block_batches(batch_size) * batch_size
        follow = _Follow(lo)
        start = lo
        while start < hi:
            stop = min(hi, start + step)
            if drop_last:
                stop = start + (stop - start) // batch_size * batch_size
                if stop == start:
                    return
            try:
                images, labels = self._read_range(start, stop - start, follow=follow,
                                                  recyclers=self._block_recyclers)
            except (DatumDecodeError, ShapeMismatchError):
                for a in range(start, stop, batch_size):
                    yield self._read_range(a, min(stop, a + batch_size) - a)
                follow = _Follow(-1)
                step = batch_size  # shapes change along the database: no more blocks
            else:
                for a in range(0, stop - start, batch_size):
                    yield images[a:a + batch_size], labels[a:a + batch_size]
            start = stop

    def _read_range(self, start, count, reuse=False, transform=None, follow=None,
                    recyclers=None):
        keys = RangeKeys(_Current(self), start)
        # small values as bytes (cheaper than buffers), except in the low-memory mode, where
        # buffers into the map keep a batch's values out of the process's memory
        with self.begin(buffers=reuse or not self._small) as txn:
            if not reuse:
                chunks = [self._gather_range(txn, start, count, follow)]
            else:  # low-memory mode: gather and decode a quarter of the batch at a time
                step = _low_memory_step(count)
                mapped = self._take_mapped(txn, start, count, follow)  # (no copy to split)
                chunks = self._gather_chunks(txn, start, count, step, follow) \
                    if mapped is None else [mapped.part(a, a + step)
                                            for a in range(0, count, step)]
            return self._decode_values(chunks, keys, count, fresh=False, reuse=reuse,
                                       transform=transform, recyclers=recyclers)

    def _read_positions(self, positions, fresh, reuse=False, transform=None):
        index = self._keys()
        order = np.argsort(positions, kind="stable")
        keys = index.take(positions[order])
        with self.begin(buffers=not self._small) as txn:
            found = list(map(txn.get, keys))  # read in key order (LMDB's pages in order)
            if None in found:
                _changed(self.path, keys[found.index(None)])
            # and put in the order asked: values[j] = found[inverse[j]]
            inverse = np.empty(len(order), np.intp)
            inverse[order] = np.arange(len(order))
            values = [found[0]] if len(found) == 1 else \
                list(itemgetter(*inverse.tolist())(found))
            values = self._inner(values)
            step = _low_memory_step(len(values)) if reuse else len(values)
            chunks = [values[a:a + step] for a in range(0, len(values), step)]
            return self._decode_values(chunks, KeysAt(index, positions), len(values),
                                       fresh=fresh, reuse=reuse, transform=transform)

    def _gather_chunks(self, txn, start, count, step, follow=None, joiner=None):
        """Like _gather_range, as successive lists of at most ``step`` values.

        ``follow`` (a :class:`_Follow`): a sequential pass's place. When it stopped at
        ``start``, the values are taken from the key after the last one it read, which is
        position ``start`` by construction: a sequential pass needs no key index (a presumed
        dense one is never relied on). Otherwise the run starts after the key of position
        ``start - 1``, from the index checked up to it (see keyindex). ``follow`` is left at
        the end of the run. ``joiner``: a ValueJoiner to take each chunk with (else lists)."""
        if not hasattr(txn, "run"):  # an engine without cursor runs: seek by the index
            first = self._keys(start + 1)[start]
            it = txn.iter_values(first)
            if it is None:
                _changed(self.path, first)
            for values in _take(it, count, step, lambda: _changed(self.path, first), joiner):
                yield self._inner(values)
            return
        after = self._run_after(start, follow)
        run = txn.run(after)
        if run is None:
            _changed(self.path, after)
        for values in _take(run.values, count, step,
                            lambda: _changed(self.path, self._unchecked()[start]), joiner):
            yield self._inner(values)
        if follow is not None:
            follow.stop, follow.key = start + count, run.key() if count else after

    def _gather_range(self, txn, start, count, follow=None):
        """The values of positions start .. start + count - 1: raw and float records up to
        64 KiB read where they lie in the file's pages (a
        :class:`~caffe_lmdb.format.batch.JoinedValues` over the file's map, valid while the
        database is open) when the engine can; else one cursor run: small values joined (valid
        until this thread's next gathering), large ones (and AnnotatedDatum, unwrapped) as
        buffers into the map (valid in ``txn``)."""
        mapped = self._take_mapped(txn, start, count, follow)
        if mapped is not None:
            return mapped
        joiner = self._joiner() if self._small and self.kind == "datum" else None
        chunks = list(self._gather_chunks(txn, start, count, max(count, 1), follow, joiner))
        return chunks[0] if chunks else []

    def _take_mapped(self, txn, start, count, follow):
        """_gather_range from the database file's pages (see storage.lmdbpages), in the same
        order and from the same key as the cursor run; None when they cannot be read so."""
        size, encoded = self._first
        if self.kind != "datum" or size > _MAPPED_VALUE or encoded or not hasattr(txn, "take"):
            return None
        got = txn.take(self._run_after(start, follow), count)
        if got is None:
            return None
        base, offsets, sizes, last = got
        if len(offsets) != count:  # the database ended first: it changed since it was opened
            _changed(self.path, self._unchecked()[start])
        if follow is not None:
            follow.stop, follow.key = start + count, last
        return JoinedValues(memoryview(base), sizes.tolist(), offsets, sizes)

    def _run_after(self, start, follow):
        """The key after which the run of position ``start`` begins (None: the first key):
        where a sequential pass stopped (``follow``, see _gather_chunks), else the key of
        position ``start - 1`` in the index, checked up to it."""
        if follow is not None and follow.stop == start:
            return follow.key
        return self._keys(start)[start - 1] if start else None

    def _joiner(self):
        """This thread's ValueJoiner (a joined run is valid until the thread's next one)."""
        joiner = getattr(self._local, "joiner", None)
        if joiner is None:
            joiner = self._local.joiner = ValueJoiner()
        return joiner

    def value_chunks(self, chunk=1024, start=0, stop=None):
        """Yield ``(start_position, values)`` in key order: the serialized records of positions
        ``start_position ..``, at most ``chunk`` at a time. The values (a sequence of
        buffers, joined in one) are valid only until the next chunk is asked for (copy what
        you keep)."""
        n = len(self)
        stop = n if stop is None else min(stop, n)
        follow = _Follow(start)
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            with self.begin(buffers=not self._small) as txn:
                yield a, self._gather_range(txn, a, b - a, follow)

    def _decode_values(self, chunks, keys, n, fresh, reuse=False, transform=None,
                       recyclers=None):
        """Decode ``n`` records, given as successive lists of values, into one batch.
        ``recyclers``: (images, labels) recyclers other than the batches' (for blocks)."""
        if transform is not None:
            return self._transformed([v for chunk in chunks for v in chunk], keys, fresh, reuse,
                                     transform)
        images_recycler, labels_recycler = recyclers or (self._recycler, self._label_recycler)
        if fresh:
            out = None
        else:
            def out(shape, dtype):
                return images_recycler.get(shape, dtype, reuse)
        labels = None if fresh else labels_recycler.get((n,), np.dtype(np.int64), reuse)
        return self._decoder.decode(chunks, n, keys=keys, out=out, labels_out=labels,
                                    chunked=True)

    def _transformed(self, values, keys, fresh, reuse, transform):
        """Each record through ``transform`` before the batch is stacked (the logic of a
        caffe_lmdb.Transform is its own ``transform_values``, see tools/transform.py)."""
        def alloc(shape, dtype):
            return np.empty(shape, dtype) if fresh else self._recycler.get(shape, dtype, reuse)

        batch = getattr(transform, "transform_values", None)
        if batch is not None:
            return batch(values, keys, color=self.color, alloc=alloc, layout=self.layout,
                         channel_order=self.channel_order, dtype=self.dtype)
        images, labels = [], np.empty(len(values), np.int64)
        for j, value in enumerate(values):
            image, labels[j] = self._decode_one(value, keys[j])
            images.append(np.asarray(transform(image)))
            if images[j].shape != images[0].shape:
                raise ShapeMismatchError(
                    f"record {show_key(keys[j])} has shape {images[j].shape} after the "
                    f"transform, but the batch's first record ({show_key(keys[0])}) has "
                    f"{images[0].shape}: {MIXED_SHAPES_FIX}")
        return np.stack(images), labels

    def scan(self, chunk=1024, out=None, dtype=None, purpose="these records"):
        """Yield ``(start, images, labels)`` for every record in key order, ``chunk`` records
        at a time, decoded by one :class:`~caffe_lmdb.format.batch.BatchDecoder` (this
        database's layout, channel order and color; ``dtype`` overrides its dtype).

        Every record must have the shape of the first, across chunks too (a mean, a feature
        array, an .npz need one): ShapeMismatchError names the first record that differs and
        says it is needed for ``purpose``. ``out(start, count, shape, dtype)`` may return the
        array to decode a chunk into (e.g. rows of a result); by default one array is reused,
        so a chunk is valid until the next is asked for.
        """
        decoder = BatchDecoder(layout=self.layout, channel_order=self.channel_order,
                               dtype=dtype or self.dtype, color=self.color)
        first_shape = None
        block = _Recycler(keep=1)
        labels = np.empty(min(chunk, max(len(self), 1)), np.int64)
        for start, values in self.value_chunks(chunk):
            keys = RangeKeys(_Current(self), start)
            k = len(values)
            if first_shape is not None:
                here = record_shape(values[0], keys[0])[0]
                if here is not None and here != first_shape:
                    _differs(self.path, keys[0], here, first_shape, purpose)

            def alloc(shape, dt, start=start, k=k):
                target = out(start, k, shape, dt) if out is not None else None
                return target if target is not None else block.get(shape, dt, reuse=True)
            images, lab = decoder.decode(values, keys=keys, out=alloc, labels_out=labels[:k])
            shape = images.shape[1:] if self.layout == "CHW" else \
                images.shape[-1:] + images.shape[1:-1]
            if first_shape is None:
                first_shape = shape
            elif shape != first_shape:
                _differs(self.path, keys[0], shape, first_shape, purpose)
            yield start, images, lab

    def record_shape(self, i=0):
        """``(shape, dtype, encoded)`` of record ``i`` without decoding it (the shape of an
        encoded record is None: only decoding tells)."""
        i = position(i, len(self))
        key = self._keys(i + 1)[i]
        with self.begin() as txn:
            value = txn.get(key)
            if value is None:
                _changed(self.path, key)
            return record_shape(self._inner([value])[0], key)


_DEFAULTS = dict(channel_order="BGR", layout="CHW", dtype=None, color=None, readahead=False,
                 lock=False, backend=None, cache=None)


def _take(it, count, step, short, joiner=None):
    """``count`` values of ``it`` as lists (or joined by ``joiner``) of at most ``step``;
    ``short()`` raises when the iterator ends first (the database changed)."""
    for a in range(0, count, step):
        k = min(step, count - a)
        values = list(islice(it, k)) if joiner is None else joiner.take(it, k)
        if len(values) != k:
            short()
        yield values


class _Follow:
    """Where a sequential pass stopped: ``stop`` (the next position) and ``key`` (the key of
    position ``stop - 1``). A pass that starts at position 0 starts from the first key; one
    that starts elsewhere seeks its first run by the key index."""

    __slots__ = ("stop", "key")

    def __init__(self, start=0):
        self.stop, self.key = (0, None) if start == 0 else (-1, None)


class _Current:
    """The database's key index as it is when a key is asked for (error messages name the
    true key even after a presumed dense index was replaced mid-read)."""

    __slots__ = ("db",)

    def __init__(self, db):
        self.db = db

    def __getitem__(self, i):
        return self.db._unchecked()[i]


class _KeepGeometry:
    """A caffe_lmdb.Transform whose batches also keep where each record was cropped and whether
    it was mirrored (``geometry``), for its boxes."""

    def __init__(self, transform):
        self.transform = transform
        self.geometry = None

    def transform_values(self, values, keys=None, **options):
        images, labels, self.geometry = self.transform.transform_values(values, keys,
                                                                        geometry=True, **options)
        return images, labels


def _as_key(key):
    if isinstance(key, str):
        return key.encode("utf-8")
    return bytes(key)


def _differs(path, key, shape, first, purpose):
    raise ShapeMismatchError(f"{path}: record {show_key(key)} has shape {shape}, the records "
                             f"before it {first}: {purpose} need one shape")


def _changed(path, key):
    raise NotADatumDBError(f"{path}: record {show_key(key)} of the key index is gone: the "
                           "database was modified after it was opened (call refresh())")
