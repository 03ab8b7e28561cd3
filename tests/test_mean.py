"""compute_mean against Caffe's compute_image_mean: the same mean file, byte for byte."""
import lmdb
import numpy as np
import pytest
from conftest import expected
from helpers import write_lmdb

import caffe_lmdb
from caffe_lmdb.format.blob import mean_bytes, read_mean
from caffe_lmdb.format.datum import datum_bytes
from caffe_lmdb.tools import mean as mean_module
from caffe_lmdb.tools.mean import channel_means, compute_mean


@pytest.mark.parametrize("direct", [False, True])  # summed by batches / straight from the map
@pytest.mark.parametrize("db,mean_file", [
    ("imageset_raw_32x32", "mean_raw_32x32.binaryproto"),
    ("imageset_encoded_png_32x32", "mean_encoded_png_32x32.binaryproto"),  # decoded natively
])
def test_equals_caffes_mean_file(fixtures, db, mean_file, direct, monkeypatch):
    if direct:
        monkeypatch.setattr(mean_module, "_DIRECT_MIN_BYTES", 1)
    mean = compute_mean(fixtures / db)
    assert mean.dtype == np.float32 and mean.shape == (3, 32, 32)
    np.testing.assert_array_equal(mean, read_mean(fixtures / mean_file))
    assert mean_bytes(mean) == (fixtures / mean_file).read_bytes()
    # compute_image_mean's log: channel means 142.554, 143.053, 124.81
    np.testing.assert_allclose(channel_means(mean), [142.554, 143.053, 124.81], atol=5e-4)


def test_gray_float_and_datumdb_input(fixtures):
    gray = expected(fixtures, "imageset_gray_24x20")["array"]
    mean = compute_mean(caffe_lmdb.open(fixtures / "imageset_gray_24x20", layout="HWC"))
    assert mean.shape == (1, 24, 20)  # the DatumDB's options do not change Caffe's layout
    np.testing.assert_array_equal(mean, (gray.sum(0, dtype=np.int64) / 24).astype(np.float32))
    feats = expected(fixtures, "features_pool1_lmdb")["array"]
    np.testing.assert_allclose(compute_mean(fixtures / "features_pool1_lmdb"),
                               feats.astype(np.float64).mean(0), rtol=1e-6)


def test_exact_where_float32_sums_drift(tmp_path):
    # 70,000 records of 255: a float32 running sum passes 2**24 and rounds; integer sums don't
    value = datum_bytes(1, 1, 2, data=b"\xff\x01", label=0, encoded=False)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i in range(70000):
            txn.put(b"%08d" % i, value, append=True)
    env.close()
    calls = []
    mean = compute_mean(tmp_path / "db", progress=lambda d, t: calls.append((d, t)),
                        batch_size=10000)
    np.testing.assert_array_equal(mean, np.array([[[255.0, 1.0]]], np.float32))
    assert calls[-1] == (70000, 70000) and len(calls) == 7
    drift = np.float32(0)
    for _ in range(70000):
        drift += np.float32(255)
    assert drift / np.float32(70000) != np.float32(255)  # what a float32 sum would give


def test_mixed_shapes_named(fixtures, tmp_path):
    with pytest.raises(caffe_lmdb.ShapeMismatchError, match="00000001_dog"):
        compute_mean(fixtures / "imageset_raw_native")
    write_lmdb(tmp_path / "db", [(b"%02d" % i, datum_bytes(1, 1, 1 + (i >= 3), data=b"a" * (1 + (i >= 3)), label=0))
                                 for i in range(5)])
    with pytest.raises(caffe_lmdb.ShapeMismatchError, match="'03'"):
        compute_mean(tmp_path / "db", batch_size=3)


def test_empty(tmp_path):
    lmdb.open(str(tmp_path / "db")).close()
    with pytest.raises(ValueError, match="no records"):
        compute_mean(tmp_path / "db")


@pytest.mark.parametrize("n", [1, 2, 3, 600])  # 600: past a uint16 accumulator's 257 adds
def test_large_raw_records_summed_exactly_from_the_map(tmp_path, n):
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 3, 64, 96), dtype=np.uint8)
    images[: n // 2] = 255  # the worst case for the accumulator
    write_lmdb(tmp_path / "db", [(b"%08d" % i, caffe_lmdb.datum_bytes(
        3, 64, 96, data=images[i], label=i, encoded=False)) for i in range(n)])
    calls = []
    mean = compute_mean(tmp_path / "db", progress=lambda d, t: calls.append((d, t)))
    want = (images.sum(0, dtype=np.int64) / np.float64(n)).astype(np.float32)
    np.testing.assert_array_equal(mean, want)
    assert calls[-1] == (n, n)


def test_large_raw_records_bad_or_other_shape_named(tmp_path):
    good = caffe_lmdb.datum_bytes(1, 128, 128, data=bytes(128 * 128), label=1, encoded=False)
    other = caffe_lmdb.datum_bytes(1, 128, 127, data=bytes(128 * 127), label=1, encoded=False)
    write_lmdb(tmp_path / "a", [(b"k%03d" % i, other if i == 70 else good) for i in range(90)])
    with pytest.raises(caffe_lmdb.ShapeMismatchError, match="'k070'.*one shape"):
        compute_mean(tmp_path / "a")
    write_lmdb(tmp_path / "b", [(b"k%03d" % i, good[:-5] if i == 3 else good)
                                for i in range(9)])
    with pytest.raises(caffe_lmdb.DatumDecodeError, match="'k003'"):
        compute_mean(tmp_path / "b")
