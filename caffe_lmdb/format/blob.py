"""BlobProto records: pycaffe's array helpers and Caffe's mean files (``.binaryproto``), the
BlobProto that ``transform_param { mean_file }`` reads and compute_image_mean writes."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatumDecodeError
from .datum import messages, write_varint

if TYPE_CHECKING:
    from .proto import BlobProto

__all__ = ["array_to_blobproto", "blobproto_to_array", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "read_mean", "write_mean", "mean_bytes"]


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> BlobProto:
    """An N-D array to a BlobProto with ``shape.dim`` (as pycaffe does); data as float32."""
    arr = np.asarray(arr)
    blob = messages().BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(np.float32).ravel())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, np.float32).ravel())
    return blob


def blobproto_to_array(blob: BlobProto, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as a float32 array: the legacy (num, channels, height, width)
    shape when any of those is set, else ``shape.dim``."""
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float32)
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") \
            or blob.HasField("width"):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if int(np.prod(shape)) != values.size:
        raise DatumDecodeError(f"blob holds {values.size} values but its shape is {shape}")
    return values.reshape(shape)


def arraylist_to_blobprotovector_str(arraylist: list[np.ndarray]) -> bytes:
    """A list of arrays to serialized BlobProtoVector bytes."""
    vec = messages().BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(str_: bytes) -> list[np.ndarray]:
    """Serialized BlobProtoVector bytes to a list of arrays."""
    vec = messages().BlobProtoVector()
    try:
        vec.ParseFromString(str_)
    except Exception as exc:  # protobuf's DecodeError
        raise DatumDecodeError(f"not a BlobProtoVector: {exc}") from exc
    return [blobproto_to_array(blob) for blob in vec.blobs]


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """The mean stored in a ``.binaryproto`` file, as a (C, H, W) float32 array.

    A blob with num > 1 is returned whole, (num, C, H, W).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    blob = messages().BlobProto()
    try:
        blob.ParseFromString(raw)
        arr = blobproto_to_array(blob)
    except Exception as exc:
        raise DatumDecodeError(f"{path} is not a Caffe mean file (BlobProto): {exc}") from exc
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def mean_bytes(array: np.ndarray) -> bytes:
    """Serialized BlobProto of a mean, exactly as compute_image_mean writes it: the legacy shape
    fields num = 1, channels, height, width and the values as packed float32 ``data``.

    Written directly in the wire format, field by field in number order as protobuf does (the
    tests compare it with protobuf's own serialization and with Caffe's files), so that writing
    a mean does not import the protobuf runtime."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"a mean is (C, H, W) or (1, C, H, W); got shape {arr.shape}")
    c, h, w = (int(v) for v in arr.shape)
    if max(c, h, w) >= 1 << 31:
        raise ValueError(f"a mean of shape {arr.shape} does not fit BlobProto's int32 fields")
    values = np.ascontiguousarray(arr, dtype="<f4").reshape(-1)
    parts = [b"\x08\x01", b"\x10", write_varint(c), b"\x18", write_varint(h), b"\x20",
             write_varint(w)]
    if values.size:  # a packed field with no values is left out
        parts += [b"\x2a", write_varint(values.nbytes), values.tobytes()]
    return b"".join(parts)


def write_mean(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (C, H, W) mean to ``path`` as a Caffe ``.binaryproto`` (see :func:`mean_bytes`)."""
    data = mean_bytes(array)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
