"""The LevelDB engine (Caffe's other backend): reading, writing, and an LMDB cache.

plyvel is imported when a LevelDB is first used: ``plyvel`` (Python <= 3.12) or
``plyvel_next`` (3.13 and later), whichever is installed (``pip install "caffe_lmdb[leveldb]"``).

What LevelDB imposes, and how this module deals with it:

* **One process at a time.** LevelDB locks ``LOCK`` in the database folder (a non-blocking
  fcntl lock): a second process gets an error at once, never a wait. That error becomes a
  :class:`~caffe_lmdb.errors.DatabaseLockedError` naming the LOCK file. Within a process,
  every reader of a folder shares one handle (:class:`_Registry`), since LevelDB refuses a
  second open in the same process too.
* **Every open writes**, even to read: recovery turns the write-ahead log into a table file,
  writes a new manifest and deletes the old files. A folder that cannot be written (read-only
  media, or a folder without write permission bits, which is respected even by root) cannot be
  opened at all; :func:`readable_copy` copies its files to a writable place first, and
  :func:`lmdb_cache` turns it (once) into an LMDB cache, the way ``caffe_lmdb.open`` reads
  such databases (see docs/leveldb.md).
* **Forks.** A handle inherited by a forked child is never used there (the parent holds the
  lock, and LevelDB's background thread does not exist in the child): the child gets an error
  telling to read through the LMDB cache, which ``DatumDataset`` and pickling set up.
* Reading (:class:`LevelDBReader`, :class:`LevelDBTxn`): each read view is a snapshot.
* Writing (:class:`LevelDBWriter`): puts go into a WriteBatch, written with ``sync=True`` at
  each commit; LevelDB's log replays whole batches only, so after a kill the database holds
  every committed batch (a valid prefix). The options, for reading too, are Caffe's
  (db_leveldb.cpp): 64 KiB blocks, a 256 MiB write buffer, 100 open files, snappy compression.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from itertools import chain
from typing import Any

from ..errors import (
    DatabaseLockedError,
    DuplicateKeyError,
    MissingDependencyError,
    NotADatumDBError,
    WriteError,
    show_key,
)
from .base import CommitPolicy, PolicyWriter

__all__ = ["import_plyvel", "is_leveldb", "is_leveldb_file", "is_read_only", "LevelDBReader",
           "LevelDBTxn", "LevelDBWriter", "readable_copy", "identity", "lmdb_cache",
           "default_cache_dir", "CAFFE_OPTIONS"]

#: the options Caffe's LevelDB wrapper opens databases with
CAFFE_OPTIONS = dict(block_size=65536, write_buffer_size=256 << 20, max_open_files=100)

_FILE = re.compile(r"^(CURRENT|LOCK|LOG|LOG\.old|MANIFEST-\d+|\d+\.(log|ldb|sst|dbtmp))$")
_plyvel = None


def import_plyvel():
    """The plyvel module (``plyvel`` or ``plyvel_next``), or MissingDependencyError."""
    global _plyvel
    if _plyvel is None:
        try:
            import plyvel as module
        except ImportError:
            try:
                import plyvel_next as module
            except ImportError:
                raise MissingDependencyError(
                    'LevelDB support needs plyvel (plyvel-next on Python >= 3.13): '
                    'pip install "caffe_lmdb[leveldb]"') from None
        _plyvel = module
    return _plyvel


def is_leveldb(path: str) -> bool:
    """True when the folder ``path`` holds a LevelDB (a CURRENT file and a manifest)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "CURRENT" in names and any(n.startswith("MANIFEST-") for n in names)


def is_leveldb_file(name: str) -> bool:
    """True for the name of a file LevelDB makes in its folder."""
    return bool(_FILE.match(name))


def is_read_only(path: str) -> bool:
    """True when LevelDB cannot (or must not) write the folder: no write access, or no write
    permission bit at all (a folder marked read-only is left alone, even by root)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _open(path, create, **options):
    """plyvel.DB(path), its errors turned into the package's."""
    plyvel = import_plyvel()
    try:
        return plyvel.DB(path, create_if_missing=create, **options)
    except plyvel.Error as exc:
        text = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        lock = os.path.join(path, "LOCK")
        if "LOCK" in text and ("unavailable" in text or "already held" in text):
            holder = ("this process (close the other reader or writer first)"
                      if "already held" in text else "another process")
            raise DatabaseLockedError(
                f"{path} is open in {holder}: LevelDB lets one process at a time open a "
                f"database, and {lock} is locked. Close it there, or read a copy of the "
                "folder") from None
        if "Permission denied" in text or "Read-only file system" in text:
            raise NotADatumDBError(
                f"cannot open the LevelDB at {path}: LevelDB writes its folder even to read it "
                f"({text}); caffe_lmdb.open reads such a folder through an LMDB cache") from None
        if "does not exist" in text:
            raise NotADatumDBError(f"{path} is not a LevelDB ({text})") from None
        raise NotADatumDBError(f"could not open the LevelDB at {path}: {text}") from None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class _Registry:
    """The open LevelDB handles of this process, one per folder, shared by its readers.

    A forked child never touches an inherited handle: it keeps a reference to each (so that no
    destructor runs in the child, where LevelDB's background thread does not exist and a close
    could wait for it forever) and starts with none."""

    def __init__(self):
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.dbs = {}  # realpath -> [db, users]
        self.inherited = []

    def acquire(self, path):
        with self.lock:
            if self.pid != os.getpid():
                self.inherited.extend(entry[0] for entry in self.dbs.values())
                self.dbs.clear()
                self.pid = os.getpid()
            ident = os.path.realpath(path)
            entry = self.dbs.get(ident)
            if entry is None:
                # Caffe's options: recovery turns a log of up to 256 MiB into one table file
                # (LevelDB's default of 4 MiB would leave many level-0 files, each merged on
                # every step of an iterator)
                entry = self.dbs[ident] = [_open(path, False, **CAFFE_OPTIONS), 0]
            entry[1] += 1
            return entry[0], ident

    def release(self, ident):
        with self.lock:
            if self.pid != os.getpid():
                return
            entry = self.dbs.get(ident)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self.dbs[ident]
                entry[0].close()


_REGISTRY = _Registry()


def _forked_child_cleanup():
    _REGISTRY.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_child_cleanup)


class LevelDBTxn:
    """A snapshot of a LevelDB seen through :class:`~caffe_lmdb.storage.base.ReadTxn`."""

    __slots__ = ("snapshot", "get")

    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.get = snapshot.get

    def iter_keys(self) -> Iterator[bytes]:
        return self.snapshot.iterator(include_value=False)

    def iter_values(self, first_key: bytes) -> Iterator[bytes] | None:
        """Values from ``first_key`` on. The key is not looked up first (that would cost as
        much as the seek): a key of the reader's index cannot be gone, since this process holds
        the LevelDB's lock and LevelDB refuses a second handle in the same process, so nothing
        can write it while it is open here. None only when the seek finds nothing at all."""
        it = self.snapshot.iterator(start=first_key, include_key=False)
        first = next(it, None)
        if first is None:
            return None
        return chain((first,), it)

    def iter_items(self, first_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` from ``first_key`` on (all when None), in key order."""
        return self.snapshot.iterator(start=first_key)

    def __enter__(self) -> LevelDBTxn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.snapshot.close()


class LevelDBReader:
    """A LevelDB read through snapshots, its handle shared in this process. Usable only in the
    process that opened it (see the module docstring)."""

    backend = "leveldb"

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._db = self._ident = self._pid = None
        self._db, self._ident = _REGISTRY.acquire(self.path)
        self._pid = os.getpid()

    @property
    def db(self):
        """The plyvel DB (shared in this process: do not close it)."""
        if self._db is None:
            raise NotADatumDBError(f"the LevelDB reader of {self.path} is closed")
        if self._pid != os.getpid():
            raise DatabaseLockedError(
                f"{self.path} is a LevelDB opened by process {self._pid}: LevelDB serves one "
                "process, so another process (a forked worker) cannot read it. Read it through "
                "its LMDB cache: caffe_lmdb.open(path, cache=True), or db.use_lmdb_cache() "
                "before forking (DatumDataset does this by itself)")
        return self._db

    def begin(self, buffers: bool = True) -> LevelDBTxn:
        return LevelDBTxn(self.db.snapshot())

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            _REGISTRY.release(self._ident)
        self._db = self._ident = self._pid = None

    def disk_usage(self) -> tuple[int, int]:
        """(bytes of the folder's LevelDB files, bytes in use: the same)."""
        size = folder_bytes(self.path)
        return size, size


def folder_bytes(path: str) -> int:
    """Bytes of the LevelDB files in folder ``path``."""
    total = 0
    for name in os.listdir(path):
        if is_leveldb_file(name):
            with contextlib.suppress(OSError):  # deleted meanwhile (a compaction)
                total += os.path.getsize(os.path.join(path, name))
    return total


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class LevelDBWriter(PolicyWriter):
    """The single writer of one LevelDB, with the protocol of
    :class:`~caffe_lmdb.storage.lmdb.LMDBWriter` (see the module docstring). ``map_size`` is
    accepted and ignored (LevelDB has no map). ``hook(point)`` is called at ``put``,
    ``commit`` and ``committed`` (the crash tests use it)."""

    grown = 0  # LevelDB has no map to grow

    def __init__(self, path, map_size=None, commit_every=None, commit_bytes=64 << 20,
                 sync=True, hook=None):
        self.path = os.fspath(path)
        self.hook = hook
        self.sync = bool(sync)
        self.policy = CommitPolicy(commit_every, commit_bytes)
        try:
            self.db = _open(self.path, True, **CAFFE_OPTIONS)
        except NotADatumDBError as exc:
            raise WriteError(f"could not open {self.path} for writing ({exc})") from exc
        it = self.db.iterator(reverse=True, include_value=False)
        self.last_key = next(it, None)
        it.close()
        self.entries = 0
        if self.last_key is not None:  # resuming: count what the database holds
            with self.db.iterator(include_value=False) as keys:
                self.entries = sum(1 for _ in keys)
        self._reused = None
        self._clear()
        self._failed = False

    def put_many(self, keys, values, replace=False, ascending=False):
        """Records one after the other, as :meth:`put` (LevelDB has no bulk append; the
        converters' blocks still save their per-record encoding)."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        put = self.put
        for key, value in zip(keys, values, strict=True):
            put(key, value, replace)

    def put(self, key, value, replace=False):
        key = bytes(key)
        if not key:
            raise ValueError("keys cannot be empty")
        if self._batch is None:  # one batch, cleared after each write: its buffer is reused
            self._batch = self._reused = self._reused or self.db.write_batch(sync=self.sync)
        new = True
        if self.last_key is not None and key <= self.last_key:  # not appended: look it up
            present = key in self._keys or self.db.get(key) is not None
            if present and not replace:
                raise DuplicateKeyError(f"key {show_key(key)} is already in {self.path}: keys "
                                        "must be unique (the first value is kept)")
            new = not present
        else:
            self.last_key = key
        if self.policy.auto:
            self.policy.first_record(len(value))
        self._batch.put(key, value)
        self._keys.add(key)
        self._new += new
        self._puts += 1
        self._bytes += len(value)
        if self.hook is not None:
            self.hook("put")

    @property
    def batch_full(self):
        return self.policy.full(self._puts, self._bytes)

    @property
    def pending(self):
        """Records put but not committed yet."""
        return self._puts

    @property
    def pending_bytes(self):
        """Bytes of the values put but not committed yet."""
        return self._bytes

    def commit(self):
        """Write the batch (synced to disk when ``sync``)."""
        if self._failed:
            raise WriteError.failed(self.path, "an earlier write failed", self.entries)
        if self._batch is None:
            return
        if self.hook is not None:
            self.hook("commit")
        try:
            self._batch.write()
        except import_plyvel().Error as exc:
            self._failed = True
            raise WriteError.failed(self.path, exc, self.entries) from exc
        self.entries += self._new
        self._batch.clear()
        self._clear()
        if self.hook is not None:
            self.hook("committed")

    def _clear(self):
        self._batch = None
        self._keys = set()
        self._bytes = self._new = self._puts = 0

    def abort(self):
        """Drop the uncommitted batch (the database stays as of the last commit)."""
        if self._batch is not None:
            self._batch.clear()
        self._clear()
        self._failed = False
        with self.db.iterator(reverse=True, include_value=False) as it:
            self.last_key = next(it, None)

    def close(self):
        """Commit what is pending and close the database."""
        try:
            self.commit()
        finally:
            if not self.db.closed:
                self.db.close()

    def file_size(self):
        try:
            return folder_bytes(self.path)
        except OSError:
            return 0


# ---------------------------------------------------------------------------------------------
# Read-only folders and the LMDB cache
# ---------------------------------------------------------------------------------------------


def readable_copy(path: str, into: str) -> str:
    """Copy the LevelDB files of ``path`` (not its LOCK and LOG) into a new folder inside
    ``into``, which plyvel can open; returns the copy's path."""
    copy = tempfile.mkdtemp(prefix=".leveldb-copy-", dir=into)
    for name in os.listdir(path):
        if is_leveldb_file(name) and name not in ("LOCK", "LOG", "LOG.old"):
            shutil.copyfile(os.path.join(path, name), os.path.join(copy, name))
    return copy


def identity(path: str) -> dict:
    """What identifies the records of the LevelDB at ``path`` for the cache: its real path and
    the names, sizes and times of its table files and non-empty logs (LevelDB never rewrites a
    table file: any write adds files, or grows a log). The manifest and empty logs are left out:
    an open makes new ones without changing a record."""
    files = []
    for name in sorted(os.listdir(path)):
        if not is_leveldb_file(name) or not name[0].isdigit():
            continue
        st = os.stat(os.path.join(path, name))
        if name.endswith(".log") and st.st_size == 0:
            continue
        files.append([name, st.st_size, st.st_mtime_ns if name.endswith(".log") else 0])
    return {"path": os.path.realpath(path), "files": files}


def default_cache_dir() -> str:
    """``$CAFFE_LMDB_CACHE``, else ``$XDG_CACHE_HOME/caffe_lmdb``, else
    ``~/.cache/caffe_lmdb``."""
    explicit = os.environ.get("CAFFE_LMDB_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "caffe_lmdb")


def _cache_name(ident):
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(ident["path"].rstrip("/")))
    return f"{base}-{digest}"


SOURCE_NAME = "leveldb_source.json"


def lmdb_cache(path: str, cache_dir: str | None = None, reader: Any = None) -> str:
    """The folder of an LMDB holding the records of the LevelDB at ``path``, made when missing.

    The cache lives in ``cache_dir`` (default :func:`default_cache_dir`), in a folder named
    after the LevelDB's :func:`identity`, so a changed LevelDB gets a new cache (older caches
    of the same folder are removed). ``reader``: a :class:`LevelDBReader` of ``path`` open in
    this process (its snapshot is copied); without it, the LevelDB is opened here, or, when
    its folder is read-only, a copy of its files (in the cache folder, removed after).
    The cache is written under a temporary name and renamed when complete."""
    from .lmdb import LMDBWriter

    path = os.fspath(path)
    cache_dir = os.fspath(cache_dir or default_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    ident = identity(path)
    target = os.path.join(cache_dir, _cache_name(ident))
    if os.path.isfile(os.path.join(target, SOURCE_NAME)):
        return target
    copy = None
    own = None
    try:
        if reader is None:
            if is_read_only(path):
                copy = readable_copy(path, cache_dir)
                own = LevelDBReader(copy)
            else:
                own = LevelDBReader(path)
                ident = identity(path)  # the open may have rewritten the files
                target = os.path.join(cache_dir, _cache_name(ident))
                if os.path.isfile(os.path.join(target, SOURCE_NAME)):
                    return target
            reader = own
        size = folder_bytes(reader.path)
        tmp = tempfile.mkdtemp(prefix=".building-", dir=cache_dir)
        try:
            writer = LMDBWriter(tmp, map_size=max(64 << 20, 4 * size + (16 << 20)),
                                commit_every=10000, commit_bytes=256 << 20, sync=False)
            try:
                with reader.begin() as txn:
                    for key, value in txn.iter_items():
                        writer.put(key, value)
                        if writer.batch_full:
                            writer.commit()
                writer.commit()
                writer.env.sync(True)
                entries = writer.entries
            finally:
                writer.env.close()
            with open(os.path.join(tmp, SOURCE_NAME), "w", encoding="utf-8") as f:
                json.dump({**ident, "entries": entries}, f, indent=1)
            try:
                os.rename(tmp, target)
            except OSError:  # another process made the same cache meanwhile
                if not os.path.isfile(os.path.join(target, SOURCE_NAME)):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_stale(cache_dir, ident["path"], target)
        return target
    finally:
        if own is not None:
            own.close()
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)


def _remove_stale(cache_dir, source, keep):
    """Remove the other caches of the same LevelDB folder (it changed since they were made)."""
    for name in os.listdir(cache_dir):
        folder = os.path.join(cache_dir, name)
        if folder == keep:
            continue
        try:
            with open(os.path.join(folder, SOURCE_NAME), encoding="utf-8") as f:
                if json.load(f).get("path") == source:
                    shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            continue
