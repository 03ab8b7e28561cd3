"""Extracted features: Caffe's extract_features LMDBs read exactly, streamed to .npy, written
back byte for byte, unpadded keys and gaps, names of the images behind the rows."""
import warnings

import numpy as np
import pytest
from conftest import expected, read_lmdb
from helpers import float_db, write_lmdb

import caffe_lmdb
from caffe_lmdb.errors import NotADatumDBError, ShapeMismatchError
from caffe_lmdb.format.blob import read_mean
from caffe_lmdb.tools import features
from caffe_lmdb.tools.features import (
    FeatureKeyWarning,
    feature_names,
    features_to_npy,
    read_features,
    write_features,
)

BLOBS = ["features_data_lmdb", "features_pool1_lmdb", "features_ip1_lmdb",
         "features_label_lmdb"]


@pytest.mark.parametrize("name", BLOBS)
def test_read_features_exact(fixtures, name):
    want = expected(fixtures, name)["array"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Caffe's %010d keys: no warning
        got, index = read_features(fixtures / name, return_index=True)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(index, np.arange(24))
    flat = read_features(fixtures / name, flat=True)
    np.testing.assert_array_equal(flat, want.reshape(24, -1))


def test_data_blob_is_caffes_transform_of_the_images(fixtures):
    """extract_features' data blob = (image as float32 - mean) * float32(1/256), record i from
    the i-th record of the Data layer's LMDB: an end-to-end check of reader, mean and
    features against Caffe's own DataTransformer."""
    images, _ = next(caffe_lmdb.open(fixtures / "imageset_raw_32x32").batches(24))
    mean = read_mean(fixtures / "mean_raw_32x32.binaryproto")
    want = (images.astype(np.float32) - mean) * np.float32(0.00390625)
    np.testing.assert_array_equal(read_features(fixtures / "features_data_lmdb"), want)
    labels = read_features(fixtures / "features_label_lmdb", flat=True)[:, 0]
    np.testing.assert_array_equal(labels, expected(fixtures, "imageset_raw_32x32")["labels"])


@pytest.mark.parametrize("name", BLOBS)
def test_write_features_byte_identical(fixtures, tmp_path, name):
    array = expected(fixtures, name)["array"]
    if name == "features_ip1_lmdb":
        array = array.reshape(24, 10)  # (N, D) is stored as D x 1 x 1, as Caffe does
    write_features(tmp_path / "out", array)
    assert read_lmdb(tmp_path / "out") == read_lmdb(fixtures / name)


def test_write_features_refuses_existing(tmp_path):
    write_features(tmp_path / "out", np.zeros((2, 3), np.float32))
    with pytest.raises(caffe_lmdb.OutputExistsError):
        write_features(tmp_path / "out", np.zeros((2, 3), np.float32))
    write_features(tmp_path / "out", np.ones((1, 3), np.float32), overwrite=True)
    np.testing.assert_array_equal(read_features(tmp_path / "out", flat=True), [[1, 1, 1]])
    with pytest.raises(ValueError, match="shape"):
        write_features(tmp_path / "bad", np.zeros((1, 2, 3), np.float32))


def test_unpadded_keys_reordered_with_warning(tmp_path):
    feats = np.arange(12 * 4, dtype=np.float32).reshape(12, 4, 1, 1)
    float_db(tmp_path / "db", feats, keyfmt="%d")  # LMDB order: 0, 1, 10, 11, 2, ...
    with pytest.warns(FeatureKeyWarning, match="zero padding"):
        got = read_features(tmp_path / "db")
    np.testing.assert_array_equal(got, feats)
    with pytest.warns(FeatureKeyWarning):
        features_to_npy(tmp_path / "db", tmp_path / "f.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), feats)


def test_gaps_reported_and_indexed(tmp_path):
    feats = np.arange(5 * 2, dtype=np.float32).reshape(5, 2, 1, 1)
    from caffe_lmdb.format.datum import datum_bytes
    write_lmdb(tmp_path / "db", [(b"%010d" % i, datum_bytes(2, 1, 1, float_data=feats[j]))
                                 for j, i in enumerate([0, 1, 3, 4, 7])])
    with pytest.warns(FeatureKeyWarning, match=r"3 image indices have no record \(2, 5, 6\)"):
        got, index = read_features(tmp_path / "db", return_index=True)
    np.testing.assert_array_equal(got, feats)
    np.testing.assert_array_equal(index, [0, 1, 3, 4, 7])


def test_not_a_features_db(fixtures, tmp_path):
    with pytest.raises(NotADatumDBError, match="not an image index"):
        read_features(fixtures / "imageset_raw_32x32")
    from caffe_lmdb.format.datum import datum_bytes
    write_lmdb(tmp_path / "db", [(b"%010d" % i, datum_bytes(i + 1, 1, 1, float_data=[0] * (i + 1)))
                                 for i in range(3)])
    with pytest.raises(ShapeMismatchError, match="0000000001"):
        read_features(tmp_path / "db")


@pytest.mark.parametrize("flat", [False, True])
def test_npy_streams_in_chunks(fixtures, tmp_path, monkeypatch, flat):
    monkeypatch.setattr(features, "_CHUNK", 5)  # 24 records: five chunks
    calls = []
    shape, index = features_to_npy(fixtures / "features_pool1_lmdb", tmp_path / "f.npy",
                                   flat=flat, progress=lambda done, total: calls.append(done))
    want = expected(fixtures, "features_pool1_lmdb")["array"]
    got = np.load(tmp_path / "f.npy")
    np.testing.assert_array_equal(got, want.reshape(24, -1) if flat else want)
    assert shape == got.shape and calls == [5, 10, 15, 20, 24]
    assert not (tmp_path / "f.npy.part").exists()


def test_npy_interrupted_leaves_no_file(tmp_path):
    float_db(tmp_path / "db", np.zeros((3, 2, 1, 1), np.float32))

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        features_to_npy(tmp_path / "db", tmp_path / "f.npy", progress=stop)
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.npy.part").exists()


def test_feature_names_from_db_and_list(fixtures, tmp_path):
    keys = expected(fixtures, "imageset_raw_32x32")["keys"]
    labels = expected(fixtures, "imageset_raw_32x32")["labels"]
    names = feature_names(fixtures / "imageset_raw_32x32", 26)  # wraps around like Caffe
    assert names[5] == (keys[5].split("_", 1)[1], labels[5])
    assert names[24:] == names[:2]
    listed = feature_names(fixtures / "inputs" / "images" / "list.txt", 4)
    assert listed[3] == ("cat/missing_file.jpg", 0)  # a list file keeps unreadable lines
    (tmp_path / "l.txt").write_text("a b.jpg 3\nc.png 4\n\n")  # trailing blank lines: fine
    assert feature_names(tmp_path / "l.txt", 3) == [("a b.jpg", 3), ("c.png", 4),
                                                    ("a b.jpg", 3)]
    # a blank line between records is an entry to Caffe's ImageData layer (an empty path), so
    # skipping it would shift every later name by one row: the one list parser refuses it
    (tmp_path / "l.txt").write_text("a b.jpg 3\n\nc.png 4\n")
    with pytest.raises(caffe_lmdb.ListFileError, match=r"l\.txt:2: .*empty line"):
        feature_names(tmp_path / "l.txt", 3)


@pytest.mark.parametrize("keyfmt", ["%010d", "%d"])
def test_rows_of_many_chunks_hold_their_records(tmp_path, monkeypatch, keyfmt):
    """read_features decodes a chunk at a time, straight into the rows of its result when the
    chunk's rows are consecutive (%010d keys), else through a copy (unpadded keys: LMDB's order
    is not the rows'); with chunks of 4 records, every row still holds its record."""
    monkeypatch.setattr(features, "_CHUNK", 4)
    feats = np.random.default_rng(3).standard_normal((40, 4096, 1, 1), dtype=np.float32)
    float_db(tmp_path / "db", feats, keyfmt=keyfmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureKeyWarning)
        got = read_features(tmp_path / "db")
    np.testing.assert_array_equal(got, feats)
