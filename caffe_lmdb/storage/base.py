"""The storage engine interface: what the sink and the reader need of a key-value store.

A Caffe database is an ordered map of byte keys to byte values. Everything above this layer
(the sink's ordered writes and resume, the reader's key index and batches) is written against
the two small protocols here, so a second engine (LevelDB) is a new module, not edits spread
over the package. :func:`open_reader` and :func:`open_writer` pick the engine.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ..errors import NotADatumDBError

__all__ = ["ReadTxn", "ReadStore", "WriteStore", "CommitPolicy", "PolicyWriter",
           "DEFAULT_COMMIT_EVERY", "BACKENDS", "backend_name", "detect_backend", "open_reader",
           "open_writer"]

BACKENDS = ("lmdb", "leveldb")


class ReadTxn(Protocol):
    """A consistent read view of the store (a transaction or a snapshot)."""

    def get(self, key: bytes) -> Any:
        """The value of ``key`` (bytes or a buffer valid during the view), or None."""

    def iter_keys(self) -> Iterator[bytes]:
        """Every key, in byte order."""

    def iter_values(self, first_key: bytes) -> Iterator[Any] | None:
        """Values from ``first_key`` on, in key order; None when ``first_key`` is absent."""

    def iter_items(self, first_key: bytes | None = None) -> Iterator[tuple[Any, Any]]:
        """``(key, value)`` pairs from ``first_key`` on (every pair when None), in key order."""

    # Optional (an engine without them gets the reader's full key scan at open):
    #   iter_keys(first_key) -> keys from first_key on (None when it is absent);
    #   bounds() -> (entries, first key, last key) in O(log n), or None when empty;
    #   run(after=None) -> a cursor run: .values iterates the values after key `after` (from
    #       the first key when None), .key() is the key of the last value taken; None when
    #       `after` is absent. Sequential readers continue from one run to the next by key.
    #   take(after, count) -> where the values of the `count` keys after `after` lie in the
    #       store's file: (base array, offsets, sizes, last key), or None (then run() is used).

    def __enter__(self) -> ReadTxn: ...

    def __exit__(self, *exc: object) -> None: ...


class ReadStore(Protocol):
    """An open database, read-only."""

    path: str
    backend: str

    def begin(self, buffers: bool = True) -> ReadTxn:
        """A read view; with ``buffers`` values may be zero-copy buffers valid inside it."""

    def close(self) -> None: ...

    def disk_usage(self) -> tuple[int, int]:
        """(bytes of the database's files, bytes of them in use)."""


class WriteStore(Protocol):
    """The single writer of a database: puts, batched commits, a valid prefix on a crash."""

    path: str
    entries: int
    last_key: bytes | None

    def put(self, key: bytes, value: bytes, replace: bool = False) -> None: ...

    # Optional: put_many(keys, values, replace=False), many records at once (the bulk writers
    # use it when present: write_arrays, DatumWriter).

    @property
    def batch_full(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def file_size(self) -> int: ...


#: records per transaction when the caller does not say (Caffe's tools commit every 1000)
DEFAULT_COMMIT_EVERY = 1000
#: with the default, small records are committed in larger batches, about this many bytes:
#: a commit waits for the disk (two fsyncs, milliseconds), which on records of a few hundred
#: bytes cost more than writing them
COMMIT_MIN_BYTES = 4 << 20
_MAX_AUTO_COMMIT = 100_000


class CommitPolicy:
    """When a writer commits: every ``commit_every`` records, or as soon as ``commit_bytes``
    are pending. ``commit_every=None``: Caffe's 1000, raised at the first record to about
    COMMIT_MIN_BYTES per commit when records are smaller than 4 KiB (fixed from then on, so
    commits fall at the same records however the records are put)."""

    def __init__(self, commit_every: int | None, commit_bytes: int) -> None:
        self.auto = commit_every is None
        self.commit_every = DEFAULT_COMMIT_EVERY if commit_every is None \
            else max(1, int(commit_every))
        self.commit_bytes = int(commit_bytes)

    def first_record(self, size: int) -> None:
        """Called with the size of the first record put (sets the automatic interval)."""
        if self.auto:
            self.auto = False
            per = -(-COMMIT_MIN_BYTES // max(1, size))
            self.commit_every = min(_MAX_AUTO_COMMIT, max(self.commit_every, per))

    def full(self, records: int, nbytes: int) -> bool:
        return records >= self.commit_every or nbytes >= self.commit_bytes


class PolicyWriter:
    """What the engines' writers share: the numbers of their :class:`CommitPolicy`."""

    policy: CommitPolicy

    @property
    def pending(self) -> int:
        """Records put but not committed yet."""
        raise NotImplementedError

    @property
    def pending_bytes(self) -> int:
        """Bytes of the values put but not committed yet."""
        raise NotImplementedError

    @property
    def commit_every(self) -> int:
        """Records per commit."""
        return self.policy.commit_every

    @property
    def commit_bytes(self) -> int:
        """Bytes pending that make a commit whatever their number."""
        return self.policy.commit_bytes

    def room(self, sizes: Sequence[int]) -> int:
        """How many records of these sizes, put in turn, bring the batch to its commit (all of
        them when they do not): a caller putting them a block at a time commits where single
        puts would."""
        policy = self.policy
        if policy.auto and sizes:
            policy.first_record(sizes[0])
        records, nbytes = self.pending, self.pending_bytes
        for k, size in enumerate(sizes, 1):
            if policy.full(records + k, nbytes + size):
                return k
            nbytes += size
        return len(sizes)


def backend_name(name: str | None) -> str | None:
    """A backend as Caffe spells it (``lmdb``, ``LEVELDB``, ...) -> ``"lmdb"``/``"leveldb"``;
    None stays None (detect it). ValueError for anything else."""
    if name is None:
        return None
    low = str(name).strip().lower()
    if low not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: one of {', '.join(BACKENDS)}")
    return low


def detect_backend(path: str) -> str:
    """The engine of the database folder ``path``, from its files (``data.mdb``: LMDB;
    ``CURRENT`` and ``MANIFEST-*``: LevelDB); NotADatumDBError saying what the folder holds
    when it is no database this package reads."""
    if os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    entries = sorted(os.listdir(path))
    if "CURRENT" in entries and any(n.startswith("MANIFEST-") for n in entries):
        return "leveldb"
    held = (f"it holds {len(entries)} entries, e.g. {', '.join(entries[:3])}" if entries
            else "it is empty")
    hint = ""
    if any(n.endswith((".ldb", ".sst", ".log")) or n.startswith("MANIFEST-") for n in entries):
        hint = "; it looks like a damaged LevelDB (no CURRENT or no MANIFEST file)"
    raise NotADatumDBError(f"{path} has no data.mdb, so it is not an LMDB folder, and no CURRENT "
                           f"and MANIFEST-* files, so it is not a LevelDB ({held}){hint}")


def open_reader(path: str, backend: str | None = None, lock: bool = False,
                readahead: bool = False) -> ReadStore:
    """Open the database folder ``path`` read-only (engine detected unless ``backend``).

    A LevelDB is opened for this process only (see :mod:`caffe_lmdb.storage.leveldb`)."""
    backend = backend_name(backend) or detect_backend(path)
    if backend == "lmdb":
        from .lmdb import LMDBReader

        return LMDBReader(path, lock=lock, readahead=readahead)
    from .leveldb import LevelDBReader

    return LevelDBReader(path)


def open_writer(path: str, backend: str = "lmdb", **options: Any) -> WriteStore:
    """The writer of the database folder ``path`` (created when missing)."""
    backend = backend_name(backend) or "lmdb"
    if backend == "lmdb":
        from .lmdb import LMDBWriter

        return LMDBWriter(path, **options)
    from .leveldb import LevelDBWriter

    return LevelDBWriter(path, **options)
