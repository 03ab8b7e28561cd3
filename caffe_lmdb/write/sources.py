"""Sources: datasets on disk (or in memory) -> samples in their final order.

A source fixes, before any work is done, each sample's position (``index``) and its LMDB
``key``. Nothing downstream decides order: any executor, any number of workers, and a resumed
run all write the same keys with the same values.

Every source has:

* ``len(source)``: the number of samples (skipped ones included);
* ``source.samples(start=0)``: an iterator of samples from position ``start`` on, reading lazily
  (an MNIST or CIFAR file is streamed, never loaded whole);
* ``source.fingerprint()``: a JSON-able description of the inputs and options, which a resumed
  run must match;
* ``source.chunk``: how many samples one worker task should take (1 for images, so that a
  per-image timeout applies to a single image; hundreds for tiny MNIST/CIFAR records).

Samples are small frozen dataclasses that pickle cheaply; :mod:`caffe_lmdb.encode` turns one
into record bytes using nothing but the sample itself.
"""
import gzip
import hashlib
import os
import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import KeyTooLongError, OptionError, SourceFormatError
from ..format.datum import arrays_to_datum_bytes
from ..format.imagesize import DEFAULT_MAX_PIXELS
from ..format.keys import MAX_KEY_BYTES, imageset_key, index_key, index_keys
from ..format.listfile import parse_list_line, read_list_file

__all__ = [
    "Keyed", "ImageOptions", "ImageSample", "RawSample", "ArraySample",
    "ListFileSource", "FolderSource", "MnistSource", "CifarSource", "ArraySource",
    "IMAGE_EXTENSIONS", "parse_list_line",
]

#: File extensions convert_folder picks up (those torchvision's ImageFolder accepts).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageOptions:
    """How an image becomes a record (convert_imageset's flags).

    ``resize``: (height, width), applied when both are > 0; ``gray``: decode as one channel;
    ``encode``: None for raw pixels, True for the file's own format, or a type such as "png".
    ``max_pixels``: an image whose header declares more pixels is skipped unread (a
    decompression bomb?); None for no limit (see :mod:`caffe_lmdb.imagesize`).
    """
    resize: tuple | None = None
    gray: bool = False
    encode: object = None
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Keyed:
    """What every sample and every result carries: its position in the output and its key."""
    index: int
    key: bytes


@dataclass(frozen=True)
class ImageSample(Keyed):
    """One image file to read. ``where`` names it in messages (``list.txt:4``)."""
    path: str
    label: int
    where: str
    options: ImageOptions
    targets: tuple | None = None


@dataclass(frozen=True)
class RawSample(Keyed):
    """Planar pixels already in Caffe's layout (MNIST, CIFAR): written without ``encoded``."""
    data: bytes
    shape: tuple
    label: int
    where: str


@dataclass(frozen=True)
class ArraySample(Keyed):
    """A (C, H, W) array: uint8 goes to ``data`` (with ``encoded = false``), others to
    ``float_data``. ``label`` None leaves the field out."""
    array: object
    label: object
    where: str


def _check_key(key, where, hint):
    if len(key) > MAX_KEY_BYTES:
        raise KeyTooLongError(f"{where}: the key would be {len(key)} bytes, over LMDB's limit of "
                              f"{MAX_KEY_BYTES}; {hint}")


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stat_id(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _join(root, path):
    """Caffe concatenates root and path; a root without a trailing separator gets one."""
    if not root or root.endswith(os.sep):
        return root + path
    return os.path.join(root, path)


def _permutation(n, shuffle, seed):
    """The order samples are written in, and the seed that makes it reproducible."""
    if not shuffle:
        return None, None
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 63)
    return np.random.default_rng(seed).permutation(n), seed


#: images per worker task when the files are small (see _image_chunk): each task, and each
#: batch of results handed to the writer, has a fixed cost (8,000 JPEGs of 128 x 96 on two
#: threads: 1.61x the plain loop with 16, 1.73x with 32, 1.77x with 64, no more with 128)
SMALL_IMAGE_CHUNK = 64
_SMALL_IMAGE_BYTES = 32 << 10


def _image_chunk(root, paths, probes=16):
    """Images per worker task: one (a timeout then applies to a single image), or
    SMALL_IMAGE_CHUNK when the files are small (a few sampled across the list are under
    32 KiB): their decoding costs less than handing each one to a worker and back. A task
    that fails is run again image by image (see convert.run), so a bad file is still found."""
    if not paths:
        return 1
    step = max(1, len(paths) // probes)
    try:
        sizes = [os.stat(_join(root, os.fsdecode(paths[i]))).st_size
                 for i in range(0, len(paths), step)[:probes]]
    except OSError:
        return 1
    return SMALL_IMAGE_CHUNK if max(sizes) <= _SMALL_IMAGE_BYTES else 1


class _ImageSource:
    """Shared by list-file and folder sources. The entries are kept compactly (a list of path
    bytes, an array of labels, an array of targets), as a list of a million lines must fit."""

    chunk = 1
    reads_image_files = True  # (convert.run: OpenCV threads for small images)

    def __init__(self, root, paths, labels, targets, options, shuffle, seed, index_keys,
                 key_hint):
        self.root = os.fspath(root)
        self.options = options
        self.index_keys = index_keys
        self._paths = paths
        self._labels = np.asarray(labels, dtype=np.int64)
        self._targets = targets
        self._order, self.seed = _permutation(len(paths), shuffle, seed)
        self.shuffle = shuffle
        self.chunk = _image_chunk(self.root, paths)
        # (paths are bytes: a key is its number, "_" and the path, checked only when the
        # longest path could make one too long)
        longest = max(map(len, paths), default=0)
        if not index_keys and longest + len(imageset_key(len(paths), b"")) > MAX_KEY_BYTES:
            for i in range(len(paths)):
                j = self._entry(i)
                _check_key(self._key(i, paths[j]), self._where(j), key_hint)

    def __len__(self):
        return len(self._paths)

    def _entry(self, i):
        """The entry written at position i."""
        return i if self._order is None else int(self._order[i])

    def _where(self, j):
        return os.fsdecode(self._paths[j])

    def _key(self, i, path):
        return index_key(i) if self.index_keys else imageset_key(i, path)

    def samples(self, start=0):
        root = self.root
        for i in range(start, len(self._paths)):
            j = self._entry(i)
            path = self._paths[j]
            targets = None if self._targets is None else tuple(self._targets[j].tolist())
            yield ImageSample(i, self._key(i, path), _join(root, os.fsdecode(path)),
                              int(self._labels[j]), self._where(j), self.options, targets)

    def _options_fingerprint(self):
        o = self.options
        limit = {} if o.max_pixels == DEFAULT_MAX_PIXELS else {"max_pixels": o.max_pixels}
        return {"resize": list(o.resize) if o.resize else None, "gray": o.gray,
                "encode": o.encode, "shuffle": self.shuffle, "seed": self.seed,
                "index_keys": self.index_keys, **limit}


class ListFileSource(_ImageSource):
    """convert_imageset's input: ``ROOT`` + a list file of ``path label`` lines.

    Keys are ``%08d_<path as listed>`` where the number is the line's position (after the
    shuffle, when asked), or ``%08d`` alone with ``index_keys``. ``targets=K`` reads K floats
    after the label of every line (see :func:`parse_list_line`). The whole list is parsed
    first, so a bad line stops the conversion before anything is written.
    """

    def __init__(self, root, list_file, options=ImageOptions(), shuffle=False, seed=None,
                 targets=0, index_keys=False):
        self.list_file = os.fspath(list_file)
        self.targets = int(targets)
        paths, labels, values = [], [], []
        for path, label, floats in read_list_file(self.list_file, self.targets):
            paths.append(path)
            labels.append(label)
            if self.targets:
                values.append(floats)
        targets_array = np.array(values, dtype=np.float64) if self.targets else None
        super().__init__(root, paths, labels, targets_array, options, shuffle, seed,
                         index_keys, "shorten the paths, or use index-only keys (--index_keys)")

    def _where(self, j):
        return f"{self.list_file}:{j + 1}"  # entry j is line j + 1 (1-based, as editors count)

    def fingerprint(self):
        return {"source": "list", "root": os.path.abspath(self.root),
                "list_file": os.path.abspath(self.list_file),
                "list_sha256": _file_digest(self.list_file), "targets": self.targets,
                **self._options_fingerprint()}


class FolderSource(_ImageSource):
    """A folder of class subfolders (torchvision's ImageFolder layout).

    Classes are the subfolder names, sorted; label i is the i-th class. Images are the files
    with an extension in :data:`IMAGE_EXTENSIONS` (any case) found under each class folder,
    recursively, in sorted order. Keys are ``%08d_<class>/<file>`` (paths relative to root).
    """

    def __init__(self, root, options=ImageOptions(), shuffle=False, seed=None, index_keys=False):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise SourceFormatError(f"{root} is not a folder of class subfolders")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise SourceFormatError(f"{root} has no class subfolders (expected ROOT/<class>/"
                                    "<image files>)")
        paths, labels = [], []
        for label, name in enumerate(self.classes):
            top = os.path.join(root, name)
            for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(IMAGE_EXTENSIONS):
                        rel = os.path.relpath(os.path.join(dirpath, fn), root)
                        rel = rel.replace(os.sep, "/")
                        paths.append(os.fsencode(rel))
                        labels.append(label)
        if not paths:
            raise SourceFormatError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                    "in its class subfolders")
        super().__init__(root if root.endswith(os.sep) else root + os.sep, paths, labels, None,
                         options, shuffle, seed, index_keys, "use index-only keys (--index_keys)")

    def fingerprint(self):
        listing = hashlib.sha256(b"\n".join(self._paths)).hexdigest()
        return {"source": "folder", "root": os.path.abspath(self.root),
                "classes": self.classes, "listing_sha256": listing,
                **self._options_fingerprint()}


def _open_maybe_gzip(path):
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def _read_exact(f, n, path, what):
    try:
        data = f.read(n)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SourceFormatError(f"{path}: the gzip stream is damaged inside {what} ({exc})") \
            from exc
    if len(data) != n:
        raise SourceFormatError(f"{path}: file ends inside {what} (truncated?)")
    return data


def _check_length(path, needed, what):
    """An uncompressed input must hold what its header declares (a gzipped one is checked
    while it is read)."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return
    size = os.path.getsize(path)
    if size < needed:
        raise SourceFormatError(f"{path}: the header declares {what} ({needed:,} bytes with the "
                                f"header) but the file holds {size:,} bytes (truncated?)")


class MnistSource:
    """MNIST idx files (``images-idx3-ubyte``, ``labels-idx1-ubyte``), gzipped or not.

    Records as convert_mnist_data writes them: 1 x rows x cols, keys ``%08d``.
    """

    chunk = 512

    def __init__(self, images, labels):
        self.images, self.labels = os.fspath(images), os.fspath(labels)
        with _open_maybe_gzip(self.images) as f:
            magic, n, rows, cols = struct.unpack(">IIII", _read_exact(f, 16, self.images,
                                                                      "the header"))
        if magic != 2051:
            raise SourceFormatError(f"{self.images}: not an MNIST image file (magic {magic}, "
                                    "expected 2051)")
        with _open_maybe_gzip(self.labels) as f:
            lmagic, ln = struct.unpack(">II", _read_exact(f, 8, self.labels, "the header"))
        if lmagic != 2049:
            raise SourceFormatError(f"{self.labels}: not an MNIST label file (magic {lmagic}, "
                                    "expected 2049)")
        if n != ln:
            raise SourceFormatError(f"{self.images} has {n} images but {self.labels} has "
                                    f"{ln} labels")
        if max(rows, cols, rows * cols) >= 1 << 31:  # a Datum's int32 fields, protobuf's 2 GB
            raise SourceFormatError(f"{self.images}: images of {rows} x {cols} pixels are too "
                                    "large for a Datum (a damaged header?)")
        _check_length(self.images, 16 + n * rows * cols, f"{n} images of {rows} x {cols}")
        _check_length(self.labels, 8 + n, f"{n} labels")
        self.count, self.rows, self.cols = n, rows, cols

    def __len__(self):
        return self.count

    def samples(self, start=0, block=4096):
        size = self.rows * self.cols
        block = max(1, min(block, (16 << 20) // max(size, 1)))  # at most 16 MB read at once
        with _open_maybe_gzip(self.images) as fi, _open_maybe_gzip(self.labels) as fl:
            fi.seek(16 + start * size)
            fl.seek(8 + start)
            i = start
            while i < self.count:
                n = min(block, self.count - i)
                pixels = _read_exact(fi, n * size, self.images, f"image {i + n - 1}")
                labels = _read_exact(fl, n, self.labels, f"label {i + n - 1}")
                for j in range(n):
                    yield RawSample(i + j, index_key(i + j), pixels[j * size:(j + 1) * size],
                                    (1, self.rows, self.cols), labels[j], f"image {i + j}")
                i += n

    def fingerprint(self):
        return {"source": "mnist", "images": _stat_id(self.images),
                "labels": _stat_id(self.labels)}


CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_BATCH = 10000  # convert_cifar_data's key stride per training batch


class CifarSource:
    """CIFAR-10 binary batches (``data_batch_1..5.bin`` for ``split="train"``,
    ``test_batch.bin`` for ``"test"``): records as convert_cifar_data writes them, 3 x 32 x 32
    planar RGB as stored in the file, keys ``%05d`` of ``batch * 10000 + item``.

    Batches may hold fewer than 10,000 records (the keys keep Caffe's stride, so they have gaps).
    """

    chunk = 512

    def __init__(self, folder, split="train"):
        self.folder = os.fspath(folder)
        self.split = split
        if split == "train":
            names = [f"data_batch_{k}.bin" for k in range(1, 6)]
        elif split == "test":
            names = ["test_batch.bin"]
        else:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.files, self.counts = [], []
        for name in names:
            path = os.path.join(self.folder, name)
            if not os.path.isfile(path):
                raise SourceFormatError(f"{path}: no such CIFAR-10 batch file (the binary "
                                        "version: data_batch_1..5.bin, test_batch.bin)")
            size = os.path.getsize(path)
            if size % CIFAR_RECORD or size // CIFAR_RECORD > CIFAR_BATCH:
                raise SourceFormatError(f"{path}: {size} bytes is not a CIFAR-10 batch "
                                        f"(up to {CIFAR_BATCH} records of {CIFAR_RECORD} bytes)")
            self.files.append(path)
            self.counts.append(size // CIFAR_RECORD)

    def __len__(self):
        return sum(self.counts)

    def samples(self, start=0, block=2048):
        done = 0
        for fileid, (path, count) in enumerate(zip(self.files, self.counts, strict=True)):
            if start >= done + count:
                done += count
                continue
            first = max(0, start - done)
            with open(path, "rb") as f:
                f.seek(first * CIFAR_RECORD)
                item = first
                while item < count:
                    n = min(block, count - item)
                    raw = _read_exact(f, n * CIFAR_RECORD, path, f"record {item + n - 1}")
                    for j in range(n):
                        rec = raw[j * CIFAR_RECORD:(j + 1) * CIFAR_RECORD]
                        number = fileid * CIFAR_BATCH + item + j
                        yield RawSample(done + item + j, index_key(number, 5), rec[1:],
                                        (3, 32, 32), rec[0], f"{path} record {item + j}")
                    item += n
            done += count

    def fingerprint(self):
        return {"source": "cifar", "split": self.split,
                "files": [_stat_id(p) for p in self.files]}


class ArraySource:
    """In-memory images: an (N, C, H, W) array (or (N, H, W), one channel), or any sequence of
    (C, H, W) arrays; ``channels_last`` for (N, H, W, C). ``labels``: a sequence of ints, or
    None to leave the field out. Keys ``%08d``. Nothing is copied up front."""

    chunk = 64

    def __init__(self, images, labels=None, channels_last=False):
        self.images = images
        self.labels = labels
        self.channels_last = channels_last
        self.count = len(images)
        if labels is not None and len(labels) != self.count:
            raise ValueError(f"{self.count} images but {len(labels)} labels")
        if labels is not None:
            _check_integer_labels(labels)

    def __len__(self):
        return self.count

    def samples(self, start=0):
        for i in range(start, self.count):
            arr = np.asarray(self.images[i])
            if arr.ndim == 2:
                arr = arr[None]
            elif self.channels_last and arr.ndim == 3:
                arr = arr.transpose(2, 0, 1)
            if arr.ndim != 3:
                raise ValueError(f"image {i}: expected (C, H, W) (or (H, W)), got shape "
                                 f"{arr.shape}")
            label = None if self.labels is None else int(self.labels[i])
            yield ArraySample(i, index_key(i), arr, label, f"image {i}")

    def value_blocks(self, start, block):
        """The records from ``start`` on as ``(first, keys, values)`` blocks of ``block``,
        serialized a block at a time with NumPy (the same bytes as encode() of each sample);
        None when the images are not one NumPy array (or the labels not integers): the
        converter then encodes sample by sample."""
        images = self.images
        if not isinstance(images, np.ndarray) or images.ndim not in (3, 4) or not images.size:
            return None
        labels = self.labels
        if labels is not None:
            labels = np.asarray(labels)
            if labels.dtype.kind not in "iub" or labels.shape != (self.count,):
                return None
        return self._blocks(start, block, labels)

    def _blocks(self, start, block, labels):
        for first in range(start, self.count, block):
            stop = min(self.count, first + block)
            arrays = np.asarray(self.images[first:stop])
            if arrays.ndim == 3:
                arrays = arrays[:, None]
            elif self.channels_last:
                arrays = arrays.transpose(0, 3, 1, 2)
            values = arrays_to_datum_bytes(arrays, None if labels is None
                                           else labels[first:stop])
            yield first, index_keys(first, stop - first), values

    def fingerprint(self):
        return None  # in-memory data cannot be checked on resume


def _check_integer_labels(labels):
    """A Datum's label is an int32: refuse labels that are not whole numbers (0.5 would be
    stored as 0) or that do not fit, before anything is written."""
    arr = np.asarray(labels)
    if arr.dtype == object:
        arr = np.asarray([float(v) if not isinstance(v, (int, np.integer)) else v
                          for v in labels])
    if arr.dtype.kind in "fc":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if len(bad):
            i = int(bad[0])
            raise OptionError(f"label {i} is {labels[i]!r}: a Datum's label is an integer (it "
                              "would be stored as " + (f"{int(arr[i])})" if np.isfinite(arr[i])
                                                       else "nothing)") +
                              "; for float targets write them to a float database beside it "
                              "(convert-imageset --targets=K, or write_arrays of a (N, K, 1, 1)"
                              " float32 array with the same keys)")
    elif arr.dtype.kind not in "iub":
        raise OptionError(f"labels must be integers, got {arr.dtype} values")
    if arr.size and (arr.min() < -(1 << 31) or arr.max() >= (1 << 31)):
        raise OptionError("labels must fit in a Datum's int32 label")
