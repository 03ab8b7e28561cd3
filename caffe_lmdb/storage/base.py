"""The storage engine interface: what the sink and the reader need of a key-value store.

A Caffe database is an ordered map of byte keys to byte values. Everything above this layer
(the sink's ordered writes and resume, the reader's key index and batches) is written against
the two small protocols here, so a second engine (LevelDB) is a new module, not edits spread
over the package. :func:`open_reader` and :func:`open_writer` pick the engine.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import NotADatumDBError

__all__ = ["ReadTxn", "ReadStore", "WriteStore", "BACKENDS", "detect_backend", "open_reader",
           "open_writer"]

BACKENDS = ("lmdb",)


class ReadTxn(Protocol):
    """A consistent read view of the store (a transaction or a snapshot)."""

    def get(self, key: bytes) -> Any:
        """The value of ``key`` (bytes or a buffer valid during the view), or None."""

    def iter_keys(self) -> Iterator[bytes]:
        """Every key, in byte order."""

    def iter_values(self, first_key: bytes) -> Iterator[Any] | None:
        """Values from ``first_key`` on, in key order; None when ``first_key`` is absent."""

    def __enter__(self) -> ReadTxn: ...

    def __exit__(self, *exc: object) -> None: ...


class ReadStore(Protocol):
    """An open database, read-only."""

    path: str
    backend: str

    def begin(self, buffers: bool = True) -> ReadTxn:
        """A read view; with ``buffers`` values may be zero-copy buffers valid inside it."""

    def close(self) -> None: ...


class WriteStore(Protocol):
    """The single writer of a database: puts, batched commits, a valid prefix on a crash."""

    path: str
    entries: int
    last_key: bytes | None

    def put(self, key: bytes, value: bytes, replace: bool = False) -> None: ...

    @property
    def batch_full(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def file_size(self) -> int: ...


def detect_backend(path: str) -> str:
    """The engine of the database folder ``path``, from its files; NotADatumDBError saying what
    the folder holds when it is no database this package reads."""
    if os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    entries = sorted(os.listdir(path))
    held = (f"it holds {len(entries)} entries, e.g. {', '.join(entries[:3])}" if entries
            else "it is empty")
    raise NotADatumDBError(f"{path} has no data.mdb, so it is not an LMDB folder ({held})")


def open_reader(path: str, backend: str | None = None, lock: bool = False,
                readahead: bool = False) -> ReadStore:
    """Open the database folder ``path`` read-only (engine detected unless ``backend``)."""
    backend = backend or detect_backend(path)
    if backend == "lmdb":
        from .lmdb import LMDBReader

        return LMDBReader(path, lock=lock, readahead=readahead)
    raise ValueError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")


def open_writer(path: str, backend: str = "lmdb", **options: Any) -> WriteStore:
    """The writer of the database folder ``path`` (created when missing)."""
    if backend == "lmdb":
        from .lmdb import LMDBWriter

        return LMDBWriter(path, **options)
    raise ValueError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
