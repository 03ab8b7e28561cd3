"""The sink: the one LMDB writer, and the output folder's rules.

* Keys go in as given; when a key is greater than every key already in the database (the
  converters' keys always ascend), it is put with LMDB's append mode (no search, full pages).
* Records are committed in batches (every ``commit_every`` records, or sooner when the batch
  holds ``commit_bytes`` of values). A crash or a kill leaves the database as of the last
  commit: a valid prefix, never a torn record.
* The map grows by itself. When LMDB reports MDB_MAP_FULL, at a put or at the commit, the
  transaction is aborted, the map size doubled, and the whole uncommitted batch replayed (the
  sink keeps it in memory until its commit succeeds). Nothing is lost and nothing is written
  twice. On Linux the map size is only reserved address space: data.mdb grows with the data.
* Nothing but records goes into the database (Caffe's DataLayer would read any extra key).
  Conversion state for ``--resume`` lives in a sidecar file, ``convert_state.json``, in the
  database folder beside ``data.mdb``, with the log of skipped samples (``convert.log``).
"""
import json
import os
import signal

import lmdb

from .errors import (DuplicateKeyError, KeyTooLongError, OutputExistsError, OutputPathError,
                     ResumeError, WriteError, _show_key)
from .lmdbenv import MAX_READERS, truncation

__all__ = ["LMDBSink", "prepare_output", "read_state", "write_state", "STATE_NAME", "LOG_NAME",
           "DEFAULT_MAP_SIZE"]

STATE_NAME = "convert_state.json"
LOG_NAME = "convert.log"
#: files a converter may leave in a database folder (removed by ``overwrite``)
OWN_FILES = ("data.mdb", "lock.mdb", STATE_NAME, STATE_NAME + ".tmp", LOG_NAME, "labels.txt")
DEFAULT_MAP_SIZE = 64 << 20

#: For the crash tests only: ``"<point>:<n>"`` makes this process kill itself with SIGKILL
#: (``"<point>:<n>:INT"``: SIGINT, as Ctrl-C) the n-th time it reaches ``point``: ``put`` (after
#: a record is put), ``commit`` (before a commit), ``committed`` (after it), ``state`` (resume
#: state written to its temporary file, not yet renamed) or ``saved`` (after the rename).
#: Read once, when the module is imported.
_CRASH_AT = os.environ.get("CAFFE_LMDB_TEST_CRASH_AT")
_crash_counts = {}


def _crash_point(point):
    name, n, how = (_CRASH_AT + "::").split(":")[:3]
    if name == point:
        _crash_counts[point] = _crash_counts.get(point, 0) + 1
        if _crash_counts[point] == int(n):
            os.kill(os.getpid(), signal.SIGINT if how == "INT" else signal.SIGKILL)


def _write_failed(path, exc, entries):
    return WriteError(f"could not write to {path} ({exc}): the disk may be full, or a file size "
                      f"limit reached. The database keeps the {entries} records committed before;"
                      " make room and run the same command with --resume to finish it")


def _enclosing_db(path):
    """The nearest folder above ``path`` that holds a data.mdb, or None."""
    here = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isfile(os.path.join(here, "data.mdb")):
            return here
        up = os.path.dirname(here)
        if up == here:
            return None
        here = up


def prepare_output(path, overwrite=False, resume=False):
    """Check (and create) an output database folder. Returns True when ``resume`` found an
    existing database to continue, False when the database starts empty.

    Refuses, with a message saying what to do: a path that is a file; a path inside an existing
    LMDB; an existing LMDB unless ``overwrite`` (which deletes it) or ``resume``; a non-empty
    folder that is not an LMDB (never deleted).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{path} is a file: an LMDB is a folder (holding data.mdb), "
                              "so give the name of a folder to create")
    outer = _enclosing_db(path)
    if outer is not None:
        raise OutputPathError(f"{path} is inside the existing LMDB {outer}: write the new "
                              "database somewhere outside it")
    if not os.path.isdir(path):
        os.makedirs(path)
        return False
    if os.path.isfile(os.path.join(path, "data.mdb")):
        if resume:
            return True
        if overwrite:
            for name in OWN_FILES:
                try:
                    os.remove(os.path.join(path, name))
                except FileNotFoundError:
                    pass
            return False
        raise OutputExistsError(f"{path} already holds an LMDB: pass --overwrite "
                                "(overwrite=True) to replace it, or --resume (resume=True) to "
                                "finish an interrupted conversion")
    others = sorted(set(os.listdir(path)) - set(OWN_FILES))
    if others:
        raise OutputExistsError(f"{path} is a folder that is not empty and not an LMDB (it "
                                f"holds {others[0]!r}{' and more' if len(others) > 1 else ''}):"
                                " choose a new folder name")
    return False


def read_state(path):
    """The resume state saved beside a database, or None."""
    try:
        with open(os.path.join(os.fspath(path), STATE_NAME), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_state(path, state):
    """Save the resume state atomically (a reader sees the old file or the new one)."""
    target = os.path.join(os.fspath(path), STATE_NAME)
    tmp = target + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if _CRASH_AT:
            _crash_point("state")
        os.replace(tmp, target)
    except OSError as exc:  # the previous state stays: a resume redoes a little more
        raise _write_failed(target, exc, state.get("written", 0)) from exc
    if _CRASH_AT:
        _crash_point("saved")


class LMDBSink:
    """The single writer of one LMDB (see the module docstring). The folder must have been
    checked with :func:`prepare_output`.

    ``put(key, value, replace=False)``: a key already present raises DuplicateKeyError, unless
    ``replace`` (used when a resumed run writes again the records after its last saved state:
    the same bytes). ``batch_full`` says when the caller should ``commit()``.
    """

    def __init__(self, path, map_size=DEFAULT_MAP_SIZE, commit_every=1000,
                 commit_bytes=64 << 20, sync=True):
        self.path = os.fspath(path)
        self.commit_every = max(1, int(commit_every))
        self.commit_bytes = int(commit_bytes)
        try:
            self.env = lmdb.open(self.path, map_size=int(map_size), subdir=True,
                                 meminit=False, sync=sync, max_dbs=0, max_readers=MAX_READERS)
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
        self._batch = []
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
                    self._put(key, value, append, replace)
                return
            except lmdb.MapFullError:
                continue

    def put(self, key, value, replace=False):
        key = bytes(key)
        if len(key) > self.max_key:
            raise KeyTooLongError(f"key {_show_key(key[:60])}... is {len(key)} bytes, over "
                                  f"LMDB's limit of {self.max_key}: use shorter keys")
        if not key:
            raise ValueError("LMDB keys cannot be empty")
        if self._txn is None:
            self._txn = self._begin()
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
            raise DuplicateKeyError(f"key {_show_key(key)} is already in {self.path}: keys "
                                    "must be unique (the first value is kept)")
        self._batch.append((key, value, append, replace))
        self._batch_bytes += len(value)
        if append:
            self.last_key = key
        if _CRASH_AT:
            _crash_point("put")

    @property
    def batch_full(self):
        return len(self._batch) >= self.commit_every or self._batch_bytes >= self.commit_bytes

    @property
    def pending(self):
        """Records put but not committed yet."""
        return len(self._batch)

    def commit(self):
        """Commit the batch (growing the map and replaying it if LMDB is full at commit)."""
        if self._txn is None:
            if self._batch:  # a put or commit failed: these records are not in the database
                raise _write_failed(self.path, "an earlier write failed", self.entries)
            return
        if _CRASH_AT:
            _crash_point("commit")
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
        self._batch = []
        self._batch_bytes = 0
        if _CRASH_AT:
            _crash_point("committed")
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
        raise _write_failed(self.path, exc, self.entries) from exc

    def abort(self):
        """Drop the uncommitted batch (the database stays as of the last commit)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self._batch = []
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
