"""The sink: the one writer of a database, and the output folder's rules.

* Keys go in as given, through the storage engine's writer (:mod:`caffe_lmdb.storage`): one
  writer, batched commits, a valid prefix after a crash, a map that grows by itself.
* Nothing but records goes into the database (Caffe's DataLayer would read any extra key).
  Conversion state for ``--resume`` lives in a sidecar file, ``convert_state.json``, in the
  database folder beside ``data.mdb`` (or LevelDB's files), with the log of skipped samples
  (``convert.log``); LevelDB ignores files whose names are not its own.
* :func:`prepare_output` checks the output folder before anything is written.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal

from ..errors import OutputExistsError, OutputPathError, ResumeError, WriteError
from ..storage.base import backend_name, open_writer
from ..storage.leveldb import is_leveldb, is_leveldb_file
from ..storage.lmdb import DEFAULT_MAP_SIZE, LMDBWriter, refuse_lmdb_1

__all__ = ["LMDBSink", "open_sink", "prepare_output", "read_state", "write_state", "STATE_NAME",
           "LOG_NAME", "OWN_FILES", "DEFAULT_MAP_SIZE", "crash_point", "existing_backend",
           "is_own_file"]

STATE_NAME = "convert_state.json"
LOG_NAME = "convert.log"
#: files a converter may leave in a database folder (removed by ``overwrite``), besides
#: LevelDB's own files (:func:`is_own_file`)
OWN_FILES = ("data.mdb", "lock.mdb", STATE_NAME, STATE_NAME + ".tmp", LOG_NAME, "labels.txt")
_NAMES = {"lmdb": "an LMDB", "leveldb": "a LevelDB"}


def is_own_file(name):
    """True for a file a converter (or the database engine) may leave in a database folder."""
    return name in OWN_FILES or is_leveldb_file(name)


def existing_backend(path):
    """The engine of the database in folder ``path`` ("lmdb" or "leveldb"), or None."""
    if os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    if is_leveldb(path):
        return "leveldb"
    return None

#: For the crash tests only: ``CAFFE_LMDB_TEST_CRASH_AT="<point>:<n>"`` makes this process kill
#: itself with SIGKILL (``"<point>:<n>:INT"``: SIGINT, as Ctrl-C) the n-th time it reaches
#: ``point``: ``put`` (after a record is put), ``commit`` (before a commit), ``committed``
#: (after it), ``state`` (resume state written to its temporary file, not yet renamed) or
#: ``saved`` (after the rename).
CRASH_VARIABLE = "CAFFE_LMDB_TEST_CRASH_AT"
_crash_counts: dict[str, int] = {}


def crash_point(point: str) -> None:
    """Kill this process here when the crash-test variable names this point (see above)."""
    plan = os.environ.get(CRASH_VARIABLE)
    if not plan:
        return
    name, n, how = (plan + "::").split(":")[:3]
    if name == point:
        _crash_counts[point] = _crash_counts.get(point, 0) + 1
        if _crash_counts[point] == int(n):
            os.kill(os.getpid(), signal.SIGINT if how == "INT" else signal.SIGKILL)


def open_sink(path, backend="lmdb", **options):
    """The writer of the database at ``path`` (see :mod:`caffe_lmdb.storage`; ``backend``:
    "lmdb" or "leveldb"), with the crash points of the tests wired in when their variable is
    set."""
    if os.environ.get(CRASH_VARIABLE):
        options.setdefault("hook", crash_point)
    return open_writer(os.fspath(path), backend=backend, **options)


#: The LMDB engine's writer class (for code that writes an LMDB directly).
LMDBSink = LMDBWriter


def _enclosing_db(path):
    """The nearest folder above ``path`` that holds a database, or None."""
    here = os.path.dirname(os.path.abspath(path))
    while True:
        if existing_backend(here) is not None:
            return here
        up = os.path.dirname(here)
        if up == here:
            return None
        here = up


def prepare_output(path, overwrite=False, resume=False, backend="lmdb"):
    """Check (and create) an output database folder. Returns True when ``resume`` found an
    existing database to continue, False when the database starts empty.

    Refuses, with a message saying what to do: a path that is a file; a path inside an existing
    database; an existing database unless ``overwrite`` (which deletes it) or ``resume`` (which
    needs a database of the same ``backend``); a non-empty folder that is not a database (never
    deleted).
    """
    path = os.fspath(path)
    backend = backend_name(backend) or "lmdb"
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{path} is a file: a database is a folder (an LMDB holds "
                              "data.mdb, a LevelDB its own files), so give the name of a folder "
                              "to create")
    outer = _enclosing_db(path)
    if outer is not None:
        kind = "LMDB" if existing_backend(outer) == "lmdb" else "LevelDB"
        raise OutputPathError(f"{path} is inside the existing {kind} {outer}: write the new "
                              "database somewhere outside it")
    if not os.path.isdir(path):
        os.makedirs(path)
        return False
    found = existing_backend(path)
    if found is not None:
        if resume and found == backend:
            if found == "lmdb":
                refuse_lmdb_1(path)  # more records in a file Caffe cannot open: no
            return True
        if overwrite:
            for name in os.listdir(path):
                if is_own_file(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(path, name))
            return False
        if resume:
            raise ResumeError(f"{path} holds {_NAMES[found]}, not {_NAMES[backend]}: resume "
                              f"with --backend={found}, or use --overwrite")
        raise OutputExistsError(f"{path} already holds {_NAMES[found]}: pass --overwrite "
                                "(overwrite=True) to replace it, or --resume (resume=True) to "
                                "finish an interrupted conversion")
    others = sorted(name for name in os.listdir(path) if not is_own_file(name))
    if others:
        raise OutputExistsError(f"{path} is a folder that is not empty and not a database (it "
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


def _state_or_none(path):
    try:
        state = read_state(path)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def incomplete_message(path):
    """What the resume state beside a database says when the run writing it did not finish
    (None when it finished, or when no converter wrote it)."""
    state = _state_or_none(path)
    if state is None or state.get("done", True):
        return None
    job = state.get("job") or {}
    name = str(job.get("job", "convert")).replace("_", "-")
    return (f"the {name} run writing it stopped after sample {state.get('next_index', 0)} "
            f"({state.get('written', 0)} records committed; see {STATE_NAME}): run the same "
            "command again with --resume to finish it")


def skipped_samples(path):
    """The samples a finished conversion into ``path`` skipped, from its resume state, as
    ``(index, key, where, reason)`` tuples (key as bytes); [] when there is no state."""
    state = _state_or_none(path) or {}
    out = []
    for item in state.get("skipped") or []:
        try:
            i, key, where, reason = item
            out.append((int(i), str(key).encode("utf-8", "surrogateescape"), str(where),
                        str(reason)))
        except (TypeError, ValueError):
            continue
    return out


def write_state(path, state):
    """Save the resume state atomically (a reader sees the old file or the new one)."""
    target = os.path.join(os.fspath(path), STATE_NAME)
    tmp = target + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        crash_point("state")
        os.replace(tmp, target)
    except OSError as exc:  # the previous state stays: a resume redoes a little more
        raise WriteError.failed(target, exc, state.get("written", 0)) from exc
    crash_point("saved")


