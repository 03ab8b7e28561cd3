"""Migrate: a LevelDB to an LMDB, or an LMDB to a LevelDB, record for record.

:func:`migrate` (``caffe_lmdb.migrate``, ``caffe-lmdb migrate SRC DST``) copies every key and
value of SRC, unchanged and in key order (both engines sort keys bytewise), into a new
database DST of the other engine (or of ``backend``), through the converters' sink: records
committed in batches, the LMDB map grown as needed, a valid prefix after a crash. The
destination's last key is where a ``resume=True`` run continues, and ``convert_state.json``
beside it records which source it comes from (a resume from another source is refused).
At the end both databases are read again side by side and every key and value compared;
only then is the state marked done.

A LevelDB on a read-only folder (LevelDB writes even to read) is read from a copy of its files
made in a temporary folder beside DST and removed after.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from itertools import zip_longest

from ..errors import CaffeLMDBError, NotADatumDBError, OptionError, ResumeError, show_key
from ..storage.base import backend_name, detect_backend, open_reader
from ..storage.leveldb import LevelDBReader, is_read_only, readable_copy
from .sink import DEFAULT_MAP_SIZE, open_sink, prepare_output, read_state, write_state
from .summary import Summary

__all__ = ["migrate", "MigrateVerifyError"]


class MigrateVerifyError(CaffeLMDBError, ValueError):
    """The destination of a migration does not hold the source's keys and values."""


def _source(path, backend):
    if not os.path.isdir(path):
        raise NotADatumDBError(f"no database at {path}: the folder does not exist")
    found = detect_backend(path)
    if backend is not None and backend != found:
        raise NotADatumDBError(f"{path} holds a {found} database, not a {backend} one")
    return found


def _disk_bytes(path):
    total = 0
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            total += os.path.getsize(full)
    return total


def migrate(src: str | os.PathLike, dst: str | os.PathLike, *, backend: str | None = None,
            source_backend: str | None = None, overwrite: bool = False, resume: bool = False,
            progress: Callable[[int, int], None] | None = None, commit_every: int | None = None,
            map_size: int | None = None) -> Summary:
    """Copy the database ``src`` into a new database ``dst`` of engine ``backend`` (default:
    the other one: LevelDB -> LMDB, LMDB -> LevelDB), keys and values unchanged, in order.

    ``resume=True`` finishes an interrupted migration into ``dst`` (from the same source);
    ``overwrite=True`` replaces an existing ``dst``. The result is verified (every key and
    value compared with the source) before it is reported; a difference raises
    :class:`MigrateVerifyError`. ``progress(done, total)`` is called after each commit.
    Returns a :class:`~caffe_lmdb.Summary`."""
    t0 = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    sb = _source(src, backend_name(source_backend))
    db = backend_name(backend) or ("lmdb" if sb == "leveldb" else "leveldb")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise OptionError(f"{dst} is the source of the migration: give a new folder")
    resuming = prepare_output(dst, overwrite=overwrite, resume=resume, backend=db)
    job = {"job": "migrate", "source": os.path.realpath(src), "source_backend": sb,
           "backend": db}
    if resuming:
        state = read_state(dst)
        if state is None or state.get("job") != job:
            raise ResumeError(f"{dst} was not left by an interrupted migration of {src} into "
                              f"a {db}: resume with the same source, or use --overwrite")
    else:
        state = {"version": 1, "job": job, "written": 0, "done": False}
        write_state(dst, state)
    copy = None
    if sb == "leveldb" and is_read_only(src):
        copy = readable_copy(src, os.path.dirname(os.path.abspath(dst)))
    reader = None
    try:
        reader = LevelDBReader(copy) if copy else open_reader(src, sb)
        if map_size is None:  # room for all of it (LevelDB compresses: LMDB takes more)
            map_size = max(DEFAULT_MAP_SIZE, 2 * _disk_bytes(copy or src) + (1 << 20))
        with reader.begin(buffers=False) as txn:
            total = sum(1 for _ in txn.iter_keys())
        sink = open_sink(dst, db, map_size=map_size, commit_every=commit_every)
        start = sink.entries
        value_bytes = 0
        try:
            if progress is not None:
                progress(sink.entries, total)
            last = sink.last_key
            with reader.begin(buffers=False) as txn:
                for key, value in txn.iter_items(last):
                    key = bytes(key)
                    if last is not None and key <= last:
                        continue  # the destination's last key, already copied
                    sink.put(key, value)
                    value_bytes += len(value)
                    if sink.batch_full:
                        sink.commit()
                        state["written"] = sink.entries
                        write_state(dst, state)
                        if progress is not None:
                            progress(sink.entries, total)
            sink.commit()
            written, grown = sink.entries, sink.grown
        finally:
            sink.abort()
            sink.close()
        file_bytes = sink.file_size()
        state["written"] = written
        write_state(dst, state)
        if progress is not None:
            progress(written, total)
        checked = _verify(reader, dst, db)
        state["done"] = True
        write_state(dst, state)
    finally:
        if reader is not None:
            reader.close()
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
    return Summary(path=dst, total=total, written=written, bytes=value_bytes,
                   seconds=time.perf_counter() - t0, resumed_from=start,
                   file_bytes=file_bytes, map_grown=grown, backend=db,
                   extra={"migrated": f"{src} ({sb}) -> {dst} ({db})",
                          "verified": f"{checked} keys and values equal to the source's"})


def _verify(reader, dst, backend):
    """Compare every key and value of the source (``reader``) and ``dst``; the count."""
    out = open_reader(dst, backend)
    n = 0
    try:
        with reader.begin(buffers=False) as a, out.begin(buffers=False) as b:
            for left, right in zip_longest(a.iter_items(), b.iter_items()):
                if left is None or right is None:
                    which = "source" if right is not None else "destination"
                    extra = right if right is not None else left
                    raise MigrateVerifyError(
                        f"{dst} does not match its source: the {which} ends after {n} records, "
                        f"the other one goes on with key {show_key(bytes(extra[0]))}")
                if bytes(left[0]) != bytes(right[0]) or bytes(left[1]) != bytes(right[1]):
                    what = "key" if bytes(left[0]) != bytes(right[0]) else "value"
                    raise MigrateVerifyError(
                        f"{dst} does not match its source at record {n}: {what} of source key "
                        f"{show_key(bytes(left[0]))} differs (destination key "
                        f"{show_key(bytes(right[0]))}); migrate again with --overwrite")
                n += 1
    finally:
        out.close()
    return n
