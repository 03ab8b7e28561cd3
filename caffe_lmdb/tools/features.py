"""Extracted features: Caffe's ``extract_features`` LMDBs to and from NumPy.

``extract_features`` writes one LMDB per blob, one record per image: key ``%010d`` of the
image index, a Datum with ``channels``, ``height``, ``width`` and every value in (unpacked)
``float_data``, no label. The image index counts the images the net's data layer produced, in
its order (for a Data layer: the key order of its source LMDB, wrapping around at its end).

* :func:`read_features` reads such an LMDB into one (N, C, H, W) float32 array (or (N, D)),
  rows in image-index order, checking that every record has one shape.
* :func:`features_to_npy` streams it into a ``.npy`` file, a chunk at a time.
* :func:`write_features` writes the same format from NumPy (byte-identical to Caffe's).
* :func:`feature_names` pairs the rows with the images they came from (extract_features drops
  the source keys), from the source LMDB or the list file.

Keys that are numbers without zero padding (older tools wrote ``"1"``, ``"10"``, ``"100"``,
which LMDB sorts as text) are put back in numeric order with a :class:`FeatureKeyWarning`;
missing image indices are reported the same way (rows then skip them: ask for
``return_index=True`` to get each row's image index).
"""
import os
import warnings

import numpy as np

from ..errors import NotADatumDBError, show_key
from ..format.datum import datum_bytes, parse_datum
from ..format.keys import path_of
from ..format.listfile import read_list_file
from ..read.keyindex import DenseKeys
from ..read.reader import as_db

__all__ = ["read_features", "features_to_npy", "feature_shape", "write_features", "feature_names",
           "FeatureKeyWarning"]

_CHUNK = 1024


class FeatureKeyWarning(UserWarning):
    """Feature keys out of numeric order (not zero-padded), or image indices missing."""


def _image_indices(db):
    """Image index of every record, in key order (a NumPy int64 array)."""
    index = db.keys()
    if isinstance(index, DenseKeys):
        return np.arange(index.start, index.start + index.count, dtype=np.int64)
    numbers = np.empty(len(index), np.int64)
    for i, key in enumerate(index):
        if not key.isdigit():
            raise NotADatumDBError(
                f"{db.path}: key {show_key(key)} is not an image index, so this is not an "
                "extract_features LMDB (keys %010d); read it with caffe_lmdb.open()")
        numbers[i] = int(key)
    return numbers


def _layout(db):
    """(rows, indices): the output row of each record (in key order) and the image index of
    each row. Warns about unpadded keys and gaps."""
    numbers = _image_indices(db)
    n = len(numbers)
    order = np.argsort(numbers, kind="stable")
    indices = numbers[order]
    if n and (np.diff(indices) == 0).any():
        dup = indices[1:][np.diff(indices) == 0][0]
        raise NotADatumDBError(f"{db.path}: image index {dup} appears under two keys (e.g. "
                               "'1' and '01'): cannot tell which record is that image")
    rows = np.empty(n, np.int64)
    rows[order] = np.arange(n)
    if n and (order != np.arange(n)).any():
        warnings.warn(f"{db.path}: feature keys are numbers without zero padding, so LMDB's "
                      "order is not the image order; the rows were put back in numeric order",
                      FeatureKeyWarning, stacklevel=3)
    top = int(indices[-1]) + 1 if n else 0
    if top != n:
        missing = np.setdiff1d(np.arange(top), indices)
        shown = ", ".join(map(str, missing[:10].tolist())) + (", ..." if len(missing) > 10
                                                             else "")
        warnings.warn(f"{db.path}: {len(missing)} image indices have no record ({shown}); the "
                      "rows skip them (return_index=True gives each row's image index)",
                      FeatureKeyWarning, stacklevel=3)
    return rows, indices


def _shape(db):
    """(C, H, W) of the first record."""
    return db.record_shape(0)[0]


def _chunk_records(db):
    """Records per chunk: about 16 MiB of values, at most 1024 records (the decoder reads a
    chunk's values where they lie in the file, or joined in one buffer, and splits its decoding
    across cores: each chunk pays a fixed cost, which on 4 MiB chunks of 4,096-float records
    was a tenth of the time)."""
    with db.begin() as txn:
        size = len(txn.get(db.keys()[0]))
    return min(_CHUNK, max(16, (16 << 20) // max(size, 1)))


def _fill(db, rows, shape, write, progress=None, target=None):
    """Decode every record (key order, a chunk at a time). ``target(r)`` may return the output
    array slice for rows ``r`` (decoded straight into it); otherwise the float32 (k, C, H, W)
    block of the chunk is handed to ``write(r, block)``."""
    n = len(db)
    direct = set()  # chunks decoded straight into their rows of the result

    def out(start, k, _shape, _dtype):
        rows_out = target(rows[start:start + k]) if target is not None else None
        if rows_out is not None:
            direct.add(start)
        return rows_out

    for start, images, _ in db.scan(_chunk_records(db), out=out, dtype=np.float32,
                                    purpose="features of one blob"):
        k = len(images)
        if start not in direct:
            write(rows[start:start + k], images)
        if progress is not None:
            progress(start + k, n)


def _run(r):
    """(first, stop) when rows r are consecutive and ascending, else None."""
    if r[-1] - r[0] == len(r) - 1 and (len(r) == 1 or r[1] > r[0]):
        return int(r[0]), int(r[-1]) + 1
    return None


def read_features(source, flat=False, return_index=False, progress=None, backend=None):
    """An extract_features LMDB (path or DatumDB) as an (N, C, H, W) float32 array, rows in
    image-index order; (N, C*H*W) with ``flat``. With ``return_index``: ``(array, indices)``,
    the image index of each row (``arange(N)`` unless indices are missing).

    ``progress(done, total)`` is called after each chunk of records."""
    db = as_db(source, backend=backend)
    rows, indices = _layout(db)
    n = len(rows)
    if n == 0:
        out = np.zeros((0,), np.float32)
        return (out, indices) if return_index else out
    shape = _shape(db)
    out = np.empty((n,) + shape, np.float32)

    def target(r):
        run = _run(r)
        return None if run is None else out[run[0]:run[1]]

    def write(r, block):
        out[r] = block

    _fill(db, rows, shape, write, progress, target)
    if flat:
        out = out.reshape(n, -1)
    return (out, indices) if return_index else out


def feature_shape(source, backend=None):
    """``(shape, indices)`` of an extract_features LMDB without reading its values: the
    (C, H, W) of its first record and the image index of each row."""
    db = as_db(source, backend=backend)
    rows, indices = _layout(db)
    return (_shape(db) if len(rows) else None), indices


def features_to_npy(source, npy_path, flat=False, progress=None, backend=None):
    """Stream an extract_features LMDB into a ``.npy`` file without holding all features:
    one chunk of records in memory at a time, rows written at their place in the file.

    The file is written under a temporary name and renamed when complete, so an interrupted
    run never leaves a truncated ``.npy``. Returns ``(shape, indices)``."""
    db = as_db(source, backend=backend)
    rows, indices = _layout(db)
    n = len(rows)
    shape = _shape(db) if n else (0,)
    full = (n, int(np.prod(shape))) if flat else (n,) + tuple(shape)
    npy_path = os.fspath(npy_path)
    tmp = npy_path + ".part"
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": full})
        header = f.tell()
        row_bytes = 4 * int(np.prod(shape))

        def write(r, block):
            flat_rows = block.reshape(len(r), -1)
            at = 0
            while at < len(r):  # runs of consecutive rows: one write each
                end = at + 1
                while end < len(r) and r[end] == r[end - 1] + 1:
                    end += 1
                f.seek(header + int(r[at]) * row_bytes)
                f.write(flat_rows[at:end].tobytes())
                at = end

        try:
            if n:
                _fill(db, rows, shape, write, progress)
            f.truncate(header + n * row_bytes)
        except BaseException:
            f.close()
            os.unlink(tmp)
            raise
    os.replace(tmp, npy_path)
    return full, indices


def write_features(path, array, *, overwrite=False, start=0, commit_every=None,
                   backend="lmdb"):
    """Write features as extract_features does: one record per row, key ``%010d`` of
    ``start + row``, ``channels``/``height``/``width`` and unpacked float32 ``float_data``,
    no label (byte-identical to Caffe's records). ``array``: (N, C, H, W), or (N, D) stored as
    D x 1 x 1 (as Caffe stores an InnerProduct blob). Uses the project's writer (an existing
    database is refused unless ``overwrite``; commits every ``commit_every`` records;
    ``backend="leveldb"`` writes a LevelDB, as ``extract_features ... leveldb``).
    Returns the writer's Summary."""
    from ..write.convert import DatumWriter  # the write side: imported only when writing

    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None, None]
    elif array.ndim == 1:
        array = array[:, None, None, None]
    if array.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W) or (N, D); got shape {array.shape}")
    c, h, w = array.shape[1:]
    with DatumWriter(path, overwrite=overwrite, commit_every=commit_every,
                     key_width=10, backend=backend) as writer:
        for i in range(len(array)):
            writer.put(datum_bytes(c, h, w, float_data=array[i]), key=b"%010d" % (start + i))
    return writer.close()


def feature_names(source, count):
    """``(name, label)`` of the image behind each of ``count`` feature rows.

    ``source`` is what the net's data layer read: the LMDB of a Data layer (row i is its i-th
    record in key order, wrapping around at the end as Caffe's DataLayer does; the name is the
    path part of ``%08d_<path>`` keys, else the key) or the list file of an ImageData layer
    (row i is line i, wrapping; ``path label`` lines, the label after the last space).
    A list file that convert_imageset turned into the LMDB is NOT the same order when some
    images could not be read (Caffe skips them): give the LMDB then."""
    if os.path.isdir(os.fspath(source)):
        db = as_db(source)
        if not len(db):
            raise NotADatumDBError(f"{db.path} is empty: no names to pair with features")
        index = db.keys()
        names = []
        for start, values in db.value_chunks(_CHUNK):
            for j, value in enumerate(values):
                key = index[start + j]
                name = path_of(key) or key
                names.append((name.decode("utf-8", "replace"), parse_datum(value).label))
    else:
        names = _list_lines(source)
        if not names:
            raise NotADatumDBError(f"{source} has no lines: no names to pair with features")
    return [names[i % len(names)] for i in range(count)]


def _list_lines(path):
    """``(path, label)`` of each line of a Caffe list file."""
    return [(name.decode("utf-8", "replace"), label) for name, label, _ in read_list_file(path)]
