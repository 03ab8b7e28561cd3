"""The LMDB engine: reading (one environment per database per process) and writing.

* :data:`MAX_READERS`: the reader slots asked for by every environment this package opens with a
  lock file. LMDB sizes the reader table when the first process opens ``lock.mdb``; a process
  that opens it while another holds it gets the existing table, whatever it asks for. So the
  writer must ask for as many as the readers do: a converter opened with LMDB's default of 126
  would make the 127th concurrent ``lock=True`` reader fail with MDB_READERS_FULL.
* :func:`truncation`: a ``data.mdb`` shorter than its own last page (an interrupted copy, a
  full disk during a copy) would crash the reading process with SIGBUS at the first access to
  a missing page, since LMDB maps the file into memory; it is refused with an error instead.
* Writing (:class:`LMDBWriter`): keys that ascend are put with LMDB's append mode; records are
  committed in batches, so a crash leaves the database as of the last commit (a valid prefix);
  when LMDB reports MDB_MAP_FULL, at a put or at the commit, the transaction is aborted, the
  map size doubled and the whole uncommitted batch replayed (kept in memory until its commit
  succeeds). On Linux the map size is only reserved address space: data.mdb grows with the data.
* Reading (:class:`LMDBReader`): ``readonly=True, lock=False`` by default, so no lock file is
  created and a database on read-only media opens; see :class:`_Registry` for why one
  environment is shared by every reader of a database in a process, and for forks. Sequential
  passes read the values straight from the pages of data.mdb where they can
  (:mod:`.lmdbpages`, mapped once per environment), else through the cursor.
"""
from __future__ import annotations

import os
import struct
import threading

import lmdb

from ..errors import (
    DamagedDBError,
    DuplicateKeyError,
    KeyTooLongError,
    LMDBFormatError,
    NotADatumDBError,
    ResumeError,
    WriteError,
    show_key,
)
from ..messages import damaged_message, lmdb_1_message
from .base import CommitPolicy, PolicyWriter
from .lmdbpages import PageMap

__all__ = ["MAX_READERS", "truncation", "LMDBReader", "LMDBTxn", "LMDBWriter",
           "DEFAULT_MAP_SIZE", "data_format", "refuse_lmdb_1", "NEW_DB_OPTIONS",
           "FORMAT_09", "FORMAT_10", "DAMAGE_ERRORS", "structural_problems"]

MAX_READERS = 1024
DEFAULT_MAP_SIZE = 64 << 20
#: what LMDB raises on a damaged data.mdb
DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError,
                 lmdb.BadValsizeError)

# ---------------------------------------------------------------------------------------------
# The data format: LMDB 0.9 (Caffe's) or 1.0
# ---------------------------------------------------------------------------------------------

FORMAT_09 = "LMDB 0.9"
FORMAT_10 = "LMDB 1.0"
_MAGIC = 0xBEEFC0DE
_DATA_VERSIONS = {1: FORMAT_09, 3: FORMAT_10}  # MDB_DATA_VERSION of each engine


def data_format(path):
    """The data format of the LMDB at ``path`` (a folder): ``"LMDB 0.9"`` (what Caffe reads),
    ``"LMDB 1.0"``, ``"unknown"``, or None when there is no data.mdb or it is empty.

    py-lmdb 3 bundles both engines; their files cannot be read by the other one. The format is
    the 32-bit data version that follows the magic number in the first meta page."""
    try:
        with open(os.path.join(os.fspath(path), "data.mdb"), "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return None
    for off in range(0, len(head) - 7, 4):
        if struct.unpack_from("=I", head, off)[0] == _MAGIC:
            return _DATA_VERSIONS.get(struct.unpack_from("=I", head, off + 4)[0], "unknown")
    return "unknown"


def refuse_lmdb_1(path):
    """Raise LMDBFormatError when the database at ``path`` is in the 1.0 format (writing more
    into it would extend a file Caffe cannot read)."""
    if data_format(path) == FORMAT_10:
        raise LMDBFormatError(lmdb_1_message(path))


def _new_db_options():
    """``lmdb.open`` keywords that make a new database in the 0.9 format, whatever
    ``LMDB_DEFAULT_LIB_VERSION`` says: ``lib_version=0`` on a py-lmdb with both engines;
    nothing on older ones (0.9 only)."""
    try:
        major = lmdb.version(lib_version=0)[0]
    except TypeError:  # py-lmdb < 3: one engine, and lmdb.version() says which
        major = lmdb.version()[0]
        if major != 0:
            return None
        return {}
    except lmdb.Error:  # a build with no 0.9 engine (LMDB_FORCE_SYSTEM with liblmdb 1.0)
        return None
    return {"lib_version": 0} if major == 0 else None


#: keywords for ``lmdb.open`` when a writer opens a database (None: cannot write 0.9 here)
NEW_DB_OPTIONS = _new_db_options()


def truncation(env, path):
    """None when ``path``/data.mdb holds every page the environment's newest meta page refers
    to; else a message saying how short it is."""
    last_page = env.info()["last_pgno"]
    needed = (last_page + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    if size >= needed:
        return None
    return (f"{path}/data.mdb is truncated: {size:,} bytes, but its pages run to {needed:,} "
            "(an interrupted copy?); copy it again from the original")


# ---------------------------------------------------------------------------------------------
# Reading
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
        self.envs = {}  # identity -> [env, users, PageMap]

    def acquire(self, path, lock, readahead):
        with self.lock:
            self._drop_inherited()
            ident = _identity(path)
            entry = self.envs.get(ident)
            if entry is not None:
                entry[1] += 1
                return entry[0], entry[2], ident
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
            pages = PageMap(path)  # (its file is mapped at the first sequential run)
            self.envs[ident] = [env, 1, pages]
            return env, pages, ident

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
                entry[2].close()

    def _drop_inherited(self):
        if self.pid == os.getpid():
            return
        for env, _users, pages in self.envs.values():
            env.close()
            pages.close()
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


class LMDBTxn:
    """A read transaction seen through :class:`~caffe_lmdb.storage.base.ReadTxn`."""

    __slots__ = ("txn", "get", "path", "env", "pages")

    def __init__(self, txn, path=None, env=None, pages=None):
        self.txn = txn
        self.env = env
        self.pages = pages
        self.get = txn.get  # bound once: the random-read path calls it per record
        self.path = path

    def iter_keys(self, first_key=None):
        cursor = self.txn.cursor()
        if first_key is not None and not cursor.set_key(first_key):
            return None
        return cursor.iternext(keys=True, values=False)

    def iter_values(self, first_key):
        cursor = self.txn.cursor()
        if not cursor.set_key(first_key):
            return None
        return cursor.iternext(keys=False, values=True)

    def iter_items(self, first_key=None):
        cursor = self.txn.cursor()
        if first_key is not None and not cursor.set_range(first_key):
            return iter(())
        return cursor.iternext(keys=True, values=True)

    def run(self, after=None):
        """A cursor run over the values of the keys after ``after`` (from the first key when
        None): ``.values`` iterates them, ``.key()`` is the key of the last value taken. None
        when ``after`` is absent."""
        cursor = self.txn.cursor()
        if after is not None:
            if not cursor.set_key(after):
                return None
            if not cursor.next():
                return _Run(cursor, iter(()))
        elif not cursor.first():
            return _Run(cursor, iter(()))
        # iternext yields the current value first, then moves on
        return _Run(cursor, cursor.iternext(keys=False, values=True))

    def take(self, after, count):
        """Where the values of the ``count`` keys after ``after`` (from the first key when
        None) lie in the database file, read from its pages without the cursor:
        ``(base, offsets, sizes, last key)`` (see :class:`~.lmdbpages.PageMap`), fewer when
        the database ends first; None when the pages cannot be read that way here (use
        :meth:`run`)."""
        txnid = getattr(self.txn, "id", None)  # (py-lmdb's Transaction.id: the snapshot's)
        if self.pages is None or txnid is None:
            return None
        return self.pages.take(txnid(), after, count)

    def bounds(self):
        """``(entries, first key, last key)`` of this view, from LMDB's statistics and the two
        ends of the B-tree (O(log n)); None when the database is empty."""
        txn = self.txn
        entries = txn.stat(self.env.open_db(txn=txn, create=False))["entries"]
        cursor = txn.cursor()
        if not entries or not cursor.first():
            return None
        first = bytes(cursor.key())
        cursor.last()
        return entries, first, bytes(cursor.key())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.txn.abort()
        if isinstance(exc, DAMAGE_ERRORS):  # a bad page met while reading in this view
            raise DamagedDBError(damaged_message(self.path, exc)) from exc


class _Run:
    """A cursor run (see LMDBTxn.run)."""

    __slots__ = ("cursor", "values")

    def __init__(self, cursor, values):
        self.cursor, self.values = cursor, values

    def key(self):
        """The key of the last value taken from ``values``."""
        return bytes(self.cursor.key())


class LMDBReader:
    """A read-only LMDB, its environment shared in this process (see :class:`_Registry`) and
    reacquired after a fork."""

    backend = "lmdb"

    def __init__(self, path, lock=False, readahead=False):
        self.path, self.lock, self.readahead = path, bool(lock), bool(readahead)
        self._env = self._ident = None
        self._pid = None
        self._pages = None  # the environment's PageMap

    @property
    def env(self):
        """This process's py-lmdb Environment of the database (shared: do not close it)."""
        pid = os.getpid()
        if self._env is None or self._pid != pid:
            self._env, self._pages, self._ident = _REGISTRY.acquire(self.path, self.lock,
                                                                    self.readahead)
            self._pid = pid
        return self._env

    def data_format(self):
        """``"LMDB 0.9"`` (what Caffe reads) or ``"LMDB 1.0"``: see :func:`data_format`."""
        return data_format(self.path)

    def begin(self, buffers=True):
        env = self.env
        try:
            txn = env.begin(buffers=buffers)
        except lmdb.MapResizedError:  # a writer grew the map since it was opened (lock=True)
            env.set_mapsize(0)
            txn = env.begin(buffers=buffers)
        return LMDBTxn(txn, self.path, env, self._pages)

    def close(self):
        if self._env is not None and self._pid == os.getpid():
            _REGISTRY.release(self._ident)
        self._env = self._pages = self._ident = self._pid = None

    def disk_usage(self):
        """(bytes of data.mdb, bytes of its pages in use)."""
        env = self.env
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        return os.path.getsize(os.path.join(self.path, "data.mdb")), used


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class LMDBWriter(PolicyWriter):
    """The single writer of one LMDB (see the module docstring). The folder must have been
    checked by the caller (``caffe_lmdb.write.sink.prepare_output``). ``hook(point)``, when
    given, is called at ``put``, ``commit`` and ``committed`` (the crash tests use it).

    ``put(key, value, replace=False)``: a key already present raises DuplicateKeyError, unless
    ``replace`` (used when a resumed run writes again the records after its last saved state:
    the same bytes). ``batch_full`` says when the caller should ``commit()``.
    """

    def __init__(self, path, map_size=DEFAULT_MAP_SIZE, commit_every=None,
                 commit_bytes=64 << 20, sync=True, hook=None):
        self.path = os.fspath(path)
        self.hook = hook
        self.policy = CommitPolicy(commit_every, commit_bytes)
        refuse_lmdb_1(self.path)  # appending, resuming or merging into it
        if NEW_DB_OPTIONS is None:
            raise WriteError(f"cannot write {self.path}: this py-lmdb {lmdb.__version__} has no "
                             "LMDB 0.9 engine, and Caffe reads nothing else (install py-lmdb "
                             "from PyPI: pip install --force-reinstall lmdb)")
        try:
            self.env = lmdb.open(self.path, map_size=int(map_size), subdir=True,
                                 meminit=False, sync=sync, max_dbs=0, max_readers=MAX_READERS,
                                 **NEW_DB_OPTIONS)
        except lmdb.Error as exc:  # e.g. no room for lock.mdb
            raise WriteError(f"could not open {self.path} for writing ({exc})") from exc
        short = truncation(self.env, self.path)
        if short is not None:  # appending to it would crash (SIGBUS) or corrupt it
            self.env.close()
            raise ResumeError(short)
        self.map_size = self.env.info()["map_size"]
        self.max_key = self.env.max_key_size()
        self.grown = 0
        self._db = self.env.open_db()
        with self.env.begin() as txn:
            cur = txn.cursor()
            self.last_key = bytes(cur.key()) if cur.last() else None
            self.entries = txn.stat()["entries"]
        self._txn = None
        self._batch = []  # what the open transaction holds, to put again if the map grows
        self._pending = 0
        self._batch_bytes = 0

    # -- writing --------------------------------------------------------------------------

    def _begin(self):
        return self.env.begin(write=True)

    def _put(self, key, value, append, replace):
        if append:
            return self._txn.put(key, value, append=True)
        return self._txn.put(key, value, overwrite=replace)

    def _grow_and_replay(self):
        """Abort, enlarge the map, and put the whole uncommitted batch again."""
        while True:
            if self._txn is not None:
                self._txn.abort()
                self._txn = None
            self.map_size = max(2 * self.map_size, self.map_size + 2 * self._batch_bytes)
            self.env.set_mapsize(self.map_size)
            self.grown += 1
            self._txn = self._begin()
            try:
                for key, value, append, replace in self._batch:
                    if key is None:  # a block put_many appended: (None, values, keys, None)
                        self._txn.cursor().putmulti(zip(append, value, strict=True), append=True)
                    else:
                        self._put(key, value, append, replace)
                return
            except lmdb.MapFullError:
                continue

    def put(self, key, value, replace=False):
        key = bytes(key)
        if len(key) > self.max_key:
            raise KeyTooLongError(f"key {show_key(key[:60])}... is {len(key)} bytes, over "
                                  f"LMDB's limit of {self.max_key}: use shorter keys")
        if not key:
            raise ValueError("LMDB keys cannot be empty")
        if self._txn is None:
            self._txn = self._begin()
        if self.policy.auto:
            self.policy.first_record(len(value))
        append = self.last_key is None or key > self.last_key
        while True:
            try:
                written = self._put(key, value, append, replace)
                break
            except lmdb.MapFullError:
                self._grow_and_replay()
            except lmdb.Error as exc:  # the transaction is unusable: drop it
                self._fail(exc)
        if not written:
            raise DuplicateKeyError(f"key {show_key(key)} is already in {self.path}: keys "
                                    "must be unique (the first value is kept)")
        self._batch.append((key, value, append, replace))
        self._pending += 1
        self._batch_bytes += len(value)
        if append:
            self.last_key = key
        if self.hook is not None:
            self.hook("put")

    def put_many(self, keys, values, replace=False, ascending=False):
        """Put records whose keys (bytes) ascend, after every key in the database, in one
        C-level loop (py-lmdb's ``putmulti``); the same checks, batching and map growth as
        :meth:`put`.
        Keys that do not ascend past the last one (or ``replace``) go through :meth:`put`
        one by one. ``ascending=True``: the caller made the keys ascending, distinct and of
        one valid length (e.g. ``%08d`` of successive indices): only the first is checked."""
        n = len(keys)
        if not n:
            return
        if ascending:
            unchecked = 0 < len(keys[0]) <= self.max_key and len(keys[-1]) == len(keys[0])
        else:
            unchecked = (min(map(len, keys)) > 0 and max(map(len, keys)) <= self.max_key
                         and keys == sorted(set(keys)))  # (sorted() of sorted keys: one pass)
        if (replace or (self.last_key is not None and keys[0] <= self.last_key)
                or not unchecked):
            for key, value in zip(keys, values, strict=True):
                self.put(key, value, replace=replace)
            return
        if self._txn is None:
            self._txn = self._begin()
        if self.policy.auto:
            self.policy.first_record(len(values[0]))
        if len(values) != n:
            raise ValueError(f"{n} keys but {len(values)} values")
        while True:
            try:
                consumed, added = self._txn.cursor().putmulti(zip(keys, values, strict=True),
                                                              append=True)
                break
            except lmdb.MapFullError:
                self._grow_and_replay()
            except lmdb.Error as exc:  # the transaction is unusable: drop it
                self._fail(exc)
        if added != n:  # cannot happen with ascending new keys: a bug, not bad input
            self._fail(lmdb.Error(f"putmulti added {added} of {n} records"))
        self._batch.append((None, values, keys, None))  # the block as one entry
        self._pending += n
        self._batch_bytes += sum(map(len, values))
        self.last_key = keys[-1]
        if self.hook is not None:
            for _ in range(n):
                self.hook("put")

    @property
    def batch_full(self):
        return self.policy.full(self._pending, self._batch_bytes)

    @property
    def pending(self):
        """Records put but not committed yet."""
        return self._pending

    @property
    def pending_bytes(self):
        """Bytes of the values put but not committed yet."""
        return self._batch_bytes

    def commit(self):
        """Commit the batch (growing the map and replaying it if LMDB is full at commit)."""
        if self._txn is None:
            if self._batch:  # a put or commit failed: these records are not in the database
                raise WriteError.failed(self.path, "an earlier write failed", self.entries)
            return
        if self.hook is not None:
            self.hook("commit")
        while True:
            try:
                entries = self._txn.stat(self._db)["entries"]
                self._txn.commit()
                break
            except lmdb.MapFullError:
                self._txn = None  # a failed commit frees the transaction
                self._grow_and_replay()
            except lmdb.Error as exc:
                self._txn = None
                self._fail(exc)
        self.entries = entries
        self._txn = None
        self._batch = []  # what the open transaction holds, to put again if the map grows
        self._pending = 0
        self._batch_bytes = 0
        if self.hook is not None:
            self.hook("committed")
        # free the reader slots of killed reader processes (LMDB does not, while any process
        # keeps the database open), so that they cannot fill the reader table
        self.env.reader_check()

    def _fail(self, exc):
        """A write that LMDB refused for another reason than a full map (EIO, ENOSPC, EFBIG):
        abort, keep the batch (so that a later commit() raises too, and the caller does not
        mistake the records for written), and raise WriteError."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        raise WriteError.failed(self.path, exc, self.entries) from exc

    def abort(self):
        """Drop the uncommitted batch (the database stays as of the last commit)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self._batch = []  # what the open transaction holds, to put again if the map grows
        self._pending = 0
        self._batch_bytes = 0

    def close(self):
        """Commit what is pending and close the environment."""
        try:
            self.commit()
        finally:
            self.env.close()

    def file_size(self):
        try:
            return os.path.getsize(os.path.join(self.path, "data.mdb"))
        except OSError:
            return 0


def structural_problems(path):
    """The problems py-lmdb's offline structural checker (``python -m lmdb verify``, py-lmdb
    >= 3) finds in ``path``/data.mdb, one string each; None where py-lmdb has no checker."""
    try:
        from lmdb import verify as checker
    except ImportError:
        return None
    try:
        return list(checker.verify(os.fspath(path), subdir=True))
    except checker.VerifyError as exc:
        return [str(exc)]
