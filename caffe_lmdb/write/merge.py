"""Merge: LMDBs written apart (one per machine, one per part of a list) -> one LMDB.

:func:`merge` (``caffe_lmdb.merge``, ``caffe-lmdb merge OUT IN1 IN2 ...``) copies the inputs'
records, keys and values as they are, one input after the other, into a new database. The
result is the database a single writer would have made only if the inputs' key ranges follow
each other: every key of IN2 must come after every key of IN1 in LMDB's byte order. That is
checked first, on each input's first and last key, and overlapping or out-of-order ranges are
refused with an error naming both databases and the keys. So the records are written in
ascending key order, in LMDB's append mode (full pages, no search), by the converters' sink
(the map grows by itself).

The output appears complete or not at all: records go into a temporary folder beside ``OUT``,
which is moved into place (``data.mdb`` renamed over, atomically) only when every record is
committed and synced. On any error the temporary folder is removed, and so is ``OUT`` if the
merge created it; an existing ``OUT`` (replaced only with ``overwrite=True``) is left as it was.
"""
import contextlib
import os
import shutil
import tempfile
import time

from ..errors import KeyRangeError, OptionError, OutputExistsError, show_key
from ..read.reader import DatumDB
from .encode import Skip
from .sink import (
    DEFAULT_MAP_SIZE,
    OWN_FILES,
    incomplete_message,
    open_sink,
    prepare_output,
    skipped_samples,
)
from .summary import Summary

__all__ = ["merge"]

#: a file of the inputs' folders copied to the output when every input has the same one
_SHARED_FILES = ("labels.txt",)


def _ranges(inputs):
    """(path, entries, first key, last key, file bytes) of each input, in the order given."""
    out = []
    for path in inputs:
        with DatumDB(path) as db:  # refuses, with the reason, anything but an LMDB of Datums
            keys = db.keys()
            first, last = (bytes(keys[0]), bytes(keys[-1])) if len(keys) else (None, None)
            out.append((db.path, len(keys), first, last,
                        db.disk_usage()[0]))
    return out


def _check_order(ranges):
    """Every non-empty input's keys must all come after the previous non-empty input's."""
    filled = [r for r in ranges if r[1]]
    pairs = zip(filled, filled[1:], strict=False)
    for (a, _, a_first, a_last, _), (b, _, b_first, b_last, _) in pairs:
        if b_first > a_last:
            continue
        if b_last < a_first:
            order = sorted(filled, key=lambda r: r[2])
            hint = ""
            if all(y[2] > x[3] for x, y in zip(order, order[1:], strict=False)):
                hint = "; give them in key order: " + " ".join(r[0] for r in order)
            raise KeyRangeError(
                f"{b} comes before {a} in key order: its last key {show_key(b_last)} is before "
                f"{a}'s first key {show_key(a_first)}{hint}", a, b, a_last, b_first)
        raise KeyRangeError(
            f"the key ranges of {a} ({show_key(a_first)} .. {show_key(a_last)}) and {b} "
            f"({show_key(b_first)} .. {show_key(b_last)}) overlap: {b}'s first key must come "
            f"after {a}'s last key. Convert the parts of one list with --shard=K/N (shard=(k, n))"
            " so that each holds its own keys", a, b, a_last, b_first)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _shared_file(inputs, name):
    """The text of ``name`` when every input folder has it, identical; else None."""
    texts = set()
    for path in inputs:
        try:
            with open(os.path.join(path, name), "rb") as f:
                texts.add(f.read())
        except OSError:
            return None
    return texts.pop() if len(texts) == 1 else None


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy(ranges, sink, total, progress):
    """Put every record of every input; returns the bytes of values. Checks that keys keep
    ascending (an input written to since it was checked could break that)."""
    done = value_bytes = 0
    for path, _entries, _first, _last, _size in ranges:
        with DatumDB(path) as db, db.begin(buffers=False) as txn:  # an LMDB or a LevelDB
            for key, value in txn.iter_items():
                if sink.last_key is not None and key <= sink.last_key:
                    raise KeyRangeError(f"{path}: key {show_key(key)} does not come after "
                                        f"{show_key(sink.last_key)} (was a database changed "
                                        "during the merge?)", None, path, sink.last_key, key)
                sink.put(key, value)
                done += 1
                value_bytes += len(value)
                if sink.batch_full:
                    sink.commit()
                    if progress is not None:
                        progress(done, total)
    sink.commit()
    if progress is not None:
        progress(done, total)
    return value_bytes


def merge(out, inputs, *, overwrite=False, progress=None, map_size=None, commit_every=None):
    """Concatenate the LMDBs ``inputs`` (in the order given) into a new LMDB ``out``.

    Each input's keys must all come after the previous input's (byte order); overlapping or
    out-of-order ranges raise :class:`~caffe_lmdb.errors.KeyRangeError` before anything is
    written. Empty inputs are allowed. An existing ``out`` is refused unless ``overwrite``; it
    is replaced only once the merge is complete (see the module docstring). ``labels.txt`` is
    copied when every input holds the same one. ``progress(done, total)`` is called after each
    commit. Returns a :class:`~caffe_lmdb.Summary`.
    """
    t0 = time.perf_counter()
    out = os.fspath(out)
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise OptionError("merge needs at least one input database")
    for path in inputs:  # a part whose conversion stopped would leave a hole in the merge
        unfinished = incomplete_message(path)
        if unfinished is not None:
            raise OptionError(f"{path} is incomplete: {unfinished}; then merge")
    ranges = _ranges(inputs)
    for path, *_ in ranges:
        if _same_file(path, out):
            raise OptionError(f"{out} is also an input of the merge: write the merged database "
                              "to a new folder")
    _check_order(ranges)
    existed = os.path.exists(out)
    if prepare_output(out, resume=True) and not overwrite:  # checks; creates OUT if missing
        raise OutputExistsError(f"{out} already holds an LMDB: pass --overwrite "
                                "(overwrite=True) to replace it with the merge")
    total = sum(r[1] for r in ranges)
    if map_size is None:  # room for all of it at once (the sink grows the map if not)
        map_size = max(DEFAULT_MAP_SIZE, sum(r[4] for r in ranges) * 9 // 8 + (1 << 20))
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.merging-",
                           dir=parent)
    try:
        sink = open_sink(tmp, map_size=map_size, commit_every=commit_every, sync=False)
        try:
            value_bytes = _copy(ranges, sink, total, progress)
            sink.env.sync(True)
            written, grown = sink.entries, sink.grown
        finally:
            sink.env.close()
        shared = {name: _shared_file(inputs, name) for name in _SHARED_FILES}
        for name in OWN_FILES:  # what a replaced database left beside its data.mdb
            if name != "data.mdb":
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(out, name))
        for name, data in shared.items():
            if data is not None:
                with open(os.path.join(out, name), "wb") as f:
                    f.write(data)
        os.replace(os.path.join(tmp, "data.mdb"), os.path.join(out, "data.mdb"))
        _fsync_dir(out)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    listing = ", ".join(f"{path} ({n})" for path, n, *_ in ranges)
    # what the parts' conversions skipped (their resume states list it), in input order
    skipped = [Skip(i, key, where, reason) for path in inputs
               for i, key, where, reason in skipped_samples(path)]
    return Summary(path=out, total=total + len(skipped), written=written, skipped=skipped,
                   bytes=value_bytes,
                   seconds=time.perf_counter() - t0,
                   file_bytes=os.path.getsize(os.path.join(out, "data.mdb")),
                   map_grown=grown, extra={"merged": f"{len(ranges)} databases: {listing}"})
