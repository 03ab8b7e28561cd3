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
