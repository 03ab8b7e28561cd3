"""Converters: sources -> encode (in parallel workers) -> one ordered LMDB writer.

One engine, :func:`run`, serves every converter:

1. a source (:mod:`caffe_lmdb.sources`) lists the samples, each with its final index and key;
2. :func:`caffe_lmdb.encode.encode` turns each into record bytes, on a pool of workers
   (:mod:`caffe_lmdb.parallel`), results coming back in input order, at most a few per worker
   in flight;
3. the sink (:mod:`caffe_lmdb.sink`) puts them in key order, commits in batches, grows the map,
   and after each commit saves the resume state beside the data.

So the database is the same, key for key and byte for byte, whatever the number of workers,
and after a crash it holds a valid prefix that ``resume=True`` completes.

The functions here never print: pass ``progress=callable(done, total)`` for progress, and read
the returned :class:`Summary`.
"""
import contextlib
import dataclasses
import json
import os
import queue
import threading
import time

import numpy as np

from ..errors import (
    EncodeError,
    ImageReadError,
    NothingWrittenError,
    OptionError,
    ResumeError,
    ShapeMismatchError,
    SourceFormatError,
)
from ..format.annotated import is_annotated, unwrap_datum
from ..format.datum import array_to_datum_bytes, arrays_to_datum_bytes, parse_datum
from ..format.imagesize import DEFAULT_MAX_PIXELS
from ..format.keys import index_key, index_keys
from ..storage.base import backend_name
from .defaults import DEFAULT_TIMEOUT
from .encode import Skip, encode_many
from .executors import InlineExecutor, make_executor, ordered_map, prefetch
from .sink import (
    DEFAULT_MAP_SIZE,
    LOG_NAME,
    is_own_file,
    open_sink,
    prepare_output,
    read_state,
    write_state,
)
from .sources import (
    ArraySource,
    CifarSource,
    FolderSource,
    ImageOptions,
    ListFileSource,
    MnistSource,
)
from .summary import Summary

__all__ = ["Summary", "run", "convert_imageset", "convert_folder", "convert_mnist",
           "convert_cifar", "write_arrays", "DatumWriter", "targets_db_path", "ShardSource",
           "parse_shard", "DEFAULT_TIMEOUT"]

TARGETS_SUFFIX = "_targets"
#: DatumWriter: arrays up to this size are put a block at a time (see DatumWriter._start_block)
_BLOCK_RECORD_BYTES = 64 << 10
_BLOCK_BYTES = 4 << 20


def targets_db_path(db):
    """Where the float targets of a multi-target list go: ``DB`` + ``_targets``."""
    return os.fspath(db).rstrip("/\\") + TARGETS_SUFFIX


def _chunked(iterable, size):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def parse_shard(shard):
    """``(k, n)`` or ``"k/n"`` -> ``(k, n)``, checked: 0 <= k < n."""
    if isinstance(shard, str):
        k, sep, n = shard.partition("/")
        if not sep:
            raise OptionError(f"shard {shard!r}: expected K/N, e.g. 0/4 for the first of 4 "
                              "parts")
        shard = (k, n)
    try:
        k, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise OptionError(f"shard {shard!r}: expected two integers K/N") from None
    if not 0 <= k < n:
        raise OptionError(f"shard {k}/{n}: K must be in 0 .. N - 1 (parts are numbered from 0)")
    return k, n


class ShardSource:
    """The k-th of n contiguous parts of a source's samples (positions ``len * k // n`` up to
    ``len * (k + 1) // n``), keeping their keys: parts converted on different machines hold
    ascending, disjoint key ranges, which :func:`caffe_lmdb.merge` joins in order into the
    database a single conversion would have written. Positions are renumbered from 0 within the
    part (progress, resume), keys and ``where`` are not."""

    def __init__(self, source, shard):
        self.source = source
        self.shard = parse_shard(shard)
        k, n = self.shard
        total = len(source)
        self.start, self.stop = total * k // n, total * (k + 1) // n
        self.chunk = source.chunk

    def __len__(self):
        return self.stop - self.start

    def samples(self, start=0):
        for sample in self.source.samples(self.start + start):
            if sample.index >= self.stop:
                return
            yield dataclasses.replace(sample, index=sample.index - self.start)

    def fingerprint(self):
        fp = self.source.fingerprint()
        return None if fp is None else {**fp, "shard": list(self.shard)}


def _batch_bytes(batch):
    return sum(len(r.value) for r in batch if not isinstance(r, Skip)) + 1


def _skip_chunk(chunk, reason):
    return [Skip(s.index, s.key, s.where, reason) for s in chunk]


def _describe_chunk(chunk):
    return chunk[0].where if len(chunk) == 1 else f"{chunk[0].where} .. {chunk[-1].where}"


def _normalize(obj):
    return json.loads(json.dumps(obj))


def _skip_line(skip):
    reason = " ".join(skip.reason.split())
    return f"skipped\t{skip.where}\t{skip.key.decode('utf-8', 'replace')}\t{reason}\n"


def _load_resume(path, fingerprint):
    state = read_state(path)
    if state is None:
        raise ResumeError(f"{path} holds a database but no convert_state.json, so it was not "
                          "left by an interrupted caffe_lmdb conversion and cannot be resumed; use "
                          "--overwrite to convert again from the start")
    if state.get("job") != fingerprint:
        old, new = state.get("job") or {}, fingerprint or {}
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ResumeError(f"{path} was started from other inputs or options (they differ in: "
                          f"{', '.join(diff)}); resume with the same ones, or use --overwrite")
    return state


def run(source, path, *, workers=None, executor="thread", shard=None, **options):
    """Write every sample of ``source`` into the LMDB at ``path``; returns a :class:`Summary`.

    ``workers``: tasks in parallel (default: all cores); ``executor``: "thread" (default, also
    called "local"), "process", "inline", "ray" (a Ray cluster, see
    :mod:`caffe_lmdb.ray_executor`) or an executor object (see :mod:`caffe_lmdb.parallel`).
    ``shard=(k, n)``: write only the k-th of n contiguous parts of the samples, with the keys
    they have in the whole conversion, so that parts converted apart (one per machine) can be
    joined with :func:`caffe_lmdb.merge`.
    ``strict``: raise ImageReadError at the first unreadable sample instead of skipping it.
    ``check_size``: raise ShapeMismatchError when a raw record's shape differs from the first.
    ``timeout``: seconds after which a sample whose worker has not returned is skipped.
    ``targets``: also write each record's ``targets`` to ``targets_db_path(path)``.
    ``files``: {name: text} to write into the database folder (e.g. labels.txt).
    ``backend``: ``"lmdb"`` (default) or ``"leveldb"`` (Caffe's other backend; any case).
    On any error or interrupt, the records before it are committed: the database is a valid
    prefix of the full conversion, and ``resume=True`` finishes it.
    """
    ex = make_executor(executor, workers)
    try:
        if ex.remote and getattr(source, "root", None) is not None:
            source.root = _absolute_root(source.root)  # workers do not share our working folder
        ex.check_source(source)  # e.g. can a cluster's workers read the input files?
        if shard is not None:
            source = ShardSource(source, shard)
        with _opencv_threads(1 if getattr(source, "chunk", 1) > 1
                             and getattr(source, "reads_image_files", False) else None):
            return _run(source, path, ex, **options)
    finally:
        ex.shutdown()


class _opencv_threads:
    """OpenCV's own thread count set for a run (and put back after): small images are decoded
    on the converter's workers, one each; OpenCV splitting a tiny resize across its own
    threads as well only adds handoffs between threads (futex calls, measured)."""

    def __init__(self, n):
        self.n, self.old = n, None

    def __enter__(self):
        if self.n is not None:
            from ..format.cv import cv2

            self.old = cv2().getNumThreads()
            cv2().setNumThreads(self.n)

    def __exit__(self, *exc):
        if self.old is not None:
            from ..format.cv import cv2

            cv2().setNumThreads(self.old)


def _absolute_root(root):
    trailing = root.endswith(("/", os.sep))
    return os.path.abspath(root) + (os.sep if trailing else "")


def _run(source, path, ex, *, job="convert", overwrite=False, resume=False, strict=False,
         check_size=False, timeout=DEFAULT_TIMEOUT, progress=None, map_size=DEFAULT_MAP_SIZE,
         commit_every=None, targets=False, files=None, backend="lmdb"):
    t0 = time.perf_counter()
    conversion = _Conversion(source, os.fspath(path), job=job, overwrite=overwrite,
                             resume=resume, check_size=check_size, targets=targets, files=files,
                             backend=backend)
    with conversion.open_outputs(map_size, commit_every):
        conversion.run(ex, strict=strict, timeout=timeout, progress=progress)
    summary = conversion.summary(time.perf_counter() - t0)
    if summary.total and not summary.written:
        _nothing_written(source, conversion.path, conversion.tpath, summary,
                         conversion.resuming)
    return summary


class _Conversion:
    """One run of a conversion: its outputs (the database, the targets database, the log of
    skipped samples), its resume state, and the loop that writes the encoded records in order.

    The resume state is the JSON document saved beside the database (``convert_state.json``):
    the job's fingerprint, the next sample to encode, the bytes and skips so far."""

    def __init__(self, source, path, *, job, overwrite, resume, check_size, targets, files,
                 backend="lmdb"):
        self.source, self.path = source, path
        self.check_size = check_size
        self.backend = backend = backend_name(backend) or "lmdb"
        fingerprint = _normalize({"job": job, **(source.fingerprint() or {}),
                                  "check_size": bool(check_size), "targets": bool(targets)})
        self.tpath = targets_db_path(path) if targets else None
        self.resuming = prepare_output(path, overwrite=overwrite, resume=resume, backend=backend)
        if self.tpath and prepare_output(self.tpath, overwrite=overwrite, resume=resume,
                                         backend=backend) != self.resuming:
            raise ResumeError(f"{path} and {self.tpath} must be resumed together, but only one "
                              "of them exists; use --overwrite to convert both again")
        for name, text in (files or {}).items():
            with open(os.path.join(path, name), "w", encoding="utf-8") as f:
                f.write(text)
        if self.resuming:
            self.state = _load_resume(path, fingerprint)
        else:
            self.state = {"version": 1, "job": fingerprint, "next_index": 0, "bytes": 0,
                          "skipped": [], "first_shape": None, "done": False}
            # saved before data.mdb exists: a run killed before its first commit can be resumed
            write_state(path, self.state)
        self.start = self.done = self.state["next_index"]
        self.value_bytes = self.state["bytes"]
        self.first_shape = self.state["first_shape"]
        self.skipped = [Skip(i, k.encode("utf-8", "surrogateescape"), w, r)
                        for i, k, w, r in self.state["skipped"] if i < self.start]
        self.log_path = os.path.join(path, LOG_NAME)
        with open(self.log_path, "w", encoding="utf-8") as log:  # later skips come again
            log.write(f"# caffe-lmdb {job}: samples that gave no record (tab-separated: "
                      "where, key, reason)\n")
            log.writelines(_skip_line(s) for s in self.skipped)
        self.sink = self.tsink = self.log = None

    @contextlib.contextmanager
    def open_outputs(self, map_size, commit_every):
        """The sinks and the log, open for the run; on any error or interrupt the records
        before it are committed (a valid, resumable prefix) before they close."""
        self.sink = open_sink(self.path, self.backend, map_size=map_size,
                              commit_every=commit_every)
        try:
            if self.tpath:
                self.tsink = open_sink(self.tpath, self.backend, map_size=map_size,
                                       commit_every=commit_every)
            with open(self.log_path, "a", encoding="utf-8") as self.log:
                try:
                    yield self
                except BaseException:
                    self._save_after_failure()
                    raise
        finally:  # close without committing what a failure left uncommitted
            for sink in (self.sink, self.tsink):
                if sink is not None:
                    sink.abort()
                    sink.close()

    def _save_after_failure(self):
        # The failure being raised is the one to report (a full disk fails this save too, for
        # the same reason); the last saved state stays valid, and --resume redoes a little more.
        with contextlib.suppress(Exception):
            self.save()

    def save(self, final=False):
        self.log.flush()
        self.sink.commit()
        if self.tsink is not None:
            self.tsink.commit()
        self.state.update(next_index=self.done, bytes=self.value_bytes,
                          first_shape=self.first_shape, done=final, written=self.sink.entries,
                          skipped=[[s.index, s.key.decode("utf-8", "surrogateescape"), s.where,
                                    s.reason] for s in self.skipped])
        write_state(self.path, self.state)

    def run(self, ex, strict, timeout, progress):
        total = len(self.source)

        def on_fail(chunk, reason):
            """A task that timed out or lost its worker: with several samples, find the one
            at fault by running them one at a time."""
            if len(chunk) == 1:
                return _skip_chunk(chunk, reason)
            singles = ordered_map(encode_many, ([s] for s in chunk), ex, timeout=timeout,
                                  on_fail=_skip_chunk, describe=_describe_chunk)
            return [rec for single in singles for rec in single]

        if progress is not None:
            progress(self.done, total)
        if self._write_blocks(progress, total):  # records serialized a block at a time
            self.save(final=True)
            return
        # a cluster executor wants bigger tasks than one image (its per-task cost is higher)
        chunks = _chunked(self.source.samples(self.start),
                          max(self.source.chunk, ex.chunk))
        results = ordered_map(encode_many, chunks, ex, timeout=timeout, on_fail=on_fail,
                              describe=_describe_chunk)
        if not isinstance(ex, InlineExecutor):
            # the workers run on while a commit waits for the disk
            results = prefetch(results, self.sink.commit_bytes, _batch_bytes)
        for batch in results:
            self.consume_batch(batch, strict)
            if progress is not None:
                progress(self.done, total)
        self.done = total
        self.save(final=True)

    def _write_blocks(self, progress, total):
        """Write every record from blocks the source serializes itself (write_arrays: NumPy
        arrays a block at a time), put with one call per block; False when the source has no
        blocks to give (or a check applies record by record): then nothing was written."""
        value_blocks = getattr(self.source, "value_blocks", None)
        if (value_blocks is None or self.check_size or self.tsink is not None
                or not hasattr(self.sink, "put_many")):
            return False
        blocks = value_blocks(self.start, self.sink.commit_every)
        if blocks is None:
            return False
        # serialized a block or two ahead on a thread: it runs while a commit waits for the
        # disk (LMDB's commit releases the GIL), which took as long as the serializing
        blocks = prefetch(blocks, 2 << 20, lambda block: sum(map(len, block[2])))
        for first, keys, values in blocks:
            self.sink.put_many(keys, values, replace=self.resuming)
            self.value_bytes += sum(map(len, values))
            self.done = first + len(keys)
            if self.sink.batch_full:
                self.save()
            if progress is not None:
                progress(self.done, total)
        self.done = total
        return True

    def consume_batch(self, batch, strict):
        """Write a worker's batch of results, in order: the runs of records between skipped
        samples put a block at a time (one call, keys checked once), split where a commit is
        due, so that commits fall where record-by-record writing puts them."""
        if (len(batch) < 2 or self.check_size or self.tsink is not None or self.resuming
                or not hasattr(self.sink, "put_many")):
            for rec in batch:
                self.consume(rec, strict)
            return
        i = 0
        while i < len(batch):
            j = i
            while j < len(batch) and not isinstance(batch[j], Skip):
                j += 1
            while i < j:
                sizes = [len(rec.value) for rec in batch[i:j]]
                k = i + self.sink.room(sizes)
                self.sink.put_many([rec.key for rec in batch[i:k]],
                                   [rec.value for rec in batch[i:k]])
                self.value_bytes += sum(sizes[:k - i])
                self.done = batch[k - 1].index + 1
                if self.sink.batch_full:
                    self.save()
                i = k
            if j < len(batch):  # a skipped sample
                self.consume(batch[j], strict)
                i = j + 1

    def consume(self, rec, strict):
        """Write one encoded record (or log one skipped sample), in sample order."""
        if isinstance(rec, Skip):
            if strict:
                raise ImageReadError(f"{rec.where}: {rec.reason} (--strict stops at the first "
                                     "sample that cannot be read)")
            self.skipped.append(rec)
            self.log.write(_skip_line(rec))
        else:
            if self.check_size:
                self.first_shape = _check_size(rec, self.first_shape)
            self.sink.put(rec.key, rec.value, replace=self.resuming)
            if self.tsink is not None:
                self.tsink.put(rec.key, rec.targets, replace=self.resuming)
            self.value_bytes += len(rec.value)
        self.done = rec.index + 1
        if self.sink.batch_full or (self.tsink is not None and self.tsink.batch_full):
            self.save()

    def summary(self, seconds):
        return Summary(path=self.path, total=len(self.source), resumed_from=self.start,
                       targets_path=self.tpath, log_path=self.log_path,
                       written=self.sink.entries, skipped=self.skipped, bytes=self.value_bytes,
                       file_bytes=self.sink.file_size(), map_grown=self.sink.grown,
                       seconds=seconds, backend=self.backend)


def _nothing_written(source, path, tpath, summary, resumed):
    """Every sample was skipped: remove the empty database this run made (so that the
    corrected command runs as it is) and say what was probably wrong."""
    skipped = summary.skipped
    root = getattr(source, "root", None)
    missing = [s for s in skipped if "No such file or directory" in s.reason]
    if root is not None and skipped and len(missing) == len(skipped):
        cause = (f"no listed file exists under {root}: is the root folder right? (first: "
                 f"{missing[0].reason})")
    elif skipped:
        cause = f"the first one: {skipped[0].where}: {skipped[0].reason}"
    else:
        cause = "no sample gave a record"
    kept = ""
    if not resumed:
        for folder in (path, tpath):
            if folder is None:
                continue
            for name in os.listdir(folder):  # an LMDB's files, or a LevelDB's
                if is_own_file(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    else:
        kept = f" ({path} is left as it was)"
    raise NothingWrittenError(f"0 records written, {len(skipped)} of {summary.total} samples "
                              f"skipped: {cause}{kept}")


def _check_size(rec, first_shape):
    """convert_imageset's --check_size: every raw record has the first one's shape."""
    value = rec.value
    if is_annotated(value):  # an SSD AnnotatedDatum: check its Datum
        value = unwrap_datum(value)
    f = parse_datum(value)
    shape = [f.channels, f.height, f.width]
    if f.encoded and not all(shape):
        return first_shape  # no shape to check (convert_imageset refuses the combination)
    if first_shape is None:
        return shape
    if shape != first_shape:
        raise ShapeMismatchError(f"record {rec.key.decode('utf-8', 'replace')!r} is "
                                 f"{'x'.join(map(str, shape))} but the first record is "
                                 f"{'x'.join(map(str, first_shape))} (--check_size); resize "
                                 "all images (--resize_height/--resize_width) or drop the flag")
    return first_shape


def _image_options(gray, resize_height, resize_width, encoded, encode_type, max_pixels,
                   check_size=False):
    enc = None
    if encoded or encode_type:  # Caffe: a non-empty --encode_type alone also encodes
        enc = str(encode_type).lower().lstrip(".") if encode_type else True
    if enc is not None and check_size:
        raise OptionError("--check_size compares the sizes of raw records, and encoded records "
                          "hold none (Caffe's convert_imageset stops at the second image: "
                          "'Incorrect data field size'): drop --check_size, or convert without "
                          "--encoded")
    if isinstance(enc, str):  # checked before anything is created
        from ..format.cv import cv2

        if not cv2().haveImageWriter("image." + enc):
            raise EncodeError(f"OpenCV {cv2().__version__} cannot write images of type {enc!r} "
                              "(--encode_type): use one it writes, e.g. jpg or png")
    resize = (int(resize_height), int(resize_width))
    return ImageOptions(resize=resize if resize[0] > 0 and resize[1] > 0 else None,
                        gray=bool(gray), encode=enc, max_pixels=int(max_pixels or 0) or None)


def _saved_seed(db, shuffle, seed, resume, shard=None):
    """A shuffled run without --seed draws one; --resume must reuse it."""
    if shuffle and seed is None and shard is not None:
        raise OptionError("--shard with --shuffle needs --seed: every part must draw the same "
                          "permutation, or the parts would repeat and miss samples")
    if shuffle and seed is None and resume:
        state = read_state(db)
        if state is not None:
            return (state.get("job") or {}).get("seed")
    return seed


def convert_imageset(root, list_file, db, *, gray=False, shuffle=False, seed=None,
                     resize_height=0, resize_width=0, check_size=False, encoded=False,
                     encode_type="", targets=0, index_keys=False,
                     max_pixels=DEFAULT_MAX_PIXELS, **options):
    """Caffe's ``convert_imageset ROOT/ LISTFILE DB``, with the same flags and records.

    Keys ``%08d_<path>`` by list line (after the shuffle), or ``%08d`` with ``index_keys``.
    ``targets=K``: lines are ``path label v1 .. vK``; the K values go to a float LMDB at
    ``DB_targets`` with the same keys. ``seed`` makes ``shuffle`` reproducible (Caffe's own
    permutation cannot be reproduced). ``max_pixels``: an image whose header declares more
    pixels is skipped without being decoded (a decompression bomb?; None: no limit; see
    :mod:`caffe_lmdb.imagesize`). Other options: see :func:`run`.
    """
    seed = _saved_seed(db, shuffle, seed, options.get("resume"), options.get("shard"))
    source = ListFileSource(root, list_file,
                            _image_options(gray, resize_height, resize_width, encoded,
                                           encode_type, max_pixels, check_size),
                            shuffle=shuffle, seed=seed, targets=targets, index_keys=index_keys)
    return run(source, db, job="convert_imageset", targets=bool(targets), check_size=check_size,
               **options)


def convert_folder(root, db, *, gray=False, shuffle=False, seed=None, resize_height=0,
                   resize_width=0, check_size=False, encoded=False, encode_type="",
                   index_keys=False, max_pixels=DEFAULT_MAX_PIXELS, **options):
    """A folder of class subfolders (torchvision's ImageFolder layout) to an LMDB.

    Labels follow the sorted class names; ``labels.txt`` in the database folder lists the class
    of label i on line i + 1. Image flags as :func:`convert_imageset`.
    """
    seed = _saved_seed(db, shuffle, seed, options.get("resume"), options.get("shard"))
    source = FolderSource(root, _image_options(gray, resize_height, resize_width, encoded,
                                               encode_type, max_pixels, check_size),
                          shuffle=shuffle, seed=seed, index_keys=index_keys)
    labels = "".join(name + "\n" for name in source.classes)
    summary = run(source, db, job="convert_folder", check_size=check_size,
                  files={"labels.txt": labels}, **options)
    summary.extra["classes"] = (f"{len(source.classes)}, listed in "
                                f"{os.path.join(os.fspath(db), 'labels.txt')}")
    return summary


def _small_records(workers, options):
    """Records that cost microseconds to build are written inline by default: a pool would
    only add overhead (they hold the GIL)."""
    options["workers"] = workers
    options.setdefault("executor", "inline" if (workers or 1) <= 1 else "thread")


def convert_mnist(images, labels, db, *, workers=1, **options):
    """Caffe's ``convert_mnist_data IMAGES LABELS DB``: idx files (gzipped or not), keys
    ``%08d``, records 1 x rows x cols with no ``encoded`` field, as Caffe writes them."""
    _small_records(workers, options)
    return run(MnistSource(images, labels), db, job="convert_mnist", **options)


def convert_cifar(input_folder, output_folder, *, workers=1, **options):
    """Caffe's ``convert_cifar_data INPUT OUTPUT lmdb``: the CIFAR-10 binary batches to
    ``OUTPUT/cifar10_train_lmdb`` (keys ``%05d``, 50,000 records) and
    ``OUTPUT/cifar10_test_lmdb`` (``..._leveldb`` with ``backend="leveldb"``, as Caffe names
    them). Returns ``(train_summary, test_summary)``."""
    output_folder = os.fspath(output_folder)
    backend = options["backend"] = backend_name(options.get("backend")) or "lmdb"
    sources = [CifarSource(input_folder, "train"), CifarSource(input_folder, "test")]
    if os.path.exists(output_folder) and not os.path.isdir(output_folder):
        raise SourceFormatError(f"{output_folder} is a file: give a folder for the two DBs")
    os.makedirs(output_folder, exist_ok=True)
    _small_records(workers, options)
    return tuple(run(src, os.path.join(output_folder, f"cifar10_{src.split}_{backend}"),
                     job="convert_cifar", **options) for src in sources)


def write_arrays(path, images, labels=None, *, channels_last=False, workers=1, **options):
    """Write NumPy images to an LMDB of Datum records, keys ``%08d``.

    ``images``: an (N, C, H, W) array (or (N, H, W) for one channel, or (N, H, W, C) with
    ``channels_last``), or any sequence of such per-image arrays (a memmap works: nothing is
    loaded whole). uint8 images are stored as ``data`` with ``encoded = false`` (what Caffe and
    DALI read as raw pixels); other dtypes as float32 ``float_data``. ``labels``: ints (0 is
    written too) or None. Same guarantees and options as the converters (see :func:`run`),
    ``backend="leveldb"`` included.
    """
    source = ArraySource(images, labels, channels_last=channels_last)
    _small_records(workers, options)
    return run(source, path, job="write_arrays", **options)


class _WriterThread:
    """The thread that owns a DatumWriter's sink while blocks of small arrays stream in: it
    puts each block and commits where the DatumWriter says, so that the caller's loop goes on
    while a commit waits for the disk. (LMDB wants a write transaction begun and committed by
    one thread: while this thread runs, no other touches the sink.) ``stop()`` commits what
    is pending, here, and ends the thread; an error of the thread is raised by ``stop()``."""

    def __init__(self, sink):
        self.sink = sink
        self.error = None
        self._jobs: queue.Queue = queue.Queue(maxsize=2)  # at most two blocks waiting
        self._thread = threading.Thread(target=self._run, name="caffe_lmdb-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        sink = self.sink
        while True:
            job = self._jobs.get()
            if job is None:
                break
            if self.error is not None:
                continue
            keys, values, commit = job
            try:
                sink.put_many(keys, values, ascending=True)  # %0Nd of successive indices
                if commit:
                    sink.commit()
            except BaseException as exc:  # handed to the caller's thread by stop()
                self.error = exc
        if self.error is None:
            try:
                sink.commit()
            except BaseException as exc:
                self.error = exc

    def submit(self, keys, values, commit):
        self._jobs.put((keys, values, commit))

    def stop(self):
        self._jobs.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class DatumWriter:
    """Write Datum records from your own loop, with the converters' guarantees.

    ::

        with DatumWriter("train_lmdb") as w:
            for image, label in my_samples():
                w.put(image, label)            # (C, H, W) array -> key %08d of its position

    ``put(value, label=None, key=None)``: ``value`` is a (C, H, W) array (see
    :func:`write_arrays` for dtypes) or already serialized Datum bytes (stored as they are);
    ``key`` defaults to ``%08d`` of the running index (bytes or str otherwise; keys that do not
    ascend are allowed but slower, a repeated key raises DuplicateKeyError). Records are
    committed every ``commit_every`` (default: 1000, more for records under 4 KiB, see
    :class:`~caffe_lmdb.storage.base.CommitPolicy`); ``commit()`` forces one. ``close()`` (or
    leaving the ``with`` block, even by an exception) commits what was put and returns a
    :class:`Summary`:
    the database always holds every record put before the failure. An existing database is
    refused unless ``overwrite=True``; ``resume=True`` appends to it, numbering on from its
    record count. ``backend="leveldb"`` writes a LevelDB instead of an LMDB.
    """

    def __init__(self, path, *, overwrite=False, resume=False, commit_every=None,
                 map_size=DEFAULT_MAP_SIZE, key_width=8, backend="lmdb"):
        self._t0 = time.perf_counter()
        self.path = os.fspath(path)
        self.backend = backend_name(backend) or "lmdb"
        prepare_output(self.path, overwrite=overwrite, resume=resume, backend=self.backend)
        self._sink = open_sink(self.path, self.backend, map_size=map_size,
                               commit_every=commit_every)
        self.key_width = key_width
        self._done = self._sink.entries  # records put before the block being filled
        self._start = self._done
        self._bytes = 0
        self._closed = False
        self._rows = []  # small arrays of one shape put with default keys, not yet written
        self._labels = []
        self._shape = self._dtype = self._unlabelled = None  # of the block being filled
        self._flush_at = 0
        # blocks are written by a _WriterThread (LMDB) until a record of another kind comes;
        # meanwhile the records and bytes put but not committed are counted here, as the sink
        # counts them, to say where it commits
        self._thread = None
        self._threaded = self.backend == "lmdb"  # (the thread is for LMDB's commits)
        self._uncommitted = self._uncommitted_bytes = 0

    @property
    def index(self):
        """The number of records put so far (and the index of the next default key)."""
        return self._done + len(self._rows)

    def put(self, value, label=None, key=None):
        if (key is None and type(value) is np.ndarray and value.shape == self._shape
                and value.dtype == self._dtype and (label is None) == self._unlabelled
                and not self._closed):  # the next array of the block being filled
            if label is not None:
                label = int(label)
                if not -2147483648 <= label <= 2147483647:
                    raise ValueError(f"{label} does not fit in a Datum's int32 field")
            rows = self._rows
            rows.append(value.tobytes())  # (a copy: the caller may reuse its array)
            self._labels.append(label)
            if len(rows) >= self._flush_at:
                self._flush()
            return
        if self._closed:
            raise ValueError(f"DatumWriter for {self.path} is closed")
        self._flush()
        if key is None and not isinstance(value, (bytes, bytearray, memoryview)):
            arr = np.asarray(value)
            if 0 < arr.nbytes <= _BLOCK_RECORD_BYTES and arr.ndim == 3:
                self._start_block(arr, label)
                self.put(arr, label)
                return
        self._stop_thread(for_good=True)  # a record of another kind: written here from now on
        if key is None:
            key = index_key(self._done, self.key_width)
        elif isinstance(key, str):
            key = key.encode("utf-8")
        if isinstance(value, (bytes, bytearray, memoryview)):
            if label is not None:
                raise ValueError("label only applies to arrays: serialized Datum bytes are "
                                 "stored as they are")
            value = bytes(value)
        else:
            value = array_to_datum_bytes(np.asarray(value), label)
        self._sink.put(key, value)
        self._done += 1
        self._bytes += len(value)
        if self._sink.batch_full:
            self._sink.commit()

    def _start_block(self, arr, label):
        """Small arrays of one shape and dtype, put with default keys, are kept in a block
        and serialized and put together (with NumPy, when the block is full, at a commit
        point, or when a record of another kind comes): the same records, keys and commits as
        one by one, at a fraction of the cost per record."""
        sink = self._sink
        if self._threaded and self._thread is None:
            if sink.policy.auto:  # the commit interval, set now from this first record's size
                sink.policy.first_record(len(array_to_datum_bytes(arr, label)))
            self._uncommitted, self._uncommitted_bytes = sink.pending, sink.pending_bytes
            self._thread = _WriterThread(sink)
        pending = self._uncommitted if self._thread is not None else sink.pending
        rows = max(1, min(sink.commit_every, _BLOCK_BYTES // arr.nbytes))
        self._shape, self._dtype, self._unlabelled = arr.shape, arr.dtype, label is None
        self._flush_at = max(1, min(rows, sink.commit_every - pending))

    def _stop_thread(self, for_good=False):
        """Commit what the writer thread holds and take the sink back to this thread."""
        thread, self._thread = self._thread, None
        if for_good:
            self._threaded = False
        if thread is not None:
            thread.stop()

    def _flush(self):
        """Write the pending block."""
        n = len(self._rows)
        if not n:
            return
        labels = None if self._labels[0] is None else self._labels
        block = np.frombuffer(b"".join(self._rows), self._dtype).reshape((n,) + self._shape)
        values = arrays_to_datum_bytes(block, labels)
        self._rows = []
        keys = index_keys(self._done, n, self.key_width)
        self._done += n
        self._labels = []
        self._shape = None  # the next array starts a new block (and a new flush point)
        size = sum(map(len, values))
        self._bytes += size
        sink = self._sink
        if self._thread is not None:
            if self._thread.error is not None:
                self._stop_thread(for_good=True)  # raises the thread's error
            self._uncommitted += n
            self._uncommitted_bytes += size
            commit = sink.policy.full(self._uncommitted, self._uncommitted_bytes)
            if commit:
                self._uncommitted = self._uncommitted_bytes = 0
            self._thread.submit(keys, values, commit)
            return
        put_many = getattr(sink, "put_many", None)
        if put_many is not None:
            put_many(keys, values)
        else:
            for k, v in zip(keys, values, strict=True):
                sink.put(k, v)
        if sink.batch_full:
            sink.commit()

    def commit(self):
        self._flush()
        self._stop_thread()
        self._sink.commit()

    def close(self):
        if not self._closed:
            self._closed = True
            try:
                try:
                    self._flush()
                finally:
                    self._stop_thread()
            finally:
                self._sink.close()
        return Summary(path=self.path, total=self.index, written=self._sink.entries,
                       bytes=self._bytes, seconds=time.perf_counter() - self._t0,
                       resumed_from=self._start, file_bytes=self._sink.file_size(),
                       map_grown=self._sink.grown, backend=self.backend)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
