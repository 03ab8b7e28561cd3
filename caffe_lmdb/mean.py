"""Mean files (``.binaryproto``): the BlobProto that Caffe's ``transform_param { mean_file }``
reads, as written by compute_image_mean."""
import os

import numpy as np

from .codec import BlobProto, blobproto_to_array
from .errors import DatumDecodeError


def read_mean(path):
    """The mean stored in a ``.binaryproto`` file, as a (C, H, W) float32 array.

    A blob with num > 1 is returned whole, (num, C, H, W).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    blob = BlobProto()
    try:
        blob.ParseFromString(raw)
        arr = blobproto_to_array(blob)
    except Exception as exc:
        raise DatumDecodeError(f"{path} is not a Caffe mean file (BlobProto): {exc}") from exc
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def mean_bytes(array):
    """Serialized BlobProto of a mean, exactly as compute_image_mean writes it: the legacy shape
    fields num = 1, channels, height, width and the values as packed float32 ``data``."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"a mean is (C, H, W) or (1, C, H, W); got shape {arr.shape}")
    blob = BlobProto(num=1, channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    blob.data.extend(arr.ravel())
    return blob.SerializeToString()


def write_mean(array, path):
    """Write a (C, H, W) mean to ``path`` as a Caffe ``.binaryproto`` (see :func:`mean_bytes`)."""
    data = mean_bytes(array)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# compute_image_mean
# ---------------------------------------------------------------------------------------------


def compute_mean(source, progress=None, batch_size=256):
    """The mean image of a database, as Caffe's compute_image_mean: a (C, H, W) float32 array.

    ``source`` is a path or a :class:`~caffe_lmdb.reader.DatumDB` (its path is read with the
    default options: planar BGR as stored, encoded records decoded natively, with the file's
    own channel count, as Caffe's tool does). Every record must have one shape (else
    ShapeMismatchError naming the first record that differs).

    Exactness: pixel (uint8) records are summed as exact integers (uint32 per batch, added into
    an int64 total, exact for up to 3.6e16 records), float_data records in float64; the mean is
    the sum divided by the count in float64, rounded once to float32. Caffe sums in float32,
    which is exact below 2**24 / 255 = 65,793 records and drifts beyond; on smaller databases
    both give the same float32 values. ``progress(done, total)`` is called after each batch.
    """
    from .errors import ShapeMismatchError, _show_key
    from .reader import DatumDB
    from .reader import open as open_db

    db = open_db(source.path if isinstance(source, DatumDB) else source)
    n = len(db)
    if n == 0:
        raise ValueError(f"{db.path} holds no records: there is no mean to compute")
    total = None
    done = 0
    for images, _ in db.batches(batch_size, reuse=True):
        if total is None:
            total = np.zeros(images.shape[1:], np.int64 if images.dtype == np.uint8
                             else np.float64)
        elif images.shape[1:] != total.shape:
            key = db.keys()[done]
            raise ShapeMismatchError(f"{db.path}: record {_show_key(key)} has shape "
                                     f"{images.shape[1:]}, the records before it "
                                     f"{total.shape}: a mean needs one shape")
        if images.dtype == np.uint8:
            total += np.add.reduce(images, axis=0, dtype=np.uint32)
        else:
            total += np.add.reduce(images, axis=0, dtype=np.float64)
        done += len(images)
        if progress is not None:
            progress(done, n)
    return (total / np.float64(n)).astype(np.float32)


def channel_means(mean):
    """Per-channel mean values of a (C, H, W) mean image (what compute_image_mean logs as
    ``mean_value channel [c]``), as float64."""
    mean = np.asarray(mean)
    return mean.reshape(mean.shape[0], -1).mean(axis=1, dtype=np.float64)
